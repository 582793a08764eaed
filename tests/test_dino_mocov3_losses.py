"""DINO's loss and centre update, MoCo v3's contrastive loss: against the official code and by hand.

The official outputs are recorded in tests/fixtures/dino_official.pt and mocov3_official.pt (see the scripts
next to them for their provenance).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from dist_helpers import mocov3_rank_loss, run_world

from bam_dense.losses import dino_center, dino_loss, mocov3_loss

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def dino_official():
    return torch.load(FIXTURES / "dino_official.pt", weights_only=False)


@pytest.fixture(scope="module")
def mocov3_official():
    return torch.load(FIXTURES / "mocov3_official.pt", weights_only=False)


@pytest.mark.parametrize("case", ["multicrop", "two_crops"])
def test_dino_loss_equals_official_dinoloss(dino_official, case):
    rec = dino_official["loss"][case]
    loss = dino_loss(rec["student"], rec["teacher"], rec["center"], student_temp=rec["student_temp"],
                     teacher_temp=rec["teacher_temp"])
    torch.testing.assert_close(loss, rec["loss"], rtol=1e-6, atol=1e-6)


def test_dino_fixture_temperature_is_inside_the_warmup(dino_official):
    # epoch 2 of a 4-epoch linear warm-up from 0.04 to 0.07: 0.04 + 2/3 * 0.03
    assert dino_official["loss"]["multicrop"]["teacher_temp"] == pytest.approx(0.06)


@pytest.mark.parametrize("case", ["multicrop", "two_crops"])
def test_dino_center_equals_official_update_center(dino_official, case):
    rec = dino_official["loss"][case]
    new = dino_center(rec["teacher"], rec["center"], momentum=rec["momentum"])
    assert new.shape == rec["center"].shape
    torch.testing.assert_close(new, rec["new_center"], rtol=1e-6, atol=1e-7)


def test_dino_loss_by_hand_two_crops_two_prototypes():
    # one image, two crops, K = 2; teacher temp 1, student temp 1, centre (0, 0)
    s = [torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])]
    t = [torch.tensor([[0.0, math.log(4.0)]]), torch.tensor([[0.0, 0.0]])]
    # pair (teacher 0, student 1): q = (1/5, 4/5), log p = (log 3/4, log 1/4)
    first = -(0.2 * math.log(0.75) + 0.8 * math.log(0.25))
    # pair (teacher 1, student 0): q = (1/2, 1/2), log p = (log 1/2, log 1/2)
    second = math.log(2.0)
    loss = dino_loss(s, t, torch.zeros(2), student_temp=1.0, teacher_temp=1.0)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_dino_loss_centre_and_teacher_temperature_act_on_the_teacher():
    s = [torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])]
    t = [torch.tensor([[0.0, 2 * math.log(4.0)]]), torch.tensor([[0.0, 0.0]])]
    # teacher 0: (t - c) / T = (0, log 4) / 0.5 = (0, 2 log 4) -> q = (1/17, 16/17), paired with student 1;
    # teacher 1: (0, -log 4) / 0.5 -> q = (16/17, 1/17), paired with student 0 whose log p = (log 1/2, log 1/2)
    c = torch.tensor([0.0, math.log(4.0)])
    first = -(1 / 17 * math.log(0.75) + 16 / 17 * math.log(0.25))
    second = math.log(2.0)  # any q against a uniform student
    loss = dino_loss(s, t, c, student_temp=1.0, teacher_temp=0.5)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_dino_loss_gives_no_gradient_to_the_teacher():
    s = [torch.randn(2, 4, requires_grad=True) for _ in range(3)]
    t = [torch.randn(2, 4, requires_grad=True) for _ in range(2)]
    dino_loss(s, t, torch.zeros(4)).backward()
    assert all(x.grad is not None for x in s) and all(x.grad is None for x in t)


def test_dino_center_by_hand():
    t = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0], [7.0, 8.0]])]
    # mean of the four rows = (4, 5); 0.9 * (10, 20) + 0.1 * (4, 5) = (9.4, 18.5)
    new = dino_center(t, torch.tensor([[10.0, 20.0]]), momentum=0.9)
    torch.testing.assert_close(new, torch.tensor([[9.4, 18.5]]))


def test_dino_loss_rejects_mismatched_crops():
    with pytest.raises(ValueError, match="same B and K"):
        dino_loss([torch.zeros(2, 4), torch.zeros(3, 4)], [torch.zeros(2, 4)], torch.zeros(4))


@pytest.mark.parametrize("temperature", ["0.2", "1.0"])
def test_mocov3_loss_equals_official_contrastive_loss(mocov3_official, temperature):
    rec = mocov3_official["loss"][temperature]
    loss = mocov3_loss(rec["q"], rec["k"], temperature=rec["temperature"])
    torch.testing.assert_close(loss, rec["loss"], rtol=1e-6, atol=1e-6)


def test_mocov3_loss_by_hand():
    # after normalisation: keys e_0, e_1; q_0 = e_0 (cosines 1, 0), q_1 = (e_0 + e_1)/sqrt 2 (cosines c, c)
    q = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    temp = 0.5
    c = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(1 / temp) / (math.exp(1 / temp) + math.exp(0.0)))
    row1 = -math.log(math.exp(c / temp) / (math.exp(c / temp) + math.exp(c / temp)))
    loss = mocov3_loss(q, k, temperature=temp)
    assert loss.item() == pytest.approx((row0 + row1) / 2 * 2 * temp, rel=1e-6)


def test_mocov3_loss_gives_no_gradient_to_the_keys():
    q = torch.randn(3, 4, requires_grad=True)
    k = torch.randn(3, 4, requires_grad=True)
    mocov3_loss(q, k).backward()
    assert q.grad is not None and k.grad is None


def test_mocov3_loss_two_processes_gather_keys_and_offset_labels(tmp_path):
    """With 2 processes each rank's positives are at columns rank*N + i of the gathered keys: the mean of the
    rank losses equals the one-process loss on the whole batch (it would not with labels 0..N-1 on rank 1)."""
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    per_rank = run_world(mocov3_rank_loss, 2, (q, k, 0.2), tmp_path)
    assert sum(per_rank) / 2 == pytest.approx(mocov3_loss(q, k, temperature=0.2).item(), rel=1e-6)
