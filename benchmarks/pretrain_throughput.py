#!/usr/bin/env python
"""Pretraining throughput: images/s, crops/s, the split of a step, peak memory; several methods compared.

    python benchmarks/pretrain_throughput.py configs/pretrain/bam_tiny_cpu.yaml [more configs ...] \
        [--steps 20 --warmup 3 --batch 64 --device cpu] [KEY.SUB=VALUE ...]

Each config runs through the real engine (its data pipeline, method, optimizer and teacher) for
``--warmup`` untimed and ``--steps`` timed steps. The engine's own ``train_step`` is timed by phase: data wait,
augment (the device half of ``data.augment_on: device``), forward (student and teacher, loss), backward (with
clipping) and optimizer (with the EMA update); the first config is the baseline the others are compared with
(e.g. BYOL vs LEWEL_B and CO-BYOL, BAM vs CO-BAM and LEWEL-BAM on the same device and batch).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def profile(config: str, steps: int, warmup: int, overrides: list[str]) -> dict:
    from bam_dense.core.config import load_config
    from bam_dense.engine.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [f"run.output_dir={tmp}", "run.progress=false", "run.tensorboard=false",
                                   "eval.knn.enabled=false", *overrides])
        trainer = Trainer(cfg)
        dev = trainer.device
        split = {"data": 0.0, "augment": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        loader = iter(trainer._loader())
        if dev.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(dev)
        while trainer.step < warmup + steps:
            t0 = time.perf_counter()
            try:
                crops, _, _ = next(loader)
            except StopIteration:
                trainer.epoch, trainer.batch_in_epoch = trainer.epoch + 1, 0
                loader = iter(trainer._loader())
                continue
            crops = [c.to(dev, non_blocking=True) for c in crops]
            timed = trainer.step >= warmup
            if timed:
                split["data"] += time.perf_counter() - t0
            trainer.train_step(crops, split if timed else None)  # the engine's own step, timed by phase
            trainer.step += 1
            trainer.batch_in_epoch += 1
        total = sum(split.values())
        return {"config": Path(config).name, "method": cfg.method.name, "images_per_s": steps * trainer.global_batch / total,
                "crops_per_s": steps * trainer.global_batch * trainer.views.n_crops / total, "step_s": total / steps,
                "split": {k: v / total for k, v in split.items()}, "peak_mib": trainer._peak_memory_mb(), "device": str(dev),
                "batch": trainer.global_batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="pretraining configs, then KEY.SUB=VALUE overrides for all")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_intermixed_args()
    configs = [c for c in args.configs if "=" not in c]
    overrides = [c for c in args.configs if "=" in c]
    rows = [profile(c, args.steps, args.warmup, overrides) for c in configs]
    base = rows[0]
    print(f"device {base['device']}, global batch {base['batch']}, {args.steps} timed steps after {args.warmup}")
    print(f"{'config':<28} {'img/s':>8} {'crop/s':>8} {'step s':>7} {'data':>5} {'aug':>5} {'fwd':>5} {'bwd':>5} {'opt':>5} {'peak MiB':>9} {'vs first':>8}")
    for r in rows:
        s = r["split"]
        print(f"{r['config']:<28} {r['images_per_s']:>8.1f} {r['crops_per_s']:>8.1f} {r['step_s']:>7.3f} "
              f"{100 * s['data']:>4.0f}% {100 * s['augment']:>4.0f}% {100 * s['forward']:>4.0f}% {100 * s['backward']:>4.0f}% {100 * s['optimizer']:>4.0f}% "
              f"{r['peak_mib']:>9.0f} {r['step_s'] / base['step_s']:>7.2f}x")


if __name__ == "__main__":
    main()
