#!/usr/bin/env python
"""The linear probe's two protocols on the same encoder and data: the sources' augmented one and the cached
centre-crop shortcut, over several seeds, and the gap between them (docs/protocols.md).

    python benchmarks/linear_probe_gap.py [--seeds 0 1 2 3 4 --per-class 16 --epochs 20 --resolution 64]

For each seed: a synthetic ImageNet-layout folder (``bam_dense.data.synthetic.make_imagenet``, 10 classes,
``--per-class`` training images per class, a quarter of that for validation, the seed's own images) and a randomly
initialised encoder (seeded) saved as a bam-dense checkpoint: a tiny ViT (``vit_small_patch16_224`` at width 64,
4 blocks, 4 heads, read with the ``dino-vits`` recipe) and a ResNet-18 (``lewel-r50`` recipe). Both protocols train
the same grid (``--lrs`` per 256 images, plus the recipe's), the same epochs and batch; top-1 is the selected
classifier's (``--selection val``) and the recipe's own. Printed: per seed, each protocol's top-1 and the gap
(augmented - cached), then the mean, the sample standard deviation and the range over seeds.

Random encoders on synthetic images: the figures say how far the two protocols can part on the same features,
not what the gap is for a pretrained encoder on ImageNet.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENCODERS = {
    "vit-tiny": ("vit_small_patch16_224", {"embed_dim": 64, "depth": 4, "num_heads": 4}, "dino-vits"),
    "resnet18": ("resnet18", {}, "lewel-r50"),
}


def _checkpoint(path: Path, arch: str, kwargs: dict, seed: int) -> Path:
    import torch

    from bam_dense.models.backbones import create_backbone

    torch.manual_seed(seed)
    model = create_backbone(arch, dict(kwargs), pos_embed="learned")
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    torch.save({"format": "bam-dense", "student": state, "teacher": None, "arch": arch, "model_kwargs": kwargs}, path)
    return path


def _summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):6.2f} +- {spread:5.2f} [{min(values):6.2f}, {max(values):6.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--per-class", type=int, default=16, help="training images per class (validation: a quarter)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    args = parser.parse_args()

    import torch

    from bam_dense.data.synthetic import make_imagenet
    from bam_dense.eval import linear_probe

    print(f"linear probe, augmented vs cached centre crop; seeds {args.seeds}; {args.per_class} train images per class x 10 "
          f"classes; {args.epochs} epochs, batch {args.batch}, lrs {args.lrs} + the recipe's; {args.resolution} px; "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name in args.encoders:
            arch, kwargs, recipe = ENCODERS[name]
            gaps, own_gaps, tops = [], [], {"augmented": [], "cached-centre-crop": []}
            print(f"\n{name} ({arch} {kwargs}, recipe {recipe})")
            print(f"{'seed':>4} {'augmented':>10} {'cached':>8} {'gap':>7} {'gap at recipe lr':>17} {'seconds':>8}")
            for seed in args.seeds:
                root = make_imagenet(tmp / f"imagenet_{seed}", num=args.per_class, size=args.resolution, seed=seed,
                                     num_classes=10)
                ckpt = _checkpoint(tmp / f"{name}_{seed}.pth", arch, kwargs, seed)
                row, own, start = {}, {}, time.perf_counter()
                for protocol in tops:
                    record = linear_probe.run(str(ckpt), str(root), recipe=recipe, resolution=args.resolution,
                                              learning_rates=args.lrs, epochs=args.epochs, batch_size=args.batch,
                                              device="cpu", seed=seed, progress=False, protocol=protocol)
                    row[protocol], own[protocol] = record["metrics"]["top1"], record["metrics"]["top1_at_recipe_lr"]
                    tops[protocol].append(row[protocol])
                gap = row["augmented"] - row["cached-centre-crop"]
                own_gap = own["augmented"] - own["cached-centre-crop"]
                gaps.append(gap)
                own_gaps.append(own_gap)
                print(f"{seed:>4} {row['augmented']:>10.2f} {row['cached-centre-crop']:>8.2f} {gap:>+7.2f} {own_gap:>+17.2f} "
                      f"{time.perf_counter() - start:>8.1f}", flush=True)
            print(f"augmented top-1        {_summary(tops['augmented'])}")
            print(f"cached top-1           {_summary(tops['cached-centre-crop'])}")
            print(f"gap (selected)         {_summary(gaps)}   mean +- sd [min, max] over {len(gaps)} seeds")
            print(f"gap (recipe's own lr)  {_summary(own_gaps)}")


if __name__ == "__main__":
    main()
