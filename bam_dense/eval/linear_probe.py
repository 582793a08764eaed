"""ImageNet linear probe on frozen features, with each source's feature recipe and a learning-rate grid
trained in one pass over cached features.

Feature recipes (what the linear layer reads; all computed by the frozen encoder in eval mode):

* ``dino-vits`` (DINO ``eval_linear.py`` at ``7c446df``, for ViT-S: ``--n_last_blocks 4 --avgpool_patchtokens false``): the
  class tokens of the last 4 blocks, each after the final norm, concatenated.
* ``dino-vitb`` (DINO for ViT-B: ``--n_last_blocks 1 --avgpool_patchtokens true``): the last block's class
  token with the average of its patch tokens (after the final norm). Register tokens are never averaged
  in as patches.
* ``bam`` (BAM ``scripts/linear/linear.slurm`` and ``eval_linear.py``, DanielShalam/BAM at ``fd85871``):
  ``dino-vitb``'s features (timm's ``get_intermediate_layers(..., return_prefix_tokens=True, norm=True)``)
  through ``BatchNorm1d(affine=False, eps=1e-6)`` before the linear layer; lr 0.002 per 256 images, 100 epochs.
* ``lewel-r50`` (LEWEL ``main_lincls.py`` and ``scripts/srun_lin.sh``, LayneH/LEWEL at ``4ee47eb``): the globally
  average-pooled last stage of a ResNet; lr 0.4 at batch 256, 50 epochs, x0.1 at epochs 30 and 40.

Every recipe: SGD momentum 0.9, no weight decay, lr scaled by batch/256, classifier initialised N(0, 0.01)
with zero bias; DINO/BAM decay the lr with a cosine to 0 over the epochs, LEWEL in steps.

Features: the images are resized (bicubic) so the short side is ``resolution * 256 / 224`` and centre-cropped
to ``resolution`` (the recipes' validation transform), extracted **once** per checkpoint and resolution
(training and validation split) and cached on disk; every recipe of the same family and every learning
rate read that cache. Unlike the sources, which train on fresh random-resized crops and flips every
epoch, the cached training features are of the centre crop (the DINOv2-style frozen-feature shortcut;
docs/protocols.md states it beside the numbers).

Learning-rate grid: one classifier per learning rate, all trained together on the same batches in one
pass over the cached features per epoch. Selection rule (stated in the output): ``val`` = the highest
top-1 on the validation split (DINOv2's ``linear.py``; DINO likewise reports its best validation epoch), or
``holdout`` = the highest top-1 on a class-balanced ``holdout_fraction`` of the training images kept out of
training, then reported on the validation split. The recipe's own learning rate is always in the grid and
its accuracy is reported beside the selected one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bam_dense.core.errors import UserFacingError
from bam_dense.eval.features import FeatureCache


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    family: str  # vit or cnn
    n_last_blocks: int = 1
    avgpool: bool = False
    bn_head: bool = False
    lr: float = 0.001  # per 256 images
    epochs: int = 100
    batch_size: int = 1024
    schedule: str = "cosine"  # or "step" (milestones, x0.1)
    milestones: tuple[int, ...] = ()


RECIPES = {
    "dino-vits": Recipe("dino-vits", "DINO eval_linear.py (ViT-S: CLS of the last 4 blocks)", "vit", n_last_blocks=4,
                        lr=0.001, epochs=100, batch_size=1024),
    "dino-vitb": Recipe("dino-vitb", "DINO eval_linear.py (ViT-B: last CLS + average-pooled patch tokens)", "vit",
                        n_last_blocks=1, avgpool=True, lr=0.001, epochs=100, batch_size=1024),
    "bam": Recipe("bam", "BAM scripts/linear/linear.slurm (DINO's ViT-B features, BatchNorm head)", "vit", n_last_blocks=1,
                  avgpool=True, bn_head=True, lr=0.002, epochs=100, batch_size=1024),
    "lewel-r50": Recipe("lewel-r50", "LEWEL main_lincls.py (ResNet-50 average-pooled features)", "cnn", lr=0.4, epochs=50,
                        batch_size=256, schedule="step", milestones=(30, 40)),
}
# DINOv2 linear.py's grid (absolute lrs at batch 256)
LR_GRID = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
N_CACHED_BLOCKS = 4  # the cache keeps the last 4 class tokens and the last block's patch average


def default_recipe(backbone: nn.Module) -> str:
    """DINO's rule: ViT-S (width <= 384) reads 4 class tokens, wider ViTs the class token + patch average;
    ResNets the pooled map."""
    from bam_dense.models.backbones import family

    kind = family(backbone)
    if kind in ("vit", "eva"):
        return "dino-vits" if backbone.embed_dim <= 384 else "dino-vitb"
    if kind == "cnn":
        return "lewel-r50"
    raise UserFacingError(f"no linear-probe recipe for a {kind} backbone ({type(backbone).__name__})")


# --------------------------------------------------------------------------------------------- features


@torch.no_grad()
def probe_features(backbone: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """ViT: ``cls`` (``B x n x D``: class tokens of the last n = min(4, depth) blocks after the final norm, oldest
    first) and
    ``patch_mean`` (``B x D``: the last block's patch tokens after the norm, averaged; prefix tokens such as
    registers excluded). CNN: ``pooled`` (``B x D``)."""
    from bam_dense.models.backbones import family, features

    kind = family(backbone)
    if kind in ("vit", "eva"):
        n = min(N_CACHED_BLOCKS, len(backbone.blocks))
        out = backbone.forward_intermediates(images, indices=n, return_prefix_tokens=True, norm=True, output_fmt="NLC",
                                             intermediates_only=True)
        cls = torch.stack([prefix[:, 0] for _, prefix in out], dim=1)
        return {"cls": cls.float(), "patch_mean": out[-1][0].mean(dim=1).float()}
    if kind == "cnn":
        return {"pooled": features(backbone, images).pooled.float()}
    raise UserFacingError(f"no linear-probe features for a {kind} backbone")


def linear_input(feats: dict[str, torch.Tensor], recipe: Recipe) -> torch.Tensor:
    """The recipe's classifier input from cached features (DINO's ``torch.cat`` of class tokens, then the
    patch average; DINO interleaves the two for ViT-B, an order a linear layer cannot tell apart)."""
    if recipe.family == "cnn":
        if "pooled" not in feats:
            raise UserFacingError(f"recipe {recipe.name} needs a ResNet's pooled features")
        return feats["pooled"]
    if "cls" not in feats:
        raise UserFacingError(f"recipe {recipe.name} needs a ViT's class tokens")
    available_blocks = feats["cls"].shape[1]
    if recipe.n_last_blocks > available_blocks:
        raise UserFacingError(f"recipe {recipe.name} reads {recipe.n_last_blocks} blocks, the encoder has {available_blocks}")
    parts = [feats["cls"][:, -recipe.n_last_blocks:].flatten(1)]
    if recipe.avgpool:
        parts.append(feats["patch_mean"])
    return torch.cat(parts, dim=1)


def eval_transform(resolution: int):
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(int(round(resolution * 256 / 224)), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(resolution),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])


def _split_sources(root: Path):
    from bam_dense.data.images import ImageFolderSource

    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserFacingError(f"{root / split} does not exist (an ImageNet-layout folder: train/<class>/*, val/<class>/*)")
    try:
        train, val = ImageFolderSource(root / "train"), ImageFolderSource(root / "val")
    except FileNotFoundError as err:
        raise UserFacingError(str(err)) from err
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))[:5]
        raise UserFacingError(f"{root}: train/ and val/ have different class folders (e.g. {', '.join(only)})")
    return train, val


LAYOUT = "resize-crop-bicubic"  # eval_transform: short side resolution * 256 / 224 (bicubic), centre crop


def cached_features(backbone, checkpoint: str, data_root: str | Path, resolution: int, cache_dir: str | Path | None,
                    device, batch_size: int = 128, num_workers: int = 0, progress: bool = False,
                    feature_cache: FeatureCache | None = None) -> dict:
    """Train/val features of the ImageNet-layout folder through the shared :class:`FeatureCache` (``cache_dir``
    on disk, or the given ``feature_cache``): extracted once per checkpoint, resolution and split (``random``
    checkpoints are not cached)."""
    from bam_dense.models.backbones import family

    root = Path(data_root)
    train, val = _split_sources(root)
    cache = feature_cache if feature_cache is not None else FeatureCache(checkpoint, cache_dir)
    transform = eval_transform(resolution)
    kind = "vit" if family(backbone) in ("vit", "eva") else family(backbone)
    backbone.eval()
    record: dict = {"classes": train.classes, "resolution": resolution, "checkpoint": checkpoint}
    sources = []
    for name, source in (("train", train), ("val", val)):
        files = [path for path, _ in source.samples]
        record[name] = cache.split(files, lambda i, s=source: transform(s.load(i)[0]),
                                   lambda images: probe_features(backbone, images.to(device)), layout=LAYOUT,
                                   resolution=resolution, selection=f"linear:{kind}:{N_CACHED_BLOCKS}",
                                   batch_size=batch_size, num_workers=num_workers, progress=progress)
        record[f"{name}_labels"] = torch.tensor(source.targets)
        sources.append(cache.last_source)
    record["from_cache"] = sources[0] if all(sources) else None
    return record


# --------------------------------------------------------------------------------------------- training


class LinearGrid(nn.Module):
    """One linear classifier per learning rate over the same input, optionally behind one affine-free
    BatchNorm1d (the same for every classifier, since it has no parameters)."""

    def __init__(self, dim: int, num_classes: int, n: int, bn_head: bool):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if bn_head else nn.Identity()
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(n))
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(x)
        return torch.stack([head(x) for head in self.heads])  # G x B x C


@dataclass
class GridResult:
    learning_rates: list[float]  # per 256 images
    val_top1: list[float]
    holdout_top1: list[float] | None
    selected_lr: float
    selected_top1: float
    selection: str
    recipe_lr_top1: float
    epochs: int
    batch_size: int
    history: list[dict] = field(default_factory=list)


def _accuracy(model: LinearGrid, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        correct = sum((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum(-1) for i in range(0, len(x), batch))
    return correct.float() / len(x)


def train_grid(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, num_classes: int,
               recipe: Recipe, learning_rates: list[float] | None = None, epochs: int | None = None,
               batch_size: int | None = None, selection: str = "val", holdout_fraction: float = 0.1, seed: int = 0,
               device: str | torch.device = "cpu") -> GridResult:
    """Train one classifier per learning rate (per 256 images; the recipe's lr added) together, one pass
    over the cached training features per epoch, and pick one by ``selection`` (``val`` or ``holdout``)."""
    if selection not in ("val", "holdout"):
        raise UserFacingError(f"unknown selection rule {selection!r}; choose val or holdout")
    lrs = sorted(set(learning_rates if learning_rates is not None else LR_GRID) | {recipe.lr})
    epochs = epochs or recipe.epochs
    batch = batch_size or recipe.batch_size
    gen = torch.Generator().manual_seed(seed)
    hold_x = hold_y = None
    if selection == "holdout":
        if not 0 < holdout_fraction < 1:
            raise UserFacingError(f"holdout fraction must be in (0, 1), got {holdout_fraction}")
        keep = torch.ones(len(train_y), dtype=torch.bool)
        for c in train_y.unique():
            members = torch.nonzero(train_y == c).flatten()
            n_hold = max(1, int(round(holdout_fraction * len(members)))) if len(members) > 1 else 0
            keep[members[torch.randperm(len(members), generator=gen)[:n_hold]]] = False
        hold_x, hold_y = train_x[~keep].to(device), train_y[~keep].to(device)
        train_x, train_y = train_x[keep], train_y[keep]
    train_x, train_y = train_x.to(device), train_y.to(device)
    model = LinearGrid(train_x.shape[1], num_classes, len(lrs), recipe.bn_head).to(device)
    scale = batch / 256  # linear scaling rule of every source
    optimizer = torch.optim.SGD([{"params": h.parameters(), "lr": lr * scale} for h, lr in zip(model.heads, lrs)],
                                momentum=0.9, weight_decay=0)
    if recipe.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=0)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), gamma=0.1)
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=gen).to(device)
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            if recipe.bn_head and len(idx) < 2:
                continue  # BatchNorm needs two samples; the sources drop nothing, a one-sample tail is rare
            logits = model(train_x[idx])  # G x B x C
            loss = F.cross_entropy(logits.flatten(0, 1), train_y[idx].repeat(len(lrs)), reduction="sum") / len(idx)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        scheduler.step()
        history.append({"epoch": epoch, "loss_sum_over_grid": total})
    val_acc = _accuracy(model, val_x.to(device), val_y.to(device)).cpu()
    hold_acc = _accuracy(model, hold_x, hold_y).cpu() if hold_x is not None else None
    chooser = val_acc if selection == "val" else hold_acc
    best = int(torch.argmax(chooser))  # ties: the smallest lr
    return GridResult(learning_rates=lrs, val_top1=val_acc.tolist(), holdout_top1=None if hold_acc is None else hold_acc.tolist(),
                      selected_lr=lrs[best], selected_top1=float(val_acc[best]), selection=selection,
                      recipe_lr_top1=float(val_acc[lrs.index(recipe.lr)]), epochs=epochs, batch_size=batch, history=history)


SELECTION_RULES = {
    "val": "the learning rate with the highest top-1 on the validation split (DINOv2 linear.py's rule)",
    "holdout": "the learning rate with the highest top-1 on a class-balanced held-out part of the training split",
}


def run(checkpoint: str, data_root: str, out: str | None = None, recipe: str | None = None, resolution: int = 224,
        cache_dir: str | None = None, learning_rates: list[float] | None = None, epochs: int | None = None,
        batch_size: int | None = None, selection: str = "val", holdout_fraction: float = 0.1, arch: str | None = None,
        which: str | None = None, trust_source: bool = False, device: str | None = None, num_workers: int = 0,
        seed: int = 0, progress: bool = True, feature_cache: FeatureCache | None = None) -> dict:
    """``bam-dense eval linear``: features (cached; ``feature_cache`` shares them with other protocols of the
    same checkpoint) of a checkpoint, the lr grid, the metrics JSON."""
    from bam_dense.davis.propagate import load_backbone_and_format
    from bam_dense.models.backbones import family

    backbone, source_format = load_backbone_and_format(checkpoint, arch, which, trust_source)
    name = recipe or default_recipe(backbone)
    if name not in RECIPES:
        raise UserFacingError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    chosen = RECIPES[name]
    kind = "vit" if family(backbone) in ("vit", "eva") else family(backbone)
    if chosen.family != kind:
        raise UserFacingError(f"recipe {name} is for {chosen.family} encoders, {checkpoint} is a {kind}")
    if kind == "vit" and chosen.n_last_blocks > len(backbone.blocks):  # before hours of extraction, not after
        raise UserFacingError(f"recipe {name} reads {chosen.n_last_blocks} blocks, the encoder has {len(backbone.blocks)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    feats = cached_features(backbone.to(dev), checkpoint, data_root, resolution, cache_dir, dev, num_workers=num_workers,
                            progress=progress, feature_cache=feature_cache)
    x_train = linear_input(feats["train"], chosen)
    x_val = linear_input(feats["val"], chosen)
    grid = train_grid(x_train, feats["train_labels"], x_val, feats["val_labels"], len(feats["classes"]), chosen,
                      learning_rates, epochs, batch_size, selection, holdout_fraction, seed, dev)
    record = {
        "task": "linear_probe",
        "protocol": f"frozen linear probe, recipe {name}: {chosen.source}",
        "checkpoint": checkpoint,
        "source_format": source_format,
        "recipe": asdict(chosen),
        "resolution": resolution,
        "feature_dim": int(x_train.shape[1]),
        "train_images": int(len(feats["train_labels"])),
        "val_images": int(len(feats["val_labels"])),
        "num_classes": len(feats["classes"]),
        "features_from_cache": feats["from_cache"],
        "selection_rule": SELECTION_RULES[selection],
        "metrics": {"top1": 100 * grid.selected_top1, "top1_at_recipe_lr": 100 * grid.recipe_lr_top1},
        "grid": {k: v for k, v in asdict(grid).items() if k != "history"},
        "history": grid.history,
    }
    if out:
        from bam_dense.core.atomic import atomic_write_text

        atomic_write_text(out, json.dumps(record, indent=1))
    return record


__all__ = ["LR_GRID", "RECIPES", "GridResult", "LinearGrid", "Recipe", "cached_features", "default_recipe", "linear_input",
           "probe_features", "run", "train_grid"]
