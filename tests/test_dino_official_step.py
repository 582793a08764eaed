"""One whole DINO training step of the engine equals the official one (facebookresearch/dino ``train_one_epoch``).

``fixtures/dino_step_official.pt`` (``make_dino_step_fixture.py``) holds, for a tiny ViT with a DINO head, the
initial weights, AdamW moments, centre and multi-crop batch, and what one official step made of them: the loss,
the student after the AdamW step (per-parameter gradient clipping, the last layer frozen in epoch 0), the teacher
after its EMA and the new centre. Here the same state goes into a :class:`~bam_dense.engine.trainer.Trainer` built
from a config with the same settings, and one ``train_step`` must give the same numbers.

Key mapping: DINO's ``MultiCropWrapper`` names are ``backbone.*`` (its ``VisionTransformer``, whose names are
timm's) and ``head.*`` (``DINOHead``, whose names bam-dense's head keeps); bam-dense's ``DINONet`` has the same
two prefixes plus its ``center`` buffer, so the map is the identity, which the test checks key by key.

Tolerance: 1e-6 absolute on weights of order 0.1-1 that move by ~1e-2 in the step, i.e. the float32 rounding of
a different but equivalent order of operations (timm's fused ``scaled_dot_product_attention`` against DINO's
explicit softmax, DDP's bucketed gradients); a wrong clipping, weight decay group, schedule value, frozen layer
or temperature moves weights by 1e-4 or more (checked below for the clipping, the frozen layer and the position
table's resampling).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bam_dense.core.config import load_config
from bam_dense.core.paths import bundled
from bam_dense.engine.trainer import Trainer
from bam_dense.models.backbones import build_backbone

FIXTURE = Path(__file__).parent / "fixtures" / "dino_step_official.pt"
ATOL = 1e-6


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _config(tmp_path, rec: dict, case: dict, optim: dict, method: dict):
    s, vit, head = rec["settings"], rec["vit"], rec["head"]
    batch = case["batch"]
    raw = {
        "run": {"output_dir": str(tmp_path), "seed": 0, "progress": False, "tensorboard": False, "device": "cpu"},
        "data": {"batch_size_per_gpu": batch[0].shape[0], "num_workers": 0,
                 "synthetic": {"num_images": batch[0].shape[0], "size": 40, "num_classes": 2, "seed": 0},
                 "views": {"kind": "multicrop", "global_crops": 2, "global_size": batch[0].shape[-1],
                           "local_crops": len(batch) - 2, "local_size": batch[-1].shape[-1]}},
        "model": {"arch": "vit_small_patch16_224", "pos_embed": "learned", "freeze_patch_embed": False,
                  "drop_path_rate": 0.0,
                  "kwargs": {"img_size": vit["img_size"][0], "patch_size": vit["patch_size"], "embed_dim": vit["embed_dim"],
                             "depth": vit["depth"], "num_heads": vit["num_heads"]}},
        # one step per epoch, no warm-up: the engine's cosines are DINO's cosine_scheduler at the same iteration
        "optim": {"name": "adamw", "epochs": s["epochs"], "lr": s["lr"], "lr_batch_scaling": None, "min_lr": s["min_lr"],
                  "warmup_epochs": 0, "weight_decay": s["weight_decay"], "weight_decay_end": s["weight_decay_end"],
                  "clip_grad": s["clip_grad"], "clip_grad_mode": "per_param", "amp": "none", **optim},
        "teacher": {"enabled": True, "momentum": s["momentum_teacher"], "momentum_end": 1.0},
        "method": {"name": "dino", "out_dim": head["out_dim"], "hidden_dim": head["hidden_dim"],
                   "bottleneck_dim": head["bottleneck_dim"], "head_layers": head["nlayers"], "head_bn": head["use_bn"],
                   "norm_last_layer": case["norm_last_layer"], "student_temp": s["student_temp"],
                   "warmup_teacher_temp": s["warmup_teacher_temp"], "teacher_temp": s["teacher_temp"],
                   "warmup_teacher_temp_epochs": s["warmup_teacher_temp_epochs"], "center_momentum": s["center_momentum"],
                   "freeze_last_layer": s["freeze_last_layer"], "pos_resample": "dino", **method},
    }
    return load_config(data=raw)


def _official_step_in_the_engine(tmp_path, rec: dict, name: str, optim: dict | None = None,
                                 method: dict | None = None) -> tuple[Trainer, dict]:
    case = rec["cases"][name]
    trainer = Trainer(_config(tmp_path, rec, case, optim or {}, method or {}))
    student = trainer.student
    ours = set(student.state_dict()) - {"center"}
    assert ours == set(case["initial"]), f"unmapped keys: ours {sorted(ours ^ set(case['initial']))}"
    student.load_state_dict({**case["initial"], "center": case["center"]})
    trainer.teacher.load_state_dict({**case["initial"], "center": case["center"]})  # train_dino: teacher = student
    params = dict(student.named_parameters())
    for pname, state in case["adam_state"].items():
        trainer.optimizer.state[params[pname]] = {k: v.clone() for k, v in state.items()}
    trainer.step, trainer.epoch = case["iteration"], case["epoch"]
    terms, _, finite = trainer.train_step([c.clone() for c in case["batch"]])
    assert finite
    return trainer, terms


@pytest.mark.parametrize("name", ["epoch0", "epoch1"])
def test_one_engine_step_equals_the_official_dino_step(tmp_path, official, name):
    case = official["cases"][name]
    trainer, terms = _official_step_in_the_engine(tmp_path, official, name)
    assert terms["lr"] == pytest.approx(case["lr"], rel=1e-12)
    assert terms["wd"] == pytest.approx(case["weight_decay"], rel=1e-12)
    assert terms["teacher_momentum"] == pytest.approx(case["momentum"], rel=1e-12)
    assert terms["loss"] == pytest.approx(case["loss"], abs=1e-6)
    student = trainer.student.state_dict()
    for key, expected in case["student"].items():
        torch.testing.assert_close(student[key], expected, atol=ATOL, rtol=0, msg=lambda m, k=key: f"student {k}: {m}")
    teacher = trainer.teacher.state_dict()
    for key, expected in case["teacher"].items():
        torch.testing.assert_close(teacher[key], expected, atol=ATOL, rtol=0, msg=lambda m, k=key: f"teacher {k}: {m}")
    torch.testing.assert_close(student["center"], case["new_center"], atol=ATOL, rtol=0)


def test_the_last_layer_stays_frozen_in_epoch_zero_and_trains_after(tmp_path, official):
    frozen, _ = _official_step_in_the_engine(tmp_path / "0", official, "epoch0")
    assert official["cases"]["epoch0"]["last_layer_frozen"]
    initial = official["cases"]["epoch0"]["initial"]
    layer = frozen.student.head.last_layer
    assert torch.equal(layer.weight_v, initial["head.last_layer.weight_v"])  # not even weight decay touched it
    trained, _ = _official_step_in_the_engine(tmp_path / "1", official, "epoch1")
    assert not official["cases"]["epoch1"]["last_layer_frozen"]
    layer = trained.student.head.last_layer
    assert (layer.weight_v - initial["head.last_layer.weight_v"]).abs().max() > 1e-3
    assert (layer.weight_g - initial["head.last_layer.weight_g"]).abs().max() > 1e-3  # norm_last_layer: false


@pytest.mark.parametrize("name, optim, method", [
    ("epoch1", {"clip_grad_mode": "total"}, {}),  # torch's clip_grad_norm_ instead of DINO's per-parameter clipping
    ("epoch0", {}, {"freeze_last_layer": 0}),  # the last layer trained in epoch 0
    ("epoch0", {}, {"pos_resample": "timm"}),  # local crops with timm's resampling of the position table
])
def test_each_official_detail_changes_the_step_beyond_the_tolerance(tmp_path, official, name, optim, method):
    case = official["cases"][name]
    trainer, _ = _official_step_in_the_engine(tmp_path, official, name, optim, method)
    student = trainer.student.state_dict()
    gap = max((student[key] - expected).abs().max().item() for key, expected in case["student"].items())
    assert gap > 100 * ATOL


def test_the_teacher_never_drops_paths(tmp_path, official):
    """DINO's teacher is built without stochastic depth; the engine's is a copy of a student that may have it."""
    case = official["cases"]["epoch1"]
    cfg = _config(tmp_path, official, case, {}, {})
    cfg.model.drop_path_rate = 0.5
    trainer = Trainer(cfg)
    globals_ = [c.clone() for c in case["batch"][:2]]
    torch.manual_seed(0)
    first = trainer.method.teacher_forward(trainer.teacher, globals_)["logits"]
    second = trainer.method.teacher_forward(trainer.teacher, globals_)["logits"]
    assert trainer.teacher.training and torch.equal(first, second)
    student_a, student_b = trainer.student(globals_)["logits"], trainer.student(globals_)["logits"]
    assert not torch.equal(student_a, student_b)  # the student keeps its stochastic depth


@pytest.mark.parametrize("recipe", ["dino_vit_small_100ep", "dino_vit_small_300ep"])
def test_the_dino_recipes_start_the_class_token_as_dino(recipe):
    """vision_transformer.py: ``trunc_normal_(self.cls_token, std=.02)``; timm's default draws it with std 1e-6."""
    model = load_config(bundled(f"configs/pretrain/{recipe}.yaml", required=True)).model
    model.kwargs = {**model.kwargs, "img_size": 32, "depth": 1}  # the recipe's width (384 channels) kept
    torch.manual_seed(0)
    cls_token = build_backbone(model).cls_token
    assert 0.018 < cls_token.std().item() < 0.022
