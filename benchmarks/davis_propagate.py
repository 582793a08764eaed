#!/usr/bin/env python
"""DAVIS label propagation: throughput and peak memory of the banded affinity against the dense reference.

    python benchmarks/davis_propagate.py [--frames 20 --dim 384 --device cpu] [--dino-repo PATH]

Propagation is timed on DAVIS-sized inputs (480x832 frames, patch 16: a 30x52 grid; 7 previous frames + the
first as context; random unit features of the given width), once with :func:`propagate_labels` (bands of
target rows meeting only the source rows within the neighbourhood radius) and once with
:func:`propagate_labels_dense` (the full n x hw x hw affinity, as DINO's script). Each runs in its own
process so that peak memory (RSS on the CPU, ``max_memory_allocated`` on CUDA) is its own; the outputs
are compared for equality.

With ``--dino-repo`` (a checkout of facebookresearch/dino, e.g. ``git clone`` to a temporary folder; nothing of it
is copied here), DINO's own ``label_propagation`` from ``eval_video_segmentation.py`` is timed on the same inputs
in a third process: ``.cuda()`` is made a no-op on the CPU, the model is a stand-in whose
``get_intermediate_layers`` returns the target frame's precomputed tokens, and DINO's neighbourhood mask
(``restrict_neighborhood``, built once per video by four Python loops) is built before the clock starts and
its cost printed apart. The ratio compares the per-frame propagation at equal output.
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


def _dino_propagation(repo: str, dim: int, dev, ctx, segs, h: int, w: int, classes: int, patch: int = 16):
    """(DINO's per-frame propagation as a function of the target's features, seconds its neighbourhood mask took)."""
    import argparse
    import importlib

    import torch

    n_ctx = ctx.shape[0]
    if dev.type == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self  # DINO's script calls .cuda() on every tensor
    sys.path.insert(0, repo)
    dino = importlib.import_module("eval_video_segmentation")
    args = argparse.Namespace(size_mask_neighborhood=12, topk=5, n_last_frames=7, patch_size=patch)
    dino.args = args  # restrict_neighborhood reads the script's global args

    class Tokens(torch.nn.Module):  # stands in for the ViT: the target frame's tokens, class token first
        def __init__(self):
            super().__init__()
            self.patch_embed = argparse.Namespace(patch_size=patch)
            self.current = None

        def get_intermediate_layers(self, x, n=1):
            return [torch.cat([torch.zeros(1, 1, dim, device=dev), self.current[None]], dim=1)]

    model = Tokens()
    frame = torch.zeros(3, h * patch, w * patch, device=dev)
    ctx_feats = [c.t().contiguous() for c in ctx]  # DINO keeps dim x hw per frame
    ctx_segs = [s.reshape(1, classes, h, w) for s in segs]
    start = time.perf_counter()
    mask = dino.restrict_neighborhood(h, w).unsqueeze(0).repeat(n_ctx, 1, 1)
    mask_seconds = time.perf_counter() - start

    def propagate(target):
        model.current = target
        return dino.label_propagation(args, model, frame, ctx_feats, ctx_segs, mask)[0].reshape(classes, h * w)

    return propagate, mask_seconds


def _inputs(frames: int, dim: int, dev):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    h, w, n_ctx, classes = 30, 52, 8, 4
    ctx = F.normalize(torch.randn(n_ctx, h * w, dim, device=dev), dim=2)
    segs = torch.softmax(torch.randn(n_ctx, classes, h * w, device=dev), dim=1)
    targets = F.normalize(torch.randn(frames, h * w, dim, device=dev), dim=2)
    return ctx, segs, targets, h, w, classes


def interleaved_worker(repo: str | None, frames: int, dim: int, device: str) -> None:
    """Seconds of each implementation on the same frames, taking turns frame by frame in one process, so
    that the load of a shared machine falls on all of them alike (their ratio is the robust figure)."""
    import torch

    from bam_dense.davis.propagate import propagate_labels, propagate_labels_dense

    dev = torch.device(device)
    ctx, segs, targets, h, w, classes = _inputs(frames, dim, dev)
    impls = {"banded": lambda t: propagate_labels(t, ctx, segs, h, w, 12, 5, 0.1),
             "dense": lambda t: propagate_labels_dense(t, ctx, segs, h, w, 12, 5, 0.1)}
    mask_seconds = None
    if repo:
        impls["dino"], mask_seconds = _dino_propagation(repo, dim, dev, ctx, segs, h, w, classes)
    for fn in impls.values():
        fn(targets[0])  # load kernels and thread pools first
    seconds = dict.fromkeys(impls, 0.0)
    for t in range(frames):
        for name, fn in impls.items():
            start = time.perf_counter()
            fn(targets[t])
            if dev.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "mask_seconds": mask_seconds, "threads": torch.get_num_threads()}))


def dino_worker(repo: str, frames: int, dim: int, device: str, out: str) -> None:
    """DINO's label_propagation on the worker's inputs (same seed and order as :func:`worker`)."""
    import torch

    dev = torch.device(device)
    ctx, segs, targets, h, w, classes = _inputs(frames, dim, dev)
    propagate, mask_seconds = _dino_propagation(repo, dim, dev, ctx, segs, h, w, classes)
    propagate(targets[0])  # load kernels first
    if dev.type == "cuda":
        torch.cuda.synchronize()
    results = []
    start = time.perf_counter()
    for t in range(frames):
        results.append(propagate(targets[t]))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    torch.save(torch.stack(results).cpu(), out)
    print(json.dumps({"seconds": elapsed, "frames_per_s": frames / elapsed, "peak_extra_mib": float("nan"),
                      "mask_seconds": mask_seconds}))


def worker(mode: str, frames: int, dim: int, device: str, out: str) -> None:
    import torch

    from bam_dense.davis.propagate import propagate_labels, propagate_labels_dense

    dev = torch.device(device)
    ctx, segs, targets, h, w, classes = _inputs(frames, dim, dev)
    small = (targets[0, :12], ctx[:, :12], segs[:, :, :12], 3, 4, 1, 5, 0.1)  # load kernels and thread pools first
    propagate_labels(*small)
    propagate_labels_dense(*small)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results = []
    start = time.perf_counter()
    for t in range(frames):
        if mode == "banded":
            results.append(propagate_labels(targets[t], ctx, segs, h, w, 12, 5, 0.1))
        else:
            results.append(propagate_labels_dense(targets[t], ctx, segs, h, w, 12, 5, 0.1))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    torch.save(torch.stack(results).cpu(), out)
    print(json.dumps({"seconds": elapsed, "frames_per_s": frames / elapsed, "peak_extra_mib": peak / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dino-repo", help="checkout of facebookresearch/dino: also time its label_propagation")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "interleaved":
        interleaved_worker(args.dino_repo, args.frames, args.dim, args.device)
        return
    if args.worker == "dino":
        dino_worker(args.dino_repo, args.frames, args.dim, args.device, args.out)
        return
    if args.worker:
        worker(args.worker, args.frames, args.dim, args.device, args.out)
        return
    import tempfile

    import torch

    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        modes = ("banded", "dense", "dino") if args.dino_repo else ("banded", "dense")
        for mode in modes:
            out = f"{tmp}/{mode}.pt"
            extra = ["--dino-repo", args.dino_repo] if mode == "dino" else []
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--frames", str(args.frames), "--dim", str(args.dim),
                                   "--device", args.device, "--out", out, *extra], capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{mode} worker failed:\n{proc.stderr[-3000:]}")
            figures[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            figures[mode]["out"] = torch.load(out, weights_only=True)
        diff = (figures["banded"]["out"] - figures["dense"]["out"]).abs().max().item()
        cmd = [sys.executable, __file__, "--worker", "interleaved", "--frames", str(args.frames), "--dim", str(args.dim),
               "--device", args.device] + (["--dino-repo", args.dino_repo] if args.dino_repo else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"interleaved worker failed:\n{proc.stderr[-3000:]}")
        turns = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{args.frames} target frames, 30x52 grid, 8 context frames, dim {args.dim}, device {args.device}")
    for mode in modes:
        f = figures[mode]
        print(f"{mode:>7}: {f['frames_per_s']:.1f} frames/s, peak memory +{f['peak_extra_mib']:.0f} MiB")
    if args.dino_repo:
        dino = figures["dino"]
        gap = (figures["banded"]["out"] - dino["out"]).abs().max().item()
        print(f"DINO eval_video_segmentation.label_propagation: {dino['frames_per_s']:.1f} frames/s (its neighbourhood mask, "
              f"once per video: {dino['mask_seconds']:.1f} s, not included); speed ratio banded/DINO "
              f"{figures['banded']['frames_per_s'] / dino['frames_per_s']:.2f}x, max |difference| {gap:.2e}")
    sec = turns["seconds"]
    print(f"taking turns frame by frame in one process ({turns['threads']} threads): " + ", ".join(
        f"{name} {args.frames / t:.2f} frames/s" for name, t in sec.items()))
    print("speed ratios in that run: banded/dense {:.2f}x".format(sec["dense"] / sec["banded"])
          + (", banded/DINO {:.2f}x".format(sec["dino"] / sec["banded"]) if "dino" in sec else ""))
    b, d = figures["banded"], figures["dense"]
    print(f"speed ratio banded/dense {b['frames_per_s'] / d['frames_per_s']:.2f}x, "
          f"memory ratio dense/banded {d['peak_extra_mib'] / max(b['peak_extra_mib'], 1e-9):.1f}x, max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
