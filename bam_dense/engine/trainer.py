"""The pretraining engine: one loop for every method.

It owns the plumbing a method should never see: process group and devices, data and sampler, DDP and
SyncBN, AMP, per-iteration schedules (lr, weight decay, teacher momentum), gradient clipping, the EMA
teacher, atomic and resumable checkpoints, SIGTERM (preemption) handling, NaN/Inf checks, JSONL and
TensorBoard logs, and the optional k-NN monitor.

Checkpoint layout (``<output_dir>/checkpoints/last.pth``, loadable with ``weights_only=True``)::

    format: "bam-dense", version, arch, model_kwargs, family, method, config (resolved, as a dict),
    student / teacher: state dicts (backbone under "backbone."), optimizer, scaler,
    step, epoch, batch_in_epoch, bad_images, rng (per rank), world_size
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from bam_dense.core import dist, procs
from bam_dense.core.atomic import atomic_write, atomic_write_text
from bam_dense.core.checkpoint import atomic_save, load_own
from bam_dense.core.config import PretrainConfig, build, dump, to_dict
from bam_dense.core.errors import UserFacingError
from bam_dense.core.memory import peak_memory
from bam_dense.data.device_augment import DeviceAugment, DeviceViews, collate_device
from bam_dense.data.pretrain import PretrainDataset, ResumableSampler, Views, collate, eval_transform
from bam_dense.engine.flops import count_flops, device_peak_tflops, mfu
from bam_dense.engine.knn import balanced_subset, extract, knn_accuracy
from bam_dense.engine.optim import build_optimizer
from bam_dense.engine.schedules import cosine, peak_lr, warmup_cosine
from bam_dense.engine.teacher import EMATeacher, make_teacher
from bam_dense.methods import build_method
from bam_dense.methods.base import StepContext
from bam_dense.models.backbones import build_backbone, describe

CHECKPOINT_FORMAT = "bam-dense"
CHECKPOINT_VERSION = 1
PREEMPTED_EXIT = 143  # 128 + SIGTERM


class NonFiniteLoss(UserFacingError):
    pass


# Keys a resumed run may change: where and how often it logs and saves, when it stops, how fast it computes, the
# k-NN monitor (which reads the weights, never writes them). Any other change (batch size, lr, schedule, seed,
# augmentations, data, loss) would make one run of two recipes, and is refused. An entry ending in "." is a prefix.
RESUME_SAFE = (
    "run.output_dir", "run.resume", "run.device", "run.tf32", "run.log_every", "run.checkpoint_every",
    "run.keep_every_epochs", "run.max_steps", "run.nan_policy", "run.tensorboard", "run.progress", "run.count_flops",
    "run.peak_tflops", "data.num_workers", "data.max_bad_fraction", "model.compile", "model.grad_checkpointing",
    "model.channels_last", "optim.fused", "eval.",
)
HISTORY_FILE = "config_history.jsonl"  # one line per start and resume: the first config whole, then each change


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, current: dict) -> dict[str, list]:
    """``{dotted key: [value in the checkpoint, value now]}`` for every key that differs (a key an older
    checkpoint lacks compares as its default)."""
    try:
        saved = to_dict(build(PretrainConfig, saved))  # fills the defaults of keys added since
    except UserFacingError:
        pass
    old, new = _flatten(saved), _flatten(current)
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def resume_safe(key: str) -> bool:
    return any(key.startswith(s) if s.endswith(".") else key == s for s in RESUME_SAFE)


class BadDataError(UserFacingError):
    pass


@dataclass
class Summary:
    steps: int = 0
    epochs_done: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    knn: list[dict] = field(default_factory=list)
    knn_random_init: float | None = None
    preempted: bool = False
    checkpoint: str | None = None
    bad_images: int = 0


def clip_per_parameter_(parameters, max_norm: float) -> None:
    """Scale each gradient whose L2 norm exceeds ``max_norm`` by ``max_norm / (norm + 1e-6)``, on its own
    (DINO's ``utils.clip_gradients``; ``clip_grad_norm_`` instead scales all by one total norm)."""
    for p in parameters:
        if p.grad is not None:
            coef = max_norm / (torch.linalg.vector_norm(p.grad.detach()) + 1e-6)
            p.grad.detach().mul_(torch.clamp(coef, max=1.0))


def frozen_parameters(method, epoch: int) -> list[nn.Parameter]:
    """The parameters ``method`` keeps fixed this epoch (its optional ``frozen_parameters(epoch)``; none by default)."""
    declared = getattr(method, "frozen_parameters", None)
    return list(declared(epoch)) if declared is not None else []


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is a core dependency; kept optional here for clarity
        pass


def _ignore_sigterm(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the main process, which checkpoints before exiting."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_source(cfg: PretrainConfig):
    if cfg.data.path:
        from bam_dense.data.images import ImageFolderSource

        try:
            return ImageFolderSource(cfg.data.path)
        except FileNotFoundError as err:
            raise UserFacingError(f"data.path: {err}") from None
    from bam_dense.data.synthetic import SyntheticImageNet

    return SyntheticImageNet.from_config(cfg.data.synthetic)


class Trainer:
    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        self.device = dist.init_from_env(cfg.run.device)
        self.world, self.rank = dist.world_size(), dist.rank()
        _seed_everything(cfg.run.seed)  # the same initial weights on every rank (student and teacher)
        self.out = Path(cfg.run.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.use_cuda = self.device.type == "cuda"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.optim.amp) if self.use_cuda else None
        if self.use_cuda:  # run.tf32: fp32 matmuls/convolutions on tensor cores
            torch.backends.cuda.matmul.allow_tf32 = cfg.run.tf32
            torch.backends.cudnn.allow_tf32 = cfg.run.tf32

        # data
        self.source = build_source(cfg)
        # data.augment_on: device: workers draw parameters and crop, train_step augments on the device
        on_device = cfg.data.augment_on == "device"
        self.views = DeviceViews(cfg.data.views) if on_device else Views(cfg.data.views)
        self.collate = collate_device if on_device else collate
        self.device_augment = DeviceAugment(cfg.data.views, self.device) if on_device else None
        self.dataset = PretrainDataset(self.source, self.views, seed=cfg.run.seed)
        self.sampler = ResumableSampler(self.dataset, self.world, self.rank, seed=cfg.run.seed, drop_last=True)
        self.batch = cfg.data.batch_size_per_gpu
        self.steps_per_epoch = self.sampler.num_samples // self.batch
        if self.steps_per_epoch < 1:
            raise UserFacingError(
                f"data: {len(self.dataset)} images over {self.world} processes give fewer than one batch of "
                f"{self.batch} per process; lower data.batch_size_per_gpu"
            )
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))
        self.global_batch = self.batch * self.world
        self.peak_lr = peak_lr(cfg.optim.lr, self.global_batch, cfg.optim.lr_batch_scaling)
        self.bad_budget = cfg.data.max_bad_fraction * len(self.dataset)

        # model
        backbone = build_backbone(cfg.model)
        self.family = describe(backbone).family
        self.method = build_method(cfg.method, backbone)
        self.channels_last = cfg.model.channels_last
        if self.channels_last is None:  # auto: CNNs on CUDA (cuDNN's fast NHWC kernels)
            self.channels_last = self.use_cuda and self.family == "cnn"
        self.student = self.method.student.to(self.device)
        if self.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
            self.method.student = self.student
        if cfg.model.sync_bn and self.world > 1:
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            self.method.student = self.student
        self.teacher = None
        self.ema = None
        if cfg.teacher.enabled:
            self.teacher = make_teacher(self.student, self.method.teacher_exclude).to(self.device)
            self.ema = EMATeacher(self.student, self.teacher, cfg.teacher.momentum, cfg.teacher.momentum_end,
                                  self.total_steps, cfg.teacher.buffers, cfg.teacher.eval_mode)
        _seed_everything(cfg.run.seed + self.rank)  # from here on each rank draws its own random numbers
        self.model = self.student
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[self.device.index] if self.use_cuda else None, broadcast_buffers=False
            )
        if cfg.model.compile:
            self.model = torch.compile(self.model)
        fused = cfg.optim.fused if cfg.optim.fused is not None else cfg.optim.name == "adamw"  # CPU too: 3-5x faster step
        self.optimizer = build_optimizer(self.student, cfg.optim.name, self.peak_lr, cfg.optim.weight_decay,
                                         cfg.optim.betas, cfg.optim.momentum, cfg.optim.lars_eta, fused=fused,
                                         lars_rule=cfg.optim.lars_rule, decay_1d=cfg.optim.decay_1d)
        self.terminate_flag = torch.zeros(1, device=self.device)  # SIGTERM, shared by the ranks with the step's stats
        self.gflop_per_image: float | None = None
        self.peak_tflops = device_peak_tflops(self.device, cfg.run.peak_tflops)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        # state
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.bad_images = 0
        self._terminate = False
        self.summary = Summary()
        self.tb = None
        self.metrics_file = None
        self.resumed_from: Path | None = None
        self.resume_changes: dict[str, list] = {}
        self.saved_config: dict | None = None  # the checkpoint's, when resumed
        self.last_checkpoint: Path | None = None  # written by this run, or the one it resumed from

    # ------------------------------------------------------------------ schedules
    def lr_at(self, step: int) -> float:
        o = self.cfg.optim
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.peak_lr, o.min_lr)

    def wd_at(self, step: int) -> float:
        o = self.cfg.optim
        end = o.weight_decay if o.weight_decay_end is None else o.weight_decay_end
        return cosine(step, self.total_steps, o.weight_decay, end)

    # ------------------------------------------------------------------ checkpoints
    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.use_cuda:
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.world == 1:
            return [state]
        gathered = [None] * self.world
        torch.distributed.all_gather_object(gathered, state)
        return gathered

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "arch": self.cfg.model.arch,
            "model_kwargs": dict(self.cfg.model.kwargs),
            "family": self.family,
            "method": self.cfg.method.name,
            "config": to_dict(self.cfg),
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "bad_images": self.bad_images,
            "world_size": self.world,
            "rng": None,
        }

    def save(self, name: str = "last.pth") -> Path:
        rng = self._rng_state()  # collective: every rank takes part
        path = self.ckpt_dir / name
        if dist.is_main():
            state = self.state_dict()
            state["rng"] = rng
            atomic_save(state, path)
        dist.barrier()
        if name == "last.pth":
            self.last_checkpoint = path
        return path

    def resume_path(self) -> Path | None:
        r = self.cfg.run.resume
        if r == "none":
            return None
        if r == "auto":
            last = self.ckpt_dir / "last.pth"
            return last if last.exists() else None
        path = Path(r)
        if not path.is_file():
            raise UserFacingError(f"run.resume: checkpoint {path} does not exist")
        return path

    def load(self, path: Path) -> None:
        try:
            state = load_own(path, map_location="cpu")
        except Exception as err:
            raise UserFacingError(f"run.resume: cannot read checkpoint {path}: {err}") from None
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UserFacingError(f"run.resume: {path} is not a bam-dense pretraining checkpoint")
        saved = state["config"]
        for key in ("arch", "kwargs"):
            if saved["model"][key] != to_dict(self.cfg.model)[key]:
                raise UserFacingError(f"run.resume: {path} was trained with model.{key}={saved['model'][key]!r}, "
                                      f"the config says {to_dict(self.cfg.model)[key]!r}")
        if saved["method"]["name"] != self.cfg.method.name:
            raise UserFacingError(f"run.resume: {path} was trained with method.name={saved['method']['name']!r}")
        changes = config_changes(saved, to_dict(self.cfg))
        unsafe = {k: v for k, v in changes.items() if not resume_safe(k)}
        if unsafe:
            listed = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in unsafe.items())
            raise UserFacingError(f"run.resume: {path} was trained with other settings ({listed}). A resumed run keeps "
                                  "its recipe: resume with the checkpoint's values, or start a new run (another "
                                  "run.output_dir, or run.resume=none). Changes allowed on resume: "
                                  + ", ".join(s + "*" if s.endswith(".") else s for s in RESUME_SAFE))
        self.resume_changes, self.saved_config = changes, saved
        if state["world_size"] != self.world:
            print(f"bam-dense: warning: resuming a {state['world_size']}-process run on {self.world} processes; "
                  "the data order changes", file=sys.stderr)
        parts = [("student", self.student)] + ([("teacher", self.teacher)] if self.teacher is not None else [])
        for part, module in parts:
            expected, found = set(module.state_dict()), set(state[part] or {})
            if expected != found:
                missing = [f"{part}.{k}" for k in sorted(expected - found)]
                extra = [f"{part}.{k}" for k in sorted(found - expected)]
                raise UserFacingError(f"run.resume: {path} does not fit this model: "
                                      + "; ".join(x for x in (f"missing {', '.join(missing[:5])}" if missing else "",
                                                              f"unexpected {', '.join(extra[:5])}" if extra else "") if x))
            module.load_state_dict(state[part])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.bad_images = state["bad_images"]
        rng = state["rng"]
        if rng is not None and len(rng) == self.world:
            mine = rng[self.rank]
            torch.set_rng_state(mine["torch"])
            random.setstate(mine["python"])
            if self.use_cuda and "cuda" in mine:
                torch.cuda.set_rng_state(mine["cuda"], self.device)
        self.resumed_from = self.last_checkpoint = path
        self.log_line(f"resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})"
                      + "".join(f"; {k}: {old!r} -> {new!r}" for k, (old, new) in self.resume_changes.items()))

    # ------------------------------------------------------------------ logging
    def log_line(self, text: str) -> None:
        if dist.is_main():
            print(f"[bam-dense] {text}", flush=True)

    def _open_logs(self) -> None:
        if not dist.is_main():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._append_history()
        atomic_write_text(self.out / "config.yaml", dump(self.cfg))
        self.metrics_file = open(self.out / "metrics.jsonl", "a")
        if self.cfg.run.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"))

    def _append_history(self) -> None:
        """Record this start or resume in ``config_history.jsonl``: the first line holds the first config whole,
        so ``config.yaml`` (the config in effect now) may change on resume without losing it."""
        history = self.out / HISTORY_FILE
        entries = []
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        if self.resumed_from is None:
            entries.append({"event": "start", "time": now, "config": to_dict(self.cfg)})
        else:
            if not history.exists():  # a run begun before the history existed: its checkpoint's config comes first
                entries.append({"event": "start", "time": None, "config": self.saved_config,
                                "note": f"recorded at the first resume, from {self.resumed_from}"})
            entries.append({"event": "resume", "time": now, "step": self.step, "from": str(self.resumed_from),
                            "changes": self.resume_changes})
        previous = history.read_bytes() if history.exists() else b""
        lines = b"".join(json.dumps(e).encode() + b"\n" for e in entries)
        atomic_write(history, lambda fh: fh.write(previous + lines))

    def record(self, kind: str, values: dict) -> None:
        if not dist.is_main():
            return
        row = {"kind": kind, "step": self.step, "epoch": self.epoch, **values}
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        if self.tb is not None:
            for key, val in values.items():
                if isinstance(val, (int, float)) and not isinstance(val, bool):
                    self.tb.add_scalar(f"{kind}/{key}", val, self.step)

    # ------------------------------------------------------------------ evaluation
    def knn(self) -> float | None:
        k = self.cfg.eval.knn
        if not k.enabled:
            return None
        net = self.teacher if (k.network == "teacher" and self.teacher is not None) else self.student
        backbone = net.backbone
        train_src, val_src = self._knn_sources()
        tf = eval_transform(k.image_size, k.resize_size, self.cfg.data.views.mean, self.cfg.data.views.std)
        subset = balanced_subset(train_src.targets, k.max_train_images, k.subset_seed)
        tr_f, tr_l = extract(backbone, train_src, tf, self.device, k.batch_size, subset)
        va_f, va_l = extract(backbone, val_src, tf, self.device, k.batch_size)
        return knn_accuracy(tr_f, tr_l, va_f, va_l, k.k, k.temperature)

    def _knn_sources(self):
        k = self.cfg.eval.knn
        if k.train_path:
            from bam_dense.data.images import ImageFolderSource

            return ImageFolderSource(k.train_path), ImageFolderSource(k.val_path or k.train_path)
        from bam_dense.data.synthetic import SyntheticImageNet

        s = self.cfg.data.synthetic
        return (SyntheticImageNet.from_config(s),
                SyntheticImageNet.from_config(s, num_images=max(s.num_images // 4, s.num_classes * 4), seed=s.seed + 7919))

    # ------------------------------------------------------------------ training
    def _on_sigterm(self, signum, frame) -> None:
        self._terminate = True

    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.batch)
        workers = self.cfg.data.num_workers
        return DataLoader(self.dataset, batch_size=self.batch, sampler=self.sampler, num_workers=workers,
                          collate_fn=self.collate, pin_memory=self.use_cuda, drop_last=True,
                          worker_init_fn=procs.loader_worker_init(then=_ignore_sigterm) if workers > 0 else None,
                          persistent_workers=False)

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _mark(self, timings: dict | None, phase: str, since: float) -> float:
        """Add the time since ``since`` to ``timings[phase]`` (synchronising CUDA); no-op without timings."""
        if timings is None:
            return since
        if self.use_cuda:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        timings[phase] = timings.get(phase, 0.0) + now - since
        return now

    def _forward_loss(self, crops: list[torch.Tensor], model: nn.Module):
        ctx = StepContext(step=self.step, epoch=self.epoch, n_global=self.views.n_global, n_crops=self.views.n_crops)
        with self._autocast():
            s_out = model(crops)
            t_out = None
            if self.teacher is not None:
                with torch.no_grad():
                    t_out = self.method.teacher_forward(self.teacher, crops)
            return self.method.loss(s_out, t_out, ctx)

    def _prepare(self, crops: list) -> list[torch.Tensor]:
        """The batch as the model takes it: augmented here when ``data.augment_on: device``, channels-last if set."""
        if self.device_augment is not None:
            crops = self.device_augment(crops)
        if self.channels_last:
            crops = [c.contiguous(memory_format=torch.channels_last) for c in crops]
        return crops

    def train_step(self, crops: list[torch.Tensor], timings: dict | None = None) -> tuple[dict[str, float], float, bool]:
        """One optimizer step; returns (loss terms, grad norm, finite).

        One host synchronisation per step: the loss terms, the grad norm and the flags (non-finite loss on any
        rank, SIGTERM on any rank) travel to the host together, after the backward pass; a non-finite step then
        skips the optimizer. ``timings`` (benchmarks) accumulates seconds per phase: augment
        (``data.augment_on: device``), forward (student, teacher, loss), backward (with unscaling and clipping),
        optimizer (with the EMA update).
        """
        t = time.perf_counter()
        crops = self._prepare(crops)
        if self.device_augment is not None:
            t = self._mark(timings, "augment", t)
        lr, wd = self.lr_at(self.step), self.wd_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd * group["wd_scale"]
        loss, terms = self._forward_loss(crops, self.model)
        t = self._mark(timings, "forward", t)
        values = torch.stack([loss.detach().float()] + [v.detach().float() for v in terms.values()])
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        clip = self.cfg.optim.clip_grad
        per_param = bool(clip) and self.cfg.optim.clip_grad_mode == "per_param"
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), clip if clip and not per_param else float("inf"))
        if per_param:
            clip_per_parameter_(self.student.parameters(), clip)
        # gradients dropped after clipping, as DINO's cancel_gradients_last_layer: no update, no weight decay
        for param in frozen_parameters(self.method, self.epoch):
            param.grad = None
        self.terminate_flag.fill_(float(self._terminate))
        flags = torch.cat([(~torch.isfinite(values).all()).float().reshape(1), self.terminate_flag])
        dist.all_reduce(flags, "max")
        host = torch.cat([values, grad_norm.detach().float().reshape(1).to(values.device), flags]).tolist()  # the sync
        t = self._mark(timings, "backward", t)
        term_values = dict(zip(["loss", *terms.keys()], host[: len(values)]))
        grad_norm_value, nonfinite, terminate = host[len(values)], bool(host[-2]), bool(host[-1])
        self._terminate = terminate
        if nonfinite:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()  # unscale_ ran: close this step's scaler bookkeeping
            return term_values, float("nan"), False
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            # a method whose official loop updates the teacher at the start of a step (MoCo v3) takes the
            # momentum of the next step here, from the same student weights
            term_values["teacher_momentum"] = self.ema.update(self.step + self.method.teacher_momentum_lead)
        self._mark(timings, "optimizer", t)
        term_values["lr"], term_values["wd"] = lr, wd
        return term_values, grad_norm_value, True

    def count_step_flops(self, crops: list[torch.Tensor]) -> float:
        """GFLOP per image of one step (student forward + backward, teacher forward, loss) on ``crops``.

        Runs outside the training state: random number generators, BatchNorm statistics and gradients are
        restored afterwards, so a run that counts is bitwise the run that does not.
        """
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.use_cuda else None
        nets = [self.student] + ([self.teacher] if self.teacher is not None else [])
        buffers = [{k: b.clone() for k, b in net.named_buffers()} for net in nets]

        crops = self._prepare(crops)  # augmentation is not the model's work: outside the count

        def step() -> None:
            loss, _ = self._forward_loss(crops, self.student)  # the bare student: no DDP hooks, no compile
            loss.backward()

        try:
            flops = count_flops(step)
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            for net, saved in zip(nets, buffers):
                for name, buf in net.named_buffers():
                    buf.copy_(saved[name])
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)
        return flops / 1e9 / crops[0].shape[0]

    def _peak_memory_mb(self) -> float:
        return peak_memory(self.device)[0]

    def train(self) -> Summary:
        path = self.resume_path()
        if path is not None:
            self.load(path)
        elif (self.ckpt_dir / "last.pth").exists() and dist.is_main():
            print(f"bam-dense: warning: run.resume=none: {self.ckpt_dir / 'last.pth'} will be overwritten", file=sys.stderr)
        self._open_logs()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        cfg = self.cfg
        self.log_line(
            f"{cfg.method.name} on {cfg.model.arch}: {self.world} process(es) on {self.device}, global batch "
            f"{self.global_batch}, {self.steps_per_epoch} steps/epoch x {cfg.optim.epochs} epochs, peak lr {self.peak_lr:.3g}"
        )
        if cfg.eval.random_init_baseline and self.step == 0:
            acc = self.knn()
            if acc is not None:
                self.summary.knn_random_init = acc
                self.record("knn", {"knn_top1": acc, "random_init": True})
                self.log_line(f"k-NN top-1 of the encoder at random init: {100 * acc:.2f}%")
        max_steps = cfg.run.max_steps or self.total_steps
        progress = None
        if dist.is_main() and cfg.run.progress:
            from tqdm import tqdm

            progress = tqdm(total=min(max_steps, self.total_steps), initial=self.step, unit="step", dynamic_ncols=True,
                            disable=None)
        try:
            self._loop(max_steps, progress)
            self.summary.steps = self.step  # after the last step or a SIGTERM alike
            self.summary.epochs_done = self.epoch
            self.summary.bad_images = self.bad_images
        finally:
            signal.signal(signal.SIGTERM, previous)
            if progress is not None:
                progress.close()
            if self.metrics_file is not None:
                self.metrics_file.close()
            if self.tb is not None:
                self.tb.close()
        return self.summary

    def _loop(self, max_steps: int, progress) -> None:
        cfg = self.cfg
        log_every = max(1, cfg.run.log_every)
        window = {"data": 0.0, "step": 0.0, "n": 0}
        while self.epoch < cfg.optim.epochs and self.step < max_steps:
            t_data = time.perf_counter()
            for crops, _, failed in self._loader():
                crops = [c.to(self.device, non_blocking=True) for c in crops]
                if self.gflop_per_image is None and cfg.run.count_flops:
                    self.gflop_per_image = self.count_step_flops(crops)
                    self.record("flops", {"gflop_per_image": self.gflop_per_image, "peak_tflops": self.peak_tflops})
                    self.log_line(f"{self.gflop_per_image:.2f} GFLOP per image per step"
                                  + (f"; MFU against {self.peak_tflops:g} TFLOP/s per device" if self.peak_tflops else ""))
                t_start = time.perf_counter()
                window["data"] += t_start - t_data
                self._count_bad(failed)
                terms, grad_norm, finite = self.train_step(crops)  # ends with the step's one host synchronisation
                t_data = time.perf_counter()
                window["step"] += t_data - t_start
                window["n"] += 1
                if not finite:
                    bad = [k for k, v in terms.items() if not math.isfinite(v)]
                    msg = (f"non-finite loss at step {self.step} (epoch {self.epoch}): "
                           + ", ".join(f"{k}={terms[k]}" for k in bad))
                    if cfg.run.nan_policy == "stop":
                        last = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else
                                f"no checkpoint was written: the run stopped before its first one (run.checkpoint_every="
                                f"{cfg.run.checkpoint_every})")
                        raise NonFiniteLoss(f"{msg}; {last} (run.nan_policy=skip drops such steps instead)")
                    self.log_line(msg + "; step skipped (run.nan_policy=skip)")
                    self.record("skipped", {"reason": msg})
                self.step += 1
                self.batch_in_epoch += 1
                if finite:
                    self.summary.last_loss = terms["loss"]
                    if self.summary.first_loss is None:
                        self.summary.first_loss = terms["loss"]
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{terms['loss']:.4f}", refresh=False)
                if self.step % log_every == 0 or self.step == max_steps:
                    elapsed = window["data"] + window["step"]
                    images_per_s = window["n"] * self.global_batch / max(elapsed, 1e-9)
                    throughput = {}
                    if self.gflop_per_image is not None:
                        throughput["tflops_per_device"] = self.gflop_per_image * images_per_s / 1e3 / self.world
                        throughput["mfu"] = mfu(self.gflop_per_image, images_per_s, self.peak_tflops, self.world)
                    self.record("train", {
                        **terms,
                        **throughput,
                        "grad_norm": grad_norm,
                        "images_per_s": images_per_s,
                        "crops_per_s": window["n"] * self.global_batch * self.views.n_crops / max(elapsed, 1e-9),
                        "data_wait_share": window["data"] / max(elapsed, 1e-9),
                        "peak_memory_mb": self._peak_memory_mb(),
                        "bad_images": self.bad_images,
                    })
                    window = {"data": 0.0, "step": 0.0, "n": 0}
                if self._terminate:
                    path = self.save()
                    self.summary.preempted = True
                    self.summary.checkpoint = str(path)
                    self.log_line(f"SIGTERM: checkpoint written at step {self.step} to {path}; "
                                  "continue with run.resume=auto")
                    return
                if self.step % max(1, cfg.run.checkpoint_every) == 0:
                    self.save()
                if self.step >= max_steps:
                    break
            if self.batch_in_epoch >= self.steps_per_epoch:  # the epoch ran to its end (also on the last step)
                self._end_epoch()
        if not self.summary.preempted:
            self.summary.checkpoint = str(self.save())

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        cfg = self.cfg
        if cfg.run.keep_every_epochs and self.epoch % cfg.run.keep_every_epochs == 0:
            self.save(f"epoch_{self.epoch:04d}.pth")
        k = cfg.eval.knn
        if k.enabled and (self.epoch % max(1, k.every_epochs) == 0 or self.epoch == cfg.optim.epochs):
            acc = self.knn()
            self.summary.knn.append({"epoch": self.epoch, "knn_top1": acc})
            self.record("knn", {"knn_top1": acc})
            self.log_line(f"epoch {self.epoch}: k-NN top-1 {100 * acc:.2f}%")

    def _count_bad(self, failed: int) -> None:
        if not failed:
            return
        self.bad_images += int(failed)
        if self.bad_images > self.bad_budget / self.world:
            raise BadDataError(
                f"data: {self.bad_images} unreadable images so far on this process, more than data.max_bad_fraction "
                f"({self.cfg.data.max_bad_fraction}) of the {len(self.dataset)} images; see the warnings above for the files"
            )


def run(cfg: PretrainConfig) -> Summary:
    trainer = Trainer(cfg)
    try:
        summary = trainer.train()
        if dist.is_main():
            payload = dict(dataclasses.asdict(summary), completed=not summary.preempted, method=cfg.method.name,
                           arch=cfg.model.arch)
            atomic_write_text(Path(cfg.run.output_dir) / "summary.json", json.dumps(payload, indent=1))
    finally:
        dist.destroy()
    return summary
