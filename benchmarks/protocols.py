#!/usr/bin/env python
"""Frozen-feature protocols: images/s of the shared feature extraction and of each protocol on this machine.

    python benchmarks/protocols.py [--arch vit_small_patch16_224 --resolution 224 --images 32 --device cpu]

On synthetic data in the real layouts (an ADE20K folder and an ImageNet-layout folder, ``--images`` per
split), with a randomly initialised encoder saved as a bam-dense checkpoint, one process:

1. extraction: the ADE20K training and validation splits through :class:`~bam_dense.eval.features.FeatureCache`
   (cold: every image read, resized and encoded);
2. dense probe (``linear_seg_probe``, 300 Adam steps) and retrieval (``--no-augment``, every patch in the bank),
   both on the cache the extraction filled: what a second protocol on the same checkpoint costs;
3. retrieval with the published augmentation (2 passes): its memory-bank views are extracted afresh;
4. the ImageNet linear probe (recipe ``dino-vitb``, 5 epochs, 3 learning rates): cold, then again on its cache.

Every figure is images of the protocol's splits (training + validation) per second of wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_small_patch16_224")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--images", type=int, default=32, help="images per split (training and validation)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import timm
    import torch

    from bam_dense.data import synthetic
    from bam_dense.encoders import load_extractor
    from bam_dense.eval import linear_probe, retrieval
    from bam_dense.eval.dense_probe import linear_seg_probe
    from bam_dense.eval.features import FeatureCache, square_dense_features

    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic.make("ade20k", tmp / "ade", num=args.images, size=args.resolution, seed=0)
        ade = tmp / "ade" / "ADEChallengeData2016"
        # per class: 10 classes, a quarter of it for validation
        synthetic.make("imagenet", tmp / "imagenet", num=max(2, args.images // 10), size=args.resolution, seed=0)
        torch.manual_seed(0)
        model = timm.create_model(args.arch, pretrained=False, num_classes=0)
        state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
        ckpt = tmp / "encoder.pth"
        torch.save({"format": "bam-dense", "student": state, "teacher": state, "arch": args.arch, "model_kwargs": {}}, ckpt)
        cache = FeatureCache(str(ckpt), tmp / "features")
        extractor = load_extractor(str(ckpt), None, None, False, dev)
        n_train = len(list((ade / "images" / "training").glob("*.jpg")))
        n_val = len(list((ade / "images" / "validation").glob("*.jpg")))
        n_ade = n_train + n_val
        print(f"{args.arch} at {args.resolution} px, device {args.device}, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} CPUs; ADE20K layout {n_train} + {n_val} images")
        rows = []

        def timed(name: str, images: int, fn):
            start = time.perf_counter()
            fn()
            seconds = time.perf_counter() - start
            rows.append((name, images, seconds))
            print(f"{name:<58} {images:>5} images {seconds:8.2f} s {images / seconds:8.1f} images/s", flush=True)

        data = retrieval.open_dataset("ade20k", ade)
        timed("extraction (cold, both ADE20K splits)", n_ade,
              lambda: [square_dense_features(extractor, [img for img, _ in pairs], args.resolution, cache, 16)
                       for pairs in (data.train, data.val)])
        passes = cache.forward_passes
        timed("dense probe on the shared features", n_ade,
              lambda: linear_seg_probe(extractor.backbone, ade, args.resolution, steps=300, feature_cache=cache))
        plain = retrieval.RetrievalParams(input_size=args.resolution, memory_size=None, augment=False)
        timed("retrieval, no augmentation, on the shared features", n_ade,
              lambda: retrieval.retrieval_miou(extractor, data, plain, feature_cache=cache))
        assert cache.forward_passes == passes, "the second and third protocols ran the encoder"
        augmented = retrieval.RetrievalParams(input_size=args.resolution, memory_size=None)
        timed("retrieval, published augmentation (2 passes, val shared)", n_ade,
              lambda: retrieval.retrieval_miou(extractor, data, augmented, feature_cache=cache))
        n_in = sum(1 for f in (tmp / "imagenet").rglob("*") if f.is_file())
        for label in ("cold", "on its cache"):
            timed(f"linear probe (dino-vitb, 5 epochs, 3 lrs), {label}", n_in,
                  lambda: linear_probe.run(str(ckpt), str(tmp / "imagenet"), recipe="dino-vitb", resolution=args.resolution,
                                           cache_dir=str(tmp / "features"), learning_rates=[0.01, 0.1], epochs=5,
                                           device=args.device, progress=False, protocol="cached-centre-crop"))


if __name__ == "__main__":
    main()
