"""Processes that end with the process that started them: no worker outlives its run.

Every process bam-dense starts goes through this module, so that it ends within seconds of its owner's
death, however the owner died (SIGKILL included) and at whatever moment (the child's start-up included):

* :func:`loader_worker_init`: the ``worker_init_fn`` of every DataLoader with workers (pretraining, k-NN);
* :func:`process_pool`: a ``ProcessPoolExecutor`` whose workers end with this process (DAVIS evaluator);
* :func:`run_tree`: a command run in a session of its own; when it ends, fails, times out or is
  interrupted, everything left in its process group is killed (after SIGTERM and a grace period when it
  was still running), and it dies with this process (bench runner and demo steps);
* :func:`end_forked_children_with_this_process`: a fork hook for workers created by code outside
  bam-dense (mmengine's DataLoader workers in ``seg`` and ``det``);
* :func:`end_with`: what they all call in the child.

How: on Linux the kernel sends the child SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``). The
parent's PID is checked after setting it: a parent that died before the call has already left the child to
another parent, and the child then ends at once. Where the process to end with is not the parent (a
forkserver in between) and on other POSIX systems, a daemon thread polls it every ``POLL_SECONDS``.

Caveat of the kernel's signal: it fires when the parent *thread* that started the child exits, not only the
process. bam-dense starts its workers and subprocesses from the main thread; a caller that starts them from
a thread of its own must keep that thread alive as long as the children.

Relying on a worker to notice on its own is not enough: PyTorch's DataLoader worker compares its parent's
PID only while idle, so a worker blocked elsewhere (e.g. flushing its result queue) waits forever.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.5


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Resolved once at import, so that the child side (a subprocess's preexec_fn included) loads nothing.
_PRCTL = _load_prctl()


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; False where that is unavailable."""
    if _PRCTL is None:
        return False
    return _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (dead, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): os.kill is all we know
    return state not in (b"Z", b"X")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(owner_alive: Callable[[], bool]) -> None:
    def loop() -> None:
        while owner_alive():
            time.sleep(POLL_SECONDS)
        _die()

    threading.Thread(target=loop, name="bam-dense-end-with-owner", daemon=True).start()


def end_with(owner_pid: int) -> None:
    """End this process (SIGKILL) within seconds of process ``owner_pid``'s death; call it first in a child.

    Linux: the parent-death signal, then a check that the parent is still ``owner_pid`` (else the owner
    already died, and this process ends now). A poll of the owner covers an owner that is not the parent,
    and systems without the signal. A no-op outside POSIX.
    """
    if os.name != "posix":
        return
    kernel = set_parent_death_signal()
    if os.getppid() == owner_pid:
        if not kernel:
            _watch(lambda: os.getppid() == owner_pid)
    elif not alive(owner_pid):
        _die()
    else:
        _watch(lambda: alive(owner_pid))


def _init_loader_worker(owner_pid: int, then: Callable[[int], None] | None, worker_id: int) -> None:
    end_with(owner_pid)
    if then is not None:
        then(worker_id)


def loader_worker_init(then: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` whose workers end with this process (then runs ``then(worker_id)``).

    Build the DataLoader in the process that iterates it: the owner is the calling process.
    """
    return functools.partial(_init_loader_worker, os.getpid(), then)


def process_pool(workers: int, **kwargs):
    """A ``concurrent.futures.ProcessPoolExecutor`` of ``workers`` processes that end with this process."""
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, initializer=end_with, initargs=(os.getpid(),), **kwargs)


_AT_FORK_OWNER: int | None = None


def end_forked_children_with_this_process() -> None:
    """Make every child this process forks from now on end with it (an ``os.register_at_fork`` hook).

    For workers that code outside bam-dense creates (mmengine's DataLoaders in ``seg``/``det``), where no
    ``worker_init_fn`` can be passed without replacing the framework's own. Children started by exec'ing a
    new program (``spawn``, ``subprocess``) are not forks of this kind: use the other helpers for those.
    """
    global _AT_FORK_OWNER
    if os.name != "posix" or _AT_FORK_OWNER == os.getpid():
        return
    first = _AT_FORK_OWNER is None
    _AT_FORK_OWNER = os.getpid()
    if first:
        os.register_at_fork(after_in_child=_end_forked_child)


def _end_forked_child() -> None:
    owner = _AT_FORK_OWNER
    if owner is not None and owner != os.getpid():
        end_with(owner)


def _child_of(owner_pid: int) -> None:  # a subprocess's preexec_fn: between fork and exec, nothing fancy
    set_parent_death_signal()
    if os.getppid() != owner_pid:
        os._exit(137)


def kill_group(pgid: int) -> None:
    """SIGKILL every process of process group ``pgid`` (nothing when the group is gone)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_tree(cmd: Sequence[str], timeout: float | None = None, term_grace_s: float = 10.0, **popen_kwargs) -> int:
    """Run ``cmd`` to its end and return its exit status; nothing it started outlives it.

    The command runs in a session (and process group) of its own. When this process stops waiting early (the
    command timed out: ``subprocess.TimeoutExpired`` is raised; Ctrl-C; any exception), the group gets
    SIGTERM and ``term_grace_s`` seconds to end (a trainer checkpoints, torchrun stops its workers); then, as
    after every command, what is left of the group is killed. On Linux the command also gets SIGKILL when
    this process dies, SIGKILL included. Processes it starts in sessions of their own (torchrun's workers)
    must end with it themselves (:func:`end_with`). Start it from the main thread (see the module's caveat).
    """
    if os.name != "posix":
        proc = subprocess.Popen(cmd, **popen_kwargs)
        try:
            return proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=functools.partial(_child_of, os.getpid()),
                            **popen_kwargs)
    try:
        return proc.wait(timeout)
    finally:
        try:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(term_grace_s)
        except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
            pass
        finally:
            kill_group(proc.pid)
            proc.wait()
