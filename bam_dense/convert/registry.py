"""Every conversion target and every source format, each declared once as a row.

``convert()`` looks its target and its source's reader up here; the command line's ``--to`` and
``--source-format`` choices, the tables of docs/converting.md (checked by tests/test_convert.py) and the
round-trip tests iterate these rows, so a new row is offered, documented and tested without another edit.

The command line imports this module to list its choices, so it imports no torch: a row names its
writer or reader as ``"package.module:function"`` (as the command line names its handlers), imported on use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pkgutil import resolve_name

from bam_dense.convert.maps import D2_RESNET, IDENTITY, MMDET_RESNET, MMSEG_MAE, MMSEG_VIT, KeyMap

ANY = "*"  # a key map for a backbone of any family
MMSEG_HEADS_NOTE = ("build the mmseg backbone with embed_dims={embed_dims}, num_layers={num_layers}, "
                    "num_heads={num_heads} (heads cannot be read from the weights)")
MMSEG_PATCH_BIAS_NOTE = "mmseg VisionTransformer must be built with patch_bias=True to take patch_embed.projection.bias"


@dataclass(frozen=True)
class Target:
    """A framework a backbone is converted for (``--to``)."""

    name: str
    keymaps: tuple[tuple[str, KeyMap], ...]  # (backbone family or ANY, timm names -> the target's); first match wins
    writer: str  # "module:function"(tensors, out, arch, kwargs, kind, record, pos_rule) writes the file
    reader: str  # "module:function"(out, kind) -> {target name: tensor}: the written file read back
    suffix: str  # how the output's name ends ("" for a folder)
    doc: str  # what the file is and what reads it (docs/converting.md)
    suffix_required: str | None = None  # the consumer reads only names ending in ``suffix``: what it reads
    folder_files: tuple[str, ...] = ()  # a folder target: the files written inside ``out``
    rf_resnet: int = 0  # can carry an RF-ResNet's architecture record: its rank among those suggested (0: cannot)
    vit_notes: tuple[str, ...] = ()  # report notes for a ViT ({embed_dims}, {num_layers}, {num_heads} filled in)
    class_row: bool = False  # adds the position table to the class token too: a table without that row has no place
    layerscale_alternative: str | None = None  # the target to suggest when LayerScale has no place here
    # the OpenMMLab backbone types (``model.backbone.type``) whose weights ``bam-dense seg|det train`` converts to
    # this target, by task ("seg", "det"): see ``mm_backbone_targets``
    mm_backbones: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def folder(self) -> bool:
        return bool(self.folder_files)

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(family for family, _ in self.keymaps)

    def keymap(self, family: str) -> KeyMap | None:
        """The key map for a backbone of ``family``, or None when this target does not take one."""
        return next((keymap for fam, keymap in self.keymaps if fam in (family, ANY)), None)

    def write(self, tensors: dict, out, arch: str, kwargs: dict, kind: str, record: dict | None, pos_rule: str) -> None:
        resolve_name(self.writer)(tensors, out, arch, kwargs, kind, record, pos_rule)

    def read(self, out, kind: str) -> dict:
        return resolve_name(self.reader)(out, kind)


@dataclass(frozen=True)
class SourceFormat:
    """A checkpoint layout read by the converter (``--source-format``); detection order: ``detect_format``."""

    name: str
    reader: str  # "module:function"(obj, path, which, dropped, name) -> (backbone, which, arch or None, kwargs)
    families: tuple[str, ...]  # the backbone families its checkpoints hold
    layout: str  # docs: the layout recognised
    architecture: str  # docs: the timm architecture it is rebuilt as
    drops: str  # docs: what is dropped, with the reason in the report
    pos_rule: str = "timm"  # how the source resamples a ViT's position table (bam_dense.models.pos_embed.POS_RULES)
    pos_rule_if: tuple[tuple[str, str], ...] = ()  # (backbone key, rule): the rule of a variant holding that key

    def read(self, obj: dict, path: str, which: str | None, dropped: list) -> tuple[dict, str | None, str | None, dict]:
        return resolve_name(self.reader)(obj, path, which, dropped, self.name)

    def native_pos_rule(self, backbone) -> str:
        return next((rule for key, rule in self.pos_rule_if if key in backbone), self.pos_rule)


_WRITERS = "bam_dense.convert.writers"
TARGETS: tuple[Target, ...] = (
    Target("timm", ((ANY, IDENTITY),), f"{_WRITERS}:write_state_dict", f"{_WRITERS}:read_state_dict", ".pth",
           "strict-loadable timm state dict", rf_resnet=2, mm_backbones=(("seg", ("FrozenTimmEncoder",)),)),
    Target("timm-folder", ((ANY, IDENTITY),), f"{_WRITERS}:write_timm_folder", f"{_WRITERS}:read_timm_folder", "",
           'a timm model folder, loadable with `timm.create_model("local-dir:FOLDER", pretrained=True)`',
           folder_files=("model.safetensors", "config.json")),
    Target("torchvision", (("cnn", IDENTITY),), f"{_WRITERS}:write_state_dict", f"{_WRITERS}:read_state_dict", ".pth",
           "torchvision ResNet state dict", rf_resnet=1),
    Target("mmseg", (("vit", MMSEG_VIT), ("cnn", IDENTITY)), f"{_WRITERS}:write_mmseg", f"{_WRITERS}:read_mmseg", ".pth",
           "`{'state_dict': ...}` for mmseg's `VisionTransformer` (needs `patch_bias=True`; no LayerScale, no registers) "
           "or mmseg/mmdet `ResNet`", vit_notes=(MMSEG_HEADS_NOTE, MMSEG_PATCH_BIAS_NOTE), class_row=True,
           layerscale_alternative="mmseg-mae",
           mm_backbones=(("seg", ("VisionTransformer", "ResNet", "ResNet10", "ResNetV1c", "ResNetV1d")),)),
    Target("mmseg-mae", (("vit", MMSEG_MAE),), f"{_WRITERS}:write_mmseg", f"{_WRITERS}:read_mmseg", ".pth",
           "`{'state_dict': ...}` for mmseg's `MAE`/`BEiT` backbones (layer-wise lr decay; LayerScale kept as "
           "`gamma_1`/`gamma_2`, no final norm)", vit_notes=(MMSEG_HEADS_NOTE,), class_row=True,
           mm_backbones=(("seg", ("MAE", "BEiT")),)),
    Target("mmdet", (("vit", IDENTITY), ("cnn", MMDET_RESNET)), f"{_WRITERS}:write_mmdet", f"{_WRITERS}:read_mmdet", ".pth",
           "ResNet under `backbone.` (`{'state_dict': ...}`) for `init_cfg=dict(type='Pretrained', prefix='backbone.')`; "
           "ViT as `{'model': timm names}`", mm_backbones=(("det", ("ResNet", "ResNet10", "TimmViT")),)),
    Target("detectron2", (("vit", IDENTITY), ("cnn", D2_RESNET)), f"{_WRITERS}:write_detectron2",
           f"{_WRITERS}:read_detectron2", ".pkl", "pickle with detectron2 names and `matching_heuristics`",
           suffix_required="pickles"),
    Target("safetensors", ((ANY, IDENTITY),), f"{_WRITERS}:write_safetensors", f"{_WRITERS}:read_safetensors",
           ".safetensors", "the backbone's timm tensors; the architecture and position-table rule in the metadata",
           rf_resnet=3),
)

_SOURCES = "bam_dense.convert.sources"
# pos_rule, how each source resamples a ViT's position table to other input sizes: DINO and iBOT with DINO's
# interpolate_pos_encoding, DINOv2 with its own (the hub's settings differ with and without registers), MAE and DeiT
# with interpolate_pos_embed (MoCo v3's ViTs transfer through DeiT), DINOv3 with RoPE (no table); BAM's evaluation,
# bam-dense checkpoints and plain timm files with timm's.
FORMATS: tuple[SourceFormat, ...] = (
    SourceFormat(
        "bam-dense", f"{_SOURCES}:read_bam_dense", ("vit", "cnn", "metaformer"),
        '`{"format": "bam-dense", "student": {"backbone.*", ...}, "teacher": {...}, "arch", "model_kwargs"}` '
        "(teacher by default, `--which student`)",
        "recorded in the checkpoint", "heads, the other network"),
    SourceFormat(
        "bam-official", f"{_SOURCES}:read_bam_official", ("vit",),
        '`{"model": {"student.module.backbone.*", "teacher.backbone.*", "*.proj_head.*"}, "args"}` (or '
        "`module.backbone.*` without a teacher; teacher by default); its argparse `args` need `--trust-source`",
        "`vit_*_patch16_224` from the shapes (ViT-S with BAM's 12 heads)", "projector, the other network"),
    SourceFormat(
        "lewel-official", f"{_SOURCES}:read_lewel_official", ("cnn",),
        '`{"state_dict": {"module.online_net.backbone.*", "module.target_net.*", "module.predictor*"}}` (online network '
        "by default, as LEWEL's own `extract_backbone.py`)",
        "`resnet*` from the shapes", "the target network, neck, predictor"),
    SourceFormat(
        "dino", f"{_SOURCES}:read_dino", ("vit", "cnn"),
        '`{"student": {"module.backbone.*", "module.head.*"}, "teacher": {"backbone.*", "head.*"}}` (teacher by '
        "default); DINO's hub files (`dino_deitsmall16_pretrain.pth`, `dino_resnet50_pretrain.pth`, ...) are plain "
        "timm/torchvision dicts",
        "`vit_{small,base}_patch{16,8}_224`, `resnet50`", "heads, the other network", pos_rule="dino"),
    SourceFormat(
        "ibot", f"{_SOURCES}:read_dino", ("vit",),
        "DINO's layout plus iBOT's `module.backbone.masked_embed` in the student and `head.last_layer2` / `ibot_loss` "
        "(full `checkpoint.pth`); `checkpoint_teacher.pth` is a plain dict (`timm`)",
        "`vit_{small,base}_patch16_224`",
        "`masked_embed` (mask token, training only), iBOT heads, the other network", pos_rule="dino"),
    SourceFormat(
        "dinov2", f"{_SOURCES}:read_dinov2", ("vit",),
        "DINOv2's names: `mask_token`, `blocks.N.ls1.gamma`, optional `register_tokens`; hub files (plain), "
        '`teacher_checkpoint.pth` (`{"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}}`) and training '
        "checkpoints (`model` with `teacher.backbone.*`); chunked blocks (`blocks.C.N.`) are unchunked",
        "`vit_{small,base,large,giant}_patch14_dinov2`, `..._reg4_dinov2` with registers; LayerScale kept. Other "
        "widths: the same with `embed_dim` and 64-channel heads; the image size is read from the position table",
        "`mask_token` (iBOT loss, training only), DINO/iBOT heads", pos_rule="dinov2",
        pos_rule_if=(("reg_token", "dinov2-reg"),)),
    SourceFormat(
        "dinov3", f"{_SOURCES}:read_dinov3", ("eva",),
        "DINOv3's names: `storage_tokens`, `rope_embed.periods`, `blocks.N.ls1.gamma`, `attn.qkv.bias_mask`; hub "
        "files, `teacher_checkpoint.pth`, training `model`",
        "timm's RoPE `Eva`: `vit_{small,small_plus,base,large,huge_plus,7b}_patch16_dinov3`, `_qkvb` when the "
        "checkpoint's q/v attention biases are non-zero (ViT-S), pooled by the class token (`global_pool=\"token\"`)",
        "`mask_token`, RoPE `periods` (recomputed), `bias_mask` and all-zero attention biases, `local_cls_norm`, heads",
        pos_rule="rope"),
    SourceFormat(
        "mae", f"{_SOURCES}:read_mae", ("vit",),
        'MAE pretraining `{"model": {encoder, "mask_token", "decoder_*"}}` (the encoder-only `mae_pretrain_vit_*.pth` '
        "files are plain `timm`)",
        "`vit_{base,large}_patch16_224`, `vit_huge_patch14_224`", "decoder, `mask_token`", pos_rule="deit"),
    SourceFormat(
        "mocov3", f"{_SOURCES}:read_mocov3", ("vit", "cnn"),
        '`{"state_dict": {"module.base_encoder.*", "module.momentum_encoder.*", "module.predictor.*"}}`, ViT or '
        "ResNet; the base encoder by default (`--which teacher`: the momentum encoder) as MoCo v3's own "
        "`main_lincls.py` / `convert_to_deit.py`",
        "`vit_{small,base}_patch16_224` (ViT-S with MoCo v3's 12 heads), `resnet50`",
        "projector (`head.*` / `fc.*`), predictor, the other encoder", pos_rule="deit"),
    SourceFormat(
        "timm", f"{_SOURCES}:read_plain", ("vit", "metaformer"),
        'supervised DeiT (`{"model": {..., "head.*"}}`), distilled DeiT (`dist_token`, `head_dist`), timm-named '
        "DINOv2 (inferred as `*_dinov2`), MetaFormers (with `--arch`)",
        "`vit_*`, `deit_*_distilled_patch16_224`", "classifiers", pos_rule_if=(("dist_token", "deit"),)),
    SourceFormat(
        "torchvision", f"{_SOURCES}:read_plain", ("cnn",),
        "supervised torchvision/timm ResNet-50", "`resnet50`", "`fc` (classifier)"),
)

TARGET_NAMES = tuple(row.name for row in TARGETS)
FORMAT_NAMES = tuple(row.name for row in FORMATS)


def target(name: str) -> Target | None:
    return next((row for row in TARGETS if row.name == name), None)


def source_format(name: str) -> SourceFormat | None:
    return next((row for row in FORMATS if row.name == name), None)


def mm_backbone_targets(task: str) -> dict[str, str]:
    """``{OpenMMLab backbone type: target name}`` for ``task`` ("seg" or "det"), from the rows' ``mm_backbones``."""
    found: dict[str, str] = {}
    for row in TARGETS:
        for btype in dict(row.mm_backbones).get(task, ()):
            if btype in found:
                raise ValueError(f"{task} backbone {btype!r} is claimed by two targets: {found[btype]} and {row.name}")
            found[btype] = row.name
    return found


def targets_for(family: str) -> dict[str, KeyMap]:
    """The key map of each target that takes a backbone of ``family`` (``vit``, ``eva``, ``cnn``, ``metaformer``)."""
    return {row.name: keymap for row in TARGETS if (keymap := row.keymap(family)) is not None}
