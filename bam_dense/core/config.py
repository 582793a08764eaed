"""Pretraining configuration: YAML files validated strictly against dataclasses.

An unknown or misspelt key fails before any work, naming its full path and the closest valid key.
Command-line overrides are ``key.sub=value`` with ``value`` parsed as YAML. The resolved config is what
the run saves beside its checkpoints (``config.yaml``) and inside every checkpoint.

The ``method`` section belongs to the method named by ``method.name``: its fields and their rules are declared in
the method's own file and found through :mod:`bam_dense.core.registry`; this module holds what every run shares.

Every recipe number lives in the YAML files under ``configs/pretrain/`` with a comment giving its source;
the defaults here are only what a config leaves unsaid.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import fnmatch
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bam_dense.core.errors import UserFacingError
from bam_dense.core.paths import locate
from bam_dense.core.registry import MethodParams, method_names, method_spec


class ConfigError(UserFacingError):
    pass


COLOR_MODES = ("class", "instance")
AUGMENT_ON = ("worker", "device")  # data.augment_on (bam_dense.data.device_augment)  # data.synthetic.colors: fixed per class, or random per object


# ---------------------------------------------------------------------------------------------
# Sections shared by every method
# ---------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    output_dir: str = "runs/pretrain"
    seed: int = 0
    resume: str = "auto"  # auto: continue from output_dir/checkpoints/last.pth if present | none | a path
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    log_every: int = 10  # steps between JSONL / TensorBoard records
    checkpoint_every: int = 500  # steps between rewrites of checkpoints/last.pth
    keep_every_epochs: int = 0  # also keep checkpoints/epoch_XXXX.pth every N epochs (0: never)
    max_steps: int | None = None  # stop after this many optimizer steps (smoke tests); None: all epochs
    nan_policy: str = "stop"  # stop: keep the last good checkpoint and exit | skip: drop the step
    tensorboard: bool = True
    progress: bool = True
    tf32: bool = True  # CUDA: TF32 for fp32 matmuls and convolutions (the loss parts autocast leaves in fp32)
    count_flops: bool = True  # count GFLOP per image on the first batch (FlopCounterMode) and log TFLOP/s, MFU
    peak_tflops: float | None = None  # MFU denominator per device; None: the table in bam_dense/engine/flops.py


@dataclass
class SyntheticConfig:
    num_images: int = 512
    size: int = 64
    num_classes: int = 10
    seed: int = 0
    colors: str = "class"  # class: a fixed colour per class; instance: a random colour per object


@dataclass
class ViewsConfig:
    kind: str = "multicrop"  # multicrop (DINO/BAM: G global + L local) | two_view (BYOL asymmetric pair)
    global_crops: int = 2
    global_size: int = 224
    global_scale: list[float] = field(default_factory=lambda: [0.25, 1.0])
    local_crops: int = 6
    local_size: int = 96
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.25])
    interpolation: str = "bicubic"
    flip_prob: float = 0.5
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])  # brightness, contrast, saturation, hue
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    global_blur_prob: list[float] = field(default_factory=lambda: [1.0, 0.1])  # per global view
    global_solarize_prob: list[float] = field(default_factory=lambda: [0.0, 0.2])
    local_blur_prob: float = 0.5
    blur_radius: list[float] = field(default_factory=lambda: [0.1, 2.0])
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class DataConfig:
    path: str | None = None  # ImageNet-style folder (its train/ sub-folder is used if present); None: synthetic
    batch_size_per_gpu: int = 64
    num_workers: int = 8
    max_bad_fraction: float = 0.001  # stop when more than this share of reads fail
    augment_on: str = "worker"  # worker: PIL views in the workers | device: workers draw parameters and crop, the device augments
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)


@dataclass
class ModelConfig:
    arch: str = "vit_small_patch16_224"  # any timm architecture name, or an RF-ResNet preset (rf99_resnet50, rf29_resnet18)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm constructor arguments (e.g. num_heads: 12)
    pos_embed: str = "sincos"  # ViT: sincos (fixed 2-D, MoCo v3) | learned
    freeze_patch_embed: bool = True  # ViT: MoCo v3's frozen random patch projection
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False
    # ResNet only: start the last BatchNorm of every residual block at zero (timm's default, and what BAM's
    # get_arch builds, since it takes ResNets from timm) or at one (torchvision's default, zero_init_residual=False,
    # as the official LEWEL/BYOL ResNet-50). Other architectures must leave it false.
    zero_init_residual: bool = False
    # ViT only: the initialisation of a source (models/backbones.py _init_vit_): moco (moco-v3 vits.py, the
    # frozen patch projection included) | timm_moco (timm's weight_init='moco', the patch projection at PyTorch's
    # default: BAM's get_arch) | timm (timm's default) | dino (timm's with DINO's class token, trunc normal std
    # 0.02) | auto (timm_moco with the sincos table, timm with a learned one)
    init: str = "auto"
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    compile: bool = False  # torch.compile the student
    channels_last: bool | None = None  # None: channels-last memory format for CNN backbones on CUDA, off otherwise


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd | lars
    epochs: int = 100
    lr: float = 3e-4  # base lr; peak = lr * global_batch / lr_batch_scaling (linear scaling rule)
    lr_batch_scaling: int | None = 256  # None: lr is the peak as given
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    weight_decay: float = 0.04
    weight_decay_end: float | None = None  # cosine to this value; None: constant
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9  # SGD / LARS
    lars_eta: float = 0.001
    # LARS update rule (engine/optim.py): lewel (LayneH/LEWEL utils/LARS.py: trust eta ||w|| / (||g|| + wd ||w||),
    # lr inside the momentum buffer, biases and norm parameters by type excluded) | moco (moco-v3
    # moco/optimizer.py: trust eta ||w|| / ||g + wd w||, lr applied after the momentum, parameters of ndim <= 1
    # neither decayed nor adapted)
    lars_rule: str = "lewel"
    # AdamW/SGD: decay every parameter, biases and norm parameters too (one group, as MoCo v3's main_moco.py
    # AdamW over model.parameters()); false: those get no weight decay (the engine's rule by parameter type)
    decay_1d: bool = False
    clip_grad: float | None = None  # max L2 norm of the gradients (see clip_grad_mode); None: no clipping
    # total: one norm over all gradients (torch's clip_grad_norm_; BAM) | per_param: each parameter's gradient
    # on its own (DINO's utils.clip_gradients: factor clip / (||g|| + 1e-6) where below 1)
    clip_grad_mode: str = "total"
    amp: str = "bf16"  # none | bf16 | fp16 (GPU only; CPU runs fp32)
    fused: bool | None = None  # AdamW's fused kernel; None: on for AdamW (CUDA and CPU kernels exist)


@dataclass
class TeacherConfig:
    enabled: bool = False
    momentum: float = 0.996  # start of the per-iteration cosine schedule
    momentum_end: float = 1.0
    buffers: str = "params"  # params: EMA of parameters only | params_and_buffers: EMAN (BN statistics too)
    eval_mode: bool = False  # EMAN keeps the teacher in eval mode


@dataclass
class KnnConfig:
    enabled: bool = False
    every_epochs: int = 1
    k: int = 20
    temperature: float = 0.07
    network: str = "teacher"  # teacher (when there is one) | student
    train_path: str | None = None  # labelled ImageNet-style folders; None: the synthetic data
    val_path: str | None = None
    max_train_images: int = 10000  # a seeded random subset, class-balanced (the official monitor: 10 % of train)
    subset_seed: int = 0  # seed of that subset (the official monitor's is 0)
    image_size: int = 224
    resize_size: int = 256
    batch_size: int = 128


@dataclass
class EvalConfig:
    knn: KnnConfig = field(default_factory=KnnConfig)
    random_init_baseline: bool = False  # also score the untrained encoder once, for comparison


DEFAULT_METHOD = "bam"  # the method of a config without a method section


@dataclass
class PretrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    method: MethodParams = field(default_factory=lambda: method_spec(DEFAULT_METHOD).params())
    eval: EvalConfig = field(default_factory=EvalConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "run.resume": (),  # free-form (auto | none | path)
    "run.device": (),
    "run.nan_policy": ("stop", "skip"),
    "data.augment_on": AUGMENT_ON,
    "data.views.kind": ("multicrop", "two_view"),
    "data.synthetic.colors": COLOR_MODES,
    "data.views.interpolation": ("bicubic", "bilinear"),
    "model.pos_embed": ("sincos", "learned"),
    "optim.name": ("adamw", "sgd", "lars"),
    "optim.lars_rule": ("lewel", "moco"),
    "model.init": ("auto", "moco", "timm_moco", "timm", "dino"),
    "optim.amp": ("none", "bf16", "fp16"),
    "teacher.buffers": ("params", "params_and_buffers"),
    "eval.knn.network": ("teacher", "student"),
}


@dataclass(frozen=True)
class Range:
    """The interval a number must lie in (``None``: unbounded on that side); NaN and inf never do."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
COUNT = Range(1)  # sizes, counts, widths, intervals in steps
FRACTION = Range(0, 1)  # probabilities, shares, convex weights, EMA momenta
BELOW_ONE = Range(0, 1, high_open=True)
SCALE = Range(0, 1, low_open=True)  # crop area shares

# What each number may be, checked as the config is read: a value outside its range is refused naming the key
# (also for values in lists). One line per option, "*" matches any part of a key. The method section's options
# are declared by each method's parameters (``RANGES`` of its dataclass, bam_dense.core.registry).
RANGES: dict[str, Range] = {
    "run.log_every": COUNT,
    "run.checkpoint_every": COUNT,
    "run.keep_every_epochs": NON_NEGATIVE,  # 0: never
    "run.max_steps": COUNT,
    "run.peak_tflops": POSITIVE,
    "data.batch_size_per_gpu": COUNT,
    "data.num_workers": NON_NEGATIVE,
    "data.max_bad_fraction": FRACTION,
    "data.synthetic.num_images": COUNT,
    "data.synthetic.size": COUNT,
    "data.synthetic.num_classes": COUNT,
    "data.views.global_crops": COUNT,
    "data.views.global_size": COUNT,
    "data.views.global_scale": SCALE,
    "data.views.local_crops": NON_NEGATIVE,
    "data.views.local_size": COUNT,
    "data.views.local_scale": SCALE,
    "data.views.*_prob": FRACTION,
    "data.views.color_jitter": NON_NEGATIVE,
    "data.views.blur_radius": NON_NEGATIVE,
    "data.views.std": POSITIVE,
    "model.drop_path_rate": BELOW_ONE,
    "optim.epochs": COUNT,
    "optim.lr": POSITIVE,
    "optim.lr_batch_scaling": COUNT,
    "optim.min_lr": NON_NEGATIVE,
    "optim.warmup_epochs": NON_NEGATIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.weight_decay_end": NON_NEGATIVE,
    "optim.betas": BELOW_ONE,
    "optim.momentum": BELOW_ONE,
    "optim.lars_eta": POSITIVE,
    "optim.clip_grad": NON_NEGATIVE,  # 0: no clipping (DINO's --clip_grad 0)
    "teacher.momentum": FRACTION,
    "teacher.momentum_end": FRACTION,
    "eval.knn.every_epochs": COUNT,
    "eval.knn.k": COUNT,
    "eval.knn.temperature": POSITIVE,
    "eval.knn.max_train_images": COUNT,
    "eval.knn.image_size": COUNT,
    "eval.knn.resize_size": COUNT,
    "eval.knn.batch_size": COUNT,
}


def _lookup(key: str, table: dict[str, Any]) -> Any:
    if key in table:
        return table[key]
    matches = [pattern for pattern in table if "*" in pattern and fnmatch.fnmatchcase(key, pattern)]
    return table[max(matches, key=len)] if matches else None  # the most specific pattern


def _declared(cls: type, attribute: str) -> dict[str, Any]:
    """The ``RANGES`` or ``CHOICES`` a dataclass declares for its own fields, its bases' included."""
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get(attribute, {}))
    return merged


def _check_range(key: str, value: Any, allowed: Range | None) -> None:
    if allowed is None or value is None:
        return
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for i, item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool) and item not in allowed:
            where = key if i is None else f"{key}[{i}]"
            raise ConfigError(f"{where}: must be {allowed}, got {item!r}")


# ---------------------------------------------------------------------------------------------
# Strict construction
# ---------------------------------------------------------------------------------------------


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return build(tp, value, path)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)  # PyYAML reads 4e-3 (no dot) as a string
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")


def _unknown_key(path: str, key: str, valid: list[str]) -> ConfigError:
    full = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{(path + '.') if path else ''}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{full}'{hint}")


def build(cls: type, data: dict, path: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    own_ranges, own_choices = _declared(cls, "RANGES"), _declared(cls, "CHOICES")
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(path, key, list(fields))
        sub = f"{path}.{key}" if path else key
        if cls is PretrainConfig and key == "method":
            kwargs[key] = _build_method(value, sub)
            continue
        kwargs[key] = _coerce(value, hints[key], sub)
        _check_range(sub, kwargs[key], _lookup(key, own_ranges) or _lookup(sub, RANGES))
        choices = own_choices.get(key) or CHOICES.get(sub)
        if choices and kwargs[key] not in choices:
            raise ConfigError(f"{sub}: {kwargs[key]!r} is not one of {', '.join(choices)}")
    return cls(**kwargs)


def _build_method(value: Any, path: str) -> MethodParams:
    """The method section, read into the parameters its ``name`` registered (bam_dense.core.registry)."""
    names = method_names()
    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError(f"{path}: expected a mapping with a 'name' ({', '.join(names)})")
    name = value["name"]
    spec = method_spec(name) if isinstance(name, str) else None
    if spec is None:
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{path}.name: unknown method {name!r}{hint} (choose from {', '.join(names)})")
    return build(spec.params, value, path)


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            node[key] = nxt
        node = nxt
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY.SUB=VALUE")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
        parsed.append((key.strip(), value))
    return parsed


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None) -> PretrainConfig:
    """Read a YAML file (or ``data``), apply overrides, and validate strictly."""
    raw: dict = {}
    if path is not None:
        path = locate(path)  # as given, else the recipe bam-dense ships by that name
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        raw = loaded or {}
    if data is not None:
        raw = _merge(raw, data)
    overrides = parse_overrides(overrides or [])
    try:
        return _resolve(raw, overrides)
    except ConfigError as err:
        culprit = _first_failing(raw, overrides, str(err))
        if culprit:
            key, value = overrides[culprit - 1]
            raise ConfigError(f"{err} (in the command-line override {key}={value!r})") from None
        raise ConfigError(f"{err} (in {path})" if path else str(err)) from None


def _resolve(raw: dict, overrides: list[tuple[str, Any]]) -> PretrainConfig:
    raw = copy.deepcopy(raw)
    for key, value in overrides:
        _set_path(raw, key, value)
    cfg = build(PretrainConfig, raw)
    validate(cfg)
    return cfg


def _first_failing(raw: dict, overrides: list[tuple[str, Any]], message: str) -> int:
    """How many overrides it takes for ``message`` to appear: 0 when the file alone gives it."""
    for n in range(len(overrides)):
        try:
            _resolve(raw, overrides[:n])
        except ConfigError as err:
            if str(err) == message:
                return n
    return len(overrides)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def validate(cfg: PretrainConfig) -> None:
    """Cross-field checks that would otherwise fail hours into a run (single values: :data:`RANGES`)."""
    v = cfg.data.views
    if v.kind == "two_view" and (v.global_crops != 2 or v.local_crops != 0):
        raise ConfigError("data.views: two_view uses exactly 2 global crops and no local crops "
                          f"(got global_crops={v.global_crops}, local_crops={v.local_crops})")
    for name in ("global_blur_prob", "global_solarize_prob"):
        if len(getattr(v, name)) != v.global_crops:
            raise ConfigError(f"data.views.{name} needs one value per global crop ({v.global_crops}), got {getattr(v, name)}")
    m = cfg.method
    if m.NEEDS_TEACHER and not cfg.teacher.enabled:
        raise ConfigError(f"method {m.name} needs a momentum teacher: set teacher.enabled: true")
    if m.TWO_VIEWS and (v.global_crops != 2 or v.local_crops != 0):
        raise ConfigError(f"method {m.name} uses two views: set data.views.kind: two_view")
    m.check(cfg)  # the method's own rules
    if cfg.optim.warmup_epochs > cfg.optim.epochs:
        raise ConfigError(f"optim.warmup_epochs ({cfg.optim.warmup_epochs}) exceeds optim.epochs ({cfg.optim.epochs})")
    if cfg.optim.clip_grad_mode not in ("total", "per_param"):
        raise ConfigError(f"optim.clip_grad_mode must be total or per_param, got {cfg.optim.clip_grad_mode!r}")
    if cfg.teacher.buffers == "params_and_buffers" and not cfg.teacher.eval_mode:
        raise ConfigError("teacher.buffers: params_and_buffers (EMAN) runs the teacher in eval mode: set teacher.eval_mode: true")


def dump(cfg: PretrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
