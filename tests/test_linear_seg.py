"""Linear semantic segmentation on frozen features (the DINOv2/DINOv3 protocol) through MMSegmentation.

The network and the metric are the configs' own: the model is built from configs/mmseg/linear_vit_ade20k-512x512_40k.py
and scored with mmseg's IoUMetric. The end-to-end path on the synthetic ADE20K and VOC layouts (conversion,
weight check, ``seg train`` / ``seg test``) is the dry-run of these configs in tests/test_dryrun.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import REPO

from bam_dense.core.paths import bundled

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

CONFIGS = bundled("configs/mmseg", required=True)
LINEAR = CONFIGS / "linear_vit_ade20k-512x512_40k.py"
PALETTE = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]], dtype=torch.float32)
PATCH, BLOCK, SIZE = 16, 32, 64  # classes painted on 32-px blocks (2 x 2 patches) of 64-px images


def _config(options: dict | None = None):
    from mmengine.config import Config

    import bam_dense.downstream.mmseg_modules  # noqa: F401  (registers the modules)

    cfg = Config.fromfile(LINEAR)
    cfg.merge_from_dict(options or {})
    return cfg


def _build(cfg):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def _painted(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (0-255, RGB) whose 32-px blocks are painted with one of six colours, and the class map (0..5)."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, len(PALETTE), (n, SIZE // BLOCK, SIZE // BLOCK), generator=g)
    labels = classes.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)
    images = PALETTE[labels].permute(0, 3, 1, 2).contiguous()
    return images, labels


def _colour_encoder_checkpoint(path: Path, informative: bool = True) -> Path:
    """A one-block timm ViT-Ti/16 (timm layout) whose patch tokens are the patch's mean colour: the patch embedding
    averages each input channel into one token dimension, the position table and the block's branches are zero (the
    block is the identity), so after the final LayerNorm each painted class has its own token. ``informative=False`` zeroes
    the patch embedding and gives the position table random values instead: every patch token then depends on its
    position only, not on the image."""
    import timm

    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=1)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for key in ("norm.weight", "blocks.0.norm1.weight", "blocks.0.norm2.weight"):
        state[key] = torch.ones_like(state[key])
    if informative:
        for c in range(3):
            state["patch_embed.proj.weight"][c, c] = 1.0 / (PATCH * PATCH)
    else:
        state["pos_embed"] = torch.randn_like(state["pos_embed"])  # tokens depend on their position only
    state["cls_token"] = torch.randn_like(state["cls_token"])
    torch.save(state, path)
    return path


def _linear_model(checkpoint: Path):
    cfg = _config({"model.backbone.arch": "vit_tiny_patch16_224", "model.backbone.model_kwargs": {"depth": 1},
                   "model.backbone.init_cfg.checkpoint": str(checkpoint), "model.decode_head.in_channels": [192],
                   "model.decode_head.channels": 192, "model.decode_head.num_classes": len(PALETTE),
                   "model.data_preprocessor.size": (SIZE, SIZE),
                   "model.test_cfg.crop_size": (SIZE, SIZE), "model.test_cfg.stride": (SIZE, SIZE)})
    return _build(cfg), cfg


def _samples(labels: torch.Tensor):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    out = []
    for label in labels:
        sample = SegDataSample(gt_sem_seg=PixelData(data=label[None].long()))
        sample.set_metainfo({"img_shape": (SIZE, SIZE), "ori_shape": (SIZE, SIZE), "pad_shape": (SIZE, SIZE),
                             "scale_factor": (1.0, 1.0), "flip": False})
        out.append(sample)
    return out


STEPS, LR = 30, 1e-2  # 30 AdamW steps at 10x the recipe's lr: the head's capacity is under test, not the 40k schedule


def _train_and_score(checkpoint: Path) -> tuple[float, float]:
    """The config's head trained with AdamW (the recipe's betas and weight decay, constant lr) on painted images,
    then on other painted images: (share of patches whose grid-level prediction is the class painted there,
    mIoU of the full-resolution prediction by mmseg's IoUMetric)."""
    from mmseg.evaluation import IoUMetric

    model, cfg = _linear_model(checkpoint)
    opt = cfg.optim_wrapper.optimizer
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, betas=opt.betas,
                                  weight_decay=opt.weight_decay)
    model.train()
    for step in range(STEPS):
        images, labels = _painted(8, seed=step)
        data = model.data_preprocessor({"inputs": list(images.to(torch.uint8)[:, [2, 1, 0]]), "data_samples": _samples(labels)},
                                       training=True)  # the preprocessor takes BGR images, as mmcv loads them
        losses = model.loss(data["inputs"], data["data_samples"])
        optimizer.zero_grad()
        sum(v for k, v in losses.items() if "loss" in k).backward()
        optimizer.step()
    model.eval()
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": [f"c{i}" for i in range(len(PALETTE))]}
    images, labels = _painted(8, seed=1000)
    with torch.no_grad():
        data = model.data_preprocessor({"inputs": list(images.to(torch.uint8)[:, [2, 1, 0]]), "data_samples": _samples(labels)},
                                       training=False)
        grid = model.decode_head(model.backbone(data["inputs"])).argmax(1)  # N x 4 x 4: one class per patch
        predictions = model.predict(data["inputs"], data["data_samples"])
    patch_accuracy = (grid == labels[:, PATCH // 2::PATCH, PATCH // 2::PATCH]).float().mean().item()
    metric.process({}, [p.to_dict() for p in predictions])
    return patch_accuracy, metric.compute_metrics(metric.results)["mIoU"] / 100.0


def test_an_encoder_whose_patches_encode_the_painted_class_reaches_miou_1(tmp_path):
    patch_accuracy, miou = _train_and_score(_colour_encoder_checkpoint(tmp_path / "colour.pth"))
    assert patch_accuracy == 1.0  # every patch classified as the class painted there
    # At full resolution the tolerance is 0.95, not 1.0: the head's logits live on the 16-px patch grid and mmseg
    # upsamples them bilinearly to the label, so pixels within half a patch of a block edge get a blend of two
    # patches' logits and flip where one class's margin is larger; with 32-px blocks that band is a large share of
    # the pixels (measured: 0.962 here; 0.92-0.97 for other learning rates and 30-150 steps, every patch right).
    assert miou >= 0.95, miou


def test_an_encoder_that_sees_no_colour_stays_near_chance(tmp_path):
    # Six equally likely classes: guessing gives IoU about 1 / (2 * 6 - 1) = 0.09 per class; features that carry
    # only the patch position cannot do better on classes drawn at random per block.
    patch_accuracy, miou = _train_and_score(_colour_encoder_checkpoint(tmp_path / "blind.pth", informative=False))
    assert patch_accuracy <= 0.35 and miou <= 0.25, (patch_accuracy, miou)


def test_the_encoder_stays_frozen_and_the_head_is_batchnorm_then_1x1(tmp_path):
    model, _ = _linear_model(_colour_encoder_checkpoint(tmp_path / "colour.pth"))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["decode_head.bn.bias", "decode_head.bn.weight", "decode_head.conv_seg.bias", "decode_head.conv_seg.weight"]
    assert model.decode_head.conv_seg.kernel_size == (1, 1) and model.decode_head.conv_seg.in_channels == 192
    assert isinstance(model.decode_head.bn, torch.nn.modules.batchnorm._BatchNorm)
    model.train()
    assert model.decode_head.training and not model.backbone.encoder.training  # no dropout / drop path in the encoder
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)  # every parameter handed over: the frozen ones get no grad
    images, labels = _painted(2, seed=0)
    data = model.data_preprocessor({"inputs": list(images.to(torch.uint8)), "data_samples": _samples(labels)}, training=True)
    sum(v for k, v in model.loss(data["inputs"], data["data_samples"]).items() if "loss" in k).backward()
    optimizer.step()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    # forward order: BatchNorm on the features, then the 1x1 conv (dropout is off in eval mode)
    model.eval()
    feats = model.backbone(data["inputs"])
    head = model.decode_head
    assert torch.allclose(head(feats), head.conv_seg(head.bn(feats[0])), atol=1e-6)


@pytest.mark.parametrize(("arch", "kwargs", "prefix"), [
    ("vit_small_patch14_reg4_dinov2", {"depth": 1, "img_size": 56}, 5),  # class token + 4 registers
    ("vit_small_patch16_dinov3", {"depth": 1}, 5),  # DINOv3 (RoPE): class token + 4 storage tokens
    ("vit_small_patch16_224", {"depth": 2}, 1),
])
def test_prefix_tokens_are_never_taken_as_patches(arch, kwargs, prefix):
    from bam_dense.downstream.mmseg_modules import FrozenTimmEncoder

    torch.manual_seed(0)
    encoder = FrozenTimmEncoder(arch, kwargs)
    assert encoder.encoder.num_prefix_tokens == prefix
    x = torch.randn(1, 3, 64, 96)  # 4 x 6 patches at patch 16; padded to 70 x 98 (5 x 7 patches) at patch 14
    (dense,) = encoder(x)
    from bam_dense.downstream.mmseg_modules import center_pad

    padded = center_pad(x, encoder.patch_size)
    h, w = padded.shape[-2] // encoder.patch_size, padded.shape[-1] // encoder.patch_size
    tokens = encoder.encoder.forward_features(padded)  # every token, after the final norm
    assert tokens.shape[1] == prefix + h * w
    assert dense.shape == (1, encoder.encoder.embed_dim, h, w)
    assert torch.allclose(dense.flatten(2).transpose(1, 2), tokens[:, prefix:], atol=1e-5)


def test_patch14_inputs_are_centre_padded_as_dinov2_does():
    from bam_dense.downstream.mmseg_modules import center_pad

    x = torch.ones(1, 3, 512, 500)
    padded = center_pad(x, 14)
    assert padded.shape[-2:] == (518, 504)  # 37 x 36 patches
    assert padded[0, 0, :3].abs().sum() == 0 and padded[0, 0, 3:515, :2].abs().sum() == 0
    assert padded[0, 0, 3:515, 2:502].min() == 1 and padded[0, 0, 515:].abs().sum() == 0
    assert center_pad(torch.ones(1, 3, 512, 512), 16).shape[-2:] == (512, 512)


def test_the_schedule_is_dinov3s_warm_up_then_cosine():
    """The config's warm-up x cosine (mmengine's LinearLR and CosineAnnealingLR from iteration 0) against DINOv3's
    WarmupOneCycleLR as its schedulers.py states it (pct_start 0, final_div_factor inf, warmup_ratio 1e-6): after
    the warm-up the same cosine (DINOv3 evaluates it one iteration later: 0.2 % apart at 39k); during the warm-up
    DINOv3 multiplies by (1 - it/40000) where the config multiplies by the cosine, at most 3.6 % apart (DINOv3's
    lr jumps up by that much at iteration 1500)."""
    from mmengine.registry import PARAM_SCHEDULERS

    cfg = _config()
    lr, total, warm = cfg.optim_wrapper.optimizer.lr, cfg.train_cfg.max_iters, 1500
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer)) for s in cfg.param_scheduler]
    ours = []
    for _ in range(total):
        ours.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient: nothing changes, but the schedulers see the order they expect
        for s in schedulers:
            s.step()

    def dinov3(it: int) -> float:
        if it < warm:
            return lr * (1 - (1 - it / warm) * (1 - 1e-6)) * (1 - it / total)
        return lr * (1 + math.cos(math.pi * (it + 1) / total)) / 2

    for it in (0, 10, 750, 1499):
        assert ours[it] == pytest.approx(dinov3(it), rel=0.037, abs=1e-12), it
    for it in (1500, 5000, 20000, 39000):
        assert ours[it] == pytest.approx(dinov3(it), rel=3e-3), it


def test_the_linear_configs_are_the_dinov3_recipe_and_the_ms_option_is_not():
    from mmengine.config import Config

    from bam_dense.bench.published import RECIPES
    from bam_dense.bench.report import recipe_check
    from bam_dense.downstream.mm_common import resolved_config

    recipe = RECIPES["dinov3-linear-seg"]
    for name in ("linear_vit_ade20k-512x512_40k.py", "linear_vit_voc12aug-512x512_40k.py"):
        assert recipe_check(recipe, [resolved_config(Config.fromfile(CONFIGS / name))])[0], name
    ms = _config({"model.backbone.out_indices": [-4, -3, -2, -1], "test_time_aug": True})
    same, words = recipe_check(recipe, [resolved_config(ms)])
    assert not same and "model.backbone.out_indices" in words
    same, words = recipe_check(RECIPES["ibot-linear-seg"], [resolved_config(Config.fromfile(LINEAR))])
    assert not same and "model.decode_head.type" in words and "train_cfg.max_iters" in words


def test_the_ms_option_tests_through_mmseg_test_time_aug_at_multiples_of_the_512_short_side():
    from bam_dense.downstream.seg import with_test_time_aug

    plain = _config()
    assert with_test_time_aug(plain) is plain  # test_time_aug False: the segmentor itself
    ms = _config({"test_time_aug": True})
    run = with_test_time_aug(ms)
    assert run.model.type == "SegTTAModel" and run.model.module.backbone.type == "FrozenTimmEncoder"
    assert run.test_dataloader.dataset.pipeline == ms.tta_pipeline
    assert ms.model.type == "EncoderDecoder" and ms.test_dataloader.dataset.pipeline != ms.tta_pipeline  # left as written
    resizes = ms.tta_pipeline[1].transforms[0]
    assert [tuple(r.scale) for r in resizes] == [(int(2048 * r), int(512 * r)) for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]
    assert [f.prob for f in ms.tta_pipeline[1].transforms[1]] == [0.0, 1.0]
    from mmengine.config import Config

    voc = Config.fromfile(CONFIGS / "linear_vit_voc12aug-512x512_40k.py")
    assert voc.tta_pipeline[1].transforms[2][0] == {"type": "LoadAnnotations"}  # VOC keeps label 0 (background)


def test_the_checkpoint_gives_the_encoder_its_architecture_and_the_head_its_width():
    from bam_dense.core.errors import UserFacingError
    from bam_dense.downstream.mm_common import adopt_encoder

    cfg = _config()
    adopt_encoder(cfg, "vit_base_patch14_reg4_dinov2", {"img_size": 518}, "ckpt")
    assert (cfg.model.backbone.arch, cfg.model.backbone.model_kwargs) == ("vit_base_patch14_reg4_dinov2", {"img_size": 518})
    assert (cfg.model.decode_head.in_channels, cfg.model.decode_head.channels) == ([768], 768)
    assert cfg.model.backbone.pos_resample is None  # no rule given: the encoder keeps timm's
    adopt_encoder(cfg, "vit_base_patch14_reg4_dinov2", {"img_size": 518}, "ckpt", "dinov2-reg")
    assert cfg.model.backbone.pos_resample == "dinov2-reg"
    ms = _config({"model.backbone.out_indices": [-4, -3, -2, -1]})  # the "+ms" option
    adopt_encoder(ms, "vit_small_patch16_224", {}, "ckpt")
    assert (ms.model.decode_head.in_channels, ms.model.decode_head.in_index, ms.model.decode_head.channels) == (
        [384] * 4, [0, 1, 2, 3], 1536)
    fixed = _config({"model.backbone.arch": "vit_small_patch16_224"})
    with pytest.raises(UserFacingError, match="are 'vit_small_patch16_224' / {} in the config but ckpt holds 'vit_base_patch16_224'"):
        adopt_encoder(fixed, "vit_base_patch16_224", {}, "ckpt")


@pytest.mark.parametrize(("source", "name", "arch", "rule"), [
    ("dinov2", "reg4", "vit_small_patch14_reg4_dinov2", "dinov2-reg"),  # DINOv2's own resampling, hub settings
    ("dinov3", "nobias", "vit_small_patch16_dinov3", "rope"),  # RoPE: no table
])
def test_public_checkpoints_take_the_linear_config_and_give_their_own_patch_features(source, name, arch, rule, tmp_path):
    """DINOv2 (registers) and DINOv3 (RoPE, storage tokens) checkpoints written by their own code
    (tests/fixtures/make_dinov{2,3}_official_fixture.py): `seg train`'s preparation converts them, gives the config
    their architecture, their source's position-table rule and the head its width; the built segmentor's encoder
    holds every tensor (the pretrained-weight check) and returns the official code's normed patch tokens at every
    recorded size, the table's own and another."""
    from bam_dense.downstream.mm_common import SEG_TARGETS, prepare_pretrained
    from bam_dense.downstream.weight_check import check_backbone

    record = torch.load(REPO / "tests" / "fixtures" / f"{source}_official.pt", weights_only=True)[name]
    src = tmp_path / f"{source}_{name}.pth"
    torch.save(record["checkpoint"], src)
    cfg = _config()
    cfg.work_dir = str(tmp_path / "work")
    path, _ = prepare_pretrained(cfg, str(src), SEG_TARGETS)
    assert cfg.model.backbone.arch == arch and cfg.model.decode_head.in_channels == [64]
    assert cfg.model.backbone.pos_resample == rule
    model = _build(cfg)
    check = check_backbone(model.backbone, path)
    assert check.ok and check.checked == len(model.backbone.state_dict())
    model.eval()
    assert len(record["inputs"]) == 2
    for tag in record["inputs"]:
        (dense,) = model.backbone(record["inputs"][tag])
        torch.testing.assert_close(dense.flatten(2).transpose(1, 2), record["outputs"][tag]["patch"], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dropout_first", [True, False], ids=["dinov3", "dinov2"])
def test_head_order_is_dinov3s_by_default_and_dinov2s_on_request(dropout_first):
    """DINOv3 linear_head.py: Dropout2d -> BatchNorm -> 1x1 conv; DINOv2 BNHead: BatchNorm -> (cls_seg) dropout -> conv."""
    from bam_dense.downstream.mmseg_modules import BNLinearHead

    head = BNLinearHead(dropout_first=dropout_first, in_channels=[8], in_index=[0], channels=8, num_classes=3,
                        dropout_ratio=0.5, norm_cfg=dict(type="BN")).train()
    x = torch.randn(2, 8, 4, 4)
    torch.manual_seed(0)
    got = head([x])
    torch.manual_seed(0)
    expected = (head.conv_seg(head.bn(head.dropout(x))) if dropout_first else head.conv_seg(head.dropout(head.bn(x))))
    torch.testing.assert_close(got, expected)
    torch.manual_seed(0)
    other = (head.conv_seg(head.dropout(head.bn(x))) if dropout_first else head.conv_seg(head.bn(head.dropout(x))))
    assert (got - other).abs().max() > 1e-3  # the order matters in training
    assert _config().model.decode_head.get("dropout_first", True)  # the configs: DINOv3's order


def test_the_linear_recipe_has_dinov3s_batch_gpus_and_hue_range(tmp_path):
    """DINOv3 config-ade20k-linear-training.yaml (6876159): bs 2 per GPU, n_gpus 8; transforms.py PhotoMetricDistortion:
    hue factor uniform in (-0.5, 0.5) of the circle = mmseg hue_delta 90 of OpenCV's 180; the rest is mmseg's ADE20K
    base pipeline."""
    from mmengine.config import Config

    for name in ("linear_vit_ade20k-512x512_40k.py", "linear_vit_voc12aug-512x512_40k.py"):
        cfg = Config.fromfile(CONFIGS / name)
        assert cfg.train_dataloader.batch_size * 8 == 16, name  # 2 per GPU x DINOv3's 8 GPUs
        dataset = cfg.train_dataloader.dataset
        pipelines = [d.pipeline for d in dataset.datasets] if "datasets" in dataset else [dataset.pipeline]
        for pipeline in pipelines:
            (photo,) = [t for t in pipeline if t["type"] == "PhotoMetricDistortion"]
            assert photo["hue_delta"] * 2 / 180 == 1.0, name  # the whole hue circle, as DINOv3's (-0.5, 0.5)
    reference = tmp_path / "reference.py"  # mmseg's own ADE20K base, read as a config inheriting it reads it
    reference.write_text('_base_ = ["mmseg::_base_/datasets/ade20k.py"]\n')
    base = Config.fromfile(reference).train_pipeline
    ours = Config.fromfile(LINEAR).train_dataloader.dataset.pipeline
    base = [{k: v for k, v in t.items() if k != "_scope_"} for t in base]  # mmengine tags what it read via mmseg::
    assert [dict(t, hue_delta=90) if t["type"] == "PhotoMetricDistortion" else t for t in base] == ours


def test_mmseg_hue_delta_90_spans_the_hue_circle():
    """mmseg's PhotoMetricDistortion shifts OpenCV's 0-180 hue by an integer in [-hue_delta, hue_delta]."""
    import numpy as np
    from mmseg.datasets.transforms import PhotoMetricDistortion

    t = PhotoMetricDistortion(hue_delta=90)
    img = np.zeros((1, 1, 3), np.uint8)
    img[..., 2] = 255  # pure red in BGR: hue 0
    import mmcv

    shifts = set()
    np.random.seed(0)
    for _ in range(400):
        hue = int(mmcv.bgr2hsv(t.hue(img.copy()))[0, 0, 0])
        shifts.add(hue)
    assert max(shifts) >= 170 and any(60 <= h <= 120 for h in shifts)  # far beyond the default's 18
