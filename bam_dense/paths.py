"""Where the repository's own files live (configs, assets), independent of the working directory."""

from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
CONFIG_ROOT = REPO_ROOT / "configs"
ASSETS = PACKAGE_ROOT / "assets"


def config_path(relative: str) -> Path:
    """Resolve ``relative`` (e.g. ``"pretrain/bam_tiny_cpu.yaml"``) inside the repository's ``configs/``."""
    path = CONFIG_ROOT / relative
    if not path.exists():
        raise FileNotFoundError(
            f"config {relative!r} not found under {CONFIG_ROOT}; bam-dense is used from a clone "
            "of the repository (`make install` installs it in editable mode)"
        )
    return path
