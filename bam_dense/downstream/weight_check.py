"""The pretrained-weight check: before iteration 1, every backbone tensor must hold the checkpoint's value.

mmseg/mmdet load pretrained backbones non-strictly and only warn about keys that did not match, so a
wrong prefix, a V1c deep stem or a dropped patch bias leaves tensors at their random initialisation
without stopping anything. :func:`check_backbone` compares the built model's backbone with the file its
``init_cfg`` names, reading the file the way that backbone's loader does (``state_dict``/``model``
unwrapped, ``prefix`` applied when the loader honours it), and lists every tensor that is not the
checkpoint's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from bam_dense.convert.sources import check_finite
from bam_dense.core.errors import UserFacingError

# Tensors a backbone creates for fine-tuning that no pretraining checkpoint holds.
FRAMEWORK_INITIALISED = (
    re.compile(r"(^|\.)relative_position_bias_table$"),
    re.compile(r"(^|\.)relative_position_index$"),
    re.compile(r"(^|\.)rel_pos_[hw]$"),
    re.compile(r"(^|\.)gamma_[12]$"),  # MAE/BEiT layer scale, created at init_values when the source has none
    re.compile(r"(^|\.)num_batches_tracked$"),
)

# Backbones whose init_weights ignore init_cfg['prefix'] and read the whole file (DOWNSTREAM.md 1.4, 3c).
PREFIX_IGNORED = {"VisionTransformer", "MAE", "BEiT"}
MODEL_KEY_ONLY = {"TimmViT"}  # bam-dense's ViTDet-style mmdet backbone reads ckpt['model']
KEYS_UNDER = {"FrozenTimmEncoder": "encoder."}  # holds the timm model as `encoder`, loads a plain timm state dict into it


class PretrainedWeightsNotLoaded(UserFacingError):
    pass


@dataclass
class CheckResult:
    checked: int = 0
    random: list[str] = field(default_factory=list)  # backbone tensors the checkpoint does not hold
    differ: list[str] = field(default_factory=list)  # present in the checkpoint with other values
    unused: list[str] = field(default_factory=list)  # checkpoint tensors the backbone did not take
    skipped: list[str] = field(default_factory=list)  # framework-initialised tensors

    @property
    def ok(self) -> bool:
        return not self.random and not self.differ


def expected_tensors(checkpoint: dict, backbone_type: str, prefix: str | None) -> dict[str, torch.Tensor]:
    """What the backbone's loader takes from ``checkpoint``, keyed by backbone parameter name.

    mmengine's PretrainedInit (ResNet & co.): ``state_dict`` unwrapped, then with ``prefix`` only the keys
    under it (stripped), without it a leading ``module.`` stripped. mmseg ViT/MAE/BEiT: ``state_dict``
    unwrapped, nothing else. ViTDet-style ViTs: ``model`` only. ``FrozenTimmEncoder``: the timm state dict, under
    ``encoder.``.
    """
    if backbone_type in MODEL_KEY_ONLY:
        state = checkpoint.get("model", {})
    elif backbone_type in KEYS_UNDER:
        state = checkpoint.get("state_dict", checkpoint)
        state = {KEYS_UNDER[backbone_type] + k: v for k, v in state.items()}
    else:
        state = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
        if backbone_type not in PREFIX_IGNORED:
            if prefix:
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            else:
                state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_backbone(backbone: torch.nn.Module, checkpoint_path: str, prefix: str | None = None,
                   backbone_type: str | None = None) -> CheckResult:
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    backbone_type = backbone_type or type(backbone).__name__
    expected = expected_tensors(checkpoint, backbone_type, prefix)
    state = backbone.state_dict()
    check_finite({k: v for k, v in expected.items() if k in state}, checkpoint_path)
    return _tally(state, {name: expected.get(name) for name in state}, [k for k in expected if k not in state])


def _tally(model_state: dict[str, torch.Tensor], references: dict[str, torch.Tensor | None], unused: list[str]) -> CheckResult:
    """Compare each model tensor with its reference (None: the checkpoint has none) and count the outcomes."""
    result = CheckResult(unused=sorted(unused))
    for name, tensor in model_state.items():
        ref = references.get(name)
        if ref is None:
            (result.skipped if any(p.search(name) for p in FRAMEWORK_INITIALISED) else result.random).append(name)
            continue
        result.checked += 1
        if ref.shape != tensor.shape or not torch.equal(ref.to(tensor.device, tensor.dtype), tensor.detach()):
            result.differ.append(name)
    return result


def raise_if_not_loaded(result: CheckResult, checkpoint_path: str, where: str) -> None:
    if result.ok:
        return
    parts = []
    if result.random:
        parts.append(f"{len(result.random)} backbone tensors are not in the checkpoint and kept their random "
                     f"initialisation: {', '.join(result.random[:10])}{' ...' if len(result.random) > 10 else ''}")
    if result.differ:
        parts.append(f"{len(result.differ)} differ from the checkpoint: {', '.join(result.differ[:10])}")
    if result.unused:
        parts.append(f"{len(result.unused)} checkpoint tensors were not used: {', '.join(result.unused[:10])}")
    raise PretrainedWeightsNotLoaded(
        f"{where}: the backbone did not load {checkpoint_path}. " + "; ".join(parts)
        + ". Check init_cfg.prefix, the backbone type (ResNet vs ResNetV1c) and patch_bias."
    )


class _NumpyOnlyUnpickler:
    """Reads a detectron2 ``.pkl`` allowing only the globals that numpy arrays need."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict")}

    @classmethod
    def load(cls, path: str) -> dict:
        import pickle

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) in cls.ALLOWED or (module.startswith("numpy") and name.endswith("DType")):
                    return super().find_class(module, name)
                raise pickle.UnpicklingError(f"{path}: refusing to import {module}.{name}")

        with open(path, "rb") as fh:
            return Unpickler(fh, encoding="latin1").load()


def check_suffix_matched(model_state: dict[str, torch.Tensor], weights: str, prefixes: tuple[str, ...]) -> CheckResult:
    """detectron2's matching: each model tensor under ``prefixes`` takes the longest checkpoint key it ends with.

    ``weights`` is a ``.pkl`` ({'model': numpy arrays}) or a torch file; model tensors under ``prefixes``
    without a checkpoint value (other than framework-initialised ones) are reported as random.
    """
    if weights.endswith(".pkl"):
        raw = _NumpyOnlyUnpickler.load(weights)
        ckpt = {k: torch.as_tensor(v) for k, v in raw.get("model", raw).items()}
    else:
        loaded = torch.load(weights, map_location="cpu", weights_only=True)
        ckpt = loaded.get("model", loaded)
    state = {name: tensor for name, tensor in model_state.items() if name.startswith(prefixes)}
    matched: dict[str, str | None] = {}
    for name in state:
        matches = [k for k in ckpt if name == k or name.endswith("." + k)]
        matched[name] = max(matches, key=len) if matches else None
    used = {k for k in matched.values() if k is not None}
    return _tally(state, {n: ckpt[k] if k else None for n, k in matched.items()}, [k for k in ckpt if k not in used])
