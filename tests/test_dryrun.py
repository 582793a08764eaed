"""The dry-run of every recipe under configs/: each config file is found by a glob, so a new one is covered.

The full-size models run (ViT-B, CAFormer-M36, ResNet-50 with their real heads); on the 2-core CI machine only
the input size is shrunk, through the overrides a user would pass (``CI_PRETRAIN_SIZES``, ``CI_MM_SIZES``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO

from bam_dense.core.paths import bundled
from bam_dense.engine.pretrain_dry_run import SIZE_KEYS, dry_run

pytestmark = pytest.mark.dryrun

CONFIGS = bundled("configs", required=True)
PRETRAIN = sorted(CONFIGS.glob("pretrain/*.yaml"))
MMSEG = sorted(CONFIGS.glob("mmseg/**/*.py"))
MMDET = sorted(CONFIGS.glob("mmdet/**/*.py"))
DETECTRON2 = sorted(p for p in CONFIGS.glob("detectron2/*") if p.suffix in (".yaml", ".py"))
BENCH = sorted(CONFIGS.glob("bench/*.yaml"))

# What a user on a laptop passes to keep a recipe quick (--dry-run-scale): 224 -> 64-px and 96 -> 32-px pretraining
# crops (a 4x4 / 2x2 ViT grid); for the fine-tunes 512 -> 64 px (segmentation), 800 -> 96 (1333 -> 160) for COCO
# R50, and ViTDet's 1024-px large-scale jitter -> 128 px. A bench plan's steps all take the fine-tune scale.
CI_SCALE = 0.25
CI_MM_SCALE = 0.125
CI_LSJ_SCALE = 0.125  # the detectron2 ViTDet LazyConfig's 1024-px LSJ -> 128 px


def _ids(paths):
    return [str(p.relative_to(CONFIGS)) for p in paths]


def _bench_step_configs() -> set[Path]:
    """mmseg/mmdet configs a bench plan's steps use: the bench dry-run test runs them (train and test)."""
    import yaml

    found = set()
    for plan in BENCH:
        for step in yaml.safe_load(plan.read_text()).get("steps") or []:
            if step.get("kind") in ("seg", "det") and step.get("config"):
                found.add((REPO / step["config"]).resolve())
    return found


def _bench_pretrain_configs() -> set[Path]:
    """Pretraining configs of every plan's runs: the bench dry-run test runs and checks them."""
    import yaml

    found = set()
    for plan in BENCH:
        for run in yaml.safe_load(plan.read_text()).get("runs") or []:
            if (run.get("pretrain") or {}).get("config"):
                found.add((REPO / run["pretrain"]["config"]).resolve())
    return found


# Each config is dry-run once: by the bench test when a plan uses it, else on its own.
MM_ALONE = [p for p in MMSEG + MMDET if p.resolve() not in _bench_step_configs()]
PRETRAIN_ALONE = [p for p in PRETRAIN if p.resolve() not in _bench_pretrain_configs()]


def test_every_config_file_is_enumerated_by_a_dry_run_test():
    covered = set(PRETRAIN) | set(MMSEG) | set(MMDET) | set(DETECTRON2) | set(BENCH)
    files = {p for p in CONFIGS.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".py")}
    assert files - covered == set(), "config files no dry-run test enumerates"
    assert len(PRETRAIN) >= 18 and MMSEG and MMDET and BENCH


def test_pretrain_cli_dry_run_prints_what_it_ran_and_never_touches_the_real_run(tmp_path, capsys):
    from bam_dense.cli import main

    config = CONFIGS / "pretrain" / "byol_tiny_cpu.yaml"
    assert main(["pretrain", "--config", str(config), "--dry-run", "--dry-run-steps", "1", f"run.output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    for needle in ("dry-run of", "s/step", "peak memory", "data.batch_size_per_gpu: 64 -> 2", "k-NN on"):
        assert needle in out, needle
    assert (tmp_path / "dry-run" / "checkpoints" / "last.pth").is_file()
    assert not (tmp_path / "checkpoints").exists()  # run.resume=auto of the real run must not find it
    assert main(["pretrain", "--config", str(config), "--data-root", str(tmp_path)]) == 2  # --data-root needs --dry-run


def _check_pretrain_dry_run(config: Path, report: dict) -> None:
    """What a pretraining dry-run must show, read from its ``dry_run.json`` (the standalone and the bench test)."""
    from bam_dense.core.checkpoint import load_own
    from bam_dense.core.config import load_config
    from bam_dense.models.backbones import build_backbone

    full = load_config(config)
    assert report["steps"] >= 1 and report["first_loss"] is not None
    assert torch.isfinite(torch.tensor(report["first_loss"]))
    assert report["seconds_per_step"] > 0 and report["peak_memory_mb"] > 0
    # Only sizes (and where outputs and data go) differ from the recipe.
    assert set(report["changed"]) <= SIZE_KEYS | {"run.output_dir"}, set(report["changed"]) - SIZE_KEYS
    if full.eval.knn.enabled:
        assert 0.0 <= report["knn_top1"] <= 1.0 and report["knn_images"][1] > 0
    state = load_own(report["checkpoint"], map_location="cpu")
    assert state["arch"] == full.model.arch and state["model_kwargs"] == full.model.kwargs
    backbone = {k[len("backbone."):]: v for k, v in state["student"].items() if k.startswith("backbone.")}
    reference = build_backbone(full.model).state_dict()
    assert {k: tuple(v.shape) for k, v in backbone.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    if full.data.path:
        assert "data.path" in report["changed"]  # /datasets/imagenet is absent here: synthetic images in its layout
        assert (Path(report["changed"]["data.path"][1]) / "train").is_dir()


def _ci_pretrain_scale(config: Path) -> float | None:
    from bam_dense.core.config import load_config

    return CI_SCALE if load_config(config).data.views.global_size > 64 else None  # tiny configs already crop 32 px


@pytest.mark.slow
@pytest.mark.parametrize("config", PRETRAIN_ALONE, ids=_ids(PRETRAIN_ALONE))
def test_pretraining_recipe_dry_run(config, tmp_path):
    result = dry_run(config, [f"run.output_dir={tmp_path}"], steps=1, eval_images=8, scale=_ci_pretrain_scale(config))
    try:
        assert result.steps == 1
        _check_pretrain_dry_run(config, json.loads((Path(result.output_dir) / "dry_run.json").read_text()))
    finally:
        shutil.rmtree(tmp_path / "dry-run", ignore_errors=True)  # ViT-B checkpoints are ~2 GB


# ---------------------------------------------------------------------------------------------
# MMSegmentation / MMDetection recipes
# ---------------------------------------------------------------------------------------------

# Keys an mm dry-run may change: sizes, and the AMP wrapper on a machine without a GPU.
MM_SIZE_KEY_PATTERNS = (
    r"train_cfg\.(max_iters|val_interval|max_epochs)", r"default_hooks\.(checkpoint|logger)\.interval",
    r"log_processor\.window_size", r"(train|val|test)_dataloader\.(batch_size|num_workers|persistent_workers)",
    r"(train|val|test)_dataloader\.dataset\[\d+\]\.indices",
    r"((train|val|test)_dataloader\.dataset\[\d+\]\.pipeline|train_pipeline|test_pipeline|model\.data_preprocessor\.batch_augments)"
    r"\[\d+\]\((Resize|RandomResize|RandomChoiceResize|RandomCrop|Pad|BatchFixedSizePad)\)\.(scale|scales|crop_size|size)",
    r"tta_pipeline\[\d+\]\.transforms\[\d+\]\[\d+\]\(Resize\)\.scale",
    r"model\.data_preprocessor\.(size|pad_size_divisor)", r"model\.test_cfg\.(crop_size|stride)", r"model\.backbone\.img_size",
    r"optim_wrapper\.type", r"model\.test_cfg\.rcnn\.score_thr",
)


def _mm_scale(config: Path) -> float | None:
    if "tiny" in config.parts:
        return None  # already CPU-sized
    return CI_MM_SCALE


def _assert_sizes_only(changed: dict) -> None:
    import re

    odd = [k for k in changed if not any(re.fullmatch(p, k) for p in MM_SIZE_KEY_PATTERNS)]
    assert not odd, f"the dry-run changed more than sizes: {odd}"


@pytest.mark.slow
@pytest.mark.parametrize("config", MM_ALONE, ids=_ids(MM_ALONE))
def test_mm_recipe_dry_run_trains_validates_and_tests(config, tmp_path):
    pytest.importorskip("mmcv.ops")
    from bam_dense.downstream import mm_dry_run

    task = "seg" if "mmseg" in config.parts else "det"
    scale = _mm_scale(config)
    work = tmp_path / "work"
    result = mm_dry_run.train(task, str(config), None, str(work), iters=1, eval_images=1, scale=scale)
    try:
        assert result.iterations == 1 and result.seconds_per_iter > 0
        _assert_sizes_only(result.changed)
        assert any(k.startswith("train_cfg.") for k in result.changed)
        check = json.loads((work / "pretrained_weight_check.json").read_text())
        assert check["ok"] and check["checked"] > 0  # the random-init checkpoint was converted and loaded
        assert list(work.glob("pretrained/*.report.json"))
        key = "mIoU" if task == "seg" else "coco/bbox_mAP"
        from mmengine.config import Config

        if Config.fromfile(config).get("val_cfg") is not None:  # the recipe validates during training
            assert key in result.metrics, result.metrics
        if scale:
            assert any("pipeline" in k for k in result.changed)
        tested = mm_dry_run.test(task, str(config), str(work), str(work), out=str(work / "metrics.json"), eval_images=1,
                             scale=scale)
        assert tested.eval_images == 1 and key in json.loads((work / "metrics.json").read_text())["metrics"]
    finally:
        # the checkpoints, the big files, before the next recipe's run
        for path in work.rglob("*.pth"):
            path.unlink()


# ---------------------------------------------------------------------------------------------
# detectron2 recipes (where detectron2 is installed: it is not on the package index)
# ---------------------------------------------------------------------------------------------

D2_BASES = [p for p in DETECTRON2 if p.name.startswith("Base-")]
D2_RECIPES = [p for p in DETECTRON2 if p not in D2_BASES]


def test_detectron2_base_configs_run_through_the_recipes_that_extend_them():
    children = {p: p.read_text() for p in D2_RECIPES}
    for base in D2_BASES:
        assert any(f"_BASE_: \"{base.name}\"" in text or f"_BASE_: {base.name}" in text for text in children.values()), base


@pytest.mark.slow
@pytest.mark.detectron2
@pytest.mark.parametrize("config", D2_RECIPES, ids=_ids(D2_RECIPES))
def test_detectron2_recipe_dry_run_trains_and_evaluates(config, tmp_path):
    pytest.importorskip("detectron2")
    import subprocess

    from conftest import PYTHON

    from bam_dense.downstream.mm_dry_run import random_init_backbone_checkpoint

    lazy = config.suffix == ".py"  # the ViTDet LazyConfig; the YAML recipes are ResNet-50
    ckpt = random_init_backbone_checkpoint("vit_base_patch16_224" if lazy else "resnet50", {}, tmp_path / "init.pth")
    out = tmp_path / "out"
    cmd = [PYTHON, str(REPO / "downstream" / "detectron2" / "train_net.py"), "--config-file", str(config),
           "--checkpoint", ckpt, "--metrics-out", str(out / "metrics.json"), "--dry-run", "--dry-run-iters", "1",
           "--dry-run-images", "2", "--dry-run-scale", str(CI_LSJ_SCALE if lazy else CI_SCALE)]
    cmd += [f"train.output_dir={out}"] if lazy else ["OUTPUT_DIR", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"dry-run of {config}" in proc.stdout and "s/iter" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert "bbox_AP" in metrics and 0.0 <= metrics["bbox_AP"] <= 100.0, metrics


# ---------------------------------------------------------------------------------------------
# Bench plans
# ---------------------------------------------------------------------------------------------


def _distinct_runs(plan) -> list:
    """The plan's runs, one per distinct encoder: runs that differ only in name and seed (the seeds of a mean and
    spread) run the same commands but for ``run.seed``, so one of them stands for all."""
    seen, kept = set(), []
    for run in plan.runs:
        key = repr(dataclasses.replace(run, name="", seed=0))
        if key not in seen:
            seen.add(key)
            kept.append(run)
    return kept


def test_every_run_of_every_shipped_plan_passes_the_plan_check():
    """Each step against its benchmark and against every run's encoder family, before anything runs."""
    from bam_dense.bench.plan import applies, check_plan, load_plan, run_family

    for plan_path in BENCH:
        plan = load_plan(plan_path, base=REPO)
        check_plan(plan)
        for run in plan.runs:
            assert run_family(run) is not None, (plan_path.name, run.name)
    tiny = load_plan(CONFIGS / "bench" / "synthetic_tiny.yaml", base=REPO)
    seg = next(s for s in tiny.steps if s.name == "seg")
    assert [r.name for r in tiny.runs if applies(seg, run_family(r))] == ["bam"]  # the ViT run; ResNet runs skip it


def _encoder_key(checkpoint: Path) -> tuple:
    """A checkpoint's encoder: its timm architecture and options (what every downstream step builds from it)."""
    from bam_dense.convert import load_source
    from bam_dense.convert.sources import resolve_arch

    name, kwargs = resolve_arch(load_source(checkpoint), None)
    return name, json.dumps(kwargs, sort_keys=True)


def _what_a_step_reads(step, checkpoint: Path, work: Path) -> dict:
    """What ``step`` takes from ``checkpoint`` before its own (checkpoint-independent) work: the frozen-feature steps
    the encoder loader's backbone (names and shapes), a seg/det step the conversion ``prepare_pretrained`` writes for
    its config's backbone, a detectron2 step the detectron2 pickle (what each conversion drops, the method's heads,
    is the method's own)."""
    from bam_dense.convert import convert
    from bam_dense.encoders import load_backbone

    if step.kind in ("seg", "det"):
        from mmengine.config import Config

        from bam_dense.downstream.mm_common import DET_TARGETS, SEG_TARGETS, prepare_pretrained

        cfg = Config.fromfile(step.config)
        cfg.work_dir = str(work)
        _, report = prepare_pretrained(cfg, str(checkpoint), SEG_TARGETS if step.kind == "seg" else DET_TARGETS)
        return {"backbone": cfg.model.backbone.to_dict() | {"init_cfg": None}, "arch": report["arch"],
                "model_kwargs": report["model_kwargs"], "filled": report["filled"], "mapped": report["mapped"]}
    if step.kind == "detectron2":
        report = convert(checkpoint, "detectron2", work / "d2.pkl")
        return {"arch": report.arch, "filled": report.filled, "mapped": report.mapped}
    backbone = load_backbone(str(checkpoint), None, None, False)
    return {"class": type(backbone).__name__, "tensors": {k: tuple(v.shape) for k, v in backbone.state_dict().items()}}


@pytest.mark.slow
@pytest.mark.parametrize("plan_path", BENCH, ids=_ids(BENCH))
def test_bench_plan_dry_run(plan_path, tmp_path):
    """Every run's pretraining, then every step of the plan once per encoder (runs that differ only in their seed:
    once, see _distinct_runs); a step given to other encoder families is skipped for a run, and said so.

    A step runs the same config and code on every run of one encoder (architecture and options): only what it reads
    from the checkpoint differs. So the first run of each encoder runs every step, and for each other run the test
    checks that each step reads from its checkpoint what it reads from the first's (the same backbone, conversion and
    coverage), which is where a method's checkpoint could differ."""
    pytest.importorskip("mmcv.ops")
    import importlib.util

    from bam_dense.bench.plan import applies, load_plan, run_family
    from bam_dense.bench.plan_dry_run import checkpoint_of, run_plan_dry

    plan = load_plan(plan_path, base=REPO)
    for run in plan.runs:
        if run.pretrain:
            assert Path(run.pretrain["config"]).resolve() in {p.resolve() for p in PRETRAIN}
    for step in plan.steps:
        if step.config:
            assert Path(step.config).resolve() in {p.resolve() for p in MMSEG + MMDET + DETECTRON2}
    plan.runs = _distinct_runs(plan)
    scale = None if "tiny" in plan_path.stem else CI_MM_SCALE
    outcomes = run_plan_dry(plan, tmp_path, steps=["pretrain"], scale=scale)
    assert [o.status for o in outcomes] == ["done"] * sum(bool(run.pretrain) for run in plan.runs), outcomes
    encoder = {run.name: _encoder_key(Path(checkpoint_of(run, tmp_path))) for run in plan.runs}
    first: dict[tuple, object] = {}
    for run in plan.runs:
        first.setdefault(encoder[run.name], run)
    plan_of_firsts = dataclasses.replace(plan, runs=list(first.values()))
    outcomes += run_plan_dry(plan_of_firsts, tmp_path, skip=["pretrain"], scale=scale)
    reads: dict[tuple[str, str], dict] = {}  # (first run, step) -> what the step reads from its checkpoint

    for run in plan.runs:
        by_step = {o.step: o for o in outcomes if o.run == run.name}
        if run.pretrain:  # this config's standalone dry-run is left to this test (PRETRAIN_ALONE)
            dry = tmp_path / run.name / "pretrain" / "dry-run"
            _check_pretrain_dry_run(Path(run.pretrain["config"]), json.loads((dry / "dry_run.json").read_text()))
        twin = first[encoder[run.name]]
        if run is twin:
            assert set(by_step) == ({"pretrain"} if run.pretrain else set()) | {s.name for s in plan.steps}
            for o in by_step.values():
                error = tmp_path / run.name / o.step / "error.txt"
                if o.status == "skipped":
                    assert ("detectron2" in o.detail and importlib.util.find_spec("detectron2") is None) or \
                        o.detail.startswith("not for "), (run.name, o.step, o.detail)
                else:
                    assert o.status == "done", (run.name, o.step, o.detail, error.read_text() if error.exists() else "")
            for step in plan.steps:
                if step.kind in ("seg", "det", "davis", "probe") and by_step[step.name].status == "done":
                    assert (tmp_path / run.name / step.name / "metrics.json").exists(), (run.name, step.name)
            continue
        for step in plan.steps:
            if not applies(step, run_family(run)):
                continue
            if (twin.name, step.name) not in reads:
                reads[twin.name, step.name] = _what_a_step_reads(step, Path(checkpoint_of(twin, tmp_path)),
                                                                 tmp_path / "reads" / step.name / twin.name)
            mine = _what_a_step_reads(step, Path(checkpoint_of(run, tmp_path)), tmp_path / "reads" / step.name / run.name)
            assert mine == reads[twin.name, step.name], (run.name, twin.name, step.name)
