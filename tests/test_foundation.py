"""The foundation: a light CLI, doctor, the installer's cache, synthetic datasets read by their real consumers."""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PYTHON, REPO
from PIL import Image

from bam_dense.core.paths import bundled
from bam_dense.data import synthetic


def _run(*args, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([PYTHON, *args], capture_output=True, text=True, env=env, **kw)


# ---------------------------------------------------------------------------- the package and the CLI
def test_import_and_help_need_no_heavy_dependency_and_are_fast():
    code = ("import sys, time; t = time.time(); import bam_dense, bam_dense.cli; "
            "bam_dense.cli.build_parser().format_help(); "
            "heavy = [m for m in ('torch', 'mmcv', 'mmseg', 'mmdet', 'mmengine', 'timm', 'cv2') if m in sys.modules]; "
            "print(heavy, time.time() - t)")
    out = _run("-c", code)
    heavy, seconds = out.stdout.rsplit(" ", 1)
    assert heavy == "[]", heavy
    start = time.time()
    proc = _run("-m", "bam_dense.cli", "--help")
    assert proc.returncode == 0 and time.time() - start < 2.0
    for word in ("pretrain", "convert", "eval", "davis", "seg", "det", "bench", "demo", "doctor", "install-openmmlab",
                 "make-synthetic"):
        assert word in proc.stdout


def test_printing_a_pretraining_config_imports_torch_but_not_timm_torchvision_or_the_trainer():
    """Reading a config imports every method module (each declares its parameters beside its class), so torch; the
    rest of training (timm, torchvision, the trainer: some 4 s more in a fresh process) waits until something runs."""
    code = ("import sys; from bam_dense.cli import main; "
            "main(['pretrain', '--config', 'configs/pretrain/dino_vit_small_100ep.yaml', '--print-config']); "
            "print([m for m in ('timm', 'torchvision', 'bam_dense.engine.trainer') if m in sys.modules])")
    proc = _run("-c", code, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]" and "name: dino" in proc.stdout


@pytest.mark.parametrize("command", [
    ["pretrain"], ["convert"], ["davis", "propagate"], ["davis", "eval"], ["seg", "train"], ["seg", "test"], ["det", "train"],
    ["det", "test"], ["bench", "run"], ["bench", "report"], ["demo"], ["probe"], ["doctor"], ["install-openmmlab"],
    ["make-synthetic"], ["eval", "retrieval"], ["eval", "linear"]])
def test_every_subcommand_has_help(command):
    proc = _run("-m", "bam_dense.cli", *command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: bam-dense " + " ".join(command) in proc.stdout


def test_doctor_reports_working_mmcv_ops_and_every_feature():
    proc = _run("-m", "bam_dense.cli", "doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["hardware"]["mmcv_ops"] is True and report["versions"]["mmcv"] == "2.1.0"
    features = {f["name"]: f for f in report["features"]}
    assert set(features) == {"pretraining", "converters", "DAVIS", "segmentation", "detection", "detectron2"}
    for name in ("pretraining", "converters", "DAVIS", "segmentation", "detection"):
        assert features[name]["ok"], features[name]
    if not features["detectron2"]["ok"]:
        assert "detectron2" in features["detectron2"]["fix"]
    text = _run("-m", "bam_dense.cli", "doctor").stdout
    assert "mmcv 2.1.0: compiled ops work" in text


# ---------------------------------------------------------------------------- the OpenMMLab installer
def test_installer_uses_a_cached_wheel_without_building(tmp_path, monkeypatch):
    from bam_dense.install import openmmlab as inst

    key = inst.build_key(False)
    wheel = tmp_path / key.name / "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"cached")
    installer = inst.Installer(tmp_path, "no", 1, False, tmp_path / "log.txt")
    calls = []
    checks = iter([(True, "2.1.0")])  # only the final verification runs: mmcv is "not installed"
    monkeypatch.setattr(inst, "_installed_version", lambda dist: None if dist == "mmcv" else "x")
    monkeypatch.setattr(inst, "mmcv_ops_work", lambda: next(checks))
    monkeypatch.setattr(inst.Installer, "build_wheel", lambda self, key, log: pytest.fail("rebuilt despite the cache"))
    monkeypatch.setattr(inst.Installer, "_pip", lambda self, step, args, log, env=None: calls.append(args))
    monkeypatch.setattr(inst.Installer, "_satisfied", staticmethod(lambda req: True))
    assert installer.run() == 0
    assert calls == [["--no-deps", "--force-reinstall", str(wheel)]]


def test_installer_builds_into_the_cache_when_it_is_empty(tmp_path, monkeypatch):
    from bam_dense.install import openmmlab as inst

    built = []
    checks = iter([(True, "2.1.0")])
    installer = inst.Installer(tmp_path, "no", 1, False, tmp_path / "log.txt")
    monkeypatch.setattr(inst, "_installed_version", lambda dist: None)
    monkeypatch.setattr(inst, "mmcv_ops_work", lambda: next(checks))

    def fake_build(self, key, log):
        built.append(key.name)
        path = tmp_path / key.name / "mmcv-2.1.0-x.whl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"w")
        return path

    monkeypatch.setattr(inst.Installer, "build_wheel", fake_build)
    monkeypatch.setattr(inst.Installer, "_pip", lambda self, step, args, log, env=None: None)
    monkeypatch.setattr(inst.Installer, "_satisfied", staticmethod(lambda req: True))
    installer.run()
    assert built == [inst.build_key(False).name] and built[0].startswith("mmcv-2.1.0-torch") and built[0].endswith(
        f"-cpu-cp{sys.version_info.major}{sys.version_info.minor}")


def test_installer_raises_the_cxx_standard_the_torch_headers_need(tmp_path):
    from bam_dense.install.openmmlab import patch_setup_py, required_cxx_standard

    (tmp_path / "ATen").mkdir()
    (tmp_path / "ATen" / "ATen.h").write_text("#if !defined(_MSC_VER) && __cplusplus < 202002L\n#error C++20\n#endif\n")
    assert required_cxx_standard(tmp_path) == "c++20"
    setup = tmp_path / "setup.py"
    setup.write_text("a = ['-std=c++14']\nb = ['-std=c++17']\nc = ['/std:c++17']\n")
    assert patch_setup_py(setup, "c++20") == 3
    assert setup.read_text().count("c++20") == 3 and "c++14" not in setup.read_text()


def test_the_real_torch_headers_need_cxx20():
    import torch

    from bam_dense.install.openmmlab import required_cxx_standard

    assert required_cxx_standard(Path(torch.__file__).parent / "include") == "c++20"


# ---------------------------------------------------------------------------- synthetic datasets, read by their consumers
def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("layout", ["imagenet", "ade20k", "voc", "coco", "davis"])
def test_same_seed_writes_byte_identical_files(tmp_path, layout):
    a = synthetic.make(layout, tmp_path / "a", num=3, seed=5)
    b = synthetic.make(layout, tmp_path / "b", num=3, seed=5)
    synthetic.make(layout, tmp_path / "c", num=3, seed=6)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert a.relative_to(tmp_path / "a") == b.relative_to(tmp_path / "b")


def _mean_object_colors(colors: str) -> np.ndarray:
    """Mean RGB over the visible pixels of each "solid" red_disc drawn in 40 scenes (texture shade 1)."""
    means = []
    for i in range(40):
        rng = np.random.default_rng([9, i])
        objects = synthetic.random_objects(rng, 48, 48, 1, classes=[0], min_radius=0.3, max_radius=0.4, colors=colors)
        image, instances, _, _ = synthetic.render(rng, 48, 48, objects)
        means.append(image[instances == 1].astype(np.float64).mean(0))
    return np.stack(means)


def test_instance_colors_make_colour_uninformative_and_class_colors_stay_fixed():
    fixed, free = _mean_object_colors("class"), _mean_object_colors("instance")
    # Class mode: every red_disc is its class colour (up to the rendering noise, sigma 4).
    assert np.abs(fixed - np.array(synthetic.OBJECT_CLASSES[0].color)).max() < 3
    # Instance mode: hues spread around the circle, far from one colour.
    hues = [colorsys.rgb_to_hsv(*(c / 255.0))[0] for c in free]
    assert np.histogram(hues, bins=4, range=(0, 1))[0].min() >= 2, hues  # class mode: all 40 in one bin
    assert free.std(0).min() > 40
    # The DAVIS tracks keep one colour per object through the sequence.
    frames = list(synthetic.davis_sequence(3, 0, 48, 64, 4, 1, colors="instance"))
    first, last = (img[ann == 1].astype(np.float64).mean(0) for img, ann in (frames[0], frames[-1]))
    assert np.abs(first - last).max() < 25
    with pytest.raises(ValueError, match="colors must be one of"):
        synthetic.make("ade20k", "/nonexistent", colors="hue")


def test_pretraining_config_selects_the_colour_mode():
    from bam_dense.core.config import ConfigError, load_config
    from bam_dense.engine.trainer import build_source

    config = bundled("configs/pretrain/bam_tiny_cpu.yaml", required=True)
    image = {c: np.asarray(build_source(load_config(config, [f"data.synthetic.colors={c}"])).load(0)[0]) for c in ("class", "instance")}
    assert image["class"].shape == image["instance"].shape and (image["class"] != image["instance"]).any()
    assert np.array_equal(image["class"], np.asarray(synthetic.classification_image(0, 0, 0, 64)))
    with pytest.raises(ConfigError, match=r"data\.synthetic\.colors: 'hue' is not one of class, instance"):
        load_config(config, ["data.synthetic.colors=hue"])


def test_imagenet_layout_is_read_by_torchvision_image_folder(synthetic_root):
    from torchvision.datasets import ImageFolder

    train = ImageFolder(synthetic_root / "imagenet" / "train")
    assert len(train.classes) == len(synthetic.OBJECT_CLASSES) and len(train) == 8 * len(synthetic.OBJECT_CLASSES)
    assert train.classes[0] == synthetic.wnid(0)
    img, label = train[0]
    assert img.size == (64, 64) and label == 0
    assert len(ImageFolder(synthetic_root / "imagenet" / "val")) > 0


def test_ade20k_layout_is_read_by_mmseg(synthetic_root):
    from mmseg.datasets import ADE20KDataset
    from mmseg.utils import register_all_modules

    register_all_modules()
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True), dict(type="PackSegInputs")]
    ds = ADE20KDataset(data_root=str(synthetic_root / "ade20k" / "ADEChallengeData2016"),
                       data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"), pipeline=pipeline)
    assert len(ds) == 8
    labels = set()
    for i in range(len(ds)):
        seg = ds[i]["data_samples"].gt_sem_seg.data.numpy()
        labels |= set(np.unique(seg).tolist())
    assert 255 in labels  # "other" (0) is ignored under reduce_zero_label
    assert all(v == 255 or 0 <= v < 150 for v in labels)
    assert {synthetic.ADE_STUFF_IDS[s] - 1 for s in synthetic.STUFF_CLASSES} & labels


def test_voc_layout_is_read_by_mmseg(synthetic_root):
    from mmseg.datasets import PascalVOCDataset
    from mmseg.utils import register_all_modules

    register_all_modules()
    root = synthetic_root / "voc" / "VOCdevkit" / "VOC2012"
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
    train = PascalVOCDataset(data_root=str(root), data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                             ann_file="ImageSets/Segmentation/train.txt", pipeline=pipeline)
    aug = PascalVOCDataset(data_root=str(root), data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClassAug"),
                           ann_file="ImageSets/Segmentation/aug.txt", pipeline=pipeline)
    seg = train[0]["data_samples"].gt_sem_seg.data.numpy()
    assert 255 in np.unique(seg)  # object borders are void in SegmentationClass
    assert set(np.unique(seg)) <= set(range(21)) | {255}
    aug_seg = aug[0]["data_samples"].gt_sem_seg.data.numpy()
    assert 255 not in np.unique(aug_seg) and set(np.unique(aug_seg)) <= set(range(21))
    names = {(root / "ImageSets" / "Segmentation" / f"{s}.txt").read_text() for s in ("train", "val", "aug")}
    assert len(names) == 3  # disjoint splits
    assert Image.open(root / "SegmentationClass" / f"{(root / 'ImageSets/Segmentation/train.txt').read_text().split()[0]}.png").mode == "P"


def test_coco_layout_is_read_by_pycocotools_and_masks_match_the_drawn_objects(tmp_path):
    from pycocotools.coco import COCO
    from scipy.ndimage import binary_fill_holes

    root = synthetic.make("coco", tmp_path / "coco", num=4, seed=1)
    coco = COCO(str(root / "annotations" / "instances_train2017.json"))
    assert len(coco.getCatIds()) == len(synthetic.OBJECT_CLASSES)
    checked = 0
    for i in range(4):
        rng = np.random.default_rng([1, i, 80])
        _, instances, _, objects, _ = synthetic._scene(rng, 128)
        image_id = i + 1
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        for ann in anns:
            k = next(k for k, o in enumerate(objects) if synthetic.COCO_CATEGORY_IDS[o.class_index] == ann["category_id"]
                     and (instances == k + 1).sum() == ann["area"])
            drawn = instances == k + 1
            mask = coco.annToMask(ann).astype(bool)
            outline = binary_fill_holes(drawn)  # COCO polygons have no holes (the ring's centre is inside its polygon)
            iou = (mask & outline).sum() / (mask | outline).sum()
            assert iou > 0.9, iou
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(drawn)
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert ann["iscrowd"] == 0
            checked += 1
    assert checked >= 4


def test_davis_layout_frames_masks_and_objects(synthetic_root):
    root = synthetic_root / "davis"
    for split in ("train", "val"):
        seqs = (root / "ImageSets" / "2017" / f"{split}.txt").read_text().split()
        assert len(seqs) == 3
        for seq in seqs:
            frames = sorted((root / "JPEGImages" / "480p" / seq).glob("*.jpg"))
            masks = sorted((root / "Annotations" / "480p" / seq).glob("*.png"))
            assert [f.stem for f in frames] == [m.stem for m in masks] == [f"{t:05d}" for t in range(10)]
            first = np.asarray(Image.open(masks[0]))
            assert Image.open(masks[0]).mode == "P"
            objects = set(np.unique(first).tolist()) - {0, 255}
            assert objects == set(range(1, len(objects) + 1)) and 1 <= len(objects) <= 3
            assert Image.open(frames[0]).size == (first.shape[1], first.shape[0])
    # objects move: some mask changes between the first and the last frame
    seq = (root / "ImageSets" / "2017" / "val.txt").read_text().split()[0]
    m = sorted((root / "Annotations" / "480p" / seq).glob("*.png"))
    assert not np.array_equal(np.asarray(Image.open(m[0])), np.asarray(Image.open(m[-1])))
