"""Two whole BAM training steps of the engine equal the official ones (DanielShalam/BAM ``train_one_epoch``).

``fixtures/bam_step_official.pt`` (``make_bam_step_fixture.py``) holds, for a tiny ViT (BAM's ``models/vit.py``:
fixed sin-cos table, frozen patch projection, timm's ``moco`` init) with the script's 3-layer GELU projector and a
momentum teacher, the initial weights, AdamW moments and two multi-crop batches (2 global, 6 local crops), and
what iterations 3 and 4 of an official run made of them: the loss (``DistillBAMLoss``, its bug B1 fixed), the
gradients, the student after the clipped AdamW step and the teacher after ``update_teacher``. The engine is built
from the **shipped recipe** ``configs/pretrain/bam_vit_small_16gpu.yaml`` with only widths, sizes, top-k (the
script's 128 is for 256 images) and schedule lengths put in (no warm-up: DINO's ``cosine_scheduler`` warm-up is
``linspace(0, lr, W)``, the engine's ``lr * step / W``, docs/methods.md), loaded with the same weights.

Teacher: ``StudentTeacherWrapper`` updates it at the start of iteration ``i`` (momentum ``m_i``, popped from the
schedule) from the student before that step; the engine does it after step ``i - 1`` from the same weights with
``teacher_momentum_lead = 1``, so its teacher after step 3 is the official one of iteration 4.

Tolerance as ``test_mocov3_official_step.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from official_maps import assert_same_init, assert_states_close, bam_to_ours, engine_steps, start_from

from bam_dense.core.config import load_config
from bam_dense.core.paths import bundled
from bam_dense.engine.trainer import Trainer

FIXTURE = Path(__file__).parent / "fixtures" / "bam_step_official.pt"
RECIPE = bundled("configs/pretrain/bam_vit_small_16gpu.yaml", required=True)
ATOL = 1e-5  # weights of order 0.1-1
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5  # gradients: of their tensor's largest entry, or absolute


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _recipe(tmp_path, rec: dict, method: dict | None = None):
    s, vit, batch = rec["settings"], rec["vit"], rec["batches"][0]
    raw = yaml.safe_load(RECIPE.read_text())
    raw["run"] = {"output_dir": str(tmp_path), "seed": 0, "progress": False, "tensorboard": False, "device": "cpu"}
    raw["data"].update(path=None, batch_size_per_gpu=s["batch"], num_workers=0,
                       synthetic={"num_images": s["batch"], "size": 20, "num_classes": 2, "seed": 0})
    raw["data"]["views"].update(global_size=batch[0].shape[-1], local_size=batch[-1].shape[-1], local_crops=len(batch) - 2)
    raw["model"]["kwargs"] = {**raw["model"].get("kwargs", {}), **{k: vit[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}}
    raw["optim"].update(epochs=s["epochs"], warmup_epochs=s["warmup_epochs"], lr=s["lr"], min_lr=s["min_lr"], amp="none")
    raw["teacher"]["momentum"] = s["teacher_m"]
    raw["method"]["projector"].update(hidden_dim=s["hidden_dim"], out_dim=s["out_dim"])
    raw["method"].update({"top_k": s["top_k_sink"], **(method or {})})
    raw["eval"] = {"knn": {"enabled": False}}
    return load_config(data=raw)


def _engine_steps(tmp_path, rec: dict, method: dict | None = None) -> list[dict]:
    trainer = Trainer(_recipe(tmp_path, rec, method))
    teacher = bam_to_ours(rec["iterations"][0]["teacher"])  # after the update at the start of the first iteration
    start_from(trainer, bam_to_ours(rec["initial"]), teacher, rec["iterations"][0]["iteration"], rec["adam_state"],
               bam_to_ours)
    return engine_steps(trainer, rec["batches"])


def test_two_engine_steps_from_the_recipe_equal_the_official_bam_steps(tmp_path, official):
    its = official["iterations"]
    results = _engine_steps(tmp_path, official)
    for i, (it, ours) in enumerate(zip(its, results)):
        assert ours["terms"]["lr"] == pytest.approx(it["lr"], rel=1e-12)
        assert ours["terms"]["wd"] == pytest.approx(it["weight_decay"], rel=1e-12)
        assert ours["terms"]["loss"] == pytest.approx(it["loss"], rel=1e-6, abs=1e-6)
        assert_states_close(ours["grads"], bam_to_ours(it["grads"]), f"step {i} gradient", GRAD_ATOL, GRAD_RTOL)
        assert_states_close(ours["student"], bam_to_ours(it["student"]), f"step {i} student", ATOL)
        if i + 1 < len(its):  # the official update at the start of the next iteration
            assert ours["terms"]["teacher_momentum"] == pytest.approx(its[i + 1]["momentum"], rel=1e-12)
            assert_states_close(ours["teacher"], bam_to_ours(its[i + 1]["teacher"]), f"step {i} teacher", ATOL)


def test_top_k_changes_the_steps_beyond_the_tolerance(tmp_path, official):
    """The recorded steps use the top-k path (B1 fixed): without it the engine's steps differ."""
    results = _engine_steps(tmp_path, official, {"top_k": 0})
    expected = bam_to_ours(official["iterations"][-1]["student"])
    gap = max((results[-1]["student"][k] - v).abs().max().item() for k, v in expected.items())
    assert gap > 100 * ATOL


def test_the_recipe_initialises_as_bams_get_arch(tmp_path, official):
    """The recipe's network starts as BAM's: timm's ``moco`` init, the patch projection at PyTorch's default, the
    sin-cos table bit for bit, the projector truncated normal std 0.02 with zero biases."""
    trainer = Trainer(_recipe(tmp_path, official))
    ours, theirs = trainer.student.state_dict(), bam_to_ours(official["initial"])
    assert torch.equal(ours["backbone.pos_embed"], theirs["backbone.pos_embed"])
    assert_same_init(ours, theirs)
