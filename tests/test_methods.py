"""LEWEL_B, BYOL, CO-BYOL, CO-BAM and LEWEL-BAM: official fixture, independent computations, reductions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_pretrain_dict
from dist_helpers import method_param_grads, run_world

from bam_dense.core.config import load_config
from bam_dense.core.paths import bundled
from bam_dense.engine.teacher import make_teacher
from bam_dense.engine.trainer import Trainer
from bam_dense.losses.lewel import lewel_loss
from bam_dense.methods import build_method
from bam_dense.methods.base import StepContext
from bam_dense.models.alignment import AlignmentNeck, alignment_maps, multi_head_pooling
from bam_dense.models.backbones import build_backbone
from bam_dense.models.heads import HeadConfig, MLPHead

FIXTURE = Path(__file__).parent / "fixtures" / "lewel_official.pt"
TWO_VIEW = {"views": {"kind": "two_view", "global_crops": 2, "global_size": 16, "local_crops": 0, "global_scale": [0.3, 1.0]}}


def _head(bn: bool = True) -> dict:
    return {"layers": 2, "hidden_dim": 32, "out_dim": 16, "bn": bn, "bias": not bn, "act": "relu"}


def method_cfg(tmp_path, name: str, bn: bool = True, teacher: dict | None = None, **method) -> dict:
    """A tiny config for ``name`` (BN in the BYOL-family heads unless ``bn=False``)."""
    cfg = tiny_pretrain_dict(tmp_path, method_name=name, run={"max_steps": 2})
    if teacher is not None:
        cfg["teacher"].update(teacher)
    m = cfg["method"]
    if name in ("byol", "lewel_b", "co_byol"):
        m.pop("top_k")
        m["projector"] = _head(bn)
        m["predictor"] = _head(bn)
        cfg["data"].update(TWO_VIEW)
        cfg["optim"]["name"] = "lars"
    if name == "lewel_b":
        m.update(num_heads=4)
    if name == "co_byol":
        m.update(grid=2)
    if name == "co_bam":
        m.update(grid=2, local_projector=_head(False))
    if name == "lewel_bam":
        m.update(neck=_head(bn), num_heads=4)
    m.update(method)
    return cfg


# ---------------------------------------------------------------------------- LEWEL against the official module
def _official():
    return torch.load(FIXTURE, weights_only=True)


def _load_mlp(head: MLPHead, state: dict, prefix: str) -> None:
    head.linears[0].weight.data.copy_(state[f"{prefix}.mlp.0.weight"].squeeze(-1))
    head.linears[1].weight.data.copy_(state[f"{prefix}.mlp.3.weight"].squeeze(-1))
    for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        getattr(head.norms[0], key).data.copy_(state[f"{prefix}.mlp.1.{key}"])


def _official_mlp1d_weights(in_dim: int, hid: int, out: int) -> list[torch.Tensor]:
    """The two 1x1-conv weights of LayneH/LEWEL (4ee47eb) ``MLP1D(in, hid, out)`` (bias=False, num_mlp=2) as
    ``LEWELB_EMAN.__init__`` leaves them: built as Conv1d -> BN -> ReLU -> Conv1d (PyTorch's default init),
    then ``init_weights()``, which (utils/init.py) gives every Conv1d kaiming normal, fan_out, relu; its
    ``normal(0, 0.01)`` branch is for nn.Linear only and never fires here."""
    convs = [torch.nn.Conv1d(in_dim, hid, 1, bias=False), torch.nn.Conv1d(hid, out, 1, bias=False)]
    for conv in convs:
        torch.nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return [conv.weight.detach().squeeze(-1) for conv in convs]


def test_lewel_heads_init_equals_the_official_mlp1d_with_the_same_seed():
    torch.manual_seed(3)
    official = _official_mlp1d_weights(8, 32, 8)
    torch.manual_seed(3)
    head = MLPHead.from_config(8, HeadConfig(2, 32, 8, bn=True, bias=False, act="relu"), init="kaiming_fan_out")
    assert all(torch.equal(lin.weight.detach(), w) for lin, w in zip(head.linears, official))
    # the recorded official module (seed 0) has the same per-layer spread: std sqrt(2 / fan_out)
    state = _official()["state_dict"]
    for key in ("predictor.mlp.0.weight", "predictor.mlp.3.weight", "predictor_obj.mlp.0.weight"):
        w = state[key]
        assert w.std().item() == pytest.approx(math.sqrt(2 / w.shape[0]), rel=0.15)


@pytest.mark.parametrize("recipe", ["lewel_b_r50_eman_200ep", "byol_r50_eman_200ep", "co_byol_r50_100ep",
                                    "co_byol_rf99_r50_100ep"])
def test_byol_family_heads_start_as_lewels_conv1d_heads(recipe):
    # Every head of the recipe (projectors, neck, predictors): kaiming normal fan_out, std sqrt(2 / out) for
    # each layer (the old predictors used normal(0, 0.01)).
    cfg = load_config(bundled(f"configs/pretrain/{recipe}.yaml", required=True))
    backbone = build_backbone(load_config(data={"model": {"arch": "resnet18", "kwargs": {"layers": [1, 1, 1, 1]}}}).model)
    torch.manual_seed(0)
    net = build_method(cfg.method, backbone).student
    heads = {n: m for n, m in net.named_modules() if isinstance(m, MLPHead)}
    assert any("predictor" in n for n in heads) and any("proj" in n for n in heads)
    for name, head in heads.items():
        for lin in head.linears:
            w = lin.weight.detach()
            assert w.mean().abs().item() < 1e-3, name
            assert w.std().item() == pytest.approx(math.sqrt(2 / w.shape[0]), rel=0.03), name
            assert w.abs().max().item() > 4 * math.sqrt(2 / w.shape[0]), name  # normal, not a bounded uniform


def test_lewel_neck_and_loss_equal_the_official_module():
    ref = _official()
    assert "LayneH/LEWEL models/lewel.py at commit" in ref["provenance"]
    c = ref["config"]
    cfg = HeadConfig(2, c["hid"], c["k"], bn=True, bias=False, act="relu")
    nets = {}
    for net in ("online_net", "target_net"):
        neck = AlignmentNeck(c["C"], cfg, c["heads"], scale=1.0)
        _load_mlp(neck.proj, ref["state_dict"], f"{net}.neck.proj")
        _load_mlp(neck.proj_obj, ref["state_dict"], f"{net}.neck.proj_obj")
        nets[net] = neck.train()
    predictor = MLPHead.from_config(c["k"], cfg)
    predictor_obj = MLPHead.from_config(c["k"], cfg)
    _load_mlp(predictor, ref["state_dict"], "predictor")
    _load_mlp(predictor_obj, ref["state_dict"], "predictor_obj")
    online, target = [], []
    for v, y in enumerate((ref["y1"], ref["y2"])):
        z_g, e = nets["online_net"](y)
        torch.testing.assert_close(z_g, ref["online"][v][0].squeeze(-1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(e, ref["online"][v][1], rtol=1e-5, atol=1e-6)
        online.append({"p": predictor(z_g), "p_e": predictor_obj(e)})
        with torch.no_grad():
            tz, te = nets["target_net"](y)
        torch.testing.assert_close(te, ref["target"][v][1], rtol=1e-5, atol=1e-6)
        target.append({"z": tz, "e": te})
    loss, _, _ = lewel_loss(online, target, c["loss_weight"])
    assert loss.item() == pytest.approx(ref["loss"].item(), rel=1e-5)


def test_alignment_pooling_equals_an_einsum_written_from_the_formula():
    torch.manual_seed(0)
    b, c, n, k, heads, s = 3, 12, 10, 8, 4, 0.7
    y, logits = torch.randn(b, c, n), torch.randn(b, k, n)
    maps = alignment_maps(logits, s)
    expected_maps = torch.softmax((logits / logits.norm(dim=1, keepdim=True)) / s, dim=2)
    torch.testing.assert_close(maps, expected_maps)
    torch.testing.assert_close(maps.sum(dim=2), torch.ones(b, k))
    # O[b, q*(c/h) + c', j] = sum_p Y[b, q*(c/h) + c', p] * A[b, q*(k/h) + j, p]
    yq = y.reshape(b, heads, c // heads, n)
    aq = maps.reshape(b, heads, k // heads, n)
    expected = torch.einsum("bqcp,bqjp->bqcj", yq, aq).reshape(b, c, k // heads)
    torch.testing.assert_close(multi_head_pooling(y, maps, heads), expected)


# ---------------------------------------------------------------------------- reductions to the plain methods
def _step(method, crops, teacher=None, n_global=2, n_crops=2):
    s_out = method.student(crops)
    t_out = method.teacher_forward(teacher, crops) if teacher is not None else None
    return method.loss(s_out, t_out, StepContext(0, 0, n_global, n_crops))


def _two_views(seed=0, b=6, size=16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]


def _byol_by_hand(projector, predictor, teacher_projector, backbone, teacher_backbone, crops):
    """BYOL from its definition: g and q on the mean of the dense map, 2 - 2 cos, both directions."""
    from bam_dense.models.backbones import features

    def pooled(bb, x):
        return features(bb, x).dense.mean(dim=(2, 3))

    p = [predictor(projector(pooled(backbone, x))) for x in crops]
    with torch.no_grad():
        z = [teacher_projector(pooled(teacher_backbone, x)) for x in crops]
    cos = [F.cosine_similarity(p[a], z[b], dim=1).mean() for a, b in ((0, 1), (1, 0))]
    return sum(2 - 2 * c for c in cos)


def test_loss_weight_one_is_byol(tmp_path):
    for name, extra in (("byol", {}), ("lewel_b", {"loss_weight": 1.0})):
        cfg = load_config(data=method_cfg(tmp_path, name, **extra))
        torch.manual_seed(0)
        method = build_method(cfg.method, build_backbone(cfg.model))
        teacher = make_teacher(method.student, method.teacher_exclude)
        crops = _two_views()
        loss, _ = _step(method, crops, teacher)
        s = method.student
        expected = _byol_by_hand(s.neck.proj, s.predictor, teacher.neck.proj, s.backbone, teacher.backbone, crops)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        assert s.neck.proj_obj is None and s.predictor_obj is None  # the dense path is not in the graph


def test_co_byol_with_zero_local_weight_is_byol(tmp_path):
    torch.manual_seed(0)
    byol_cfg = load_config(data=method_cfg(tmp_path, "byol"))
    byol = build_method(byol_cfg.method, build_backbone(byol_cfg.model))
    co_cfg = load_config(data=method_cfg(tmp_path, "co_byol", local_weight=0.0))
    co = build_method(co_cfg.method, build_backbone(co_cfg.model))
    co.student.backbone.load_state_dict(byol.student.backbone.state_dict())
    co.student.projector.load_state_dict(byol.student.neck.proj.state_dict())
    co.student.predictor.load_state_dict(byol.student.predictor.state_dict())
    crops = _two_views(1)
    t_byol, t_co = make_teacher(byol.student, byol.teacher_exclude), make_teacher(co.student, co.teacher_exclude)
    a, _ = _step(byol, crops, t_byol)
    b, _ = _step(co, crops, t_co)
    assert a.item() == b.item()
    with_local = build_method(load_config(data=method_cfg(tmp_path, "co_byol", local_weight=0.3)).method, co.student.backbone)
    assert set(_step(with_local, crops, make_teacher(with_local.student, with_local.teacher_exclude))[1]) == {"global", "local"}


def _crops_multicrop(seed=0, b=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 16, 16, generator=g) for _ in range(2)] + [torch.randn(b, 3, 8, 8, generator=g) for _ in range(2)]


@pytest.mark.parametrize(("name", "neutral", "active"), [("co_bam", {"local_weight": 0.0}, {"local_weight": 0.3}),
                                                         ("lewel_bam", {"global_weight": 1.0}, {"global_weight": 0.5})])
@pytest.mark.parametrize("teacher", [False, True])
def test_spatial_bam_variants_reduce_exactly_to_bam(tmp_path, name, neutral, active, teacher):
    crops = _crops_multicrop()
    torch.manual_seed(0)
    bam_cfg = load_config(data=tiny_pretrain_dict(tmp_path, teacher={"enabled": teacher}))
    bam = build_method(bam_cfg.method, build_backbone(bam_cfg.model))
    t_bam = make_teacher(bam.student) if teacher else None
    expected, _ = _step(bam, crops, t_bam, 2, 4)
    for params, equal in ((neutral, True), (active, False)):
        cfg = load_config(data=method_cfg(tmp_path, name, teacher={"enabled": teacher}, **params))
        variant = build_method(cfg.method, build_backbone(cfg.model))
        missing, _ = variant.student.load_state_dict(bam.student.state_dict(), strict=False)
        assert all(k.startswith(("local_projector", "neck")) for k in missing)
        t_var = make_teacher(variant.student, variant.teacher_exclude) if teacher else None
        if teacher:
            t_var.load_state_dict(t_bam.state_dict(), strict=False)
        loss, terms = _step(variant, crops, t_var, 2, 4)
        if equal:
            assert loss.item() == expected.item()
        else:
            assert loss.item() != pytest.approx(expected.item()) and len(terms) == 2


def test_gradients_reach_only_the_online_branch(tmp_path):
    for name in ("lewel_b", "co_byol", "co_bam", "lewel_bam"):
        cfg = load_config(data=method_cfg(tmp_path, name))
        method = build_method(cfg.method, build_backbone(cfg.model))
        teacher = make_teacher(method.student, method.teacher_exclude)
        crops = _two_views() if name in ("lewel_b", "co_byol") else _crops_multicrop()
        n_crops = len(crops)
        loss, _ = _step(method, crops, teacher, 2, n_crops)
        loss.backward()
        assert all(p.grad is None for p in teacher.parameters()), name
        trained = [n for n, p in method.student.named_parameters() if p.requires_grad and p.grad is not None]
        assert any(n.startswith("backbone.blocks") for n in trained), name
        for head in ("predictor", "local_predictor", "local_projector", "neck"):
            if getattr(method.student, head, None) is not None:
                assert any(n.startswith(head) for n in trained), (name, head)


def test_eman_teacher_runs_in_eval_mode_and_follows_bn_statistics(tmp_path):
    cfg = method_cfg(tmp_path, "lewel_b", teacher={"enabled": True, "buffers": "params_and_buffers", "eval_mode": True,
                                                    "momentum": 0.5})
    trainer = Trainer(load_config(data=cfg))
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items() if "running_mean" in k}
    trainer.train()
    assert not trainer.teacher.training
    after = trainer.teacher.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # BN statistics are averaged (EMAN)
    cfg2 = method_cfg(tmp_path / "b", "lewel_b", teacher={"enabled": True, "buffers": "params", "momentum": 0.5})
    plain = Trainer(load_config(data=cfg2))
    plain.train()
    assert plain.teacher.training  # BYOL/LEWEL_B(SyncBN): the target normalises with its own batch statistics


def test_co_byol_local_target_head_sees_the_inputs_its_bn_statistics_come_from(tmp_path):
    # The student's local projector learns BN statistics from cells only; the target path must feed the
    # (EMAN, eval-mode) momentum copy cells too, not the pooled vector (pre-BN variance ~10x smaller).
    cfg = method_cfg(tmp_path, "co_byol", grid=0)
    cfg["model"] = {"arch": "resnet18", "kwargs": {"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256], "output_stride": 8}}
    cfg = load_config(data=cfg)
    torch.manual_seed(0)
    method = build_method(cfg.method, build_backbone(cfg.model))
    student = method.student.train()
    for m in student.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # running statistics = exactly those of the one batch below
    x = _two_views(b=8, size=32)[:1]
    with torch.no_grad():
        student(x)  # train mode: the local projector's BN collects statistics of the cells of x
    bn = student.local_projector.norms[0]
    eman = make_teacher(student, method.teacher_exclude).eval()  # EMAN: buffers copied, eval mode
    seen = []
    eman.local_projector.norms[0].register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach()))
    with torch.no_grad():
        t_eman = method.teacher_forward(eman, x)[0]["t_local"]
    assert len(seen) == 1 and seen[0].dim() == 3  # B x C x cells: per-cell inputs
    inputs = seen[0].transpose(1, 2).reshape(-1, bn.num_features)
    ratio = inputs.var(0) / bn.running_var
    assert 0.9 < ratio.median().item() < 1.1
    assert ((inputs.mean(0) - bn.running_mean).abs() / bn.running_var.sqrt()).max().item() < 0.05
    # The same target as a train-mode (EMA) teacher, which normalises with the batch's own statistics.
    with torch.no_grad():
        t_ema = method.teacher_forward(make_teacher(student, method.teacher_exclude).train(), x)[0]["t_local"]
    assert F.cosine_similarity(t_eman, t_ema, dim=1).min().item() > 0.999


# ---------------------------------------------------------------------------- distributed
@pytest.mark.parametrize("name", ["byol", "lewel_b", "co_byol", "co_bam", "lewel_bam"])
def test_two_processes_equal_one_for_every_method(tmp_path, name):
    cfg = method_cfg(tmp_path / "run", name, bn=False)  # per-process BatchNorm would differ by design
    n_local = cfg["data"]["views"]["local_crops"]
    gen = torch.Generator().manual_seed(0)
    size = cfg["data"]["views"]["global_size"]
    crops = [torch.randn(6, 3, size, size, generator=gen) for _ in range(2)]
    crops += [torch.randn(6, 3, 8, 8, generator=gen) for _ in range(n_local)]
    single = method_param_grads(0, 1, cfg, crops, seed=3)
    results = run_world(method_param_grads, 2, (cfg, crops, 3), tmp_path)
    for res in results:
        assert res["loss"] == pytest.approx(single["loss"], rel=1e-5)
        for key, grad in single["grads"].items():
            torch.testing.assert_close(res["grads"][key], grad, rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


# ---------------------------------------------------------------------------- training from the shipped tiny configs
@pytest.mark.parametrize("config", ["byol_tiny_cpu.yaml", "lewel_b_tiny_cpu.yaml", "co_byol_tiny_cpu.yaml",
                                    "co_bam_tiny_cpu.yaml", "lewel_bam_tiny_cpu.yaml"])
def test_tiny_configs_train_with_a_falling_loss(tmp_path, config):

    cfg = load_config(bundled("configs/pretrain", required=True) / config, [
        f"run.output_dir={tmp_path}", "run.progress=false", "run.tensorboard=false", "data.num_workers=0",
        "data.synthetic.num_images=256", "data.batch_size_per_gpu=32", "run.log_every=1", "optim.epochs=3",
        "optim.warmup_epochs=1", "eval.knn.enabled=false",
        "eval.random_init_baseline=false"])
    trainer = Trainer(cfg)
    trainer.train()
    import json

    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert all(math.isfinite(v) for v in losses)
    k = max(1, len(losses) // 3)
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k, losses


@pytest.mark.parametrize("name", ["bam", "byol", "lewel_b", "co_byol", "co_bam", "lewel_bam"])
def test_every_method_trains_a_step_on_a_resnet(tmp_path, name):
    cfg = method_cfg(tmp_path, name)
    cfg["model"] = {"arch": "resnet18", "kwargs": {}}
    cfg["run"]["max_steps"] = 1
    if name in ("bam", "co_bam", "lewel_bam"):
        cfg["data"]["views"].update(global_size=32, local_size=32)  # ResNet maps need >= 32 px for a 1x1 map
    else:
        cfg["data"]["views"]["global_size"] = 32
    summary = Trainer(load_config(data=cfg)).train()
    assert summary.steps == 1 and math.isfinite(summary.last_loss)


def test_caformer_m36_recipe_builds_bams_architecture_and_gives_its_features():
    from timm.models.metaformer import Scale, SepConv, StarReLU

    from bam_dense.models.backbones import describe, features

    # DanielShalam/BAM fd85871 utils.py get_arch: mlp_act=GELU, act1_layer=GELU (the SepConv activation of
    # stages 1-2), res_scale_init_values=(None, None, None, None).
    cfg = load_config(bundled("configs/pretrain/bam_caformer_m36.yaml", required=True))
    model = build_backbone(cfg.model)
    assert (describe(model).pooled_dim, describe(model).dense_dim) == (576, 576)
    assert not [n for n, m in model.named_modules() if isinstance(m, StarReLU)]
    assert not [n for n, m in model.named_modules() if "res_scale" in n and isinstance(m, Scale)]
    assert not [n for n, _ in model.named_parameters() if "res_scale" in n]
    sepconvs = [m for m in model.modules() if isinstance(m, SepConv)]
    assert len(sepconvs) == 15 and all(isinstance(m.act1, torch.nn.GELU) for m in sepconvs)
    assert isinstance(model.stages[0].blocks[0].mlp.act, torch.nn.GELU)
    with torch.no_grad():
        feats = features(model.eval(), torch.randn(1, 3, 64, 64))
    assert feats.pooled.shape == (1, 576) and feats.dense.shape == (1, 576, 2, 2)


# ---------------------------------------------------------------------------- dense probe metric
def test_probe_miou_matches_a_hand_computation():
    from bam_dense.eval.dense_probe import miou

    # 2 images of 2x3 pixels, classes 0..2 of a 150-class space, 255 ignored.
    label = torch.tensor([[[0, 0, 1], [1, 2, 255]], [[2, 2, 0], [255, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]], [[2, 0, 0], [2, 1, 2]]])
    # Over the 10 labelled pixels (summed over both images, as mmseg's IoUMetric):
    #   class 0: GT at 3, predicted at 3, both at 2 -> IoU 2 / (3 + 3 - 2) = 2/4
    #   class 1: GT at 4, predicted at 4, both at 3 -> 3 / 5
    #   class 2: GT at 3, predicted at 3, both at 2 -> 2 / 4
    # classes 3..149 are in neither -> NaN, left out of the mean. Ignored pixels' predictions do not count.
    assert miou(pred, label) == pytest.approx((2 / 4 + 3 / 5 + 2 / 4) / 3)
    # A class only predicted counts with IoU 0 (class 0 loses one hit: 1 / 4).
    pred2 = pred.clone()
    pred2[0, 0, 0] = 7
    assert miou(pred2, label) == pytest.approx((1 / 4 + 3 / 5 + 2 / 4 + 0) / 4)
