"""Shipped files found by one function (bam_dense.core.paths.bundled), from any folder: a name that exists where the
command runs is the user's file, else the file bam-dense ships by that name (the wheel's side: tests/test_wheel.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from bam_dense.core.errors import UserFacingError
from bam_dense.core.paths import bundle_root, bundled, checkout_root, locate

RECIPE = "configs/pretrain/bam_tiny_cpu.yaml"


def test_a_checkout_ships_its_own_files_and_records_its_commit():
    assert bundle_root() == REPO and checkout_root() == REPO
    assert bundled(RECIPE) == REPO / RECIPE
    assert bundled("pretrain/slurm.sh") == REPO / "pretrain" / "slurm.sh"
    assert bundled("configs/pretrain/no_such_recipe.yaml") is None
    assert bundled(REPO / RECIPE) is None  # an absolute path names no shipped file
    with pytest.raises(UserFacingError, match="ships no configs/pretrain/no_such_recipe.yaml"):
        bundled("configs/pretrain/no_such_recipe.yaml", required=True)


def test_the_users_file_comes_before_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert locate(RECIPE) == REPO / RECIPE
    assert locate("configs/pretrain/no_such_recipe.yaml") == Path("configs/pretrain/no_such_recipe.yaml")
    (tmp_path / "configs" / "pretrain").mkdir(parents=True)
    (tmp_path / RECIPE).write_text("optim: {epochs: 3}\n")
    assert locate(RECIPE) == Path(RECIPE)


def test_recipes_and_plans_load_by_their_repository_names_from_another_folder(tmp_path, monkeypatch):
    from bam_dense.bench.plan import load_plan
    from bam_dense.core.config import ConfigError, load_config

    monkeypatch.chdir(tmp_path)
    assert load_config(RECIPE) == load_config(REPO / RECIPE)
    with pytest.raises(ConfigError, match="config file configs/pretrain/no_such_recipe.yaml does not exist"):
        load_config("configs/pretrain/no_such_recipe.yaml")

    plan = load_plan("configs/bench/lewel_r50.yaml")
    assert plan.name == "lewel_r50"
    assert plan.runs[0].pretrain["config"] == str(REPO / "configs" / "pretrain" / "lewel_b_r50_eman_200ep.yaml")
    assert plan.steps[0].config == str(REPO / "configs" / "mmseg" / "fcn_r50-d8_voc12aug-512x512_20k.py")
    assert plan.steps[0].data_root == "/datasets/VOCdevkit/VOC2012"  # absolute: as given

    # the same names in the caller's folder are the caller's files
    (tmp_path / "configs" / "bench").mkdir(parents=True)
    ours = {"name": "ours", "runs": [{"name": "a", "pretrain": {"config": RECIPE}}],
            "steps": [{"name": "d", "kind": "davis", "davis_root": "davis"}]}
    (tmp_path / "configs" / "bench" / "lewel_r50.yaml").write_text(yaml.safe_dump(ours))
    plan = load_plan("configs/bench/lewel_r50.yaml")
    assert plan.name == "ours" and plan.runs[0].pretrain["config"] == str(REPO / RECIPE)
    assert plan.steps[0].davis_root == str(tmp_path.resolve() / "davis")
