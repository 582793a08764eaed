"""Encoders for every frozen-feature protocol: a checkpoint in, dense features out.

DAVIS propagation, the dense probe, retrieval, the linear probe, the demo and ``bam-dense probe`` load their
encoder here: :func:`load_backbone_and_format` reads any supported checkpoint (a bam-dense pretraining file, a
converted one, or a public encoder's: DINO, DINOv2, DINOv3, iBOT, MAE, MoCo v3, DeiT/timm, torchvision) into its
timm backbone with the source's position-table rule recorded (:mod:`bam_dense.models.pos_embed`), and
:class:`FeatureExtractor` turns frames into dense maps. The command line's encoder options
(``--checkpoint``, ``--arch``, ``--which``, ``--trust-source``, ...) are one argument group in
:mod:`bam_dense.cli` that every command taking an encoder adds.
"""

from __future__ import annotations

import torch

from bam_dense.core.errors import UserFacingError


class FeatureExtractor:
    """Frozen dense features: ViT patch tokens after the final norm, or a ResNet stage's map.

    ``pos_resample`` is how a ViT's position table meets the frame size: a rule of
    :mod:`bam_dense.models.pos_embed`, recorded with the backbone (None: the rule it carries, timm's when none).
    """

    def __init__(self, backbone: torch.nn.Module, device: torch.device, resnet_stage: int = 4,
                 pos_resample: str | None = None):
        from bam_dense.models.backbones import describe
        from bam_dense.models.pos_embed import check_rule, pos_rule_of

        if pos_resample is not None:
            try:
                check_rule(pos_resample)
            except ValueError as err:
                raise UserFacingError(str(err)) from None
        self.backbone = backbone.eval().to(device)
        self.device = device
        facts = describe(backbone)
        self.kind = facts.family
        self.stage = resnet_stage
        recorded = pos_rule_of(self.backbone)
        if pos_resample == "rope" and recorded not in (None, "rope"):
            raise UserFacingError(f"--pos-resample rope: {type(backbone).__name__} has a position table, not RoPE")
        self.pos_resample = recorded if recorded in (None, "rope") else pos_resample or recorded
        self.patch = facts.stage_stride(resnet_stage) if self.kind == "cnn" else facts.patch_size

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` -> ``B x D x h x w``."""
        from bam_dense.models.backbones import features, resnet_stage_features

        frames = frames.to(self.device)
        if self.kind == "cnn":
            return resnet_stage_features(self.backbone, frames, self.stage).float()
        return features(self.backbone, frames, self.pos_resample).dense.float()


def load_backbone_and_format(checkpoint: str, arch: str | None, which: str | None,
                             trust_source: bool) -> tuple[torch.nn.Module, str | None]:
    """(timm backbone with the checkpoint's weights (strict) and its source's position-table rule recorded, the
    detected source format); ``checkpoint='random'`` gives a random-init ``arch`` and no format."""
    from bam_dense.convert import load_source
    from bam_dense.convert.sources import resolve_arch
    from bam_dense.models.backbones import create_backbone
    from bam_dense.models.pos_embed import set_pos_rule

    if checkpoint == "random":
        if not arch:
            raise UserFacingError("--checkpoint random needs --arch")
        return create_backbone(arch, pos_embed="learned"), None
    source = load_source(checkpoint, which=which, trust_source=trust_source)
    name, kwargs = resolve_arch(source, arch)
    backbone = create_backbone(name, kwargs, pos_embed="learned")
    missing, unexpected = backbone.load_state_dict(source.backbone, strict=False)
    if missing or unexpected:
        raise UserFacingError(f"{checkpoint} does not fit {name} {kwargs}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return set_pos_rule(backbone, source.pos_rule), source.format


def load_backbone(checkpoint: str, arch: str | None, which: str | None, trust_source: bool) -> torch.nn.Module:
    """A timm backbone with the checkpoint's weights (strict), or at random init for ``checkpoint='random'``."""
    return load_backbone_and_format(checkpoint, arch, which, trust_source)[0]


def load_extractor(checkpoint: str, arch: str | None, which: str | None, trust_source: bool, device: torch.device,
                   resnet_stage: int = 4, pos_resample: str = "auto") -> FeatureExtractor:
    """The extractor for a checkpoint; ``pos_resample='auto'`` keeps the source's own rule, a rule's name overrides it."""
    from bam_dense.convert.sources import resolve_pos_resample
    from bam_dense.models.pos_embed import pos_rule_of

    backbone = load_backbone(checkpoint, arch, which, trust_source)
    return FeatureExtractor(backbone, device, resnet_stage, resolve_pos_resample(pos_resample, pos_rule_of(backbone)))
