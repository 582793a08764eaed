r"""RF-ResNet: ResNets whose output cells see a bounded receptive field (CO-SSL, Aubret et al.; METHODS.md 3.4).

A parameterised family with the knobs of the CO-SSL paper's Figure 2: ``layers`` (``n``, blocks per stage),
``maxpool`` (``m``, the stem's 3x3/2 max-pool on or off), ``strides`` (``s', s'', s'''``, the stride of the
first block of stages 2-4) and two block types, with and without the spatial 3x3 convolution: in every stage
the first ``spatial[i]`` blocks are ordinary ResNet blocks, the others have every 3x3 convolution replaced by
a 1x1 one (same widths, same stride position), as BagNet bounds its field. Block shapes are ResNet's
(``bottleneck``: 1x1, 3x3, 1x1 with expansion 4, stride on the 3x3; ``basic``: 3x3, 3x3, stride on the first),
the stem ResNet's 7x7/2 convolution by default (``stem_kernel``, ``stem_stride``). Parameter names are timm's/torchvision's (``conv1``, ``bn1``,
``layer1.0.conv2``, ``layer2.0.downsample.0`` ...).

The receptive field of an output cell along the main path, with ``r_0 = 1`` and ``j_0 = 1``:

.. math:: r_{l} = r_{l-1} + (k_l - 1)\, j_{l-1}, \qquad j_l = j_{l-1}\, s_l

over every convolution and pooling of the stem and of the blocks' residual branches; shortcuts are 1x1, so
with symmetric ``k // 2`` padding their field lies inside the branch's and the block's field is the branch's.
:func:`receptive_field` computes it from the configuration alone (the tests measure it as the support of an
input gradient).

The paper's exact layouts are not public. Reconstructed presets (docs/methods.md):

* ``rf99_resnet50``: ResNet-50 widths and depths (bottleneck, 3-4-6-3), no max-pool, strides 2-2-2, the first
  **two** blocks of every stage spatial: RF ``7 + 2*4 + (4 + 8) + (8 + 16) + (16 + 32) = 99``. Two spatial
  blocks per stage also makes the field independent of ``n`` once ``n > 2``, as Figure 2 states.
* ``rf29_resnet18``: ResNet-18 widths and depths (basic, 2-2-2-2), the stem convolution at stride **1** with
  the max-pool on, strides 2-2-2, only the first block of stages 1 and 2 spatial: RF
  ``7 + 2 + (4 + 4) + (4 + 8) = 29``, output stride 16 like ``rf99_resnet50``. The stem must change: with
  ResNet's 7x7 stride-2 stem every later 3x3 operation adds a multiple of 4 (``2 j`` with ``j`` even), so every
  field is 3 mod 4 (99 is, 29 is not).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn

EXPANSION = {"bottleneck": 4, "basic": 1}


@dataclass(frozen=True)
class RFResNetConfig:
    block: str = "bottleneck"  # bottleneck (ResNet-50 style) | basic (ResNet-18 style)
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)  # n: blocks per stage
    spatial: tuple[int, int, int, int] = (2, 2, 2, 2)  # leading blocks of each stage that keep their 3x3 convs
    maxpool: bool = False  # m: the stem's 3x3 stride-2 max-pool
    strides: tuple[int, int, int] = (2, 2, 2)  # s', s'', s''': stride of the first block of stages 2, 3, 4
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # bottleneck/basic width per stage (ResNet's)
    stem_width: int = 64
    stem_kernel: int = 7  # ResNet's 7x7 stride-2 stem convolution; 3 / 1 is the small-image (CIFAR) stem
    stem_stride: int = 2
    in_chans: int = 3

    def __post_init__(self) -> None:
        if self.block not in EXPANSION:
            raise ValueError(f"RF-ResNet block must be one of {sorted(EXPANSION)}, got {self.block!r}")
        for name in ("layers", "spatial", "widths"):
            if len(getattr(self, name)) != 4:
                raise ValueError(f"RF-ResNet {name} needs 4 values (one per stage), got {getattr(self, name)}")
        if self.stem_kernel < 1 or self.stem_kernel % 2 == 0 or self.stem_stride < 1:
            raise ValueError(f"RF-ResNet stem: odd kernel and positive stride, got {self.stem_kernel} / {self.stem_stride}")
        if len(self.strides) != 3 or any(s < 1 for s in self.strides):
            raise ValueError(f"RF-ResNet strides are 3 positive values (stages 2-4), got {self.strides}")
        if any(n < 1 for n in self.layers) or any(not 0 <= s <= n for s, n in zip(self.spatial, self.layers)):
            raise ValueError(f"RF-ResNet needs 1 <= layers[i] and 0 <= spatial[i] <= layers[i]; got layers "
                             f"{self.layers}, spatial {self.spatial}")


PRESETS: dict[str, RFResNetConfig] = {
    # RECONSTRUCTED (the paper's layouts are not public): RF 99 px, ResNet-50 widths, see the module docstring
    "rf99_resnet50": RFResNetConfig(block="bottleneck", layers=(3, 4, 6, 3), spatial=(2, 2, 2, 2), maxpool=False,
                                    strides=(2, 2, 2)),
    # RECONSTRUCTED: RF 29 px, ResNet-18 widths
    "rf29_resnet18": RFResNetConfig(block="basic", layers=(2, 2, 2, 2), spatial=(1, 1, 0, 0), maxpool=True,
                                    strides=(2, 2, 2), stem_stride=1),
}


def _layer_geometry(cfg: RFResNetConfig) -> list[tuple[int, int]]:
    """(kernel, stride) of every convolution and pooling on the main path, input to output."""
    ops = [(cfg.stem_kernel, cfg.stem_stride)] + ([(3, 2)] if cfg.maxpool else [])
    for stage, (n, n_spatial) in enumerate(zip(cfg.layers, cfg.spatial)):
        for i in range(n):
            stride = cfg.strides[stage - 1] if stage > 0 and i == 0 else 1
            k = 3 if i < n_spatial else 1
            ops += [(1, 1), (k, stride), (1, 1)] if cfg.block == "bottleneck" else [(k, stride), (k, 1)]
    return ops


def receptive_field(cfg: RFResNetConfig) -> int:
    """The side, in input pixels, of the square an output cell sees (theoretical receptive field)."""
    r, j = 1, 1
    for k, s in _layer_geometry(cfg):
        r += (k - 1) * j
        j *= s
    return r


def output_stride(cfg: RFResNetConfig) -> int:
    """Input pixels per output cell."""
    j = 1
    for _, s in _layer_geometry(cfg):
        j *= s
    return j


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(c_out)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    conv, bn = _conv_bn(c_in, c_out, 1, stride)
    return nn.Sequential(conv, bn)


class RFBlock(nn.Module):
    """A ResNet residual block: ``conv1 .. convN``, each with its BatchNorm and ReLU (timm's/torchvision's names), the
    shortcut (``downsample`` when the shape changes) added before the last ReLU. ``convs``: (in, out, kernel,
    stride) of each convolution, in order; ``stride``: the block's."""

    def __init__(self, convs: list[tuple[int, int, int, int]], stride: int):
        super().__init__()
        self.n_convs = len(convs)
        for i, (c_in, c_out, k, s) in enumerate(convs, 1):
            conv, bn = _conv_bn(c_in, c_out, k, s)
            self.add_module(f"conv{i}", conv)
            self.add_module(f"bn{i}", bn)
            self.add_module(f"act{i}", nn.ReLU(inplace=True))
        self.downsample = _shortcut(convs[0][0], convs[-1][1], stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return getattr(self, f"bn{self.n_convs}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = x
        for i in range(1, self.n_convs + 1):
            y = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(y))
            y = getattr(self, f"act{i}")(y + shortcut if i == self.n_convs else y)
        return y


class RFBottleneck(RFBlock):
    """1x1 -> k x k (stride) -> 1x1 (x4), residual; ``k`` 3 (spatial block) or 1."""

    def __init__(self, c_in: int, width: int, stride: int, k: int):
        super().__init__([(c_in, width, 1, 1), (width, width, k, stride), (width, width * EXPANSION["bottleneck"], 1, 1)],
                         stride)


class RFBasic(RFBlock):
    """k x k (stride) -> k x k, residual; ``k`` 3 (spatial block) or 1."""

    def __init__(self, c_in: int, width: int, stride: int, k: int):
        super().__init__([(c_in, width, k, stride), (width, width, k, 1)], stride)


class RFResNet(nn.Module):
    """An RF-ResNet of configuration ``cfg`` without classifier; ``forward_features`` gives the dense map."""

    def __init__(self, cfg: RFResNetConfig, zero_init_last: bool = True):
        super().__init__()
        self.cfg = cfg
        self.conv1, self.bn1 = _conv_bn(cfg.in_chans, cfg.stem_width, cfg.stem_kernel, cfg.stem_stride)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if cfg.maxpool else nn.Identity()
        block = RFBottleneck if cfg.block == "bottleneck" else RFBasic
        c_in, reduction = cfg.stem_width, cfg.stem_stride * (2 if cfg.maxpool else 1)
        # timm's ResNet layout: entry 0 the stem (before the max-pool), entry i the stage layer{i}
        self.feature_info: list[dict] = [{"num_chs": cfg.stem_width, "reduction": cfg.stem_stride, "module": "act1"}]
        for stage in range(4):
            stride = cfg.strides[stage - 1] if stage > 0 else 1
            reduction *= stride
            blocks = []
            for i in range(cfg.layers[stage]):
                k = 3 if i < cfg.spatial[stage] else 1
                blocks.append(block(c_in, cfg.widths[stage], stride if i == 0 else 1, k))
                c_in = cfg.widths[stage] * EXPANSION[cfg.block]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": c_in, "reduction": reduction, "module": f"layer{stage + 1}"})
        self.num_features = c_in
        self._init(zero_init_last)

    def _init(self, zero_init_last: bool) -> None:
        for m in self.modules():  # ResNet's: He normal (fan out) convolutions, unit BatchNorm
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, RFBlock):
                    nn.init.zeros_(m.last_bn().weight)

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.cfg)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` -> ``B x C x H/stride x W/stride`` (the last stage)."""
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features, ``B x C``."""
        return self.forward_features(x).mean(dim=(2, 3))


def architecture_record(name: str, cfg: RFResNetConfig) -> dict:
    """What rebuilds the network without the preset table: ``create_rf_resnet(record["arch"], **record["kwargs"])``
    (every :class:`RFResNetConfig` field, lists for tuples), with its field and output stride for the reader."""
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    return {"arch": name, "kwargs": kwargs, "family": "rf-resnet", "receptive_field": receptive_field(cfg),
            "output_stride": output_stride(cfg), "builder": "bam_dense.models.backbones.create_backbone(arch, kwargs)"}


def create_rf_resnet(name: str, zero_init_last: bool = True, **overrides) -> RFResNet:
    """A preset by name (``rf99_resnet50``, ``rf29_resnet18``), fields of :class:`RFResNetConfig` overridable."""
    if name not in PRESETS:
        raise ValueError(f"unknown RF-ResNet {name!r}; presets: {sorted(PRESETS)}")
    return RFResNet(replace(PRESETS[name], **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}),
                    zero_init_last=zero_init_last)


__all__ = ["PRESETS", "RFResNet", "RFResNetConfig", "architecture_record", "create_rf_resnet", "output_stride", "receptive_field"]
