"""In-context retrieval segmentation (Hummingbird; Balažević et al., NeurIPS 2023) on frozen dense features.

The protocol, as open-hummingbird-eval (vpariza/open-hummingbird-eval, v2.0.0) implements it and CrIBo and
NeCo report it:

1. **Memory bank.** Every training image, resized to ``input_size`` squared (with the published augmentation:
   colour jitter, then a random resized crop of scale 0.5..2 and ratio 3/4..4/3, for each of
   ``augmentation_epochs`` passes), gives one L2-normalised feature per patch and, as its label, the
   fraction of the patch's pixels of each class (VOC's void pixels, 255, count as background there). With
   ``memory_size`` set, each image contributes ``memory_size // (images * epochs)`` patches: those whose
   classes are rarest in the image (score: the sum over the patch's classes of the number of patches of
   the image holding that class, multiplied by uniform noise; the smallest scores are kept).
2. **Retrieval.** Each validation patch (image resized to ``input_size`` squared, no augmentation) fetches its
   ``k`` nearest memory features by inner product (exact search: faiss ``IndexFlatIP``; on CUDA, faiss's GPU
   index when the installed faiss has one, else a chunked matrix product on the GPU, see
   :class:`NeighbourIndex`). Its label is ``softmax(<q, k_i> / temperature) @ labels_i``.
3. **Prediction.** The patch-level label distributions are upsampled bilinearly to ``input_size``, argmax;
   the ground truth is resized (nearest) to the same size, and mIoU is computed as mmseg's ``IoUMetric``
   (:class:`~bam_dense.eval.seg_metrics.SegmentationAreas`).

Datasets, in their real on-disk layouts:
  voc     ``VOCdevkit/VOC2012``: memory from ``ImageSets/Segmentation/trainaug.txt`` with
          ``SegmentationClassAug``; validation ``val.txt`` with ``SegmentationClass``; 21 classes, 255 ignored.
  ade20k  ``ADEChallengeData2016``: memory from ``images/training`` + ``annotations/training`` (151 labels,
          0 = "other" kept as a label as the reference does); validation ``images/validation``, scored on
          classes 1..150 with 0 ignored (mmseg's ``reduce_zero_label``).

Where the reference differs, this module follows mmseg (documented in docs/protocols.md): the reference
normalises with std (0.229, 0.224, 0.255) (a typo for 0.225), matches predicted to true classes with the
Hungarian algorithm before scoring, and averages IoU over every class including ones absent from the
split (and, on ADE20K, the ignored class 0). With the ImageNet std and identity matching, the numbers are
those of :func:`retrieval_miou`; ``tests/test_retrieval.py`` checks the memory bank, the retrieved labels
and the score against a recorded run of the reference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bam_dense.core.errors import UserFacingError
from bam_dense.eval.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureCache,
    read_square,
    square_dense_features,
)
from bam_dense.eval.seg_metrics import SegmentationAreas

# Published defaults (Hummingbird paper, open-hummingbird-eval README's table): 1024 * 10^4 memory
# patches, 2 augmentation passes, 30 neighbours, temperature 0.02, 512 px input for /16 (504 for /14).
MEMORY_SIZE = 1024 * 10**4
AUGMENTATION_EPOCHS = 2
NEIGHBOURS = 30
TEMPERATURE = 0.02
INPUT_SIZE = 512


@dataclass(frozen=True)
class RetrievalDataset:
    """Image/label pairs of a dataset in its real layout, and how its labels are stored and scored."""

    name: str
    root: Path
    train: list[tuple[Path, Path]]
    val: list[tuple[Path, Path]]
    label_classes: int  # labels of the memory bank
    void_to: int | None  # memory bank: void pixels (255) become this label (VOC: background)
    eval_offset: int  # scored class = label - eval_offset (ADE20K: 1, reduce_zero_label)
    eval_classes: int
    eval_ignore: int  # ground-truth label left out of the score


def _pairs(names: Sequence[str], img_dir: Path, ann_dir: Path, listing: Path) -> list[tuple[Path, Path]]:
    pairs = [(img_dir / f"{n}.jpg", ann_dir / f"{n}.png") for n in names]
    for img, ann in pairs:
        if not img.is_file() or not ann.is_file():
            raise UserFacingError(f"{listing} lists {img.stem}, but {img if not img.is_file() else ann} does not exist")
    return pairs


def _find(root: Path, marker: str, nested: Sequence[str]) -> Path:
    for candidate in [root, *(root / n for n in nested)]:
        if (candidate / marker).exists():
            return candidate
    raise UserFacingError(f"{root} is not in the expected layout: no {marker} under it or under {', '.join(nested)}")


def open_dataset(name: str, root: str | Path, train_list: str | Path | None = None) -> RetrievalDataset:
    """The ``voc`` or ``ade20k`` folder at ``root`` (or a parent of it); ``train_list``: a file of image ids
    restricting the memory bank (e.g. open-hummingbird-eval's ``file_sets`` for its low-data rows)."""
    root = Path(root)
    if name == "voc":
        base = _find(root, "ImageSets/Segmentation", ["VOC2012", "VOCdevkit/VOC2012"])
        sets = base / "ImageSets" / "Segmentation"
        listing = Path(train_list) if train_list else sets / "trainaug.txt"
        if not listing.is_file():
            raise UserFacingError(f"{listing} does not exist (VOC's train_aug list: mmseg's tools/dataset_converters/voc_aug.py writes it)")
        train_names = [s.strip() for s in listing.read_text().splitlines() if s.strip()]
        val_listing = sets / "val.txt"
        if not val_listing.is_file():
            raise UserFacingError(f"{val_listing} does not exist")
        val_names = [s.strip() for s in val_listing.read_text().splitlines() if s.strip()]
        return RetrievalDataset(
            "voc", base, _pairs(train_names, base / "JPEGImages", base / "SegmentationClassAug", listing),
            _pairs(val_names, base / "JPEGImages", base / "SegmentationClass", val_listing),
            label_classes=21, void_to=0, eval_offset=0, eval_classes=21, eval_ignore=255)
    if name == "ade20k":
        base = _find(root, "images/training", ["ADEChallengeData2016"])
        split_pairs = {}
        for split in ("training", "validation"):
            img_dir, ann_dir = base / "images" / split, base / "annotations" / split
            if split == "training" and train_list:
                names = [s.strip() for s in Path(train_list).read_text().splitlines() if s.strip()]
                split_pairs[split] = _pairs(names, img_dir, ann_dir, Path(train_list))
                continue
            files = sorted(img_dir.glob("*.jpg"))
            if not files:
                raise UserFacingError(f"no images in {img_dir}")
            split_pairs[split] = _pairs([f.stem for f in files], img_dir, ann_dir, img_dir)
        return RetrievalDataset("ade20k", base, split_pairs["training"], split_pairs["validation"],
                                label_classes=151, void_to=None, eval_offset=1, eval_classes=150, eval_ignore=0)
    raise UserFacingError(f"unknown dataset {name!r}; choose voc or ade20k")


# --------------------------------------------------------------------------------------------- images


def _normalise(image: torch.Tensor) -> torch.Tensor:
    return (image - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def read_label(ann_path: Path, size: int) -> torch.Tensor:
    """Label map resized with torch's nearest to ``size`` squared (the reference resizes label tensors with
    ``F.resize(NEAREST)``)."""
    with Image.open(ann_path) as ann:
        label = torch.from_numpy(np.asarray(ann).astype(np.int64))
    if label.ndim != 2:
        raise UserFacingError(f"{ann_path}: a label map must be a single-channel (indexed) PNG, got shape {tuple(label.shape)}")
    return F.interpolate(label[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()


def read_pair(img_path: Path, ann_path: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation pair: image resized (bilinear, antialiased) to ``size`` squared and normalised
    (:func:`~bam_dense.eval.features.read_square`), label by :func:`read_label`."""
    return read_square(img_path, size), read_label(ann_path, size)


def augmented_pair(img_path: Path, ann_path: Path, size: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pair with the reference's augmentation: brightness, contrast, saturation, hue jitter of 0.1,
    each applied with probability 0.5, then a random resized crop (scale 0.5..2, ratio 3/4..4/3) to
    ``size`` squared (bilinear antialiased image, nearest label)."""
    import torchvision.transforms.functional as TF

    with Image.open(img_path) as img:
        image = img.convert("RGB")
    with Image.open(ann_path) as ann:
        label = torch.from_numpy(np.asarray(ann).astype(np.int64))

    def draw() -> float:
        return float(torch.rand((), generator=generator))

    for adjust in (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation):
        if draw() < 0.5:
            image = adjust(image, 1 + (2 * draw() - 1) * 0.1)
    if draw() < 0.5:
        image = TF.adjust_hue(image, (2 * draw() - 1) * 0.1)
    tensor = _normalise(TF.to_tensor(image))
    i, j, h, w = _crop_params(tensor.shape[1], tensor.shape[2], (0.5, 2.0), (3 / 4, 4 / 3), draw)
    tensor = TF.resized_crop(tensor, i, j, h, w, [size, size], antialias=True)
    label = TF.resized_crop(label[None].float(), i, j, h, w, [size, size],
                            interpolation=TF.InterpolationMode.NEAREST)[0].long()
    return tensor, label


def _crop_params(height: int, width: int, scale, ratio, draw: Callable[[], float]) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` (10 tries, then a central crop), drawing from ``draw``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * (scale[0] + draw() * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + draw() * (log_ratio[1] - log_ratio[0]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(draw() * (height - h + 1))
            j = int(draw() * (width - w + 1))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# --------------------------------------------------------------------------------------------- memory bank


def patch_label_fractions(labels: torch.Tensor, patch: int, num_classes: int) -> torch.Tensor:
    """``B x H x W`` integer labels -> ``B x (H/p * W/p) x C``: per patch (row-major), the fraction of its
    pixels of each class."""
    b, h, w = labels.shape
    cells = labels.reshape(b, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4).reshape(b, -1, patch * patch)
    return F.one_hot(cells, num_classes).float().mean(dim=2)


def rare_class_patches(fractions: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    """Indices (``B x keep``) of the patches to store: per image, the smallest of ``score * u``, where a
    patch's score is the sum, over the classes present in it, of the number of the image's patches that
    hold the class, and ``u`` is uniform noise drawn per non-empty patch in order (empty patches: 1e6)."""
    presence = fractions > 0  # B x N x C
    class_patches = presence.sum(dim=1).float()  # B x C
    scores = torch.einsum("bnc,bc->bn", presence.float(), class_patches)
    nonempty = presence.any(dim=2)
    scores = scores.masked_fill(~nonempty, 1e6)
    for b in range(scores.shape[0]):
        noise = torch.rand(int(nonempty[b].sum()), generator=generator)
        scores[b, nonempty[b]] *= noise
    return torch.topk(scores, keep, dim=1, largest=False).indices


@dataclass
class MemoryBank:
    features: torch.Tensor  # M x D, L2-normalised, float32
    labels: torch.Tensor  # M x C, per-patch class fractions


def build_memory(extract: Callable[[torch.Tensor], torch.Tensor], batches, patch: int, num_classes: int,
                 per_image: int | None, generator: torch.Generator, void_to: int | None = None,
                 capacity: int | None = None) -> MemoryBank:
    """Memory bank from ``batches`` of (normalised images ``B x 3 x S x S``, labels ``B x S x S``).

    ``extract`` maps images to ``B x D x h x w`` features; ``per_image`` patches per image (all with None).
    With ``capacity`` (rows), the bank is allocated once instead of concatenated (the published bank of a
    ViT-B is 31 GB: concatenation would hold it twice)."""
    feats, labels = [], []
    bank: MemoryBank | None = None
    filled = 0
    for images, lab in batches:
        if void_to is not None:
            lab = torch.where(lab == 255, torch.full_like(lab, void_to), lab)
        if int(lab.max()) >= num_classes or int(lab.min()) < 0:
            raise UserFacingError(f"label values {int(lab.min())}..{int(lab.max())} outside 0..{num_classes - 1}")
        dense = extract(images).float().cpu()
        b, d, h, w = dense.shape
        if (h * patch, w * patch) != tuple(lab.shape[-2:]):
            raise UserFacingError(f"feature grid {h}x{w} of patch {patch} does not tile the {tuple(lab.shape[-2:])} input")
        tokens = dense.flatten(2).transpose(1, 2)  # B x N x D
        tokens = tokens / tokens.norm(dim=2, keepdim=True)  # no epsilon, as the reference
        fractions = patch_label_fractions(lab, patch, num_classes)
        if per_image is not None:
            idx = rare_class_patches(fractions, min(per_image, h * w), generator)
            tokens = tokens.gather(1, idx[..., None].expand(-1, -1, d))
            fractions = fractions.gather(1, idx[..., None].expand(-1, -1, num_classes))
        tokens, fractions = tokens.reshape(-1, d), fractions.reshape(-1, num_classes)
        if capacity is None:
            feats.append(tokens)
            labels.append(fractions)
            continue
        if bank is None:
            bank = MemoryBank(torch.empty(capacity, d), torch.empty(capacity, num_classes))
        if filled + len(tokens) > capacity:
            raise ValueError(f"memory bank capacity {capacity} exceeded")
        bank.features[filled:filled + len(tokens)] = tokens
        bank.labels[filled:filled + len(tokens)] = fractions
        filled += len(tokens)
    if capacity is not None:
        if bank is None:
            raise UserFacingError("the memory bank is empty: no training images")
        return MemoryBank(bank.features[:filled], bank.labels[:filled])
    if not feats:
        raise UserFacingError("the memory bank is empty: no training images")
    return MemoryBank(torch.cat(feats).contiguous(), torch.cat(labels).contiguous())


# --------------------------------------------------------------------------------------------- retrieval


class NeighbourIndex:
    """Exact inner-product search over the memory features.

    ``backend``: ``faiss`` (``IndexFlatIP`` on the CPU), ``faiss-gpu`` (the same index on every GPU faiss sees,
    used on CUDA when the installed faiss has GPU support) or ``torch`` (a chunked matrix product and top-k on
    ``device``, used on CUDA with the CPU-only ``faiss-cpu`` wheel). ``auto`` picks in that order of preference
    for the device."""

    def __init__(self, features: torch.Tensor, device: str | torch.device = "cpu", backend: str = "auto"):
        import faiss

        device = torch.device(device)
        faiss_gpus = hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0
        if backend == "auto":
            backend = ("faiss-gpu" if faiss_gpus else "torch") if device.type == "cuda" else "faiss"
        if backend not in ("faiss", "faiss-gpu", "torch"):
            raise UserFacingError(f"unknown nearest-neighbour backend {backend!r}; choose faiss, faiss-gpu or torch")
        if backend == "faiss-gpu" and not faiss_gpus:
            raise UserFacingError("faiss-gpu needs a faiss build with GPU support and a visible GPU (faiss-cpu has none)")
        self.backend, self.device = backend, device
        if backend == "torch":
            self.memory = features.to(device)
            return
        index = faiss.IndexFlatIP(features.shape[1])
        if backend == "faiss-gpu":
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(np.ascontiguousarray(features.numpy(), dtype=np.float32))
        self.index = index

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Indices ``Q x k`` of the ``k`` largest inner products, largest first."""
        if self.backend == "torch":
            step = max(1, 2**29 // max(1, self.memory.shape[0]))  # a 2 GiB similarity block at most
            out = [(queries[i:i + step].to(self.device) @ self.memory.T).topk(k, dim=1).indices.cpu()
                   for i in range(0, len(queries), step)]
            return torch.cat(out)
        _, idx = self.index.search(np.ascontiguousarray(queries.numpy(), dtype=np.float32), k)
        return torch.from_numpy(idx).long()


def attend(queries: torch.Tensor, memory: MemoryBank, neighbours: torch.Tensor, temperature: float) -> torch.Tensor:
    """Label distributions ``Q x C``: softmax over the neighbours of ``<q/|q|, k/|k|> / temperature``,
    weighting the neighbours' labels (the reference's cross-attention)."""
    q = F.normalize(queries, dim=-1)
    keys = F.normalize(memory.features[neighbours], dim=-1)  # Q x k x D
    attn = torch.softmax(torch.einsum("qd,qkd->qk", q, keys) / temperature, dim=-1)
    return torch.einsum("qk,qkc->qc", attn, memory.labels[neighbours])


def retrieve_labels(dense: torch.Tensor, memory: MemoryBank, index: NeighbourIndex, k: int, temperature: float,
                    chunk: int = 1024) -> torch.Tensor:
    """``B x D x h x w`` validation features -> ``B x C x h x w`` label distributions."""
    b, d, h, w = dense.shape
    tokens = dense.flatten(2).transpose(1, 2).reshape(-1, d).float().cpu()
    k = min(k, memory.features.shape[0])
    out = torch.cat([attend(tokens[i:i + chunk], memory, index.search(tokens[i:i + chunk], k), temperature)
                     for i in range(0, len(tokens), chunk)])
    return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def predict(soft: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling of the patch label distributions to ``size`` squared, argmax."""
    return F.interpolate(soft, size=(size, size), mode="bilinear", align_corners=False).argmax(dim=1)


def score_labels(pred: torch.Tensor, label: torch.Tensor, areas: SegmentationAreas, dataset: RetrievalDataset) -> None:
    """Map stored labels to scored classes (ADE20K: 0 ignored, 1..150 -> 0..149) and accumulate."""
    if dataset.eval_offset:
        label = torch.where(label == dataset.eval_ignore, torch.full_like(label, 255), label - dataset.eval_offset)
        pred = torch.where(pred == dataset.eval_ignore, torch.full_like(pred, -1), pred - dataset.eval_offset)
    areas.update(pred, label)


# --------------------------------------------------------------------------------------------- evaluation


@dataclass
class RetrievalParams:
    input_size: int = INPUT_SIZE
    memory_size: int | None = MEMORY_SIZE
    augmentation_epochs: int = AUGMENTATION_EPOCHS
    augment: bool = True
    neighbours: int = NEIGHBOURS
    temperature: float = TEMPERATURE
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("input_size", "augmentation_epochs", "neighbours", "batch_size"):
            if getattr(self, name) < 1:
                raise UserFacingError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.memory_size is not None and self.memory_size < 1:
            raise UserFacingError(f"memory_size must be positive (or None for every patch), got {self.memory_size}")
        if not self.temperature > 0:
            raise UserFacingError(f"temperature must be positive, got {self.temperature}")


@dataclass
class RetrievalResult:
    miou: float
    per_class_iou: list[float | None]
    memory_patches: int
    per_image_patches: int | None
    params: dict = field(default_factory=dict)
    index: str = "faiss"

    def as_dict(self) -> dict:
        return asdict(self)


def _batches(pairs, size: int, batch: int, loader: Callable):
    for i in range(0, len(pairs), batch):
        items = [loader(img, ann) for img, ann in pairs[i:i + batch]]
        yield torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def _label_batches(pairs, feats: torch.Tensor, size: int, batch: int):
    for i in range(0, len(pairs), batch):
        yield feats[i:i + batch], torch.stack([read_label(ann, size) for _, ann in pairs[i:i + batch]])


def retrieval_miou(extractor, dataset: RetrievalDataset, params: RetrievalParams | None = None,
                   index_backend: str = "auto", progress: bool = False,
                   feature_cache: FeatureCache | None = None) -> RetrievalResult:
    """Hummingbird mIoU (in [0, 1]) of ``extractor`` (``B x 3 x S x S`` -> ``B x D x S/p x S/p``, with a
    ``patch`` attribute) on ``dataset``. The validation split, and the training split without augmentation,
    go through ``feature_cache`` (shared with the other protocols of the same checkpoint); augmented
    memory-bank views are extracted afresh."""
    from tqdm import tqdm

    p = params or RetrievalParams()
    cache = feature_cache if feature_cache is not None else FeatureCache(None)
    patch = int(extractor.patch)
    if p.input_size % patch:
        raise UserFacingError(f"input size {p.input_size} is not a multiple of the patch size {patch} "
                              f"(e.g. {p.input_size // patch * patch}; the published /14 runs use 504)")
    epochs = p.augmentation_epochs if p.augment else 1
    n_train = len(dataset.train)
    per_image = None
    if p.memory_size is not None:
        per_image = min(max(1, p.memory_size // (n_train * epochs)), (p.input_size // patch) ** 2)
    generator = torch.Generator().manual_seed(p.seed)

    if p.augment:
        def passes():
            for _ in range(epochs):
                yield from tqdm(_batches(dataset.train, p.input_size, p.batch_size,
                                         lambda img, ann: augmented_pair(img, ann, p.input_size, generator)),
                                desc="memory bank", total=math.ceil(n_train / p.batch_size), disable=not progress,
                                leave=False)
        extract, batches = extractor, passes()
    else:  # the plain training images: shared features
        train_files = [img for img, _ in dataset.train]
        train_feats = square_dense_features(extractor, train_files, p.input_size, cache, p.batch_size)
        extract, batches = (lambda feats: feats), _label_batches(dataset.train, train_feats, p.input_size, p.batch_size)

    grid = (p.input_size // patch) ** 2
    capacity = n_train * epochs * (per_image or grid)
    memory = build_memory(extract, batches, patch, dataset.label_classes, per_image, generator, dataset.void_to, capacity)
    index = NeighbourIndex(memory.features, getattr(extractor, "device", "cpu"), index_backend)
    areas = SegmentationAreas(dataset.eval_classes, 255)
    val_feats = square_dense_features(extractor, [img for img, _ in dataset.val], p.input_size, cache, p.batch_size)
    for feats, labels in tqdm(_label_batches(dataset.val, val_feats, p.input_size, p.batch_size), desc="validation",
                              total=math.ceil(len(dataset.val) / p.batch_size), disable=not progress, leave=False):
        soft = retrieve_labels(feats, memory, index, p.neighbours, p.temperature)
        score_labels(predict(soft, p.input_size), labels, areas, dataset)
    iou = areas.iou()
    return RetrievalResult(miou=areas.miou(), per_class_iou=[None if np.isnan(v) else float(v) for v in iou],
                           memory_patches=int(memory.features.shape[0]), per_image_patches=per_image,
                           params=asdict(p), index=index.backend)


def run(checkpoint: str, dataset: str, data_root: str, out: str | None = None, params: RetrievalParams | None = None,
        arch: str | None = None, which: str | None = None, trust_source: bool = False, device: str | None = None,
        pos_resample: str = "auto", train_list: str | None = None, index_backend: str = "auto",
        progress: bool = True, cache_dir: str | None = None, feature_cache: FeatureCache | None = None) -> dict:
    """``bam-dense eval retrieval``: load the encoder (a bam-dense checkpoint or any public layout
    :mod:`bam_dense.convert.sources` reads), evaluate, write the metrics JSON to ``out``. Features of the plain
    splits are shared through ``feature_cache`` (or a cache in ``cache_dir``) with the checkpoint's other protocols."""
    from bam_dense.encoders import load_extractor

    params = params or RetrievalParams()
    data = open_dataset(dataset, data_root, train_list)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extractor = load_extractor(checkpoint, arch, which, trust_source, dev, pos_resample=pos_resample)
    cache = feature_cache if feature_cache is not None else FeatureCache(checkpoint, cache_dir)
    result = retrieval_miou(extractor, data, params, index_backend, progress=progress, feature_cache=cache)
    record = {
        "task": "retrieval_segmentation",
        "protocol": "in-context retrieval (Hummingbird, open-hummingbird-eval algorithm)",
        "checkpoint": checkpoint,
        "dataset": dataset,
        "data_root": str(data.root),
        "resolution": params.input_size,
        "patch_size": int(extractor.patch),
        "train_images": len(data.train),
        "val_images": len(data.val),
        "metrics": {"mIoU": 100 * result.miou},
        **{k: v for k, v in result.as_dict().items() if k != "miou"},
    }
    if getattr(extractor, "kind", None) == "vit":
        record["pos_resample"] = extractor.pos_resample
    if out:
        from bam_dense.core.atomic import atomic_write_text

        atomic_write_text(out, json.dumps(record, indent=1))
    return record


__all__ = ["MemoryBank", "NeighbourIndex", "RetrievalParams", "RetrievalResult", "attend", "build_memory",
           "open_dataset", "patch_label_fractions", "predict", "rare_class_patches", "retrieval_miou",
           "retrieve_labels", "run"]
