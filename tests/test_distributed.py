"""Two gloo processes give the same loss and gradients as one process holding the whole batch."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_pretrain_dict
from dist_helpers import bam_loss_and_grad, method_param_grads, run_world, shard_crop_major

from bam_dense.losses.bam import bam_loss


@pytest.mark.parametrize("teacher", [False, True], ids=["student_only", "teacher"])
@pytest.mark.parametrize("n_local", [0, 2], ids=["no_local", "local_crops"])
def test_bam_loss_and_input_gradient_match_single_process(tmp_path, teacher, n_local):
    torch.manual_seed(0)
    world, b, d = 2, 3, 16
    n_crops = 2 + n_local
    kwargs = dict(n_crops=n_crops, n_global=2, temperature=0.1, eps=0.05, top_k=4)
    z_full = torch.randn(n_crops * world * b, d)
    zt_full = torch.randn(n_crops * world * b, d) if teacher else None

    z = z_full.clone().requires_grad_(True)
    single = bam_loss(z, zt_full, **kwargs)
    single.backward()

    results = run_world(bam_loss_and_grad, world, (z_full, zt_full, kwargs), tmp_path)
    for rank, res in enumerate(results):
        assert res["loss"] == pytest.approx(single.item(), rel=1e-5, abs=1e-6)
        expected = shard_crop_major(z.grad, n_crops, world, rank)
        torch.testing.assert_close(res["grad"], expected, rtol=1e-5, atol=1e-5)


def _crops(world_batch: int, n_local: int, global_size: int = 16, local_size: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    crops = [torch.randn(world_batch, 3, global_size, global_size, generator=gen) for _ in range(2)]
    crops += [torch.randn(world_batch, 3, local_size, local_size, generator=gen) for _ in range(n_local)]
    return crops


@pytest.mark.parametrize("teacher", [False, True], ids=["student_only", "teacher"])
@pytest.mark.parametrize("n_local", [0, 2], ids=["no_local", "local_crops"])
def test_every_parameter_gradient_matches_single_process_under_ddp(tmp_path, teacher, n_local):
    cfg = tiny_pretrain_dict(tmp_path / "run", teacher={"enabled": teacher},
                             data={"views": {"kind": "multicrop", "global_crops": 2, "global_size": 16,
                                             "local_crops": n_local, "local_size": 8}})
    crops = _crops(world_batch=6, n_local=n_local)
    single = method_param_grads(0, 1, cfg, crops, seed=3)
    results = run_world(method_param_grads, 2, (cfg, crops, 3), tmp_path)
    for res in results:
        assert res["loss"] == pytest.approx(single["loss"], rel=1e-5)
        assert res["grads"].keys() == single["grads"].keys()
        for name, grad in single["grads"].items():
            torch.testing.assert_close(res["grads"][name], grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_every_rank_starts_from_the_same_student_and_teacher(tmp_path):
    from dist_helpers import trainer_weights

    cfg = tiny_pretrain_dict(tmp_path / "run", run={"seed": 3})
    sums = run_world(trainer_weights, 2, (cfg,), tmp_path)
    assert sums[0] == sums[1]
