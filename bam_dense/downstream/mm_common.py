"""What ``bam-dense seg`` and ``bam-dense det`` share: config loading, on-the-fly conversion, runner, metrics.

Pretrained checkpoints: a pretraining checkpoint (bam-dense, official BAM/LEWEL, DINO, timm, torchvision)
is converted for the config's backbone into ``<work_dir>/pretrained/`` with its coverage report; a file
already in the target's layout is used as it is. The backbone's ``init_cfg`` is pointed at the result and
``model.pretrained`` cleared, and the pretrained-weight check hook stops the run before iteration 1 if
any backbone tensor did not arrive.
"""

from __future__ import annotations

import datetime
import json
import os
import warnings
from pathlib import Path

from bam_dense.convert.registry import mm_backbone_targets
from bam_dense.core import procs
from bam_dense.core.errors import UserFacingError
from bam_dense.core.identity import sha256
from bam_dense.core.paths import locate

warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

# (backbone type in the config) -> the conversion target its pretrained weights are written for: the rows of
# bam_dense.convert.registry say which backbone types they serve
SEG_TARGETS = mm_backbone_targets("seg")
DET_TARGETS = mm_backbone_targets("det")


def build_runner(cfg):
    """The mmengine Runner of ``cfg``, with a visualizer of its own.

    mmengine keeps one visualizer per name in a process and hands the existing one to a later runner that asks
    for the same name (mmseg's and mmdet's configs all say ``name='visualizer'``), with the first run's folder:
    a second fine-tune or test in one process (a notebook, a script, the tests) would write its ``vis_data``
    (the scalars of its curves) into the first run's folder, or fail once that folder is gone. Each runner asks
    for a name no other has."""
    import uuid

    from mmengine.runner import Runner

    procs.end_forked_children_with_this_process()  # mmengine's DataLoader workers end with this process
    visualizer = cfg.get("visualizer")
    if isinstance(visualizer, dict):
        visualizer["name"] = f"{visualizer.get('name') or 'visualizer'}-{uuid.uuid4().hex[:12]}"
    return Runner.from_cfg(cfg)


def load_config(config: str, cfg_options: list[str], work_dir: str | None, launcher: str, data_root: str | None = None):
    from mmengine.config import Config, DictAction

    if not Path(config).is_file():
        config = str(locate(config))  # not here: the recipe bam-dense ships by that name, if any
    if not Path(config).is_file():
        raise UserFacingError(f"config {config} does not exist")
    from bam_dense.downstream.mm_config import format_once

    cfg = format_once(Config.fromfile(config))
    if cfg_options:
        action = DictAction(option_strings=["--cfg-options"], dest="cfg_options")
        import argparse

        ns = argparse.Namespace()
        action(None, ns, cfg_options)
        cfg.merge_from_dict(ns.cfg_options)
    if data_root:
        set_data_root(cfg, data_root)
    cfg.work_dir = work_dir or cfg.get("work_dir") or os.path.join("work_dirs", Path(config).stem)
    cfg.launcher = launcher
    return cfg


def set_data_root(cfg, data_root: str) -> None:
    """Point every dataset (including the members of concatenated ones) at ``data_root``."""

    def visit(dataset) -> None:
        if dataset is None:
            return
        if "datasets" in dataset:
            for member in dataset["datasets"]:
                visit(member)
        elif "dataset" in dataset and "data_root" not in dataset:  # wrappers such as RepeatDataset
            visit(dataset["dataset"])
        else:
            dataset["data_root"] = data_root

    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(loader) is not None:
            visit(cfg[loader]["dataset"])


def _is_pretraining_source(path: str, trust_source: bool) -> bool:
    """True when ``path`` needs converting (a pretraining or plain timm/torchvision checkpoint)."""
    from bam_dense.convert.sources import ConversionError, detect_format, read_checkpoint

    obj = read_checkpoint(path, trust_source=trust_source)
    try:
        detect_format(obj)
    except ConversionError:
        return False  # already in a framework's layout
    return True


def prepare_pretrained(cfg, checkpoint: str, targets: dict[str, str], trust_source: bool = False) -> tuple[str, dict | None]:
    """Convert ``checkpoint`` for the config's backbone if needed and point ``init_cfg`` at it.

    Returns (file the backbone loads, conversion report as a dict or None).
    """
    from bam_dense.convert import convert, report_path

    if not Path(checkpoint).is_file():
        raise UserFacingError(f"--checkpoint {checkpoint} does not exist")
    backbone = cfg.model.backbone
    btype = backbone["type"]
    if btype not in targets:
        raise UserFacingError(f"backbone type {btype} in the config has no bam-dense conversion target "
                              f"(supported: {', '.join(sorted(targets))})")
    target = targets[btype]
    report = None
    path = checkpoint
    if _is_pretraining_source(checkpoint, trust_source):
        out_dir = Path(cfg.work_dir) / "pretrained"
        out = out_dir / f"{Path(checkpoint).stem}_{target}.pth"
        img_size = backbone.get("img_size")
        img_size = img_size[0] if isinstance(img_size, (tuple, list)) else img_size
        result = convert(checkpoint, target, out, img_size=img_size if btype in ("VisionTransformer", "MAE", "BEiT") else None,
                         trust_source=trust_source)
        print(result.summary())
        report = json.loads(report_path(out, target).read_text())
        path = str(out)
    if btype == "FrozenTimmEncoder":
        if report is None:
            raise UserFacingError(f"--checkpoint {checkpoint}: the frozen-encoder protocols read pretraining or timm "
                                  "checkpoints (bam-dense, DINO, iBOT, DINOv2, DINOv3, MAE, MoCo v3, timm), not a "
                                  "framework's layout")
        adopt_encoder(cfg, report["arch"], report["model_kwargs"], f"--checkpoint {checkpoint}", report.get("pos_resample"))
    init_cfg = dict(backbone.get("init_cfg") or {}, type="Pretrained", checkpoint=path)  # keeps a configured prefix
    if target == "mmdet" and btype == "ResNet" and "prefix" not in init_cfg:
        init_cfg["prefix"] = "backbone."  # where `bam-dense convert --to mmdet` puts ResNet keys
    backbone["init_cfg"] = init_cfg
    if "pretrained" in cfg.model:  # mmseg's EncoderDecoder; must not be set together with init_cfg
        cfg.model.pretrained = None
    add_hooks(cfg, "PretrainedWeightCheckHook")
    return path, report


def adopt_encoder(cfg, arch: str, model_kwargs: dict, where: str, pos_resample: str | None = None) -> None:
    """Give a ``FrozenTimmEncoder`` config the checkpoint's architecture and position-table rule (``pos_resample``,
    unless the config names one), and its linear head the matching width.

    A config that leaves ``model.backbone.arch`` at None (``model_kwargs`` empty, ``decode_head.in_channels`` None)
    takes them from the checkpoint; values the config does set must agree with it, or this stops naming both.
    """
    from bam_dense.convert.sources import create_meta_model
    from bam_dense.models.backbones import describe

    backbone, head = cfg.model.backbone, cfg.model.decode_head
    model_kwargs = dict(model_kwargs or {})
    configured = dict(backbone.get("model_kwargs") or {})
    if backbone.get("arch") is None:
        if configured:
            raise UserFacingError(f"model.backbone.model_kwargs is {configured} but model.backbone.arch is None: name the "
                                  "architecture too, or leave both to the checkpoint")
    elif (backbone["arch"], configured) != (arch, model_kwargs):
        raise UserFacingError(f"model.backbone.arch / model_kwargs are {backbone['arch']!r} / {configured} in the config but "
                              f"{where} holds {arch!r} / {model_kwargs}; leave arch at None to take the checkpoint's, or "
                              "pass the matching checkpoint")
    backbone["arch"], backbone["model_kwargs"] = arch, model_kwargs
    if backbone.get("pos_resample") is None:
        backbone["pos_resample"] = pos_resample
    width = describe(create_meta_model(arch, model_kwargs)).dense_dim
    layers = len(backbone.get("out_indices") or [-1])
    in_channels = [width] * layers
    if head.get("in_channels") is not None and list(head["in_channels"]) != in_channels:
        raise UserFacingError(f"model.decode_head.in_channels is {list(head['in_channels'])} in the config but {arch} "
                              f"gives {layers} map(s) of {width} channels; leave it at None")
    head["in_channels"], head["in_index"], head["channels"] = in_channels, list(range(layers)), width * layers


def _adopt_encoder_for_test(cfg, checkpoint: str) -> None:
    """At test time, a ``FrozenTimmEncoder`` left at arch None takes the architecture the training recorded in
    ``<work dir>/pretrained/*_timm.pth.report.json`` (the work dir of ``checkpoint``)."""
    reports = sorted((Path(checkpoint).parent / "pretrained").glob("*_timm.pth.report.json"))
    if len(reports) != 1:
        raise UserFacingError(f"model.backbone.arch is None and {Path(checkpoint).parent / 'pretrained'} has "
                              f"{len(reports)} conversion reports (expected the one `seg train` wrote); pass "
                              "--cfg-options model.backbone.arch=<timm name> [model.backbone.model_kwargs.KEY=VALUE]")
    report = json.loads(reports[0].read_text())
    adopt_encoder(cfg, report["arch"], report["model_kwargs"], str(reports[0]), report.get("pos_resample"))


def add_hooks(cfg, *names: str) -> None:
    """Make sure ``cfg.custom_hooks`` has these bam-dense hooks (and the tensor-only checkpoint hook)."""
    hooks = list(cfg.get("custom_hooks", []) or [])
    for name in (*names, "TensorOnlyCheckpointHook"):
        if not any(h.get("type") == name for h in hooks):
            hooks.append(dict(type=name))
    cfg.custom_hooks = hooks


def prepare_train(cfg, checkpoint: str, targets: dict[str, str], amp: bool, resume: bool, trust_source: bool) -> None:
    """Pretrained backbone (converted if needed) and its check, AMP, resume from the work dir."""
    prepare_pretrained(cfg, checkpoint, targets, trust_source)
    if amp:
        enable_amp(cfg)
    if resume:
        cfg.resume = True
        cfg.load_from = latest_checkpoint(cfg.work_dir)


def fine_tune(cfg, checkpoint: str, targets: dict[str, str], amp: bool, resume: bool, trust_source: bool, runner_for):
    """``prepare_train``, then the Runner ``runner_for(cfg)`` builds, trained; that Runner (``seg/det train``)."""
    prepare_train(cfg, checkpoint, targets, amp, resume, trust_source)
    runner = runner_for(cfg)
    runner.train()
    return runner


def prepare_test(cfg, checkpoint: str) -> str:
    """Load the fine-tuned ``checkpoint`` (a file, or a work dir's latest); no pretrained init, no weight check."""
    if Path(checkpoint).is_dir():
        found = latest_checkpoint(checkpoint)
        if found is None:
            raise UserFacingError(f"--checkpoint {checkpoint}: no checkpoint in this work dir")
        checkpoint = found
    if not Path(checkpoint).is_file():
        raise UserFacingError(f"--checkpoint {checkpoint} does not exist")
    cfg.load_from = checkpoint
    if "pretrained" in cfg.model:
        cfg.model.pretrained = None
    if cfg.model.backbone.get("type") == "FrozenTimmEncoder" and cfg.model.backbone.get("arch") is None:
        _adopt_encoder_for_test(cfg, checkpoint)
    cfg.model.backbone.pop("init_cfg", None)  # the fine-tuned weights come from load_from
    cfg.custom_hooks = [h for h in (cfg.get("custom_hooks") or []) if h.get("type") != "PretrainedWeightCheckHook"]
    add_hooks(cfg)
    return checkpoint


def enable_amp(cfg) -> None:
    ow = cfg.optim_wrapper
    if ow.get("type", "OptimWrapper") == "AmpOptimWrapper":
        return
    ow["type"] = "AmpOptimWrapper"
    ow.setdefault("loss_scale", "dynamic")


def resolved_config(cfg) -> dict:
    """The config a run used, as JSON-safe data (what the report checks recipes against)."""
    return json.loads(json.dumps(cfg.to_dict(), default=str))


def write_metrics(path: str | Path, task: str, metrics: dict, config: str, checkpoint: str, extra: dict | None = None) -> Path:
    from bam_dense.core.atomic import atomic_write_text

    payload = {
        "task": task,
        "config": str(config),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256(checkpoint),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metrics": {k: (float(v) if hasattr(v, "__float__") else v) for k, v in metrics.items()},
        **(extra or {}),
    }
    path = Path(path)
    atomic_write_text(path, json.dumps(payload, indent=1))
    return path


def latest_checkpoint(work_dir: str | Path) -> str | None:
    """The checkpoint mmengine's CheckpointHook last wrote (``last_checkpoint`` file) in ``work_dir``."""
    marker = Path(work_dir) / "last_checkpoint"
    if marker.is_file():
        path = marker.read_text().strip()
        if path and Path(path).is_file():
            return path
    candidates = sorted(Path(work_dir).glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    candidates += sorted(Path(work_dir).glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    return str(candidates[-1]) if candidates else None


VIT_BACKBONES = ("VisionTransformer", "MAE", "BEiT", "FrozenTimmEncoder", "TimmViT")


def config_facts(config: str | Path) -> dict:
    """What a plan check needs from an mmseg / mmdet config without building anything: the backbone's type and
    family (vit / cnn) and the dataset type of the test split."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(config))
    btype = cfg.model.backbone["type"]
    return {"backbone": btype, "family": "vit" if btype in VIT_BACKBONES else "cnn",
            "dataset": (cfg.get("test_dataloader") or {}).get("dataset", {}).get("type")}
