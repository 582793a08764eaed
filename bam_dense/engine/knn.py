"""Weighted k-NN classification on frozen pooled features (Wu et al. 2018; the DINO monitor).

``knn_accuracy`` votes with weights ``exp(cos / T)`` over the ``k`` nearest training features.
Feature extraction is sharded over ranks and gathered, so every process gets the same number.
``balanced_subset`` picks the training images of the monitor: a seeded random subset with the same number
of images per class, as the official BAM monitor (10 % of ImageNet train, balanced, seed 0), never the first
N of a class-sorted listing (which holds only the first classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from bam_dense.core import dist, procs
from bam_dense.models.backbones import features


def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Predicted label of each test feature by weighted k-NN with cosine similarity."""
    num_classes = num_classes or int(train_labels.max()) + 1
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start:start + chunk] @ train.t()
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, test_labels: torch.Tensor,
                 k: int = 20, temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024) -> float:
    """Top-1 accuracy (in [0, 1]) of weighted k-NN with cosine similarity."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    preds = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes, chunk)
    return (preds == test_labels).sum().item() / test_feats.shape[0]


def balanced_subset(targets: Sequence[int], max_images: int | None, seed: int = 0) -> list[int] | None:
    """Indices (sorted) of at most ``max_images`` items, ``max_images // classes`` drawn at random from every
    class and one more from ``max_images % classes`` randomly chosen classes; a class with fewer images gives
    all it has. Deterministic in ``seed`` (every rank draws the same). ``None`` when every item fits.

    The official monitor [DanielShalam/BAM fd85871 online_evaluation.py get_subset_indices, balanced=True,
    seed=0] draws ``floor(n / classes)`` per class with NumPy's generator; this draws with torch's, so the
    images differ but the design (seeded, balanced, uniform within a class) is the same.
    """
    n = len(targets)
    if max_images is None or max_images >= n:
        return None
    if max_images < 1:
        raise ValueError(f"eval.knn.max_train_images must be at least 1, got {max_images}")
    labels = torch.as_tensor(list(targets), dtype=torch.long)
    order = torch.argsort(labels, stable=True)
    counts = torch.unique(labels, return_counts=True)[1]
    gen = torch.Generator().manual_seed(seed)
    quota = torch.full((len(counts),), max_images // len(counts), dtype=torch.long)
    quota[torch.randperm(len(counts), generator=gen)[: max_images % len(counts)]] += 1
    chosen = [members[torch.randperm(len(members), generator=gen)[:q]]
              for members, q in zip(torch.split(order, counts.tolist()), quota.tolist())]
    return sorted(torch.cat(chosen).tolist())


class _Eval(Dataset):
    """Items ``indices`` of ``source``; index -1 is padding (a copy of item 0 labelled -1)."""

    def __init__(self, source, transform, indices):
        self.source, self.transform, self.indices = source, transform, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        index = self.indices[i]
        img, label = self.source.load(max(index, 0))
        return self.transform(img), (label if index >= 0 else -1)


@torch.no_grad()
def extract(backbone, source, transform, device, batch_size: int = 128, indices: Sequence[int] | None = None,
            num_workers: int = 0):
    """Pooled features and labels of ``source``, or of its items ``indices`` (sharded over ranks, gathered back
    in order)."""
    items = list(range(len(source))) if indices is None else list(indices)
    n = len(items)
    world, rank = dist.world_size(), dist.rank()
    per_rank = (n + world - 1) // world
    shard = [items[i] if i < n else -1 for i in range(rank * per_rank, (rank + 1) * per_rank)]
    loader = DataLoader(_Eval(source, transform, shard), batch_size=batch_size, num_workers=num_workers,
                        worker_init_fn=procs.loader_worker_init() if num_workers > 0 else None)
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for images, targets in loader:
        feats.append(features(backbone, images.to(device)).pooled.float())
        labels.append(targets.to(device))
    backbone.train(was_training)
    local_f, local_l = torch.cat(feats), torch.cat(labels)
    all_f = dist.all_gather(local_f, grad=False).reshape(-1, local_f.shape[1])
    all_l = dist.all_gather(local_l, grad=False).reshape(-1)
    keep = all_l >= 0
    return all_f[keep], all_l[keep]
