"""Pretraining dry-run: the full recipe at a few iterations, before a multi-day job is queued.

``dry_run(config, overrides)`` builds exactly what ``bam-dense pretrain`` builds from the same config and
overrides (backbone, method and heads, teacher, optimizer, data pipeline, sampler, checkpointing), runs a few
optimizer steps and one k-NN evaluation, writes a real checkpoint, and reports what it ran, the seconds per
step and the peak memory. Only sizes change (listed in :attr:`DryRunResult.changed`):

* ``data.batch_size_per_gpu`` (default 2), ``data.num_workers`` (0), ``run.max_steps`` (default 2);
* the k-NN monitor runs once after the steps, on at most ``eval_images`` train and ``eval_images`` val images
  (``eval.knn.max_train_images``, ``eval.knn.batch_size``; the random-init baseline is not repeated);
* data: ``data_root`` when given, else the config's ``data.path`` when it exists, else synthetic images written
  in the ImageNet layout (``<out>/data/imagenet/{train,val}/<wnid>/*.JPEG``) and read through the same folder
  reader; configs without ``data.path`` keep their in-memory synthetic data;
* outputs go to ``<run.output_dir>/dry-run`` (never the real run's checkpoints, which ``run.resume=auto``
  would pick up).

Input sizes are not touched unless the caller asks, through the same overrides a user passes
(``data.views.global_size=64 data.views.local_size=32 eval.knn.image_size=64 ...``, or ``scale=0.25``, which
writes those overrides); the report lists them too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bam_dense.core import dist
from bam_dense.core.atomic import atomic_write_text
from bam_dense.core.config import PretrainConfig, load_config, to_dict
from bam_dense.core.dry_run_report import changed_line, closing_lines, line
from bam_dense.core.errors import UserFacingError
from bam_dense.core.memory import peak_memory
from bam_dense.engine.trainer import Trainer

DRY_RUN_DIR = "dry-run"

# Keys a dry-run may change (sizes, where outputs and data go, and input sizes a user shrinks by override).
SIZE_KEYS = frozenset({
    "run.output_dir", "run.resume", "run.max_steps", "run.checkpoint_every", "run.log_every", "run.keep_every_epochs",
    "run.progress", "data.path", "data.batch_size_per_gpu", "data.num_workers", "data.views.global_size",
    "data.views.local_size", "eval.random_init_baseline", "eval.knn.train_path", "eval.knn.val_path",
    "eval.knn.max_train_images", "eval.knn.batch_size", "eval.knn.image_size", "eval.knn.resize_size",
})


@dataclass
class DryRunResult:
    config: str
    output_dir: str
    data: str
    changed: dict[str, tuple[Any, Any]]  # key -> (value in the full run, value in the dry-run)
    steps: int
    seconds_per_step: float
    first_step_seconds: float
    peak_memory_mb: float
    memory_kind: str
    first_loss: float | None
    last_loss: float | None
    knn_top1: float | None
    knn_images: tuple[int, int]
    checkpoint: str
    params_m: float = 0.0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"dry-run of {self.config} (pretraining)",
               line("model", f"{self.params_m:.1f}M student parameters, as in the full run"), line("data", self.data),
               changed_line(self.changed)]
        loss = "" if self.first_loss is None else f", loss {self.first_loss:.4f} -> {self.last_loss:.4f}"
        out.append(line("ran", f"{self.steps} optimizer step(s){loss}; "
                               f"{self.seconds_per_step:.2f} s/step (first step {self.first_step_seconds:.2f} s)"))
        if self.knn_top1 is not None:
            out.append(line("evaluation", f"k-NN on {self.knn_images[0]} train / {self.knn_images[1]} val images: "
                                          f"top-1 {100 * self.knn_top1:.1f}%"))
        else:
            out.append(line("evaluation", "none (eval.knn.enabled is false in the config)"))
        out.append(line("checkpoint", self.checkpoint))
        return [*out, *closing_lines(self.peak_memory_mb, self.memory_kind, self.notes)]

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["changed"] = {k: list(v) for k, v in self.changed.items()}
        return d


class _Subset:
    """``n`` items of an image source spread evenly over it (so an ImageNet folder gives several classes)."""

    def __init__(self, source, n: int):
        total = len(source)
        n = min(n, total)
        self.source = source
        self.indices = sorted({i * total // n for i in range(n)})
        self.targets = [source.targets[i] for i in self.indices]  # what the k-NN monitor's balanced subset reads

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int):
        return self.source.load(self.indices[index])


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _write_imagenet(root: Path, size: int) -> Path:
    from bam_dense.data.synthetic import make

    marker = root / ".complete"
    if not marker.exists():
        make("imagenet", root, num=2, size=size)
        marker.write_text("")
    return root


def scale_overrides(cfg: PretrainConfig, scale: float) -> list[str]:
    """The overrides a user would type to multiply the crop sizes by ``scale`` (multiples of 32, at least 32)."""

    def r(x: float) -> int:
        return max(32, int(round(x * scale / 32.0)) * 32)

    v, k = cfg.data.views, cfg.eval.knn
    out = [f"data.views.global_size={r(v.global_size)}", f"eval.knn.image_size={r(k.image_size)}",
           f"eval.knn.resize_size={max(r(k.resize_size), r(k.image_size))}"]
    if v.local_crops:
        out.append(f"data.views.local_size={r(v.local_size)}")
    return out


def dry_run_config(config: str | Path, overrides: list[str] | None = None, *, data_root: str | None = None,
                   steps: int = 2, batch_size: int = 2, eval_images: int = 16,
                   scale: float | None = None) -> tuple[PretrainConfig, PretrainConfig, str]:
    """(full-run config, dry-run config, description of the data) for ``config`` with ``overrides``."""
    full = load_config(config, list(overrides or []))
    if scale:
        overrides = [*(overrides or []), *scale_overrides(full, scale)]
    out = Path(full.run.output_dir) / DRY_RUN_DIR
    dry: list[str] = [
        f"run.output_dir={out}", "run.resume=none", f"run.max_steps={steps}", f"run.checkpoint_every={steps + 1}",
        "run.log_every=1", "run.keep_every_epochs=0", "run.progress=false",
        f"data.batch_size_per_gpu={min(batch_size, full.data.batch_size_per_gpu)}", "data.num_workers=0",
        "eval.random_init_baseline=false",
        f"eval.knn.max_train_images={min(eval_images, full.eval.knn.max_train_images)}",
        f"eval.knn.batch_size={min(8, full.eval.knn.batch_size)}",
    ]
    if data_root:
        description = f"{data_root} (given)"
        dry.append(f"data.path={data_root}")
    elif full.data.path and Path(full.data.path).exists():
        description = f"{full.data.path} (the config's data.path)"
    elif full.data.path:
        root = _write_imagenet(out / "data" / "imagenet", size=max(64, min(full.data.views.global_size, 160)))
        description = (f"synthetic ImageNet layout in {root} (data.path {full.data.path} does not exist here), "
                       "read through the same folder reader")
        dry.append(f"data.path={root}")
    else:
        description = f"in-memory synthetic images ({full.data.synthetic.num_images} x {full.data.synthetic.size} px), as the config says"
    knn = full.eval.knn
    if knn.enabled and knn.train_path:
        path = data_root or (full.data.path if full.data.path and Path(full.data.path).exists() else None)
        if not Path(knn.train_path).exists() or data_root:
            root = Path(path) if path else out / "data" / "imagenet"
            val = root / "val" if (root / "val").is_dir() else root
            dry += [f"eval.knn.train_path={root}", f"eval.knn.val_path={val}"]
    cfg = load_config(config, [*(overrides or []), *dry])  # the dry-run's sizes win over the same keys in overrides
    return full, cfg, description


class _DryRunTrainer(Trainer):
    """The real trainer; the k-NN sources are thinned to a few images."""

    def __init__(self, cfg: PretrainConfig, eval_images: int):
        super().__init__(cfg)
        self.eval_images = eval_images

    def _knn_sources(self):
        train, val = super()._knn_sources()
        return _Subset(train, self.eval_images), _Subset(val, self.eval_images)


def dry_run(config: str | Path, overrides: list[str] | None = None, *, data_root: str | None = None, steps: int = 2,
            batch_size: int = 2, eval_images: int = 16, scale: float | None = None) -> DryRunResult:
    """Run the dry-run of a pretraining config; see the module docstring for what changes."""
    if steps < 1:
        raise UserFacingError(f"dry-run: steps must be >= 1, got {steps}")
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserFacingError("--dry-run runs in one process: start it with bam-dense (or python), not torchrun")
    full, cfg, description = dry_run_config(config, overrides, data_root=data_root, steps=steps, batch_size=batch_size,
                                            eval_images=eval_images, scale=scale)
    before, after = _flat(to_dict(load_config(config))), _flat(to_dict(cfg))
    changed = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
    t0 = time.perf_counter()
    trainer = _DryRunTrainer(cfg, eval_images)
    build_s = time.perf_counter() - t0
    notes = [f"build took {build_s:.1f} s"]
    params = sum(p.numel() for p in trainer.student.parameters()) / 1e6
    step_times: list[float] = []
    original = trainer.train_step

    def timed_step(crops, timings=None):
        start = time.perf_counter()
        result = original(crops, timings)
        if trainer.use_cuda:
            torch.cuda.synchronize(trainer.device)
        step_times.append(time.perf_counter() - start)
        return result

    trainer.train_step = timed_step
    try:
        summary = trainer.train()
        acc = None
        n_train = n_val = 0
        if cfg.eval.knn.enabled:
            acc = trainer.knn()
            train_src, val_src = trainer._knn_sources()
            n_train, n_val = min(len(train_src), cfg.eval.knn.max_train_images), len(val_src)
        memory, memory_kind = peak_memory(trainer.device)
    finally:
        dist.destroy()
    per_step = sum(step_times[1:]) / max(len(step_times) - 1, 1) if len(step_times) > 1 else (step_times[0] if step_times else 0.0)
    result = DryRunResult(
        config=str(config), output_dir=cfg.run.output_dir, data=description, changed=changed, steps=summary.steps,
        seconds_per_step=per_step, first_step_seconds=step_times[0] if step_times else 0.0, peak_memory_mb=memory,
        memory_kind=memory_kind,
        first_loss=summary.first_loss, last_loss=summary.last_loss, knn_top1=acc, knn_images=(n_train, n_val),
        checkpoint=str(summary.checkpoint), params_m=params, notes=notes,
    )
    if dist.is_main():
        atomic_write_text(Path(cfg.run.output_dir) / "dry_run.json", json.dumps(result.as_dict(), indent=1, default=str))
    return result
