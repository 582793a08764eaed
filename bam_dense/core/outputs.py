"""What a command may write where: no user file replaced unasked, never an input replaced by its own output.
A file's identity (size + SHA-256) is :mod:`bam_dense.core.identity`'s.

No torch import: the CLI calls these before any heavy work.
"""

from __future__ import annotations

import os
from pathlib import Path

from bam_dense.core.errors import UserFacingError


def _same(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file or folder (symbolic and hard links followed)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_output(out: str | os.PathLike, flag: str = "--out", *, force: bool = False, folder: bool = False,
                 sources: tuple[str | os.PathLike, ...] = (), writes: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse an output path before any work is done; returns it as a ``Path``.

    - ``out`` (or any of ``writes``, the other files the command will write) is one of ``sources``: always refused,
      ``force`` or not (``sources`` are the command's inputs, e.g. the checkpoint being converted);
    - a file output that is an existing folder, or whose parent is a file: refused;
    - an existing file (for ``folder``: a folder holding anything) without ``force``: refused.
    """
    path = Path(out)
    for written in (path, *map(Path, writes)):
        for src in map(Path, sources):
            if _same(written, src):
                raise UserFacingError(f"{flag} {out}: {'it' if written == path else written} is the input {src} "
                                      "itself; writing there would destroy it: choose another path")
    if folder:
        if path.exists() and not path.is_dir():
            raise UserFacingError(f"{flag} {out} is a file; this command writes a folder: choose a folder path")
        if path.is_dir() and any(path.iterdir()) and not force:
            raise UserFacingError(f"{flag} {out} already exists and is not empty; choose a new folder, or add --force "
                                  "to write into it (files of the same names are replaced)")
        return path
    if path.is_dir():
        raise UserFacingError(f"{flag} {out} is a folder; this command writes a file: give a file name, e.g. "
                              f"{path / 'out.json'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UserFacingError(f"{flag} {out}: {parent} is a file, not a folder")
    if path.exists() and not force:
        raise UserFacingError(f"{flag} {out} already exists; choose another path, or add --force to replace it")
    return path
