"""Where bam-dense's own files live: the recipes and launch scripts it ships, found by one function from a checkout
and from an installed wheel alike, independent of the working directory.

A file bam-dense ships is named as it is in the repository: ``configs/pretrain/bam_tiny_cpu.yaml``,
``pretrain/slurm.sh``, ``downstream/detectron2/train_net.py``. In a checkout (or an editable install) those are the
repository's own files beside the package; a wheel carries them inside the package, under ``bam_dense/_bundled/``
with the same relative paths (``setup.py`` maps the repository's ``configs/``, ``pretrain/`` and ``downstream/``
there, as MMSegmentation ships its configs under ``mmseg/.mim/``), so an mmengine config's relative ``_base_``
resolves there as it does in the checkout.
"""

from __future__ import annotations

from pathlib import Path

from bam_dense.core.errors import UserFacingError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# The folder that holds this bam_dense package: a child process with it first on PYTHONPATH imports this copy.
IMPORT_ROOT = PACKAGE_ROOT.parent
_BUNDLED_IN_PACKAGE = PACKAGE_ROOT / "_bundled"


def bundle_root() -> Path:
    """The folder the shipped files' repository-relative names start from: the package's ``_bundled/`` in an
    installed wheel, else the checkout holding the package."""
    return _BUNDLED_IN_PACKAGE if _BUNDLED_IN_PACKAGE.is_dir() else IMPORT_ROOT


def bundled(name: str | Path, required: bool = False) -> Path | None:
    """The file (or folder) bam-dense ships under the repository-relative ``name`` (e.g.
    ``configs/pretrain/bam_tiny_cpu.yaml``); where it ships nothing by that name, None, or with ``required`` a
    UserFacingError naming it."""
    path = None if Path(name).is_absolute() else bundle_root() / name
    if path is not None and path.exists():
        return path
    if required:
        raise UserFacingError(f"bam-dense ships no {name} (looked under {bundle_root()})")
    return None


def locate(path: str | Path) -> Path:
    """A file the user named: as given where it exists (relative to the working directory), else the file bam-dense
    ships by that name (``configs/pretrain/bam_tiny_cpu.yaml`` from any folder), else as given (for the caller's
    does-not-exist error)."""
    path = Path(path)
    return path if path.exists() else bundled(path) or path


def checkout_root() -> Path | None:
    """The git checkout this bam_dense package runs from, or None for an installed copy (a wheel in site-packages,
    whose folder may sit inside some other repository)."""
    return IMPORT_ROOT if (IMPORT_ROOT / ".git").exists() else None
