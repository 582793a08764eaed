"""Frozen features extracted once and shared by the protocols of one checkpoint.

Every frozen-feature protocol (linear probe, dense probe, retrieval's validation split and its
un-augmented memory bank) asks :class:`FeatureCache` for the features of a whole split. The cache key is
everything the features depend on:

* the checkpoint (its resolved path, size and modification time: a rewritten file is a new checkpoint),
* the preprocessing ``layout`` (e.g. ``square-bilinear``: PIL bilinear resize to ``resolution`` squared,
  ImageNet mean/std; the linear probe's ``resize-crop-bicubic``) and the ``resolution``,
* the split (the resolved image paths with their sizes and modification times),
* the token ``selection`` (e.g. ``dense:vit:timm``: the last block's patch grid after the norm, position
  table resampled the timm way; ``linear:vit``: the last four class tokens and the patch average).

Two protocols that read the same split at the same resolution with the same preprocessing and tokens
(the dense probe and retrieval on an ADE20K folder, two linear-probe recipes) extract once. The cache
lives in memory for the life of the :class:`FeatureCache` and, with ``cache_dir``, on disk across runs
(one ``.pt`` file per key, written atomically). Checkpoints without a file (``random``) are not cached:
two random initialisations share no features. Augmented views (retrieval's memory bank with the published
augmentation) are drawn afresh each run and never go through the cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SQUARE_LAYOUT = "square-bilinear"  # read_square: what the dense probe and retrieval read


def read_square(path: str | Path, size: int) -> torch.Tensor:
    """``3 x size x size``: the image resized with PIL's bilinear filter (antialiased) to ``size`` squared,
    normalised with the ImageNet mean and std (the dense probe's and retrieval's validation input)."""
    with Image.open(path) as img:
        image = img.convert("RGB").resize((size, size), Image.BILINEAR)
    tensor = torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)
    return (tensor - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def checkpoint_identity(checkpoint: str | None) -> str | None:
    """Resolved path, size and modification time of a checkpoint file; None for ``random`` or no file."""
    if not checkpoint or checkpoint == "random" or not os.path.isfile(checkpoint):
        return None
    st = os.stat(checkpoint)
    return f"{Path(checkpoint).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def split_identity(files: Sequence[str | Path]) -> str:
    """Hash of a split's files (resolved path, size, modification time), in order."""
    digest = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        digest.update(f"{Path(f).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return f"{len(files)}:{digest.hexdigest()[:16]}"


class FeatureCache:
    """Features of whole splits for one checkpoint, keyed by layout, resolution, split and token selection.

    ``forward_passes`` counts the encoder batches run through :meth:`split` (what a second protocol on the
    same checkpoint saves)."""

    def __init__(self, checkpoint: str | None, cache_dir: str | Path | None = None):
        self.identity = checkpoint_identity(checkpoint)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.memory: dict[str, dict[str, torch.Tensor]] = {}
        self.forward_passes = 0
        self.last_source: str | None = None  # "memory", a file path, or None when extracted

    def key(self, layout: str, resolution: int, files: Sequence[str | Path], selection: str) -> str | None:
        if self.identity is None:
            return None
        ident = "|".join([self.identity, layout, str(resolution), split_identity(files), selection])
        return hashlib.sha256(ident.encode()).hexdigest()[:20]

    def path(self, key: str, resolution: int) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"features_{key}_{resolution}px.pt"

    @torch.no_grad()
    def split(self, files: Sequence[str | Path], load: Callable[[int], torch.Tensor], forward: Forward, *, layout: str,
              resolution: int, selection: str, batch_size: int = 32, num_workers: int = 0,
              progress: bool = False) -> dict[str, torch.Tensor]:
        """``{name: N x ...}`` features of the ``len(files)`` images; ``load(i)`` gives image ``i`` preprocessed
        (``3 x H x W``), ``forward`` maps a batch to named float tensors. From memory or disk when this key was
        extracted before, else extracted in batches (``num_workers`` loading processes) and stored."""
        key = self.key(layout, resolution, files, selection)
        path = self.path(key, resolution) if key is not None else None
        if key is not None and key in self.memory:
            self.last_source = "memory"
            return self.memory[key]
        if path is not None and path.is_file():
            feats = torch.load(path, map_location="cpu", weights_only=True)
            self.memory[key] = feats
            self.last_source = str(path)
            return feats
        feats = self._extract(len(files), load, forward, batch_size, num_workers, progress)
        self.last_source = None
        if key is not None:
            self.memory[key] = feats
            if path is not None:
                from bam_dense.core.checkpoint import atomic_save

                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_save(feats, path)
        return feats

    def _extract(self, n: int, load, forward: Forward, batch_size: int, num_workers: int, progress: bool):
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        chunks: dict[str, list[torch.Tensor]] = {}
        loader = DataLoader(_Indexed(n, load), batch_size=batch_size, num_workers=num_workers)
        for images in tqdm(loader, disable=not progress, desc="features", leave=False):
            self.forward_passes += 1
            for name, value in forward(images).items():
                chunks.setdefault(name, []).append(value.float().cpu())
        return {name: torch.cat(parts) for name, parts in chunks.items()}


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, n: int, load):
        self.n, self.load = n, load

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.load(i)


def square_dense_features(extractor, files: Sequence[str | Path], size: int, cache: FeatureCache | None = None,
                          batch_size: int = 32) -> torch.Tensor:
    """``N x D x h x w``: ``extractor``'s dense maps of ``files`` read by :func:`read_square` at ``size``, through
    ``cache`` (the dense probe's splits and retrieval's plain splits: the same key, so extracted once)."""
    cache = cache if cache is not None else FeatureCache(None)
    return cache.split(files, lambda i: read_square(files[i], size), lambda images: {"dense": extractor(images)},
                       layout=SQUARE_LAYOUT, resolution=size, selection=dense_selection(extractor),
                       batch_size=batch_size)["dense"]


def dense_selection(extractor) -> str:
    """The token-selection key of a :class:`~bam_dense.encoders.FeatureExtractor`: its family, and the
    position-table resampling (ViT) or stage (ResNet) that decide its dense map."""
    kind = getattr(extractor, "kind", "custom")
    detail = getattr(extractor, "stage", "") if kind == "cnn" else getattr(extractor, "pos_resample", "")
    return f"dense:{kind}:{detail}"


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SQUARE_LAYOUT", "FeatureCache", "checkpoint_identity", "dense_selection",
           "read_square", "split_identity", "square_dense_features"]
