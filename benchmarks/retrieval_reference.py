#!/usr/bin/env python
"""In-context retrieval segmentation (Hummingbird): bam-dense beside open-hummingbird-eval, same inputs, one process.

    git clone https://github.com/vpariza/open-hummingbird-eval /tmp/ohe   # tag 2.0.0 (5e79da2)
    python benchmarks/retrieval_reference.py --hbird-repo /tmp/ohe [--train 64 --val 32 --size 224 --turns 2]

Both implementations get the same synthetic scenes (rectangles of VOC classes with noise and void borders:
``scene`` of ``tests/fixtures/make_hummingbird_fixture.py`` at this size) and the same fixed patch encoder (its
``encode``: 16x16 patches through a fixed linear map and tanh, 384-d: cheap, so that the figures are the protocols' own work: memory bank, search,
label attention, scoring), and take turns. The reference is imported from the checkout as the fixture script
does (its dataset modules, which need pytorch_lightning, stubbed; its GPU faiss index replaced by the exact CPU
``IndexFlatIP``); ``HbirdEvaluation`` builds its memory bank in its constructor and scores in ``evaluate``.
Printed per turn: seconds and validation + training images per second of each, their ratio, the largest
difference of the retrieved label distributions (they must agree), and both scores: the reference's ``jac``
(its Hungarian class matching, IoU averaged over all 21 classes) beside ours averaged the same way without the
matching (docs/protocols.md: equal when the matching is the identity; the matching can only raise the score).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
CLASSES = 21


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hbird-repo", required=True, type=Path, help="checkout of vpariza/open-hummingbird-eval 2.0.0")
    parser.add_argument("--train", type=int, default=64, help="training (memory-bank) images")
    parser.add_argument("--val", type=int, default=32, help="validation images")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=30, help="neighbours (the published 30)")
    parser.add_argument("--memory-size", type=int, default=None, help="bank size (default: every patch kept)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--turns", type=int, default=2)
    args = parser.parse_args()

    from make_hummingbird_fixture import FixedEncoder, encode, load_official, official_loader, scene

    from bam_dense.eval.retrieval import NeighbourIndex, build_memory, predict, retrieve_labels
    from bam_dense.eval.seg_metrics import SegmentationAreas

    he = load_official(args.hbird_repo)
    rng = np.random.default_rng(0)
    colours = rng.normal(0, 1, (CLASSES, 3))
    size = args.size

    def scenes(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [scene(rng, colours, size, CLASSES - 1, size - size // 3, (size // 5, size // 2)) for _ in range(n)]
        return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])

    train_x, train_y = scenes(args.train)
    val_x, val_y = scenes(args.val)
    weight = torch.randn(3 * args.patch ** 2, args.dim, generator=torch.Generator().manual_seed(0)) / args.patch
    g = size // args.patch

    def dense(images: torch.Tensor) -> torch.Tensor:  # B x D x h x w
        return encode(images, weight, args.patch).transpose(1, 2).reshape(images.shape[0], -1, g, g)

    per_image = None if args.memory_size is None else args.memory_size // args.train

    def reference():
        torch.manual_seed(1)  # its patch sampling noise comes from the global generator
        evaluator = he.HbirdEvaluation(FixedEncoder(weight, args.patch, size), official_loader(train_x, train_y, args.batch),
                                       CLASSES, n_neighbours=args.k,
                                       augmentation_epoch=1, device="cpu", nn_method="faiss",
                                       memory_size=args.memory_size, dataset_size=args.train)
        jac, details = evaluator.evaluate(official_loader(val_x, val_y, args.batch), g, return_knn_details=True,
                                          ignore_index=255)
        return float(jac), details["knns_ca_labels"]

    def ours():
        batches = [(train_x[i:i + args.batch], train_y[i:i + args.batch]) for i in range(0, args.train, args.batch)]
        memory = build_memory(dense, batches, args.patch, CLASSES, per_image, torch.Generator().manual_seed(1), void_to=0)
        index = NeighbourIndex(memory.features)
        areas, soft_all = SegmentationAreas(CLASSES, 255), []
        for i in range(0, args.val, args.batch):
            soft = retrieve_labels(dense(val_x[i:i + args.batch]), memory, index, args.k, 0.02)
            areas.update(predict(soft, size), val_y[i:i + args.batch])
            soft_all.append(soft.flatten(2).transpose(1, 2))
        present = int((areas.union > 0).sum())
        return areas.miou() * present / CLASSES, torch.cat(soft_all)  # the reference averages over all 21 classes

    images = args.train + args.val
    print(f"{args.train} + {args.val} images at {size} px, {g}x{g} patches of {args.dim}-d, k={args.k}, memory "
          f"{'every patch' if per_image is None else args.memory_size}; {torch.get_num_threads()} threads")
    for turn in range(1, args.turns + 1):
        t0 = time.perf_counter()
        ref_score, ref_soft = reference()
        t1 = time.perf_counter()
        our_score, our_soft = ours()
        t2 = time.perf_counter()
        diff = (ref_soft - our_soft).abs().max().item()
        print(f"turn {turn}: open-hummingbird-eval {t1 - t0:7.2f} s ({images / (t1 - t0):6.1f} images/s)   "
              f"bam-dense {t2 - t1:7.2f} s ({images / (t2 - t1):6.1f} images/s)   ratio {(t1 - t0) / (t2 - t1):5.2f}x   "
              f"max |label distribution difference| {diff:.1e}   score {100 * ref_score:.2f} / {100 * our_score:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
