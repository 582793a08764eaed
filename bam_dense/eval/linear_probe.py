"""ImageNet linear probe on frozen features: each source's recipe, augmentation included, with a grid of
classifiers (learning rates, and DINOv2's token choices) trained in one pass.

Recipes (:data:`RECIPES`; what the linear layer reads, all computed by the frozen encoder in eval mode):

* ``dino-vits`` (DINO ``eval_linear.py`` at ``7c446df``, for ViT-S: ``--n_last_blocks 4 --avgpool_patchtokens false``): the
  class tokens of the last 4 blocks, each after the final norm, concatenated.
* ``dino-vitb`` (DINO for ViT-B: ``--n_last_blocks 1 --avgpool_patchtokens true``): the last block's class
  token with the average of its patch tokens (after the final norm). Register tokens are never averaged
  in as patches.
* ``bam`` (BAM ``scripts/linear/linear.slurm`` and ``eval_linear.py``, DanielShalam/BAM at ``fd85871``):
  ``dino-vitb``'s features through ``BatchNorm1d(affine=False, eps=1e-6)`` before the linear layer; lr 0.002 per 256
  images, 100 epochs.
* ``dinov2`` (DINOv2 ``eval/linear.py`` at ``b8931f7``): every pair of ``n_last_blocks`` in {1, 4} and ``avgpool`` in
  {no, yes} x its 13 learning rates, one classifier each, trained together; 10 epochs of 1250 iterations at batch
  1024 (128 per GPU on ``run/submit.py``'s 8 GPUs), cosine per iteration; bicubic crops.
* ``mocov3-vit`` / ``mocov3-r50`` (MoCo v3 ``main_lincls.py`` and ``CONFIG.md``, facebookresearch/moco-v3 at
  ``c349e6e``): the class token after the final norm (ViT, ``--lr=3``) or the pooled last stage (ResNet-50, the
  default lr 0.1); batch 1024, 90 epochs, cosine per epoch; bilinear resizing.
* ``lewel-r50`` (LEWEL ``main_lincls.py`` and ``scripts/srun_lin.sh``, LayneH/LEWEL at ``4ee47eb``): the globally
  average-pooled last stage of a ResNet; lr 0.4 at batch 256, 50 epochs, x0.1 at epochs 30 and 40; bilinear
  resizing (``data/transforms.py``: torchvision's default).

Every recipe: SGD momentum 0.9, no weight decay, lr scaled by batch/256, classifier initialised N(0, 0.01)
with zero bias; the validation input is resized so the short side is ``resolution * 256 / 224`` and centre-cropped.

Protocols (``protocol``, recorded with the number, :data:`PROTOCOLS`):

* ``augmented`` (default, the sources' recipe): every epoch, each training image is a fresh
  ``RandomResizedCrop(resolution)`` (scale 0.08-1, the recipe's interpolation) with a horizontal flip at p = 0.5,
  encoded by the frozen encoder; each batch's tokens are computed once and read by every classifier of the grid
  (DINOv2's ``linear.py`` does the same). Named ``linear-<recipe>`` in the record.
* ``cached-centre-crop``: the centre crop of every training image is encoded once and cached (the frozen-feature
  shortcut; the cache is shared with other protocols); much faster, but another protocol, named
  ``linear-cached-centre-crop``: its gap to the augmented one is measured in ``benchmarks/linear_probe_gap.py``
  (docs/protocols.md).

Selection rule (stated in the output): ``val`` = the classifier with the highest top-1 on the validation split
after the last epoch (DINOv2's ``linear.py``; DINO reports its best validation epoch), or ``holdout`` = the highest
top-1 on a class-balanced ``holdout_fraction`` of the training images kept out of training (centre crops), then
reported on the validation split. The recipe's own classifier (its lr and token choice) is always in the grid and
its accuracy is reported beside the selected one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
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
    schedule: str = "cosine"  # per epoch; "cosine-iter" per iteration; "step" (milestones, x0.1)
    milestones: tuple[int, ...] = ()
    feature_grid: tuple[tuple[int, bool], ...] = ()  # further (n_last_blocks, avgpool) choices trained beside (DINOv2)
    lr_grid: tuple[float, ...] | None = None  # the source's own grid (DINOv2); None: LR_GRID
    train_interpolation: str = "bilinear"  # RandomResizedCrop's
    val_interpolation: str = "bicubic"  # the validation resize's

    @property
    def choices(self) -> tuple[tuple[int, bool], ...]:
        """(n_last_blocks, avgpool) of every classifier group, the recipe's own first."""
        own = (self.n_last_blocks, self.avgpool)
        return (own,) + tuple(c for c in self.feature_grid if c != own)


# DINOv2 linear.py's grid (absolute lrs at batch 256)
LR_GRID = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
RECIPES = {
    "dino-vits": Recipe("dino-vits", "DINO eval_linear.py (ViT-S: CLS of the last 4 blocks)", "vit", n_last_blocks=4,
                        lr=0.001, epochs=100, batch_size=1024),
    "dino-vitb": Recipe("dino-vitb", "DINO eval_linear.py (ViT-B: last CLS + average-pooled patch tokens)", "vit",
                        n_last_blocks=1, avgpool=True, lr=0.001, epochs=100, batch_size=1024),
    "bam": Recipe("bam", "BAM scripts/linear/linear.slurm (DINO's ViT-B features, BatchNorm head)", "vit", n_last_blocks=1,
                  avgpool=True, bn_head=True, lr=0.002, epochs=100, batch_size=1024),
    "dinov2": Recipe("dinov2", "DINOv2 eval/linear.py (n_last_blocks {1, 4} x avgpool {no, yes} x 13 lrs, one pass)", "vit",
                     n_last_blocks=4, avgpool=True, lr=0.001, epochs=10, batch_size=1024, schedule="cosine-iter",
                     feature_grid=((1, False), (1, True), (4, False), (4, True)), lr_grid=LR_GRID,
                     train_interpolation="bicubic"),
    "mocov3-vit": Recipe("mocov3-vit", "MoCo v3 main_lincls.py + CONFIG.md (ViT-S/B: class token, --lr=3)", "vit",
                         lr=3.0, epochs=90, batch_size=1024, val_interpolation="bilinear"),
    "mocov3-r50": Recipe("mocov3-r50", "MoCo v3 main_lincls.py + CONFIG.md (ResNet-50: pooled features, lr 0.1)", "cnn",
                         lr=0.1, epochs=90, batch_size=1024, val_interpolation="bilinear"),
    "lewel-r50": Recipe("lewel-r50", "LEWEL main_lincls.py + scripts/srun_lin.sh (ResNet-50 average-pooled features)", "cnn",
                        lr=0.4, epochs=50, batch_size=256, schedule="step", milestones=(30, 40), val_interpolation="bilinear"),
}
N_CACHED_BLOCKS = 4  # the cache keeps the last 4 class tokens and the last block's patch average
PROTOCOLS = {
    "augmented": "fresh RandomResizedCrop + horizontal flip of every training image each epoch (the sources' recipe)",
    "cached-centre-crop": "centre-crop features of the training images, encoded once and cached (not the sources' recipe)",
}
SOURCE_RECIPES = {"bam-official": "bam", "dinov2": "dinov2", "lewel-official": "lewel-r50"}  # else by family and width


def default_recipe(backbone: nn.Module, source_format: str | None = None) -> str:
    """The checkpoint's source's recipe (BAM, DINOv2, LEWEL, MoCo v3); otherwise DINO's rule: ViT-S (width <= 384)
    reads 4 class tokens, wider ViTs the class token + patch average; ResNets LEWEL's pooled map."""
    from bam_dense.models.backbones import describe

    facts = describe(backbone)
    kind = facts.family
    if kind not in ("vit", "eva", "cnn"):
        raise UserFacingError(f"no linear-probe recipe for a {kind} backbone ({type(backbone).__name__})")
    kind = _kind(backbone)
    if source_format == "mocov3":
        return f"mocov3-{'r50' if kind == 'cnn' else 'vit'}"
    if source_format in SOURCE_RECIPES and RECIPES[SOURCE_RECIPES[source_format]].family == kind:
        return SOURCE_RECIPES[source_format]
    if kind == "vit":
        return "dino-vits" if facts.pooled_dim <= 384 else "dino-vitb"
    return "lewel-r50"


# --------------------------------------------------------------------------------------------- features


@torch.no_grad()
def probe_features(backbone: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """ViT: ``cls`` (``B x n x D``: class tokens of the last n = min(4, depth) blocks after the final norm, oldest
    first) and
    ``patch_mean`` (``B x D``: the last block's patch tokens after the norm, averaged; prefix tokens such as
    registers excluded). CNN: ``pooled`` (``B x D``)."""
    from bam_dense.models.backbones import describe, features

    facts = describe(backbone)
    kind = facts.family
    if kind in ("vit", "eva"):
        n = min(N_CACHED_BLOCKS, facts.stage_count)
        out = backbone.forward_intermediates(images, indices=n, return_prefix_tokens=True, norm=True, output_fmt="NLC",
                                             intermediates_only=True)
        cls = torch.stack([prefix[:, 0] for _, prefix in out], dim=1)
        return {"cls": cls.float(), "patch_mean": out[-1][0].mean(dim=1).float()}
    if kind == "cnn":
        return {"pooled": features(backbone, images).pooled.float()}
    raise UserFacingError(f"no linear-probe features for a {kind} backbone")


def linear_input(feats: dict[str, torch.Tensor], recipe: Recipe, choice: tuple[int, bool] | None = None) -> torch.Tensor:
    """The classifier input of the recipe (or of its ``choice`` = (n_last_blocks, avgpool)) from probe features
    (DINO's ``torch.cat`` of class tokens, then the patch average; DINO interleaves the two for ViT-B, an order a
    linear layer cannot tell apart)."""
    if recipe.family == "cnn":
        if "pooled" not in feats:
            raise UserFacingError(f"recipe {recipe.name} needs a ResNet's pooled features")
        return feats["pooled"]
    if "cls" not in feats:
        raise UserFacingError(f"recipe {recipe.name} needs a ViT's class tokens")
    n_blocks, avgpool = choice or (recipe.n_last_blocks, recipe.avgpool)
    available_blocks = feats["cls"].shape[1]
    if n_blocks > available_blocks:
        raise UserFacingError(f"recipe {recipe.name} reads {n_blocks} blocks, the encoder has {available_blocks}")
    parts = [feats["cls"][:, -n_blocks:].flatten(1)]
    if avgpool:
        parts.append(feats["patch_mean"])
    return torch.cat(parts, dim=1)


def _interpolation(name: str):
    from torchvision import transforms

    return {"bicubic": transforms.InterpolationMode.BICUBIC, "bilinear": transforms.InterpolationMode.BILINEAR}[name]


def eval_transform(resolution: int, interpolation: str = "bicubic"):
    """Resize so the short side is ``resolution * 256 / 224``, centre crop, ImageNet normalisation."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(int(round(resolution * 256 / 224)), interpolation=_interpolation(interpolation)),
        transforms.CenterCrop(resolution),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])


def train_transform(resolution: int, interpolation: str = "bilinear"):
    """The sources' training augmentation: ``RandomResizedCrop`` (scale 0.08-1, ratio 3/4-4/3), flip at p = 0.5."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(resolution, interpolation=_interpolation(interpolation)),
        transforms.RandomHorizontalFlip(),
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


def layout(interpolation: str) -> str:
    """The feature cache's preprocessing key of :func:`eval_transform` (``resize-crop-bicubic``, ...)."""
    return f"resize-crop-{interpolation}"



def _kind(backbone) -> str:
    from bam_dense.models.backbones import describe

    facts = describe(backbone)
    return "vit" if facts.tokens else facts.family


def split_features(backbone, cache: FeatureCache, source, indices: list[int], resolution: int, interpolation: str, device,
                   batch_size: int = 128, num_workers: int = 0, progress: bool = False) -> dict[str, torch.Tensor]:
    """Probe features of the centre crops of ``source``'s images ``indices``, through the shared cache."""
    files = [source.samples[i][0] for i in indices]
    transform = eval_transform(resolution, interpolation)
    return cache.split(files, lambda i: transform(source.load(indices[i])[0]),
                       lambda images: probe_features(backbone, images.to(device)), layout=layout(interpolation),
                       resolution=resolution, selection=f"linear:{_kind(backbone)}:{N_CACHED_BLOCKS}",
                       batch_size=batch_size, num_workers=num_workers, progress=progress)


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


class HeadGrid(nn.Module):
    """A :class:`LinearGrid` per token choice; ``forward(inputs)`` takes one input per choice and gives every
    classifier's logits, choice-major (``(choices x lrs) x B x C``)."""

    def __init__(self, dims: list[int], num_classes: int, n_lrs: int, bn_head: bool):
        super().__init__()
        self.grids = nn.ModuleList(LinearGrid(d, num_classes, n_lrs, bn_head) for d in dims)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([grid(x) for grid, x in zip(self.grids, inputs)])


@dataclass
class GridResult:
    learning_rates: list[float]  # per 256 images, the same for every token choice
    val_top1: list[float]  # every classifier, choice-major: choices[0] x learning_rates, then choices[1] ...
    holdout_top1: list[float] | None
    selected_lr: float
    selected_top1: float
    selection: str
    recipe_lr_top1: float  # the recipe's own classifier (its lr, its token choice)
    epochs: int
    batch_size: int
    choices: list[list] = field(default_factory=list)  # (n_last_blocks, avgpool) per classifier group; [] for CNNs
    selected_choice: list | None = None
    history: list[dict] = field(default_factory=list)


Batches = Callable[[int], Iterable[tuple[list[torch.Tensor], torch.Tensor]]]  # epoch -> (inputs per choice, labels)


def _accuracy(model: HeadGrid, inputs: list[torch.Tensor], y: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        correct = sum((model([x[i:i + batch] for x in inputs]).argmax(-1) == y[i:i + batch]).sum(-1)
                      for i in range(0, len(y), batch))
    return correct.float() / len(y)


def train_heads(batches: Batches, steps_per_epoch: int, dims: list[int], num_classes: int, recipe: Recipe,
                lrs: list[float], epochs: int, batch: int, device) -> tuple[HeadGrid, list[dict]]:
    """Train a classifier per (token choice, lr) together: one pass over ``batches(epoch)`` per epoch, every
    classifier on the same batch; SGD momentum 0.9, no weight decay, lr x batch/256, the recipe's schedule."""
    model = HeadGrid(dims, num_classes, len(lrs), recipe.bn_head).to(device)
    scale = batch / 256  # linear scaling rule of every source
    groups = [{"params": head.parameters(), "lr": lr * scale} for grid in model.grids for head, lr in zip(grid.heads, lrs)]
    optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=0)
    if recipe.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=0)
    elif recipe.schedule == "cosine-iter":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * max(1, steps_per_epoch), eta_min=0)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), gamma=0.1)
    n_heads = len(dims) * len(lrs)
    history = []
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for inputs, y in batches(epoch):
            if recipe.bn_head and len(y) < 2:
                continue  # BatchNorm needs two samples; the sources drop nothing, a one-sample tail is rare
            logits = model([x.to(device) for x in inputs])  # heads x B x C
            y = y.to(device)
            loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(n_heads), reduction="sum") / len(y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            if recipe.schedule == "cosine-iter":
                scheduler.step()
        if recipe.schedule != "cosine-iter":
            scheduler.step()
        history.append({"epoch": epoch, "loss_sum_over_grid": total})
    return model, history


def holdout_split(labels: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """True for the training images kept in training; ``fraction`` of each class (at least one, when it has two or
    more) held out."""
    if not 0 < fraction < 1:
        raise UserFacingError(f"holdout fraction must be in (0, 1), got {fraction}")
    keep = torch.ones(len(labels), dtype=torch.bool)
    for c in labels.unique():
        members = torch.nonzero(labels == c).flatten()
        n_hold = max(1, int(round(fraction * len(members)))) if len(members) > 1 else 0
        keep[members[torch.randperm(len(members), generator=gen)[:n_hold]]] = False
    return keep


def grid_result(model: HeadGrid, val_inputs: list[torch.Tensor], val_y: torch.Tensor, hold: tuple | None,
                recipe: Recipe, choices: list, lrs: list[float], selection: str, epochs: int, batch: int,
                history: list[dict], device) -> GridResult:
    """Every classifier's top-1 and the one ``selection`` picks (ties: the first, the recipe's choice and smallest lr)."""
    val_acc = _accuracy(model, [x.to(device) for x in val_inputs], val_y.to(device)).cpu()
    hold_acc = _accuracy(model, [x.to(device) for x in hold[0]], hold[1].to(device)).cpu() if hold else None
    chooser = val_acc if selection == "val" else hold_acc
    best = int(torch.argmax(chooser))
    own = lrs.index(recipe.lr)  # choice 0 is the recipe's own
    return GridResult(learning_rates=lrs, val_top1=val_acc.tolist(), holdout_top1=None if hold_acc is None else hold_acc.tolist(),
                      selected_lr=lrs[best % len(lrs)], selected_top1=float(val_acc[best]), selection=selection,
                      recipe_lr_top1=float(val_acc[own]), epochs=epochs, batch_size=batch,
                      choices=[list(c) for c in choices], selected_choice=list(choices[best // len(lrs)]) if choices else None,
                      history=history)


def _check_selection(selection: str) -> None:
    if selection not in SELECTION_RULES:
        raise UserFacingError(f"unknown selection rule {selection!r}; choose {' or '.join(SELECTION_RULES)}")


def _lrs(recipe: Recipe, learning_rates: list[float] | None) -> list[float]:
    grid = learning_rates if learning_rates is not None else (recipe.lr_grid or LR_GRID)
    return sorted(set(grid) | {recipe.lr})


def train_grid(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, num_classes: int,
               recipe: Recipe, learning_rates: list[float] | None = None, epochs: int | None = None,
               batch_size: int | None = None, selection: str = "val", holdout_fraction: float = 0.1, seed: int = 0,
               device: str | torch.device = "cpu") -> GridResult:
    """One classifier per learning rate (per 256 images; the recipe's lr added) over fixed inputs (the cached
    protocol), trained together, one pass per epoch, one picked by ``selection`` (``val`` or ``holdout``)."""
    _check_selection(selection)
    lrs = _lrs(recipe, learning_rates)
    epochs = epochs or recipe.epochs
    batch = batch_size or recipe.batch_size
    gen = torch.Generator().manual_seed(seed)
    hold = None
    if selection == "holdout":
        keep = holdout_split(train_y, holdout_fraction, gen)
        hold = ([train_x[~keep]], train_y[~keep])
        train_x, train_y = train_x[keep], train_y[keep]
    train_x, train_y = train_x.to(device), train_y.to(device)

    def batches(_epoch):
        order = torch.randperm(len(train_x), generator=gen).to(device)
        for i in range(0, len(order), batch):
            yield [train_x[order[i:i + batch]]], train_y[order[i:i + batch]]

    steps = -(-len(train_x) // batch)
    model, history = train_heads(batches, steps, [train_x.shape[1]], num_classes, recipe, lrs, epochs, batch, device)
    return grid_result(model, [val_x], val_y, hold, recipe, [], lrs, selection, epochs, batch, history, device)


class _Augmented(torch.utils.data.Dataset):
    def __init__(self, source, indices: list[int], transform):
        self.source, self.indices, self.transform = source, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.source.load(self.indices[i])
        return self.transform(image), label


def augmented_batches(backbone, source, indices: list[int], recipe: Recipe, choices: list, resolution: int, batch: int,
                      device, seed: int, num_workers: int = 0) -> Batches:
    """Per epoch, fresh augmented views of the training images (:func:`train_transform`, seeded by ``seed`` and the
    epoch), shuffled, encoded once per batch; each batch's inputs for every token choice."""
    dataset = _Augmented(source, indices, train_transform(resolution, recipe.train_interpolation))

    def batches(epoch: int):
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, generator=gen, num_workers=num_workers)
        torch.manual_seed(int(torch.randint(2 ** 31, (1,), generator=gen)))  # the crops of the main process
        for images, labels in loader:
            feats = probe_features(backbone, images.to(device))
            yield [linear_input(feats, recipe, c) for c in choices or [None]], labels

    return batches


SELECTION_RULES = {
    "val": "the classifier (learning rate, token choice) with the highest top-1 on the validation split after the last "
           "epoch (DINOv2 linear.py's rule)",
    "holdout": "the classifier with the highest top-1 on a class-balanced held-out part of the training split (centre "
               "crops) after the last epoch",
}


def protocol_name(protocol: str, recipe: str) -> str:
    """``linear-<recipe>`` for the sources' augmented protocol, ``linear-cached-centre-crop`` for the cached one."""
    return f"linear-{recipe}" if protocol == "augmented" else f"linear-{protocol}"


def conditions(protocol: str, recipe: Recipe, lrs: list[float], epochs: int, batch: int, selection: str, resolution: int,
               pos_resample: str | None, choices: list) -> dict:
    """What the number ran under, for the report (``conditions`` in the metrics JSON)."""
    if protocol == "augmented":
        augmentation = (f"RandomResizedCrop({resolution}, scale 0.08-1, {recipe.train_interpolation}) + horizontal flip, "
                        "fresh every epoch")
    else:
        augmentation = "none: centre-crop features of the training images, encoded once and cached"
    return {
        "task": "linear_probe",
        "protocol": protocol_name(protocol, recipe.name),
        "recipe": recipe.name,
        "recipe_source": recipe.source,
        "augmentation": augmentation,
        "val_transform": f"resize short side {int(round(resolution * 256 / 224))} ({recipe.val_interpolation}), "
                         f"centre crop {resolution}",
        "resolution": resolution,
        "lr_grid": lrs,
        "token_choices": [list(c) for c in choices] or None,  # (n_last_blocks, avgpool) per classifier group
        "head": "BatchNorm1d(affine=False) + linear" if recipe.bn_head else "linear",
        "epochs": epochs,
        "batch_size": batch,
        "schedule": recipe.schedule + (f" x0.1 at {list(recipe.milestones)}" if recipe.schedule == "step" else ""),
        "selection": selection,
        "selection_rule": SELECTION_RULES[selection],
        "selected_epoch": "last",
        "pos_resample": pos_resample,
    }


def run(checkpoint: str, data_root: str, out: str | None = None, recipe: str | None = None, resolution: int = 224,
        cache_dir: str | None = None, learning_rates: list[float] | None = None, epochs: int | None = None,
        batch_size: int | None = None, selection: str = "val", holdout_fraction: float = 0.1, arch: str | None = None,
        which: str | None = None, trust_source: bool = False, device: str | None = None, num_workers: int = 0,
        seed: int = 0, progress: bool = True, feature_cache: FeatureCache | None = None, protocol: str = "augmented",
        pos_resample: str = "auto") -> dict:
    """``bam-dense eval linear``: the grid trained under ``protocol`` (``augmented``, the sources'; or
    ``cached-centre-crop``), the metrics JSON with its ``conditions``. Validation (and holdout) features are centre
    crops through the cache (``feature_cache`` shares them with other protocols of the same checkpoint)."""
    from bam_dense.convert.sources import resolve_pos_resample
    from bam_dense.encoders import load_backbone_and_format
    from bam_dense.models.backbones import describe
    from bam_dense.models.pos_embed import pos_rule_of, set_pos_rule

    if protocol not in PROTOCOLS:
        raise UserFacingError(f"unknown linear-probe protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    _check_selection(selection)
    backbone, source_format = load_backbone_and_format(checkpoint, arch, which, trust_source)
    if pos_rule_of(backbone) not in (None, "rope"):
        try:
            set_pos_rule(backbone, resolve_pos_resample(pos_resample, pos_rule_of(backbone)))
        except ValueError as err:
            raise UserFacingError(f"--pos-resample {pos_resample}: {err}") from None
    name = recipe or default_recipe(backbone, source_format)
    if name not in RECIPES:
        raise UserFacingError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    chosen = RECIPES[name]
    kind = _kind(backbone)
    if chosen.family != kind:
        raise UserFacingError(f"recipe {name} is for {chosen.family} encoders, {checkpoint} is a {kind}")
    choices = list(chosen.choices) if kind == "vit" else []
    deepest = max((n for n, _ in choices), default=0)
    depth = describe(backbone).stage_count  # blocks of a ViT (a CNN's recipe reads none: deepest 0)
    if deepest > depth:  # before hours of extraction, not after
        raise UserFacingError(f"recipe {name} reads {deepest} blocks, the encoder has {depth}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = backbone.to(dev).eval()
    lrs = _lrs(chosen, learning_rates)
    n_epochs = epochs or chosen.epochs
    batch = batch_size or chosen.batch_size
    train, val = _split_sources(Path(data_root))
    cache = feature_cache if feature_cache is not None else FeatureCache(checkpoint, cache_dir)
    extract = dict(device=dev, num_workers=num_workers, progress=progress)
    val_feats = split_features(backbone, cache, val, list(range(len(val))), resolution, chosen.val_interpolation, **extract)
    from_cache = cache.last_source
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor(train.targets)
    keep = holdout_split(labels, holdout_fraction, gen) if selection == "holdout" else torch.ones(len(labels), dtype=torch.bool)
    kept, held = torch.nonzero(keep).flatten().tolist(), torch.nonzero(~keep).flatten().tolist()
    inputs = lambda feats: [linear_input(feats, chosen, c) for c in choices or [None]]  # noqa: E731
    hold = None
    if held:
        hold_feats = split_features(backbone, cache, train, held, resolution, chosen.val_interpolation, **extract)
        hold = (inputs(hold_feats), labels[held])
    if protocol == "cached-centre-crop":
        train_feats = split_features(backbone, cache, train, kept, resolution, chosen.val_interpolation, **extract)
        from_cache = from_cache if cache.last_source else None
        train_inputs, train_y = inputs(train_feats), labels[kept]

        def batches(_epoch):
            order = torch.randperm(len(train_y), generator=gen)
            for i in range(0, len(order), batch):
                yield [x[order[i:i + batch]] for x in train_inputs], train_y[order[i:i + batch]]
    else:
        batches = augmented_batches(backbone, train, kept, chosen, choices, resolution, batch, dev, seed, num_workers)
    dims = [x.shape[1] for x in inputs(val_feats)]
    model, history = train_heads(batches, -(-len(kept) // batch), dims, len(train.classes), chosen, lrs, n_epochs, batch, dev)
    grid = grid_result(model, inputs(val_feats), torch.tensor(val.targets), hold, chosen, choices, lrs, selection, n_epochs,
                       batch, history, dev)
    record = {
        "task": "linear_probe",
        "protocol": protocol_name(protocol, name),
        "protocol_description": f"frozen linear probe, recipe {name}: {chosen.source}; {PROTOCOLS[protocol]}",
        "checkpoint": checkpoint,
        "source_format": source_format,
        "recipe": asdict(chosen),
        "resolution": resolution,
        "feature_dim": dims[0],
        "train_images": len(kept),
        "holdout_images": len(held),
        "val_images": len(val),
        "num_classes": len(train.classes),
        "features_from_cache": from_cache,
        "selection_rule": SELECTION_RULES[selection],
        "conditions": conditions(protocol, chosen, lrs, n_epochs, batch, selection, resolution, pos_rule_of(backbone), choices),
        "metrics": {"top1": 100 * grid.selected_top1, "top1_at_recipe_lr": 100 * grid.recipe_lr_top1},
        "grid": {k: v for k, v in asdict(grid).items() if k != "history"},
        "history": grid.history,
    }
    if out:
        from bam_dense.core.atomic import atomic_write_text

        atomic_write_text(Path(out), json.dumps(record, indent=1))
    return record


__all__ = ["LR_GRID", "PROTOCOLS", "RECIPES", "GridResult", "HeadGrid", "LinearGrid", "Recipe", "conditions",
           "default_recipe", "linear_input", "probe_features", "run", "train_grid", "train_heads"]
