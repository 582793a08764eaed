"""The package's import contract (pyproject.toml, [tool.importlinter]) holds, and would catch an upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contracts() -> dict:
    return {c["id"]: c for c in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]}


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, env=env, timeout=300)


def test_import_contracts_are_kept():
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_every_subpackage_has_a_layer():
    named = {name.strip() for layer in _contracts()["layers"]["layers"] for name in layer.split("|")}
    found = {f"bam_dense.{p.stem if p.suffix == '.py' else p.name}" for p in (REPO / "bam_dense").iterdir()
             if (p.suffix == ".py" and p.stem not in {"__init__", "__main__"}) or (p / "__init__.py").is_file()}
    assert found == named, f"not in a layer: {sorted(found - named)}; layer without a package: {sorted(named - found)}"


def _lint_with(tmp_path: Path, module: str, code: str) -> subprocess.CompletedProcess:
    """``lint-imports`` on a copy of the package whose ``module`` (a path under bam_dense/) has ``code`` appended."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "bam_dense", root / "bam_dense", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    with (root / "bam_dense" / module).open("a") as fh:
        fh.write(code)
    return _lint(root)


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    proc = _lint_with(tmp_path, "convert/maps.py",
                      "\n\ndef _upward():\n    from bam_dense.cli import main  # the converters must not depend on the CLI\n\n    return main\n")
    assert proc.returncode == 1, proc.stdout
    assert "BROKEN" in proc.stdout and "bam_dense.convert.maps -> bam_dense.cli" in proc.stdout


def test_openmmlab_outside_downstream_breaks_its_contract(tmp_path):
    proc = _lint_with(tmp_path, "davis/metrics.py", "\n\ndef _mm():\n    import mmengine\n\n    return mmengine\n")
    assert proc.returncode == 1, proc.stdout
    assert "bam_dense.davis is not allowed to import mmengine" in proc.stdout
