"""What a result was produced from: a file's identity (size and SHA-256) and the code's version.

``bam-dense bench run`` records both beside every step's result and compares them before it skips a step as
done, so an old number is never credited to a new checkpoint (issue 28). No torch import: the bench runner
and the light commands use it.
"""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

from bam_dense.core.paths import checkout_root


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=64)
def _identity(path: str, size: int, mtime_ns: int) -> dict:
    return {"size": size, "sha256": sha256(path)}


def file_identity(path: str | Path) -> dict:
    """``{"size", "sha256"}`` of a file (hashed once per process while its size and mtime stay the same)."""
    stat = Path(path).stat()
    return _identity(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=1)
def code_version() -> dict:
    """``{"version": package version, "git_commit": commit of the checkout or None, "git_dirty": bool or None}``."""
    from bam_dense import __version__

    commit = dirty = None
    checkout = checkout_root()  # None for an installed copy: no commit to record
    try:
        if checkout is not None:
            commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10).stdout.strip() or None
        if commit:
            status = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout
            dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": __version__, "git_commit": commit, "git_dirty": dirty}
