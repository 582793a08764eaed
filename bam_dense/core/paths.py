"""Where the repository's own files live (configs), independent of the working directory."""

from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_ROOT.parent
CONFIG_ROOT = REPO_ROOT / "configs"

