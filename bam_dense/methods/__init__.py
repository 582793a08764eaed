"""Pretraining methods, one file each: its parameters, its class, its registration (bam_dense.core.registry).

Importing this package imports every module in it, so each method registers itself: a new method is a new
file here (docs/methods.md, "Adding a method"). ``build_method(params, backbone)`` builds the class
registered under ``params.name``.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch.nn as nn

from bam_dense.core.registry import method_spec
from bam_dense.methods.base import Method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def build_method(params, backbone: nn.Module) -> Method:
    spec = method_spec(params.name)
    if spec is None:
        raise ValueError(f"unknown method {params.name!r}")
    return spec.method(backbone, params)
