"""Converters: every target's output is loaded by its real consumer and every backbone tensor compared."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import timm
import torch
from conftest import PYTHON, REPO, tiny_pretrain_dict

from bam_dense.convert import ConversionError, convert, registry, report_path
from bam_dense.convert.maps import D2_RESNET, MMSEG_MAE, MMSEG_VIT
from bam_dense.core.paths import bundled


# ---------------------------------------------------------------------------- sources
@pytest.fixture(scope="module")
def bam_checkpoint(tmp_path_factory) -> Path:
    """A real bam-dense pretraining checkpoint (tiny ViT, one step, with teacher)."""
    from bam_dense.core.config import load_config
    from bam_dense.engine.trainer import Trainer

    out = tmp_path_factory.mktemp("bam_run")
    Trainer(load_config(data=tiny_pretrain_dict(out, run={"max_steps": 1}))).train()
    return out / "checkpoints" / "last.pth"


def teacher_backbone(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    return {k[len("backbone."):]: v for k, v in state["teacher"].items() if k.startswith("backbone.")}


def timm_state(arch: str, **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model(arch, num_classes=0, **kwargs).state_dict()


@pytest.fixture(scope="module")
def resnet50_tv(tmp_path_factory) -> tuple[Path, dict]:
    """A torchvision-layout ResNet-50 checkpoint with its classifier, as torchvision saves them."""
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.resnet50()
    path = tmp_path_factory.mktemp("tv") / "resnet50_tv.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def assert_same_tensors(expected: dict, actual: dict, rename=lambda k: k):
    for key, value in expected.items():
        assert torch.equal(actual[rename(key)], value), key


# ---------------------------------------------------------------------------- timm, torchvision, safetensors
def test_timm_target_loads_strictly_with_every_teacher_tensor(bam_checkpoint, tmp_path):
    out = tmp_path / "vit_timm.pth"
    report = convert(bam_checkpoint, "timm", out)
    state = torch.load(out, weights_only=True)
    src = torch.load(bam_checkpoint, weights_only=True)
    model = timm.create_model(src["arch"], num_classes=0, **src["model_kwargs"])
    model.load_state_dict(state, strict=True)
    assert_same_tensors(teacher_backbone(bam_checkpoint), model.state_dict())
    saved = json.loads(report_path(out, "timm").read_text())
    assert saved["coverage"].endswith("(100.0%)") and not saved["unfilled"]
    reasons = {reason for _, reason in saved["dropped"]}
    assert reasons == {"projector (pretraining head)", "student copy"}
    assert report.which == "teacher"


def test_student_network_on_request(bam_checkpoint, tmp_path):
    out = tmp_path / "student.pth"
    convert(bam_checkpoint, "timm", out, which="student")
    src = torch.load(bam_checkpoint, weights_only=True)
    student = {k[len("backbone."):]: v for k, v in src["student"].items() if k.startswith("backbone.")}
    assert_same_tensors(student, torch.load(out, weights_only=True))


def test_timm_folder_loads_through_local_dir_and_the_pretrained_overlay(tmp_path):
    src = tmp_path / "vits.pth"
    torch.save(timm_state("vit_small_patch16_224"), src)
    folder = tmp_path / "vits_timm"
    convert(src, "timm-folder", folder)
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert_same_tensors(torch.load(src, weights_only=True), model.state_dict())
    overlay = timm.create_model("vit_small_patch16_224", pretrained=True, num_classes=0,
                                pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")))
    assert_same_tensors(torch.load(src, weights_only=True), overlay.state_dict())


def test_torchvision_resnet50_loads_strictly_except_the_classifier(resnet50_tv, tmp_path):
    import torchvision

    path, original = resnet50_tv
    out = tmp_path / "r50.pth"
    report = convert(path, "torchvision", out)
    assert report.arch == "resnet50" and ["fc.weight", "classifier"] in report.dropped
    model = torchvision.models.resnet50()
    missing, unexpected = model.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    assert_same_tensors({k: v for k, v in original.items() if not k.startswith("fc.")}, model.state_dict())


def test_safetensors_target_holds_the_backbone(bam_checkpoint, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "vit.safetensors"
    convert(bam_checkpoint, "safetensors", out)
    assert_same_tensors(teacher_backbone(bam_checkpoint), load_file(out))


# ---------------------------------------------------------------------------- mmseg
def _mmseg_backbone(config: str, checkpoint: Path, **overrides):
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(bundled("configs/mmseg", required=True) / config)
    backbone_cfg = cfg.model.backbone
    backbone_cfg.update(overrides)
    backbone_cfg["init_cfg"] = dict(type="Pretrained", checkpoint=str(checkpoint))
    backbone = MODELS.build(backbone_cfg)
    backbone.init_weights()
    return backbone


@pytest.mark.parametrize(("config", "arch", "kwargs"), [
    ("upernet_vit-s16_ade20k-512x512_160k.py", "vit_small_patch16_224", {"num_heads": 12}),
    ("upernet_vit-b16_ade20k-512x512_160k.py", "vit_base_patch16_224", {}),
], ids=["vit-s16", "vit-b16"])
def test_mmseg_mae_backbone_of_the_project_configs_takes_every_tensor(config, arch, kwargs, tmp_path):
    from bam_dense.downstream.weight_check import check_backbone

    src = tmp_path / "src.pth"
    state = timm_state(arch, **kwargs)
    torch.save(state, src)
    out = tmp_path / "mmseg.pth"
    report = convert(src, "mmseg-mae", out, arch=arch, img_size=512)
    assert report.shape_changes[0][:3] == ["pos_embed", [1, 197, state["pos_embed"].shape[-1]], [1, 1025, state["pos_embed"].shape[-1]]]
    backbone = _mmseg_backbone(config, out)
    loaded = backbone.state_dict()
    for key, value in state.items():
        target = MMSEG_MAE.forward(key)
        if target is None:
            assert key.startswith("norm."), key
        elif key != "pos_embed":
            assert torch.equal(loaded[target], value), key
    result = check_backbone(backbone, str(out))
    assert result.ok and not result.unused and result.checked == len(report.filled)


def test_mmseg_vision_transformer_target_with_patch_bias(bam_checkpoint, tmp_path):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    out = tmp_path / "mmseg_vit.pth"
    convert(bam_checkpoint, "mmseg", out)
    src = torch.load(bam_checkpoint, weights_only=True)
    kw = src["model_kwargs"]
    backbone = MODELS.build(dict(type="VisionTransformer", img_size=(kw["img_size"], kw["img_size"]), patch_size=kw["patch_size"],
                                 embed_dims=kw["embed_dim"], num_layers=kw["depth"], num_heads=kw["num_heads"],
                                 patch_bias=True, final_norm=True, norm_cfg=dict(type="LN", eps=1e-6),
                                 init_cfg=dict(type="Pretrained", checkpoint=str(out))))
    backbone.init_weights()
    assert_same_tensors(teacher_backbone(bam_checkpoint), backbone.state_dict(), rename=MMSEG_VIT.forward)


def test_mmseg_resnet50_of_the_voc_config_takes_every_tensor(resnet50_tv, tmp_path):
    from bam_dense.downstream.weight_check import check_backbone

    path, original = resnet50_tv
    out = tmp_path / "r50_mmseg.pth"
    convert(path, "mmseg", out)
    backbone = _mmseg_backbone("fcn_r50-d8_voc12aug-512x512_20k.py", out)
    assert_same_tensors({k: v for k, v in original.items() if not k.startswith("fc.")}, backbone.state_dict())
    assert check_backbone(backbone, str(out)).ok


# ---------------------------------------------------------------------------- every target, every family: the rows
ROUND_TRIP_FAMILIES = ("vit", "cnn", "eva")  # eva: a family that only the targets taking any backbone take


@pytest.fixture(scope="module")
def family_sources(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """One source file per backbone family and the tensors it holds under timm names."""
    import torchvision

    from bam_dense.convert import load_source

    folder = tmp_path_factory.mktemp("families")
    vit = timm_state("vit_small_patch16_224")
    torch.save(vit, folder / "vit.pth")
    torch.manual_seed(2)
    resnet = torchvision.models.resnet18().state_dict()  # with its classifier, which every target drops
    torch.save(resnet, folder / "cnn.pth")
    dinov3 = torch.load(Path(__file__).parent / "fixtures" / "dinov3_official.pt", weights_only=True)["nobias"]["checkpoint"]
    torch.save(dinov3, folder / "eva.pth")
    return {"vit": (folder / "vit.pth", vit),
            "cnn": (folder / "cnn.pth", {k: v for k, v in resnet.items() if not k.startswith("fc.")}),
            "eva": (folder / "eva.pth", load_source(folder / "eva.pth").backbone)}


@pytest.mark.parametrize(("target", "family"), [(row.name, fam) for row in registry.TARGETS for fam in ROUND_TRIP_FAMILIES])
def test_every_target_round_trips_exactly_or_refuses_a_family_it_does_not_take(family_sources, target, family, tmp_path):
    """Written by the row's writer, read back by its reader and renamed by its key map read right-to-left: the source's
    tensors, every one the key map has a place for and nothing else. A family without a key map is refused."""
    row = registry.target(target)
    src, state = family_sources[family]
    out = tmp_path / f"out{row.suffix}"
    keymap = row.keymap(family)
    if keymap is None:
        with pytest.raises(ConversionError, match=f"target {target} does not take a {family} backbone"):
            convert(src, target, out)
        assert not out.exists()
        return
    convert(src, target, out)
    back = {keymap.backward(k): v for k, v in row.read(out, family).items()}
    expected = {k: v for k, v in state.items() if keymap.forward(k) is not None}
    assert back.keys() == expected.keys()
    assert_same_tensors(expected, back)


def test_the_families_of_the_round_trip_are_every_family_a_target_names():
    named = {fam for row in registry.TARGETS for fam in row.families} - {registry.ANY}
    assert named <= set(ROUND_TRIP_FAMILIES)


def test_cli_choices_are_the_rows():
    from bam_dense.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["convert"]
    choices = {action.dest: action.choices for action in sub._actions}
    assert tuple(choices["to"]) == registry.TARGET_NAMES
    assert tuple(choices["source_format"]) == ("auto", *registry.FORMAT_NAMES)


def _shipped_backbone_types(folder: str) -> set[str]:
    from mmengine.config import Config

    return {Config.fromfile(path).model.backbone.type for path in (REPO / "configs" / folder).rglob("*.py")
            if not path.name.startswith("_")}


@pytest.mark.parametrize(("task", "folder"), [("seg", "mmseg"), ("det", "mmdet")])
def test_every_shipped_mm_backbone_has_the_conversion_row_that_serves_it(task, folder):
    """``seg|det train`` converts a checkpoint for the backbone type of its config: each shipped config's type is
    served by exactly one target row, and that row takes the type's family (a ViT type a ViT key map)."""
    pytest.importorskip("mmengine")
    served = registry.mm_backbone_targets(task)
    shipped = _shipped_backbone_types(folder)
    assert shipped and shipped <= set(served), shipped - set(served)
    for btype, name in served.items():
        vit = btype in ("VisionTransformer", "MAE", "BEiT", "TimmViT")
        takes = registry.target(name).keymap("vit" if vit else "cnn")
        assert btype == "FrozenTimmEncoder" or takes is not None, (btype, name)


def test_a_backbone_type_claimed_by_two_rows_is_refused(monkeypatch):
    import dataclasses

    twice = dataclasses.replace(registry.target("timm"), name="timm-again", mm_backbones=(("det", ("ResNet",)),))
    monkeypatch.setattr(registry, "TARGETS", (*registry.TARGETS, twice))
    with pytest.raises(ValueError, match="'ResNet' is claimed by two targets: mmdet and timm-again"):
        registry.mm_backbone_targets("det")


def docs_tables() -> tuple[str, str]:
    """docs/converting.md's tables of source formats and of targets, as the rows say."""
    sources = ["| `--source-format` | layout recognised | timm architecture | dropped, with the reason in the report |",
               "|---|---|---|---|"]
    sources += [f"| `{row.name}` | {row.layout} | {row.architecture} | {row.drops} |" for row in registry.FORMATS]
    targets = ["| `--to` | backbones | output | what it holds |", "|---|---|---|---|"]
    for row in registry.TARGETS:
        families = "any" if registry.ANY in row.families else ", ".join(row.families)
        output = (f"folder: {', '.join(f'`{name}`' for name in row.folder_files)}" if row.folder else
                  f"`OUT{row.suffix}`" + (" (required)" if row.suffix_required else ""))
        targets.append(f"| `{row.name}` | {families} | {output} | {row.doc} |")
    return "\n".join(sources) + "\n", "\n".join(targets) + "\n"


@pytest.mark.parametrize("which", ["sources", "targets"])
def test_the_docs_tables_are_the_rows(which):
    table = docs_tables()[which == "targets"]
    assert table in (REPO / "docs" / "converting.md").read_text(), f"docs/converting.md must hold this table:\n{table}"


# ---------------------------------------------------------------------------- every source format: the rows
FIXTURES = Path(__file__).parent / "fixtures"


def _heads(prefix: str = "") -> dict[str, torch.Tensor]:
    return {f"{prefix}head.mlp.0.weight": torch.randn(4, 8), f"{prefix}head.last_layer.weight": torch.randn(2, 4)}


def _backbone(family: str, arch: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
    import torchvision

    if family == "cnn":
        torch.manual_seed(3)
        return {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    return timm_state(arch or "vit_tiny_patch16_224", **({"depth": 1} if family == "vit" else {}) | kwargs)


def _format_sample(fmt: str, family: str) -> tuple[dict, dict | None, dict]:
    """A checkpoint in source format ``fmt`` holding a ``family`` backbone, as its source saves it: (checkpoint, the
    backbone's tensors under timm names or None where only the source's own code defines them, convert arguments)."""
    arch = "poolformer_s12" if family == "metaformer" else None  # shapes cannot name a MetaFormer
    if fmt == "dinov2":
        return torch.load(FIXTURES / "dinov2_official.pt", weights_only=True)["plain"]["checkpoint"], None, {}
    if fmt == "dinov3":
        return torch.load(FIXTURES / "dinov3_official.pt", weights_only=True)["nobias"]["checkpoint"], None, {}
    if fmt in ("bam-official", "mocov3"):
        state = _backbone(family, "vit_small_patch16_224", num_heads=12)  # their ViT-S: 12 heads
    elif fmt == "mae":
        state = _backbone(family, "vit_base_patch16_224")
    else:
        state = _backbone(family, arch)
    if fmt == "bam-dense":
        teacher = {f"backbone.{k}": v for k, v in state.items()} | {"projector.0.weight": torch.randn(4, 4)}
        return ({"format": "bam-dense", "student": {k: v + 1 for k, v in teacher.items()}, "teacher": teacher,
                 "arch": arch or ("resnet18" if family == "cnn" else "vit_tiny_patch16_224"),
                 "model_kwargs": {} if family != "vit" else {"depth": 1}}, state, {})
    if fmt == "bam-official":
        model = {f"student.module.backbone.{k}": v + 1 for k, v in state.items()} | {f"teacher.backbone.{k}": v for k, v in state.items()}
        return {"model": model | {"teacher.proj_head.mlp.0.weight": torch.zeros(8, 4)}, "epoch": 1}, state, {}
    if fmt == "lewel-official":
        sd = {f"module.online_net.backbone.{k}": v for k, v in state.items()}
        sd |= {f"module.target_net.backbone.{k}": v + 1 for k, v in state.items()} | {"module.predictor.0.weight": torch.zeros(2)}
        return {"state_dict": sd, "epoch": 1}, state, {}
    if fmt in ("dino", "ibot"):
        teacher = {f"backbone.{k}": v for k, v in state.items()} | _heads()
        student = {f"module.{k}": v + 1 for k, v in teacher.items()}
        if fmt == "ibot":
            student["module.backbone.masked_embed"] = torch.zeros(1, state["cls_token"].shape[-1])
        return {"student": student, "teacher": teacher, "epoch": 1}, state, {}
    if fmt == "mae":
        return {"model": state | {"mask_token": torch.zeros(1, 1, 8), "decoder_embed.weight": torch.randn(8, 768)}}, state, {}
    if fmt == "mocov3":
        sd = {f"module.base_encoder.{k}": v for k, v in state.items()} | {"module.base_encoder.head.0.weight": torch.zeros(2)}
        sd |= {f"module.momentum_encoder.{k}": v + 1 for k, v in state.items()} | {"module.predictor.0.weight": torch.zeros(2)}
        return {"state_dict": sd, "epoch": 1}, state, {}
    classifier = {"fc.weight": torch.zeros(2, 512)} if family == "cnn" else {"head.weight": torch.zeros(2, 4)}
    return {"model": state | classifier}, state, {"arch": arch} if arch else {}  # timm, torchvision: plain state dicts


@pytest.mark.parametrize(("fmt", "family"), [(row.name, fam) for row in registry.FORMATS for fam in row.families])
def test_every_source_format_is_detected_and_read_for_every_family_it_holds(fmt, family, tmp_path):
    """Each row's sample checkpoint: detected as the row, its backbone of the row's family converted to timm with full
    coverage and loaded strictly, every tensor the one the source holds."""
    from bam_dense.convert.sources import detect_format
    from bam_dense.models.backbones import create_backbone, describe

    obj, state, kwargs = _format_sample(fmt, family)
    src = tmp_path / "source.pth"
    torch.save(obj, src)
    assert detect_format(obj) == fmt
    out = tmp_path / "converted.pth"
    report = convert(src, "timm", out, **kwargs)
    assert report.source_format == fmt and report.coverage.endswith("(100.0%)")
    converted = torch.load(out, weights_only=True)
    model = create_backbone(report.arch, report.model_kwargs, pos_embed="learned")
    model.load_state_dict(converted, strict=True)
    assert describe(model).family == family
    if state is not None:
        assert converted.keys() == state.keys()
        assert_same_tensors(state, converted)


# ---------------------------------------------------------------------------- mmdet
def test_mmdet_mask_rcnn_r50_takes_every_tensor_through_init_cfg(resnet50_tv, tmp_path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    path, original = resnet50_tv
    out = tmp_path / "r50_mmdet.pth"
    convert(path, "mmdet", out)
    assert all(k.startswith("backbone.") for k in torch.load(out, weights_only=True)["state_dict"])
    register_all_modules()
    cfg = Config.fromfile(bundled("configs/mmdet/mask-rcnn_r50_fpn_1x_coco.py", required=True))
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(out), prefix="backbone.")
    cfg.model.backbone.norm_cfg = dict(type="BN", requires_grad=True)  # SyncBN needs a process group
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert_same_tensors({k: v for k, v in original.items() if not k.startswith("fc.")}, model.backbone.state_dict())


def test_mmdet_vit_target_is_a_model_dict_with_timm_names(bam_checkpoint, tmp_path):
    out = tmp_path / "vit_mmdet.pth"
    convert(bam_checkpoint, "mmdet", out)
    state = torch.load(out, weights_only=True)
    assert list(state) == ["model"]
    assert_same_tensors(teacher_backbone(bam_checkpoint), state["model"])


# ---------------------------------------------------------------------------- detectron2
D2_NAMES = Path(__file__).parent / "fixtures" / "detectron2_r50_names.json"


def test_detectron2_pickle_has_the_names_detectron2_builds(resnet50_tv, tmp_path):
    path, original = resnet50_tv
    out = tmp_path / "r50_d2.pkl"
    convert(path, "detectron2", out)
    with open(out, "rb") as fh:
        payload = pickle.load(fh)
    assert payload["__author__"] == "bam-dense" and payload["matching_heuristics"] is True
    recorded = json.loads(D2_NAMES.read_text())
    assert "detectron2" in recorded["provenance"]
    names = set(payload["model"])
    assert names == set(recorded["names"])  # every R50 tensor detectron2 builds, nothing else
    for key, value in original.items():
        if not key.startswith("fc."):
            assert (payload["model"][D2_RESNET.forward(key)] == value.numpy()).all(), key


def test_detectron2_checkpointer_loads_every_backbone_tensor(resnet50_tv, tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_resnet_backbone

    path, original = resnet50_tv
    out = tmp_path / "r50_d2.pkl"
    convert(path, "detectron2", out)
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    model = torch.nn.Module()
    model.backbone = backbone
    DetectionCheckpointer(model).load(str(out))
    loaded = model.backbone.state_dict()
    for key, value in original.items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[D2_RESNET.forward(key)], value), key


# ---------------------------------------------------------------------------- official layouts
def _bam_official(tmp_path: Path, teacher: bool = True) -> tuple[Path, dict]:
    state = timm_state("vit_small_patch16_224", num_heads=12)
    model = {}
    for k, v in state.items():
        model[f"student.module.backbone.{k}"] = v + 1.0
        if teacher:
            model[f"teacher.backbone.{k}"] = v
    model["student.module.proj_head.mlp.0.weight"] = torch.zeros(8, 384)
    if teacher:
        model["teacher.proj_head.mlp.0.weight"] = torch.zeros(8, 384)
    path = tmp_path / "bam_official.pth"
    torch.save({"model": model, "optimizer": {}, "epoch": 400, "args": argparse.Namespace(arch="vit_small")}, path)
    return path, state


def test_official_bam_checkpoint_needs_trust_and_then_converts_the_teacher(tmp_path):
    path, state = _bam_official(tmp_path)
    with pytest.raises(ConversionError, match="refused to load.*--trust-source"):
        convert(path, "timm", tmp_path / "x.pth")
    out = tmp_path / "bam_timm.pth"
    with pytest.warns(UserWarning, match="trusted legacy pickle"):
        report = convert(path, "timm", out, trust_source=True)
    assert report.source_format == "bam-official" and report.which == "teacher" and report.model_kwargs == {"num_heads": 12}
    assert_same_tensors(state, torch.load(out, weights_only=True))
    model = timm.create_model("vit_small_patch16_224", num_classes=0, num_heads=12)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_official_lewel_checkpoint_converts_the_online_backbone(resnet50_tv, tmp_path):
    _, original = resnet50_tv
    sd = {}
    for k, v in original.items():
        if k.startswith("fc."):
            continue
        sd[f"module.online_net.backbone.{k}"] = v
        sd[f"module.target_net.backbone.{k}"] = v * 0
    sd["module.online_net.neck.proj.mlp.0.weight"] = torch.zeros(4, 2048, 1)
    sd["module.predictor.mlp.0.weight"] = torch.zeros(4, 256, 1)
    path = tmp_path / "lewel.pth.tar"
    torch.save({"epoch": 200, "arch": "LEWELB_EMAN", "state_dict": sd, "optimizer": {}, "best_acc1": 0.0}, path)
    out = tmp_path / "lewel_tv.pth"
    report = convert(path, "torchvision", out)
    assert report.source_format == "lewel-official" and report.which == "student"
    assert_same_tensors({k: v for k, v in original.items() if not k.startswith("fc.")}, torch.load(out, weights_only=True))
    reasons = {r for _, r in report.dropped}
    assert {"target network copy", "alignment neck (pretraining head)", "predictor (pretraining head)"} <= reasons


def test_dino_checkpoint_converts_the_teacher(tmp_path):
    state = timm_state("vit_small_patch16_224")
    ckpt = {"student": {f"module.backbone.{k}": v + 1 for k, v in state.items()} | {"module.head.last_layer.weight": torch.zeros(2, 2)},
            "teacher": {f"backbone.{k}": v for k, v in state.items()} | {"head.last_layer.weight": torch.zeros(2, 2)},
            "epoch": 100}
    path = tmp_path / "dino.pth"
    torch.save(ckpt, path)
    out = tmp_path / "dino_timm.pth"
    report = convert(path, "timm", out)
    assert report.source_format == "dino" and report.arch == "vit_small_patch16_224"
    assert_same_tensors(state, torch.load(out, weights_only=True))


# ---------------------------------------------------------------------------- bad input and safety
def _cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([PYTHON, "-m", "bam_dense.cli", "convert", *map(str, args)], capture_output=True, text=True, env=env)


def test_wrong_architecture_fails_naming_tensors_and_writes_no_output(bam_checkpoint, tmp_path):
    src = tmp_path / "vits.pth"
    torch.save(timm_state("vit_small_patch16_224"), src)
    out = tmp_path / "out.pth"
    proc = _cli(src, "--to", "timm", "--out", out, "--arch", "vit_base_patch16_224")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "does not fit vit_base_patch16_224" in line and "shape mismatches: cls_token" in line
    assert not out.exists()
    assert json.loads(report_path(out, "timm").read_text())["status"] == "failed"


def test_missing_backbone_tensor_fails_naming_it(tmp_path):
    state = timm_state("vit_small_patch16_224")
    del state["blocks.3.mlp.fc1.weight"]
    src = tmp_path / "partial.pth"
    torch.save(state, src)
    with pytest.raises(ConversionError, match=r"1 tensors of vit_small_patch16_224 missing from the source: blocks.3.mlp.fc1.weight"):
        convert(src, "mmseg", tmp_path / "out.pth")


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty file, not a checkpoint"),
    (b"\x00\x01garbage that is not a checkpoint" * 10, "not a checkpoint torch can read"),
], ids=["empty", "garbage"])
def test_unreadable_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    proc = _cli(path, "--to", "timm", "--out", tmp_path / "o.pth")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert message in proc.stderr and str(path) in proc.stderr


def test_truncated_checkpoint_gives_a_clear_error(bam_checkpoint, tmp_path):
    data = bam_checkpoint.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    proc = _cli(path, "--to", "timm", "--out", tmp_path / "o.pth")
    assert proc.returncode == 2 and "truncated or corrupt checkpoint" in proc.stderr


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ConversionError, match="not a checkpoint"):
        convert(path, "timm", tmp_path / "o.pth")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": exploit}, fh)
    proc = _cli(path, "--to", "timm", "--out", tmp_path / "o.pth")
    assert proc.returncode == 2
    assert "refused to load" in proc.stderr and "--trust-source" in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "o.pth").exists()
