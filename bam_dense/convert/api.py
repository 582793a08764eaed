"""``convert()``: one function applies a key map, checks coverage, writes the target and its report.

Coverage is checked against the architecture itself: the timm model is instantiated on the ``meta``
device (no memory, no weights) and every one of its tensors must be filled from the source with the
right shape; source tensors the architecture does not have mean the wrong ``--arch`` and fail too.
Then the key map of the target renames them; a tensor the target has no place for is dropped with the
reason. The report (``<out>.report.json``, or ``conversion_report.json`` inside a folder target) lists
every mapped, dropped and filled tensor and every shape change.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from bam_dense.convert.maps import targets_for
from bam_dense.convert.sources import (
    ARCH_RECORD,
    POS_RULE_RECORD,
    ConversionError,
    Source,
    check_finite,
    create_meta_model,
    extract_backbone,
    read_checkpoint,
    resolve_arch,
)
from bam_dense.core.atomic import atomic_write, atomic_write_text
from bam_dense.core.checkpoint import atomic_save
from bam_dense.core.outputs import check_output
from bam_dense.models.rf_resnet import RFResNet, architecture_record, receptive_field

TARGETS = ("timm", "timm-folder", "torchvision", "mmseg", "mmseg-mae", "mmdet", "detectron2", "safetensors")
# an RF-ResNet goes only where its architecture record can travel with the weights (timm-folder's config.json
# names a timm architecture, which it is not; mmseg, mmdet and detectron2 build standard ResNets)
RF_RESNET_TARGETS = ("torchvision", "timm", "safetensors")


@dataclass
class ConversionReport:
    source: str
    source_format: str
    which: str | None
    arch: str
    model_kwargs: dict
    target: str
    output: str
    status: str = "ok"
    mapped: list[list[str]] = field(default_factory=list)  # [source key, target key]
    dropped: list[list[str]] = field(default_factory=list)  # [source key, reason]
    filled: list[str] = field(default_factory=list)  # target keys written
    shape_changes: list[list] = field(default_factory=list)  # [key, from, to, why]
    unfilled: list[str] = field(default_factory=list)  # architecture tensors the source lacks
    unexpected: list[str] = field(default_factory=list)  # source backbone tensors the architecture lacks
    mismatched: list[list] = field(default_factory=list)  # [key, source shape, architecture shape]
    notes: list[str] = field(default_factory=list)
    pos_resample: str = "timm"  # the source's position-table rule (bam_dense.models.pos_embed), applied by every protocol

    @property
    def coverage(self) -> str:
        total = len(self.filled) + len(self.unfilled)
        pct = 100.0 * len(self.filled) / total if total else 0.0
        return f"{len(self.filled)}/{total} backbone tensors ({pct:.1f}%)"

    def summary(self) -> str:
        lines = [f"converted {self.source} ({self.source_format}{', ' + self.which if self.which else ''}) "
                 f"-> {self.target} {self.output}",
                 f"  architecture {self.arch} {self.model_kwargs or ''}".rstrip(),
                 f"  coverage     {self.coverage}"]
        reasons: dict[str, int] = {}
        for _, reason in self.dropped:
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, n in sorted(reasons.items()):
            lines.append(f"  dropped      {n:5d} x {reason}")
        for key, old, new, why in self.shape_changes:
            lines.append(f"  reshaped     {key}: {tuple(old)} -> {tuple(new)} ({why})")
        lines += [f"  note         {n}" for n in self.notes]
        return "\n".join(lines)


def resize_pos_embed(pos_embed: torch.Tensor, n_prefix: int, new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of the grid part of a ``1 x (prefix + h*w) x D`` table; prefix rows kept."""
    prefix, grid = pos_embed[:, :n_prefix], pos_embed[:, n_prefix:]
    side = int(math.isqrt(grid.shape[1]))
    if side * side != grid.shape[1]:
        raise ConversionError(f"pos_embed grid of {grid.shape[1]} tokens is not square")
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def load_source(src: str | Path, source_format: str = "auto", which: str | None = None, trust_source: bool = False) -> Source:
    """The backbone of a checkpoint file, refused when any of its tensors is NaN or infinite."""
    source = extract_backbone(read_checkpoint(src, trust_source=trust_source), str(src), source_format, which)
    check_finite(source.backbone, source.path)
    return source


def convert(
    src: str | Path,
    to: str,
    out: str | Path,
    arch: str | None = None,
    which: str | None = None,
    img_size: int | None = None,
    source_format: str = "auto",
    trust_source: bool = False,
    write_report: bool = True,
    force: bool = True,
) -> ConversionReport:
    """Convert ``src`` for target ``to`` into ``out``; raise :class:`ConversionError` on any gap.

    ``out`` (or the report beside it) is never ``src`` itself; an existing ``out`` is replaced only with ``force``.
    """
    if to not in TARGETS:
        raise ConversionError(f"unknown target {to!r}; choose from {', '.join(TARGETS)}")
    folder = to == "timm-folder"
    writes = (report_path(out, to),) + ((Path(out) / "model.safetensors", Path(out) / "config.json") if folder else ())
    check_output(out, force=force, folder=folder, sources=(src,), writes=writes)
    source = load_source(src, source_format, which, trust_source)
    return convert_source(source, to, out, arch=arch, img_size=img_size, write_report=write_report)


def convert_source(source: Source, to: str, out: str | Path, arch: str | None = None, img_size: int | None = None,
                   write_report: bool = True) -> ConversionReport:
    from bam_dense.models.backbones import describe

    out = Path(out)
    if arch is not None and source.arch is not None and arch != source.arch:
        raise ConversionError(f"--arch {arch} contradicts the checkpoint, which records {source.arch}")
    arch, kwargs = resolve_arch(source, arch)
    if to == "detectron2" and out.suffix != ".pkl":
        raise ConversionError(f"detectron2 reads pickles only from files ending in .pkl, got {out}")
    backbone = dict(source.backbone)
    report = ConversionReport(source=source.path, source_format=source.format, which=source.which, arch=arch,
                              model_kwargs=kwargs, target=to, output=str(out), dropped=[list(d) for d in source.dropped],
                              pos_resample=source.pos_rule)

    model = create_meta_model(arch, kwargs)
    kind = describe(model).family
    if img_size is not None:
        if kind != "vit":
            raise ConversionError("--img-size applies to ViT position embeddings only")
        patch = model.patch_embed.patch_size
        if img_size < max(patch):
            raise ConversionError(f"--img-size {img_size}: must be at least the patch size ({max(patch)} px)")
        grid = (img_size // patch[0], img_size // patch[1])
        if "pos_embed" in backbone and tuple(model.patch_embed.grid_size) != grid:
            old = backbone["pos_embed"]
            n_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
            if old.shape[1] == n_prefix + model.patch_embed.num_patches:
                backbone["pos_embed"] = resize_pos_embed(old, n_prefix, grid)
                report.shape_changes.append(["pos_embed", list(old.shape), list(backbone["pos_embed"].shape),
                                             f"bicubic interpolation to {grid[0]}x{grid[1]} patches for --img-size {img_size}"])
        kwargs = {**kwargs, "img_size": img_size}
        report.model_kwargs = kwargs
        model = create_meta_model(arch, kwargs)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in expected.items():
        if key not in backbone:
            report.unfilled.append(key)
        elif tuple(backbone[key].shape) != shape:
            report.mismatched.append([key, list(backbone[key].shape), list(shape)])
    report.unexpected = sorted(k for k in backbone if k not in expected)
    if report.unfilled or report.mismatched or report.unexpected:
        report.status = "failed"
        if write_report:
            _write_report(report, out)
        parts = []
        if report.unfilled:
            parts.append(f"{len(report.unfilled)} tensors of {arch} missing from the source: {', '.join(report.unfilled[:8])}")
        if report.mismatched:
            parts.append("shape mismatches: " + ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in report.mismatched[:8]))
        if report.unexpected:
            parts.append(f"{len(report.unexpected)} source tensors {arch} does not have: {', '.join(report.unexpected[:8])}")
        raise ConversionError(f"{source.path} does not fit {arch} {kwargs or ''}: " + "; ".join(parts)
                              + " (wrong --arch?)")

    record = None
    if isinstance(model, RFResNet):
        if to not in RF_RESNET_TARGETS:
            report.status, report.notes = "failed", report.notes + [f"{to} cannot express {arch}"]
            if write_report:
                _write_report(report, out)
            raise ConversionError(
                f"target {to} cannot express {arch}, an RF-ResNet (receptive field {receptive_field(model.cfg)} px): "
                f"{to}'s ResNet has a 3x3 convolution in every block and ResNet's stem, while {arch} has blocks with 1x1 "
                f"convolutions only, its own strides and stem (stem stride {model.cfg.stem_stride}, max-pool "
                f"{'on' if model.cfg.maxpool else 'off'}, stage strides {list(model.cfg.strides)}); loading these "
                f"weights there would compute other features. Use --to {', '.join(RF_RESNET_TARGETS)}: torchvision-style "
                "names plus an architecture record from which bam-dense rebuilds the network")
        record = architecture_record(arch, model.cfg)
        report.notes.append(f"architecture record: {arch} {record['kwargs']} (receptive field {record['receptive_field']} "
                            f"px, output stride {record['output_stride']}); rebuild with {record['builder']}")
    maps = targets_for(kind)
    if to not in maps:
        raise ConversionError(f"target {to} does not take a {kind} backbone ({arch}); "
                              f"targets for it: {', '.join(sorted(maps))}")
    keymap = maps[to]
    # a tensor of the architecture the target has no declared reason to leave out would change the features
    # (LayerScale in mmseg's VisionTransformer, dinov2#65; registers anywhere in mmseg): refuse, naming them
    lost = [key for key in expected if keymap.forward(key) is None and not keymap.declared(key)]
    if kind == "vit" and to in ("mmseg", "mmseg-mae") and model.no_embed_class:
        lost.insert(0, "pos_embed (no class-token row: mmseg adds the table to the class token too)")
    if lost:
        report.status, report.notes = "failed", report.notes + [f"{to} has no place for: {', '.join(lost)}"]
        if write_report:
            _write_report(report, out)
        hint = (" (LayerScale: --to mmseg-mae keeps it)" if to == "mmseg" and any(".ls1." in k for k in lost) and
                not model.num_reg_tokens else " (use --to timm, timm-folder or safetensors)")
        raise ConversionError(f"target {to} has no place for {len(lost)} tensors of {arch} that its features depend on: "
                              f"{', '.join(lost[:6])}{hint}")
    converted: dict[str, torch.Tensor] = {}
    for key in expected:
        new = keymap.forward(key)
        if new is None:
            report.dropped.append([key, keymap.reason(key)])
            continue
        converted[new] = backbone[key].detach().clone().contiguous()
        report.mapped.append([key, new])
    report.filled = list(converted)
    if kind == "vit" and to in ("mmseg", "mmseg-mae"):
        heads = model.blocks[0].attn.num_heads
        facts = describe(model)
        report.notes.append(f"build the mmseg backbone with embed_dims={facts.dense_dim}, num_layers={facts.stage_count}, "
                            f"num_heads={heads} (heads cannot be read from the weights)")
    if to == "mmseg" and kind == "vit":
        report.notes.append("mmseg VisionTransformer must be built with patch_bias=True to take patch_embed.projection.bias")
    _write_target(to, converted, out, arch, kwargs, kind, record, source.pos_rule)
    if write_report:
        _write_report(report, out)
    return report


def _write_report(report: ConversionReport, out: Path) -> Path:
    path = report_path(out, report.target)
    payload = asdict(report)
    payload["coverage"] = report.coverage
    atomic_write_text(path, json.dumps(payload, indent=1))
    return path


def report_path(out: str | Path, target: str) -> Path:
    out = Path(out)
    return out / "conversion_report.json" if target == "timm-folder" else out.with_name(out.name + ".report.json")


def _write_target(to: str, sd: dict[str, torch.Tensor], out: Path, arch: str, kwargs: dict, kind: str,
                  record: dict | None = None, pos_rule: str = "timm") -> None:
    """``record``: the architecture record of a network no timm/torchvision name builds (RF-ResNet); the state dict
    then goes under ``state_dict`` next to it (safetensors: in the metadata). ``pos_rule``: the source's
    position-table rule, in safetensors' metadata (every target's report records it too)."""
    if to in ("timm", "torchvision"):
        atomic_save(sd if record is None else {"state_dict": sd, ARCH_RECORD: record}, out)
    elif to == "safetensors":
        from safetensors.torch import save

        metadata = {"arch": arch, "format": "timm", POS_RULE_RECORD: pos_rule}
        if record is not None:
            metadata[ARCH_RECORD] = json.dumps(record)
        atomic_write(out, lambda fh: fh.write(save(sd, metadata=metadata)))
    elif to == "timm-folder":
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
    elif to in ("mmseg", "mmseg-mae"):
        atomic_save({"state_dict": sd}, out)
    elif to == "mmdet":
        atomic_save({"model": sd} if kind == "vit" else {"state_dict": sd}, out)
    elif to == "detectron2":
        payload = {"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "bam-dense", "matching_heuristics": True}
        atomic_write(out, lambda fh: pickle.dump(payload, fh, protocol=4))
