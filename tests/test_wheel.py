"""The built wheel works outside the checkout (issue 30): ``pip wheel .`` carries the recipes and launch scripts
(``configs/``, ``pretrain/``, ``downstream/`` under ``bam_dense/_bundled/``, see setup.py), and a plain install of
it into a fresh virtual environment finds them from an empty folder: a bundled pretraining recipe, a bundled plan
(its configs and launch scripts), and a plan's pretraining step spawned through ``bam-dense bench run --dry-run``.

The wheel is built from a copy of the sources (the checkout gets no build/ or *.egg-info). The fresh environment
installs only the wheel; it sees the running interpreter's site-packages (torch and the rest) through a ``.pth``
line, which adds that folder without running the ``.pth`` files in it, so an editable install there stays inactive
(each test checks that ``bam_dense`` is imported from the fresh environment).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO

BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "bam_dense", "configs", "pretrain", "downstream")
SHIPPED = ("configs", "pretrain", "downstream")  # setup.py's BUNDLED folders


def _env() -> dict:
    """The environment of the installed copy: nothing that points Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}


def _run(cmd: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, the fresh environment's python, its site-packages) with the wheel installed there."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist"], tmp)
    wheel = next((tmp / "dist").glob("bam_dense-*.whl"))

    venv.create(tmp / "venv", with_pip=False)
    python = tmp / "venv" / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip())
    running = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "running-interpreter.pth").write_text("".join(f"{path}\n" for path in running))
    # --ignore-installed: the running interpreter's bam-dense (seen through the .pth line) is left alone
    _run([python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", wheel], tmp)
    return wheel, python, site


def test_the_wheel_ships_every_recipe_and_launch_script(installed):
    wheel = installed[0]
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {n.removeprefix("bam_dense/_bundled/") for n in archive.namelist() if n.startswith("bam_dense/_bundled/")}
    in_checkout = {p.relative_to(REPO).as_posix() for folder in SHIPPED for p in (REPO / folder).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts}
    assert in_checkout and in_wheel == in_checkout


def test_the_installed_copy_finds_its_files_inside_itself_and_no_checkout(installed, tmp_path):
    _, python, site = installed
    probe = ("import json, bam_dense; from bam_dense.core import paths, identity; print(json.dumps({"
             "'module': bam_dense.__file__, 'root': str(paths.bundle_root()), "
             "'recipe': str(paths.bundled('configs/pretrain/bam_tiny_cpu.yaml')), "
             "'missing': paths.bundled('configs/pretrain/no_such_recipe.yaml'), "
             "'checkout': paths.checkout_root(), 'commit': identity.code_version()['git_commit']}))")
    found = json.loads(_run([python, "-c", probe], tmp_path).stdout)
    assert Path(found["module"]).is_relative_to(site / "bam_dense")
    assert found["root"] == str(site / "bam_dense" / "_bundled")
    recipe = Path(found["recipe"])
    assert recipe == site / "bam_dense" / "_bundled" / "configs" / "pretrain" / "bam_tiny_cpu.yaml"
    assert recipe.read_bytes() == (REPO / "configs" / "pretrain" / "bam_tiny_cpu.yaml").read_bytes()
    assert found["missing"] is None and found["checkout"] is None and found["commit"] is None


def test_mmengine_bases_resolve_inside_the_installed_package(installed, tmp_path):
    """A shipped config's relative ``_base_`` (and its ``mmseg::`` bases) read inside the installed package give the
    same config as the checkout's file."""
    pytest.importorskip("mmseg")
    from mmengine.config import Config

    _, python, site = installed
    name = "configs/mmseg/tiny/upernet_vit_ade20k.py"  # _base_ = ["../upernet_vit-b16_ade20k-512x512_160k.py"]
    dump = ("import json, sys; from mmengine.config import Config; from bam_dense.core.paths import bundled; "
            "cfg = Config.fromfile(bundled(sys.argv[1], required=True)); "
            "print(json.dumps({'filename': cfg.filename, 'config': cfg.to_dict()}, default=str))")
    installed_cfg = json.loads(_run([python, "-c", dump, name], tmp_path).stdout)
    assert Path(installed_cfg["filename"]).is_relative_to(site / "bam_dense" / "_bundled")
    checkout_cfg = json.loads(json.dumps(Config.fromfile(REPO / name).to_dict(), default=str))
    assert installed_cfg["config"] == checkout_cfg


def test_a_bundled_recipe_and_plan_run_from_an_empty_folder(installed, tmp_path):
    _, python, site = installed
    bam_dense = python.parent / "bam-dense"  # the console script the wheel installed
    bundled = site / "bam_dense" / "_bundled"
    empty = tmp_path / "empty"
    empty.mkdir()

    printed = _run([bam_dense, "pretrain", "--config", "configs/pretrain/bam_tiny_cpu.yaml", "--print-config"], empty)
    assert yaml.safe_load(printed.stdout)["run"]["output_dir"] == "runs/bam_tiny_cpu"

    # a bundled plan: its pretraining configs, detectron2 config and launch scripts are the installed copy's
    slurm = _run([bam_dense, "bench", "run", "configs/bench/lewel_r50.yaml", "--run-dir", "r", "--print-slurm"], empty).stdout
    assert f"{bundled}/pretrain/slurm.sh {bundled}/configs/pretrain/lewel_b_r50_eman_200ep.yaml" in slurm
    assert f"{bundled}/downstream/detectron2/train_net.py --config-file {bundled}/configs/detectron2/" in slurm
    assert not any(empty.iterdir())  # printing the jobs wrote nothing

    # a plan naming a bundled recipe: its pretraining dry-run spawned as a step, with the installed copy
    (empty / "plan.yaml").write_text(yaml.safe_dump({
        "runs": [{"name": "bam", "method": "bam", "pretrain": {"config": "configs/pretrain/bam_tiny_cpu.yaml"}}],
        "steps": [{"name": "probe", "kind": "probe", "benchmark": "synthetic_linear_probe", "ade_root": "ade"}]}))
    _run([bam_dense, "bench", "run", "plan.yaml", "--run-dir", "runs/x", "--dry-run", "--steps", "pretrain",
          "--dry-run-scale", "0.5"], empty)
    pretrain = empty / "runs" / "x" / "bam" / "pretrain"
    spawned = (pretrain / "log.txt").read_text().splitlines()[1]
    assert spawned.startswith(f"$ {python} -m bam_dense.cli pretrain --config {bundled}/configs/pretrain/bam_tiny_cpu.yaml ")
    assert (pretrain / "dry-run" / "checkpoints" / "last.pth").is_file()
    dry_run = json.loads((pretrain / "dry-run" / "dry_run.json").read_text())
    assert dry_run["config"] == f"{bundled}/configs/pretrain/bam_tiny_cpu.yaml"
