"""Shared feature extraction: two protocols on one checkpoint extract once; the key sees every change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm.layers
import torch
from conftest import tiny_vit_bam_checkpoint

from bam_dense.eval.features import FeatureCache


@pytest.fixture
def forward_passes(monkeypatch) -> list[int]:
    """Batches through any timm ViT's patch embedding: every encoder forward pass, in any protocol."""
    calls = [0]
    original = timm.layers.PatchEmbed.forward

    def counted(self, x):
        calls[0] += 1
        return original(self, x)

    monkeypatch.setattr(timm.layers.PatchEmbed, "forward", counted)
    return calls


def test_probe_then_retrieval_on_one_checkpoint_extracts_the_shared_splits_once(synthetic_root, tmp_path, forward_passes):
    from bam_dense.cli import main

    ckpt = tiny_vit_bam_checkpoint(tmp_path / "bam.pth")
    ade, cache = str(synthetic_root / "ade20k" / "ADEChallengeData2016"), str(tmp_path / "features")
    probe = ["probe", "--checkpoint", str(ckpt), "--ade-root", ade, "--image-size", "32", "--steps", "3", "--cache-dir", cache]
    retrieval = ["eval", "retrieval", "--checkpoint", str(ckpt), "--dataset", "ade20k", "--data-root", ade, "--input-size", "32",
                 "--memory-size", "0", "--no-augment", "--device", "cpu", "--cache-dir", cache]
    assert main(probe) == 0
    first = forward_passes[0]
    assert first > 0 and len(list(Path(cache).glob("features_*_32px.pt"))) == 2  # training and validation splits
    assert main(retrieval) == 0
    assert forward_passes[0] == first  # both splits read from the probe's extraction

    # the published augmentation: the memory bank's views are new, the validation split is still shared
    assert main(retrieval[:-5] + ["--augmentation-epochs", "1", "--device", "cpu", "--cache-dir", cache]) == 0
    augmented = forward_passes[0] - first
    train_images = len(list(Path(ade, "images", "training").glob("*.jpg")))
    assert augmented == -(-train_images // 16)  # ceil(images / batch 16): the training pass only

    before = forward_passes[0]
    assert main(probe[:6] + ["48"] + probe[7:]) == 0  # another resolution: extracted again
    assert forward_passes[0] > before and len(list(Path(cache).glob("features_*_48px.pt"))) == 2

    before = forward_passes[0]
    stamp = os.stat(ckpt).st_mtime_ns + 10**9
    os.utime(ckpt, ns=(stamp, stamp))  # a rewritten checkpoint (same path): extracted again
    assert main(probe) == 0 and forward_passes[0] - before == first


def test_memory_cache_and_key_parts(tmp_path):
    ckpt = tiny_vit_bam_checkpoint(tmp_path / "bam.pth")
    files = []
    for i in range(5):
        files.append(tmp_path / f"{i}.bin")
        files[-1].write_bytes(bytes([i]))
    cache = FeatureCache(str(ckpt))  # memory only
    calls = []

    def forward(x):
        calls.append(len(x))
        return {"dense": x * 2}

    def get(**kw):
        args = {"layout": "square-bilinear", "resolution": 8, "selection": "dense:vit:timm", **kw}
        return cache.split(files, lambda i: torch.full((3, 2, 2), float(i)), forward, batch_size=2, **args)

    first = get()
    assert calls == [2, 2, 1] and first["dense"].shape == (5, 3, 2, 2) and float(first["dense"][4, 0, 0, 0]) == 8.0
    assert get() is first and cache.last_source == "memory" and cache.forward_passes == 3
    for change in ({"resolution": 16}, {"layout": "resize-crop-bicubic"}, {"selection": "dense:vit:dino"}):
        get(**change)
    assert cache.forward_passes == 12  # each changed key part: one more extraction of 3 batches
    files[0].write_bytes(b"changed content")  # the split's files are part of the key
    get()
    assert cache.forward_passes == 15
    random = FeatureCache("random")  # no file: never cached
    random.split(files, lambda i: torch.zeros(3, 2, 2), forward, layout="x", resolution=8, selection="y")
    random.split(files, lambda i: torch.zeros(3, 2, 2), forward, layout="x", resolution=8, selection="y")
    assert random.forward_passes == 2 and not random.memory
