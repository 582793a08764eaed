"""Key maps from timm names to each framework's names: conversions are data.

A map is an ordered list of ``(timm prefix, target prefix)`` rules. ``{i}``-style placeholders match a
number and carry it across; the first rule whose source prefix matches a key rewrites that prefix and
keeps the rest of the key. The same table read right-to-left is the inverse map, which is how the
round trips (timm -> mmseg -> timm) stay exact. Which target uses which map for which backbone family is
declared in the target's row (:mod:`bam_dense.convert.registry`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

Rule = tuple[str, str]


def _pattern(template: str) -> re.Pattern:
    regex = ""
    for part in re.split(r"(\{\w+\})", template):
        if part.startswith("{") and part.endswith("}"):
            regex += rf"(?P<{part[1:-1]}>\d+)"
        else:
            regex += re.escape(part)
    return re.compile(regex)


class KeyMap:
    """Ordered prefix rules; ``unmapped`` gives, per timm prefix, why the target has no place for it."""

    def __init__(self, name: str, rules: Iterable[Rule], unmapped: dict[str, str] | None = None):
        self.name = name
        self.rules = list(rules)
        self._forward = [(_pattern(src), dst) for src, dst in self.rules]
        self._backward = [(_pattern(dst), src) for src, dst in self.rules]
        self.unmapped = unmapped or {}

    def declared(self, key: str) -> bool:
        """Whether the target leaves ``key`` out on purpose (a reason in ``unmapped``)."""
        return any(key.startswith(prefix) for prefix in self.unmapped)

    def reason(self, key: str) -> str:
        for prefix, why in self.unmapped.items():
            if key.startswith(prefix):
                return why
        return f"no place in {self.name}"

    @staticmethod
    def _apply(key: str, compiled, longest: bool = False) -> str | None:
        """The first rule matching ``key`` rewrites it (``longest``: the rule matching the longest prefix)."""
        best = None
        for pattern, template in compiled:
            m = pattern.match(key)
            if m and (best is None or m.end() > best[0].end()):
                best = (m, template)
                if not longest:
                    break
        return None if best is None else best[1].format(**best[0].groupdict()) + key[best[0].end():]

    def forward(self, key: str) -> str | None:
        """The target name of timm key ``key``, or None when the target has no place for it."""
        return self._apply(key, self._forward)

    def backward(self, key: str) -> str | None:
        """The timm name of target key ``key``: the inverse of :meth:`forward`. The most specific rule wins, since a
        target prefix can extend another's (detectron2's ``stem.conv1.norm.`` is BatchNorm ``bn1.``, ``stem.conv1.``
        the convolution)."""
        return self._apply(key, self._backward, longest=True)


IDENTITY = KeyMap("identity", [("", "")])

# timm / DINO / BAM ViT -> mmseg VisionTransformer (DOWNSTREAM.md 5.1; patch_bias=True needed in the config)
MMSEG_VIT = KeyMap("mmseg-vit", [
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embed"),
    ("patch_embed.proj.", "patch_embed.projection."),
    ("blocks.{i}.norm1.", "layers.{i}.ln1."),
    ("blocks.{i}.norm2.", "layers.{i}.ln2."),
    ("blocks.{i}.attn.qkv.weight", "layers.{i}.attn.attn.in_proj_weight"),
    ("blocks.{i}.attn.qkv.bias", "layers.{i}.attn.attn.in_proj_bias"),
    ("blocks.{i}.attn.proj.", "layers.{i}.attn.attn.out_proj."),
    ("blocks.{i}.mlp.fc1.", "layers.{i}.ffn.layers.0.0."),
    ("blocks.{i}.mlp.fc2.", "layers.{i}.ffn.layers.1."),
    ("norm.", "ln1."),
])

# timm ViT -> mmseg MAE/BEiT backbone (layer-wise lr decay; DOWNSTREAM.md 5.1). The MAE backbone has no
# final norm (final_norm=False in the recipe), so ``norm.*`` has no place there.
MMSEG_MAE = KeyMap("mmseg-mae", [
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embed"),
    ("patch_embed.proj.", "patch_embed.projection."),
    ("blocks.{i}.norm1.", "layers.{i}.ln1."),
    ("blocks.{i}.norm2.", "layers.{i}.ln2."),
    ("blocks.{i}.ls1.gamma", "layers.{i}.gamma_1"),
    ("blocks.{i}.ls2.gamma", "layers.{i}.gamma_2"),
    ("blocks.{i}.attn.", "layers.{i}.attn."),
    ("blocks.{i}.mlp.fc1.", "layers.{i}.ffn.layers.0.0."),
    ("blocks.{i}.mlp.fc2.", "layers.{i}.ffn.layers.1."),
], unmapped={"norm.": "final norm: the mmseg MAE/BEiT backbone has none (final_norm=False in the recipe)"})

# torchvision / timm ResNet -> detectron2 (DOWNSTREAM.md 3a: MoCo / detectron2 convert-torchvision-to-d2 rules)
_D2_RESNET_RULES: list[Rule] = [("conv1.", "stem.conv1."), ("bn1.", "stem.conv1.norm.")]
for _stage in range(1, 5):
    _res = f"res{_stage + 1}"
    _D2_RESNET_RULES += [
        (f"layer{_stage}.{{b}}.conv{{k}}.", f"{_res}.{{b}}.conv{{k}}."),
        (f"layer{_stage}.{{b}}.bn{{k}}.", f"{_res}.{{b}}.conv{{k}}.norm."),
        (f"layer{_stage}.{{b}}.downsample.0.", f"{_res}.{{b}}.shortcut."),
        (f"layer{_stage}.{{b}}.downsample.1.", f"{_res}.{{b}}.shortcut.norm."),
    ]
D2_RESNET = KeyMap("detectron2-resnet", _D2_RESNET_RULES)

# mmdet ResNet under init_cfg(prefix='backbone.'): torchvision names behind the prefix
MMDET_RESNET = KeyMap("mmdet-resnet", [("", "backbone.")])

