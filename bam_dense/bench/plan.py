"""``bam-dense bench run PLAN --run-dir DIR``: from checkpoints (or pretraining) to every dense benchmark.

A plan (``configs/bench/*.yaml``) lists encoders (``runs``: a given ``checkpoint``, or a ``pretrain``
config, with the conditions the report compares published numbers on: ``data``, ``epochs``, ``arch``,
``patch``) and ``steps`` (``kind``: seg, det, detectron2, davis, probe, retrieval, linear). Every step is a short list of
bam-dense commands, so the same plan runs here step by step, or prints one ``sbatch`` job per step
(``--print-slurm``, pretraining first, the rest depending on it). Layout::

    RUN_DIR/plan.yaml
    RUN_DIR/<run>/pretrain/...            (checkpoints/last.pth, summary.json)
    RUN_DIR/<run>/<step>/metrics.json     (what the report reads: the number and its conditions)
    RUN_DIR/<run>/<step>/inputs.json      (what produced it: checkpoint identity, commands, code version)
    RUN_DIR/<run>/<step>/log.txt          (the commands' output)
    RUN_DIR/<run>/<step>/error.txt        (only when the step failed)

Before anything runs, :func:`check_plan` refuses a step that does not measure its benchmark (step kind, dataset,
synthetic data under a real benchmark, an encoder family it cannot apply to; ``families`` gives a step to some
runs only), and :func:`preflight` refuses a run directory holding results made from other inputs (``--overwrite``
remakes them). A step whose ``metrics.json`` is readable and whose ``inputs.json`` (checkpoint size and SHA-256,
commands, code version) equals today's is done and skipped (``--force`` re-runs it); a finished step gets the
``conditions`` it ran under written into its ``metrics.json`` (:mod:`bam_dense.bench.conditions`). A failing step
leaves its error and log, and the other steps still run. Each command runs with :func:`bam_dense.core.procs.run_tree`:
whatever it started is killed when it ends or fails, and it dies with the runner (SIGKILL included).
Adding a benchmark: an entry in :mod:`bam_dense.bench.published` and, for a new kind of step, one function
in ``STEP_KINDS``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bam_dense.bench import conditions
from bam_dense.bench.published import BENCHMARKS
from bam_dense.bench.report import NOT_APPLICABLE
from bam_dense.core import identity, procs
from bam_dense.core.atomic import atomic_write_text
from bam_dense.core.errors import UserFacingError
from bam_dense.core.paths import IMPORT_ROOT, bundled, locate

BAM = [sys.executable, "-m", "bam_dense.cli"]


@dataclass
class RunSpec:
    name: str
    method: str
    seed: int = 0
    checkpoint: str | None = None
    pretrain: dict | None = None
    # What the run states about its encoder's pretraining, recorded with every step's conditions
    # (bam_dense.bench.conditions); arch and patch are the plan check's fallback where the checkpoint is not there yet.
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
    # Encoder families the step is for (vit, cnn): runs of another family skip it. Without it, a step that
    # cannot apply to one of the plan's runs is refused at plan check.
    families: list[str] | None = None


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


PATH_KEYS = ("config", "data_root", "coco_root", "ade_root", "davis_root")


def resolve_path(path: str | None, base: Path) -> str | None:
    """A path of a plan as the user meant it: relative to ``base`` (the caller's working directory) where it
    exists there, else a file bundled with bam-dense (``configs/...``), else relative to ``base``."""
    if path is None or Path(path).is_absolute():
        return path
    shipped = None if (base / path).exists() else bundled(path)
    return str(shipped) if shipped else str((base / path).resolve())


def load_plan(path: str | Path, base: str | Path | None = None) -> Plan:
    """The plan at ``path`` (else the plan bam-dense ships by that name), its paths resolved against ``base``
    (default: the working directory)."""
    base = Path(base or Path.cwd())
    path = locate(path)
    if not path.is_file():
        raise UserFacingError(f"plan {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    _check_keys(str(path), data, {"name", "runs", "steps", "slurm"})
    runs = []
    for i, r in enumerate(data.get("runs") or []):
        _check_keys(f"{path}: runs[{i}]", r, {"name", "method", "seed", "checkpoint", "pretrain", "data", "epochs", "arch", "patch"})
        if "name" not in r or (("checkpoint" in r) == ("pretrain" in r)):
            raise UserFacingError(f"{path}: runs[{i}] needs a name and exactly one of checkpoint / pretrain")
        pretrain = dict(r["pretrain"], config=resolve_path(r["pretrain"].get("config"), base)) if r.get("pretrain") else None
        runs.append(RunSpec(r["name"], r.get("method", r["name"]), r.get("seed", 0), resolve_path(r.get("checkpoint"), base),
                            pretrain, r.get("data"), r.get("epochs"), r.get("arch"), r.get("patch")))
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
        if s.get("families") is not None and not set(s["families"]) <= set(FAMILIES):
            raise UserFacingError(f"{path}: steps[{i}].families {s['families']} must be among {', '.join(FAMILIES)}")
        steps.append(StepSpec(**{**s, **{k: resolve_path(s.get(k), base) for k in PATH_KEYS if s.get(k)}}))
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


def _located(path: str | None) -> str | None:
    """A plan's path as given where it exists, else the file bam-dense ships by that name."""
    return str(locate(path)) if path else path


def _seg_like(task: str):
    def commands(step: StepSpec, ckpt: str, out: Path) -> list[list[str]]:
        root = ["--data-root", step.data_root] if step.data_root else []
        return [
            [*BAM, task, "train", _located(step.config), "--checkpoint", ckpt, "--work-dir", str(out), *root,
             *step.options],
            [*BAM, task, "test", _located(step.config), "--checkpoint", str(out), "--work-dir", str(out),
             *root, "--out", str(out / "metrics.json"), "--force"],
        ]

    return commands


def _detectron2(step: StepSpec, ckpt: str, out: Path) -> list[list[str]]:
    train_net = bundled("downstream/detectron2/train_net.py", required=True)
    cmd = [sys.executable, str(train_net), "--config-file", _located(step.config), "--checkpoint", ckpt,
           "--metrics-out", str(out / "metrics.json"), "--num-gpus", str(step.nproc)]
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
FAMILIES = ("vit", "cnn", "metaformer")


def pretrain_commands(run: RunSpec, run_dir: Path) -> list[list[str]]:
    p = run.pretrain or {}
    if "config" not in p:
        raise UserFacingError(f"run {run.name}: pretrain needs a config")
    out = run_dir / run.name / "pretrain"
    args = ["--config", _located(p["config"]), f"run.output_dir={out}", f"run.seed={run.seed}", *p.get("overrides", [])]
    nproc = int(p.get("nproc", 1))
    if nproc > 1:
        return [[sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                 str(bundled("pretrain/train.py", required=True)), *args]]
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


def _child_env() -> dict:
    """The steps run in the caller's working directory (a relative path in a step's options means what the user
    meant), importing this bam-dense wherever that is."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(IMPORT_ROOT), env.get("PYTHONPATH")) if p)
    return env


def _execute(commands: list[list[str]], out: Path) -> tuple[bool, str]:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    with open(log, "a") as fh:
        for cmd in commands:
            fh.write(f"\n$ {shlex.join(cmd)}\n")
            fh.flush()
            status = procs.run_tree(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_child_env())
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


# ---------------------------------------------------------------------------------------------
# Plan check: every step against its benchmark and every run, before anything runs
# ---------------------------------------------------------------------------------------------


def _base_dataset(name: str) -> str:
    return name.removeprefix("synthetic ").removesuffix(" layout")


def step_dataset(step: StepSpec) -> tuple[str | None, str | None]:
    """(the dataset a step evaluates on, in bam_dense.bench.conditions.DATASETS' words, or None where it cannot be
    told without running; the data root it reads)."""
    if step.kind == "davis":
        return conditions.DATASETS["davis"], step.davis_root
    if step.kind == "retrieval":
        return conditions.DATASETS[conditions.option(["", *step.options], "--dataset", step.dataset)], step.data_root
    if step.kind == "linear":
        return conditions.DATASETS["imagenet"], step.data_root
    if step.kind == "probe":
        return (conditions.DATASETS["ade20k"], step.ade_root) if step.ade_root else (conditions.DATASETS["davis"],
                                                                                    step.davis_root)
    if step.kind in ("seg", "det") and step.config and Path(step.config).is_file():
        facts = _config_facts(step.config)
        return (conditions.MM_DATASETS.get(facts["dataset"]) if facts else None), step.data_root
    return None, None


def _config_facts(config: str) -> dict | None:
    try:
        from bam_dense.downstream.mm_common import config_facts

        return config_facts(config)
    except ImportError:  # no OpenMMLab here: the step cannot run anyway, and says so when it does
        return None


def run_family(run: RunSpec) -> str | None:
    """vit / cnn / ... of a run's encoder: from its pretraining config, its checkpoint, or the plan's ``arch``."""
    try:
        if run.pretrain:
            from bam_dense.core.config import load_config

            cfg = load_config(run.pretrain["config"])
            return conditions.encoder_facts(cfg.model.arch, dict(cfg.model.kwargs or {}))["family"]
        if run.checkpoint and Path(run.checkpoint).is_file():
            return conditions.checkpoint_encoder(run.checkpoint, None)["family"]
    except (UserFacingError, OSError, ValueError, KeyError):
        pass
    if run.arch:
        return "vit" if "vit" in run.arch.lower() else "cnn"
    return None


def _step_families(step: StepSpec) -> tuple[tuple[str, ...] | None, str]:
    """(the encoder families a step can run on, why): its benchmark's and its config's backbone's."""
    bench = BENCHMARKS.get(step.benchmark or "")
    if step.kind in ("seg", "det") and step.config and Path(step.config).is_file():
        facts = _config_facts(step.config)
        if facts:
            return (facts["family"],), f"config {step.config} has a {facts['backbone']} backbone"
    if bench and bench.families:
        return bench.families, f"benchmark {bench.id} is for {'/'.join(bench.families)} encoders"
    return None, ""


def applies(step: StepSpec, family: str | None) -> bool:
    """Whether the plan gives ``step`` to runs of ``family`` (its ``families``; every run when it has none)."""
    return step.families is None or family is None or family in step.families


def check_plan(plan: Plan) -> list[str]:
    """Refuse (UserFacingError, every reason at once) a plan whose steps do not measure their benchmark: another
    step kind or dataset, synthetic data under a real benchmark, or a run the step cannot apply to. Returns notes
    on options that change a condition: such numbers are filed under their own conditions, never beside the
    benchmark's published rows as the same protocol."""
    problems, notes = [], []
    families = {run.name: run_family(run) for run in plan.runs}
    for step in plan.steps:
        bench = BENCHMARKS.get(step.benchmark or "")
        where = f"step {step.name} ({step.kind})"
        if bench is None:
            continue
        if step.kind not in bench.step_kinds:
            problems.append(f"{where} is filed under {bench.id}, which {' or '.join(bench.step_kinds)} steps measure")
        dataset, root = step_dataset(step)
        if dataset is not None and dataset != _base_dataset(bench.dataset):
            problems.append(f"{where} evaluates on {dataset}, but {bench.id} is on {bench.dataset}")
        synthetic = root is not None and (Path(root) / conditions.SYNTHETIC_MARKER).is_file()
        if synthetic and not bench.dataset.startswith("synthetic"):
            problems.append(f"{where}: {root} holds synthetic data (bam-dense make-synthetic), filed under the real "
                            f"benchmark {bench.id}; file it under a synthetic_* benchmark")
        can, why = _step_families(step)
        for run in plan.runs:
            family = families[run.name]
            if can and family and family not in can and applies(step, family):
                problems.append(f"{where} cannot apply to run {run.name} (a {family} encoder): {why}; give the step "
                                f"`families: [{', '.join(can)}]` to run it only for those")
        resolution = _option_resolution(step)
        if resolution and resolution != bench.resolution_of():
            notes.append(f"{where}: runs at {resolution}, not {bench.id}'s {bench.resolution_of()}: its numbers are "
                         f"filed under their own group ({resolution})")
    if problems:
        raise UserFacingError("the plan's steps do not match their benchmarks (nothing was run):\n  " + "\n  ".join(problems))
    return notes


def _option_resolution(step: StepSpec) -> str | None:
    """The input resolution a step's options ask for, in the benchmarks' words (None: the command's default)."""
    flags = {"davis": ("--resolution", conditions.short_side), "retrieval": ("--input-size", conditions.square),
             "linear": ("--resolution", conditions.centre_crop)}
    if step.kind not in flags:
        return None
    flag, words = flags[step.kind]
    value = conditions.option(["", *step.options], flag)
    return words(int(value)) if value is not None else None


# ---------------------------------------------------------------------------------------------
# What produced a result: recorded beside it, compared before a step is skipped as done
# ---------------------------------------------------------------------------------------------

INPUTS = "inputs.json"


def step_inputs(commands: list[list[str]], checkpoint: str | None, run_dir: Path, files: dict | None = None) -> dict:
    """The checkpoint's identity (size, SHA-256), the commands (run dir, checkpoint and Python written as
    placeholders, so a moved run directory still matches) and the code version."""
    def placeholder(arg: str) -> str:
        if checkpoint and arg == checkpoint:
            return "<checkpoint>"
        return arg.replace(str(run_dir), "<run-dir>").replace(sys.executable, "<python>")

    record = {"commands": [[placeholder(a) for a in cmd] for cmd in commands], "code": identity.code_version()}
    if checkpoint:
        record["checkpoint"] = identity.file_identity(checkpoint) if Path(checkpoint).is_file() else "missing"
    for name, path in (files or {}).items():
        record[name] = identity.file_identity(path) if Path(path).is_file() else "missing"
    return record


def _compared(record: dict) -> dict:
    """What must be equal for a result to count as done: everything but the git commit (recorded, not compared: a
    commit that touches nothing of a step would otherwise void every result)."""
    return {**record, "code": {"version": record.get("code", {}).get("version")}}


def result_state(out: Path, inputs: dict, result: str = "metrics.json") -> tuple[str, str]:
    """("done" | "absent" | "invalid" | "other inputs", why) of the result in ``out`` for these ``inputs``."""
    if not (out / result).is_file():
        return "absent", ""
    if result == "metrics.json":
        try:
            conditions.read_metrics(out / result)
        except UserFacingError as err:
            return "invalid", str(err)
    if not (out / INPUTS).is_file():
        return "other inputs", f"{out / result} has no record of what produced it ({INPUTS})"
    try:
        recorded = json.loads((out / INPUTS).read_text())
    except json.JSONDecodeError:
        return "other inputs", f"{out / INPUTS} is unreadable"
    old, new = _compared(recorded), _compared(inputs)
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if changed:
        return "other inputs", f"{out}: {', '.join(changed)} changed since its result was made"
    return "done", ""


def _write_inputs(out: Path, inputs: dict) -> None:
    atomic_write_text(out / INPUTS, json.dumps(inputs, indent=1))


def _pretrain_inputs(run: RunSpec, run_dir: Path) -> dict:
    return step_inputs(pretrain_commands(run, run_dir), None, run_dir, {"config_file": run.pretrain["config"]})


def _pretrain_state(run: RunSpec, run_dir: Path) -> tuple[str, str]:
    out = run_dir / run.name / "pretrain"
    summary = out / "summary.json"
    if not summary.is_file() or '"completed": true' not in summary.read_text():
        return "absent", ""
    return result_state(out, _pretrain_inputs(run, run_dir), "summary.json")


def run_facts(run: RunSpec) -> dict:
    """What a run states about its encoder's pretraining (the plan, else its pretraining config's epochs)."""
    epochs = run.epochs
    if epochs is None and run.pretrain:
        from bam_dense.core.config import load_config

        try:
            epochs = int(load_config(run.pretrain["config"]).optim.epochs)
        except (OSError, UserFacingError, ValueError):
            epochs = None
    return {"pretrain_data": run.data, "pretrain_epochs": epochs}


def preflight(plan: Plan, run_dir: Path, steps: list[str] | None, skip: list[str] | None, overwrite: bool) -> list[str]:
    """Before anything runs: the plan check, then every finished result in ``run_dir`` compared with what would
    produce it now. Results of other inputs are refused (a new run directory, or ``--overwrite``), never mixed."""
    notes = check_plan(plan)
    wanted = set(steps or [s.name for s in plan.steps] + ["pretrain"]) - set(skip or [])
    stale = []
    for run in plan.runs:
        if run.pretrain and "pretrain" in wanted:
            state, why = _pretrain_state(run, run_dir)
            if state == "other inputs":
                stale.append(why)
        ckpt = checkpoint_of(run, run_dir)
        for step in plan.steps:
            out = run_dir / run.name / step.name
            if step.name in wanted and (out / "metrics.json").is_file():
                state, why = result_state(out, step_inputs(STEP_KINDS[step.kind](step, ckpt, out), ckpt, run_dir))
                if state == "other inputs":
                    stale.append(why)
    if stale and not overwrite:
        raise UserFacingError(f"{run_dir} holds results made from other inputs than this plan's (nothing was run):\n  "
                              + "\n  ".join(stale) + "\nUse a new --run-dir, or --overwrite to delete those results "
                              "and make them again with these inputs.")
    return notes


def run_plan(plan: Plan, run_dir: str | Path, steps: list[str] | None = None, skip: list[str] | None = None,
             force: bool = False, overwrite: bool = False, plan_file: str | Path | None = None) -> list[StepOutcome]:
    """Run the plan's wanted steps in ``run_dir`` (after :func:`preflight`); ``plan_file`` is kept there as
    ``plan.yaml`` (:func:`record_plan`)."""
    run_dir = Path(run_dir).resolve()
    for note in preflight(plan, run_dir, steps, skip, overwrite or force):
        print(f"[bam-dense] note: {note}")
    if plan_file is not None:
        record_plan(plan_file, run_dir)
    families = {run.name: run_family(run) for run in plan.runs}

    def pretrain(run: RunSpec) -> StepOutcome:
        out = run_dir / run.name / "pretrain"
        inputs = _pretrain_inputs(run, run_dir)
        state, _ = _pretrain_state(run, run_dir)
        if state == "done" and not force:
            return StepOutcome(run.name, "pretrain", "skipped", "already trained with the same inputs")
        if state == "other inputs" and out.exists():
            shutil.rmtree(out)
        ok, detail = _execute(pretrain_commands(run, run_dir), out)
        if ok:
            _write_inputs(out, inputs)
        return StepOutcome(run.name, "pretrain", "done" if ok else "failed", detail)

    def do_step(run: RunSpec, step: StepSpec) -> StepOutcome:
        ckpt, out = checkpoint_of(run, run_dir), run_dir / run.name / step.name
        if not applies(step, families[run.name]):
            out.mkdir(parents=True, exist_ok=True)
            (out / NOT_APPLICABLE).write_text(f"step {step.name} is for {', '.join(step.families)} encoders; "
                                              f"{run.name} is a {families[run.name]} one\n")
            return StepOutcome(run.name, step.name, "skipped", f"not for {families[run.name]} encoders")
        commands = STEP_KINDS[step.kind](step, ckpt, out)
        inputs = step_inputs(commands, ckpt, run_dir)
        state, why = result_state(out, inputs)
        if state == "done" and not force:
            return StepOutcome(run.name, step.name, "skipped", "done with the same inputs")
        if state == "other inputs" and not (force or overwrite):  # the pretraining changed the checkpoint since
            return StepOutcome(run.name, step.name, "failed", why + "; use --overwrite or a new --run-dir")
        if out.exists() and state != "absent":
            shutil.rmtree(out)
        if not Path(ckpt).exists():
            out.mkdir(parents=True, exist_ok=True)
            (out / "error.txt").write_text(f"checkpoint {ckpt} does not exist\n")
            return StepOutcome(run.name, step.name, "failed", f"checkpoint {ckpt} does not exist")
        (out / "error.txt").unlink(missing_ok=True)
        ok, detail = _execute(commands, out)
        if ok:
            try:
                conditions.record(step.kind, commands, out, ckpt, run_facts(run))
            except (UserFacingError, OSError, KeyError, ValueError) as err:
                (out / "error.txt").write_text(f"the step ran, but its conditions could not be recorded: {err}\n")
                return StepOutcome(run.name, step.name, "failed", f"conditions not recorded: {err}")
            _write_inputs(out, inputs)
        return StepOutcome(run.name, step.name, "done" if ok else "failed", detail)

    return walk_plan(plan, run_dir, steps, skip, pretrain, do_step, "pretraining failed")


def record_plan(plan_file: str | Path, run_dir: Path) -> None:
    """Keep the plan in ``run_dir/plan.yaml``; a different one already there is kept as ``plan.N.yaml`` and said."""
    run_dir.mkdir(parents=True, exist_ok=True)
    target, text = run_dir / "plan.yaml", locate(plan_file).read_text()
    if target.is_file() and target.read_text() != text:
        n = 1
        while (run_dir / f"plan.{n}.yaml").exists():
            n += 1
        target.rename(run_dir / f"plan.{n}.yaml")
        print(f"[bam-dense] {target} differed from {plan_file}: the old one is kept as plan.{n}.yaml")
    atomic_write_text(target, text)


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
            args = [_located(run.pretrain["config"]), f"run.output_dir={run_dir / run.name / 'pretrain'}",
                    f"run.seed={run.seed}", *run.pretrain.get("overrides", [])]
            lines.append(f"{var}=$(sbatch --parsable --job-name={run.name}-pretrain --nodes={nodes} --ntasks-per-node={nproc} "
                         f"--gpus-per-node={nproc} {' '.join(common)} {bundled('pretrain/slurm.sh', required=True)} {shlex.join(args)})")
            dep = f"--dependency=afterok:${var} "
        ckpt = checkpoint_of(run, run_dir)
        for step in plan.steps:
            out = run_dir / run.name / step.name
            cmds = " && ".join(shlex.join(c) for c in STEP_KINDS[step.kind](step, ckpt, out))
            lines.append(f"sbatch {dep}--job-name={run.name}-{step.name} --nodes=1 --gpus-per-node={step.nproc} "
                         f"{' '.join(common)} --output={out}.slurm-%j.out --wrap {shlex.quote(cmds)}")
    return "\n".join(lines) + "\n"
