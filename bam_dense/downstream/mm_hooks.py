"""mmengine hook that runs the pretrained-weight check before the first training iteration."""

from __future__ import annotations

import json
from pathlib import Path

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from bam_dense.downstream.weight_check import check_backbone, raise_if_not_loaded


def pretrained_source(init_cfg) -> tuple[str, str | None] | None:
    """(checkpoint, prefix) of a backbone's ``Pretrained`` init_cfg, or None when it has none."""
    cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
    for cfg in cfgs:
        if isinstance(cfg, dict) and cfg.get("type") == "Pretrained":
            return cfg["checkpoint"], cfg.get("prefix")
    return None


@HOOKS.register_module()
class PretrainedWeightCheckHook(Hook):
    """Stop before iteration 1 when any backbone tensor does not hold the checkpoint's value.

    Skipped when training resumes (the weights are the resumed run's then). Writes
    ``<work_dir>/pretrained_weight_check.json`` either way.
    """

    priority = "VERY_HIGH"

    def __init__(self, required: bool = True):
        self.required = required

    def before_train(self, runner) -> None:
        if runner.iter > 0:
            runner.logger.info("pretrained-weight check skipped: resumed at iteration %d", runner.iter)
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        backbone = model.backbone
        source = pretrained_source(getattr(backbone, "init_cfg", None))
        if source is None:
            if self.required:
                raise RuntimeError("pretrained-weight check: the backbone has no init_cfg of type 'Pretrained'")
            return
        checkpoint, prefix = source
        result = check_backbone(backbone, checkpoint, prefix)
        out = Path(runner.work_dir) / "pretrained_weight_check.json"
        out.write_text(json.dumps({"checkpoint": checkpoint, "prefix": prefix, "checked": result.checked,
                                   "random": result.random, "differ": result.differ, "unused": result.unused,
                                   "framework_initialised": result.skipped, "ok": result.ok}, indent=1))
        raise_if_not_loaded(result, checkpoint, f"backbone {type(backbone).__name__}")
        runner.logger.info("pretrained-weight check: all %d backbone tensors hold %s (%d framework-initialised)",
                           result.checked, checkpoint, len(result.skipped))


_BUFFER_TAG = "__bam_dense_history_buffer__"


def _plain(obj):
    """Numpy scalars -> Python numbers, arrays -> tensors, HistoryBuffers -> tagged dicts, recursively."""
    import numpy as np
    import torch

    if hasattr(obj, "data") and hasattr(obj, "max_length") and type(obj).__name__ == "HistoryBuffer":
        log, count = obj.data
        return {_BUFFER_TAG: True, "log": torch.as_tensor(log, dtype=torch.float64),
                "count": torch.as_tensor(count, dtype=torch.float64), "max_length": int(obj.max_length)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    return obj


@HOOKS.register_module()
class TensorOnlyCheckpointHook(Hook):
    """Keep mmengine's checkpoints readable with ``torch.load(weights_only=True)``.

    mmengine 0.10.7 stores its log history as HistoryBuffer objects holding numpy arrays, which torch >= 2.6
    refuses to unpickle by default, so neither ``--resume`` nor testing could read them back. Before a save
    each buffer becomes ``{tag: True, log: tensor, count: tensor, max_length: int}``; after a load it is
    rebuilt, before the runner's message hub reads it.
    """

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for section in ("message_hub", "meta"):
            if section in checkpoint:
                checkpoint[section] = _plain(checkpoint[section])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        from mmengine.logging import HistoryBuffer

        scalars = checkpoint.get("message_hub", {}).get("log_scalars", {})
        for key, buf in list(scalars.items()):
            if isinstance(buf, dict) and buf.get(_BUFFER_TAG):
                scalars[key] = HistoryBuffer(buf["log"].tolist(), buf["count"].tolist(), buf["max_length"])
