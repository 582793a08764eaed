"""Two whole MoCo v3 training steps of the engine equal the official ones (facebookresearch/moco-v3 ``train``).

``fixtures/mocov3_step_official.pt`` (``make_mocov3_step_fixture.py``) holds, for a tiny ``MoCo_ViT`` (AdamW) and a
tiny ``MoCo_ResNet`` (moco-v3's LARS), the initial weights, the batches and what iterations 2 and 3 of an official
run made of them (lr warm-up and ``--moco-m-cos`` schedules mid-way): the loss, the gradients, the online network
after the optimizer step and the momentum encoder after its update. Here the engine is built from the **shipped
recipe** (``configs/pretrain/mocov3_vit_small_300ep.yaml``, ``mocov3_r50_100ep.yaml``) with only the widths, sizes
and schedule lengths of the fixture put in, loaded with the same weights, and its ``train_step`` must give the same
numbers; a separate test compares the initialisation the recipe itself gives with the official one.

Key mapping: :func:`official_maps.mocov3_to_ours` (``base_encoder`` / ``momentum_encoder`` to the student's and the
teacher's ``backbone``, the MLPs' Sequential indices to ``MLPHead``'s), checked key by key.

Teacher: moco-v3 updates the momentum encoder at the start of iteration ``i`` with ``m_i`` from the online
weights before that step's update; the engine updates it after step ``i - 1`` from the same weights with the same
``m_i`` (``teacher_momentum_lead``), so its teacher after step 2 is the official one of iteration 3.

Tolerance: 1e-5 absolute on weights of order 0.1-1 that move by 1e-3 to 1e-1 in the steps, 1e-4 of each
gradient's largest entry (1e-5 absolute at least), 1e-6 relative on the losses: float32 rounding of equivalent orders of operations (timm
1.x's fused attention against timm 0.4.9's explicit softmax, DDP's bucketed gradients), amplified by the heads'
BatchNorm over 8 samples (the gradients agree to about 1e-5 of their size, the losses to 2e-7); a wrong LARS rule
or weight-decay group moves weights by more than 100 times the tolerance (checked below).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from official_maps import assert_same_init, assert_states_close, engine_steps, mocov3_to_ours, start_from

from bam_dense.core.config import load_config
from bam_dense.core.errors import UserFacingError
from bam_dense.core.paths import bundled
from bam_dense.engine.trainer import Trainer
from bam_dense.models.backbones import build_backbone

FIXTURE = Path(__file__).parent / "fixtures" / "mocov3_step_official.pt"
RECIPES = {"vit": bundled("configs/pretrain/mocov3_vit_small_300ep.yaml", required=True),
           "resnet": bundled("configs/pretrain/mocov3_r50_100ep.yaml", required=True)}
HEAD = {"vit": "head", "resnet": "fc"}
ATOL = 1e-5  # weights of order 0.1-1
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5  # gradients: of their tensor's largest entry, or absolute


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURE, weights_only=True)


def _recipe(tmp_path, rec: dict, name: str, optim: dict | None = None):
    """The shipped recipe with the fixture's widths, sizes and schedule lengths: nothing else changed."""
    s = rec["cases"][name]["settings"]
    raw = yaml.safe_load(RECIPES[name].read_text())
    raw["run"] = {"output_dir": str(tmp_path), "seed": 0, "progress": False, "tensorboard": False, "device": "cpu"}
    raw["data"].update(path=None, batch_size_per_gpu=s["batch"], num_workers=0,
                       synthetic={"num_images": s["batch"] * s["iters_per_epoch"], "size": 20, "num_classes": 2, "seed": 0})
    raw["data"]["views"]["global_size"] = rec["batches"][0][0].shape[-1]
    vit = rec["vit"]
    if name == "vit":
        raw["model"]["kwargs"] = {**raw["model"].get("kwargs", {}), "img_size": vit["img_size"], "patch_size": vit["patch_size"],
                                  "embed_dim": vit["embed_dim"], "depth": vit["depth"], "num_heads": vit["num_heads"]}
    else:
        raw["model"]["kwargs"] = {"layers": [1, 1, 1, 1], "channels": [c // rec["resnet_width_div"] for c in (64, 128, 256, 512)]}
    raw["optim"].update(epochs=s["epochs"], warmup_epochs=s["warmup_epochs"], lr=s["base_lr"], weight_decay=s["weight_decay"],
                        amp="none", **(optim or {}))
    raw["teacher"]["momentum"] = s["moco_m"]
    raw["method"].update(dim=s["moco_dim"], mlp_dim=s["moco_mlp_dim"])
    raw["eval"] = {"knn": {"enabled": False}}
    return load_config(data=raw)


def _engine_steps(tmp_path, rec: dict, name: str, optim: dict | None = None) -> tuple[Trainer, list[dict]]:
    """The official initial state in the recipe's engine, then one ``train_step`` per recorded iteration."""
    case = rec["cases"][name]
    trainer = Trainer(_recipe(tmp_path, rec, name, optim))
    initial = mocov3_to_ours(case["initial"], HEAD[name])
    teacher = {k: v for k, v in initial.items() if not k.startswith("predictor.")}  # the first update: the initial
    start_from(trainer, initial, teacher, case["iterations"][0]["iteration"], case["adam_state"],
               lambda state: mocov3_to_ours(state, HEAD[name]))
    return trainer, engine_steps(trainer, rec["batches"])


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_two_engine_steps_from_the_recipe_equal_the_official_mocov3_steps(tmp_path, official, name):
    case = official["cases"][name]
    _, results = _engine_steps(tmp_path, official, name)
    its = case["iterations"]
    for i, (it, ours) in enumerate(zip(its, results)):
        assert ours["terms"]["lr"] == pytest.approx(it["lr"], rel=1e-12)
        assert ours["terms"]["loss"] == pytest.approx(it["loss"], rel=1e-6, abs=1e-6)
        grads = mocov3_to_ours(it["grads"], HEAD[name])
        assert_states_close(ours["grads"], grads, f"step {i} gradient", GRAD_ATOL, GRAD_RTOL)
        assert_states_close(ours["student"], mocov3_to_ours(it["student"], HEAD[name]), f"step {i} student", ATOL)
        if i + 1 < len(its):  # the official update at the start of the next iteration
            assert ours["terms"]["teacher_momentum"] == pytest.approx(its[i + 1]["momentum"], rel=1e-12)
            teacher = mocov3_to_ours(its[i + 1]["teacher"], HEAD[name])
            assert_states_close(ours["teacher"], teacher, f"step {i} teacher", ATOL)


@pytest.mark.parametrize("name, optim", [
    ("resnet", {"lars_rule": "lewel"}),  # LEWEL's LARS: trust on ||g|| + wd ||w||, lr inside the momentum buffer
    ("vit", {"decay_1d": False}),  # biases and LayerNorm parameters without weight decay
])
def test_each_official_detail_changes_the_steps_beyond_the_tolerance(tmp_path, official, name, optim):
    _, results = _engine_steps(tmp_path, official, name, optim)
    expected = mocov3_to_ours(official["cases"][name]["iterations"][-1]["student"], HEAD[name])
    gap = max((results[-1]["student"][k] - v).abs().max().item() for k, v in expected.items())
    assert gap > 100 * ATOL


def test_the_vit_recipe_initialises_as_vits_py(tmp_path, official):
    """The initialisation a user gets from the ViT recipe is VisionTransformerMoCo's: the same fixed position table
    bit for bit, the frozen patch projection U(+-sqrt(6 / (3 p^2 + D))) with a zero bias, QKV and the other linears
    xavier-uniform bounds, class token std 1e-6."""
    trainer = Trainer(_recipe(tmp_path, official, "vit"))
    ours = trainer.student.state_dict()
    theirs = mocov3_to_ours(official["cases"]["vit"]["initial"], "head")
    assert torch.equal(ours["backbone.pos_embed"], theirs["backbone.pos_embed"])
    vit = official["vit"]
    bound = (6.0 / (3 * vit["patch_size"] ** 2 + vit["embed_dim"])) ** 0.5
    for state in (ours, theirs):
        weight = state["backbone.patch_embed.proj.weight"]
        assert 0.95 * bound < weight.abs().max().item() <= bound
        assert not state["backbone.patch_embed.proj.bias"].any()
        assert state["backbone.cls_token"].abs().max().item() < 1e-5
    frozen = {n for n, p in trainer.student.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone." + n.split(".", 1)[1] for n in official["cases"]["vit"]["frozen"]}
    for key, value in theirs.items():  # the same distribution: linears by their xavier bound, biases zero
        if key.endswith(".weight") and value.dim() == 2 and key.startswith("backbone."):
            torch.testing.assert_close(ours[key].abs().max(), value.abs().max(), rtol=0.1, atol=0, msg=key)
        if key.startswith("backbone.") and key.endswith(".bias") and "norm" not in key:
            assert not ours[key].any() and not value.any(), key


def test_the_resnet_recipe_initialises_as_main_moco(tmp_path, official):
    """torchvision ``resnet50(zero_init_residual=True)`` as the recipe builds it: the same tensors are constant
    (the zeroed last BatchNorm of each block, BN ones and zeros), the convolutions kaiming-normal (fan out) of the
    same scale, the heads PyTorch's default."""
    trainer = Trainer(_recipe(tmp_path, official, "resnet"))
    ours = trainer.student.state_dict()
    assert_same_init(ours, mocov3_to_ours(official["cases"]["resnet"]["initial"], "fc"))
    assert not ours["backbone.layer1.0.bn3.weight"].any()  # zero_init_residual


def test_decaying_every_parameter_is_refused_for_lars(tmp_path, official):
    """LARS has its own rule for 1-d parameters: optim.decay_1d there is an error naming the key."""
    with pytest.raises(UserFacingError, match="optim.decay_1d"):
        Trainer(_recipe(tmp_path, official, "resnet", {"decay_1d": True}))


@pytest.mark.parametrize("recipe", ["bam_vit_small_16gpu", "bam_vit_base_16gpu"])
def test_the_bam_recipes_keep_the_init_of_bams_get_arch(recipe):
    """BAM's get_arch asks timm for weight_init='moco', which leaves the (frozen) patch projection at PyTorch's
    default, U(+-1/sqrt(3 p^2)) with a non-zero bias: not vits.py's projection of the MoCo v3 recipe."""
    model = load_config(bundled(f"configs/pretrain/{recipe}.yaml", required=True)).model
    model.kwargs = {**model.kwargs, "img_size": 32, "depth": 1}
    torch.manual_seed(0)
    proj = build_backbone(model).patch_embed.proj
    bound = 1 / (3 * proj.kernel_size[0] * proj.kernel_size[1]) ** 0.5
    assert 0.95 * bound < proj.weight.abs().max().item() <= bound
    assert proj.bias.abs().max().item() > 0.5 * bound
