"""MoCo v3 on the engine, CO-DINO and CO-MoCoV3 (issue 19): hand-computed losses, the official momentum
schedule, exact reduction to the base method at w_s = 0, and training from the shipped tiny configs (one and
two processes)."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch
import torch.nn.functional as F
from conftest import PYTHON, REPO, tiny_pretrain_dict

from bam_dense.core.config import ConfigError, load_config
from bam_dense.core.paths import bundled
from bam_dense.engine.teacher import make_teacher
from bam_dense.engine.trainer import Trainer
from bam_dense.losses import dino_center, dino_loss, mocov3_loss
from bam_dense.methods import build_method
from bam_dense.methods.base import StepContext
from bam_dense.models.backbones import build_backbone, features
from bam_dense.models.heads import MLPHead
from bam_dense.models.rf_resnet import output_stride, receptive_field

TWO_VIEW = {"kind": "two_view", "global_crops": 2, "global_size": 16, "local_crops": 0}
DINO_HEAD = {"out_dim": 24, "hidden_dim": 16, "bottleneck_dim": 8, "warmup_teacher_temp": 0.04, "teacher_temp": 0.07,
             "warmup_teacher_temp_epochs": 3}
TINY_RESNET = {"arch": "resnet18", "kwargs": {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "output_stride": 8}}


def _cfg(tmp_path, name: str, model: dict | None = None, **method) -> dict:
    raw = tiny_pretrain_dict(tmp_path, method_name=name, run={"max_steps": 2})
    if "mocov3" in name:
        raw["method"] = {"name": name, "dim": 8, "mlp_dim": 16}
        raw["data"]["views"].update(TWO_VIEW)
    else:
        raw["method"] = {"name": name, **DINO_HEAD}
    raw["method"].update(method)
    if model is not None:
        raw["model"] = model
        raw["data"]["views"].update(global_size=32, local_size=16)
    return raw


def _build(tmp_path, name, model=None, seed=0, **method):
    cfg = load_config(data=_cfg(tmp_path, name, model, **method))
    torch.manual_seed(seed)
    method_ = build_method(cfg.method, build_backbone(cfg.model))
    return method_, make_teacher(method_.student, method_.teacher_exclude)


def _views(b=6, size=16, n_local=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, size, size, generator=gen) for _ in range(2)] + \
           [torch.randn(b, 3, size // 2, size // 2, generator=gen) for _ in range(n_local)]


def _info_nce_by_hand(q: torch.Tensor, k: torch.Tensor, temp: float) -> float:
    """2T * mean over queries of -log softmax: q is B x n x d (n queries of image i, positive key i), k B x d."""
    q, k = q.detach().double(), k.detach().double()
    total, count = 0.0, 0
    for i in range(q.shape[0]):
        for c in range(q.shape[1]):
            sims = [float(q[i, c] @ k[j] / (q[i, c].norm() * k[j].norm())) / temp for j in range(k.shape[0])]
            total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
            count += 1
    return 2 * temp * total / count


# ---------------------------------------------------------------------------------------------- MoCo v3
@pytest.mark.parametrize("model, layers", [(None, (3, 2, True)), (TINY_RESNET, (2, 2, False))], ids=["vit", "resnet"])
def test_mocov3_is_the_official_builder_and_symmetric_infonce(tmp_path, model, layers):
    method, teacher = _build(tmp_path, "mocov3", model)
    s = method.student
    assert (len(s.projector.linears), len(s.predictor.linears), s.predictor.last_norm is not None) == layers
    assert s.projector.last_norm is not None and teacher.predictor is None  # momentum encoder: backbone + projector
    crops = _views(size=32 if model else 16)
    s_out = s(crops)
    with torch.no_grad():
        t_out = method.teacher_forward(teacher, crops)
    loss, terms = method.loss(s_out, t_out, StepContext(0, 0, 2, 2))
    # by hand: every view through backbone, projector, predictor in its own call (BN per view, as MoCo.forward)
    q = [s.predictor(s.projector(features(s.backbone, x).pooled)) for x in crops]
    with torch.no_grad():
        k = [teacher.projector(features(teacher.backbone, x).pooled) for x in crops]
    expected = _info_nce_by_hand(q[0][:, None], k[1], 0.2) + _info_nce_by_hand(q[1][:, None], k[0], 0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-5) and set(terms) == {"mocov3"}


def test_mocov3_momentum_of_every_step_is_the_official_one(tmp_path):
    # main_moco.py: at iteration i (fractional epoch e = epoch + i / iters) the momentum encoder is updated with
    # m(e) = 1 - (1 + cos(pi e / epochs)) (1 - m) / 2, *before* the keys. The engine updates after the previous
    # optimizer step from the same student weights, so after step i it must use m of step i + 1.
    raw = _cfg(tmp_path, "mocov3")
    raw["run"]["max_steps"] = 3
    raw["teacher"] = {"enabled": True, "momentum": 0.9, "momentum_end": 1.0}
    trainer = Trainer(load_config(data=raw))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r["teacher_momentum"] for r in rows if r["kind"] == "train"]
    iters, epochs = trainer.steps_per_epoch, raw["optim"]["epochs"]
    official = [1 - (1 + math.cos(math.pi * ((i + 1) / iters) / epochs)) * (1 - 0.9) / 2 for i in range(3)]
    assert logged == pytest.approx(official, rel=1e-12) and logged[0] > 0.9


def test_mocov3_momentum_order_gives_the_official_teacher_sequence():
    # Scalars: official (update, then keys) against the engine (keys, step, then update with the lead).
    from bam_dense.engine.schedules import cosine

    total, m0 = 5, 0.8
    student = [1.0, 3.0, -2.0, 0.5, 4.0, 2.0]  # the student's weight at the start of each iteration
    official, t = [], student[0]
    for i in range(total):
        m = 1 - (1 + math.cos(math.pi * i / total)) * (1 - m0) / 2
        t = t * m + student[i] * (1 - m)
        official.append(t)
    engine, t = [], student[0]  # make_teacher: a copy of the student
    for i in range(total):
        engine.append(t)  # the teacher the keys of iteration i come from
        m = cosine(i + 1, total, m0, 1.0)  # after step i, teacher_momentum_lead = 1
        t = t * m + student[i + 1] * (1 - m)
    assert engine == pytest.approx(official, rel=1e-12)


def test_methods_that_need_the_teacher_or_two_views_say_so(tmp_path):
    for name in ("mocov3", "co_mocov3", "co_dino"):
        raw = _cfg(tmp_path, name)
        raw["teacher"]["enabled"] = False
        with pytest.raises(ConfigError, match="teacher.enabled"):
            load_config(data=raw)
    raw = _cfg(tmp_path, "co_mocov3")
    raw["data"]["views"].update(kind="multicrop", local_crops=2)
    with pytest.raises(ConfigError, match="two_view"):
        load_config(data=raw)
    with pytest.raises(ConfigError, match="local_weight"):
        load_config(data=_cfg(tmp_path, "co_dino", local_weight=1.5))


# ---------------------------------------------------------------------------------------------- local terms by hand
def test_mocov3_loss_with_queries_per_cell_is_the_mean_of_per_cell_losses():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(4, 3, 5, generator=gen), torch.randn(4, 5, generator=gen)
    loss = mocov3_loss(q, k, temperature=0.3)
    assert loss.item() == pytest.approx(_info_nce_by_hand(q, k, 0.3), rel=1e-6)
    per_cell = sum(mocov3_loss(q[:, c], k, temperature=0.3) for c in range(3)) / 3
    assert loss.item() == pytest.approx(per_cell.item(), rel=1e-6)
    with pytest.raises(ValueError, match="N x n x d"):
        mocov3_loss(q[:3], k)


def test_per_cell_queries_meet_the_keys_of_every_process(tmp_path):
    # CO-MoCoV3's local term in DDP: each rank's cells against the keys gathered from both ranks, labels offset by
    # rank; the mean of the two ranks' losses is the one-process loss on the whole batch.
    from dist_helpers import mocov3_rank_loss, run_world

    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(6, 4, 5, generator=gen), torch.randn(6, 5, generator=gen)
    per_rank = run_world(mocov3_rank_loss, 2, (q, k, 0.2), tmp_path)
    assert sum(per_rank) / 2 == pytest.approx(mocov3_loss(q, k, temperature=0.2).item(), rel=1e-6)
    assert per_rank[0] != pytest.approx(mocov3_loss(q[:3], k[:3], temperature=0.2).item())  # not rank-local keys


@pytest.mark.parametrize("convex", [False, True])
@pytest.mark.parametrize("target_head", ["local", "global"])
def test_co_mocov3_local_term_by_hand(tmp_path, convex, target_head):
    method, teacher = _build(tmp_path, "co_mocov3", local_weight=0.4, convex=convex, target_head=target_head)
    assert (teacher.local_projector is not None) == (target_head == "local") and teacher.local_predictor is None
    crops = _views(b=3)
    s_out = method.student(crops)
    with torch.no_grad():
        t_out = method.teacher_forward(teacher, crops)
    loss, terms = method.loss(s_out, t_out, StepContext(0, 0, 2, 2))
    s = method.student
    cells = [features(s.backbone, x).dense.flatten(2) for x in crops]  # B x C x 16 (a 4x4 patch grid)
    q = [s.local_predictor(s.local_projector(c)).transpose(1, 2) for c in cells]  # B x 16 x dim
    with torch.no_grad():
        if target_head == "local":
            t = [teacher.local_projector(features(teacher.backbone, x).dense.flatten(2)).mean(2) for x in crops]
        else:
            t = [teacher.projector(features(teacher.backbone, x).pooled) for x in crops]
    l_l = _info_nce_by_hand(q[0], t[1], 0.2) + _info_nce_by_hand(q[1], t[0], 0.2)
    assert q[0].shape == (3, 16, 8)
    assert terms["local"].item() == pytest.approx(l_l, rel=1e-5)
    l_g = terms["global"].item()
    expected = (0.6 if convex else 1.0) * l_g + 0.4 * l_l
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("convex", [False, True])
def test_co_dino_local_term_by_hand(tmp_path, convex):
    method, _ = _build(tmp_path, "co_dino", local_weight=0.25, convex=convex)
    gen = torch.Generator().manual_seed(1)
    b, cells, k = 2, 3, 24
    center = torch.randn(1, k, generator=gen)
    with torch.no_grad():
        method.student.center.copy_(center)
    student = {"logits": torch.randn(4 * b, k, generator=gen),  # 2 global + 2 local crops, crop-major
               "local_logits": [torch.randn(b * cells, k, generator=gen) for _ in range(2)]}  # image-major cells
    teacher = {"logits": torch.randn(2 * b, k, generator=gen)}
    loss, terms = method.loss(student, teacher, StepContext(step=0, epoch=1, n_global=2, n_crops=4))
    temp = 0.055  # epoch 1 of linspace(0.04, 0.07, 3)
    t = teacher["logits"].double().chunk(2)
    total = 0.0
    for a, other in ((0, 1), (1, 0)):
        for i in range(b):
            p = torch.softmax((t[other][i] - center[0].double()) / temp, dim=0)
            for c in range(cells):
                log_s = torch.log_softmax(student["local_logits"][a][i * cells + c].double() / 0.1, dim=0)
                total += float(-(p * log_s).sum())
    l_l = total / (2 * b * cells)  # mean over cells and images, averaged over the two directions like DINO's pairs
    l_g = dino_loss(student["logits"].chunk(4), teacher["logits"].chunk(2), center, 0.1, temp)
    assert terms["local"].item() == pytest.approx(l_l, rel=1e-5)
    assert terms["global"].item() == pytest.approx(l_g.item(), rel=1e-6)
    assert loss.item() == pytest.approx((0.75 if convex else 1.0) * l_g.item() + 0.25 * l_l, rel=1e-5)
    # the centre moves by the global teacher outputs only, as DINO's
    torch.testing.assert_close(method.student.center, dino_center(teacher["logits"].chunk(2), center, 0.9))


@pytest.mark.parametrize("shared_head", [False, True])
def test_co_dino_cells_of_the_global_crops_through_the_local_head(tmp_path, shared_head):
    method, teacher = _build(tmp_path, "co_dino", TINY_RESNET, shared_head=shared_head, grid=2)
    s = method.student
    assert (s.local_head is None) == shared_head and teacher.local_head is None
    crops = _views(b=3, size=32, n_local=2)
    s.eval()  # BatchNorm with running statistics: the backbone sees both global crops in one call, the check one
    out = s(crops)
    assert out["logits"].shape == (12, 24) and len(out["local_logits"]) == 2
    head = s.head if shared_head else s.local_head
    dense = features(s.backbone, crops[1]).dense  # B x 128 x 4 x 4, pooled to 2 x 2
    cells = F.adaptive_avg_pool2d(dense, 2).flatten(2).transpose(1, 2).reshape(12, -1)
    torch.testing.assert_close(out["local_logits"][1], head(cells), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        t_out = method.teacher_forward(teacher, crops)
    assert set(t_out) == {"logits"} and t_out["logits"].shape == (6, 24)


def test_local_heads_are_pointwise_and_learn_only_on_the_online_side(tmp_path):
    for name in ("co_dino", "co_mocov3"):
        method, teacher = _build(tmp_path, name)
        crops = _views(b=4, n_local=2 if name == "co_dino" else 0)
        loss, _ = method.loss(method.student(crops), method.teacher_forward(teacher, crops),
                              StepContext(0, 0, 2, len(crops)))
        loss.backward()
        assert all(p.grad is None for p in teacher.parameters())
        trained = {n.split(".")[0] for n, p in method.student.named_parameters() if p.grad is not None}
        assert {"backbone", "head", "local_head"} <= trained or {"backbone", "projector", "predictor", "local_projector",
                                                                 "local_predictor"} <= trained, (name, trained)
    assert isinstance(method.student.local_projector, MLPHead)


# ---------------------------------------------------------------------------------------------- w_s = 0 is the base
@pytest.mark.parametrize("base, co", [("dino", "co_dino"), ("mocov3", "co_mocov3")])
def test_zero_local_weight_is_exactly_the_base_method(tmp_path, base, co):
    runs = {}
    for name in (base, co):
        extra = {"local_weight": 0.0} if name == co else {}
        raw = _cfg(tmp_path / name, name, **extra)
        raw["run"]["max_steps"] = 2
        trainer = Trainer(load_config(data=raw))
        trainer.train()
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = ([r["loss"] for r in rows if r["kind"] == "train"], trainer.student.state_dict(),
                      trainer.teacher.state_dict())
    (loss_b, student_b, teacher_b), (loss_c, student_c, teacher_c) = runs[base], runs[co]
    assert len(loss_b) == 2 and loss_b == loss_c  # the same loss at both steps, bit for bit
    for part_b, part_c in ((student_b, student_c), (teacher_b, teacher_c)):
        assert part_b.keys() == part_c.keys()  # no local head is built
        for key, value in part_b.items():
            assert torch.equal(value, part_c[key]), key  # the same parameters after two optimizer steps
    # and a positive w_s does change it
    raw = _cfg(tmp_path / "on", co, local_weight=0.3)
    on = Trainer(load_config(data=raw))
    on.train()
    first = next(r for r in map(json.loads, (tmp_path / "on" / "metrics.jsonl").read_text().splitlines())
                 if r["kind"] == "train")
    assert first["loss"] != pytest.approx(loss_b[0]) and "local" in first


# ---------------------------------------------------------------------------------------------- local stage
TINY_RF29 = {"arch": "rf29_resnet18", "kwargs": {"layers": [1, 1, 1, 1], "widths": [8, 16, 24, 32], "stem_width": 8,
                                                  "strides": [2, 2, 1]}}
CO_BYOL_HEADS = {"projector": {"layers": 2, "hidden_dim": 16, "out_dim": 8, "bn": True, "bias": False, "act": "relu"},
                 "predictor": {"layers": 2, "hidden_dim": 16, "out_dim": 8, "bn": True, "bias": False, "act": "relu"}}


def _co_cfg(tmp_path, name, model=None, **method):
    if name != "co_byol":
        return _cfg(tmp_path, name, model, **method)
    raw = _cfg(tmp_path, "co_mocov3", model)  # two views, the same data and model sections
    raw["method"] = {"name": "co_byol", **CO_BYOL_HEADS, **method}
    return raw


def _co_build(tmp_path, name, model=None, **method):
    cfg = load_config(data=_co_cfg(tmp_path, name, model, **method))
    torch.manual_seed(0)
    method_ = build_method(cfg.method, build_backbone(cfg.model))
    return method_, make_teacher(method_.student, method_.teacher_exclude)


@pytest.mark.parametrize("model", [TINY_RESNET, TINY_RF29, None], ids=["resnet", "rf29", "vit"])
def test_features_tap_an_intermediate_stage_of_the_same_pass(model):
    from bam_dense.models.backbones import describe, resnet_stage_features

    cfg = load_config(data=_cfg(REPO, "dino", model))
    torch.manual_seed(0)
    backbone = build_backbone(cfg.model).eval()
    x = torch.randn(2, 3, 32 if model else 16, 32 if model else 16)
    plain = features(backbone, x)
    n = describe(backbone).stage_count
    assert n == (4 if model else 2)
    for stage in range(1, n + 1):
        feats = features(backbone, x, stage=stage)
        assert torch.equal(feats.dense, plain.dense) and torch.equal(feats.pooled, plain.pooled)
        if model:  # an independent pass through the stem and layer1..layer{stage}
            expected = resnet_stage_features(backbone, x, stage)
        else:  # timm's own intermediate outputs, normalised by the final norm (DINO's get_intermediate_layers)
            expected = backbone.get_intermediate_layers(x, n=[stage - 1], reshape=True, norm=True)[0]
        torch.testing.assert_close(feats.inner, expected, rtol=0, atol=0)
        if not model:  # DINO's position resampling goes through the same blocks (at the table's own size, no resampling)
            torch.testing.assert_close(features(backbone, x, "dino", stage=stage).inner, expected, rtol=0, atol=0)
    assert torch.equal(features(backbone, x, stage=n).inner, plain.dense)  # the last stage is the dense map
    assert plain.inner is None


@pytest.mark.parametrize("name", ["co_byol", "co_dino", "co_mocov3"])
def test_local_heads_embed_the_chosen_stage(tmp_path, name):
    from bam_dense.models.backbones import resnet_stage_features

    method, teacher = _co_build(tmp_path, name, TINY_RESNET, local_stage=2, local_weight=0.3)
    s = method.student
    s.eval()  # BatchNorm on running statistics, so that the check's separate pass gives the same numbers
    crops = _views(b=3, size=32, n_local=2 if name == "co_dino" else 0)
    stage2 = [resnet_stage_features(s.backbone, x, 2) for x in crops[:2]]  # B x 32 x 4 x 4 (layer2 of TINY_RESNET: 32 channels)
    assert stage2[0].shape == (3, 32, 4, 4)
    out = s(crops)
    if name == "co_dino":
        assert s.local_head.mlp[0].in_features == 32
        cells = stage2[1].flatten(2).transpose(1, 2).reshape(-1, 32)
        torch.testing.assert_close(out["local_logits"][1], s.local_head(cells), rtol=1e-4, atol=1e-5)
    else:
        assert s.local_projector.linears[0].in_features == 32
        key = "p_local" if name == "co_byol" else "q_local"
        got = out[1][key] if name == "co_byol" else out[1][key].transpose(1, 2)
        torch.testing.assert_close(got, s.local_predictor(s.local_projector(stage2[1].flatten(2))), rtol=1e-4, atol=1e-5)
    # the global branch still reads the last stage, and a training step runs through the engine's loss
    with torch.no_grad():
        t_out = method.teacher_forward(teacher, crops)
    loss, terms = method.loss(out, t_out, StepContext(0, 0, 2, len(crops)))
    assert torch.isfinite(loss) and "local" in terms


@pytest.mark.parametrize("name", ["co_byol", "co_dino", "co_mocov3"])
def test_local_stage_of_the_last_stage_is_the_default(tmp_path, name):
    losses = []
    for stage in (None, 4):
        method, teacher = _co_build(tmp_path, name, TINY_RESNET, local_stage=stage)
        crops = _views(b=3, size=32, n_local=2 if name == "co_dino" else 0)
        loss, _ = method.loss(method.student(crops), method.teacher_forward(teacher, crops), StepContext(0, 0, 2, len(crops)))
        losses.append(loss.item())
    assert losses[0] == losses[1]
    method, teacher = _co_build(tmp_path, name, TINY_RESNET, local_stage=3)  # and another stage is another loss
    crops = _views(b=3, size=32, n_local=2 if name == "co_dino" else 0)
    loss, _ = method.loss(method.student(crops), method.teacher_forward(teacher, crops), StepContext(0, 0, 2, len(crops)))
    assert loss.item() != pytest.approx(losses[0])


@pytest.mark.parametrize("model, stage", [(TINY_RESNET, 0), (TINY_RESNET, 5), (None, 3), (TINY_RESNET, -1)])
def test_a_stage_the_backbone_lacks_is_refused_at_start_up(tmp_path, model, stage):
    from bam_dense.core.errors import UserFacingError

    with pytest.raises(UserFacingError, match=r"method\.local_stage: .* is not a stage of .* choose 1-(4|2)"):
        _co_build(tmp_path, "co_byol", model, local_stage=stage)
    with pytest.raises(UserFacingError, match=r"method\.shared_head: DINO's own head reads the pooled last stage"):
        _co_build(tmp_path, "co_dino", TINY_RESNET, local_stage=2, shared_head=True)


GLOBAL_MLP = {"layers": 2, "hidden_dim": 24, "out_dim": 12, "bn": True, "bias": False, "act": "relu"}


@pytest.mark.parametrize("name", ["co_byol", "co_dino", "co_mocov3"])
def test_global_mlp_after_pooling_feeds_the_global_head_only(tmp_path, name):
    method, teacher = _co_build(tmp_path, name, TINY_RESNET, global_mlp=GLOBAL_MLP)
    s = method.student
    assert isinstance(s.global_mlp, MLPHead) and s.global_mlp.linears[0].in_features == 128  # the pooled width
    assert isinstance(teacher.global_mlp, MLPHead)  # part of the momentum encoder, as the backbone
    s.eval()
    crops = _views(b=3, size=32, n_local=2 if name == "co_dino" else 0)
    out = s(crops)
    pooled = [features(s.backbone, x).pooled for x in crops]
    if name == "co_dino":
        assert s.head.mlp[0].in_features == 12 and s.local_head.mlp[0].in_features == 128
        torch.testing.assert_close(out["logits"], s.head(s.global_mlp(torch.cat(pooled))), rtol=1e-4, atol=1e-5)
    else:
        assert s.projector.linears[0].in_features == 12 and s.local_projector.linears[0].in_features == 128
        torch.testing.assert_close(out[1]["z"], s.projector(s.global_mlp(pooled[1])), rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match=r"method\.shared_head"):
        _co_build(tmp_path, "co_dino", TINY_RESNET, global_mlp=GLOBAL_MLP, shared_head=True)


def test_local_stage_trains_in_the_engine(tmp_path):
    raw = _co_cfg(tmp_path, "co_mocov3", TINY_RF29, local_stage=3, global_mlp=GLOBAL_MLP)
    Trainer(load_config(data=raw)).train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 2 and all(math.isfinite(r["loss"]) and "local" in r for r in train)
    # the export keeps the backbone, and names the post-pool MLP it leaves out
    from bam_dense.convert.api import convert

    checkpoint = tmp_path / "checkpoints" / "last.pth"
    report = convert(checkpoint, "torchvision", tmp_path / "rf29.pth")
    reasons = dict(report.dropped)
    assert reasons["teacher.global_mlp.linears.0.weight"].startswith("post-pool MLP") and not report.unfilled


# ---------------------------------------------------------------------------------------------- tiny configs
def test_tiny_rf29_resnet18_keeps_the_preset_receptive_field(tmp_path):
    from bam_dense.models.rf_resnet import RFResNet

    for config in ("mocov3_tiny_cpu", "co_mocov3_tiny_cpu", "co_dino_tiny_cpu", "dino_rf29_tiny_cpu", "co_byol_rf29_tiny_cpu"):
        cfg = load_config(bundled(f"configs/pretrain/{config}.yaml", required=True))
        backbone = build_backbone(cfg.model)
        assert isinstance(backbone, RFResNet) and cfg.model.arch == "rf29_resnet18"
        assert receptive_field(backbone.cfg) == 29 and output_stride(backbone.cfg) == 8
        assert features(backbone, torch.zeros(1, 3, 32, 32)).dense.shape[-2:] == (4, 4)


@pytest.mark.parametrize("config, twin, differ", [
    ("dino_rf29_tiny_cpu", "co_dino_tiny_cpu", {"method"}),  # DINO: CO-DINO's tiny run without the local term
    ("co_byol_rf29_tiny_cpu", "co_byol_tiny_cpu", {"model"}),  # CO-BYOL's tiny run on the RF-29 backbone
])
def test_rf29_tiny_configs_change_one_thing_against_their_twin(config, twin, differ):
    import dataclasses

    a, b = (dataclasses.asdict(load_config(bundled(f"configs/pretrain/{c}.yaml", required=True))) for c in (config, twin))
    for section in a:
        if section == "run":
            assert {k: v for k, v in a[section].items() if k != "output_dir"} == \
                   {k: v for k, v in b[section].items() if k != "output_dir"}
        elif section not in differ:
            assert a[section] == b[section], section
    if "method" in differ:  # every DINO field of the CO-DINO config, and CO-DINO's own fields at w_s = 0 do nothing
        assert all(b["method"][k] == v for k, v in a["method"].items() if k != "name")
    else:  # the backbone and init of the CO-DINO tiny config (torchvision's: no zero-init, as both full recipes)
        co_dino = load_config(bundled("configs/pretrain/co_dino_tiny_cpu.yaml", required=True))
        assert a["model"] == dataclasses.asdict(co_dino.model) and not a["model"]["zero_init_residual"]


@pytest.mark.parametrize("config", ["mocov3_tiny_cpu", "co_mocov3_tiny_cpu", "co_dino_tiny_cpu", "dino_rf29_tiny_cpu",
                                    "co_byol_rf29_tiny_cpu"])
def test_tiny_configs_train_steps(tmp_path, config):
    cfg = load_config(bundled(f"configs/pretrain/{config}.yaml", required=True), [
        f"run.output_dir={tmp_path}", "run.progress=false", "run.tensorboard=false", "data.num_workers=0",
        "data.synthetic.num_images=32", "data.batch_size_per_gpu=8", "run.log_every=1", "run.max_steps=2",
        "eval.knn.enabled=false", "eval.random_init_baseline=false"])
    summary = Trainer(cfg).train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert summary.steps == 2 and len(train) == 2 and all(math.isfinite(r["loss"]) for r in train)
    if config.startswith("co_"):
        assert all(math.isfinite(r["local"]) and r["local"] > 0 for r in train)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["co_dino_tiny_cpu", "co_mocov3_tiny_cpu"])
def test_torchrun_two_cpu_processes_train_the_tiny_config(tmp_path, config):
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "pretrain" / "train.py"),
           "--config", str(bundled(f"configs/pretrain/{config}.yaml", required=True)), f"run.output_dir={tmp_path}",
           "run.progress=false", "run.tensorboard=false", "data.num_workers=0", "data.synthetic.num_images=32",
           "data.batch_size_per_gpu=4", "run.max_steps=2", "run.log_every=1", "eval.knn.enabled=false",
           "eval.random_init_baseline=false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es) on cpu" in proc.stdout
    state = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=True)
    assert state["step"] == 2 and state["world_size"] == 2
    train = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["local"]) for r in train if r["kind"] == "train")


def test_co_dino_teacher_never_drops_paths(tmp_path):
    """CO-DINO's teacher is DINO's, built without stochastic depth: its targets are deterministic; the student
    keeps its DropPath."""
    raw = _cfg(tmp_path, "co_dino", local_weight=0.3)
    raw["model"]["drop_path_rate"] = 0.5
    cfg = load_config(data=raw)
    torch.manual_seed(0)
    method = build_method(cfg.method, build_backbone(cfg.model))
    teacher = make_teacher(method.student, method.teacher_exclude)
    crops = _views(b=3, n_local=2)
    first, second = (method.teacher_forward(teacher, crops)["logits"] for _ in range(2))
    assert teacher.training and torch.equal(first, second)
    assert not torch.equal(method.student(crops)["logits"], method.student(crops)["logits"])


@pytest.mark.parametrize("shared_head", [False, True])
def test_co_dino_freezes_the_last_layer_of_every_head_in_the_first_epochs(tmp_path, shared_head):
    """DINO's cancel_gradients_last_layer for the local head too (with shared_head: DINO's one head)."""
    method, _ = _build(tmp_path, "co_dino", TINY_RESNET, shared_head=shared_head, local_weight=0.3, freeze_last_layer=2)
    heads = [method.student.head] + ([] if shared_head else [method.student.local_head])
    expected = {id(p) for head in heads for p in head.last_layer.parameters()}
    assert {id(p) for p in method.frozen_parameters(1)} == expected and len(method.frozen_parameters(1)) == len(expected)
    assert method.frozen_parameters(2) == []
