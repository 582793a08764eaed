"""Checkpoint conversion for timm, torchvision, MMSegmentation, MMDetection, detectron2 and safetensors.

>>> from bam_dense.convert import convert
>>> report = convert("runs/bam/checkpoints/last.pth", to="mmseg-mae", out="bam_vits_mmseg.pth", img_size=512)
>>> print(report.coverage)
"""

from bam_dense.convert.api import TARGETS, ConversionReport, convert, convert_source, load_source, report_path
from bam_dense.convert.sources import ConversionError, Source

__all__ = ["TARGETS", "ConversionError", "ConversionReport", "Source", "convert", "convert_source", "load_source", "report_path"]
