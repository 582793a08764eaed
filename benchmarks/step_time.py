#!/usr/bin/env python
"""One training step of bam-dense beside the official training loop: same model, batch and CPU, turns alternating.

    python benchmarks/step_time.py --official /tmp/official [--methods bam dino mocov3 lewel_b bam_loss]
        [--batch 16 --repeats 8 --steps 1 --threads 1] [--json step_time.json]

``--official`` is a folder holding checkouts of the official repositories (nothing of them is copied here; each is
imported from there): ``bam`` (DanielShalam/BAM), ``dino`` (facebookresearch/dino), ``moco-v3``
(facebookresearch/moco-v3) and ``lewel`` (LayneH/LEWEL); ``--bam-repo`` etc. point to one elsewhere. For example,
with the repositories fetched as git directories::

    mkdir -p /tmp/official/bam && git --git-dir=BAM.git archive HEAD | tar -x -C /tmp/official/bam

Each method runs in its own process (the official repositories share module names: ``utils``, ``models``) in which
both sides are built on the same sizes, then take turns: ``--steps`` steps of one, ``--steps`` of the other, the
first turn alternating, ``--repeats`` times after one untimed turn each. A turn of the official side is its own
training function on a list of ``--steps`` batches, called as its script calls it (``train_one_epoch`` of
``main_dino.py`` / ``main_pretrain.py``, ``train`` of ``main_moco.py`` / LEWEL's ``main.py``), with its optimizer,
schedules, clipping, momentum update and logging; a turn of bam-dense is the engine's ``Trainer.train_step`` on
the recipe's config with the same sizes. The ratio of a repeat is official seconds / bam-dense seconds (above 1:
bam-dense faster); printed per method: the median ratio, its interquartile range over the repeats, a 95%
bootstrap interval of the median, and the median seconds per step of each side.

Sizes (CPU-sized; ``--batch`` changes the batch, 16 by default): ViT 192 wide, 6 blocks, 3 heads, patch 16 on 96-px global and
48-px local crops (BAM: 2 + 6 crops, 2048-d projector, top-k 32; DINO: 2 + 4 crops, head 2048 -> 256 -> 4096;
MoCo v3: 2 crops, 1024-d MLPs, 256-d output); LEWEL_B: ResNet-18 on two 96-px crops, 1024-d MLPs, LARS. The bare
``bam_loss`` entry times the loss alone (forward + backward, teacher variant, 8 crops, 4096-d outputs) at batches
``--loss-batches`` (official ``DistillBAMLoss`` against :func:`bam_dense.losses.bam.bam_loss`).

On the CPU the official code needs three stand-ins that do not change its arithmetic: ``Tensor.cuda`` and
``Module.cuda`` are the identity and ``torch.cuda.synchronize`` a no-op; a one-process gloo group serves its
``all_reduce`` / ``all_gather`` calls (BAM's ``diffdist`` by a differentiable identity at world size 1, wandb by a
stand-in without a run). Neither side is wrapped in DistributedDataParallel (one process: the engine does not wrap
at world size 1); the official loops that reach for ``student.module`` get a wrapper that only holds the module.
Their printing goes to a buffer. Differences in what a step computes are the recipes' own and are listed per method
in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import math
import subprocess
import sys
import tempfile
import time
import types
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REPOS = {"bam": "bam", "dino": "dino", "mocov3": "moco-v3", "lewel_b": "lewel", "bam_loss": "bam"}
RECIPES = {"bam": "bam_vit_small_16gpu.yaml", "dino": "dino_vit_small_100ep.yaml", "mocov3": "mocov3_vit_small_300ep.yaml",
           "lewel_b": "lewel_b_r50_eman_200ep.yaml"}
VIT = {"embed_dim": 192, "depth": 6, "num_heads": 3}
GLOBAL, LOCAL = 96, 48


# ------------------------------------------------------------------------------------------------ plumbing
def holding(module):
    """What ``student.module`` reads where the official loop expects DDP: the module, called through."""
    import torch

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    return Holder()


def cpu_stand_ins(tmp: str) -> None:
    import torch
    import torch.distributed as dist

    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.synchronize = lambda *a, **k: None
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=0, world_size=1)


def import_from(repo: Path, *names: str) -> list:
    """The modules ``names`` of the checkout ``repo`` (first on the path)."""
    import importlib

    sys.path.insert(0, str(repo))
    return [importlib.import_module(n) for n in names]


def crops(batch: int, n_global: int, n_local: int, seed: int = 0) -> list:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, GLOBAL, GLOBAL, generator=gen) for _ in range(n_global)] + \
           [torch.randn(batch, 3, LOCAL, LOCAL, generator=gen) for _ in range(n_local)]


def project_trainer(method: str, batch: int, overrides: list[str], tmp: str):
    """The engine's Trainer on the method's recipe at these sizes (synthetic data, CPU, no logs)."""
    from bam_dense.core.config import load_config
    from bam_dense.core.paths import bundled
    from bam_dense.engine.trainer import Trainer

    cfg = load_config(bundled(f"configs/pretrain/{RECIPES[method]}", required=True), [
        f"run.output_dir={tmp}", "run.device=cpu", "run.progress=false", "run.tensorboard=false",
        "eval.knn.enabled=false", "data.path=null", "data.num_workers=0", f"data.batch_size_per_gpu={batch}",
        f"data.synthetic.num_images={batch * 1000}", f"data.views.global_size={GLOBAL}", "optim.warmup_epochs=0",
        *overrides])
    return Trainer(cfg)


def project_turn(trainer, batch_crops: list, steps: int):
    def turn():
        for _ in range(steps):
            trainer.train_step([c.clone() for c in batch_crops])
            trainer.step += 1
    return turn


VIT_OVERRIDES = [f"model.kwargs={{embed_dim: {VIT['embed_dim']}, depth: {VIT['depth']}, num_heads: {VIT['num_heads']}}}",
                 f"data.views.local_size={LOCAL}"]


# ------------------------------------------------------------------------------------------------ methods
def setup_dino(repo: Path, batch: int, steps: int, tmp: str):
    import torch
    import torch.nn as nn

    main_dino, utils, vits = import_from(repo, "main_dino", "utils", "vision_transformer")
    utils.is_dist_avail_and_initialized = lambda: False  # the metric logger's CUDA all-reduce (logging only)
    n_local, out_dim, hidden, bottleneck = 4, 4096, 2048, 256
    vit = dict(img_size=[224], patch_size=16, mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **VIT)
    student = utils.MultiCropWrapper(vits.VisionTransformer(drop_path_rate=0.1, **vit),
                                     main_dino.DINOHead(VIT["embed_dim"], out_dim, norm_last_layer=True, hidden_dim=hidden,
                                                                        bottleneck_dim=bottleneck))
    teacher = utils.MultiCropWrapper(vits.VisionTransformer(**vit),
                                     main_dino.DINOHead(VIT["embed_dim"], out_dim, norm_last_layer=True, hidden_dim=hidden,
                                                                        bottleneck_dim=bottleneck))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    student = holding(student)
    epochs = 100
    loss_fn = main_dino.DINOLoss(out_dim, 2 + n_local, 0.04, 0.04, 0, epochs)
    optimizer = torch.optim.AdamW(utils.get_params_groups(student))
    lr = utils.cosine_scheduler(5e-4 * batch / 256, 1e-6, epochs, steps, warmup_epochs=10)
    wd = utils.cosine_scheduler(0.04, 0.4, epochs, steps)
    momentum = utils.cosine_scheduler(0.996, 1, epochs, steps)
    args = argparse.Namespace(epochs=epochs, clip_grad=3.0, freeze_last_layer=1)
    batch_crops = crops(batch, 2, n_local)
    loader = [([c.clone() for c in batch_crops], torch.zeros(batch, dtype=torch.long)) for _ in range(steps)]
    epoch = iter(range(1, 10**6))  # past freeze_last_layer and the warm-up, as the engine's steps below

    def official():
        main_dino.train_one_epoch(student, teacher, teacher, loss_fn, loader, optimizer, lr, wd, momentum, next(epoch),
                                  None, args)

    trainer = project_trainer("dino", batch, [*VIT_OVERRIDES, f"data.views.local_crops={n_local}", f"method.out_dim={out_dim}",
                                              f"method.hidden_dim={hidden}", f"method.bottleneck_dim={bottleneck}"], tmp)
    trainer.epoch, trainer.step = 2, 2 * trainer.steps_per_epoch  # past the last layer's frozen epoch, as the official turns
    return official, project_turn(trainer, batch_crops, steps)


def _bam_official_modules(repo: Path):
    import torch.distributed as dist

    shim = types.ModuleType("diffdist")  # diffdist at world size 1: the input itself, with its graph
    shim.functional = types.SimpleNamespace(all_gather=lambda out, x: [x] if dist.get_world_size() == 1 else None)
    sys.modules.setdefault("diffdist", shim)
    sys.modules.setdefault("diffdist.functional", shim.functional)
    wandb = types.ModuleType("wandb")  # utils.log_dict logs only when wandb.run is set
    wandb.run = None
    sys.modules.setdefault("wandb", wandb)
    return import_from(repo, "bam.bam_loss", "models.vit", "models.heads", "models.wrappers", "utils")


def _bam_official_loss(bam_loss_module, n_crops: int, top_k: int, epochs: int):
    import numpy as np

    loss_fn = bam_loss_module.DistillBAMLoss(n_crops=n_crops, n_lrg_crops=2, n_tgt_crops=2,
                                             ot_reg_scheduler=np.full(epochs, 0.05), softmax_temperature=0.1,
                                             num_sinkhorn_iters=3, top_k=top_k, positive_masking=True)
    loss_fn.masking_fn = True if top_k > 0 else None  # the released code's attribute bug (B1), as its guard intends
    return loss_fn


def setup_bam(repo: Path, batch: int, steps: int, tmp: str):
    import torch
    import torch.nn as nn

    with contextlib.redirect_stdout(io.StringIO()):
        bam_loss_module, vit, heads, wrappers, utils = _bam_official_modules(repo)
        main_pretrain = import_from(repo, "main_pretrain")[0]
    utils.is_dist_avail_and_initialized = lambda: False  # the metric logger's CUDA all-reduce (logging only)
    n_local, dim, top_k, epochs = 6, 2048, min(32, 2 * batch - 2), 100

    accepted = set(inspect.signature(vit.Block.__init__).parameters)

    def block(**kwargs):  # the official Block; the keywords that timm releases after the official code's added are left out
        return vit.Block(**{k: v for k, v in kwargs.items() if k in accepted})

    def network():
        backbone = vit.ViT(img_size=224, patch_size=16, mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                           fc_norm=False, block_fn=block, weight_init="moco", num_classes=0, drop_path_rate=0.0,
                           dynamic_img_size=True, global_pool="token", **VIT)
        return wrappers.MultiCropWrapper(backbone, heads.MlpProjHead(VIT["embed_dim"], 3, dim, dim, use_bn=False,
                                                                     last_bn=False, bias=True, activation="gelu"))

    with contextlib.redirect_stdout(io.StringIO()):
        student, teacher = network(), network()
        model = wrappers.StudentTeacherWrapper(student, teacher, utils.cosine_scheduler(0.995, 1, epochs, 10**4))
        loss_fn = _bam_official_loss(bam_loss_module, 2 + n_local, top_k, epochs)
    optimizer = torch.optim.AdamW(utils.get_params_groups(student))
    lr = utils.cosine_scheduler(3e-4 * batch / 256, 1e-3, epochs, steps, warmup_epochs=0)
    wd = utils.cosine_scheduler(0.04, 0.4, epochs, steps)
    scaler = utils.AmpScalerWrapper(enable=False)
    args = argparse.Namespace(epochs=epochs, teacher=True, clip_grad=0.3)
    batch_crops = crops(batch, 2, n_local)
    loader = [([c.clone() for c in batch_crops], torch.zeros(batch, dtype=torch.long)) for _ in range(steps)]
    epoch = iter(range(1, 10**6))

    def official():
        main_pretrain.train_one_epoch(model, loss_fn, loader, optimizer, lr, wd, next(epoch) % epochs, scaler, args)

    trainer = project_trainer("bam", batch, [*VIT_OVERRIDES, f"method.top_k={top_k}",
                                             f"method.projector={{layers: 3, hidden_dim: {dim}, out_dim: {dim}, bn: false, "
                                             "last_bn: false, bias: true, act: gelu}"], tmp)
    return official, project_turn(trainer, batch_crops, steps)


def setup_mocov3(repo: Path, batch: int, steps: int, tmp: str):
    import timm.layers
    import torch

    helpers = types.ModuleType("timm.models.layers.helpers")  # vits.py's import path in the timm it was written for
    helpers.to_2tuple = timm.layers.to_2tuple
    sys.modules.setdefault("timm.models.layers.helpers", helpers)
    builder, vits, main_moco = import_from(repo, "moco.builder", "vits", "main_moco")
    vits.VisionTransformerMoCo.num_tokens = property(lambda self: self.num_prefix_tokens)  # timm's later name for it
    dim, mlp_dim, epochs = 256, 1024, 300
    model = builder.MoCo_ViT(partial(_moco_vit, vits), dim, mlp_dim, 0.2)
    optimizer = torch.optim.AdamW(model.parameters(), 1.5e-4 * batch / 256, weight_decay=0.1)
    scaler = torch.cuda.amp.GradScaler(enabled=False)  # main_moco.py's GradScaler: disabled without CUDA
    writer = types.SimpleNamespace(add_scalar=lambda *a, **k: None)
    args = argparse.Namespace(lr=1.5e-4 * batch / 256, warmup_epochs=40, epochs=epochs, moco_m=0.99, moco_m_cos=True,
                              gpu=None, rank=0, print_freq=10)
    batch_crops = crops(batch, 2, 0)
    loader = [([c.clone() for c in batch_crops], torch.zeros(batch, dtype=torch.long)) for _ in range(steps)]
    epoch = iter(range(41, 10**6))

    def official():
        main_moco.train(loader, model, optimizer, scaler, writer, next(epoch) % epochs, args)

    kwargs = ", ".join(f"{k}: {v}" for k, v in {**VIT, "img_size": GLOBAL}.items())  # a table of the crops' size, as built above
    trainer = project_trainer("mocov3", batch, [f"model.kwargs={{{kwargs}}}", f"method.mlp_dim={mlp_dim}", f"method.dim={dim}",
                                                "model.sync_bn=false"], tmp)
    return official, project_turn(trainer, batch_crops, steps)


def _moco_vit(vits, num_classes):
    """vits.vit_small's constructor at the benchmark's width and depth (its other arguments as vit_small)."""
    import torch.nn as nn

    model = vits.VisionTransformerMoCo(stop_grad_conv1=True, img_size=GLOBAL, patch_size=16, mlp_ratio=4, qkv_bias=True,
                                       norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=num_classes, **VIT)
    return model


def setup_lewel_b(repo: Path, batch: int, steps: int, tmp: str):
    import torch

    saved = sys.argv
    sys.argv = [saved[0]]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            main, backbones, models, utils_pkg = import_from(repo, "main", "backbone", "models", "utils")
    finally:
        sys.argv = saved
    hid, dim, epochs = 1024, 256, 200
    with contextlib.redirect_stdout(io.StringIO()):
        model = models.get_lewel_model("LEWELB_EMAN")(backbones.resnet18_encoder, dim=dim, m=0.98, hid_dim=hid,
                                                      norm_layer=utils_pkg.get_norm("None"), num_neck_mlp=2, scale=1.0,
                                                      l2_norm=True, num_heads=4, loss_weight=0.5)
        params = main.collect_params(model, exclude_bias_and_bn=True, sync_bn=False)
    optimizer = utils_pkg.LARS(params, lr=3.6, momentum=0.9, weight_decay=1.5e-6)
    args = argparse.Namespace(epochs=epochs, warmup_epoch=10, lr=3.6, gpu=None, print_freq=10, arch="LEWELB_EMAN")
    batch_crops = crops(batch, 2, 0)
    loader = [([c.clone() for c in batch_crops], torch.zeros(batch, dtype=torch.long), torch.arange(batch))
              for _ in range(steps)]
    epoch = iter(range(11, 10**6))

    def official():
        main.train(loader, model, optimizer, None, next(epoch) % epochs, args)

    trainer = project_trainer("lewel_b", batch, ["model.arch=resnet18", "method.num_heads=4",
                                                 f"method.projector={{layers: 2, hidden_dim: {hid}, out_dim: {dim}, bn: true, "
                                                 "last_bn: false, bias: false, act: relu}",
                                                 f"method.predictor={{layers: 2, hidden_dim: {hid}, out_dim: {dim}, bn: true, "
                                                 "last_bn: false, bias: false, act: relu}"], tmp)
    return official, project_turn(trainer, batch_crops, steps)


def setup_bam_loss(repo: Path, batch: int, steps: int, tmp: str):
    """The loss alone: forward + backward of the teacher variant, 8 crops, 4096-d, top-k 128 (recipe values)."""
    import torch

    from bam_dense.losses.bam import bam_loss

    with contextlib.redirect_stdout(io.StringIO()):
        bam_loss_module = _bam_official_modules(repo)[0]
        n_crops, dim, top_k = 8, 4096, min(128, 2 * batch - 2)
        loss_fn = _bam_official_loss(bam_loss_module, n_crops, top_k, 100)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n_crops * batch, dim, generator=gen).requires_grad_(True)
    zt = torch.randn(n_crops * batch, dim, generator=gen)

    def official():
        for _ in range(steps):
            z.grad = None
            loss_fn(z, zt, epoch=0).backward()

    def project():
        for _ in range(steps):
            z.grad = None
            bam_loss(z, zt, n_crops=n_crops, n_global=2, temperature=0.1, eps=0.05, top_k=top_k).backward()

    return official, project


SETUPS = {"bam": setup_bam, "dino": setup_dino, "mocov3": setup_mocov3, "lewel_b": setup_lewel_b, "bam_loss": setup_bam_loss}


# ------------------------------------------------------------------------------------------------ timing
def alternate(official, project, repeats: int) -> dict:
    """Seconds per turn of each side over ``repeats`` alternating rounds (who goes first alternates), after one
    untimed turn each."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        official()
    project()
    times = {"official": [], "project": []}
    for r in range(repeats):
        order = [("official", official), ("project", project)]
        for name, turn in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            if name == "official":
                with contextlib.redirect_stdout(sink):
                    turn()
            else:
                turn()
            times[name].append(time.perf_counter() - t)
        sink.seek(0)
        sink.truncate()
    return times


def summary(times: dict, steps: int, seed: int = 0) -> dict:
    import numpy as np

    off, own = np.asarray(times["official"]), np.asarray(times["project"])
    ratios = off / own
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(ratios, size=(2000, len(ratios)), replace=True), axis=1)
    return {"ratio_median": float(np.median(ratios)), "ratio_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
            "ratio_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "official_s_per_step": float(np.median(off)) / steps, "project_s_per_step": float(np.median(own)) / steps,
            "repeats": len(ratios), "ratios": [float(r) for r in ratios]}


def worker(method: str, repo: Path, batch: int, steps: int, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cpu_stand_ins(tmp)
        torch.manual_seed(0)
        official, project = SETUPS[method](repo, batch, steps, tmp)
        times = alternate(official, project, repeats)
    return {"method": method, "batch": batch, "steps": steps, **summary(times, steps), "times": times}


def commit_of(repo: Path) -> str | None:
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, default=None, help="folder with the checkouts bam, dino, moco-v3, lewel")
    for name in ("bam", "dino", "moco", "lewel"):
        parser.add_argument(f"--{name}-repo", type=Path, default=None, help=f"the {name} checkout (default: --official/...)")
    parser.add_argument("--methods", nargs="+", default=["bam", "dino", "mocov3", "lewel_b", "bam_loss"], choices=list(SETUPS))
    parser.add_argument("--batch", type=int, default=16, help="images per step (default 16)")
    parser.add_argument("--loss-batches", type=int, nargs="+", default=[32, 64, 128, 256], help="bam_loss: images per step")
    parser.add_argument("--steps", type=int, default=1, help="steps per turn (default 1)")
    parser.add_argument("--repeats", type=int, default=8, help="alternating rounds (default 8)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, idle threads of a team spin and skew turns)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "REPO", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, repo, batch = args.worker
        print(json.dumps(worker(method, Path(repo), int(batch), args.steps, args.repeats, args.threads)))
        return

    flags = {"bam": args.bam_repo, "dino": args.dino_repo, "moco-v3": args.moco_repo, "lewel": args.lewel_repo}
    repos = {}
    for method in args.methods:
        folder = REPOS[method]
        repo = flags[folder] or (args.official / folder if args.official else None)
        if repo is None or not repo.is_dir():
            raise SystemExit(f"step_time: {method} needs the official checkout of {folder} "
                             f"({'--official DIR with a ' + folder + '/ folder' if repo is None else f'{repo} is not a folder'}; "
                             "see this script's --help for how to extract one)")
        repos[method] = repo
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} alternating rounds of {args.steps} steps")
    print(f"{'method':<10} {'batch':>5} {'official s/step':>15} {'bam-dense s/step':>16} {'ratio (median)':>14} "
          f"{'IQR':>13} {'95% CI of median':>17}")
    rows = []
    for method in args.methods:
        for batch in (args.loss_batches if method == "bam_loss" else [args.batch]):
            cmd = [sys.executable, __file__, "--worker", method, str(repos[method]), str(batch), "--steps", str(args.steps),
                   "--repeats", str(args.repeats), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(f"{method:<10} {batch:>5} failed:\n{proc.stderr[-3000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["official_commit"] = commit_of(repos[method])  # None for an extracted archive
            rows.append(r)
            print(f"{method:<10} {batch:>5} {r['official_s_per_step']:>15.4f} {r['project_s_per_step']:>16.4f} "
                  f"{r['ratio_median']:>13.2f}x {r['ratio_iqr'][0]:>6.2f}-{r['ratio_iqr'][1]:<5.2f} "
                  f"{r['ratio_ci95'][0]:>8.2f}-{r['ratio_ci95'][1]:<7.2f}", flush=True)
    if args.json:
        from bam_dense.core.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps({"rows": rows, "torch": torch.__version__}, indent=1))
    if any(math.isnan(r["ratio_median"]) for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
