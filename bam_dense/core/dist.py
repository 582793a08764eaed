"""Distributed helpers that are exact no-ops when torch.distributed is not initialised.

A single process never touches torch.distributed. Several processes are started by torchrun (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the environment) or by SLURM's srun (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR from the node list). NCCL on GPU, gloo on CPU. torchrun starts its
workers in sessions of their own and without a parent-death signal: each worker ends with its agent
(:func:`bam_dense.core.procs.end_with`), so that a killed torchrun takes its workers with it.
"""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta

import torch
import torch.distributed as dist

from bam_dense.core import procs


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def _slurm_env() -> None:
    """Fill torchrun-style variables from SLURM's when the job was started with srun."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                               capture_output=True, text=True, check=True).stdout.split()
        os.environ["MASTER_ADDR"] = nodes[0]
    os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000))


def init_from_env(device: str = "auto", timeout_minutes: int = 30) -> torch.device:
    """Initialise the process group when launched with several processes; return this process's device."""
    _slurm_env()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        # A torchrun worker: its agent is its parent. torchrun does not pass the agent's PID down, so the one
        # case left open is an agent that died between starting this worker and this line: not noticed here.
        procs.end_with(os.getppid())
    want_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"run.device is {device!r} but no CUDA device is available")
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if want_cuda:
        torch.cuda.set_device(local_rank() if multi else (torch.device(device).index or 0 if device != "auto" else 0))
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if multi and not is_initialized():
        dist.init_process_group(
            backend="nccl" if want_cuda else "gloo",
            timeout=timedelta(minutes=timeout_minutes),
            device_id=dev if want_cuda else None,
        )
    return dev


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum``, ``max``, ``min`` or ``mean``); identity at world size 1."""
    if world_size() == 1:  # also in a group of one process: no collective call
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "mean": dist.ReduceOp.SUM}
    dist.all_reduce(tensor, op=ops[op])
    if op == "mean":
        tensor /= world_size()
    return tensor


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice.

    With DDP averaging gradients over ranks afterwards, the result is the gradient of the mean of the
    per-rank losses, which equals the single-process gradient on the concatenated batch.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[rank()]


def all_gather(x: torch.Tensor, grad: bool = True) -> torch.Tensor:
    """Gather ``x`` from every rank, stacked on a new leading dimension (``W x ...``)."""
    if world_size() == 1:
        return x.unsqueeze(0)
    if grad and x.requires_grad:
        return _GatherWithGrad.apply(x)
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.stack(out)


def gather_crop_major(x: torch.Tensor, n_crops: int, grad: bool = True) -> torch.Tensor:
    """Gather crop-major rows from every rank and re-sort them crop-major globally.

    ``x`` holds ``n_crops`` blocks of ``b`` rows (block ``m`` = crop ``m`` of this rank's ``b`` images).
    The result's row ``m * (W * b) + r * b + i`` is crop ``m`` of image ``i`` on rank ``r``, so that with
    one process it is ``x`` itself and with ``W`` processes it equals one process holding the
    concatenation of every rank's images.
    """
    gathered = all_gather(x, grad=grad)  # W x (n_crops * b) x d
    w, rows = gathered.shape[:2]
    if rows % n_crops:
        raise ValueError(f"{rows} rows are not {n_crops} equal crop blocks")
    b = rows // n_crops
    return gathered.reshape(w, n_crops, b, -1).transpose(0, 1).reshape(n_crops * w * b, -1)


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()
