"""``seg|det train --dry-run`` and ``seg|det test --dry-run``: an MMSeg/MMDet recipe end to end at a few iterations.

What runs is what the full run builds from the same config: the model, the data pipelines and dataset classes,
the sampler, the optimizer constructor, the hooks, the evaluator, the on-the-fly checkpoint conversion and the
pretrained-weight check. Only sizes change, and every changed key is listed in the report:

* ``train_cfg``: ``max_iters``/``val_interval`` (iteration loops) or ``max_epochs=1`` with the train set cut to
  ``iters x batch`` images (epoch loops); one validation at the end;
* dataloaders: ``batch_size`` (train <= 2, val/test 1), ``num_workers=0``; the val/test sets cut to
  ``eval_images`` images through the datasets' ``indices``; logging every iteration, a checkpoint at the end;
* detection: ``model.test_cfg.rcnn.score_thr=0`` so that an untrained model's detections reach the COCO scorer
  (mmdet skips scoring when nothing clears the threshold);
* ``scale`` (optional, e.g. 0.25): every image size in the pipelines, the data preprocessor, the sliding-window
  test and a ViT backbone's ``img_size`` multiplied by it (rounded to a multiple of 32). For a ViT this changes
  the size of the position table the checkpoint is resampled to, nothing else of the model;
* data: ``data_root`` when given, else synthetic images written in the dataset's real layout under
  ``<work_dir>/data`` (ADE20K, VOC with its aug split, COCO with the recipe's class names);
* checkpoint: when none is given, a random-init bam-dense pretraining checkpoint of the backbone the config
  names is written, so the conversion and the weight check run as they would on a real one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bam_dense.core.dry_run_report import changed_line, closing_lines, line
from bam_dense.core.errors import UserFacingError

LAYOUTS = {"ADE20KDataset": "ade20k", "PascalVOCDataset": "voc", "CocoDataset": "coco"}
RESIZES = {"Resize", "RandomResize", "RandomChoiceResize", "RandomCrop", "Pad", "BatchFixedSizePad", "FixScaleResize"}
SIZE_FIELDS = ("scale", "scales", "crop_size", "size", "img_scale")


@dataclass
class MMDryRunResult:
    task: str
    config: str
    work_dir: str
    data: str
    checkpoint: str
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    iterations: int = 0
    seconds_per_iter: float = 0.0
    first_iter_seconds: float = 0.0
    eval_images: int = 0
    metrics: dict = field(default_factory=dict)
    peak_memory_mb: float = 0.0
    memory_kind: str = ""
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"dry-run of {self.config} ({self.task})", line("data", self.data), line("checkpoint", self.checkpoint),
               changed_line(self.changed)]
        if self.iterations:
            out.append(line("ran", f"{self.iterations} training iteration(s); {self.seconds_per_iter:.2f} s/iter "
                                   f"(first {self.first_iter_seconds:.2f} s)"))
        shown = {k: round(float(v), 4) for k, v in self.metrics.items() if hasattr(v, "__float__")}
        out.append(line("evaluation", f"{self.eval_images} image(s): {shown}"))
        return [*out, *closing_lines(self.peak_memory_mb, self.memory_kind, self.notes)]

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["changed"] = {k: [_jsonable(a), _jsonable(b)] for k, (a, b) in self.changed.items()}
        d["metrics"] = {k: _jsonable(v) for k, v in self.metrics.items()}
        return d


def _jsonable(v):
    if hasattr(v, "__float__") and not isinstance(v, (int, bool)):
        return float(v)
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


# ---------------------------------------------------------------------------------------------
# Config surgery: sizes only
# ---------------------------------------------------------------------------------------------


def leaf_datasets(dataset) -> list:
    """The dataset dicts that hold data (members of ConcatDataset, the inside of wrappers)."""
    if dataset is None:
        return []
    if "datasets" in dataset:
        return [leaf for member in dataset["datasets"] for leaf in leaf_datasets(member)]
    if "dataset" in dataset and "data_root" not in dataset:
        return leaf_datasets(dataset["dataset"])
    return [dataset]


def _set(changed: dict, where: str, holder, key, value) -> None:
    old = holder.get(key) if hasattr(holder, "get") else holder[key]
    if old != value:
        changed[where] = (old, value)
        holder[key] = value


def _round32(x: float) -> int:
    return max(32, int(round(x / 32.0)) * 32)


def _scaled(value, factor: float):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _round32(value * factor)
    if isinstance(value, (tuple, list)):
        items = [_scaled(v, factor) for v in value]
        return type(value)(items) if isinstance(value, tuple) else items
    return value


def _scale_pipeline(pipeline, where: str, factor: float, changed: dict) -> None:
    for i, t in enumerate(pipeline or []):
        if not isinstance(t, dict):
            continue
        if t.get("type") in ("TestTimeAug",):
            for j, group in enumerate(t.get("transforms", [])):
                _scale_pipeline(group, f"{where}[{i}].transforms[{j}]", factor, changed)
        if t.get("type") not in RESIZES:
            continue
        for key in SIZE_FIELDS:
            if key in t and t[key] is not None:
                _set(changed, f"{where}[{i}]({t['type']}).{key}", t, key, _scaled(t[key], factor))


def shrink(cfg, task: str, iters: int, batch_size: int, eval_images: int, scale: float | None) -> dict:
    """Change only sizes in ``cfg`` (in place); returns ``{key: (old, new)}``."""
    changed: dict = {}
    tc = cfg.train_cfg
    if tc.get("type", "") == "EpochBasedTrainLoop" or "max_epochs" in tc:
        _set(changed, "train_cfg.max_epochs", tc, "max_epochs", 1)
        _set(changed, "train_cfg.val_interval", tc, "val_interval", 1)
        for k, leaf in enumerate(leaf_datasets(cfg.train_dataloader.dataset)):
            _set(changed, f"train_dataloader.dataset[{k}].indices", leaf, "indices", iters * min(batch_size, cfg.train_dataloader.batch_size))
        _set(changed, "default_hooks.checkpoint.interval", cfg.default_hooks.checkpoint, "interval", 1)
    else:
        _set(changed, "train_cfg.max_iters", tc, "max_iters", iters)
        _set(changed, "train_cfg.val_interval", tc, "val_interval", iters)
        _set(changed, "default_hooks.checkpoint.interval", cfg.default_hooks.checkpoint, "interval", iters)
    _set(changed, "default_hooks.logger.interval", cfg.default_hooks.logger, "interval", 1)
    if "log_processor" in cfg and "window_size" in cfg.log_processor:
        _set(changed, "log_processor.window_size", cfg.log_processor, "window_size", 1)
    loaders = [("train_dataloader", min(batch_size, cfg.train_dataloader.batch_size))]
    loaders += [(name, 1) for name in ("val_dataloader", "test_dataloader") if cfg.get(name) is not None]
    for name, bs in loaders:
        loader = cfg[name]
        _set(changed, f"{name}.batch_size", loader, "batch_size", bs)
        _set(changed, f"{name}.num_workers", loader, "num_workers", 0)
        _set(changed, f"{name}.persistent_workers", loader, "persistent_workers", False)
        if name != "train_dataloader":
            for k, leaf in enumerate(leaf_datasets(loader.dataset)):
                _set(changed, f"{name}.dataset[{k}].indices", leaf, "indices", eval_images)
    rcnn = ((cfg.model.get("test_cfg") or {}).get("rcnn") or {})
    if task == "det" and rcnn.get("score_thr"):
        # after a few iterations no detection clears the recipe's threshold, and mmdet then skips COCO scoring
        _set(changed, "model.test_cfg.rcnn.score_thr", rcnn, "score_thr", 0.0)
    if scale:
        for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
            if cfg.get(name) is None:
                continue
            for k, leaf in enumerate(leaf_datasets(cfg[name].dataset)):
                _scale_pipeline(leaf.get("pipeline"), f"{name}.dataset[{k}].pipeline", scale, changed)
        for name in ("train_pipeline", "test_pipeline", "tta_pipeline"):  # top-level copies, read later (tta: at test)
            if isinstance(cfg.get(name), list):
                _scale_pipeline(cfg[name], name, scale, changed)
        model = cfg.model
        pre = model.get("data_preprocessor") or {}
        if pre.get("size"):
            _set(changed, "model.data_preprocessor.size", pre, "size", _scaled(pre["size"], scale))
        if (pre.get("pad_size_divisor") or 0) > 32:  # a fixed pad size (ViTDet's 1024), not a stride multiple
            _set(changed, "model.data_preprocessor.pad_size_divisor", pre, "pad_size_divisor",
                 _scaled(pre["pad_size_divisor"], scale))
        _scale_pipeline(pre.get("batch_augments"), "model.data_preprocessor.batch_augments", scale, changed)
        test_cfg = model.get("test_cfg") or {}
        if test_cfg.get("mode") == "slide":
            _set(changed, "model.test_cfg.crop_size", test_cfg, "crop_size", _scaled(test_cfg["crop_size"], scale))
            stride = tuple(max(1, int(round(s * scale))) for s in test_cfg["stride"])
            _set(changed, "model.test_cfg.stride", test_cfg, "stride", stride)
        backbone = model.backbone
        if backbone.get("img_size") is not None:
            _set(changed, "model.backbone.img_size", backbone, "img_size", _scaled(backbone["img_size"], scale))
    return changed


# ---------------------------------------------------------------------------------------------
# Data and checkpoint
# ---------------------------------------------------------------------------------------------


def _dataset_type(cfg) -> str:
    leaves = leaf_datasets(cfg.train_dataloader.dataset)
    return leaves[0].get("type", "") if leaves else ""


def synthetic_data(cfg, root: Path, num: int = 4, size: int | None = None) -> str:
    """Write the config's dataset in its real layout under ``root``; returns the data root for the config."""
    from bam_dense.data.synthetic import make

    dtype = _dataset_type(cfg)
    if dtype not in LAYOUTS:
        raise UserFacingError(f"dry-run: no synthetic layout for the dataset type {dtype!r} "
                              f"(known: {', '.join(LAYOUTS)}); pass --data-root")
    layout = LAYOUTS[dtype]
    target = root / layout
    marker = target / ".complete"
    base = make(layout, target, num=num, size=size) if not marker.exists() else None
    if layout == "ade20k":
        data_root = target / "ADEChallengeData2016"
    elif layout == "voc":
        data_root = target / "VOCdevkit" / "VOC2012"
    else:
        data_root = target
    if base is not None and layout == "coco":
        _rename_coco_categories(cfg, data_root)
    marker.write_text("")
    return str(data_root) + ("/" if layout == "coco" else "")


def _coco_classes(cfg) -> tuple[str, ...] | None:
    leaf = leaf_datasets(cfg.train_dataloader.dataset)[0]
    classes = (leaf.get("metainfo") or {}).get("classes")
    return tuple(classes) if classes else None


def _rename_coco_categories(cfg, data_root: Path) -> None:
    """CocoDataset selects categories by name: a recipe with its own class list gets those names, one with COCO's
    (the default) gets the 80 COCO categories, the synthetic shapes under the first ten."""
    from bam_dense.data.coco80 import relabel_as_coco80

    classes = _coco_classes(cfg)
    if classes is None:
        relabel_as_coco80(data_root / "annotations")
        return
    for path in sorted((data_root / "annotations").glob("instances_*.json")):
        data = json.loads(path.read_text())
        if len(data["categories"]) > len(classes):
            raise UserFacingError(f"dry-run: the recipe has {len(classes)} classes, fewer than the synthetic COCO's "
                                  f"{len(data['categories'])}")
        for cat, name in zip(data["categories"], classes):
            cat["name"] = name
        path.write_text(json.dumps(data))


def timm_spec(backbone) -> tuple[str, dict]:
    """(timm arch, kwargs) of the pretraining backbone that converts to the config's backbone."""
    btype = backbone.get("type")
    if btype in ("MAE", "VisionTransformer", "BEiT"):
        img = backbone.get("img_size", 224)
        img = img[0] if isinstance(img, (tuple, list)) else img
        return "vit_base_patch16_224", dict(img_size=img, patch_size=backbone.get("patch_size", 16),
                                            embed_dim=backbone.get("embed_dims", 768),
                                            depth=backbone.get("num_layers", 12), num_heads=backbone.get("num_heads", 12))
    if btype and btype.startswith("ResNet"):
        if backbone.get("depth") == 10:  # ResNet10: timm's resnet18 layout with one basic block per stage
            base = backbone.get("base_channels", 64)
            return "resnet18", {"layers": [1, 1, 1, 1], "channels": [base, 2 * base, 4 * base, 8 * base]}
        return f"resnet{backbone.get('depth', 50)}", {}
    if btype == "FrozenTimmEncoder":  # arch None: the checkpoint's at run time; a DINO-style ViT-S/16 stands in here
        return backbone.get("arch") or "vit_small_patch16_224", dict(backbone.get("model_kwargs") or {})
    if btype == "TimmViT":
        return backbone.get("arch", "vit_base_patch16_224"), {**(backbone.get("model_kwargs") or {}),
                                                              "img_size": backbone.get("pretrain_img_size", 224)}
    raise UserFacingError(f"dry-run: cannot make a random-init checkpoint for backbone type {btype!r}; pass --checkpoint")


def random_init_checkpoint(cfg, path: Path) -> str:
    """A bam-dense pretraining checkpoint (student only) with a random-init backbone of the config's shape."""
    arch, kwargs = timm_spec(cfg.model.backbone)
    return random_init_backbone_checkpoint(arch, kwargs, path)


def random_init_backbone_checkpoint(arch: str, kwargs: dict, path: Path) -> str:
    """A bam-dense pretraining checkpoint (student only) holding ``arch`` at its seeded random initialisation."""
    import torch

    from bam_dense.core.checkpoint import atomic_save
    from bam_dense.models.backbones import create_backbone, describe

    torch.manual_seed(0)
    backbone = create_backbone(arch, kwargs)
    state = {"format": "bam-dense", "version": 1, "arch": arch, "model_kwargs": kwargs, "family": describe(backbone).family,
             "method": "random-init", "config": {"model": {"arch": arch, "kwargs": kwargs}},
             "student": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}, "teacher": None}
    atomic_save(state, path)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def _timer_hook():
    """An mmengine hook that times training iterations and keeps the last validation metrics."""
    import torch
    from mmengine.hooks import Hook

    class DryRunTimer(Hook):
        priority = "VERY_LOW"

        def __init__(self):
            self.times: list[float] = []
            self.metrics: dict = {}
            self._t = 0.0

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._t = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._t)

        def after_val_epoch(self, runner, metrics=None):
            self.metrics = dict(metrics or {})

    return DryRunTimer()


def _prepare(task: str, config: str, work_dir: str | None, cfg_options: list[str] | None, data_root: str | None,
             iters: int, batch_size: int, eval_images: int, scale: float | None):
    from bam_dense.downstream.mm_common import load_config, set_data_root

    cfg = load_config(config, cfg_options or [], None, "none")
    cfg.work_dir = work_dir or str(Path("work_dirs") / Path(config).stem / "dry-run")
    if data_root:
        description = f"{data_root} (given)"
    else:
        size = None
        if task == "det":
            size = 128 if scale else 256
        data_root = synthetic_data(cfg, Path(cfg.work_dir) / "data", size=size)
        description = f"synthetic {LAYOUTS[_dataset_type(cfg)]} layout in {data_root}"
    set_data_root(cfg, data_root)
    if task == "det":
        import os

        for name, loader in (("val_evaluator", "val_dataloader"), ("test_evaluator", "test_dataloader")):
            ev = cfg.get(name)
            if isinstance(ev, dict) and "ann_file" in ev:
                ev["ann_file"] = os.path.join(data_root, cfg[loader]["dataset"]["ann_file"])
    changed = shrink(cfg, task, iters, batch_size, eval_images, scale)
    return cfg, changed, description


def _module(task: str):
    if task == "seg":
        from bam_dense.downstream import seg

        return seg
    if task == "det":
        from bam_dense.downstream import det

        return det
    raise UserFacingError(f"dry-run: unknown task {task!r}")


def train(task: str, config: str, checkpoint: str | None = None, work_dir: str | None = None,
          cfg_options: list[str] | None = None, data_root: str | None = None, iters: int = 2, batch_size: int = 2,
          eval_images: int = 2, scale: float | None = None, amp: bool = False, trust_source: bool = False) -> MMDryRunResult:
    """Dry-run of ``seg|det train``: conversion, weight check, ``iters`` iterations and one validation."""
    from bam_dense.downstream.mm_common import DET_TARGETS, SEG_TARGETS, prepare_train

    if iters < 1:
        raise UserFacingError(f"dry-run: iterations must be >= 1, got {iters}")
    cfg, changed, description = _prepare(task, config, work_dir, cfg_options, data_root, iters, batch_size, eval_images, scale)
    notes = []
    if checkpoint is None:
        checkpoint = random_init_checkpoint(cfg, Path(cfg.work_dir) / "random_init_pretrain.pth")
        notes.append("no --checkpoint: a random-init bam-dense checkpoint of the config's backbone was written")
    import torch

    if not torch.cuda.is_available():
        if amp:
            notes.append("--amp ignored: mixed precision needs a GPU")
            amp = False
        ow = cfg.optim_wrapper
        if ow.get("type") == "AmpOptimWrapper":  # mmengine's AMP wrapper refuses to build without a GPU
            changed["optim_wrapper.type"] = ("AmpOptimWrapper", "OptimWrapper (no GPU here)")
            ow["type"] = "OptimWrapper"
            ow.pop("loss_scale", None)
    prepare_train(cfg, checkpoint, SEG_TARGETS if task == "seg" else DET_TARGETS, amp, False, trust_source)
    runner = _module(task)._runner(cfg)
    timer = _timer_hook()
    runner.register_hook(timer, priority="VERY_LOW")
    runner.train()
    metrics = timer.metrics
    from bam_dense.core.memory import peak_memory

    memory, kind = peak_memory()
    times = timer.times
    result = MMDryRunResult(task=task, config=str(config), work_dir=str(cfg.work_dir), data=description,
                            checkpoint=str(checkpoint), changed=changed, iterations=len(times),
                            seconds_per_iter=(sum(times[1:]) / (len(times) - 1)) if len(times) > 1 else (times[0] if times else math.nan),
                            first_iter_seconds=times[0] if times else math.nan, eval_images=eval_images,
                            metrics=metrics, peak_memory_mb=memory, memory_kind=kind, notes=notes)
    Path(cfg.work_dir, "dry_run.json").write_text(json.dumps(result.as_dict(), indent=1))
    return result


def test(task: str, config: str, checkpoint: str, work_dir: str | None = None, cfg_options: list[str] | None = None,
         out: str | None = None, data_root: str | None = None, eval_images: int = 2,
         scale: float | None = None) -> MMDryRunResult:
    """Dry-run of ``seg|det test``: the fine-tuned checkpoint on ``eval_images`` images, metrics JSON written."""
    from bam_dense.downstream.mm_common import prepare_test, write_metrics

    cfg, changed, description = _prepare(task, config, work_dir, cfg_options, data_root, 1, 1, eval_images, scale)
    checkpoint = prepare_test(cfg, checkpoint)
    module = _module(task)
    runner = module._runner(cfg, testing=True) if task == "seg" else module._runner(cfg)
    metrics = runner.test()
    from bam_dense.core.memory import peak_memory

    memory, kind = peak_memory()
    path = Path(out) if out else Path(cfg.work_dir) / "metrics.json"
    write_metrics(path, "dry_run", dict(metrics), config, checkpoint, {"dry_run": True, "eval_images": eval_images})
    test_changed = {k: v for k, v in changed.items() if not k.startswith(("train_", "default_hooks", "log_processor"))}
    return MMDryRunResult(task=task, config=str(config), work_dir=str(cfg.work_dir), data=description,
                          checkpoint=str(checkpoint), changed=test_changed, eval_images=eval_images,
                          metrics=dict(metrics), peak_memory_mb=memory, memory_kind=kind)
