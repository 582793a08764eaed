"""Pretraining data: view pipelines, a deterministic dataset, and a resumable distributed sampler.

Determinism: the sampler yields ``(epoch, index)`` and the dataset seeds its augmentations from
``(seed, epoch, index)`` inside a forked RNG, so a sample's views depend on nothing else (not the
worker that loads it, not whether the run was resumed). That is what lets a resumed run end bitwise
equal to an uninterrupted one.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator

import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset, DistributedSampler
from torchvision import transforms as T

from bam_dense.core.config import ViewsConfig
from bam_dense.data.images import BadImage


class RandomPILBlur:
    """Gaussian blur with probability ``p`` and PIL radius drawn uniformly from ``radius`` (BYOL/DINO)."""

    def __init__(self, p: float, radius: tuple[float, float]):
        self.p = p
        self.radius = radius

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.p:
            return img
        r = self.radius[0] + (self.radius[1] - self.radius[0]) * torch.rand(()).item()
        return img.filter(ImageFilter.GaussianBlur(radius=r))


def _view_transform(cfg: ViewsConfig, size: int, scale: list[float], blur_p: float, solarize_p: float) -> T.Compose:
    interp = T.InterpolationMode.BICUBIC if cfg.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    b, c, s, h = cfg.color_jitter
    steps = [
        T.RandomResizedCrop(size, scale=tuple(scale), interpolation=interp),
        T.RandomHorizontalFlip(cfg.flip_prob),
        T.RandomApply([T.ColorJitter(b, c, s, h)], p=cfg.color_jitter_prob),
        T.RandomGrayscale(cfg.grayscale_prob),
    ]
    if blur_p > 0:
        steps.append(RandomPILBlur(blur_p, tuple(cfg.blur_radius)))
    if solarize_p > 0:
        steps.append(T.RandomSolarize(threshold=128, p=solarize_p))
    steps += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    return T.Compose(steps)


class Views:
    """G global + L local crops (multi-crop, METHODS.md 1.8) or the BYOL asymmetric pair (2.5).

    Returns crops in the order the losses expect: ``[g1, .., gG, l1, .., lL]``.
    """

    def __init__(self, cfg: ViewsConfig):
        self.cfg = cfg
        self.global_views = [
            _view_transform(cfg, cfg.global_size, cfg.global_scale, cfg.global_blur_prob[i], cfg.global_solarize_prob[i])
            for i in range(cfg.global_crops)
        ]
        self.local_view = _view_transform(cfg, cfg.local_size, cfg.local_scale, cfg.local_blur_prob, 0.0)

    @property
    def n_global(self) -> int:
        return self.cfg.global_crops

    @property
    def n_crops(self) -> int:
        return self.cfg.global_crops + self.cfg.local_crops

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        crops = [view(img) for view in self.global_views]
        crops += [self.local_view(img) for _ in range(self.cfg.local_crops)]
        return crops


def eval_transform(image_size: int, resize_size: int, mean, std) -> T.Compose:
    return T.Compose([
        T.Resize(resize_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2**63 - 1)


class PretrainDataset(Dataset):
    """Wraps a source with ``load(i) -> (PIL image, label)``; yields views, label and skipped-file count."""

    def __init__(self, source, views: Views, seed: int = 0, max_retries: int = 50):
        self.source = source
        self.views = views
        self.seed = seed
        self.max_retries = max_retries

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        failed = 0
        for attempt in range(self.max_retries):
            i = (index + attempt) % len(self.source)
            try:
                img, label = self.source.load(i)
            except BadImage as err:
                failed += 1
                print(f"bam-dense: warning: skipped unreadable image {err}", file=sys.stderr, flush=True)
                continue
            with torch.random.fork_rng(devices=[]):
                state = random.getstate()
                s = sample_seed(self.seed, epoch, index)
                torch.manual_seed(s)
                random.seed(s)
                crops = self.views(img)
                random.setstate(state)
            return crops, label, failed
        raise BadImage(f"{self.max_retries} consecutive unreadable images starting at index {index}")


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle seeded by ``seed + epoch``) that yields ``(epoch, index)`` and can
    start part-way into an epoch: ``set_epoch(epoch, start=k)`` skips this rank's first ``k`` samples."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int = 0, drop_last: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:  # type: ignore[override]
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        for index in indices[self.start:]:
            yield self.epoch, index

    def __len__(self) -> int:
        return self.num_samples - self.start


def collate(batch):
    crops = [torch.stack([sample[0][v] for sample in batch]) for v in range(len(batch[0][0]))]
    labels = torch.tensor([sample[1] for sample in batch])
    failed = sum(sample[2] for sample in batch)
    return crops, labels, failed
