"""MMSegmentation additions registered on import (configs list this module in ``custom_imports``)."""

from __future__ import annotations

import numpy as np
from mmseg.engine.optimizers.layer_decay_optimizer_constructor import (
    LayerDecayOptimizerConstructor,
    get_layer_id_for_vit,
)
from mmseg.evaluation.metrics import IoUMetric
from mmseg.models.backbones import ResNet
from mmseg.models.backbones.resnet import BasicBlock
from mmseg.registry import METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS

import bam_dense.downstream.mm_hooks  # noqa: F401  (registers PretrainedWeightCheckHook)


@MODELS.register_module()
class ResNet10(ResNet):
    """mmseg's ResNet that also knows depth 10: one basic block per stage, the tiny ResNet of the ``*_tiny_cpu``
    pretraining configs (timm ``resnet18`` with ``layers: [1, 1, 1, 1]``; torchvision names, as ``ResNet``)."""

    arch_settings = {**ResNet.arch_settings, 10: (BasicBlock, (1, 1, 1, 1))}


@METRICS.register_module()
class IoUMetricWithClasses(IoUMetric):
    """mmseg's IoUMetric that also keeps each class's IoU (in %, like mIoU) in ``per_class_iou``.

    The per-class values stay out of the returned metrics so that logs keep one line of summary numbers;
    ``bam-dense seg test`` reads them from the evaluator for the metrics JSON (None for absent classes).
    ``per_image`` keeps each image's intersection and union per class (in the test loader's order), over the
    classes with a non-empty union: bootstrap intervals over the validation images are computed from them.
    """

    per_class_iou: dict[str, float | None] = {}
    per_image: dict = {}

    def compute_metrics(self, results: list) -> dict:
        metrics = super().compute_metrics(results)
        if results:
            inters = np.stack([np.asarray(r[0], dtype=np.int64) for r in results])
            unions = np.stack([np.asarray(r[1], dtype=np.int64) for r in results])
            classes = np.nonzero(unions.sum(0) > 0)[0]
            self.per_image = {"classes": classes.tolist(), "intersect": inters[:, classes].tolist(),
                              "union": unions[:, classes].tolist()}
            inter, union, pred, label = (sum(part) for part in zip(*results))
            per_class = self.total_area_to_metrics(inter, union, pred, label, ["mIoU"], self.nan_to_num, self.beta)["IoU"]
            self.per_class_iou = {
                name: (None if np.isnan(value) else float(np.round(value * 100, 2)))
                for name, value in zip(self.dataset_meta["classes"], np.asarray(per_class, dtype=float))
            }
        return metrics


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTLayerDecayOptimizerConstructor(LayerDecayOptimizerConstructor):
    """mmseg's layer-wise lr decay, also for mmseg's ``VisionTransformer`` (mmseg 1.2.2 takes only BEiT and MAE).

    The rule is mmseg's (and BEiT's / iBOT's ``layer_decay_optimizer_constructor``): with L = num_layers + 2
    ids, the patch embedding, cls token and position embedding get id 0, block ``layers.i`` id i + 1, and
    everything else (heads, neck) id L - 1; a group's lr is ``lr * decay ** (L - 1 - id)``. Biases and 1-d
    parameters have no weight decay. Other backbones go to mmseg's own implementation unchanged.
    """

    def add_params(self, params, module, **kwargs):
        if type(module.backbone).__name__ != "VisionTransformer":
            return super().add_params(params, module, **kwargs)
        num_ids = self.paramwise_cfg["num_layers"] + 2
        decay = self.paramwise_cfg["decay_rate"]
        groups: dict[str, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            no_decay = param.ndim == 1 or name.endswith(".bias")
            layer_id = get_layer_id_for_vit(name, num_ids)
            key = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
            if key not in groups:
                scale = decay ** (num_ids - layer_id - 1)
                groups[key] = {"weight_decay": 0.0 if no_decay else self.base_wd, "params": [], "param_names": [],
                               "lr_scale": scale, "group_name": key, "lr": scale * self.base_lr}
            groups[key]["params"].append(param)
            groups[key]["param_names"].append(name)
        params.extend(groups.values())
