"""Checkpoint conversion for timm, torchvision, MMSegmentation, MMDetection, detectron2 and safetensors.

>>> from bam_dense.convert import convert
>>> report = convert("runs/bam/checkpoints/last.pth", to="mmseg-mae", out="bam_vits_mmseg.pth", img_size=512)
>>> print(report.coverage)

The names below are imported on first use, so that the command line can read the rows of
:mod:`bam_dense.convert.registry` (its ``--to`` and ``--source-format`` choices) without importing torch.
"""

from importlib import import_module

_HOME = {"TARGETS": "api", "ConversionReport": "api", "convert": "api", "convert_source": "api", "load_source": "api",
         "report_path": "api", "ConversionError": "sources", "Source": "sources"}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"bam_dense.convert.{_HOME[name]}"), name)
