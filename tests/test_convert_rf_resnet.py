"""RF-ResNet through the converters: torchvision-style names plus an architecture record that rebuilds the same
network (same features), loaded by the DAVIS propagation's and the dense probe's load path; targets that build a
standard ResNet (mmseg, mmdet, detectron2) and timm-folder (whose config names a timm architecture) refuse it,
naming the architecture."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_pretrain_dict

from bam_dense.convert import ConversionError, convert, registry
from bam_dense.convert.sources import ARCH_RECORD
from bam_dense.encoders import FeatureExtractor, load_backbone
from bam_dense.models.backbones import create_backbone, features
from bam_dense.models.rf_resnet import PRESETS, receptive_field

ARCH = "rf29_resnet18"
THIN = {"widths": [8, 16, 32, 64], "stem_width": 8}  # the preset's layout at an eighth of its widths: a fast test


@pytest.fixture(scope="module")
def rf_checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A bam-dense BYOL checkpoint of one step with a (thin) rf29_resnet18 backbone, and its teacher backbone."""
    from bam_dense.core.config import load_config
    from bam_dense.engine.trainer import Trainer

    out = tmp_path_factory.mktemp("rf_run")
    raw = tiny_pretrain_dict(out, "byol", run={"max_steps": 1, "count_flops": False}, model={"arch": ARCH, "kwargs": dict(THIN)},
                            eval={"random_init_baseline": False, "knn": {"enabled": False}})
    raw["data"]["synthetic"]["num_images"] = raw["data"]["batch_size_per_gpu"]  # one step
    raw["data"]["views"] = {"kind": "two_view", "global_crops": 2, "global_size": 32, "local_crops": 0,
                            "global_scale": [0.4, 1.0]}
    head = {"layers": 2, "hidden_dim": 32, "out_dim": 16, "bn": True, "bias": False, "act": "relu"}
    raw["method"] = {"name": "byol", "projector": dict(head), "predictor": dict(head)}
    raw["optim"] = {"name": "sgd", "epochs": 1, "lr": 0.05, "warmup_epochs": 0, "weight_decay": 1e-4}
    trainer = Trainer(load_config(data=raw))
    trainer.train()
    return out / "checkpoints" / "last.pth", trainer.teacher.backbone.eval()


def _dense(backbone: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return features(backbone.eval(), x).dense


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_torchvision_target_has_torchvision_names_and_a_record_that_rebuilds_equal_features(rf_checkpoint, image,
                                                                                           tmp_path):
    import torchvision

    path, teacher = rf_checkpoint
    out = tmp_path / "rf29.pth"
    report = convert(path, "torchvision", out)
    saved = torch.load(out, weights_only=True)
    record, state = saved[ARCH_RECORD], saved["state_dict"]
    tv_names = {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}
    assert set(state) == tv_names  # the same names; 1x1 blocks and the stride-1 stem are what the record adds
    assert state["layer3.0.conv1.weight"].shape[-1] == 1  # a block without its 3x3
    assert record["arch"] == ARCH and record["receptive_field"] == 29 and record["output_stride"] == 16
    assert any("architecture record" in note for note in report.notes)
    rebuilt = create_backbone(record["arch"], record["kwargs"])
    rebuilt.load_state_dict(state)  # strict
    assert rebuilt.cfg == replace(PRESETS[ARCH], widths=tuple(THIN["widths"]), stem_width=THIN["stem_width"])
    torch.testing.assert_close(_dense(rebuilt, image), _dense(teacher, image), rtol=0, atol=0)


RF_TARGETS = [row for row in registry.TARGETS if row.rf_resnet]  # those that carry the architecture record
CNN_TARGETS = [row for row in registry.TARGETS if row.keymap("cnn") is not None]


def test_the_targets_carrying_the_record_are_torchvision_timm_and_safetensors():
    assert sorted(row.name for row in RF_TARGETS) == ["safetensors", "timm", "torchvision"]


@pytest.mark.parametrize("target", [row.name for row in RF_TARGETS])
def test_davis_and_dense_probe_load_the_converted_file(rf_checkpoint, image, tmp_path, target):
    path, teacher = rf_checkpoint
    out = tmp_path / f"rf29{registry.target(target).suffix}"
    convert(path, target, out)
    backbone = load_backbone(str(out), None, None, False)  # the DAVIS propagation's and `bam-dense probe`'s loader
    assert receptive_field(backbone.cfg) == 29
    torch.testing.assert_close(_dense(backbone, image), _dense(teacher, image), rtol=0, atol=0)
    extractor = FeatureExtractor(backbone, torch.device("cpu"))  # resnet_stage 4: the last stage, stride 16
    assert extractor.patch == 16
    torch.testing.assert_close(extractor(image), _dense(teacher, image), rtol=0, atol=0)


@pytest.mark.parametrize("target", [row.name for row in CNN_TARGETS if not row.rf_resnet])
def test_targets_that_cannot_express_an_rf_resnet_refuse_naming_it(rf_checkpoint, tmp_path, target):
    path, _ = rf_checkpoint
    row = registry.target(target)
    out = tmp_path / f"rf{row.suffix or '_folder'}"
    with pytest.raises(ConversionError, match=rf"target {target} cannot express {ARCH}, an RF-ResNet .*--to torchvision"):
        convert(path, target, out)
    assert not any(p.exists() for p in ([out / name for name in row.folder_files] if row.folder else [out]))


def test_rf_resnet_tensors_without_a_record_are_not_mistaken_for_a_resnet(rf_checkpoint, tmp_path):
    path, teacher = rf_checkpoint
    plain = tmp_path / "plain.pth"
    torch.save(teacher.state_dict(), plain)
    with pytest.raises(ConversionError, match=r"look like an RF-ResNet .*pass --arch"):
        convert(plain, "torchvision", tmp_path / "out.pth")
    with pytest.raises(ConversionError, match="shape mismatches"):  # the preset named, but these are thin
        convert(plain, "torchvision", tmp_path / "out.pth", arch=ARCH)
