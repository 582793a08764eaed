"""Reading checkpoints from outside, safely, and finding the backbone inside them.

Every source ends as a :class:`Source`: the backbone's tensors under plain **timm** names, the timm
architecture and constructor arguments when known, and the list of tensors left out with the reason.

Each layout recognised is a row of :data:`bam_dense.convert.registry.FORMATS` (its reader is a ``read_*``
function below); ``--source-format auto`` detects them with :func:`detect_format`.

Files are read with ``torch.load(weights_only=True)`` or safetensors. A pickle that needs code to run
(argparse ``Namespace``, numpy objects) is refused unless ``trust_source=True``.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bam_dense.convert import registry
from bam_dense.core.errors import UserFacingError

FORMATS = registry.FORMAT_NAMES
WRAPPER_TOKENS = ("module.", "_orig_mod.")


class ConversionError(UserFacingError):
    pass


@dataclass
class Source:
    path: str
    format: str
    which: str | None
    backbone: dict[str, torch.Tensor]
    arch: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (source key, reason)
    pos_rule: str = "timm"  # how the source resamples a ViT's position table (bam_dense.models.pos_embed)


def check_finite(tensors: dict, path: str) -> None:
    """Refuse weights holding NaN or infinite values, naming the first such tensor: they would still load, convert
    with full coverage and produce features, so every number computed from them would look real."""
    bad = [key for key, value in tensors.items()
           if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        first = tensors[bad[0]]
        nan, inf = int(torch.isnan(first).sum()), int(torch.isinf(first).sum())
        raise ConversionError(f"{path}: tensor {bad[0]} holds non-finite values ({nan} NaN, {inf} inf of "
                              f"{first.numel()}); {len(bad)} of {len(tensors)} tensors are affected. "
                              "The weights are broken (a diverged run?): use an earlier checkpoint")


def read_checkpoint(path: str | Path, trust_source: bool = False) -> object:
    """Load a file as data only; errors name the file and say what is wrong in one line."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ConversionError(f"{path}: empty file, not a checkpoint")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise ConversionError(f"{path}: not a readable safetensors file ({err})") from None
        records = {}
        if ARCH_RECORD in metadata:  # written by bam-dense's converter for an architecture timm cannot name
            try:
                records[ARCH_RECORD] = json.loads(metadata[ARCH_RECORD])
            except json.JSONDecodeError as err:
                raise ConversionError(f"{path}: metadata {ARCH_RECORD!r} is not JSON ({err})") from None
        if POS_RULE_RECORD in metadata:  # the source's position-table rule, written by bam-dense's converter
            records[POS_RULE_RECORD] = metadata[POS_RULE_RECORD]
        return {"state_dict": tensors, **records} if records else tensors
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        imports = [found.group(1)] if found else pickle_imports(path)
        if not imports:  # garbage rather than a pickle that imports code
            raise ConversionError(f"{path}: not a checkpoint torch can read (corrupt or not a pickle)") from None
        if not trust_source:
            raise ConversionError(
                f"{path}: refused to load: unpickling it would import and call {', '.join(imports[:3])}. "
                "Official BAM/DINO checkpoints store their argparse arguments this way. If you trust the file, "
                "pass --trust-source (trust_source=True) to load it as a legacy pickle."
            ) from None
        warnings.warn(f"{path}: loading as a trusted legacy pickle (weights_only=False)", stacklevel=2)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:  # a trusted file that still fails is broken
            raise ConversionError(f"{path}: cannot be read even as a legacy pickle ({type(err2).__name__}: {err2})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "PytorchStreamReader" in text or "zip" in text.lower() or isinstance(err, (EOFError, zipfile.BadZipFile)):
            raise ConversionError(f"{path}: truncated or corrupt checkpoint ({text[:160]})") from None
        raise ConversionError(f"{path}: not a checkpoint torch can read ({text[:160]})") from None


def pickle_imports(path: Path) -> list[str]:
    """The globals a plain pickle file would import, read with pickletools (nothing is executed).

    Empty when the file is not a parseable pickle.
    """
    import pickletools

    data = path.read_bytes()
    if data[:2] == b"PK":  # a zip archive (torch's format): the pickle is data.pkl inside it
        try:
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                data = zf.read(name)
        except (zipfile.BadZipFile, StopIteration):
            return []
    imports, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            elif opcode.name == "GLOBAL":
                imports.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                imports.append(f"{strings[-2]}.{strings[-1]}")
    except (ValueError, EOFError, UnicodeDecodeError):
        return []
    return sorted(set(imports))


def _strip_wrappers(key: str) -> str:
    for token in WRAPPER_TOKENS:
        key = key.replace(token, "")
    return key


def _tensors(d: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}


def _looks_like_vit(keys) -> bool:
    return any(k.startswith("blocks.0.attn.qkv.") for k in keys) and any(k.startswith("patch_embed.proj.") for k in keys)


def _looks_like_resnet(keys) -> bool:
    return "conv1.weight" in keys and any(k.startswith("layer1.0.conv1.") for k in keys)


def _looks_like_metaformer(keys) -> bool:
    return any(k.startswith(("stem.conv.", "stages.0.")) for k in keys) or any(k.startswith("downsample_layers.") for k in keys)


def _unwrap_plain(obj: dict) -> dict:
    for key in ("state_dict", "model", "module"):
        if key in obj and isinstance(obj[key], dict) and obj[key]:
            obj = obj[key]
    return {_strip_wrappers(k): v for k, v in _tensors(obj).items()}


def _looks_like_dinov2(keys) -> bool:
    """DINOv2's own names: a mask token next to LayerScale ``gamma`` or register tokens (chunked or not)."""
    keys = [re.sub(r"^(?:(?:student|teacher)\.)?(?:backbone\.)?", "", k) for k in keys]
    return "mask_token" in keys and any(re.match(r"blocks\.\d+\.(?:\d+\.)?ls1\.gamma$", k) or k == "register_tokens"
                                        for k in keys)


def _looks_like_dinov3(keys) -> bool:
    """DINOv3's own names: storage (register) tokens next to its RoPE periods."""
    keys = [re.sub(r"^(?:(?:student|teacher)\.)?(?:backbone\.)?", "", k) for k in keys]
    return "storage_tokens" in keys and "rope_embed.periods" in keys


def _looks_like_ibot(obj: dict) -> bool:
    keys = [_strip_wrappers(k) for k in obj["student"]] + [_strip_wrappers(k) for k in obj["teacher"]]
    return "ibot_loss" in obj or any(k == "backbone.masked_embed" or k.startswith(("head.last_layer2.", "head.mlp2."))
                                     for k in keys)


def _looks_like_mae(keys) -> bool:
    return _looks_like_vit(keys) and any(k.startswith(("decoder_embed.", "decoder_blocks.", "decoder_pred.")) for k in keys)


def detect_format(obj: object) -> str:
    if not isinstance(obj, dict) or not obj:
        raise ConversionError("not a checkpoint: expected a dict of tensors or a training checkpoint")
    if obj.get("format") == "bam-dense":
        return "bam-dense"
    if isinstance(obj.get("teacher"), dict) and _looks_like_dinov3([_strip_wrappers(k) for k in obj["teacher"]]):
        return "dinov3"
    if isinstance(obj.get("teacher"), dict) and _looks_like_dinov2([_strip_wrappers(k) for k in obj["teacher"]]):
        return "dinov2"
    if isinstance(obj.get("student"), dict) and isinstance(obj.get("teacher"), dict):
        return "ibot" if _looks_like_ibot(obj) else "dino"
    model = obj.get("model")
    if isinstance(model, dict) and _looks_like_dinov3([_strip_wrappers(k) for k in model]):
        return "dinov3"
    if isinstance(model, dict) and _looks_like_dinov2([_strip_wrappers(k) for k in model]):
        return "dinov2"
    if isinstance(model, dict):
        keys = [_strip_wrappers(k) for k in model]
        if any(".proj_head." in f".{k}" or k.startswith(("student.backbone.", "teacher.backbone.")) for k in keys):
            return "bam-official"
    sd = obj.get("state_dict")
    if isinstance(sd, dict) and any("online_net." in k for k in sd):
        return "lewel-official"
    if isinstance(sd, dict) and any(_strip_wrappers(k).startswith("base_encoder.") for k in sd):
        return "mocov3"
    plain = _unwrap_plain(obj)
    if _looks_like_dinov3(plain):
        return "dinov3"
    if _looks_like_dinov2(plain):
        return "dinov2"
    if _looks_like_mae(plain):
        return "mae"
    if _looks_like_resnet(plain):
        return "torchvision"
    if _looks_like_vit(plain) or _looks_like_metaformer(plain):
        return "timm"
    raise ConversionError("unrecognised checkpoint layout: no bam-dense, BAM, LEWEL, DINO, iBOT, DINOv2, MAE, MoCo v3, "
                          "timm ViT/MetaFormer or "
                          "torchvision ResNet keys found (pass --source-format to say what it is)")


def _split_network(state: dict, prefix: str, part_name: str, dropped: list) -> dict:
    """Keep ``prefix*`` keys (prefix removed); everything else is dropped with a reason."""
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            out[key[len(prefix):]] = value
        else:
            dropped.append((key, part_name))
    return out


def _head_reason(key: str) -> str:
    for token, reason in (("global_mlp", "post-pool MLP (pretraining head: CO-SSL's MLP after average pooling)"),
                          ("proj_head", "projector (pretraining head)"), ("projector", "projector (pretraining head)"),
                          ("pred_head", "predictor (pretraining head)"), ("predictor", "predictor (pretraining head)"),
                          ("neck", "alignment neck (pretraining head)"), ("head", "pretraining head"),
                          ("local_", "local head (pretraining head)")):
        if token in key:
            return reason
    return "not part of the backbone"


def _backbone_only(state: dict, dropped: list, report_prefix: str = "") -> dict:
    """Keys under ``backbone.`` (prefix removed); heads are dropped with their reason."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out[key[len("backbone."):]] = value
        else:
            dropped.append((report_prefix + key, _head_reason(key)))
    return out


CLASSIFIER_PREFIXES = ("fc.", "head.", "head_dist.")
# bam-dense's architecture record in a converted file whose network no timm/torchvision name builds (RF-ResNet):
# {"arch": preset name, "kwargs": every configuration field, ...}, next to "state_dict" (or safetensors metadata)
ARCH_RECORD = "architecture"
POS_RULE_RECORD = "pos_resample"  # a converted file's record of its source's position-table rule (safetensors metadata)


def _drop_classifier(backbone: dict, dropped: list, full_prefix: str = "") -> dict:
    out = {}
    for key, value in backbone.items():
        if key.startswith(CLASSIFIER_PREFIXES) and not key.startswith("head.norm."):
            dropped.append((full_prefix + key, "classifier"))
        else:
            out[key] = value
    return out


def extract_backbone(obj: object, path: str, source_format: str = "auto", which: str | None = None) -> Source:
    fmt = detect_format(obj) if source_format == "auto" else source_format
    row = registry.source_format(fmt)
    if row is None:
        raise ConversionError(f"unknown source format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: not a checkpoint (a {type(obj).__name__})")
    dropped: list[tuple[str, str]] = []
    backbone, which, arch, kwargs = row.read(obj, path, which, dropped)
    backbone = _drop_classifier(backbone, dropped)
    if not backbone:
        raise ConversionError(f"{path}: no backbone tensors found in this {fmt} checkpoint")
    rule = obj.get(POS_RULE_RECORD) if isinstance(obj.get(POS_RULE_RECORD), str) else row.native_pos_rule(backbone)
    if rule not in pos_resample_choices()[1:]:
        raise ConversionError(f"{path}: its {POS_RULE_RECORD!r} record is {rule!r}, not one of "
                              f"{', '.join(pos_resample_choices()[1:])}")
    return Source(path=str(path), format=fmt, which=which, backbone=backbone, arch=arch, model_kwargs=kwargs,
                  dropped=dropped, pos_rule=rule)


# The readers of the source formats (rows of bam_dense.convert.registry.FORMATS): the backbone's tensors under timm
# names, which network was read, the architecture and its arguments when the file records them; every tensor left
# out is appended to ``dropped`` with the reason.
Read = tuple[dict, str | None, str | None, dict]


def read_bam_dense(obj: dict, path: str, which: str | None, dropped: list, fmt: str) -> Read:
    which = which or ("teacher" if obj.get("teacher") else "student")
    if not obj.get(which):
        raise ConversionError(f"{path}: this checkpoint has no {which} network (trained without a teacher?)")
    other = "student" if which == "teacher" else "teacher"
    dropped += [(f"{other}.{k}", f"{other} copy") for k in (obj.get(other) or {})]
    backbone = _backbone_only(obj[which], dropped, f"{which}.")
    return backbone, which, obj.get("arch"), dict(obj.get("model_kwargs") or {})


def read_dino(obj: dict, path: str, which: str | None, dropped: list, fmt: str) -> Read:
    """DINO and iBOT (whose student backbone holds its mask token, ``masked_embed``)."""
    which = which or "teacher"
    other = "student" if which == "teacher" else "teacher"
    if not isinstance(obj.get(which), dict):
        raise ConversionError(f"{path}: no {which!r} network in this {fmt} checkpoint")
    dropped += [(f"{other}.{k}", f"{other} copy") for k in obj.get(other, {})]
    state = {_strip_wrappers(k): v for k, v in _tensors(obj[which]).items()}
    backbone = _backbone_only(state, dropped, f"{which}.")
    if "masked_embed" in backbone:
        backbone.pop("masked_embed")
        dropped.append((f"{which}.backbone.masked_embed", MASK_TOKEN_REASON.format("iBOT")))
    return backbone, which, None, {}


def read_mae(obj: dict, path: str, which: str | None, dropped: list, fmt: str) -> Read:
    backbone = {}
    for key, value in _unwrap_plain(obj).items():
        if key.startswith("decoder"):
            dropped.append((key, "MAE decoder (pretraining only)"))
        elif key == "mask_token":
            dropped.append((key, MASK_TOKEN_REASON.format("MAE's decoder")))
        else:
            backbone[key] = value
    return backbone, None, None, {}


def read_bam_official(obj: dict, path: str, which: str | None, dropped: list, fmt: str) -> Read:
    state = {_strip_wrappers(k): v for k, v in _tensors(obj["model"]).items()}
    if any(k.startswith("teacher.") for k in state):
        which = which or "teacher"
        other = "student" if which == "teacher" else "teacher"
        state = _split_network(state, f"{which}.", f"{other} copy", dropped)
    else:
        if which == "teacher":
            raise ConversionError(f"{path}: this BAM checkpoint was trained without a teacher; use --which student")
        which = "student"
    backbone = _backbone_only(state, dropped)
    return backbone, which, None, _mocov3_style_heads(backbone)  # the official ViT-S is MoCo v3's


def read_lewel_official(obj: dict, path: str, which: str | None, dropped: list, fmt: str) -> Read:
    state = {_strip_wrappers(k): v for k, v in _tensors(obj["state_dict"]).items()}
    which = which or "student"  # LEWEL's own extract_backbone.py takes the online network
    net = "online_net." if which == "student" else "target_net."
    other = "target network copy" if which == "student" else "online network copy"
    kept = {}
    for key, value in state.items():
        if key.startswith(net):
            kept[key[len(net):]] = value
        elif key.startswith(("online_net.", "target_net.")):
            dropped.append((key, other))
        else:
            dropped.append((key, _head_reason(key)))
    return _backbone_only(kept, dropped), which, None, {}


def read_plain(obj: dict, path: str, which: str | None, dropped: list, fmt: str) -> Read:
    """timm, torchvision: a plain state dict (with bam-dense's architecture record when it wrote the file)."""
    arch, kwargs = None, {}
    record = obj.get(ARCH_RECORD)
    if isinstance(record, dict):
        if not isinstance(record.get("arch"), str) or not isinstance(record.get("kwargs"), dict):
            raise ConversionError(f"{path}: its {ARCH_RECORD!r} record needs 'arch' (a name) and 'kwargs' (a dict), "
                                  f"got {sorted(record)}")
        arch, kwargs = record["arch"], dict(record["kwargs"])
    return _unwrap_plain(obj), None, arch, kwargs


def create_meta_model(arch: str, kwargs: dict):
    """The timm architecture on the ``meta`` device (shapes and names, no memory), without classifier."""
    import timm

    from bam_dense.models.backbones import _timm_kwargs
    from bam_dense.models.rf_resnet import PRESETS as RF_RESNETS
    from bam_dense.models.rf_resnet import create_rf_resnet

    if arch in RF_RESNETS:  # bam-dense's own RF-ResNet family (not a timm model)
        with torch.device("meta"):
            try:
                return create_rf_resnet(arch, **kwargs)
            except (TypeError, ValueError) as err:
                raise ConversionError(f"cannot build {arch} with {kwargs}: {err}") from None
    if not timm.is_model(arch):
        raise ConversionError(f"--arch {arch!r} is not a timm architecture")
    with torch.device("meta"):
        try:
            return timm.create_model(arch, num_classes=0, **_timm_kwargs(kwargs))
        except TypeError as err:
            raise ConversionError(f"cannot build {arch} with {kwargs}: {err}") from None


MASK_TOKEN_REASON = "mask token for {} (masked-image modelling, training only: unmasked images never use it)"


def _dino_family_state(obj: dict, path: str, which: str | None, dropped: list, name: str) -> tuple[dict, str | None, str]:
    """The backbone tensors of a DINOv2/DINOv3 file (hub, ``{"teacher": ...}`` eval file or ``model`` training
    checkpoint), heads dropped, chunked blocks unchunked; also ``which`` and the report prefix."""
    if isinstance(obj.get("teacher"), dict):  # eval/teacher_checkpoint.pth
        if which == "student":
            raise ConversionError(f"{path}: this {name} file holds the teacher only")
        state, which, prefix = obj["teacher"], "teacher", "teacher."
    else:
        state = obj.get("model") if isinstance(obj.get("model"), dict) else obj.get("state_dict", obj)
        prefix = ""
    state = {_strip_wrappers(k): v for k, v in _tensors(state).items()}
    if any(k.startswith(("student.", "teacher.")) for k in state):
        which = which or "teacher"
        other = "student" if which == "teacher" else "teacher"
        state = _split_network(state, f"{which}.", f"{other} copy", dropped)
        prefix = f"{which}."
    if any(k.startswith("backbone.") for k in state):
        state = _backbone_only(state, dropped, prefix)
        prefix += "backbone."
    state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}  # BlockChunk
    return _drop_classifier(state, dropped, prefix), which, prefix


def read_dinov2(obj: dict, path: str, which: str | None, dropped: list, fmt: str) -> Read:
    """DINOv2 tensors -> timm names through timm's own ``checkpoint_filter_fn`` (which drops ``mask_token``,
    renames SwiGLU ``w12``/``w3`` and moves registers and the CLS position out of ``pos_embed``)."""
    state, which, prefix = _dino_family_state(obj, path, which, dropped, "DINOv2")
    if "mask_token" in state:
        dropped.append((prefix + "mask_token", MASK_TOKEN_REASON.format("DINOv2's iBOT loss")))
    arch, kwargs = _dinov2_arch(state)
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = create_meta_model(arch, kwargs)
    backbone = checkpoint_filter_fn(dict(state), model)
    backbone.pop("mask_token", None)  # timm drops it when it sees the layout; never keep it
    return backbone, which, arch, kwargs


def read_dinov3(obj: dict, path: str, which: str | None, dropped: list, fmt: str) -> Read:
    """DINOv3 tensors -> timm's ``Eva`` names (``vit_*_patch16_dinov3[_qkvb]``) through timm's own
    ``eva.checkpoint_filter_fn``: storage tokens become ``reg_token``, LayerScale ``gamma_1``/``gamma_2``, the
    masked ``qkv.bias`` (key part fixed at zero) ``q_bias``/``v_bias``."""
    state, which, prefix = _dino_family_state(obj, path, which, dropped, "DINOv3")
    reasons = {"mask_token": MASK_TOKEN_REASON.format("DINOv3's iBOT loss"),
               ".periods": "RoPE periods: a fixed buffer timm recomputes from the architecture",
               ".bias_mask": "constant mask zeroing the key bias (timm keeps q_bias/v_bias and no key bias)",
               "local_cls_norm.": "norm of local-crop class tokens (7B pretraining only)"}
    for key in state:
        for token, reason in reasons.items():
            if key.endswith(token) or key.startswith(token):
                dropped.append((prefix + key, reason))
    qkv_bias = [v for k, v in state.items() if k.endswith("attn.qkv.bias")]
    # the released ViT-B/L/H+ (distilled) have all-zero biases: timm builds them without, ViT-S and 7B with
    with_bias = any(bool(b.reshape(3, -1)[[0, 2]].abs().sum()) for b in qkv_bias)
    if qkv_bias and not with_bias:
        dropped += [(prefix + k, "all-zero attention bias (timm's architecture for this checkpoint has none)")
                    for k in state if k.endswith("attn.qkv.bias")]
        state = {k: v for k, v in state.items() if not k.endswith("attn.qkv.bias")}
    arch, kwargs = _dinov3_arch(state, with_bias)
    from timm.models.eva import checkpoint_filter_fn

    model = create_meta_model(arch, kwargs)
    backbone = checkpoint_filter_fn(dict(state), model)
    return backbone, which, arch, kwargs


def _dinov3_arch(state: dict, with_bias: bool) -> tuple[str, dict]:
    dim = state["patch_embed.proj.weight"].shape[0]
    swiglu = "blocks.0.mlp.w1.weight" in state
    size = {(384, False): "small", (384, True): "small_plus", (768, False): "base", (1024, False): "large",
            (1280, True): "huge_plus", (4096, True): "7b"}.get((dim, swiglu))
    kwargs: dict = {"global_pool": "token"}  # DINOv3 pools with its class token
    if size is None:  # another width: DINOv3's sizes all use 64-channel heads
        if dim % 64 or swiglu:
            raise ConversionError(f"no DINOv3 architecture of embed dim {dim}; pass --arch")
        size, kwargs = "small", {**kwargs, "embed_dim": dim, "num_heads": dim // 64}
    arch = f"vit_{size}_patch16_dinov3{'_qkvb' if with_bias and size != '7b' else ''}"
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    if depth != {"small": 12, "small_plus": 12, "base": 12, "large": 24, "huge_plus": 32, "7b": 40}[size]:
        kwargs["depth"] = depth
    n_reg = state["storage_tokens"].shape[1]
    if n_reg != 4:
        kwargs["num_reg_tokens"] = n_reg
    return arch, kwargs


def _dinov2_arch(state: dict) -> tuple[str, dict]:
    """The timm ``vit_*_patch14[_reg4]_dinov2`` architecture of DINOv2 (or timm-named DINOv2) tensors."""
    dim = state["patch_embed.proj.weight"].shape[0]
    patch = state["patch_embed.proj.weight"].shape[-1]
    size = {384: "small", 768: "base", 1024: "large", 1536: "giant"}.get(dim)
    kwargs: dict = {}
    if size is None:  # another width: DINOv2's sizes all use 64-channel heads
        if dim % 64 or "blocks.0.mlp.w12.weight" in state:
            raise ConversionError(f"no DINOv2 architecture of embed dim {dim}; pass --arch")
        size, kwargs = "small", {"embed_dim": dim, "num_heads": dim // 64}
    n_reg = (state["register_tokens"] if "register_tokens" in state else state.get("reg_token", torch.zeros(1, 0))).shape[1]
    arch = f"vit_{size}_patch14{'_reg4' if n_reg else ''}_dinov2"
    if n_reg not in (0, 4):
        kwargs["reg_tokens"] = n_reg
    if patch != 14:
        kwargs["patch_size"] = patch
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    if depth != {"small": 12, "base": 12, "large": 24, "giant": 40}[size]:
        kwargs["depth"] = depth
    n_pos = state["pos_embed"].shape[1] - (0 if "reg_token" in state else 1)  # timm's reg layout has no CLS row
    side = math.isqrt(n_pos)
    if side * side == n_pos and side * patch != 518:
        kwargs["img_size"] = side * patch
    return arch, kwargs


def read_mocov3(obj: dict, path: str, which: str | None, dropped: list, fmt: str) -> Read:
    """MoCo v3: the base encoder (``--which student``, default, as MoCo v3's ``main_lincls``/``convert_to_deit``)
    or the momentum encoder (``--which teacher``); projector heads and the predictor dropped."""
    state = {_strip_wrappers(k): v for k, v in _tensors(obj["state_dict"]).items()}
    which = which or "student"
    net = "base_encoder." if which == "student" else "momentum_encoder."
    other = "momentum encoder copy" if which == "student" else "base encoder copy"
    backbone = {}
    for key, value in state.items():
        if key.startswith(net):
            rest = key[len(net):]
            if rest.startswith(("head.", "fc.")):
                dropped.append((key, "projector (pretraining head)"))
            else:
                backbone[rest] = value
        elif key.startswith(("base_encoder.", "momentum_encoder.")):
            dropped.append((key, other))
        else:
            dropped.append((key, _head_reason(key)))
    if any(k.startswith("patch_embed.proj.") and k.count(".") > 2 for k in backbone):
        raise ConversionError(f"{path}: a MoCo v3 ViT with a convolutional stem (vit_conv_small / vit_conv_base: "
                              "patch_embed.proj is a stack of 3x3 convolutions with BatchNorm, "
                              f"{sorted(k for k in backbone if k.startswith('patch_embed.'))[:3]}), which no timm "
                              "architecture builds; bam-dense reads MoCo v3's vit_small, vit_base and ResNets")
    return backbone, which, None, _mocov3_style_heads(backbone)


def _mocov3_style_heads(backbone: dict) -> dict:
    """The model kwargs of a MoCo v3-style ViT: its ViT-S (384 wide) has 12 heads, timm's 6; a shape cannot tell."""
    return {"num_heads": 12} if "cls_token" in backbone and backbone["cls_token"].shape[-1] == 384 else {}


def native_pos_rule(source_format: str | None, backbone: dict | None = None) -> str:
    """The position-table rule of a source layout (its row's ``pos_rule``; DINOv2 with registers has its own settings,
    a plain timm file with a distillation token is a DeiT's); timm's for an unknown layout."""
    row = registry.source_format(source_format or "")
    return row.native_pos_rule(backbone or {}) if row is not None else "timm"


def pos_resample_choices() -> tuple[str, ...]:
    from bam_dense.models.pos_embed import POS_RESAMPLE

    return ("auto", *POS_RESAMPLE)


def resolve_pos_resample(mode: str, native: str | None) -> str:
    """The rule to apply: ``mode`` itself, or for ``auto`` the source's own ``native`` rule (timm's when unknown)."""
    choices = pos_resample_choices()
    if mode not in choices:
        raise UserFacingError(f"unknown position-embedding resampling {mode!r}; choose from {', '.join(choices)}")
    return (native or "timm") if mode == "auto" else mode


def resolve_arch(source: Source, arch: str | None = None) -> tuple[str, dict]:
    """(timm architecture, constructor kwargs): ``arch`` if given, else the recorded one, else inferred from shapes."""
    kwargs = dict(source.model_kwargs)
    name = arch or source.arch
    if name is None:
        name, inferred = infer_arch(source.backbone)
        kwargs = {**inferred, **kwargs}
    return name, kwargs


VIT_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}
VIT_DEPTHS = {"large": 24, "huge": 32}
RESNET_BLOCKS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
                 ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152"}


def _timm_names() -> set[str]:
    import timm

    return set(timm.list_models())


def infer_arch(backbone: dict[str, torch.Tensor]) -> tuple[str, dict]:
    """A timm architecture (and size overrides) from tensor shapes, for checkpoints that do not record it.

    Shapes cannot tell the number of attention heads: ViTs get timm's default for their width unless
    the source records it (bam-dense checkpoints do; official BAM ViT-S is known to use 12).
    """
    keys = backbone.keys()
    if _looks_like_vit(keys) and "blocks.0.ls1.gamma" in keys and backbone["patch_embed.proj.weight"].shape[-1] == 14:
        return _dinov2_arch(backbone)  # timm-named DINOv2 (timm's own hub files)
    if _looks_like_vit(keys):
        dim = backbone["patch_embed.proj.weight"].shape[0]
        patch = backbone["patch_embed.proj.weight"].shape[-1]
        depth = 1 + max(int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k)))
        size = VIT_SIZES.get(dim)
        if size is None:
            raise ConversionError(f"cannot infer the ViT architecture (embed dim {dim}); pass --arch")
        kwargs = {}
        if "dist_token" in keys:  # distilled DeiT
            arch = f"deit_{size}_distilled_patch16_224"
            if patch != 16:
                kwargs["patch_size"] = patch
        elif f"vit_{size}_patch{patch}_224" in _timm_names():
            arch = f"vit_{size}_patch{patch}_224"
        else:
            arch, kwargs["patch_size"] = f"vit_{size}_patch16_224", patch
        if depth != VIT_DEPTHS.get(size, 12):
            kwargs["depth"] = depth
        if "pos_embed" in backbone:  # the grid the table was trained for (224 pixels unless it says otherwise)
            n_pos = backbone["pos_embed"].shape[1]
            for n_prefix in (1 + ("dist_token" in keys), 0):
                side = math.isqrt(max(n_pos - n_prefix, 0))
                if side * side == n_pos - n_prefix:
                    if side * patch != 224:
                        kwargs["img_size"] = side * patch
                    break
        return arch, kwargs
    if _looks_like_resnet(keys):
        flat = [k for k in keys if re.match(r"layer\d\.\d+\.conv[12]\.weight$", k) and backbone[k].shape[-1] == 1
                and ("layer1.0.conv3.weight" not in keys or k.endswith("conv2.weight"))]
        if flat:  # a block without the 3x3 of every ResNet block: an RF-ResNet, whose strides no shape shows
            raise ConversionError(f"the tensors look like an RF-ResNet (1x1 convolutions where a ResNet has 3x3: "
                                  f"{', '.join(flat[:3])}) but carry no architecture record; pass --arch with the "
                                  "preset (rf99_resnet50, rf29_resnet18) or convert from the bam-dense checkpoint")
        blocks = tuple(1 + max((int(m.group(1)) for k in keys if (m := re.match(rf"layer{i}\.(\d+)\.", k))), default=-1)
                       for i in range(1, 5))
        arch = RESNET_BLOCKS.get((blocks, "layer1.0.conv3.weight" in keys))
        if arch is None:
            raise ConversionError(f"cannot infer the ResNet depth from blocks per stage {blocks}; pass --arch")
        return arch, {}
    raise ConversionError("cannot infer the architecture from the tensors; pass --arch (a timm name)")
