"""``bam-dense bench run PLAN --dry-run``: every step of a plan through its own dry-run, in one process tree.

Each run's pretraining is ``bam-dense pretrain --dry-run`` (single process; its checkpoint is
``<run>/pretrain/dry-run/checkpoints/last.pth``), each seg/det step ``seg|det train --dry-run`` then
``seg|det test --dry-run``, a detectron2 step ``train_net.py --dry-run`` (skipped, and said so, where detectron2
is not installed), a DAVIS step propagation and scoring on one sequence, a probe step the probe at 20 steps,
a retrieval step one plain pass keeping every patch, a linear step one epoch at one learning rate.
Data roots of the plan that exist here are used; the others are replaced by synthetic data in the same layout
(``RUN_DIR/data/<layout>``, or the seg/det work dir). ``scale`` (``--dry-run-scale``) shrinks the input sizes
of every step the same way the per-command flags do.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import replace
from pathlib import Path

from bam_dense.bench.plan import (
    STEP_KINDS,
    Plan,
    RunSpec,
    StepOutcome,
    StepSpec,
    _execute,
    _located,
    applies,
    run_family,
    walk_plan,
)
from bam_dense.bench.plan import pretrain_commands as plan_pretrain_commands

PROBE_DRY_RUN_STEPS = 20


def _exists(path: str | None) -> str | None:
    path = _located(path)
    return path if path and Path(path).exists() else None


def _synthetic(layout: str, run_dir: Path) -> Path:
    from bam_dense.data.synthetic import make

    root = run_dir / "data" / layout
    marker = root / ".complete"
    if not marker.exists():
        make(layout, root, num=4 if layout != "davis" else 1)
        marker.write_text("")
    return root / "ADEChallengeData2016" if layout == "ade20k" else root


def _scale_args(scale: float | None) -> list[str]:
    return ["--dry-run-scale", str(scale)] if scale else []


def pretrain_commands(run: RunSpec, run_dir: Path, scale: float | None) -> list[list[str]]:
    """The plan's pretraining command in one process, with ``--dry-run`` (and the scale) appended."""
    one_process = replace(run, pretrain={**(run.pretrain or {}), "nproc": 1})
    return [command + ["--dry-run", *_scale_args(scale)] for command in plan_pretrain_commands(one_process, run_dir)]


def checkpoint_of(run: RunSpec, run_dir: Path) -> str:
    if run.checkpoint:
        return run.checkpoint
    return str(run_dir / run.name / "pretrain" / "dry-run" / "checkpoints" / "last.pth")


def _dry_data(step: StepSpec, run_dir: Path) -> StepSpec:
    """The step with its data roots as the dry-run reads them: the plan's where they exist here, otherwise synthetic
    data in the same layout (seg/det/detectron2 without one: the command's own synthetic data)."""
    if step.kind == "davis":
        return replace(step, davis_root=_exists(step.davis_root) or str(_synthetic("davis", run_dir)))
    if step.kind == "probe":
        return replace(step, ade_root=step.ade_root and (_exists(step.ade_root) or str(_synthetic("ade20k", run_dir))),
                       davis_root=step.davis_root and (_exists(step.davis_root) or str(_synthetic("davis", run_dir))))
    if step.kind == "retrieval":
        layout = "voc" if step.dataset == "voc" else "ade20k"
        return replace(step, data_root=_exists(step.data_root) or str(_synthetic(layout, run_dir)))
    if step.kind == "linear":
        return replace(step, data_root=_exists(step.data_root) or str(_synthetic("imagenet", run_dir)))
    if step.kind == "detectron2":
        return replace(step, coco_root=_exists(step.coco_root), nproc=1)
    return replace(step, data_root=_exists(step.data_root))


def _sized(full: int, scale: float | None, default: int) -> str:
    return str(max(32, int(round(full * scale / 16)) * 16)) if scale else str(default)


def _dry_flags(step: StepSpec, scale: float | None) -> list[list[str]]:
    """What each of the plan's commands of this step gets appended to become its dry-run (argparse keeps the last
    value of a repeated flag, so these override the step's own options)."""
    if step.kind in ("seg", "det"):
        return [["--dry-run", *_scale_args(scale)]] * 2
    if step.kind == "davis":
        sets = Path(step.davis_root) / "ImageSets" / "2017" / "val.txt"
        first = sets.read_text().split()[0] if sets.is_file() else None
        seq = ["--sequences", first] if first else []
        return [[*seq, *(["--resolution", _sized(480, scale, 0)] if scale else [])], seq]
    if step.kind == "probe":
        return [["--steps", str(PROBE_DRY_RUN_STEPS)]]
    if step.kind == "retrieval":  # one plain pass, every patch kept, input shrunk to a 2x2-patch grid at most
        return [["--input-size", _sized(512, scale, 64), "--no-augment", "--memory-size", "0"]]
    if step.kind == "linear":
        return [["--resolution", _sized(224, scale, 32), "--epochs", "1", "--lrs", "0.001"]]
    raise KeyError(step.kind)


def step_commands(step: StepSpec, ckpt: str, out: Path, run_dir: Path, scale: float | None) -> list[list[str]] | str:
    """The dry-run commands of one step (the plan's own commands, on data that exists here, with the dry-run flags
    appended), or the reason it cannot run here."""
    if step.kind not in STEP_KINDS:
        return f"no dry-run for step kind {step.kind!r}"
    if step.kind == "detectron2" and importlib.util.find_spec("detectron2") is None:
        return "detectron2 is not installed here (bam-dense doctor says how to install it)"
    step = _dry_data(step, run_dir)
    commands = STEP_KINDS[step.kind](step, ckpt, out)
    if step.kind == "detectron2":  # before the config overrides, which take the rest of the command line
        return [[*commands[0][:2], "--dry-run", *commands[0][2:]]]
    return [command + flags for command, flags in zip(commands, _dry_flags(step, scale), strict=True)]


def run_plan_dry(plan: Plan, run_dir: str | Path, steps: list[str] | None = None, skip: list[str] | None = None,
                 scale: float | None = None) -> list[StepOutcome]:
    """Dry-run every (wanted) step of every run; outputs under ``run_dir`` as a real run's, always re-run."""
    run_dir = Path(run_dir).resolve()
    families = {run.name: run_family(run) for run in plan.runs}

    def pretrain(run: RunSpec) -> StepOutcome:
        out = run_dir / run.name / "pretrain"
        ok, detail = _execute(pretrain_commands(run, run_dir, scale), out)
        return StepOutcome(run.name, "pretrain", "done" if ok else "failed", detail or str(out / "dry-run"))

    def do_step(run: RunSpec, step: StepSpec) -> StepOutcome:
        ckpt, out = checkpoint_of(run, run_dir), run_dir / run.name / step.name
        if out.exists():
            shutil.rmtree(out)
        if not applies(step, families[run.name]):
            return StepOutcome(run.name, step.name, "skipped", f"not for {families[run.name]} encoders")
        if not Path(ckpt).exists():
            return StepOutcome(run.name, step.name, "failed", f"checkpoint {ckpt} does not exist")
        commands = step_commands(step, ckpt, out, run_dir, scale)
        if isinstance(commands, str):
            return StepOutcome(run.name, step.name, "skipped", commands)
        ok, detail = _execute(commands, out)
        return StepOutcome(run.name, step.name, "done" if ok else "failed", detail)

    return walk_plan(plan, run_dir, steps, skip, pretrain, do_step, "pretraining dry-run failed")
