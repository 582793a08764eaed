"""Public encoders in: each source layout is detected, rebuilt as timm defines it, and gives the source's features.

DINOv2 and DINOv3 are checked against their own code (``fixtures/dinov{2,3}_official.pt``, see their scripts); the other layouts are
built from timm's definition of the architecture and saved under the source's own key names (read from the
official code: iBOT ``main_ibot.py``/``models/vision_transformer.py``, MAE ``models_mae.py``, MoCo v3
``moco/builder.py``/``vits.py``, DeiT ``main.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from bam_dense.convert import convert, load_source, report_path
from bam_dense.convert.sources import detect_format, resolve_pos_resample
from bam_dense.models.backbones import create_backbone, features

DINOV2 = torch.load(Path(__file__).parent / "fixtures" / "dinov2_official.pt", weights_only=True)
DINOV3 = torch.load(Path(__file__).parent / "fixtures" / "dinov3_official.pt", weights_only=True)


def randomised(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm model in eval mode whose tokens, position table and LayerScale gammas are random too."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=0, **kwargs).eval()
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith("gamma") or key.endswith("_token") or key == "pos_embed":
                param.normal_()
    return model


def assert_official_features(model, record: dict, patch: int, pos_resample: str | None = None) -> None:
    """``features`` of each recorded input: one cell per patch (no prefix token taken for a patch), and the patch
    and class tokens the official code gave."""
    for tag, x in record["inputs"].items():
        expected = record["outputs"][tag]
        got = features(model, x, pos_resample=pos_resample)
        assert got.dense.shape == (1, 64, x.shape[-2] // patch, x.shape[-1] // patch)
        assert_official_patches(got.dense, record, tag)
        torch.testing.assert_close(got.pooled, expected["cls"], atol=2e-5, rtol=1e-4)


def converted_official(records: dict, name: str, layout: str, tmp_path: Path):
    """The official checkpoint ``records[name]``, detected as ``layout``, converted to timm and loaded; the record too."""
    record = records[name]
    src = tmp_path / f"{layout}_{name}.pth"
    torch.save(record["checkpoint"], src)
    assert detect_format(record["checkpoint"]) == layout
    return (record, *converted_model(src, tmp_path))


def protocol_extractor(record: dict, path: Path):
    """The official checkpoint saved at ``path``, loaded by the protocols' loader (CPU)."""
    from bam_dense.encoders import load_extractor

    torch.save(record["checkpoint"], path)
    return load_extractor(str(path), None, None, False, torch.device("cpu"))


def assert_official_patches(dense: torch.Tensor, record: dict, tag: str) -> None:
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), record["outputs"][tag]["patch"], atol=2e-5, rtol=1e-4)


def converted_model(src: Path, tmp_path: Path, **kwargs):
    """``convert`` to timm, then the converted file loaded strictly into the architecture the report names."""
    out = tmp_path / "out_timm.pth"
    report = convert(src, "timm", out, **kwargs)
    model = create_backbone(report.arch, report.model_kwargs, pos_embed="learned").eval()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    return model, report, json.loads(report_path(out, "timm").read_text())


def dropped(report_json: dict) -> dict[str, str]:
    return dict(report_json["dropped"])


# ---------------------------------------------------------------------------- DINOv2 (its own code)
@pytest.mark.parametrize("name", ["plain", "reg4"])
def test_dinov2_gives_dinov2s_own_features_at_the_table_size_and_resampled(name, tmp_path):
    record, model, report, rep = converted_official(DINOV2, name, "dinov2", tmp_path)
    n_reg = 4 if name == "reg4" else 0
    assert report.arch == ("vit_small_patch14_reg4_dinov2" if n_reg else "vit_small_patch14_dinov2")
    assert report.model_kwargs == {"embed_dim": 64, "num_heads": 1, "depth": 1 + (name == "reg4"), "img_size": 56}
    assert model.num_prefix_tokens == 1 + n_reg and all(f"blocks.{i}.ls1.gamma" in rep["filled"] for i in range(len(model.blocks)))
    mask_key = "teacher.backbone.mask_token" if n_reg else "mask_token"
    assert "mask token" in dropped(rep)[mask_key] and "training only" in dropped(rep)[mask_key]
    if n_reg:
        assert dropped(rep)["teacher.dino_head.mlp.0.weight"] == "pretraining head"
        assert dropped(rep)["teacher.ibot_head.mlp.0.weight"] == "pretraining head"
    mode = resolve_pos_resample("auto", report.pos_resample)
    assert mode == ("dinov2-reg" if n_reg else "dinov2")  # the hub's settings differ with registers
    assert_official_features(model, record, 14, mode)  # one cell per patch: no register taken for a patch


def test_dinov2_with_registers_loads_through_the_protocols_loader(tmp_path):
    record = DINOV2["reg4"]
    extractor = protocol_extractor(record, tmp_path / "dinov2_reg4_teacher.pth")
    assert extractor.backbone.num_prefix_tokens == 5 and extractor.pos_resample == "dinov2-reg"
    dense = extractor(record["inputs"]["other_70x84"])
    assert dense.shape == (1, 64, 5, 6)
    assert_official_patches(dense, record, "other_70x84")


def test_timm_named_dinov2_is_inferred_as_the_dinov2_architecture(tmp_path):
    model = randomised("vit_small_patch14_reg4_dinov2", depth=1, img_size=56)
    src = tmp_path / "timm_dinov2.pth"
    torch.save(model.state_dict(), src)
    loaded, report, _ = converted_model(src, tmp_path)
    assert report.source_format == "timm" and report.arch == "vit_small_patch14_reg4_dinov2"
    x = torch.randn(2, 3, 56, 56)
    torch.testing.assert_close(features(loaded, x).dense, features(model, x).dense)


def test_dinov2_layerscale_and_registers_are_never_dropped_for_mmseg(tmp_path):
    from bam_dense.convert import ConversionError

    plain, reg = tmp_path / "plain.pth", tmp_path / "reg4.pth"
    torch.save(DINOV2["plain"]["checkpoint"], plain)
    torch.save(DINOV2["reg4"]["checkpoint"], reg)
    with pytest.raises(ConversionError, match=r"no place for 2 tensors.*blocks\.0\.ls1\.gamma.*mmseg-mae keeps it"):
        convert(plain, "mmseg", tmp_path / "plain_mmseg.pth")  # mmseg's VisionTransformer has no LayerScale (dinov2#65)
    assert not (tmp_path / "plain_mmseg.pth").exists()
    assert json.loads(report_path(tmp_path / "plain_mmseg.pth", "mmseg").read_text())["status"] == "failed"
    report = convert(plain, "mmseg-mae", tmp_path / "plain_mae.pth")
    assert ["blocks.0.ls1.gamma", "layers.0.gamma_1"] in report.mapped
    for target in ("mmseg", "mmseg-mae"):
        with pytest.raises(ConversionError, match="pos_embed .no class-token row.*reg_token"):
            convert(reg, target, tmp_path / f"reg_{target}.pth")


# ---------------------------------------------------------------------------- DINOv3 (its own code)
@pytest.mark.parametrize("name", ["qkvb", "nobias"])
def test_dinov3_gives_dinov3s_own_features_through_timms_rope_vit(name, tmp_path):
    record, model, report, rep = converted_official(DINOV3, name, "dinov3", tmp_path)
    assert report.arch == ("vit_small_patch16_dinov3_qkvb" if name == "qkvb" else "vit_small_patch16_dinov3")
    assert report.model_kwargs == {"global_pool": "token", "embed_dim": 64, "num_heads": 1, "depth": 2 if name == "qkvb" else 1}
    assert model.num_prefix_tokens == 5 and "blocks.0.gamma_1" in rep["filled"]
    prefix = "" if name == "qkvb" else "teacher.backbone."
    reasons = dropped(rep)
    assert "mask token" in reasons[prefix + "mask_token"] and "training only" in reasons[prefix + "mask_token"]
    assert "RoPE periods" in reasons[prefix + "rope_embed.periods"]
    assert "key bias" in reasons[prefix + "blocks.0.attn.qkv.bias_mask"]
    if name == "nobias":
        assert "all-zero" in reasons["teacher.backbone.blocks.0.attn.qkv.bias"]
        assert reasons["teacher.dino_head.mlp.0.weight"] == "pretraining head"
    else:
        assert "blocks.1.attn.q_bias" in rep["filled"] and "blocks.1.attn.v_bias" in rep["filled"]
    assert_official_features(model, record, 16)  # no storage token taken for a patch


def test_dinov3_loads_through_the_protocols_loader(tmp_path):
    record = DINOV3["nobias"]
    extractor = protocol_extractor(record, tmp_path / "dinov3_teacher_checkpoint.pth")
    assert extractor.kind == "eva" and extractor.patch == 16
    dense = extractor(record["inputs"]["wide_48x80"])
    assert dense.shape == (1, 64, 3, 5)
    assert_official_patches(dense, record, "wide_48x80")


# ---------------------------------------------------------------------------- registers in features()
def test_dense_features_skip_every_prefix_token_of_a_register_model():
    model = randomised("vit_small_patch14_reg4_dinov2", depth=1, img_size=56, dynamic_img_size=True)
    assert model.num_prefix_tokens == 5
    for size, mode in (((56, 56), "timm"), ((70, 84), "timm"), ((70, 84), "dino")):
        x = torch.randn(2, 3, *size)
        out = features(model, x, pos_resample=mode)
        h, w = size[0] // 14, size[1] // 14
        assert out.dense.shape == (2, 384, h, w)
        if mode == "timm":
            tokens = model.forward_features(x)
            torch.testing.assert_close(out.dense.flatten(2).transpose(1, 2), tokens[:, 5:])
            torch.testing.assert_close(out.pooled, tokens[:, 0])


# ---------------------------------------------------------------------------- iBOT
def ibot_checkpoint(model: torch.nn.Module) -> dict:
    """iBOT's ``checkpoint.pth``: MultiCropWrapper(backbone, iBOTHead) state dicts, the student under DDP's ``module.``,
    the student backbone with its ``masked_embed``, heads with ``last_layer2`` for patch tokens."""
    backbone = model.state_dict()
    head = {"head.mlp.0.weight": torch.randn(32, 384), "head.mlp.0.bias": torch.zeros(32),
            "head.last_layer.weight_g": torch.ones(16, 1), "head.last_layer.weight_v": torch.randn(16, 32),
            "head.last_layer2.weight_g": torch.ones(16, 1), "head.last_layer2.weight_v": torch.randn(16, 32)}
    teacher = {**{f"backbone.{k}": v for k, v in backbone.items()}, **head}
    student = {f"module.{k}": v.clone() + 1 for k, v in teacher.items()}
    student["module.backbone.masked_embed"] = torch.zeros(1, 384)
    return {"student": student, "teacher": teacher, "epoch": 3, "ibot_loss": {"center": torch.zeros(1, 16)}}


def test_ibot_teacher_converts_and_gives_its_features(tmp_path):
    model = randomised("vit_small_patch16_224", depth=2)
    src = tmp_path / "ibot_checkpoint.pth"
    torch.save(ibot_checkpoint(model), src)
    loaded, report, rep = converted_model(src, tmp_path)
    assert report.source_format == "ibot" and report.which == "teacher"
    assert report.arch == "vit_small_patch16_224" and report.model_kwargs == {"depth": 2}
    assert dropped(rep)["student.module.backbone.masked_embed"] == "student copy"
    assert dropped(rep)["teacher.head.last_layer2.weight_v"] == "pretraining head"
    assert report.pos_resample == "dino"  # DINO's interpolate_pos_encoding, unchanged in iBOT
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(features(loaded, x).dense, features(model, x).dense)


def test_ibot_student_drops_its_masked_embed_with_the_reason(tmp_path):
    model = randomised("vit_small_patch16_224", depth=1)
    src = tmp_path / "ibot_checkpoint.pth"
    torch.save(ibot_checkpoint(model), src)
    source = load_source(src, which="student")
    assert "masked_embed" not in source.backbone
    assert "mask token" in dict(source.dropped)["student.backbone.masked_embed"]
    assert torch.equal(source.backbone["blocks.0.attn.qkv.weight"], model.state_dict()["blocks.0.attn.qkv.weight"] + 1)


# ---------------------------------------------------------------------------- MAE
def test_mae_pretraining_checkpoint_drops_the_decoder_and_gives_the_encoders_features(tmp_path):
    model = randomised("vit_base_patch16_224", depth=1)
    decoder = {"mask_token": torch.zeros(1, 1, 64), "decoder_embed.weight": torch.randn(64, 768), "decoder_embed.bias": torch.zeros(64),
               "decoder_pos_embed": torch.zeros(1, 197, 64), "decoder_blocks.0.norm1.weight": torch.ones(64),
               "decoder_norm.weight": torch.ones(64), "decoder_pred.weight": torch.randn(768, 64), "decoder_pred.bias": torch.zeros(768)}
    src = tmp_path / "mae_visualize_vit_base.pth"
    torch.save({"model": {**model.state_dict(), **decoder}}, src)
    loaded, report, rep = converted_model(src, tmp_path)
    assert report.source_format == "mae" and report.arch == "vit_base_patch16_224"
    reasons = dropped(rep)
    assert reasons["decoder_blocks.0.norm1.weight"] == "MAE decoder (pretraining only)"
    assert "mask token" in reasons["mask_token"]
    assert report.pos_resample == "deit"  # MAE's interpolate_pos_embed (DeiT's lines)
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(features(loaded, x).pooled, features(model, x).pooled)


# ---------------------------------------------------------------------------- MoCo v3
def test_mocov3_vit_small_takes_the_base_encoder_with_12_heads(tmp_path):
    model = randomised("vit_small_patch16_224", depth=1, num_heads=12)
    enc = model.state_dict()
    projector = {"head.0.weight": torch.randn(32, 384), "head.1.weight": torch.ones(32), "head.1.running_mean": torch.zeros(32)}
    state = {**{f"module.base_encoder.{k}": v for k, v in {**enc, **projector}.items()},
             **{f"module.momentum_encoder.{k}": v + 1 for k, v in {**enc, **projector}.items()},
             "module.predictor.0.weight": torch.randn(32, 32)}
    src = tmp_path / "vit-s-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": state, "optimizer": {}}, src)
    loaded, report, rep = converted_model(src, tmp_path)
    assert report.source_format == "mocov3" and report.which == "student"
    assert report.model_kwargs == {"num_heads": 12, "depth": 1}
    reasons = dropped(rep)  # reported without DDP's module. wrapper
    assert reasons["base_encoder.head.0.weight"] == "projector (pretraining head)"
    assert reasons["momentum_encoder.blocks.0.norm1.weight"] == "momentum encoder copy"
    assert reasons["predictor.0.weight"] == "predictor (pretraining head)"
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(features(loaded, x).dense, features(model, x).dense)
    assert load_source(src, which="teacher").backbone["cls_token"].equal(enc["cls_token"] + 1)


def test_mocov3_conv_stem_vit_is_refused_with_the_reason(tmp_path):
    """MoCo v3's vit_conv_small: patch_embed.proj is a Sequential of 3x3 convolutions and BatchNorms (vits.py ConvStem),
    which no timm ViT builds: refused naming it, not a KeyError."""
    from bam_dense.convert.sources import ConversionError

    model = randomised("vit_small_patch16_224", depth=1, num_heads=12)
    enc = {k: v for k, v in model.state_dict().items() if not k.startswith("patch_embed.")}
    stem = {"patch_embed.proj.0.weight": torch.randn(48, 3, 3, 3), "patch_embed.proj.1.weight": torch.ones(48),
            "patch_embed.proj.1.running_mean": torch.zeros(48), "patch_embed.proj.12.weight": torch.randn(384, 384, 1, 1)}
    src = tmp_path / "vit-conv-s.pth.tar"
    torch.save({"state_dict": {f"module.base_encoder.{k}": v for k, v in {**enc, **stem}.items()}}, src)
    with pytest.raises(ConversionError, match=r"convolutional stem \(vit_conv_small / vit_conv_base"):
        load_source(src)


def test_mocov3_resnet50_drops_the_projector_fc(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    enc = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    projector = {"fc.0.weight": torch.randn(32, 2048), "fc.1.weight": torch.ones(32)}
    state = {**{f"module.base_encoder.{k}": v for k, v in {**enc, **projector}.items()},
             **{f"module.momentum_encoder.{k}": v for k, v in {**enc, **projector}.items()},
             "module.predictor.0.weight": torch.randn(32, 32)}
    src = tmp_path / "r-50-1000ep.pth.tar"
    torch.save({"epoch": 1000, "arch": "resnet50", "state_dict": state}, src)
    loaded, report, rep = converted_model(src, tmp_path)
    assert report.source_format == "mocov3" and report.arch == "resnet50"
    assert dropped(rep)["base_encoder.fc.0.weight"] == "projector (pretraining head)"
    x = torch.randn(1, 3, 64, 64)
    body = torch.nn.Sequential(*list(model.children())[:-2])
    torch.testing.assert_close(features(loaded, x).dense, body(x))


# ---------------------------------------------------------------------------- DeiT (supervised)
@pytest.mark.parametrize("arch", ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_deit_checkpoint_drops_its_classifiers_and_gives_its_features(arch, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(arch, depth=1).eval()  # with its classifier(s), as DeiT's main.py saves {"model": ...}
    src = tmp_path / "deit.pth"
    torch.save({"model": model.state_dict(), "epoch": 299}, src)
    loaded, report, rep = converted_model(src, tmp_path)
    assert report.source_format == "timm"
    assert report.arch == ("deit_tiny_distilled_patch16_224" if "distilled" in arch else "vit_tiny_patch16_224")
    assert dropped(rep)["head.weight"] == "classifier"
    if "distilled" in arch:
        assert dropped(rep)["head_dist.weight"] == "classifier" and loaded.num_prefix_tokens == 2
    x = torch.randn(1, 3, 224, 224)
    ref = model.forward_features(x)
    out = features(loaded, x)
    assert out.dense.shape == (1, 192, 14, 14)
    torch.testing.assert_close(out.dense.flatten(2).transpose(1, 2), ref[:, model.num_prefix_tokens:])


def test_dino_resampling_keeps_deits_distillation_token():
    model = randomised("deit_tiny_distilled_patch16_224", depth=1, dynamic_img_size=True)
    x = torch.randn(1, 3, 224, 224)  # the table's own grid: DINO's way uses it as is, as timm does
    torch.testing.assert_close(features(model, x, pos_resample="dino").dense, features(model, x).dense)


# ---------------------------------------------------------------------------- DINO (ViT-S/8, ResNet-50)
def dino_checkpoint(backbone: dict) -> dict:
    head = {"head.mlp.0.weight": torch.randn(32, 8), "head.last_layer.weight_v": torch.randn(16, 32)}
    teacher = {**{f"backbone.{k}": v for k, v in backbone.items()}, **head}
    return {"student": {f"module.{k}": v + 1 for k, v in teacher.items()}, "teacher": teacher, "epoch": 1}


def test_dino_vit_small_patch8_teacher(tmp_path):
    model = randomised("vit_small_patch8_224", depth=1, dynamic_img_size=True)
    src = tmp_path / "dino_vits8.pth"
    torch.save(dino_checkpoint(model.state_dict()), src)
    loaded, report, _ = converted_model(src, tmp_path)
    assert report.source_format == "dino" and report.arch == "vit_small_patch8_224" and report.model_kwargs == {"depth": 1}
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(features(loaded, x).dense, features(model, x).dense)


def test_dino_resnet50_teacher(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    model.fc = torch.nn.Identity()  # DINO's ResNet backbone has no classifier
    src = tmp_path / "dino_r50.pth"
    torch.save(dino_checkpoint(model.state_dict()), src)
    loaded, report, _ = converted_model(src, tmp_path)
    assert report.source_format == "dino" and report.arch == "resnet50"
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(features(loaded, x).dense, torch.nn.Sequential(*list(model.children())[:-2])(x))


# ---------------------------------------------------------------------------- CLI
def test_cli_offers_every_source_format():
    from bam_dense.cli import build_parser
    from bam_dense.convert.sources import FORMATS

    parser = build_parser()
    for fmt in FORMATS:
        args = parser.parse_args(["convert", "x.pth", "--to", "timm", "--out", "y.pth", "--source-format", fmt])
        assert args.source_format == fmt


# ---------------------------------------------------------------------------- every layout through the protocols
def _public_layouts(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """One checkpoint per public layout, saved as its source saves it (the builders above): (file, linear recipe)."""
    import torchvision

    def save(name: str, payload: dict) -> Path:
        path = tmp_path / f"{name}.pth"
        torch.save(payload, path)
        return path

    vit = randomised("vit_small_patch16_224", depth=1)
    moco = randomised("vit_small_patch16_224", depth=1, num_heads=12).state_dict()
    torch.manual_seed(0)
    r50 = torchvision.models.resnet50().eval()
    r50_body = {k: v for k, v in r50.state_dict().items() if not k.startswith("fc.")}
    return {
        "dino": (save("dino", dino_checkpoint(vit.state_dict())), "dino-vitb"),
        "dino-resnet50": (save("dino_r50", dino_checkpoint(r50_body)), "lewel-r50"),
        "ibot": (save("ibot", ibot_checkpoint(vit)), "dino-vitb"),
        "mae": (save("mae", {"model": randomised("vit_base_patch16_224", depth=1).state_dict()}), "dino-vitb"),
        "mocov3": (save("mocov3", {"arch": "vit_small", "state_dict": {
            **{f"module.base_encoder.{k}": v for k, v in moco.items()},
            **{f"module.momentum_encoder.{k}": v for k, v in moco.items()}}}), "dino-vitb"),
        "deit-distilled": (save("deit", {"model": timm.create_model("deit_tiny_distilled_patch16_224", depth=1).state_dict()}),
                           "dino-vitb"),
        "torchvision-resnet50": (save("tv_r50", r50.state_dict()), "lewel-r50"),
        "dinov2-registers": (save("dinov2_reg4", DINOV2["reg4"]["checkpoint"]), "dino-vitb"),
        "dinov3": (save("dinov3", DINOV3["nobias"]["checkpoint"]), "dino-vitb"),
    }


def test_every_public_layout_runs_the_frozen_feature_protocols(tmp_path, synthetic_root):
    """Retrieval and the linear probe, each on data in its real layout, for every public encoder layout."""
    from bam_dense.encoders import load_extractor
    from bam_dense.eval import linear_probe, retrieval

    for name, (path, recipe) in _public_layouts(tmp_path).items():
        extractor = load_extractor(str(path), None, None, False, torch.device("cpu"))
        size = 2 * int(extractor.patch) if extractor.kind != "cnn" else 64  # a 2 x 2 patch grid (ResNet: stride 32)
        record = retrieval.run(str(path), "voc", str(synthetic_root / "voc"), device="cpu", progress=False,
                               params=retrieval.RetrievalParams(input_size=size, augment=False, memory_size=None, neighbours=4))
        assert 0.0 <= record["metrics"]["mIoU"] <= 100.0 and record["patch_size"] == extractor.patch, name
        assert record["val_images"] > 0 and record["memory_patches"] > 0, name
        probe = linear_probe.run(str(path), str(synthetic_root / "imagenet"), recipe=recipe, resolution=size,
                                 learning_rates=[0.01], epochs=1, device="cpu", progress=False)
        assert 0.0 <= probe["metrics"]["top1"] <= 100.0, name
