"""Shared helpers: tiny configs and synthetic datasets sized for a 2-core CI machine."""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# Two cores: keep torch from oversubscribing when tests start subprocesses. `make test` runs two pytest-xdist
# workers: one thread each (and for the processes they start). A worker inherits the environment of the pytest
# process that started it, which has already run this file: the worker sets its own value, it does not default.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
else:
    os.environ.setdefault("OMP_NUM_THREADS", "2")

# ---------------------------------------------------------------------------- no process outlives its test
# Every process a test starts inherits TEST_MARK in its environment (forked children share the environment
# block of the process they were forked from), so that it is found even after its parent died and it was
# re-parented. Forked children of pytest itself carry pytest's original environment: they are found as its
# descendants instead.
TEST_MARK = "BAM_DENSE_TEST_MARK"
LEAK_GRACE_S = float(os.environ.get("BAM_DENSE_LEAK_GRACE_S", "5"))  # seconds for processes that are ending
# pytest's own multiprocessing helpers, started once and ended with pytest.
_SESSION_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
_tests = itertools.count()


def _living(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def processes_marked(name: str, value: str) -> list[psutil.Process]:
    """Living processes of this user whose environment has ``name=value`` (a value unique to one test or run).

    No filter on start time: psutil derives it from the boot time in whole seconds plus clock ticks, which can lag
    ``time.time()`` by a second or more (measured -0.996 s here), so such a filter dropped a run's own first process."""
    me, found = os.getuid(), []
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"].real != me or proc.pid == os.getpid():
                continue
            if proc.environ().get(name) == value and _living(proc):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _describe(procs: list[psutil.Process]) -> str:
    lines = []
    for proc in procs:
        try:
            lines.append(f"pid {proc.pid} (parent {proc.ppid()}, {proc.status()}): {' '.join(proc.cmdline())[:200]}")
        except psutil.Error:
            lines.append(f"pid {proc.pid} (ended)")
    return "\n".join(lines)


def wait_until_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until every process of ``procs`` has ended (or is a zombie); return those left at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if _living(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def kill_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _left_behind(before: set[int], mark: str) -> list[psutil.Process]:
    me = psutil.Process()
    left = {p.pid: p for p in processes_marked(TEST_MARK, mark)}
    for child in me.children(recursive=True):
        if child.pid not in before and _living(child):
            left.setdefault(child.pid, child)
    return [p for pid, p in left.items() if not _session_helper(p)]


def _session_helper(proc: psutil.Process) -> bool:
    try:
        return proc.ppid() == os.getpid() and any(h in " ".join(proc.cmdline()) for h in _SESSION_HELPERS)
    except psutil.Error:
        return False


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """Fail a test that leaves a process behind (after a grace period for processes that are ending), killing it."""
    mark = f"{os.getpid()}-{next(_tests)}"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    outer = os.environ.get(TEST_MARK)
    os.environ[TEST_MARK] = mark
    yield
    if outer is None:
        os.environ.pop(TEST_MARK, None)
    else:
        os.environ[TEST_MARK] = outer
    deadline = time.monotonic() + LEAK_GRACE_S
    while (left := _left_behind(before, mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        description = _describe(left)
        kill_all(left)
        pytest.fail(f"{len(left)} process(es) started by this test still alive {LEAK_GRACE_S:.0f} s after it "
                    f"(killed now):\n{description}", pytrace=False)


def tiny_pretrain_dict(out: Path, method_name: str = "bam", **sections) -> dict:
    """A pretraining config small enough for a test: a 2-block ViT on 16-px crops of synthetic images."""
    cfg = {
        "run": {"output_dir": str(out), "seed": 0, "log_every": 1, "checkpoint_every": 1000, "progress": False,
                "tensorboard": False},
        "data": {
            "batch_size_per_gpu": 8,
            "num_workers": 0,
            "synthetic": {"num_images": 32, "size": 32, "num_classes": 4, "seed": 0},
            "views": {"kind": "multicrop", "global_crops": 2, "global_size": 16, "local_crops": 2, "local_size": 8,
                      "global_scale": [0.4, 1.0], "local_scale": [0.1, 0.4], "blur_radius": [0.1, 0.3]},
        },
        "model": {"arch": "vit_small_patch16_224",
                  "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
        "optim": {"name": "adamw", "epochs": 2, "lr": 1e-3, "warmup_epochs": 1, "weight_decay": 0.04,
                  "weight_decay_end": 0.1, "clip_grad": 3.0},
        "teacher": {"enabled": True, "momentum": 0.99},
        "method": {"name": method_name, "top_k": 4,
                   "projector": {"layers": 2, "hidden_dim": 32, "out_dim": 16, "bn": False, "bias": True, "act": "gelu"}},
    }
    for key, value in sections.items():
        section = cfg.setdefault(key, {})
        section.update(value)
    return cfg


def merged(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``, nested dicts key by key (as detectron2 merges a config's _BASE_)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def detectron2_yaml(path: Path) -> dict:
    """A detectron2 YAML config with its _BASE_ chain merged, children over parents (a ``detectron2://`` base,
    detectron2's own file, is not read here)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    return merged({} if base.startswith("detectron2://") else detectron2_yaml(Path(path).parent / base), data)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Every synthetic layout, written once per test session."""
    from bam_dense.data import synthetic

    root = tmp_path_factory.mktemp("synthetic")
    for layout in ("imagenet", "ade20k", "voc", "coco", "davis"):
        synthetic.make(layout, root / layout, seed=0)
    return root


@pytest.fixture(scope="session")
def resnet_checkpoint(tmp_path_factory) -> Path:
    """timm's ResNet-50 (seed 0, no classifier) saved as a plain state dict: the torchvision-style R50 checkpoint."""
    import timm
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("r50") / "resnet50.pth"
    torch.save(timm.create_model("resnet50", num_classes=0).state_dict(), path)
    return path


def tiny_vit_bam_checkpoint(path: Path) -> Path:
    """A bam-dense checkpoint around the tiny official DINO ViT of ``fixtures/dino_pos.pt`` (student = teacher)."""
    import torch

    record = torch.load(Path(__file__).parent / "fixtures" / "dino_pos.pt", weights_only=True)["tiny"]
    state = {f"backbone.{k}": v for k, v in record["state_dict"].items()}
    torch.save({"format": "bam-dense", "student": state, "teacher": state, "arch": "vit_small_patch16_224",
                "model_kwargs": dict(record["config"])}, path)
    return path


# ---------------------------------------------------------------------------- per-test CPU ledger
# BAM_DENSE_TEST_LEDGER=path: append one JSON line per test phase with its wall time and the CPU seconds of the
# pytest process and of the subprocesses it waited for (docs/benchmarks.md reads the suite's budget from it).
_LEDGER = os.environ.get("BAM_DENSE_TEST_LEDGER")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not _LEDGER:
        return (yield)
    import json
    import resource

    def cpu():
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime

    wall, (own, kids) = time.perf_counter(), cpu()
    try:
        return (yield)
    finally:
        own2, kids2 = cpu()
        with open(_LEDGER, "a") as fh:
            fh.write(json.dumps({"test": item.nodeid, "worker": os.environ.get("PYTEST_XDIST_WORKER", "-"),
                                 "wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(own2 - own, 2),
                                 "children_cpu_s": round(kids2 - kids, 2)}) + "\n")


# ---------------------------------------------------------------------------- longest tests first
# `make test` hands tests to two pytest-xdist workers one by one (--dist load --maxschedchunk 1): starting the
# longest ones first keeps a long test from running alone at the end (measured in docs/benchmarks.md).
LONGEST_FIRST = (
    "test_reduced_demo_writes_a_report_with_every_section",
    "test_bench_plan_dry_run",
    "test_detectron2_recipe_dry_run_trains_and_evaluates",
    "test_mm_recipe_dry_run_trains_validates_and_tests",
    "test_a_failing_step_keeps_the_other_results_and_says_why",
    "test_a_plan_of_two_methods_gives_a_side_by_side_report",
    "test_tiny_configs_train_with_a_falling_loss",
    "test_pretraining_recipe_dry_run",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.originalname, len(rank)))  # stable: the others keep their order
