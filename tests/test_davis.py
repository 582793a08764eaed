"""DAVIS-2017: the evaluator against the official one's recorded outputs, edge cases, and propagation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PYTHON, REPO, tiny_vit_bam_checkpoint
from PIL import Image

from bam_dense.davis.evaluate import DavisError, evaluate, write_csvs
from bam_dense.davis.metrics import _seg2bmap, db_eval_boundary, db_eval_iou, db_statistics, f_measure
from bam_dense.davis.propagate import (
    PropagationParams,
    propagate_labels,
    propagate_labels_dense,
    run,
)

FIXTURE = Path(__file__).parent / "fixtures" / "davis_official"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED["sets"]))
def test_scores_and_csvs_equal_the_official_evaluator(name, tmp_path):
    assert "davis2017-evaluation at" in EXPECTED["provenance"]
    exp = EXPECTED["sets"][name]
    res = evaluate(FIXTURE / "DAVIS", FIXTURE / "results" / name, task=exp["task"], workers=1)
    for measure in ("J", "F"):
        stats = [[obj[k] for obj in res.objects.values()] for k in (f"{measure}-Mean", f"{measure}-Recall", f"{measure}-Decay")]
        for ours, theirs in zip(stats, (exp[measure]["M"], exp[measure]["R"], exp[measure]["D"])):
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
        assert list(res.objects) == list(exp[measure]["M_per_object"])
    gp, sp = write_csvs(res, tmp_path, "val")
    assert gp.read_text() == exp["global_csv"]
    assert sp.read_text() == exp["per_sequence_csv"]


def test_parallel_workers_give_the_same_numbers():
    one = evaluate(FIXTURE / "DAVIS", FIXTURE / "results" / "noisy", workers=1)
    two = evaluate(FIXTURE / "DAVIS", FIXTURE / "results" / "noisy", workers=2)
    assert one.global_row == two.global_row and one.per_object == two.per_object


def _full_frame_f(fg: np.ndarray, gt: np.ndarray) -> float:
    """F computed on whole frames (no cropping), as a second implementation."""
    from skimage.morphology import disk

    r = np.ceil(0.008 * np.linalg.norm(fg.shape))
    fb, gb = _seg2bmap(fg), _seg2bmap(gt)
    fd = cv2.dilate(fb.astype(np.uint8), disk(r).astype(np.uint8))
    gd = cv2.dilate(gb.astype(np.uint8), disk(r).astype(np.uint8))
    n_fg, n_gt = fb.sum(), gb.sum()
    if n_fg == 0 or n_gt == 0:
        return float(n_fg == 0 and n_gt == 0)
    p, rc = (fb & (gd > 0)).sum() / n_fg, (gb & (fd > 0)).sum() / n_gt
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def test_cropped_boundary_measure_equals_the_whole_frame_computation():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = rng.integers(20, 90, size=2)
        masks = []
        for _ in range(2):
            m = np.zeros((h, w), bool)
            y, x = rng.integers(-5, h), rng.integers(-5, w)  # boxes touching every edge now and then
            m[max(0, y):y + rng.integers(1, 40), max(0, x):x + rng.integers(1, 40)] = True
            masks.append(m)
        assert f_measure(masks[0], masks[1]) == pytest.approx(_full_frame_f(masks[0], masks[1]), abs=1e-12)


def test_disk_is_skimages_disk():
    from skimage.morphology import disk as sk_disk

    from bam_dense.davis.metrics import disk

    for radius in (1.0, 2.0, 5.0, 8.0, 9.0, 12.0):
        np.testing.assert_array_equal(disk(radius), sk_disk(radius).astype(np.uint8))


def test_void_pixels_are_excluded_from_both_measures():
    # the official repository's own check: a GT square, a void band and a prediction covering both
    gt = np.zeros((100, 100), bool)
    gt[25:75, 25:75] = True
    void = np.zeros_like(gt)
    void[20:80, 20:25] = True
    pred = gt | void
    assert db_eval_iou(gt, pred, void) == 1
    assert db_eval_boundary(gt, pred, void) == 1


def test_empty_cases():
    empty, full = np.zeros((30, 40), bool), np.zeros((30, 40), bool)
    full[5:20, 5:20] = True
    assert db_eval_iou(empty, empty) == 1 and f_measure(empty, empty) == 1.0
    assert db_eval_iou(full, empty) == 0 and f_measure(empty, full) == 0  # empty prediction: P = 1, R = 0
    assert f_measure(full, empty) == 0  # prediction where the GT is empty: P = 0, R = 1
    stack = np.stack([empty, full])
    np.testing.assert_array_equal(db_eval_iou(stack, np.stack([empty, empty])), [1.0, 0.0])


def test_statistics_by_hand():
    v = np.array([1.0, 0.9, 0.6, 0.4, 0.2, 0.0, np.nan, 0.8])
    mean, recall, decay = db_statistics(v)
    assert mean == pytest.approx(np.mean([1.0, 0.9, 0.6, 0.4, 0.2, 0.0, 0.8]))
    assert recall == pytest.approx(4 / 8)  # nanmean of (v > 0.5) counts NaN as False, as the official code
    # ids = round(linspace(1, 8, 5)) - 1 = [0, 2, 3(.5 rounds to 4?) ...]: bins share their endpoints
    ids = (np.round(np.linspace(1, 8, 5) + 1e-10) - 1).astype(int)
    first, last = v[ids[0]:ids[1] + 1], v[ids[3]:ids[4] + 1]
    assert decay == pytest.approx(np.nanmean(first) - np.nanmean(last))


def _copy_set(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURE / "results" / name, dst)
    return dst


def test_errors_name_the_sequence_and_frame(tmp_path):
    root = FIXTURE / "DAVIS"
    res = _copy_set(tmp_path, "perfect")
    (res / "seq-two" / "00003.png").unlink()
    with pytest.raises(DavisError, match=r"sequence seq-two: result frame 00003 is missing"):
        evaluate(root, res, workers=1)
    res = _copy_set(tmp_path / "b", "perfect")
    a = np.asarray(Image.open(res / "seq-single" / "00002.png")).copy()
    a[0, 0] = 4
    Image.fromarray(a).save(res / "seq-single" / "00002.png")
    with pytest.raises(DavisError, match=r"sequence seq-single: result frame 00002 has object index 4, more than the sequence's 1 objects"):
        evaluate(root, res, workers=1)
    res = _copy_set(tmp_path / "c", "perfect")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(res / "seq-three" / "00004.png")
    with pytest.raises(DavisError, match=r"sequence seq-three: result frame 00004 is 10x10, the annotation is 128x72"):
        evaluate(root, res, workers=1)
    res = _copy_set(tmp_path / "d", "perfect")
    (res / "seq-ten" / "00001.png").write_bytes(b"not a png")
    with pytest.raises(DavisError, match=r"sequence seq-ten: result frame 00001 is not a readable PNG"):
        evaluate(root, res, workers=1)


def test_stale_csvs_are_never_reused(tmp_path):
    res = _copy_set(tmp_path, "shifted")
    (res / "global_results-val.csv").write_text("J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n9,9,9,9,9,9,9\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([PYTHON, "-m", "bam_dense.cli", "davis", "eval", "--davis-root", str(FIXTURE / "DAVIS"), "--results",
                           str(res), "--workers", "1"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (res / "global_results-val.csv").read_text() == EXPECTED["sets"]["shifted"]["global_csv"]
    assert (res / "per-sequence_results-val.png").exists()


def test_cli_error_is_one_line_not_an_exit(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([PYTHON, "-m", "bam_dense.cli", "davis", "eval", "--davis-root", str(FIXTURE / "DAVIS"), "--results",
                           str(tmp_path / "missing")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "results folder" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- propagation
def test_banded_propagation_equals_the_dense_reference():
    torch.manual_seed(0)
    h, w, d, n, c = 11, 17, 24, 4, 3
    ft = F.normalize(torch.randn(h * w, d), dim=1)
    fc = F.normalize(torch.randn(n, h * w, d), dim=1)
    segs = torch.rand(n, c, h * w)
    for radius in (0, 2, 12):
        for band in (1, 3, 8):
            torch.testing.assert_close(propagate_labels(ft, fc, segs, h, w, radius, 5, 0.1, band),
                                       propagate_labels_dense(ft, fc, segs, h, w, radius, 5, 0.1), rtol=1e-5, atol=1e-6)


def test_banded_propagation_keeps_every_source_tied_at_the_kth_value_as_the_reference():
    """Features drawn from 3 codes: most targets have far more than k = 5 sources at their k-th similarity,
    and DINO keeps them all."""
    gen = torch.Generator().manual_seed(1)
    h, w, n, c = 9, 13, 3, 4
    codes = F.normalize(torch.randn(3, 8, generator=gen), dim=1)
    ft = codes[torch.randint(0, 3, (h * w,), generator=gen)]
    fc = codes[torch.randint(0, 3, (n, h * w), generator=gen)]
    segs = torch.rand(n, c, h * w, generator=gen)
    for radius in (0, 1, 3):
        ours = propagate_labels(ft, fc, segs, h, w, radius, 5, 0.1, 2)
        torch.testing.assert_close(ours, propagate_labels_dense(ft, fc, segs, h, w, radius, 5, 0.1), rtol=1e-5, atol=1e-6)
    # the ties matter here: exactly 5 sources per target (torch.topk's pick among the tied) give other labels
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    near = ((rows[:, None] - rows[None]).abs() <= 3) & ((cols[:, None] - cols[None]).abs() <= 3)
    logits = torch.einsum("td,nsd->tns", ft, fc).masked_fill(~near[:, None], float("-inf")).reshape(h * w, -1) / 0.1
    top = logits.topk(5, dim=1)
    five = torch.einsum("tk,tkc->ct", torch.softmax(top.values, dim=1), segs.permute(0, 2, 1).reshape(-1, c)[top.indices])
    assert (five - ours).abs().max() > 0.01


class OracleFeatures:
    """Features = one-hot of the ground truth at patch resolution (plus a little position), frame by frame."""

    def __init__(self, ann_paths: list[Path], patch: int, resolution: int, noise: float = 0.0, seed: int = 0):
        from bam_dense.davis.propagate import target_size

        self.patch = patch
        self.maps = []
        gen = torch.Generator().manual_seed(seed)
        for p in ann_paths:
            with Image.open(p) as img:
                th, tw = target_size(img.size[1], img.size[0], resolution)
                small = torch.from_numpy(np.asarray(img.resize((tw // patch, th // patch), Image.NEAREST)).astype(np.int64))
            small[small == 255] = 0
            onehot = F.one_hot(small, 16).permute(2, 0, 1).float()
            if noise:
                onehot = noise * torch.randn(onehot.shape, generator=gen) + (1 - noise) * onehot
            self.maps.append(onehot)
        self.next = 0

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        out = torch.stack(self.maps[self.next:self.next + frames.shape[0]])
        self.next += frames.shape[0]
        return out


def _propagate_with(davis_root: Path, out: Path, make_extractor, params: PropagationParams) -> float:
    seqs = (davis_root / "ImageSets" / "2017" / "val.txt").read_text().split()
    for seq in seqs:
        anns = sorted((davis_root / "Annotations" / "480p" / seq).glob("*.png"))
        run("oracle", str(davis_root), str(out), sequences=[seq], params=params, extractor=make_extractor(anns))
    return evaluate(davis_root, out, workers=1).global_row[0]


def test_oracle_features_score_high_and_random_features_clearly_lower(synthetic_root, tmp_path):
    root = synthetic_root / "davis"
    params = PropagationParams(resolution=96, size_mask_neighborhood=12, topk=5)
    oracle = _propagate_with(root, tmp_path / "oracle", lambda anns: OracleFeatures(anns, 2, 96), params)
    noisy = _propagate_with(root, tmp_path / "random", lambda anns: OracleFeatures(anns, 2, 96, noise=1.0), params)
    assert oracle > 0.9, oracle
    assert noisy < oracle - 0.2, (noisy, oracle)


def test_propagate_and_eval_cli_end_to_end_with_a_checkpoint(synthetic_root, tmp_path):
    from conftest import tiny_pretrain_dict

    from bam_dense.core.config import load_config
    from bam_dense.engine.trainer import Trainer

    Trainer(load_config(data=tiny_pretrain_dict(tmp_path / "run", run={"max_steps": 1}))).train()
    ckpt = tmp_path / "run" / "checkpoints" / "last.pth"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "davis_out"
    base = [PYTHON, "-m", "bam_dense.cli", "davis"]
    prop = subprocess.run(base + ["propagate", "--checkpoint", str(ckpt), "--davis-root", str(synthetic_root / "davis"), "--out",
                                  str(out), "--resolution", "64", "--save-overlays", "--device", "cpu"],
                          capture_output=True, text=True, env=env)
    assert prop.returncode == 0, prop.stderr
    seqs = (synthetic_root / "davis" / "ImageSets" / "2017" / "val.txt").read_text().split()
    for seq in seqs:
        gts = sorted((synthetic_root / "davis" / "Annotations" / "480p" / seq).glob("*.png"))
        outs = sorted((out / seq).glob("*.png"))
        assert [p.name for p in outs] == [p.name for p in gts]
        assert Image.open(outs[1]).mode == "P" and Image.open(outs[1]).size == Image.open(gts[1]).size
        assert (out / "_overlays" / f"{seq}.gif").exists()
    again = subprocess.run(base + ["propagate", "--checkpoint", str(ckpt), "--davis-root", str(synthetic_root / "davis"), "--out",
                                   str(out), "--resolution", "64", "--device", "cpu"], capture_output=True, text=True, env=env)
    assert "propagated 0 sequence(s)" in again.stdout  # finished sequences are skipped
    ev = subprocess.run(base + ["eval", "--davis-root", str(synthetic_root / "davis"), "--results", str(out)],
                        capture_output=True, text=True, env=env)
    assert ev.returncode == 0, ev.stderr
    header, values = (out / "global_results-val.csv").read_text().splitlines()
    assert header == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    assert 0.0 <= float(values.split(",")[0]) <= 1.0
    metrics = json.loads((out / "metrics.json").read_text())  # the resolution travels with the number
    assert metrics["resolution"] == 64 and "no published protocol" in metrics["resolution_protocol"]
    assert metrics["propagation"]["topk"] == 5 and metrics["metrics"]["J&F-Mean"] == pytest.approx(float(values.split(",")[0]), abs=5e-4)
    assert "frames at short side 64" in ev.stdout


def test_published_resolutions_set_the_frame_size():
    from bam_dense.davis.propagate import resolution_protocol, target_size

    assert target_size(480, 854, 480) == (480, 832)  # DINO: 854 -> 832, a multiple of 64
    assert target_size(480, 854, 960) == (960, 1664)  # short side 960: 1708 -> 1664
    assert resolution_protocol(480).startswith("DINO eval_video_segmentation.py")
    assert resolution_protocol(960).startswith("DINOv3")


# ---------------------------------------------------------------------------- position-embedding resampling
DINO_POS = torch.load(Path(__file__).parent / "fixtures" / "dino_pos.pt", weights_only=True)  # see its provenance


def _tiny_state() -> dict[str, torch.Tensor]:
    return DINO_POS["tiny"]["state_dict"]


def _dino_checkpoint(path: Path) -> Path:
    """DINO's training-checkpoint layout around the fixture's official weights (DINO's names are timm's)."""
    state = _tiny_state()
    head = {"head.last_layer.weight": torch.zeros(4, 16)}
    torch.save({"student": {f"module.backbone.{k}": v for k, v in state.items()} | {f"module.{k}": v for k, v in head.items()},
                "teacher": {f"backbone.{k}": v for k, v in state.items()} | head, "epoch": 1}, path)
    return path


@pytest.fixture
def tiny_dino_arch(monkeypatch):
    """Shapes cannot tell the fixture's width-16 ViT (DINO checkpoints record no architecture): say it."""
    from bam_dense.convert import sources

    monkeypatch.setattr(sources, "infer_arch", lambda backbone: ("vit_small_patch16_224", dict(DINO_POS["tiny"]["config"])))



_POS_CASES = [("tiny", name) for name in DINO_POS["tiny"]["sizes"]] + [("davis", name) for name in DINO_POS["davis"]["sizes"]]


@pytest.mark.parametrize("part,name", _POS_CASES)
def test_dino_pos_resampling_equals_the_official_interpolate_pos_encoding(part, name):
    from timm.layers import resample_abs_pos_embed

    from bam_dense.models.pos_embed import resample_pos_table

    rec = DINO_POS[part]
    table = rec["state_dict"]["pos_embed"] if part == "tiny" else rec["pos_embed"]
    patch, side = rec["config"]["patch_size"], rec["config"]["img_size"] // rec["config"]["patch_size"]
    h, w = rec["sizes"][name]
    official = rec["pos"][name]
    torch.testing.assert_close(resample_pos_table(table, "dino", (h, w), patch), official, rtol=0, atol=1e-6)
    timm_table = resample_abs_pos_embed(table, [h // patch, w // patch], [side, side], num_prefix_tokens=1)
    gap = (timm_table - official).abs().max().item()
    if (h, w) == (side * patch, side * patch):
        assert gap == 0  # the pretraining grid: neither resamples
    else:
        assert gap > 0.1, gap  # timm's resampling is another table: the old behaviour fails the check above


def test_dino_mode_features_equal_the_official_extract_feature(tmp_path, tiny_dino_arch):
    from bam_dense.encoders import FeatureExtractor, load_extractor

    extractor = load_extractor(str(_dino_checkpoint(tmp_path / "dino.pth")), None, None, False, torch.device("cpu"))
    assert extractor.pos_resample == "dino"  # auto, from the DINO layout
    timm_mode = FeatureExtractor(extractor.backbone, torch.device("cpu"), pos_resample="timm")
    rec = DINO_POS["tiny"]
    for name, frame in rec["frames"].items():
        official = rec["features"][name]  # h*w x D, as extract_feature returns it
        ours = extractor(frame[None])[0].flatten(1).t()
        torch.testing.assert_close(ours, official, rtol=0, atol=2e-5)
        gap = (timm_mode(frame[None])[0].flatten(1).t() - official).abs().max().item()
        assert gap < 2e-5 if name == "same_8x8" else gap > 0.1, (name, gap)


def test_auto_pos_resample_follows_the_source_format(tmp_path, tiny_dino_arch):
    from bam_dense.encoders import load_extractor

    cpu = torch.device("cpu")
    dino, bam = _dino_checkpoint(tmp_path / "dino.pth"), tiny_vit_bam_checkpoint(tmp_path / "bam.pth")
    assert load_extractor(str(dino), None, None, False, cpu).pos_resample == "dino"
    assert load_extractor(str(bam), None, None, False, cpu).pos_resample == "timm"
    assert load_extractor(str(dino), None, None, False, cpu, pos_resample="timm").pos_resample == "timm"
    assert load_extractor(str(bam), None, None, False, cpu, pos_resample="dino").pos_resample == "dino"


def test_propagate_cli_takes_pos_resample(synthetic_root, tmp_path, tiny_dino_arch):
    from bam_dense.cli import main

    root = synthetic_root / "davis"
    seq = (root / "ImageSets" / "2017" / "val.txt").read_text().split()[0]
    ckpt = str(_dino_checkpoint(tmp_path / "dino.pth"))
    base = ["davis", "propagate", "--checkpoint", ckpt, "--davis-root", str(root), "--sequences", seq, "--resolution", "64",
            "--device", "cpu"]
    for option, expected in (([], "dino"), (["--pos-resample", "timm"], "timm"), (["--pos-resample", "dino"], "dino")):
        out = tmp_path / f"out_{expected}_{len(option)}"
        assert main(base + ["--out", str(out)] + option) == 0
        assert json.loads((out / "propagation.json").read_text())["pos_resample"] == expected
        assert len(list((out / seq).glob("*.png"))) == len(list((root / "JPEGImages" / "480p" / seq).glob("*.jpg")))
    with pytest.raises(SystemExit):
        main(base + ["--out", str(tmp_path / "bad"), "--pos-resample", "bilinear"])
