"""No process outlives its run: DataLoader workers, process pools, bench steps and their children end within
seconds of their owner's death, however it died (SIGKILL) and whenever (worker start-up included)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import PYTHON, REPO, kill_all, processes_marked, tiny_pretrain_dict, wait_until_gone

from bam_dense.core import procs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")

RUN_MARK = "BAM_DENSE_RUN_MARK"
GONE_WITHIN_S = 10.0


def _env(mark: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **{RUN_MARK: mark})


def _script(tmp_path: Path, code: str) -> Path:
    path = tmp_path / f"script_{uuid.uuid4().hex[:8]}.py"
    path.write_text(textwrap.dedent(code))
    return path


def _wait_for_pids(folder: Path, n: int, proc: subprocess.Popen | None, timeout: float = 120) -> list[int]:
    """The PIDs that ``n`` processes wrote as files ``pid-<PID>`` into ``folder`` (while ``proc`` runs)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [int(p.name.split("-")[1]) for p in folder.glob("pid-*")]
        if len(pids) >= n:
            return pids
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args} ended (status {proc.returncode}) before {n} processes reported")
        if time.monotonic() > deadline:
            raise AssertionError(f"{n} processes did not report in {folder} within {timeout} s")
        time.sleep(0.02)


def _kill_and_check_run_ends(proc: subprocess.Popen, mark: str, what: str, at_least: int) -> None:
    """SIGKILL ``proc``; every process of its run (environment ``RUN_MARK=mark``), of which ``at_least`` are
    alive at the kill, must end within 10 s."""
    seen = processes_marked(RUN_MARK, mark)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"{what}: the process ended on its own before it could be killed"
    run = {p.pid: p for p in seen + processes_marked(RUN_MARK, mark)}
    assert len(run) >= at_least, f"{what}: found {len(run)} process(es) of the run, expected at least {at_least}"
    left = wait_until_gone(list(run.values()), GONE_WITHIN_S)
    kill_all(left)
    assert not left, f"{what}: {len(left)} process(es) of the killed run still alive after {GONE_WITHIN_S:.0f} s: {left}"


# ---------------------------------------------------------------------------- the hooks, one by one
BLOCKED_LOADER = """
import os, sys, time
from torch.utils.data import DataLoader, Dataset
from bam_dense.core import procs

class Blocked(Dataset):  # a worker busy in __getitem__ never reaches PyTorch's parent check
    def __len__(self):
        return 8
    def __getitem__(self, i):
        open(os.path.join(sys.argv[1], f"pid-{os.getpid()}"), "w").close()
        time.sleep(600)
        return i

init = procs.loader_worker_init() if sys.argv[2] == "hook" else None
if sys.argv[2] == "at_fork":  # as for mmengine's loaders in seg / det: no worker_init_fn of ours
    procs.end_forked_children_with_this_process()
for _ in DataLoader(Blocked(), num_workers=2, worker_init_fn=init):
    pass
"""


def _check_two_workers_end_with_their_killed_parent_only_with_a_hook(tmp_path, source: str, hook: str, what: str):
    """``source`` run as ``script FOLDER HOOK`` starts two workers that block; the parent is SIGKILLed."""
    mark = uuid.uuid4().hex
    proc = subprocess.Popen([PYTHON, str(_script(tmp_path, source)), str(tmp_path), hook], env=_env(mark))
    workers = [psutil.Process(pid) for pid in _wait_for_pids(tmp_path, 2, proc)]
    if hook != "none":
        _kill_and_check_run_ends(proc, mark, what, at_least=3)
        return
    # The control: without the hook the same workers outlive their SIGKILLed parent (this is the bug).
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        assert wait_until_gone(workers, 3.0) == workers, "without the hook the workers were expected to stay"
    finally:
        kill_all(workers)


@pytest.mark.parametrize("hook", ["hook", "at_fork", "none"])
def test_a_blocked_loader_worker_ends_with_its_killed_parent_only_with_the_hook(tmp_path, hook):
    _check_two_workers_end_with_their_killed_parent_only_with_a_hook(tmp_path, BLOCKED_LOADER, hook,
                                                                     f"DataLoader with the {hook} hook")


BLOCKED_POOL = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from bam_dense.core import procs

def task(folder):
    open(os.path.join(folder, f"pid-{os.getpid()}"), "w").close()
    time.sleep(600)

if __name__ == "__main__":
    pool = procs.process_pool(2) if sys.argv[2] == "hook" else ProcessPoolExecutor(2)
    list(pool.map(task, [sys.argv[1]] * 2))
"""


@pytest.mark.parametrize("hook", ["hook", "none"])
def test_process_pool_workers_end_with_their_killed_parent_only_with_the_hook(tmp_path, hook):
    _check_two_workers_end_with_their_killed_parent_only_with_a_hook(tmp_path, BLOCKED_POOL, hook,
                                                                     "process pool with the hook")


# The start-up race: the owner dies after the child was forked but before it set the parent-death signal.
# The kernel's signal then watches the new parent (init); only the check against the owner's PID ends it.
ORPHAN_AT_START_UP = """
import os, sys, time
from bam_dense.core import procs

folder, owner = sys.argv[1], os.getpid()
if os.fork() == 0:
    while os.getppid() == owner:  # the owner exits right after the fork: wait until it is gone
        time.sleep(0.01)
    open(os.path.join(folder, f"pid-{os.getpid()}"), "w").close()
    procs.end_with(owner)
    open(os.path.join(folder, "survived"), "w").close()
    time.sleep(600)
    os._exit(0)
os._exit(0)
"""


def test_a_child_whose_owner_died_during_its_start_up_ends_when_it_sets_the_hook(tmp_path):
    mark = uuid.uuid4().hex
    proc = subprocess.Popen([PYTHON, str(_script(tmp_path, ORPHAN_AT_START_UP)), str(tmp_path)], env=_env(mark))
    assert proc.wait() == 0
    children = _existing(_wait_for_pids(tmp_path, 1, None))
    left = wait_until_gone(children, GONE_WITHIN_S)
    kill_all(left)
    assert not left and not (tmp_path / "survived").exists(), "the orphaned child went on after end_with()"
    assert not processes_marked(RUN_MARK, mark)


def _existing(pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return found


# An owner that is not the parent (a forkserver in between): the child polls it.
WATCH_NON_PARENT = """
import os, sys, time
from bam_dense.core import procs

procs.end_with(int(sys.argv[2]))
open(os.path.join(sys.argv[1], f"pid-{os.getpid()}"), "w").close()
time.sleep(600)
"""


def test_a_child_ends_with_an_owner_that_is_not_its_parent(tmp_path):
    mark = uuid.uuid4().hex
    owner = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(600)"], env=_env(mark))
    try:
        child_proc = subprocess.Popen([PYTHON, str(_script(tmp_path, WATCH_NON_PARENT)), str(tmp_path), str(owner.pid)],
                                      env=_env(mark))
        child = psutil.Process(_wait_for_pids(tmp_path, 1, child_proc)[0])
        assert wait_until_gone([child], 1.0) == [child], "the child ended while its owner was alive"
    finally:
        owner.kill()
        owner.wait()
    left = wait_until_gone([child], GONE_WITHIN_S)
    kill_all(left)
    assert not left, "the child outlived its owner"
    assert child_proc.wait() == -signal.SIGKILL


GRANDCHILD_THEN_FAIL = """
import os, subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(os.path.join(sys.argv[1], f"pid-{grandchild.pid}"), "w").close()
sys.exit(3)
"""


def test_run_tree_kills_what_a_failed_command_left_behind(tmp_path):
    status = procs.run_tree([PYTHON, str(_script(tmp_path, GRANDCHILD_THEN_FAIL)), str(tmp_path)])
    assert status == 3
    grandchild = _wait_for_pids(tmp_path, 1, None, timeout=0)
    left = wait_until_gone(_existing(grandchild), GONE_WITHIN_S)
    kill_all(left)
    assert not left, "the failed command's child outlived it"


# ---------------------------------------------------------------------------- whole runs, SIGKILLed
# 32 steps an epoch: the workers (re-created every epoch) live long enough to be seen and counted.
LONG_EPOCHS = {"num_images": 256, "size": 32, "num_classes": 4, "seed": 0}


def _trainer(tmp_path: Path, mark: str, **sections) -> subprocess.Popen:
    base = {"optim": {"epochs": 200, "warmup_epochs": 1}, "run": {"checkpoint_every": 1},
            "data": {"num_workers": 2, "synthetic": LONG_EPOCHS}}
    for key, value in sections.items():
        base[key].update(value)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny_pretrain_dict(tmp_path / "run", **base)))
    return subprocess.Popen([PYTHON, str(REPO / "pretrain" / "train.py"), "--config", str(config)], env=_env(mark),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _train_rows(tmp_path: Path) -> int:
    metrics = tmp_path / "run" / "metrics.jsonl"
    return sum('"kind": "train"' in line for line in metrics.read_text().splitlines()) if metrics.exists() else 0


def _in_checkpoint_write(tmp_path: Path) -> bool:
    folder = tmp_path / "run" / "checkpoints"
    return folder.is_dir() and any(p.name.endswith(".tmp") for p in folder.iterdir())


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children()
    except psutil.Error:
        return []


def _loader_workers(trainer: psutil.Process) -> list[psutil.Process]:
    """The trainer's forked children (same command line): its DataLoader workers."""
    try:
        return [c for c in trainer.children() if c.cmdline() == trainer.cmdline()]
    except psutil.Error:
        return []


def _until(proc: subprocess.Popen, moment: str, tmp_path: Path, timeout: float = 120) -> None:
    """Return at ``moment`` of the trainer's life, the trainer stopped (SIGSTOP) where sampling is needed."""
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the trainer ended (status {proc.returncode}) before {moment}")
        if moment == "worker_start_up" and _loader_workers(me):  # the first worker was just forked: kill at once
            return
        if moment == "first_batch" and len(_loader_workers(me)) >= 2:  # both workers up, loading the first batches
            return
        if moment == "mid_epoch" and _train_rows(tmp_path) >= 6 and _loader_workers(me):
            return
        if moment == "checkpoint_write" and _train_rows(tmp_path) >= 1 and _loader_workers(me):
            # Sample the trainer, stopped, until it is caught with a checkpoint half written.
            proc.send_signal(signal.SIGSTOP)
            while me.status() != psutil.STATUS_STOPPED:
                time.sleep(0.001)
            if _in_checkpoint_write(tmp_path) and _loader_workers(me):
                return
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.003)
            continue
        time.sleep(0.005)
    raise AssertionError(f"the trainer did not reach {moment} within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["worker_start_up", "first_batch", "mid_epoch", "checkpoint_write"])
def test_a_pretraining_run_killed_at_any_moment_leaves_no_process(tmp_path, moment):
    mark = uuid.uuid4().hex
    proc = _trainer(tmp_path, mark)
    try:
        _until(proc, moment, tmp_path)
        _kill_and_check_run_ends(proc, mark, f"pretraining killed at {moment}",
                                 at_least=3 if moment == "first_batch" else 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_davis_evaluation_killed_while_its_pool_works_leaves_no_process(tmp_path):
    fixture = REPO / "tests" / "fixtures" / "davis_official"
    shutil.copytree(fixture / "results" / "noisy", tmp_path / "results")
    cmd = [PYTHON, "-m", "bam_dense.cli", "davis", "eval", "--davis-root", str(fixture / "DAVIS"),
           "--results", str(tmp_path / "results"), "--workers", "2"]
    for _attempt in range(5):  # the fixture is small: the evaluator may finish before its pool is seen
        mark = uuid.uuid4().hex
        proc = subprocess.Popen(cmd, env=_env(mark), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        me = psutil.Process(proc.pid)
        while proc.poll() is None and not me.children():
            time.sleep(0.002)
        if proc.poll() is None:
            _kill_and_check_run_ends(proc, mark, "davis eval killed while its pool worked", at_least=2)
            return
        assert proc.returncode == 0
    raise AssertionError("davis eval finished five times before its worker pool could be seen")


@pytest.mark.slow
def test_a_killed_bench_runner_takes_its_steps_and_their_workers_with_it(tmp_path):
    pretrain = tiny_pretrain_dict(tmp_path / "unused", optim={"epochs": 200, "warmup_epochs": 1},
                                  data={"num_workers": 2, "synthetic": LONG_EPOCHS})
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(pretrain))
    plan = {"name": "killed", "runs": [{"name": "r", "method": "bam", "pretrain": {"config": str(tmp_path / "pretrain.yaml")}}],
            "steps": [{"name": "probe", "kind": "probe"}]}  # never reached: the runner dies while pretraining
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    mark = uuid.uuid4().hex
    with open(tmp_path / "runner.log", "w") as log:
        runner = subprocess.Popen([PYTHON, "-m", "bam_dense.cli", "bench", "run", str(tmp_path / "plan.yaml"), "--run-dir",
                                   str(tmp_path / "runs")], env=_env(mark), stdout=log, stderr=subprocess.STDOUT)
    me, deadline, workers = psutil.Process(runner.pid), time.monotonic() + 120, False
    while not workers and runner.poll() is None and time.monotonic() < deadline:  # until the step's workers run
        workers = any(_loader_workers(step) for step in _children(me))
        time.sleep(0.02)
    step_log = tmp_path / "runs" / "r" / "pretrain" / "log.txt"
    assert workers and runner.poll() is None, (
        f"the runner ended (status {runner.returncode}) or its step started no workers within 120 s:\n"
        + (tmp_path / "runner.log").read_text() + (step_log.read_text() if step_log.exists() else ""))
    _kill_and_check_run_ends(runner, mark, "bench run killed during a pretraining step", at_least=3)


# ---------------------------------------------------------------------------- the suite's own guard
LEAKY_TESTS = """
import os, subprocess, sys

def test_leaves_a_child():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

def test_leaves_an_orphan():  # its parent ends at once: found by the environment mark, not by ancestry
    subprocess.run([sys.executable, "-c", "import os, time\\nif os.fork() == 0:\\n    time.sleep(600)"], check=True)

def test_ends_its_children():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


def test_the_suite_fails_a_test_that_leaves_a_process_behind(tmp_path):
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    proc = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "test_leaky.py"],
                          cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO), BAM_DENSE_LEAK_GRACE_S="1"), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "3 passed, 2 errors" in out, out
    assert "ERROR test_leaky.py::test_leaves_a_child" in out and "ERROR test_leaky.py::test_leaves_an_orphan" in out, out
    assert "1 process(es) started by this test still alive 1 s after it" in out and "time.sleep(600)" in out, out


TERM_THEN_WAIT = """
import os, signal, subprocess, sys, time
folder = sys.argv[1]
def on_term(*_):
    open(os.path.join(folder, "terminated"), "w").close()
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
ignores_term = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "open(os.path.join(sys.argv[1], f'pid-{os.getpid()}'), 'w').close(); time.sleep(600)")
subprocess.Popen([sys.executable, "-c", ignores_term, folder])
time.sleep(600)
"""


def test_an_interrupted_run_tree_terminates_the_command_then_kills_what_it_left(tmp_path):
    def interrupt_when_started():
        _wait_for_pids(tmp_path, 1, None)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the runner

    # Ctrl-C raises KeyboardInterrupt here as in a terminal (pytest-xdist's workers ignore SIGINT).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_when_started, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            procs.run_tree([PYTHON, str(_script(tmp_path, TERM_THEN_WAIT)), str(tmp_path)])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "terminated").exists(), "the command was not given SIGTERM first"
    left = wait_until_gone(_existing(_wait_for_pids(tmp_path, 1, None, timeout=0)), GONE_WITHIN_S)
    kill_all(left)
    assert not left, "the interrupted command's child outlived it"


def test_an_xdist_worker_and_the_processes_it_starts_use_one_torch_thread():
    """Two workers on two cores: a second torch thread per worker oversubscribes the cores (measured: 4-5x the CPU
    time of a training test, spent spinning; docs/benchmarks.md). The worker inherits OMP_NUM_THREADS=2 from the
    pytest process that started it, so conftest must set the value in the worker, not default it."""
    import torch

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("runs under pytest-xdist (make test)")
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    child = subprocess.run([PYTHON, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True, text=True)
    assert child.stdout.strip() == "1", child.stdout + child.stderr
