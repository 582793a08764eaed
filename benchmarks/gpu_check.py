#!/usr/bin/env python
"""The first-GPU check: one command that measures what the CPU machines cannot, in under 8 minutes.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--max-minutes 7.5] [--compile-timeout 150]
    python benchmarks/gpu_check.py --cpu-smoke [--out smoke.json]      # the same code paths, toy sizes, CPU

Needs only what a stock CUDA PyTorch machine has (torch, torchvision, timm, numpy, Pillow, PyYAML, tqdm) and
the project from this source tree (or ``pip install --no-deps``); nothing of OpenMMLab, OpenCV, SciPy or faiss
is imported. Sections, each timed on random inputs of the recipes' shapes:

* ``amp``: one BAM ViT-S/16 step (the recipe's student, teacher and loss, ``bam_vit_small_16gpu.yaml``) in bf16
  autocast against float32 (TF32 off) from the same weights and crops: loss and gradient agreement (relative
  loss difference, cosine and relative L2 error of all gradients together, the worst parameter's cosine);
* ``throughput_<arch>_<mode>``: images/s, GFLOP per image (``bam_dense.engine.flops``, the engine's counter),
  MFU against the card's bf16 peak and peak memory of the engine's own ``train_step`` (AMP, fused AdamW,
  clipping, EMA) for BAM ViT-S/16 and ViT-B/16 at the recipes' per-GPU batch (256), eager and ``torch.compile``
  (the compiled runs come last and each stops after ``--compile-timeout`` seconds); an out-of-memory batch is
  retried once at half the size, and the JSON says so;
* ``augment``: ``data.augment_on: device`` against ``worker`` (the functions of ``benchmarks/data_pipeline.py``):
  worker CPU ms per image on both paths, the device half's ms per image and images/s on the GPU, and how far
  its crops are from the CPU's float64 ones (levels of 255);
* ``jpeg``: ``torchvision.io.decode_jpeg`` batched on the GPU against the same decoder and Pillow on one CPU thread
  (images/s, largest pixel difference to the CPU decode);
* ``davis``: label propagation at 480p (a 30x52 grid of ViT-S/16 patch tokens, DINO's parameters,
  :func:`bam_dense.davis.propagate.propagate_labels`): frames/s of feature extraction, of propagation, and of both.

Every section runs in its own ``try``: an error (out of memory, a compile failure, the time limit) is written into
the JSON and the next section runs. ``--max-minutes`` bounds the whole run: a section that would start after the
budget is skipped (and says so), and one that runs over is stopped. The table goes to stdout, the JSON (atomic)
to ``--out``; the JSON also lists the third-party modules the run imported.

``--cpu-smoke`` runs every section at toy sizes on the CPU (a 1-block ViT on 32-px crops, 8 images; compile
with the ``eager`` backend; a nominal 1 TFLOP/s peak so that MFU is a number) so that the script cannot rot before
a GPU arrives; ``tests/test_gpu_check.py`` runs it with OpenMMLab, OpenCV, SciPy and faiss blocked.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bam_dense.core.paths import bundled  # noqa: E402

CONFIGS = {"vit_small": bundled("configs/pretrain/bam_vit_small_16gpu.yaml", required=True),
           "vit_base": bundled("configs/pretrain/bam_vit_base_16gpu.yaml", required=True)}
NOT_ON_A_STOCK_MACHINE = ("mmcv", "mmengine", "mmseg", "mmdet", "cv2", "scipy", "skimage", "faiss")


@dataclass
class Sizes:
    """What each section runs on: the recipes' sizes on a GPU, toy sizes for ``--cpu-smoke``."""

    overrides: list[str] = field(default_factory=list)  # applied to both recipes
    amp_batch: int = 32
    batch: int | None = None  # None: the recipe's data.batch_size_per_gpu
    warmup: int = 3
    steps: int = 10
    images: int = 64  # augment / jpeg: synthetic 400x600 JPEGs
    augment_batch: int = 32
    augment_repeat: int = 2
    davis_arch: str = "vit_small_patch16_224"
    davis_kwargs: dict = field(default_factory=dict)
    davis_size: tuple[int, int] = (480, 832)  # a 480p frame as DINO's read_frame resizes it (short side 480)
    davis_frames: int = 40
    davis_dim_check: int | None = 384


GPU = Sizes()
SMOKE = Sizes(
    overrides=["model.kwargs={img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
               "data.views.global_size=32", "data.views.local_size=16", "method.top_k=4",
               "method.projector={layers: 2, hidden_dim: 32, out_dim: 32, bn: false, last_bn: false, bias: true, act: gelu}"],
    amp_batch=4, batch=4, warmup=1, steps=2, images=8, augment_batch=4, augment_repeat=1,
    davis_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2}, davis_size=(64, 96), davis_frames=4, davis_dim_check=None,
)


class SectionTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`SectionTimeout` in the main thread after ``seconds`` (SIGALRM; torch.compile runs Python)."""
    def expire(signum, frame):
        raise SectionTimeout(f"stopped after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def build_trainer(arch: str, batch: int | None, device, sizes: Sizes, tmp: str):
    """The engine's Trainer on a recipe (synthetic data in place of ImageNet, no k-NN monitor, no logs)."""
    from bam_dense.core.config import load_config
    from bam_dense.engine.trainer import Trainer

    recipe = load_config(CONFIGS[arch], sizes.overrides)
    batch = batch or recipe.data.batch_size_per_gpu
    cfg = load_config(CONFIGS[arch], [*sizes.overrides, f"run.output_dir={tmp}", f"run.device={device.type}",
                                      "run.progress=false", "run.tensorboard=false", "eval.knn.enabled=false",
                                      "data.path=null", "data.num_workers=0", f"data.batch_size_per_gpu={batch}",
                                      f"data.synthetic.num_images={batch}", "model.compile=false"])
    return Trainer(cfg)


def random_crops(trainer, batch: int, seed: int = 0) -> list:
    """Standard-normal crops of the recipe's sizes (global crops first), on the trainer's device."""
    import torch

    v = trainer.cfg.data.views
    gen = torch.Generator().manual_seed(seed)
    sizes = [v.global_size] * v.global_crops + [v.local_size] * v.local_crops
    return [torch.randn(batch, 3, s, s, generator=gen).to(trainer.device) for s in sizes]


# ------------------------------------------------------------------------------------------------ sections
def check_amp(device, sizes: Sizes, args) -> dict:
    """bf16 autocast against float32 (TF32 off) on one BAM ViT-S/16 step: loss and gradients."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer("vit_small", sizes.amp_batch, device, sizes, tmp)
        crops = random_crops(trainer, sizes.amp_batch)
        names = [n for n, p in trainer.student.named_parameters() if p.requires_grad]

        def step(dtype):
            trainer.amp_dtype = dtype
            trainer.student.zero_grad(set_to_none=True)
            loss, _ = trainer._forward_loss(crops, trainer.student)
            loss.backward()
            params = dict(trainer.student.named_parameters())
            return float(loss.detach()), [params[n].grad.detach().float().flatten().clone() for n in names]

        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            loss32, g32 = step(None)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        loss16, g16 = step(torch.bfloat16)
    a, b = torch.cat(g32), torch.cat(g16)
    per_param = [(torch.nn.functional.cosine_similarity(x, y, dim=0).item(), n) for n, x, y in zip(names, g32, g16)
                 if x.norm() > 0]
    worst = min(per_param)
    return {"batch": sizes.amp_batch, "loss_fp32": loss32, "loss_bf16": loss16,
            "loss_rel_diff": abs(loss16 - loss32) / abs(loss32),
            "grad_cosine": torch.nn.functional.cosine_similarity(a, b, dim=0).item(),
            "grad_rel_l2": ((b - a).norm() / a.norm()).item(), "worst_param_cosine": worst[0],
            "worst_param": worst[1], "params_compared": len(per_param)}


def check_throughput(device, sizes: Sizes, args, arch: str, compiled: bool) -> dict:
    """images/s, GFLOP/image, MFU and peak memory of the engine's train_step (OOM: once more at half the batch)."""
    import torch

    from bam_dense.core.memory import peak_memory
    from bam_dense.engine.flops import device_peak_tflops, mfu

    batch, halved = sizes.batch, False
    while True:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                trainer = build_trainer(arch, batch, device, sizes, tmp)
                batch = trainer.batch
                if compiled:  # what the engine does for model.compile=true, with the backend chosen here
                    trainer.model = torch.compile(trainer.model, backend=args.compile_backend)
                crops = random_crops(trainer, batch)
                gflop = trainer.count_step_flops(crops)
                t_first = time.perf_counter()
                for i in range(sizes.warmup):
                    trainer.train_step(crops)
                    trainer.step += 1
                    if i == 0:
                        sync(device)
                        first_step_s = time.perf_counter() - t_first
                release(device)
                sync(device)
                t = time.perf_counter()
                for _ in range(sizes.steps):
                    trainer.train_step(crops)
                    trainer.step += 1
                sync(device)
                elapsed = time.perf_counter() - t
                peak_mib = peak_memory(device)[0]
                peak = device_peak_tflops(device, args.peak_tflops)
                images_per_s = sizes.steps * batch / elapsed
                return {"batch": batch, "batch_halved_after_oom": halved, "steps": sizes.steps,
                        "step_s": elapsed / sizes.steps, "first_step_s": first_step_s, "images_per_s": images_per_s,
                        "gflop_per_image": gflop, "tflops": gflop * images_per_s / 1e3, "peak_tflops": peak,
                        "mfu": mfu(gflop, images_per_s, peak, 1), "peak_mib": peak_mib,
                        "grad_checkpointing": bool(trainer.cfg.model.grad_checkpointing)}
        except torch.cuda.OutOfMemoryError:
            if halved or batch < 2:
                raise
            batch, halved = batch // 2, True
        finally:
            trainer = None  # noqa: F841 (free the model before a retry or the next section)
            if compiled:
                torch._dynamo.reset()
            release(device)


def check_augment(device, sizes: Sizes, args) -> dict:
    """Worker CPU per image on both augmentation paths, and the device half (``benchmarks/data_pipeline.py``)."""
    import torch
    from data_pipeline import device_cost, worker_cost, write_images

    from bam_dense.core.config import load_config
    from bam_dense.data.device_augment import DeviceViews, collate_device
    from bam_dense.data.pretrain import Views, collate

    views_cfg = load_config(CONFIGS["vit_small"], sizes.overrides).data.views
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), sizes.images)
        torch.set_num_threads(1)  # one worker's CPU
        try:
            rows = worker_cost(paths, {"worker": (Views(views_cfg), collate), "device": (DeviceViews(views_cfg), collate_device)},
                               sizes.augment_repeat, sizes.augment_batch)
        finally:
            torch.set_num_threads(threads)
        on_device = device_cost(paths, views_cfg, device, sizes.augment_batch, sizes.augment_repeat)
    out = {"views": f"{views_cfg.global_crops}x{views_cfg.global_size} + {views_cfg.local_crops}x{views_cfg.local_size}",
           "worker_path_worker_ms_per_image": 1e3 * rows["worker"]["total"],
           "device_path_worker_ms_per_image": 1e3 * rows["device"]["total"],
           "worker_cpu_ratio": rows["worker"]["total"] / rows["device"]["total"],
           "worker_path_images_per_s_per_core": 1 / rows["worker"]["total"],
           "device_path_images_per_s_per_core": 1 / rows["device"]["total"],
           "device_ms_per_image": 1e3 * on_device["s_per_image"], "device_images_per_s": 1 / on_device["s_per_image"]}
    if on_device["peak_mib"] is not None:
        out["device_peak_mib"] = on_device["peak_mib"]
    if "vs_cpu" in on_device:
        out["device_vs_cpu_max_levels"], out["device_vs_cpu_share_differing"] = on_device["vs_cpu"]
    return out


def check_jpeg(device, sizes: Sizes, args) -> dict:
    """torchvision's decode_jpeg, batched on ``device``, against the same decoder and Pillow on one CPU thread."""
    import numpy as np
    import torch
    from data_pipeline import write_images
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from bam_dense.data.images import read_rgb

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), sizes.images)
        datas = [read_file(str(p)) for p in paths]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t = time.perf_counter()
            cpu = [decode_jpeg(d, mode=ImageReadMode.RGB) for d in datas]
            cpu_s = time.perf_counter() - t
            t = time.perf_counter()
            for p in paths:
                np.asarray(read_rgb(p))
            pil_s = time.perf_counter() - t
        finally:
            torch.set_num_threads(threads)
    decode_jpeg(datas[:2], mode=ImageReadMode.RGB, device=device)  # warm-up (nvJPEG handles, kernels)
    sync(device)
    t = time.perf_counter()
    for _ in range(sizes.augment_repeat):
        on_device = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    sync(device)
    device_s = (time.perf_counter() - t) / sizes.augment_repeat
    worst = max((a.cpu().int() - b.int()).abs().max().item() for a, b in zip(on_device, cpu))
    n = len(datas)
    return {"images": n, "size": "400x600", "device_images_per_s": n / device_s,
            "cpu_decode_jpeg_images_per_s": n / cpu_s, "cpu_pil_images_per_s": n / pil_s,
            "device_vs_cpu_max_levels": worst}


def check_davis(device, sizes: Sizes, args) -> dict:
    """Frames/s of DAVIS label propagation at 480p: ViT-S/16 features (batches of 8) and propagate_labels."""
    import torch
    import torch.nn.functional as F

    from bam_dense.davis.propagate import PropagationParams, propagate_labels
    from bam_dense.encoders import FeatureExtractor
    from bam_dense.models.backbones import create_backbone

    params = PropagationParams()
    extractor = FeatureExtractor(create_backbone(sizes.davis_arch, sizes.davis_kwargs, pos_embed="learned"), device)
    H, W = sizes.davis_size
    h, w = H // extractor.patch, W // extractor.patch
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(sizes.davis_frames + 1, 3, H, W, generator=gen)
    extractor(frames[:2])  # warm-up
    sync(device)
    t = time.perf_counter()
    feats = []
    for i in range(0, len(frames), 8):
        maps = extractor(frames[i:i + 8])
        feats += [F.normalize(m.flatten(1).t(), dim=1) for m in maps]  # hw x D, as propagate_sequence
    sync(device)
    feature_s = time.perf_counter() - t
    labels = torch.randint(0, 4, (h * w,), generator=gen)
    seg0 = F.one_hot(labels, 4).t().float().to(device)  # C x hw
    queue: list = []
    sync(device)
    t = time.perf_counter()
    for target in feats[1:]:
        ctx_feats = torch.stack([feats[0]] + [f for f, _ in queue])
        ctx_segs = torch.stack([seg0] + [s for _, s in queue])
        soft = propagate_labels(target, ctx_feats, ctx_segs, h, w, params.size_mask_neighborhood, params.topk,
                                params.temperature, params.band_rows)
        queue = (queue + [(target, soft)])[-params.n_last_frames:]
    sync(device)
    propagate_s = time.perf_counter() - t
    n = sizes.davis_frames
    if sizes.davis_dim_check is not None and feats[0].shape[1] != sizes.davis_dim_check:
        raise RuntimeError(f"features of width {feats[0].shape[1]}, expected {sizes.davis_dim_check}")
    return {"frame": f"{H}x{W}", "grid": f"{h}x{w}", "frames": n, "context": 1 + params.n_last_frames,
            "feature_frames_per_s": len(frames) / feature_s, "propagation_frames_per_s": n / propagate_s,
            "frames_per_s": 1 / (feature_s / len(frames) + propagate_s / n)}


# ------------------------------------------------------------------------------------------------ driver
def plan(args) -> list[tuple[str, object, dict]]:
    """(section name, function, keyword arguments) in run order: the compiled runs last."""
    sections = [("amp", check_amp, {})]
    sections += [(f"throughput_{a}_eager", check_throughput, {"arch": a, "compiled": False}) for a in CONFIGS]
    sections += [("augment", check_augment, {}), ("jpeg", check_jpeg, {}), ("davis", check_davis, {})]
    if not args.no_compile:
        sections += [(f"throughput_{a}_compile", check_throughput, {"arch": a, "compiled": True}) for a in CONFIGS]
    return [s for s in sections if not args.only or s[0] in args.only]


def environment(device) -> dict:
    import timm
    import torch
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "timm": timm.__version__, "cuda": torch.version.cuda, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU",
           "cpu_threads": torch.get_num_threads()}
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    env["commit"] = commit.stdout.strip() or None
    return env


def third_party_modules() -> list[str]:
    tops = {name.split(".")[0] for name, mod in list(sys.modules.items()) if mod is not None}
    return sorted(t for t in tops if t not in sys.stdlib_module_names and not t.startswith("_")
                  and t not in ("bam_dense", "data_pipeline"))


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="the JSON written at the end (default: ./gpu_check.json)")
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU: the code paths, not the figures")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --cpu-smoke)")
    parser.add_argument("--max-minutes", type=float, default=7.5, help="budget of the whole run (default 7.5)")
    parser.add_argument("--compile-timeout", type=float, default=150.0, help="seconds per torch.compile run (default 150)")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; eager with --cpu-smoke)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile runs")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak TFLOP/s for MFU (default: the card's bf16 peak from bam_dense.engine.flops; 1 with --cpu-smoke)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these sections (names as in the table)")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    import torch

    sizes = SMOKE if args.cpu_smoke else GPU
    device = torch.device(args.device or ("cpu" if args.cpu_smoke else "cuda"))
    if args.cpu_smoke:
        args.compile_backend = args.compile_backend or "eager"
        args.peak_tflops = args.peak_tflops or 1.0
    args.compile_backend = args.compile_backend or "inductor"
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (run with --cpu-smoke to check the code paths on the CPU)", file=sys.stderr)
        return 2
    budget = 60 * args.max_minutes
    report = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "environment": environment(device),
              "max_minutes": args.max_minutes, "sections": {}}
    for name, function, kwargs in plan(args):
        left = budget - (time.perf_counter() - start)
        if left < 5:
            report["sections"][name] = {"status": "skipped", "error": f"the {args.max_minutes:g}-minute budget is spent"}
            print(f"[gpu_check] {name}: skipped (budget spent)", flush=True)
            continue
        limit = min(left, args.compile_timeout) if kwargs.get("compiled") else left
        print(f"[gpu_check] {name} ...", flush=True)
        t = time.perf_counter()
        try:
            with time_limit(limit):
                results = function(device, sizes, args, **kwargs)
            entry = {"status": "ok", "results": results}
        except Exception as err:  # record and go on: one shot on a GPU must bring back the rest
            entry = {"status": "error", "error": f"{type(err).__name__}: {err}",
                     "traceback": traceback.format_exc(limit=-8)}
            release(device)
        entry["seconds"] = time.perf_counter() - t
        report["sections"][name] = entry
        print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']:.1f} s"
              + (f" ({entry['error']})" if entry["status"] != "ok" else ""), flush=True)
    report["elapsed_s"] = time.perf_counter() - start
    report["modules"] = third_party_modules()

    from bam_dense.core.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(report, indent=1, default=str))
    env = report["environment"]
    print(f"\n{env['device_name']} ({env['device']}), torch {env['torch']}, {report['mode']}, "
          f"{report['elapsed_s']:.0f} s; JSON: {args.out}")
    print(f"{'section':<30} {'figure':<36} value")
    for name, entry in report["sections"].items():
        if entry["status"] != "ok":
            print(f"{name:<30} {entry['status']:<36} {entry.get('error', '')}")
            continue
        for key, value in entry["results"].items():
            print(f"{name:<30} {key:<36} {fmt(value)}")
    failed = [n for n, e in report["sections"].items() if e["status"] != "ok"]
    if failed:
        print(f"not measured: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
