"""Semantic segmentation through the real MMSegmentation Runner, on the synthetic ADE20K and VOC layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_pretrain_dict

from bam_dense.core.paths import bundled
from bam_dense.downstream import seg
from bam_dense.downstream.weight_check import PretrainedWeightsNotLoaded

CONFIGS = bundled("configs/mmseg", required=True)


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory) -> Path:
    """A bam-dense checkpoint of the tiny ViT the tiny seg config expects (96 wide, 4 blocks, 4 heads, patch 4)."""
    from bam_dense.core.config import load_config
    from bam_dense.engine.trainer import Trainer

    out = tmp_path_factory.mktemp("vit_run")
    cfg = tiny_pretrain_dict(out, run={"max_steps": 1}, model={
        "arch": "vit_small_patch16_224", "kwargs": {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 4}},
        data={"views": {"kind": "multicrop", "global_crops": 2, "global_size": 32, "local_crops": 0}})
    Trainer(load_config(data=cfg)).train()
    return out / "checkpoints" / "last.pth"


def _losses(runner) -> list[float]:
    return [float(v) for v in runner.message_hub.get_scalar("train/loss").data[0]]


def _assert_trained_and_scored(runner, work_dir: Path, config: Path, data_root: Path):
    losses = _losses(runner)
    assert losses and all(math.isfinite(v) for v in losses)
    check = json.loads((work_dir / "pretrained_weight_check.json").read_text())
    assert check["ok"] and check["checked"] > 0
    pretrained = torch.load(check["checkpoint"], weights_only=True)["state_dict"]
    backbone = runner.model.backbone.state_dict()
    changed = [k for k, v in pretrained.items() if k in backbone and not torch.equal(backbone[k].cpu(), v)]
    assert changed, "fine-tuning left every backbone tensor at its pretrained value"
    metrics = seg.test(str(config), str(work_dir / f"iter_{runner.train_loop.max_iters}.pth"), str(work_dir),
                       data_root=str(data_root))
    saved = json.loads((work_dir / "metrics.json").read_text())
    assert saved["metrics"]["mIoU"] == pytest.approx(float(metrics["mIoU"]))
    assert 0.0 <= saved["metrics"]["mIoU"] <= 100.0 and "aAcc" in saved["metrics"] and "mAcc" in saved["metrics"]
    assert len(saved["checkpoint_sha256"]) == 64 and saved["per_class_iou"]


def test_vit_upernet_on_synthetic_ade20k_trains_and_scores(vit_checkpoint, synthetic_root, tmp_path):
    config = CONFIGS / "tiny" / "upernet_vit_ade20k.py"
    data_root = synthetic_root / "ade20k" / "ADEChallengeData2016"
    runner = seg.train(str(config), str(vit_checkpoint), str(tmp_path), data_root=str(data_root))
    report = json.loads(next((tmp_path / "pretrained").glob("*.report.json")).read_text())
    assert report["target"] == "mmseg-mae" and report["coverage"].endswith("(100.0%)")
    _assert_trained_and_scored(runner, tmp_path, config, data_root)


def test_resnet_fcn_on_synthetic_voc_trains_and_scores(resnet_checkpoint, synthetic_root, tmp_path):
    config = CONFIGS / "tiny" / "fcn_r50-d8_voc12aug.py"
    data_root = synthetic_root / "voc" / "VOCdevkit" / "VOC2012"
    runner = seg.train(str(config), str(resnet_checkpoint), str(tmp_path), data_root=str(data_root))
    assert len(runner.train_dataloader.dataset) == 16  # train (8) + aug (8), as the recipe concatenates them
    _assert_trained_and_scored(runner, tmp_path, config, data_root)


def test_resnet_upernet_on_synthetic_ade20k_trains_twice_in_one_process_each_run_in_its_own_folder(
        resnet_checkpoint, synthetic_root, tmp_path):
    """The R50 UperNet trains (finite losses); a second fine-tune in the same process writes its curves into its own
    folder: mmengine hands a later runner the visualizer of an earlier one with the same name, and its folder, so the
    second run's scalars would land in the first run's vis_data (build_runner gives each runner its own)."""
    config = str(CONFIGS / "tiny" / "upernet_r50_ade20k.py")
    data_root = str(synthetic_root / "ade20k" / "ADEChallengeData2016")
    runner = seg.train(config, str(resnet_checkpoint), str(tmp_path / "first"), data_root=data_root)
    assert all(math.isfinite(v) for v in _losses(runner))
    (first,) = (tmp_path / "first").glob("*/vis_data/scalars.json")
    written = first.read_bytes()
    seg.train(config, str(resnet_checkpoint), str(tmp_path / "second"), data_root=data_root)
    (second,) = (tmp_path / "second").glob("*/vis_data/scalars.json")
    assert first.read_bytes() == written and second.read_bytes()


def test_weight_check_catches_a_v1c_backbone_given_a_torchvision_checkpoint(resnet_checkpoint, synthetic_root, tmp_path):
    config = CONFIGS / "tiny" / "fcn_r50-d8_voc12aug.py"
    with pytest.raises(PretrainedWeightsNotLoaded, match=r"kept their random initialisation: stem\.0\.weight"):
        seg.train(str(config), str(resnet_checkpoint), str(tmp_path), cfg_options=["model.backbone.type=ResNetV1c"],
                  data_root=str(synthetic_root / "voc" / "VOCdevkit" / "VOC2012"))


def test_weight_check_catches_a_wrong_prefix(resnet_checkpoint, synthetic_root, tmp_path):
    # a file written for mmdet (keys under 'backbone.') given to a backbone that loads without a prefix
    from bam_dense.convert import convert

    mmdet_file = tmp_path / "r50_mmdet.pth"
    convert(resnet_checkpoint, "mmdet", mmdet_file)
    with pytest.raises(PretrainedWeightsNotLoaded, match=r"conv1\.weight.*checkpoint tensors were not used: backbone\."):
        seg.train(str(CONFIGS / "tiny" / "fcn_r50-d8_voc12aug.py"), str(mmdet_file), str(tmp_path / "w"),
                  data_root=str(synthetic_root / "voc" / "VOCdevkit" / "VOC2012"))


def test_weight_check_catches_prefixed_vit_weights(vit_checkpoint, synthetic_root, tmp_path):
    # mmseg's ViT backbones ignore init_cfg.prefix: prefixed keys load nothing
    from bam_dense.convert import convert

    out = tmp_path / "vit.pth"
    convert(vit_checkpoint, "mmseg-mae", out, img_size=64)
    state = torch.load(out, weights_only=True)["state_dict"]
    prefixed = tmp_path / "prefixed.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, prefixed)
    with pytest.raises(PretrainedWeightsNotLoaded, match="cls_token"):
        seg.train(str(CONFIGS / "tiny" / "upernet_vit_ade20k.py"), str(prefixed), str(tmp_path / "w"),
                  data_root=str(synthetic_root / "ade20k" / "ADEChallengeData2016"))


def _cfg(name: str):
    from mmengine.config import Config

    return Config.fromfile(CONFIGS / name)


def test_vit_b16_recipe_settings_and_the_model_builds():
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    cfg = _cfg("upernet_vit-b16_ade20k-512x512_160k.py")
    b = cfg.model.backbone
    assert (b.type, b.embed_dims, b.num_layers, b.num_heads, b.out_indices, b.drop_path_rate) == ("MAE", 768, 12, 12, [3, 5, 7, 11], 0.1)
    assert b.img_size == (512, 512) and cfg.crop_size == (512, 512)
    assert cfg.optim_wrapper.constructor == "LayerDecayOptimizerConstructor"
    assert cfg.optim_wrapper.paramwise_cfg == dict(num_layers=12, layer_decay_rate=0.65)
    assert cfg.optim_wrapper.optimizer.type == "AdamW" and cfg.optim_wrapper.optimizer.lr == 1e-4
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.param_scheduler[0].end == 1500 and cfg.param_scheduler[1].end == 160000 and cfg.train_cfg.max_iters == 160000
    assert cfg.model.test_cfg == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs = 16
    assert cfg.model.auxiliary_head.type == "FCNHead" and cfg.model.decode_head.type == "UPerHead"
    assert cfg.model.decode_head.num_classes == 150
    register_all_modules()
    model = MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.backbone.parameters()) > 85e6


def test_vit_s16_r50_configs_and_the_models_build(tmp_path):
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    vits = _cfg("upernet_vit-s16_ade20k-512x512_160k.py")
    assert (vits.model.backbone.embed_dims, vits.model.backbone.num_heads, vits.model.neck.embed_dim) == (384, 12, 384)
    assert vits.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.65
    MODELS.build(vits.model)
    voc = _cfg("fcn_r50-d8_voc12aug-512x512_20k.py")
    b = voc.model.backbone
    assert (b.type, b.depth, b.dilations, b.strides, voc.norm_cfg.type) == ("ResNet", 50, (1, 1, 2, 4), (1, 2, 1, 1), "SyncBN")
    assert voc.train_cfg.max_iters == 20000 and voc.optim_wrapper.optimizer.lr == 0.01 and voc.model.test_cfg.mode == "whole"
    assert voc.model.decode_head.num_classes == 21
    # The train set keeps mmseg's full VOC + aug definitions (type, data_prefix, ann_file, pipeline of each member).
    reference = tmp_path / "voc_base.py"
    reference.write_text('_base_ = ["mmseg::_base_/datasets/pascal_voc12_aug.py"]\n')
    base_cfg = Config.fromfile(reference)
    base = base_cfg.train_dataloader.dataset.to_dict()
    ours = voc.train_dataloader.dataset.to_dict()
    assert ours["type"] == "ConcatDataset" and len(ours["datasets"]) == 2
    for mine, ref in zip(ours["datasets"], base["datasets"]):
        for key in ("type", "data_root", "data_prefix", "ann_file", "pipeline"):
            assert mine.get(key) == ref[key], (key, mine.get(key), ref[key])
    assert voc.val_dataloader.dataset.to_dict() == base_cfg.val_dataloader.dataset.to_dict()
    assert voc.crop_size == (512, 512) and voc.train_dataloader.batch_size == 4  # x 4 GPUs = 16
    MODELS.build(voc.model)
    ade = _cfg("upernet_r50_ade20k-512x512_160k.py")
    assert ade.model.backbone.type == "ResNet" and ade.train_cfg.max_iters == 160000 and ade.model.decode_head.num_classes == 150
    MODELS.build(ade.model)


def test_the_config_text_is_mmengines_and_formatted_once_per_content(monkeypatch):
    """mmengine runs yapf over the whole config at each use (log, visualizer, runtime info, dump, each checkpoint);
    load_config's configs format once per content, with mmengine's own result."""
    import copy
    import pickle
    from collections import OrderedDict

    import mmengine.config.config as mm_config
    from mmengine.config import Config

    from bam_dense.downstream import mm_config as format_cache
    from bam_dense.downstream.mm_common import load_config

    monkeypatch.setattr(format_cache, "_FORMATTED", OrderedDict())  # what this process formatted before
    path = str(CONFIGS / "tiny" / "fcn_r50-d8_voc12aug.py")
    cfg = load_config(path, ["train_cfg.max_iters=7"], "work", "none")
    reference = Config.fromfile(path)
    reference.merge_from_dict({"train_cfg.max_iters": 7})
    reference.work_dir, reference.launcher = "work", "none"
    calls = []
    real = mm_config.FormatCode
    monkeypatch.setattr(mm_config, "FormatCode", lambda *a, **k: calls.append(1) or real(*a, **k))
    expected = reference.pretty_text
    assert len(calls) == 1
    uses = [cfg.pretty_text for _ in range(4)] + [copy.deepcopy(cfg).pretty_text, pickle.loads(pickle.dumps(cfg)).pretty_text]
    assert all(text == expected for text in uses) and len(calls) == 2  # one more: this content's first use
    cfg.train_cfg.max_iters = 9  # a changed config is formatted again
    assert "max_iters=9" in cfg.pretty_text and len(calls) == 3
