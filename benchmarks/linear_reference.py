#!/usr/bin/env python
"""ImageNet linear probe: bam-dense beside DINO's ``eval_linear.py``, same encoder weights and images, one process.

    git clone https://github.com/facebookresearch/dino /tmp/dino   # 7c446df
    python benchmarks/linear_reference.py --dino-repo /tmp/dino [--per-class 16 --epochs 5 --resolution 224]

The encoder is DINO's own ViT-S/16 (its ``vision_transformer.vit_small``, random init, seed 0); bam-dense reads
the same weights from a file in DINO's released backbone layout. Data: the synthetic ImageNet layout
(``--per-class`` training images per class, a quarter of that for validation, 10 classes).

DINO's side runs its ``train`` and ``validate_network`` functions as its ``main`` does (SGD momentum 0.9, the
lr scaled by batch/256, cosine to 0, validation every epoch; ``--n_last_blocks 4``, no patch-token average:
the ViT-S recipe), with ``.cuda()`` and ``torch.cuda.synchronize()`` made no-ops on the CPU and its
classifier in ``nn.DataParallel`` (no GPU: a pass-through that gives the ``.module`` its code reads). Its
recipe encodes every training image again each epoch (fresh random-resized crops and flips); bam-dense
encodes the centre crops once and trains on the cached features (the documented DINOv2-style shortcut,
docs/protocols.md). Printed: seconds and images/s (training + validation images, times the epochs for the
work done) for DINO, bam-dense cold (extraction + one learning rate), bam-dense on its cache, and bam-dense
training a grid of learning rates in one pass; and both top-1 accuracies (not expected equal: the training
inputs differ as said).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dino-repo", required=True, type=Path, help="checkout of facebookresearch/dino (7c446df)")
    parser.add_argument("--per-class", type=int, default=16, help="training images per class (10 classes)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.001, help="DINO's default lr (per 256 images)")
    args = parser.parse_args()

    import torch
    from torch import nn
    from torchvision import datasets
    from torchvision import transforms as T

    from bam_dense.data import synthetic
    from bam_dense.eval import linear_probe

    torch.Tensor.cuda = lambda self, *a, **k: self  # DINO's script moves every tensor to the GPU
    nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.synchronize = lambda *a, **k: None
    sys.path.insert(0, str(args.dino_repo))
    eval_linear = importlib.import_module("eval_linear")
    vits = importlib.import_module("vision_transformer")
    eval_linear.args = argparse.Namespace(arch="vit_small")  # its train/validate read the module-level args

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = synthetic.make("imagenet", tmp / "imagenet", num=args.per_class, size=args.resolution, seed=0)
        torch.manual_seed(0)
        model = vits.vit_small(patch_size=16, num_classes=0).eval()
        for p in model.parameters():
            p.requires_grad = False
        ckpt = tmp / "dino_vits16_backbone.pth"  # the layout of DINO's released dino_deitsmall16_pretrain.pth
        torch.save(model.state_dict(), ckpt)

        norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        train_tf = T.Compose([T.RandomResizedCrop(args.resolution), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        val_tf = T.Compose([T.Resize(args.resolution * 256 // 224, interpolation=3), T.CenterCrop(args.resolution),
                            T.ToTensor(), norm])
        train_set = datasets.ImageFolder(str(root / "train"), transform=train_tf)
        val_set = datasets.ImageFolder(str(root / "val"), transform=val_tf)
        n_train, n_val = len(train_set), len(val_set)
        work = (n_train + n_val) * args.epochs
        print(f"DINO ViT-S/16 (random init) at {args.resolution} px; {n_train} training + {n_val} validation images, "
              f"{len(train_set.classes)} classes; {args.epochs} epochs, batch {args.batch}; {torch.get_num_threads()} threads")

        def dino() -> float:
            torch.manual_seed(0)
            train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch, shuffle=True, num_workers=0)
            val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch, num_workers=0)
            classifier = nn.DataParallel(eval_linear.LinearClassifier(model.embed_dim * 4, len(train_set.classes)))
            optimizer = torch.optim.SGD(classifier.parameters(), args.lr * args.batch / 256.0, momentum=0.9, weight_decay=0)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=0)
            best = 0.0
            for epoch in range(args.epochs):
                eval_linear.train(model, classifier, optimizer, train_loader, epoch, 4, False)
                scheduler.step()
                best = max(best, eval_linear.validate_network(val_loader, model, classifier, 4, False)["acc1"])
            return best

        def ours(cache: str, lrs: list[float]) -> float:
            record = linear_probe.run(str(ckpt), str(root), recipe="dino-vits", resolution=args.resolution, cache_dir=cache,
                                      learning_rates=lrs, epochs=args.epochs, batch_size=args.batch, device="cpu",
                                      progress=False, protocol="cached-centre-crop")
            return record["metrics"]["top1"]

        rows = []

        def timed(name: str, fn) -> None:
            start = time.perf_counter()
            top1 = fn()
            seconds = time.perf_counter() - start
            rows.append((name, seconds))
            print(f"{name:<58} {seconds:8.2f} s {work / seconds:8.1f} images/s   best top-1 {top1:5.1f}%", flush=True)

        def dino_quiet() -> float:
            with redirect_stdout(StringIO()):  # DINO's per-iteration log lines
                return dino()

        timed("DINO eval_linear.py (re-encodes every epoch)", dino_quiet)
        timed("bam-dense, cold (extraction once + 1 lr)", lambda: ours(str(tmp / "features"), [args.lr]))
        timed("bam-dense, on its cache (1 lr)", lambda: ours(str(tmp / "features"), [args.lr]))
        grid = [args.lr * f for f in (0.1, 0.3, 1, 3, 10, 30, 100)]
        timed(f"bam-dense, on its cache ({len(grid)} lrs in one pass)", lambda: ours(str(tmp / "features"), grid))
        base = rows[0][1]
        print("speed-up over DINO (same work: epochs x images): "
              + ", ".join(f"{name}: {base / seconds:.1f}x" for name, seconds in rows[1:]))

if __name__ == "__main__":
    main()
