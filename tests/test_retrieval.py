"""In-context retrieval segmentation (Hummingbird): the reference's recorded run, known answers, mmseg's metric."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PYTHON, REPO, tiny_vit_bam_checkpoint
from fixtures.make_hummingbird_fixture import encode
from PIL import Image

from bam_dense.core.errors import UserFacingError
from bam_dense.data.synthetic import save_png, voc_palette, write_image_sets
from bam_dense.eval.features import IMAGENET_MEAN as MEAN
from bam_dense.eval.features import IMAGENET_STD as STD
from bam_dense.eval.retrieval import (
    NeighbourIndex,
    RetrievalParams,
    build_memory,
    open_dataset,
    predict,
    retrieval_miou,
    retrieve_labels,
    score_labels,
)
from bam_dense.eval.seg_metrics import SegmentationAreas

FIXTURE = torch.load(Path(__file__).parent / "fixtures" / "hummingbird_official.pt", weights_only=True)  # provenance inside


def _fixture_encoder(images: torch.Tensor) -> torch.Tensor:
    """The fixture's patch encoder, the recorder's own, as ``B x D x h x w``."""
    tokens = encode(images, FIXTURE["inputs"]["encoder"], FIXTURE["patch"])
    g = images.shape[-1] // FIXTURE["patch"]
    return tokens.transpose(1, 2).reshape(images.shape[0], -1, g, g)


@pytest.mark.parametrize("case", ["bounded", "unbounded"])
def test_memory_bank_retrieved_labels_and_score_equal_open_hummingbird_eval(case):
    rec, inputs = FIXTURE["cases"][case], FIXTURE["inputs"]
    n_train = len(inputs["train_images"])
    per_image = None if rec["memory_size"] is None else rec["memory_size"] // n_train
    batches = [(inputs["train_images"][i:i + 1], inputs["train_labels"][i:i + 1]) for i in range(n_train)]
    memory = build_memory(_fixture_encoder, batches, FIXTURE["patch"], FIXTURE["classes"], per_image,
                          torch.Generator().manual_seed(rec["seed"]), void_to=0)
    torch.testing.assert_close(memory.features, rec["feature_memory"])
    torch.testing.assert_close(memory.labels, rec["label_memory"])

    soft = retrieve_labels(_fixture_encoder(inputs["val_images"]), memory, NeighbourIndex(memory.features), rec["k"],
                           rec["temperature"])
    torch.testing.assert_close(soft.flatten(2).transpose(1, 2), rec["knns_ca_labels"], atol=1e-5, rtol=1e-5)

    areas = SegmentationAreas(FIXTURE["classes"], 255)
    areas.update(predict(soft, FIXTURE["size"]), inputs["val_labels"])
    tp, fp, fn = (np.asarray(rec[k]) for k in ("tp", "fp", "fn"))
    assert areas.intersect.tolist() == tp.tolist()
    assert areas.union.tolist() == (tp + fp + fn).tolist()
    present = (tp + fp + fn) > 0
    assert areas.miou() == pytest.approx(np.mean(tp[present] / (tp + fp + fn)[present]))
    # the reference matched classes with the Hungarian algorithm (the identity here) and averaged over all 21
    assert rec["hungarian"] == list(range(21))
    assert rec["jac"] == pytest.approx(areas.miou() * present.sum() / 21)
    assert 0.2 < areas.miou() < 0.9  # informative but imperfect features: the comparison is not trivial


def test_torch_search_equals_faiss_and_a_preallocated_bank_equals_a_concatenated_one():
    gen = torch.Generator().manual_seed(0)
    memory = F.normalize(torch.randn(500, 16, generator=gen), dim=1)
    queries = torch.randn(40, 16, generator=gen)
    by_faiss = NeighbourIndex(memory, "cpu", "faiss")
    by_torch = NeighbourIndex(memory, "cpu", "torch")
    assert by_faiss.backend == "faiss" and by_torch.backend == "torch"
    assert torch.equal(by_faiss.search(queries, 7), by_torch.search(queries, 7))
    assert torch.equal(by_faiss.search(queries, 7)[:, 0], (queries @ memory.T).argmax(1))
    with pytest.raises(UserFacingError, match="faiss-gpu needs a faiss build with GPU support"):
        NeighbourIndex(memory, "cpu", "faiss-gpu")

    inputs = FIXTURE["inputs"]
    batches = [(inputs["train_images"][i:i + 2], inputs["train_labels"][i:i + 2]) for i in range(0, 6, 2)]
    banks = [build_memory(_fixture_encoder, batches, FIXTURE["patch"], 21, 5, torch.Generator().manual_seed(1), 0, capacity)
             for capacity in (None, 6 * 5, 100)]
    for bank in banks[1:]:
        assert torch.equal(bank.features, banks[0].features) and torch.equal(bank.labels, banks[0].labels)


# ---------------------------------------------------------------------------- known answers on the VOC layout
COLOURS = np.array([[0, 0, 0], [230, 30, 30], [30, 200, 40], [40, 60, 230], [240, 230, 40]], np.uint8)
PATCH = 8


def _block_voc(root: Path, n_train: int = 6, n_val: int = 8, size: int = 32, seed: int = 0) -> Path:
    """VOCdevkit/VOC2012 with 8x8 cells each painted in its class's colour; val labels carry void cells."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2012"
    names = {"trainaug": [], "val": []}
    for split, count in (("trainaug", n_train), ("val", n_val)):
        for i in range(count):
            cells = rng.integers(0, len(COLOURS), (size // PATCH, size // PATCH))
            label = np.kron(cells, np.ones((PATCH, PATCH), np.int64)).astype(np.uint8)
            name = f"{split}_{i:04d}"
            names[split].append(name)
            (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
            Image.fromarray(COLOURS[label]).save(base / "JPEGImages" / f"{name}.jpg", quality=100, subsampling=0)
            folder = "SegmentationClassAug" if split == "trainaug" else "SegmentationClass"
            if split == "val":
                label[:PATCH, :PATCH] = 255  # void: never scored
            save_png(label, base / folder / f"{name}.png", voc_palette())
    write_image_sets(base / "ImageSets" / "Segmentation", names)
    return base


class ClassColourEncoder:
    """Patch features that encode the class painted there: one-hot of the nearest class colour to the
    patch's mean colour. Patch 1 by default: bilinear upsampling of patch-level labels cannot reproduce
    the corners of patch-aligned regions (three cells of one class outvote the fourth near their corner)."""

    def __init__(self, patch: int = 1):
        self.patch = patch

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        means = F.avg_pool2d(images, self.patch)  # B x 3 x h x w, normalised colour
        palette = (torch.tensor(COLOURS, dtype=torch.float32) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
        dist = ((means[:, None] - palette[None, :, :, None, None]) ** 2).sum(2)  # B x C x h x w
        return F.one_hot(dist.argmin(1), len(COLOURS)).permute(0, 3, 1, 2).float()


class RandomEncoder:
    patch = PATCH

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return torch.randn(b, 16, h // PATCH, w // PATCH, generator=self.generator)


def test_class_encoding_features_reach_miou_one_and_random_features_sit_at_chance(tmp_path):
    data = open_dataset("voc", _block_voc(tmp_path))
    params = RetrievalParams(input_size=32, memory_size=60, augment=False, neighbours=5, batch_size=4)
    oracle = retrieval_miou(ClassColourEncoder(), data, params)
    assert oracle.miou == 1.0 and oracle.per_image_patches == 10 and oracle.memory_patches == 60
    # the five painted classes are scored, the other sixteen VOC classes never appear
    assert [v is not None for v in oracle.per_class_iou] == [True] * 5 + [False] * 16
    random = retrieval_miou(RandomEncoder(), data, params)
    # classes uniform over 5 and predictions independent of them: IoU = (1/25) / (2/5 - 1/25) = 1/9
    assert random.miou == pytest.approx(1 / 9, abs=0.06)


def _block_ade(root: Path, ids=(0, 1, 4, 13, 150), n_train: int = 6, n_val: int = 6, size: int = 32, seed: int = 0) -> Path:
    """ADEChallengeData2016 with 8x8 cells painted per class; ADE ids ``ids`` (0 = "other") for the colours."""
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    for folder, count in (("training", n_train), ("validation", n_val)):
        for i in range(count):
            cells = rng.integers(0, len(COLOURS), (size // PATCH, size // PATCH))
            colour_index = np.kron(cells, np.ones((PATCH, PATCH), np.int64))
            name = f"ADE_{folder}_{i:08d}"
            for sub in ("images", "annotations"):
                (base / sub / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(COLOURS[colour_index]).save(base / "images" / folder / f"{name}.jpg", quality=100, subsampling=0)
            Image.fromarray(np.asarray(ids, np.uint8)[colour_index]).save(base / "annotations" / folder / f"{name}.png")
    return base


def test_ade20k_known_answer_scores_the_150_classes_and_leaves_other_out(tmp_path):
    data = open_dataset("ade20k", _block_ade(tmp_path))
    params = RetrievalParams(input_size=32, memory_size=None, augment=False, neighbours=5)
    oracle = retrieval_miou(ClassColourEncoder(), data, params)
    present = [i for i, v in enumerate(oracle.per_class_iou) if v is not None]
    assert oracle.miou == 1.0 and len(oracle.per_class_iou) == 150 and present == [0, 3, 12, 149]  # ids 1, 4, 13, 150


def test_augmented_crops_keep_image_and_label_aligned(tmp_path):
    from bam_dense.eval.retrieval import augmented_pair

    data = open_dataset("voc", _block_voc(tmp_path, n_train=4, n_val=1))
    gen = torch.Generator().manual_seed(0)
    encoder = ClassColourEncoder()
    for img, ann in data.train:
        image, label = augmented_pair(img, ann, 32, gen)
        assert image.shape == (3, 32, 32) and label.shape == (32, 32)
        # bilinear image vs nearest label disagree only along the resampled block edges
        assert (encoder(image[None]).argmax(1)[0] == label).float().mean() > 0.8
    params = RetrievalParams(input_size=32, memory_size=None, augmentation_epochs=2, augment=True, neighbours=5)
    result = retrieval_miou(encoder, data, params)
    assert result.memory_patches == 4 * 2 * 32 * 32 and result.per_image_patches is None


def test_ade20k_scores_classes_1_to_150_and_ignores_other():
    ade = open_dataset.__globals__["RetrievalDataset"]("ade20k", Path("."), [], [], 151, None, 1, 150, 0)
    areas = SegmentationAreas(150, 255)
    label = torch.tensor([[0, 1, 1, 150]])
    pred = torch.tensor([[5, 0, 1, 150]])  # "other" predicted on a class-1 pixel: a miss, no class gains area
    score_labels(pred, label, areas, ade)
    assert areas.intersect[0] == 1 and areas.union[0] == 2 and areas.intersect[149] == 1 and areas.union[149] == 1
    assert areas.area_pred.sum() == 2 and areas.miou() == pytest.approx((0.5 + 1.0) / 2)


def test_segmentation_areas_by_hand():
    areas = SegmentationAreas(3, 255)
    areas.update(torch.tensor([0, 0, 1, 2, 2, 1]), torch.tensor([0, 1, 1, 2, 255, 0]))
    # class 0: I 1, U 3 (pred {0,1}, label {0,5}); class 1: I 1, U 3; class 2: I 1, U 1 (pixel 4 ignored)
    assert areas.iou().tolist() == pytest.approx([1 / 3, 1 / 3, 1.0])


def test_segmentation_metric_equals_mmseg_iou_metric():
    from mmengine.structures import PixelData
    from mmseg.evaluation.metrics import IoUMetric
    from mmseg.structures import SegDataSample

    gen = torch.Generator().manual_seed(0)
    num_classes = 6
    metric = IoUMetric(ignore_index=255)
    metric.dataset_meta = {"classes": [f"c{i}" for i in range(num_classes)]}
    ours = SegmentationAreas(num_classes, 255)
    for _ in range(3):
        label = torch.randint(0, num_classes - 1, (1, 17, 23), generator=gen)  # class 5 never labelled
        label[torch.rand(label.shape, generator=gen) < 0.1] = 255
        pred = torch.where(torch.rand(label.shape, generator=gen) < 0.6, label.clamp(max=4),
                           torch.randint(0, num_classes, label.shape, generator=gen))
        pred[0, 0, :4] = -1  # a prediction of no scored class (ADE20K's "other")
        sample = SegDataSample()
        sample.pred_sem_seg, sample.gt_sem_seg = PixelData(data=pred), PixelData(data=label)
        metric.process({}, [sample.to_dict()])
        ours.update(pred, label)
    inter, union, area_pred, area_label = (torch.stack([r[i] for r in metric.results]).sum(0) for i in range(4))
    assert ours.intersect.tolist() == inter.long().tolist() and ours.union.tolist() == union.long().tolist()
    assert ours.area_pred.tolist() == area_pred.long().tolist() and ours.area_label.tolist() == area_label.long().tolist()
    # mmseg rounds its mIoU (in %) to two decimals
    assert metric.compute_metrics(metric.results)["mIoU"] == pytest.approx(100 * ours.miou(), abs=0.005 + 1e-6)


def test_dataset_errors_name_the_missing_file(tmp_path):
    base = _block_voc(tmp_path, n_train=1, n_val=1)
    (base / "JPEGImages" / "val_0000.jpg").unlink()
    with pytest.raises(UserFacingError, match=r"val\.txt lists val_0000, but .*val_0000\.jpg does not exist"):
        open_dataset("voc", tmp_path)
    with pytest.raises(UserFacingError, match="not in the expected layout"):
        open_dataset("ade20k", tmp_path)
    with pytest.raises(UserFacingError, match="not a multiple of the patch size 8"):
        retrieval_miou(ClassColourEncoder(8), open_dataset.__globals__["RetrievalDataset"](
            "voc", tmp_path, [], [], 21, 0, 0, 21, 255), RetrievalParams(input_size=30))



def _dinov2_reg4(path: Path) -> Path:
    """DINOv2 with registers, its own checkpoint layout (tests/fixtures/make_dinov2_official_fixture.py)."""
    torch.save(torch.load(Path(__file__).parent / "fixtures" / "dinov2_official.pt", weights_only=True)["reg4"]["checkpoint"], path)
    return path


def _dinov3(path: Path) -> Path:
    """DINOv3 (RoPE, storage tokens), its own checkpoint layout (tests/fixtures/make_dinov3_official_fixture.py)."""
    torch.save(torch.load(Path(__file__).parent / "fixtures" / "dinov3_official.pt", weights_only=True)["nobias"]["checkpoint"], path)
    return path


@pytest.mark.parametrize("source,dataset,size", [("bam-dense", "voc", 32), ("dinov2-reg4", "ade20k", 28), ("dinov3", "voc", 32)])
def test_eval_retrieval_cli_on_atiny_vit_bam_checkpoint_and_public_layouts(source, dataset, size, synthetic_root, tmp_path,
                                                                          capsys):
    from bam_dense.cli import main

    ckpt = {"bam-dense": tiny_vit_bam_checkpoint, "dinov2-reg4": _dinov2_reg4, "dinov3": _dinov3}[source](tmp_path / f"{source}.pth")
    out = tmp_path / "retrieval.json"
    status = main(["eval", "retrieval", "--checkpoint", str(ckpt), "--dataset", dataset, "--data-root", str(synthetic_root / dataset),
                   "--input-size", str(size), "--memory-size", "200", "--device", "cpu", "--out", str(out)])
    assert status == 0
    record = json.loads(out.read_text())
    patch = {"bam-dense": 4, "dinov2-reg4": 14, "dinov3": 16}[source]
    assert record["patch_size"] == patch and record["resolution"] == size and record["dataset"] == dataset
    assert record["per_image_patches"] == min(200 // (record["train_images"] * 2), (size // patch) ** 2)
    assert 0 <= record["metrics"]["mIoU"] <= 100 and record["params"]["augmentation_epochs"] == 2
    assert "retrieval mIoU" in capsys.readouterr().out


def test_eval_retrieval_cli_error_is_one_line(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "bam_dense.cli", "eval", "retrieval", "--checkpoint", "random", "--arch",
                           "vit_tiny_patch16_224", "--dataset", "voc", "--data-root", str(tmp_path)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"bam-dense eval: error: {tmp_path} is not in the expected layout: no "
                                                "ImageSets/Segmentation under it or under VOC2012, VOCdevkit/VOC2012"]
