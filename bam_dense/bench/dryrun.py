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
import sys
from pathlib import Path

from bam_dense.bench.plan import BAM, Plan, RunSpec, StepOutcome, StepSpec, _execute, _repo
from bam_dense.core.paths import REPO_ROOT

PROBE_DRY_RUN_STEPS = 20


def _exists(path: str | None) -> str | None:
    path = _repo(path)
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
    p = run.pretrain or {}
    out = run_dir / run.name / "pretrain"
    args = ["--config", _repo(p["config"]), f"run.output_dir={out}", f"run.seed={run.seed}", *p.get("overrides", [])]
    return [[*BAM, "pretrain", *args, "--dry-run", *_scale_args(scale)]]


def checkpoint_of(run: RunSpec, run_dir: Path) -> str:
    if run.checkpoint:
        return run.checkpoint
    return str(run_dir / run.name / "pretrain" / "dry-run" / "checkpoints" / "last.pth")


def step_commands(step: StepSpec, ckpt: str, out: Path, run_dir: Path, scale: float | None) -> list[list[str]] | str:
    """The dry-run commands of one step, or the reason it cannot run here."""
    if step.kind in ("seg", "det"):
        root = _exists(step.data_root)
        root_args = ["--data-root", root] if root else []
        config = _repo(step.config)
        return [
            [*BAM, step.kind, "train", config, "--checkpoint", ckpt, "--work-dir", str(out), *root_args, *step.options,
             "--dry-run", *_scale_args(scale)],
            [*BAM, step.kind, "test", config, "--checkpoint", str(out), "--work-dir", str(out), *root_args,
             "--out", str(out / "metrics.json"), "--dry-run", *_scale_args(scale)],
        ]
    if step.kind == "detectron2":
        if importlib.util.find_spec("detectron2") is None:
            return "detectron2 is not installed here (bam-dense doctor says how to install it)"
        cmd = [sys.executable, str(REPO_ROOT / "downstream" / "detectron2" / "train_net.py"), "--config-file",
               _repo(step.config), "--checkpoint", ckpt, "--metrics-out", str(out / "metrics.json"), "--dry-run"]
        root = _exists(step.coco_root)
        if root:
            cmd += ["--coco-root", root]
        lazy = str(step.config).endswith(".py")
        return [cmd + step.options + ([f"train.output_dir={out}"] if lazy else ["OUTPUT_DIR", str(out)])]
    if step.kind == "davis":
        root = _exists(step.davis_root) or str(_synthetic("davis", run_dir))
        sets = Path(root) / "ImageSets" / "2017" / "val.txt"
        first = sets.read_text().split()[0] if sets.is_file() else None
        seq = ["--sequences", first] if first else []
        resolution = ["--resolution", str(max(32, int(round(480 * scale / 16)) * 16))] if scale else []
        return [
            [*BAM, "davis", "propagate", "--checkpoint", ckpt, "--davis-root", root, "--out", str(out / "results"),
             *step.options, *seq, *resolution],
            [*BAM, "davis", "eval", "--davis-root", root, "--results", str(out / "results"), "--out", str(out), *seq],
        ]
    if step.kind == "probe":
        cmd = [*BAM, "probe", "--checkpoint", ckpt, "--out", str(out / "metrics.json")]
        if step.ade_root:
            cmd += ["--ade-root", _exists(step.ade_root) or str(_synthetic("ade20k", run_dir))]
        if step.davis_root:
            cmd += ["--davis-root", _exists(step.davis_root) or str(_synthetic("davis", run_dir))]
        return [cmd + step.options + ["--steps", str(PROBE_DRY_RUN_STEPS)]]
    if step.kind == "retrieval":  # one plain pass, every patch kept, input shrunk to a 2x2-patch grid at most
        layout = "voc" if step.dataset == "voc" else "ade20k"
        root = _exists(step.data_root) or str(_synthetic(layout, run_dir))
        size = str(max(32, int(round(512 * scale / 16)) * 16)) if scale else "64"
        return [[*BAM, "eval", "retrieval", "--checkpoint", ckpt, "--dataset", step.dataset, "--data-root", root,
                 "--out", str(out / "metrics.json"), *step.options, "--input-size", size, "--no-augment",
                 "--memory-size", "0"]]
    if step.kind == "linear":
        root = _exists(step.data_root) or str(_synthetic("imagenet", run_dir))
        size = str(max(32, int(round(224 * scale / 16)) * 16)) if scale else "32"
        return [[*BAM, "eval", "linear", "--checkpoint", ckpt, "--data-root", root, "--out", str(out / "metrics.json"),
                 *step.options, "--resolution", size, "--epochs", "1", "--lrs", "0.001"]]
    return f"no dry-run for step kind {step.kind!r}"


def run_plan_dry(plan: Plan, run_dir: str | Path, steps: list[str] | None = None, skip: list[str] | None = None,
                 scale: float | None = None) -> list[StepOutcome]:
    """Dry-run every (wanted) step of every run; outputs under ``run_dir`` as a real run's, always re-run."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    wanted = set(steps or [s.name for s in plan.steps] + ["pretrain"])
    skipped = set(skip or [])
    for run in plan.runs:
        ckpt = checkpoint_of(run, run_dir)
        if run.pretrain and "pretrain" in wanted and "pretrain" not in skipped:
            out = run_dir / run.name / "pretrain"
            ok, detail = _execute(pretrain_commands(run, run_dir, scale), out)
            outcomes.append(StepOutcome(run.name, "pretrain", "done" if ok else "failed", detail or str(out / "dry-run")))
            if not ok:
                outcomes += [StepOutcome(run.name, s.name, "failed", "pretraining dry-run failed") for s in plan.steps]
                continue
        for step in plan.steps:
            if step.name not in wanted or step.name in skipped:
                continue
            out = run_dir / run.name / step.name
            if out.exists():
                shutil.rmtree(out)
            if not Path(ckpt).exists():
                outcomes.append(StepOutcome(run.name, step.name, "failed", f"checkpoint {ckpt} does not exist"))
                continue
            commands = step_commands(step, ckpt, out, run_dir, scale)
            if isinstance(commands, str):
                outcomes.append(StepOutcome(run.name, step.name, "skipped", commands))
                continue
            ok, detail = _execute(commands, out)
            outcomes.append(StepOutcome(run.name, step.name, "done" if ok else "failed", detail))
    return outcomes
