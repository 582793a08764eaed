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

from bam_dense.convert import ConversionError, convert, report_path
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


def test_round_trip_timm_to_mmseg_and_back_is_exact(tmp_path):
    state = timm_state("vit_small_patch16_224")
    src = tmp_path / "vits.pth"
    torch.save(state, src)
    for target, keymap in (("mmseg", MMSEG_VIT), ("mmseg-mae", MMSEG_MAE)):
        out = tmp_path / f"{target}.pth"
        convert(src, target, out)
        converted = torch.load(out, weights_only=True)["state_dict"]
        back = {keymap.backward(k): v for k, v in converted.items()}
        expected = {k: v for k, v in state.items() if keymap.forward(k) is not None}
        assert back.keys() == expected.keys()
        assert_same_tensors(expected, back)


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
