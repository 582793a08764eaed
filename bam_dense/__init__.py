"""bam-dense: self-supervised pretraining (BAM, LEWEL, CO-SSL) taken to dense-prediction benchmarks.

Importing the package is cheap on purpose: no torch, no OpenMMLab. Subpackages import what they need.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
