#!/usr/bin/env python
"""BAM loss cost: forward+backward time and peak memory against the global batch, and its share of a step.

    python benchmarks/bam_loss.py [--batches 256 512 1024 2048 4096 --crops 8 --dim 4096 --device cuda]

For each global batch ``B`` (one process: ``B`` images, 2 global + 6 local crops), the loss of the
distillation variant (teacher targets, top-k 128) runs forward and backward on random projector outputs.
Peak memory is measured in a fresh process per size (CUDA: ``max_memory_allocated``; CPU: RSS high-water
mark above the inputs, approximate) and reported against the similarity matrix ``(8B x 2B)`` float32.
``--step-arch`` times a full training step of that backbone (forward/backward of all crops, projector,
loss, AdamW) at ``--step-batch`` images, for the loss's share of a step.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_loss(batch: int, crops: int, dim: int, device: str, repeat: int) -> dict:
    import torch

    from bam_dense.losses.bam import bam_loss

    dev = torch.device(device)
    torch.manual_seed(0)
    z = torch.randn(crops * batch, dim, device=dev, requires_grad=True)
    zt = torch.randn(crops * batch, dim, device=dev)
    kwargs = dict(n_crops=crops, n_global=2, temperature=0.1, eps=0.05, top_k=min(128, 2 * batch - 2))
    bam_loss(z[: crops * 4], zt[: crops * 4], **{**kwargs, "top_k": 2}).backward()  # warm-up: kernels, pools
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(repeat):
        z.grad = None
        _sync(dev)
        start = time.perf_counter()
        bam_loss(z, zt, **kwargs).backward()
        _sync(dev)
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    sim_bytes = crops * batch * 2 * batch * 4
    return {"batch": batch, "seconds": min(times), "peak_mib": peak / 2**20, "sim_mib": sim_bytes / 2**20}


def measure_step(arch: str, batch: int, device: str, repeat: int) -> float:
    import torch

    from bam_dense.engine.optim import build_optimizer
    from bam_dense.engine.teacher import make_teacher
    from bam_dense.methods.bam import BAM, BAMParams
    from bam_dense.methods.base import StepContext
    from bam_dense.models.backbones import create_backbone
    from bam_dense.models.heads import HeadConfig

    dev = torch.device(device)
    params = BAMParams(top_k=128, projector=HeadConfig(3, 4096, 4096, bn=False, bias=True, act="gelu"))
    method = BAM(create_backbone(arch, {"num_heads": 12} if "small" in arch else {}, freeze_patch_embed=True), params)
    student = method.student.to(dev)
    teacher = make_teacher(student).to(dev)
    opt = build_optimizer(student, "adamw", 1e-4, 0.04)
    crops = [torch.randn(batch, 3, 224, 224, device=dev) for _ in range(2)] + [torch.randn(batch, 3, 96, 96, device=dev) for _ in range(6)]
    ctx = StepContext(0, 0, 2, 8)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    for i in range(repeat + 1):
        _sync(dev)
        start = time.perf_counter()
        with amp:
            out = student(crops)
            with torch.no_grad():
                t_out = teacher(crops)
            loss, _ = method.loss(out, t_out, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)
        if i:
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--crops", type=int, default=8)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--step-arch", default=None, help="e.g. vit_small_patch16_224: also time a full BAM step")
    parser.add_argument("--step-batch", type=int, default=256)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure_loss(args.worker, args.crops, args.dim, args.device, args.repeat)))
        return
    import torch

    print(f"BAM loss (teacher variant, top-k 128), {args.crops} crops, dim {args.dim}, device {args.device}, torch {torch.__version__}")
    print(f"{'batch':>6} {'fwd+bwd s':>10} {'peak MiB':>9} {'S MiB':>7} {'peak/S':>7}")
    rows = []
    for batch in args.batches:
        proc = subprocess.run([sys.executable, __file__, "--worker", str(batch), "--crops", str(args.crops), "--dim", str(args.dim),
                               "--device", args.device, "--repeat", str(args.repeat)], capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['batch']:>6} {r['seconds']:>10.4f} {r['peak_mib']:>9.0f} {r['sim_mib']:>7.0f} {r['peak_mib'] / r['sim_mib']:>7.2f}")
    if args.step_arch:
        step = measure_step(args.step_arch, args.step_batch, args.device, args.repeat)
        loss_at = next((r for r in rows if r["batch"] == args.step_batch), None)
        print(f"full {args.step_arch} BAM step at {args.step_batch} images: {step:.3f} s")
        if loss_at:
            print(f"loss share of the step: {100 * loss_at['seconds'] / step:.1f}%")


if __name__ == "__main__":
    main()
