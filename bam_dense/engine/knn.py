"""Weighted k-NN classification on frozen pooled features (Wu et al. 2018; the DINO monitor).

``knn_accuracy`` votes with weights ``exp(cos / T)`` over the ``k`` nearest training features.
Feature extraction is sharded over ranks and gathered, so every process gets the same number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from bam_dense.core import dist
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
def extract(backbone, source, transform, device, batch_size: int = 128, max_images: int | None = None, num_workers: int = 0):
    """Pooled features and labels of ``source`` (sharded over ranks, gathered back in order)."""
    n = len(source) if max_images is None else min(len(source), max_images)
    world, rank = dist.world_size(), dist.rank()
    per_rank = (n + world - 1) // world
    indices = [i if i < n else -1 for i in range(rank * per_rank, (rank + 1) * per_rank)]
    loader = DataLoader(_Eval(source, transform, indices), batch_size=batch_size, num_workers=num_workers)
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
