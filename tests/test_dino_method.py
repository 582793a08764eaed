"""The DINO method on the engine: its temperature schedule is DINO's, its loss and centre are the pure
functions' on the student's and teacher's logits, and the shipped tiny config trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_pretrain_dict

from bam_dense.core.config import load_config
from bam_dense.core.paths import bundled
from bam_dense.engine.trainer import Trainer
from bam_dense.losses import dino_center, dino_loss
from bam_dense.methods import build_method
from bam_dense.methods.base import StepContext
from bam_dense.methods.dino import teacher_temp_at_epoch
from bam_dense.models.backbones import build_backbone

FIXTURES = Path(__file__).parent / "fixtures"
DINO_METHOD = {"name": "dino", "out_dim": 24, "hidden_dim": 16, "bottleneck_dim": 8, "warmup_teacher_temp": 0.04,
               "teacher_temp": 0.07, "warmup_teacher_temp_epochs": 3}


@pytest.mark.parametrize("warmup, temp, epochs, n_epochs", [(0.04, 0.07, 4, 8), (0.02, 0.07, 30, 100), (0.04, 0.04, 0, 5)])
def test_teacher_temperature_schedule_is_dinos_linspace(warmup, temp, epochs, n_epochs):
    official = np.concatenate((np.linspace(warmup, temp, epochs), np.ones(n_epochs - epochs) * temp))
    ours = [teacher_temp_at_epoch(e, warmup, temp, epochs) for e in range(n_epochs)]
    np.testing.assert_allclose(ours, official, rtol=1e-12)


def test_teacher_temperature_matches_the_recorded_official_schedule():
    rec = torch.load(FIXTURES / "dino_official.pt", weights_only=False)["loss"]
    # make_dino_official_fixture.py: (warmup 0.04, temp 0.07, 4 warm-up epochs) at epoch 2; (.., 2 epochs) at 4
    assert teacher_temp_at_epoch(2, 0.04, 0.07, 4) == pytest.approx(rec["multicrop"]["teacher_temp"], rel=1e-12)
    assert teacher_temp_at_epoch(4, 0.04, 0.07, 2) == pytest.approx(rec["two_crops"]["teacher_temp"], rel=1e-12)


def _method(tmp_path):
    raw = tiny_pretrain_dict(tmp_path)
    raw["method"] = dict(DINO_METHOD)
    cfg = load_config(data=raw)
    torch.manual_seed(0)
    return build_method(cfg.method, build_backbone(cfg.model)), cfg


def test_dino_method_loss_is_dino_loss_then_moves_the_centre(tmp_path):
    method, _ = _method(tmp_path)
    gen = torch.Generator().manual_seed(0)
    crops = [torch.randn(3, 3, 16, 16, generator=gen) for _ in range(2)] + \
            [torch.randn(3, 3, 8, 8, generator=gen) for _ in range(2)]
    with torch.no_grad():
        method.student.center.copy_(torch.randn(1, 24, generator=gen))
    center = method.student.center.clone()
    s_out = method.student(crops)
    t_out = method.teacher_forward(method.student, crops)
    assert s_out["logits"].shape == (12, 24) and t_out["logits"].shape == (6, 24)
    ctx = StepContext(step=0, epoch=1, n_global=2, n_crops=4)
    loss, terms = method.loss(s_out, t_out, ctx)
    teachers = t_out["logits"].chunk(2)
    expected = dino_loss(s_out["logits"].chunk(4), teachers, center, student_temp=0.1, teacher_temp=0.055)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(method.student.center, dino_center(teachers, center, momentum=0.9))
    assert not method.student.head.last_layer.weight_g.requires_grad


def test_dino_method_refuses_to_run_without_a_teacher(tmp_path):
    method, _ = _method(tmp_path)
    with pytest.raises(ValueError, match="teacher.enabled"):
        method.loss({"logits": torch.zeros(4, 24)}, None, StepContext(0, 0, 2, 2))


def test_dino_tiny_config_trains_steps_and_checkpoints_the_centre(tmp_path):
    cfg = load_config(bundled("configs/pretrain/dino_tiny_cpu.yaml", required=True), [
        f"run.output_dir={tmp_path}", "run.progress=false", "run.tensorboard=false", "data.num_workers=0",
        "data.synthetic.num_images=64", "data.batch_size_per_gpu=16", "run.log_every=1", "run.max_steps=4",
        "eval.knn.enabled=false", "eval.random_init_baseline=false"])
    trainer = Trainer(cfg)
    summary = trainer.train()
    assert summary.steps == 4 and math.isfinite(summary.last_loss)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    center = trainer.method.student.center
    assert center.abs().sum() > 0  # moved from its zero start
