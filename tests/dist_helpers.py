"""Worker functions for multi-process tests (importable by spawned children)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, init_file: str, fn: Callable, args: tuple, out_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_world(fn: Callable, world: int, args: tuple, tmp_path) -> list:
    """Run ``fn(rank, world, *args)`` in ``world`` gloo processes; return each rank's result."""
    init_file = str(tmp_path / "rendezvous")
    mp.start_processes(_entry, args=(world, init_file, fn, args, str(tmp_path)), nprocs=world, join=True, start_method="spawn")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def shard_crop_major(x: torch.Tensor, n_crops: int, world: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s rows of a crop-major batch of ``world * b`` images."""
    b = x.shape[0] // n_crops // world
    return torch.cat([x[v * world * b + rank * b: v * world * b + (rank + 1) * b] for v in range(n_crops)])


def bam_loss_and_grad(rank: int, world: int, z_full, zt_full, kwargs):
    from bam_dense.losses.bam import bam_loss

    n_crops = kwargs["n_crops"]
    z = shard_crop_major(z_full, n_crops, world, rank).clone().requires_grad_(True)
    zt = shard_crop_major(zt_full, n_crops, world, rank) if zt_full is not None else None
    loss = bam_loss(z, zt, **kwargs)
    loss.backward()
    grad = z.grad.clone()
    # DDP averages gradients over ranks; the loss of the whole batch is the mean of the rank losses
    full_loss = loss.detach().clone()
    dist.all_reduce(full_loss)
    return {"loss": (full_loss / world).item(), "grad": grad / world}


def method_param_grads(rank: int, world: int, cfg_dict, crops_full, seed: int):
    """Build a method from a config, wrap the student in DDP, return every parameter gradient."""
    from bam_dense.core.config import load_config
    from bam_dense.engine.teacher import make_teacher
    from bam_dense.methods import build_method
    from bam_dense.methods.base import StepContext
    from bam_dense.models.backbones import build_backbone

    cfg = load_config(data=cfg_dict)
    torch.manual_seed(seed)
    method = build_method(cfg.method, build_backbone(cfg.model))
    student = method.student
    teacher = make_teacher(student, method.teacher_exclude) if cfg.teacher.enabled else None
    if teacher is not None:  # a teacher that differs from the student, as after some training
        with torch.no_grad():
            for p in teacher.parameters():
                p.add_(0.01 * torch.randn_like(p))
    model = torch.nn.parallel.DistributedDataParallel(student) if world > 1 else student
    b = crops_full[0].shape[0] // world
    crops = [c[rank * b:(rank + 1) * b] for c in crops_full]
    ctx = StepContext(step=0, epoch=0, n_global=cfg.data.views.global_crops,
                      n_crops=cfg.data.views.global_crops + cfg.data.views.local_crops)
    s_out = model(crops)
    t_out = None
    if teacher is not None:
        with torch.no_grad():
            t_out = method.teacher_forward(teacher, crops)
    loss, _ = method.loss(s_out, t_out, ctx)
    loss.backward()
    total = loss.detach().clone()
    if world > 1:
        dist.all_reduce(total)
    return {"loss": (total / world).item(), "grads": {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}}


def trainer_weights(rank: int, world: int, cfg_dict):
    """Build the engine's Trainer on every rank; return checksums of the student and teacher weights."""
    from bam_dense.core.config import load_config
    from bam_dense.engine.trainer import Trainer

    trainer = Trainer(load_config(data=cfg_dict))
    return {part: sum(float(v.double().sum()) for v in getattr(trainer, part).state_dict().values() if v.is_floating_point())
            for part in ("student", "teacher")}


def mocov3_rank_loss(rank: int, world: int, q_full, k_full, temperature: float):
    """This rank's MoCo v3 loss on its contiguous share of the queries and keys."""
    from bam_dense.losses.mocov3 import mocov3_loss

    n = q_full.shape[0] // world
    return mocov3_loss(q_full[rank * n:(rank + 1) * n], k_full[rank * n:(rank + 1) * n], temperature=temperature).item()
