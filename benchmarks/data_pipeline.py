#!/usr/bin/env python
"""Data-pipeline cost of a recipe's views: worker CPU ms/image on both paths, device ms/image, cores per accelerator.

    python benchmarks/data_pipeline.py [--config configs/pretrain/bam_vit_small_16gpu.yaml] [--images 64 --repeat 2]
        [--batch 64 --device auto] [--gflop-per-image 107.6 --peak-tflops 989 --mfu 0.4]

Writes ``--images`` synthetic 400x600 JPEGs (smooth random colour fields, quality 90) to a temporary folder, then
times, on one thread with ``time.process_time`` (the CPU a DataLoader worker spends), what a worker does per
image: decode (``read_rgb``), the views, and its share of collate, for ``data.augment_on: worker`` (PIL views)
and ``data.augment_on: device`` (parameters + crop only), the two taking turns batch by batch so that a shared
machine slows both alike. The device half of the ``device`` path
(:class:`bam_dense.data.device_augment.DeviceAugment`) is timed on ``--device`` over batches of ``--batch``
(wall clock, synchronised). Cores per accelerator = images/s the accelerator consumes at ``--mfu`` of
``--peak-tflops`` for a model of ``--gflop-per-image`` (forward + backward, all crops; 107.6 for BAM ViT-S/16)
times worker seconds per image.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bam_dense.core.paths import bundled  # noqa: E402


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        coarse = (rng.random((25, 38, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(coarse).resize((600, 400), Image.BICUBIC)
        noise = rng.normal(0, 8, (400, 600, 3))
        img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
        path = folder / f"img_{i:04d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def worker_cost(paths: list[Path], pipelines: dict, repeat: int, batch: int) -> dict:
    """CPU seconds per image of decode, views and collate, as one worker spends them, for each pipeline
    ``name: (views, collate_fn)``. The pipelines take turns batch by batch, so that a busy machine slows them
    alike (their ratio holds) while each batch still runs with its own pipeline's working set, as in a worker."""
    import torch

    from bam_dense.data.images import read_rgb

    cost = {name: {"decode": 0.0, "augment": 0.0, "collate": 0.0} for name in pipelines}
    n = 0
    for r in range(repeat):
        for start in range(0, len(paths), batch):
            chunk = paths[start:start + batch]
            for name, (views, collate_fn) in pipelines.items():
                samples = []
                for k, path in enumerate(chunk):
                    t0 = time.process_time()
                    img = read_rgb(path)
                    t1 = time.process_time()
                    torch.manual_seed(r * 100_003 + start + k)
                    samples.append((views(img), 0, 0))
                    t2 = time.process_time()
                    cost[name]["decode"] += t1 - t0
                    cost[name]["augment"] += t2 - t1
                t3 = time.process_time()
                collate_fn(samples)
                cost[name]["collate"] += time.process_time() - t3
            n += len(chunk)
    return {name: {**{k: v / n for k, v in c.items()}, "total": sum(c.values()) / n} for name, c in cost.items()}


def device_cost(paths: list[Path], views_cfg, device, batch: int, repeat: int) -> dict:
    """Wall seconds per image of DeviceAugment on ``device`` (after a warm-up batch), its peak memory on CUDA,
    and on a non-CPU device how far its crops are from the CPU's float64 (Pillow-arithmetic) ones."""
    import torch

    from bam_dense.data.device_augment import DeviceAugment, DeviceViews, collate_device
    from bam_dense.data.images import read_rgb

    views = DeviceViews(views_cfg)
    samples = []
    for k in range(batch):
        torch.manual_seed(k)
        samples.append((views(read_rgb(paths[k % len(paths)])), 0, 0))
    host = collate_device(samples)[0]
    crops = [c.to(device) for c in host]
    aug = DeviceAugment(views_cfg, device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    out = aug(crops)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(repeat):
        aug(crops)
    sync()
    result = {"s_per_image": (time.perf_counter() - t) / (repeat * batch),
              "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None}
    if device.type != "cpu":
        std = torch.tensor(views_cfg.std).view(1, 3, 1, 1) * 255
        reference = DeviceAugment(views_cfg, "cpu")(host)
        levels = torch.cat([((o.cpu() - r) * std).abs().round().flatten() for o, r in zip(out, reference)])
        result["vs_cpu"] = (levels.max().item(), (levels > 0).float().mean().item())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(bundled("configs/pretrain/bam_vit_small_16gpu.yaml", required=True)))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="collate and device batch size")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--device-repeat", type=int, default=3)
    parser.add_argument("--gflop-per-image", type=float, default=107.6, help="model GFLOP per image, all crops, fwd+bwd")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak TFLOP/s (default: H100 SXM bf16 dense)")
    parser.add_argument("--mfu", type=float, default=0.4)
    args = parser.parse_args()

    import torch

    from bam_dense.core.config import load_config
    from bam_dense.data.device_augment import DeviceViews, collate_device
    from bam_dense.data.pretrain import Views, collate

    torch.set_num_threads(1)
    views_cfg = load_config(args.config).data.views
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), args.images)
        rows = worker_cost(paths, {"worker": (Views(views_cfg), collate), "device": (DeviceViews(views_cfg), collate_device)},
                           args.repeat, args.batch)
        on_device = device_cost(paths, views_cfg, device, args.batch, args.device_repeat)
    images_per_s = args.mfu * args.peak_tflops * 1e3 / args.gflop_per_image
    print(f"views of {Path(args.config).name}: {views_cfg.global_crops}x{views_cfg.global_size} + "
          f"{views_cfg.local_crops}x{views_cfg.local_size}, {args.images} synthetic 400x600 JPEGs x {args.repeat}, one thread")
    print(f"{'augment_on':<11} {'decode':>7} {'augment':>8} {'collate':>8} {'worker ms/img':>14} {'cores/accel':>12}")
    for name, r in rows.items():
        print(f"{name:<11} {1e3 * r['decode']:>7.2f} {1e3 * r['augment']:>8.2f} {1e3 * r['collate']:>8.2f} "
              f"{1e3 * r['total']:>14.2f} {images_per_s * r['total']:>12.1f}")
    print(f"worker CPU, device vs worker path: {rows['worker']['total'] / rows['device']['total']:.1f}x less")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, one thread"
    peak = f", peak {on_device['peak_mib']:.0f} MiB" if on_device["peak_mib"] is not None else ""
    print(f"device side on {device} ({name}): {1e3 * on_device['s_per_image']:.2f} ms/image (batch {args.batch}{peak})")
    if "vs_cpu" in on_device:
        worst, share = on_device["vs_cpu"]
        print(f"device vs CPU float64 crops: max {worst:.0f} levels of 255, {100 * share:.2f}% of values differ")
    print(f"cores/accel: worker cores one accelerator needs at {args.mfu:.0%} MFU of {args.peak_tflops:g} TFLOP/s "
          f"({args.gflop_per_image:g} GFLOP/image -> {images_per_s:.0f} images/s)")


if __name__ == "__main__":
    main()
