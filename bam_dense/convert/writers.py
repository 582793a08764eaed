"""Each target's file: its writer and the reader that takes the written tensors back (the round-trip tests' way in).

The rows of :mod:`bam_dense.convert.registry` name these functions. A writer takes the tensors under the target's
names; ``record`` is the architecture record of a network no timm/torchvision name builds (RF-ResNet), then the
state dict goes under ``state_dict`` next to it (safetensors: in the metadata); ``pos_rule`` is the source's
position-table rule, in safetensors' metadata (every target's report records it too).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from bam_dense.convert.sources import ARCH_RECORD, POS_RULE_RECORD
from bam_dense.core.atomic import atomic_write, atomic_write_text
from bam_dense.core.checkpoint import atomic_save

Tensors = dict[str, torch.Tensor]


def write_state_dict(sd: Tensors, out: Path, arch: str, kwargs: dict, kind: str, record: dict | None, pos_rule: str) -> None:
    atomic_save(sd if record is None else {"state_dict": sd, ARCH_RECORD: record}, out)


def read_state_dict(out: Path, kind: str) -> Tensors:
    state = torch.load(out, weights_only=True)
    return state["state_dict"] if ARCH_RECORD in state else state


def write_safetensors(sd: Tensors, out: Path, arch: str, kwargs: dict, kind: str, record: dict | None, pos_rule: str) -> None:
    from safetensors.torch import save

    metadata = {"arch": arch, "format": "timm", POS_RULE_RECORD: pos_rule}
    if record is not None:
        metadata[ARCH_RECORD] = json.dumps(record)
    atomic_write(out, lambda fh: fh.write(save(sd, metadata=metadata)))


def read_safetensors(out: Path, kind: str) -> Tensors:
    from safetensors.torch import load_file

    return load_file(out)


def write_timm_folder(sd: Tensors, out: Path, arch: str, kwargs: dict, kind: str, record: dict | None, pos_rule: str) -> None:
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architecture": arch,
        "num_classes": 0,
        "model_args": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool, list, type(None)))},
        "pretrained_cfg": {"tag": "bam-dense", "input_size": [3, kwargs.get("img_size", 224), kwargs.get("img_size", 224)],
                           "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                           "crop_pct": 0.875, "num_classes": 0},
    }
    atomic_write(out / "model.safetensors", lambda fh: fh.write(save(sd, metadata={"arch": arch, "format": "pt"})))
    atomic_write_text(out / "config.json", json.dumps(config, indent=2))


def read_timm_folder(out: Path, kind: str) -> Tensors:
    return read_safetensors(out / "model.safetensors", kind)


def write_mmseg(sd: Tensors, out: Path, arch: str, kwargs: dict, kind: str, record: dict | None, pos_rule: str) -> None:
    atomic_save({"state_dict": sd}, out)


def read_mmseg(out: Path, kind: str) -> Tensors:
    return torch.load(out, weights_only=True)["state_dict"]


def write_mmdet(sd: Tensors, out: Path, arch: str, kwargs: dict, kind: str, record: dict | None, pos_rule: str) -> None:
    atomic_save({"model": sd} if kind == "vit" else {"state_dict": sd}, out)


def read_mmdet(out: Path, kind: str) -> Tensors:
    return torch.load(out, weights_only=True)["model" if kind == "vit" else "state_dict"]


def write_detectron2(sd: Tensors, out: Path, arch: str, kwargs: dict, kind: str, record: dict | None, pos_rule: str) -> None:
    payload = {"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "bam-dense", "matching_heuristics": True}
    atomic_write(out, lambda fh: pickle.dump(payload, fh, protocol=4))


def read_detectron2(out: Path, kind: str) -> Tensors:
    with open(out, "rb") as fh:
        return {k: torch.from_numpy(v) for k, v in pickle.load(fh)["model"].items()}
