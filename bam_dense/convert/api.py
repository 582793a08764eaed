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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

import torch
import torch.nn.functional as F

from bam_dense.convert import registry
from bam_dense.convert.registry import targets_for
from bam_dense.convert.sources import (
    ConversionError,
    Source,
    check_finite,
    create_meta_model,
    extract_backbone,
    read_checkpoint,
    resolve_arch,
)
from bam_dense.core.atomic import atomic_write_text
from bam_dense.core.outputs import check_output
from bam_dense.models.rf_resnet import RFResNet, architecture_record, receptive_field

TARGETS = registry.TARGET_NAMES
# an RF-ResNet goes only where its architecture record can travel with the weights (timm-folder's config.json
# names a timm architecture, which it is not; mmseg, mmdet and detectron2 build standard ResNets)
RF_RESNET_TARGETS = tuple(row.name for row in sorted((t for t in registry.TARGETS if t.rf_resnet), key=lambda t: t.rf_resnet))
# the targets that take a backbone of any family: where a tensor another target has no place for can go
ANY_FAMILY_TARGETS = tuple(row.name for row in registry.TARGETS if registry.ANY in row.families)


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


def _target_row(to: str) -> registry.Target:
    row = registry.target(to)
    if row is None:
        raise ConversionError(f"unknown target {to!r}; choose from {', '.join(TARGETS)}")
    return row


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
    row = _target_row(to)
    writes = (report_path(out, to),) + tuple(Path(out) / name for name in row.folder_files)
    check_output(out, force=force, folder=row.folder, sources=(src,), writes=writes)
    source = load_source(src, source_format, which, trust_source)
    return convert_source(source, to, out, arch=arch, img_size=img_size, write_report=write_report)


def convert_source(source: Source, to: str, out: str | Path, arch: str | None = None, img_size: int | None = None,
                   write_report: bool = True) -> ConversionReport:
    from bam_dense.models.backbones import describe

    out = Path(out)
    if arch is not None and source.arch is not None and arch != source.arch:
        raise ConversionError(f"--arch {arch} contradicts the checkpoint, which records {source.arch}")
    arch, kwargs = resolve_arch(source, arch)
    row = _target_row(to)
    if row.suffix_required and out.suffix != row.suffix:
        raise ConversionError(f"{to} reads {row.suffix_required} only from files ending in {row.suffix}, got {out}")
    backbone = dict(source.backbone)
    report = ConversionReport(source=source.path, source_format=source.format, which=source.which, arch=arch,
                              model_kwargs=kwargs, target=to, output=str(out), dropped=[list(d) for d in source.dropped],
                              pos_resample=source.pos_rule)

    def fail(message: str, note: str | None = None) -> NoReturn:
        """Refuse: the report says ``failed`` (with ``note``) and is written all the same."""
        report.status = "failed"
        if note is not None:
            report.notes = report.notes + [note]
        if write_report:
            _write_report(report, out)
        raise ConversionError(message)

    model = create_meta_model(arch, kwargs)
    kind = describe(model).family
    if img_size is not None:
        model, kwargs = _resize_to(img_size, model, kind, arch, kwargs, backbone, report)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in expected.items():
        if key not in backbone:
            report.unfilled.append(key)
        elif tuple(backbone[key].shape) != shape:
            report.mismatched.append([key, list(backbone[key].shape), list(shape)])
    report.unexpected = sorted(k for k in backbone if k not in expected)
    if report.unfilled or report.mismatched or report.unexpected:
        fail(f"{source.path} does not fit {arch} {kwargs or ''}: " + "; ".join(_misfits(report, arch)) + " (wrong --arch?)")

    record = None
    if isinstance(model, RFResNet):
        if to not in RF_RESNET_TARGETS:
            fail(f"target {to} cannot express {arch}, an RF-ResNet (receptive field {receptive_field(model.cfg)} px): "
                 f"{to}'s ResNet has a 3x3 convolution in every block and ResNet's stem, while {arch} has blocks with 1x1 "
                 f"convolutions only, its own strides and stem (stem stride {model.cfg.stem_stride}, max-pool "
                 f"{'on' if model.cfg.maxpool else 'off'}, stage strides {list(model.cfg.strides)}); loading these "
                 f"weights there would compute other features. Use --to {', '.join(RF_RESNET_TARGETS)}: torchvision-style "
                 "names plus an architecture record from which bam-dense rebuilds the network",
                 note=f"{to} cannot express {arch}")
        record = architecture_record(arch, model.cfg)
        report.notes.append(f"architecture record: {arch} {record['kwargs']} (receptive field {record['receptive_field']} "
                            f"px, output stride {record['output_stride']}); rebuild with {record['builder']}")
    keymap = row.keymap(kind)
    if keymap is None:
        raise ConversionError(f"target {to} does not take a {kind} backbone ({arch}); "
                              f"targets for it: {', '.join(sorted(targets_for(kind)))}")
    # a tensor of the architecture the target has no declared reason to leave out would change the features
    # (LayerScale in mmseg's VisionTransformer, dinov2#65; registers anywhere in mmseg): refuse, naming them
    lost = [key for key in expected if keymap.forward(key) is None and not keymap.declared(key)]
    if kind == "vit" and row.class_row and model.no_embed_class:
        lost.insert(0, "pos_embed (no class-token row: mmseg adds the table to the class token too)")
    if lost:
        hint = (f" (LayerScale: --to {row.layerscale_alternative} keeps it)"
                if row.layerscale_alternative and any(".ls1." in k for k in lost) and not model.num_reg_tokens
                else f" (use --to {', '.join(ANY_FAMILY_TARGETS[:-1])} or {ANY_FAMILY_TARGETS[-1]})")
        fail(f"target {to} has no place for {len(lost)} tensors of {arch} that its features depend on: "
             f"{', '.join(lost[:6])}{hint}", note=f"{to} has no place for: {', '.join(lost)}")
    converted: dict[str, torch.Tensor] = {}
    for key in expected:
        new = keymap.forward(key)
        if new is None:
            report.dropped.append([key, keymap.reason(key)])
            continue
        converted[new] = backbone[key].detach().clone().contiguous()
        report.mapped.append([key, new])
    report.filled = list(converted)
    if kind == "vit":
        facts = describe(model)  # heads cannot be read from the weights: the model's own
        report.notes += [note.format(embed_dims=facts.dense_dim, num_layers=facts.stage_count,
                                     num_heads=model.blocks[0].attn.num_heads) for note in row.vit_notes]
    row.write(converted, out, arch, kwargs, kind, record, source.pos_rule)
    if write_report:
        _write_report(report, out)
    return report


def _resize_to(img_size: int, model, kind: str, arch: str, kwargs: dict, backbone: dict, report: ConversionReport):
    """``--img-size``: the position table resized (bicubic, in ``backbone``) and the architecture rebuilt for it."""
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
    return create_meta_model(arch, kwargs), kwargs


def _misfits(report: ConversionReport, arch: str) -> list[str]:
    """What keeps the source from fitting the architecture, for the error: missing, mismatched, unexpected tensors."""
    parts = []
    if report.unfilled:
        parts.append(f"{len(report.unfilled)} tensors of {arch} missing from the source: {', '.join(report.unfilled[:8])}")
    if report.mismatched:
        parts.append("shape mismatches: " + ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in report.mismatched[:8]))
    if report.unexpected:
        parts.append(f"{len(report.unexpected)} source tensors {arch} does not have: {', '.join(report.unexpected[:8])}")
    return parts


def _write_report(report: ConversionReport, out: Path) -> Path:
    path = report_path(out, report.target)
    payload = asdict(report)
    payload["coverage"] = report.coverage
    atomic_write_text(path, json.dumps(payload, indent=1))
    return path


def report_path(out: str | Path, target: str) -> Path:
    out = Path(out)
    row = registry.target(target)
    return out / "conversion_report.json" if row is not None and row.folder else out.with_name(out.name + ".report.json")

