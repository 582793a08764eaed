"""Accelerator settings that cost no accuracy, and FLOP accounting (issue 14, parts 2-3), checked on the CPU."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from conftest import tiny_pretrain_dict

from bam_dense.core.config import load_config
from bam_dense.engine.flops import count_flops, device_peak_tflops, mfu
from bam_dense.engine.optim import build_optimizer
from bam_dense.engine.trainer import Trainer


def _rows(path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_flop_count_of_a_linear_layer_is_the_closed_form():
    batch, n_in, n_out = 8, 32, 16
    layer = torch.nn.Linear(n_in, n_out, bias=False)
    x = torch.randn(batch, n_in, requires_grad=True)
    # forward 2*B*I*O; backward: input gradient 2*B*I*O and weight gradient 2*B*I*O
    assert count_flops(lambda: layer(x).sum().backward()) == 6 * batch * n_in * n_out


def test_peak_table_and_override():
    assert device_peak_tflops(torch.device("cpu")) is None
    assert device_peak_tflops(torch.device("cpu"), override=100.0) == 100.0
    assert mfu(100.0, 2000.0, 1000.0, devices=2) == pytest.approx(0.1)  # 100 GFLOP x 2000 img/s = 200 TFLOP/s of 2000
    assert mfu(100.0, 2000.0, None, devices=2) is None


def test_the_run_logs_gflop_per_image_tflops_and_mfu(tmp_path):
    cfg = load_config(data=tiny_pretrain_dict(tmp_path, run={"max_steps": 2, "peak_tflops": 0.5}))
    Trainer(cfg).train()
    (flops,) = _rows(tmp_path, "flops")
    assert flops["gflop_per_image"] > 0 and flops["peak_tflops"] == 0.5
    for row in _rows(tmp_path, "train"):
        assert row["tflops_per_device"] == pytest.approx(flops["gflop_per_image"] * row["images_per_s"] / 1e3)
        assert row["mfu"] == pytest.approx(row["tflops_per_device"] / 0.5)


def test_counting_flops_leaves_the_run_bitwise_unchanged(tmp_path):
    """The count runs a forward and backward: RNG, BatchNorm statistics and gradients must be restored."""
    finals = []
    for count in (True, False):
        cfg = load_config(data=tiny_pretrain_dict(tmp_path / str(count), run={"max_steps": 3, "count_flops": count},
                                                  model={"drop_path_rate": 0.1}))
        Trainer(cfg).train()
        finals.append(torch.load(tmp_path / str(count) / "checkpoints" / "last.pth", weights_only=True))
    for part in ("student", "teacher"):
        for key, value in finals[0][part].items():
            assert torch.equal(value, finals[1][part][key]), f"{part}.{key}"
    assert not _rows(tmp_path / "False", "flops") and _rows(tmp_path / "True", "flops")


def test_one_host_synchronisation_per_step(tmp_path, monkeypatch):
    """Every value the step needs on the host travels in one transfer (tolist), none via item/float/bool.

    torch.optim's own step counters are host tensors even for CUDA parameters (reading them waits for nothing),
    so reads from inside torch.optim are not counted.
    """
    cfg = load_config(data=tiny_pretrain_dict(tmp_path, run={"max_steps": 1, "count_flops": False}))
    trainer = Trainer(cfg)
    crops, _, _ = next(iter(trainer._loader()))
    reads = []
    for name in ("item", "tolist", "__float__", "__bool__", "__int__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            if "torch/optim/" not in sys._getframe(1).f_code.co_filename:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    terms, grad_norm, finite = trainer.train_step(crops)
    monkeypatch.undo()
    assert finite and math.isfinite(grad_norm) and math.isfinite(terms["loss"])
    assert reads == ["tolist"], reads


def test_fused_adamw_takes_the_same_steps(tmp_path):
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [build_optimizer(net, "adamw", 1e-2, 0.05, fused=fused) for net, fused in zip(nets, (False, True))]
    assert opts[1].defaults["fused"] and not opts[0].defaults["fused"]
    x = torch.randn(16, 8)
    for _ in range(5):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # fp32 rounding of another formula order


RESNET = {"arch": "resnet18", "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]}, "pos_embed": "learned",
          "freeze_patch_embed": False}


def _resnet_cfg(tmp_path, **model):
    data = tiny_pretrain_dict(tmp_path, run={"max_steps": 2, "count_flops": False}, model=dict(RESNET, **model))
    return load_config(data=data)


def test_channels_last_resnet_matches_the_contiguous_one(tmp_path):
    losses = {}
    for flag in (False, True):
        trainer = Trainer(_resnet_cfg(tmp_path / str(flag), channels_last=flag))
        conv = next(m for m in trainer.student.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == flag
        losses[flag] = trainer.train().last_loss
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_model_compile_trains_on_the_cpu(tmp_path):
    eager = Trainer(load_config(data=tiny_pretrain_dict(tmp_path / "eager", run={"max_steps": 2, "count_flops": False})))
    compiled = Trainer(load_config(data=tiny_pretrain_dict(tmp_path / "compiled", run={"max_steps": 2, "count_flops": False},
                                                            model={"compile": True})))
    assert compiled.model is not compiled.student  # the step runs the compiled module
    first, second = eager.train(), compiled.train()
    assert second.steps == 2 and math.isfinite(second.last_loss)
    assert second.first_loss == pytest.approx(first.first_loss, rel=1e-4)
    assert second.last_loss == pytest.approx(first.last_loss, rel=1e-3)
