"""``bam-dense bench run PLAN --run-dir DIR``: from checkpoints (or pretraining) to every dense benchmark.

A plan (``configs/bench/*.yaml``) lists encoders (``runs``: a given ``checkpoint``, or a ``pretrain``
config, with the conditions the report compares published numbers on: ``data``, ``epochs``, ``arch``,
``patch``) and ``steps`` (``kind``: seg, det, detectron2, davis, probe, retrieval, linear). Every step is a short list of
bam-dense commands, so the same plan runs here step by step, or prints one ``sbatch`` job per step
(``--print-slurm``, pretraining first, the rest depending on it). Layout::

    RUN_DIR/plan.yaml
    RUN_DIR/<run>/pretrain/...            (checkpoints/last.pth, summary.json)
    RUN_DIR/<run>/<step>/metrics.json     (what the report reads)
    RUN_DIR/<run>/<step>/log.txt          (the commands' output)
    RUN_DIR/<run>/<step>/error.txt        (only when the step failed)

A step with a ``metrics.json`` is done and skipped (``--force`` re-runs it); a failing step leaves its
error and log, and the other steps still run. Each command runs with :func:`bam_dense.core.procs.run_tree`:
whatever it started is killed when it ends or fails, and it dies with the runner (SIGKILL included).
Adding a benchmark: an entry in :mod:`bam_dense.bench.published` and, for a new kind of step, one function
in ``STEP_KINDS``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bam_dense.bench.published import BENCHMARKS
from bam_dense.core import procs
from bam_dense.core.errors import UserFacingError
from bam_dense.core.paths import REPO_ROOT

BAM = [sys.executable, "-m", "bam_dense.cli"]


@dataclass
class RunSpec:
    name: str
    method: str
    seed: int = 0
    checkpoint: str | None = None
    pretrain: dict | None = None
    # What the leaderboard compares published rows on (bam_dense.bench.published.Conditions); a run that leaves
    # one out is never reported as the same protocol as a published number.
    data: str | None = None  # pretraining data, e.g. "ImageNet-1k"
    epochs: int | str | None = None  # pretraining epochs
    arch: str | None = None  # "ViT-B", "ResNet-50", ...
    patch: int | None = None  # ViT patch size (leave out for CNNs)


@dataclass
class StepSpec:
    name: str
    kind: str
    benchmark: str | None = None
    config: str | None = None
    data_root: str | None = None
    coco_root: str | None = None
    ade_root: str | None = None
    davis_root: str | None = None
    dataset: str | None = None  # retrieval: voc or ade20k
    options: list[str] = field(default_factory=list)
    nproc: int = 1


@dataclass
class Plan:
    name: str
    runs: list[RunSpec]
    steps: list[StepSpec]
    slurm: dict = field(default_factory=dict)


def _check_keys(where: str, data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UserFacingError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"plan {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    _check_keys(str(path), data, {"name", "runs", "steps", "slurm"})
    runs = []
    for i, r in enumerate(data.get("runs") or []):
        _check_keys(f"{path}: runs[{i}]", r, {"name", "method", "seed", "checkpoint", "pretrain", "data", "epochs", "arch", "patch"})
        if "name" not in r or (("checkpoint" in r) == ("pretrain" in r)):
            raise UserFacingError(f"{path}: runs[{i}] needs a name and exactly one of checkpoint / pretrain")
        runs.append(RunSpec(r["name"], r.get("method", r["name"]), r.get("seed", 0), r.get("checkpoint"), r.get("pretrain"),
                            r.get("data"), r.get("epochs"), r.get("arch"), r.get("patch")))
    steps = []
    for i, s in enumerate(data.get("steps") or []):
        _check_keys(f"{path}: steps[{i}]", s, set(StepSpec.__dataclass_fields__))
        if s.get("kind") not in STEP_KINDS:
            raise UserFacingError(f"{path}: steps[{i}].kind {s.get('kind')!r} is not one of {', '.join(STEP_KINDS)}")
        for key in REQUIRED.get(s["kind"], ()):
            if not s.get(key):
                raise UserFacingError(f"{path}: steps[{i}] ({s['kind']}) needs {key}")
        if s["kind"] == "retrieval" and s["dataset"] not in RETRIEVAL_DATASETS:
            raise UserFacingError(f"{path}: steps[{i}].dataset {s['dataset']!r} is not one of {', '.join(RETRIEVAL_DATASETS)}")
        if s.get("benchmark") and s["benchmark"] not in BENCHMARKS:
            raise UserFacingError(f"{path}: steps[{i}].benchmark {s['benchmark']!r} is unknown; known: {', '.join(BENCHMARKS)}")
        steps.append(StepSpec(**s))
    if not runs or not steps:
        raise UserFacingError(f"{path}: a plan needs at least one run and one step")
    names = [r.name for r in runs] + [s.name for s in steps]
    if len(set(names)) != len(names):
        raise UserFacingError(f"{path}: run and step names must be unique")
    return Plan(data.get("name", path.stem), runs, steps, data.get("slurm") or {})


# ---------------------------------------------------------------------------------------------
# Step kinds: (step, checkpoint, step dir) -> commands
# ---------------------------------------------------------------------------------------------
# A step runs only when the plan decided it must (not done, or --force), into its own folder: its commands replace
# their earlier outputs there (--force), and propagation starts clean when those came from other inputs (--overwrite).


def _repo(path: str | None) -> str | None:
    """Paths in plans are relative to the repository when they do not exist as given."""
    if path is None or Path(path).exists() or Path(path).is_absolute():
        return path
    candidate = REPO_ROOT / path
    return str(candidate) if candidate.exists() else path


def _seg_like(task: str):
    def commands(step: StepSpec, ckpt: str, out: Path) -> list[list[str]]:
        root = ["--data-root", step.data_root] if step.data_root else []
        return [
            [*BAM, task, "train", _repo(step.config), "--checkpoint", ckpt, "--work-dir", str(out), *root, *step.options],
            [*BAM, task, "test", _repo(step.config), "--checkpoint", str(out), "--work-dir", str(out), *root,
             "--out", str(out / "metrics.json"), "--force"],
        ]

    return commands


def _detectron2(step: StepSpec, ckpt: str, out: Path) -> list[list[str]]:
    cmd = [sys.executable, str(REPO_ROOT / "downstream" / "detectron2" / "train_net.py"), "--config-file", _repo(step.config),
           "--checkpoint", ckpt, "--metrics-out", str(out / "metrics.json"), "--num-gpus", str(step.nproc)]
    if step.coco_root:
        cmd += ["--coco-root", step.coco_root]
    lazy = str(step.config).endswith(".py")  # LazyConfig overrides are key=value, YAML ones KEY VALUE
    return [cmd + step.options + ([f"train.output_dir={out}"] if lazy else ["OUTPUT_DIR", str(out)])]


def _davis(step: StepSpec, ckpt: str, out: Path) -> list[list[str]]:
    return [
        [*BAM, "davis", "propagate", "--checkpoint", ckpt, "--davis-root", step.davis_root, "--out", str(out / "results"),
         "--overwrite", *step.options],
        [*BAM, "davis", "eval", "--davis-root", step.davis_root, "--results", str(out / "results"), "--out", str(out)],
    ]


def _probe(step: StepSpec, ckpt: str, out: Path) -> list[list[str]]:
    cmd = [*BAM, "probe", "--checkpoint", ckpt, "--out", str(out / "metrics.json"), "--force"]
    if step.ade_root:
        cmd += ["--ade-root", step.ade_root]
    if step.davis_root:
        cmd += ["--davis-root", step.davis_root]
    return [cmd + step.options]


def _retrieval(step: StepSpec, ckpt: str, out: Path) -> list[list[str]]:
    return [[*BAM, "eval", "retrieval", "--checkpoint", ckpt, "--dataset", step.dataset, "--data-root", step.data_root,
             "--out", str(out / "metrics.json"), "--force", *step.options]]


def _linear(step: StepSpec, ckpt: str, out: Path) -> list[list[str]]:
    return [[*BAM, "eval", "linear", "--checkpoint", ckpt, "--data-root", step.data_root, "--out", str(out / "metrics.json"),
             "--force", *step.options]]


STEP_KINDS = {"seg": _seg_like("seg"), "det": _seg_like("det"), "detectron2": _detectron2, "davis": _davis, "probe": _probe,
              "retrieval": _retrieval, "linear": _linear}
# Keys a step of each kind cannot do without (checked when the plan is loaded, not when the step runs).
REQUIRED = {"seg": ("config",), "det": ("config",), "detectron2": ("config",), "davis": ("davis_root",),
            "retrieval": ("dataset", "data_root"), "linear": ("data_root",)}
RETRIEVAL_DATASETS = ("voc", "ade20k")


def pretrain_commands(run: RunSpec, run_dir: Path) -> list[list[str]]:
    p = run.pretrain or {}
    if "config" not in p:
        raise UserFacingError(f"run {run.name}: pretrain needs a config")
    out = run_dir / run.name / "pretrain"
    args = ["--config", _repo(p["config"]), f"run.output_dir={out}", f"run.seed={run.seed}", *p.get("overrides", [])]
    nproc = int(p.get("nproc", 1))
    if nproc > 1:
        return [[sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                 str(REPO_ROOT / "pretrain" / "train.py"), *args]]
    return [[*BAM, "pretrain", *args]]


def checkpoint_of(run: RunSpec, run_dir: Path) -> str:
    if run.checkpoint:
        return run.checkpoint
    return str(run_dir / run.name / "pretrain" / "checkpoints" / "last.pth")


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


@dataclass
class StepOutcome:
    run: str
    step: str
    status: str  # done | skipped | failed
    detail: str = ""


def _execute(commands: list[list[str]], out: Path) -> tuple[bool, str]:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    with open(log, "a") as fh:
        for cmd in commands:
            fh.write(f"\n$ {shlex.join(cmd)}\n")
            fh.flush()
            status = procs.run_tree(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT))
            if status != 0:
                tail = log.read_text().strip().splitlines()[-15:]
                message = f"command failed with exit status {status}: {shlex.join(cmd)}\n" + "\n".join(tail)
                (out / "error.txt").write_text(message + "\n")
                return False, f"exit {status}: {shlex.join(cmd[:6])} ... (see {out / 'error.txt'})"
    return True, ""


def walk_plan(plan: Plan, run_dir: Path, steps: list[str] | None, skip: list[str] | None,
              pretrain: Callable[[RunSpec], StepOutcome], do_step: Callable[[RunSpec, StepSpec], StepOutcome],
              pretrain_failed: str) -> list[StepOutcome]:
    """The wanted steps of every run in order: its pretraining (``pretrain(run)``, where the run has one), then
    each step (``do_step(run, step)``); when the pretraining fails, every step of the run fails with
    ``pretrain_failed``. ``steps`` keeps only those named (``pretrain`` included), ``skip`` drops those named."""
    run_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    wanted = set(steps or [s.name for s in plan.steps] + ["pretrain"])
    skipped = set(skip or [])
    for run in plan.runs:
        if run.pretrain and "pretrain" in wanted and "pretrain" not in skipped:
            outcomes.append(pretrain(run))
            if outcomes[-1].status == "failed":
                outcomes += [StepOutcome(run.name, step.name, "failed", pretrain_failed) for step in plan.steps]
                continue
        outcomes += [do_step(run, step) for step in plan.steps if step.name in wanted and step.name not in skipped]
    return outcomes


def run_plan(plan: Plan, run_dir: str | Path, steps: list[str] | None = None, skip: list[str] | None = None,
             force: bool = False) -> list[StepOutcome]:
    run_dir = Path(run_dir)

    def pretrain(run: RunSpec) -> StepOutcome:
        summary = run_dir / run.name / "pretrain" / "summary.json"
        if summary.exists() and not force and '"completed": true' in summary.read_text():
            return StepOutcome(run.name, "pretrain", "skipped", "already trained")
        ok, detail = _execute(pretrain_commands(run, run_dir), run_dir / run.name / "pretrain")
        return StepOutcome(run.name, "pretrain", "done" if ok else "failed", detail)

    def do_step(run: RunSpec, step: StepSpec) -> StepOutcome:
        ckpt, out = checkpoint_of(run, run_dir), run_dir / run.name / step.name
        if (out / "metrics.json").exists() and not force:
            return StepOutcome(run.name, step.name, "skipped", "metrics.json exists")
        if force and out.exists():
            shutil.rmtree(out)
        if not Path(ckpt).exists():
            out.mkdir(parents=True, exist_ok=True)
            (out / "error.txt").write_text(f"checkpoint {ckpt} does not exist\n")
            return StepOutcome(run.name, step.name, "failed", f"checkpoint {ckpt} does not exist")
        (out / "error.txt").unlink(missing_ok=True)
        ok, detail = _execute(STEP_KINDS[step.kind](step, ckpt, out), out)
        return StepOutcome(run.name, step.name, "done" if ok else "failed", detail)

    return walk_plan(plan, run_dir, steps, skip, pretrain, do_step, "pretraining failed")


def slurm_script(plan: Plan, plan_path: str, run_dir: Path) -> str:
    """One sbatch job per step; steps depend on their run's pretraining job."""
    s = plan.slurm
    common = [f"--partition={s['partition']}"] if s.get("partition") else []
    common += [f"--time={s.get('time', '72:00:00')}"] + list(s.get("extra", []))
    lines = ["#!/usr/bin/env bash", f"# bam-dense bench plan {plan.name} ({plan_path})", "set -euo pipefail"]
    for run in plan.runs:
        dep = ""
        var = f"PRE_{run.name.upper().replace('-', '_')}"
        if run.pretrain:
            nproc = int(run.pretrain.get("nproc", s.get("gpus_per_node", 8)))
            nodes = int(run.pretrain.get("nodes", s.get("nodes", 1)))
            args = ["--config", _repo(run.pretrain["config"]), f"run.output_dir={run_dir / run.name / 'pretrain'}",
                    f"run.seed={run.seed}", *run.pretrain.get("overrides", [])]
            lines.append(f"{var}=$(sbatch --parsable --job-name={run.name}-pretrain --nodes={nodes} --ntasks-per-node={nproc} "
                         f"--gpus-per-node={nproc} {' '.join(common)} {REPO_ROOT / 'pretrain' / 'slurm.sh'} {shlex.join(args)})")
            dep = f"--dependency=afterok:${var} "
        ckpt = checkpoint_of(run, run_dir)
        for step in plan.steps:
            out = run_dir / run.name / step.name
            cmds = " && ".join(shlex.join(c) for c in STEP_KINDS[step.kind](step, ckpt, out))
            lines.append(f"sbatch {dep}--job-name={run.name}-{step.name} --nodes=1 --gpus-per-node={step.nproc} "
                         f"{' '.join(common)} --output={out}.slurm-%j.out --wrap {shlex.quote(cmds)}")
    return "\n".join(lines) + "\n"
