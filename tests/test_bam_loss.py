"""The BAM loss: official-output fixtures, Sinkhorn properties, hand-checked cases, invariances."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bam_dense.losses.bam import bam_loss, eps_at_epoch, keep_top_k, positive_mask, sinkhorn_targets

FIXTURE = Path(__file__).parent / "fixtures" / "bam_official.pt"


def official_cases():
    data = torch.load(FIXTURE, weights_only=True)
    assert "official BAM bam/bam_loss.py at commit" in data["provenance"]
    return data["cases"]


@pytest.mark.parametrize("case", official_cases(), ids=lambda c: c["name"])
def test_loss_and_gradient_equal_official_code(case):
    z = case["z"].clone().requires_grad_(True)
    loss = bam_loss(z, case["z_teacher"], n_crops=case["n_crops"], n_global=case["n_global"], n_target=case["n_target"],
                    temperature=case["temperature"], eps=case["eps"], top_k=case["top_k"],
                    positive_masking=case["positive_masking"])
    loss.backward()
    assert abs(loss.item() - case["loss"].item()) <= 1e-5 * abs(case["loss"].item())
    torch.testing.assert_close(z.grad, case["grad"], rtol=1e-4, atol=1e-7)


def test_sinkhorn_rows_sum_to_one_and_masked_entries_get_zero_mass():
    torch.manual_seed(0)
    logits = torch.randn(4 * 6, 2 * 6).clamp(-1, 1)
    mask = positive_mask(4, 6, 2)
    p = sinkhorn_targets(logits, mask, eps=0.05, n_iters=3, n_masked=2)
    torch.testing.assert_close(p.sum(1), torch.ones(24), rtol=0, atol=1e-6)
    assert (p[mask] == 0).all()
    assert (p[~mask] > 0).all()


def test_sinkhorn_column_sums_approach_uniform_as_iterations_grow():
    torch.manual_seed(1)
    logits = F.normalize(torch.randn(24, 8), dim=1) @ F.normalize(torch.randn(12, 8), dim=1).t()
    mask = positive_mask(2, 12, 1)
    deviations = []
    for iters in (0, 1, 3, 10, 100):
        p = sinkhorn_targets(logits, mask, eps=0.1, n_iters=iters, n_masked=1)
        cols = p.sum(0)
        deviations.append((cols - cols.mean()).abs().max().item())
    assert all(a > b for a, b in zip(deviations, deviations[1:])), deviations
    assert deviations[-1] < 1e-4
    # the fixed point gives every target column mass V/T = rows/cols
    p = sinkhorn_targets(logits, mask, eps=0.1, n_iters=200, n_masked=1)
    torch.testing.assert_close(p.sum(0), torch.full((12,), 24 / 12), rtol=0, atol=1e-4)


def test_positive_mask_marks_every_crop_of_the_same_image_on_this_rank():
    m = positive_mask(n_crops=3, b=2, n_target=2, world=2, rank=1)
    assert m.shape == (6, 8)
    # columns: crop m, rank r, image j at m*4 + r*2 + j; rank 1 -> columns 2,3 (crop 0) and 6,7 (crop 1)
    for v in range(3):
        assert m[v * 2 + 0].nonzero().flatten().tolist() == [2, 6]
        assert m[v * 2 + 1].nonzero().flatten().tolist() == [3, 7]


def test_hand_computed_symmetric_cases():
    # b images with orthonormal embeddings, every crop identical: each row sees 2*(b-1) unmasked columns of
    # similarity 0, so targets and source attention are both uniform over them: loss = log(2 (b - 1)).
    for b in (2, 3, 5):
        e = torch.eye(8)[:b]
        z = torch.cat([e, e])  # 2 global crops, crop-major
        loss = bam_loss(z, n_crops=2, n_global=2)
        assert loss.item() == pytest.approx(math.log(2 * (b - 1)), rel=1e-6)


def test_hand_computed_asymmetric_case():
    # b = 2 images, 2 global crops, unit vectors at angle: each row has exactly 2 unmasked columns (the
    # other image's two crops). Row (crop v, image i) sees similarities s_a, s_b; with 2 columns per row
    # every Sinkhorn row step is exact and column balance is reached in closed form only numerically, so
    # we check the source side by hand: A = log_softmax([s_a, s_b] / tau).
    theta = torch.tensor([0.0, 0.3, 1.2, 1.6])  # crop 0: images 0, 1; crop 1: images 0, 1
    z = torch.stack([theta.cos(), theta.sin()], dim=1)
    loss, (logits, targets, mask) = bam_loss(z, n_crops=2, n_global=2, temperature=0.5, eps=0.5, return_targets=True)
    assert mask.sum().item() == 8
    # row 0 (crop 0, image 0) vs columns crop0/img1 (theta 0.3) and crop1/img1 (theta 1.6)
    s = torch.tensor([math.cos(0.3 - 0.0), math.cos(1.6 - 0.0)])
    assert logits[0, 1].item() == pytest.approx(s[0].item(), abs=1e-6)
    assert logits[0, 3].item() == pytest.approx(s[1].item(), abs=1e-6)
    # loss = mean over (t, s != t, i) of -sum_c P_t[i,c] log softmax(S_s[i] / tau)[c]
    expected = 0.0
    for t, s_view in ((0, 1), (1, 0)):
        for i in range(2):
            row_t = targets[t * 2 + i]
            src = logits[s_view * 2 + i] / 0.5
            keep = ~mask[s_view * 2 + i]
            log_a = src[keep] - torch.logsumexp(src[keep], 0)
            expected += -(row_t[keep] * log_a).sum().item()
    assert loss.item() == pytest.approx(expected / 4, rel=1e-6)


def test_loss_is_invariant_to_permuting_images():
    torch.manual_seed(2)
    b, v = 6, 4
    z = torch.randn(v * b, 16)
    zt = torch.randn(v * b, 16)
    perm = torch.randperm(b)
    idx = torch.cat([perm + k * b for k in range(v)])
    for teacher in (None, zt):
        a = bam_loss(z, teacher, n_crops=v, n_global=2, top_k=5)
        p = bam_loss(z[idx], None if teacher is None else zt[idx], n_crops=v, n_global=2, top_k=5)
        assert a.item() == pytest.approx(p.item(), rel=1e-5)


def test_top_k_keeps_exactly_k_nonzeros_per_row_and_the_same_columns_in_every_view():
    torch.manual_seed(3)
    p = torch.softmax(torch.randn(2 * 5, 20), dim=1)
    kept = keep_top_k(p, n_views=2, k=7)
    assert ((kept > 0).sum(1) == 7).all()
    torch.testing.assert_close(kept.sum(1), torch.ones(10))
    assert torch.equal(kept[:5] > 0, kept[5:] > 0)


def test_eps_schedule_is_linspace_then_constant_for_any_length():
    assert eps_at_epoch(0, 0.1, 0.05, 30) == pytest.approx(0.1)
    assert eps_at_epoch(29, 0.1, 0.05, 30) == pytest.approx(0.05)
    assert eps_at_epoch(10, 0.1, 0.05, 30) == pytest.approx(0.1 + (0.05 - 0.1) * 10 / 29)
    assert eps_at_epoch(100, 0.1, 0.05, 30) == pytest.approx(0.05)
    assert eps_at_epoch(5, 0.05, None, 0) == 0.05
    # B9: a run shorter than the warm-up has a defined schedule
    assert [round(eps_at_epoch(e, 0.1, 0.05, 30), 6) for e in range(3)] == [0.1, round(0.1 - 0.05 / 29, 6), round(0.1 - 0.1 / 29, 6)]


def test_l2_normalize_equals_f_normalize_forward_and_backward():
    """The closed-form backward of l2_normalize is autograd's through F.normalize, also for zero and tiny rows."""
    from bam_dense.losses.bam import l2_normalize

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 40, generator=gen, dtype=torch.float64)
    x[3] = 0.0
    x[5] *= 1e-14  # below eps: F.normalize divides by the constant eps
    x.requires_grad_(True)
    g = torch.randn(16, 40, generator=gen, dtype=torch.float64)
    expected = torch.autograd.grad((F.normalize(x, dim=-1) * g).sum(), x)[0]
    got = torch.autograd.grad((l2_normalize(x) * g).sum(), x)[0]
    torch.testing.assert_close(l2_normalize(x), F.normalize(x, dim=-1), rtol=0, atol=1e-15)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    assert got[5].abs().max() > 1e3  # the tiny row's gradient is g / eps, not the projected one
