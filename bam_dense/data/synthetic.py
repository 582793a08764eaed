"""Procedural scenes with learnable structure, written in the on-disk layouts of the real datasets.

A scene is a textured two-region background ("stuff") with several objects ("things") drawn over it in
depth order. Each object class is recognisable by its shape and its texture, and (``colors="class"``) by
its colour; with ``colors="instance"`` every object gets its own random colour, so that, as in real data,
colour says nothing about the class and a dense probe on raw pixels cannot tell the classes apart.
Objects vary in position, scale, rotation and aspect, and later objects occlude earlier ones. Textures live in the
object's own coordinates, so they move and rotate with it. Everything is a pure function of the seed:
the same seed writes byte-identical files.

Layouts (what the real consumers read):
  imagenet  train/<wnid>/<name>.JPEG, val/<wnid>/<name>.JPEG           torchvision ImageFolder
  ade20k    ADEChallengeData2016/{images,annotations}/{training,validation}   mmseg ADE20KDataset
  voc       VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,SegmentationClassAug,ImageSets/Segmentation}
  coco      {train2017,val2017}/*.jpg, annotations/instances_{train,val}2017.json   pycocotools / mmdet
  davis     JPEGImages/480p/<seq>/*.jpg, Annotations/480p/<seq>/*.png, ImageSets/2017/{train,val}.txt
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bam_dense.core.config import COLOR_MODES

# ---------------------------------------------------------------------------------------------
# Object and background classes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectClass:
    name: str
    shape: str
    color: tuple[int, int, int]
    texture: str


OBJECT_CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("red_disc", "circle", (220, 40, 40), "solid"),
    ObjectClass("blue_square", "square", (40, 70, 220), "stripes"),
    ObjectClass("green_triangle", "triangle", (40, 190, 60), "checker"),
    ObjectClass("yellow_star", "star", (235, 215, 40), "dots"),
    ObjectClass("purple_ring", "ring", (150, 50, 200), "rings"),
    ObjectClass("orange_cross", "cross", (245, 140, 20), "stripes_v"),
    ObjectClass("cyan_diamond", "diamond", (30, 200, 210), "checker"),
    ObjectClass("pink_hexagon", "hexagon", (240, 120, 190), "dots"),
    ObjectClass("white_crescent", "crescent", (235, 235, 235), "gradient"),
    ObjectClass("brown_tee", "tee", (140, 90, 40), "solid"),
)

# Two background "stuff" classes per scene: an upper and a lower region split by a wavy horizon.
STUFF_CLASSES: tuple[str, ...] = ("sky", "wall", "floor", "grass")

# Palettes: VOC's bit-interleaved colour map (also what DAVIS annotations use).


def voc_palette(n: int = 256) -> list[int]:
    """The Pascal VOC / DAVIS colour map: label ``i`` gets the colour from interleaving its bits."""
    palette = []
    for label in range(n):
        r = g = b = 0
        c = label
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    class_index: int  # into OBJECT_CLASSES
    cx: float
    cy: float
    radius: float  # half extent in pixels
    angle: float  # radians
    aspect: float = 1.0  # horizontal stretch in the object frame
    color: tuple[int, int, int] | None = None  # None: the class colour


def _check_colors(colors: str) -> None:
    if colors not in COLOR_MODES:
        raise ValueError(f"colors must be one of {COLOR_MODES}, got {colors!r}")


def instance_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A random saturated colour (uniform hue), independent of the object's class."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.45, 0.95), rng.uniform(0.55, 1.0))
    return int(round(255 * r)), int(round(255 * g)), int(round(255 * b))


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = np.hypot(u, v)
    if shape == "circle":
        return r <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape == "triangle":
        return (v <= 0.75) & (v >= -1.0 + 1.75 * np.abs(u))  # apex up, base at v = 0.75
    if shape == "star":
        theta = np.arctan2(v, u)
        return r <= 0.55 + 0.42 * np.cos(5 * theta) ** 2
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if shape == "cross":
        return ((np.abs(u) <= 0.32) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 1.0))
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "hexagon":
        a, b = np.abs(u), np.abs(v)
        return (b <= 0.866) & (a * 0.866 + b * 0.5 <= 0.866)
    if shape == "crescent":
        return (r <= 1.0) & (np.hypot(u - 0.45, v) >= 0.75)
    if shape == "tee":
        return ((v <= -0.45) & (v >= -1.0) & (np.abs(u) <= 1.0)) | ((np.abs(u) <= 0.3) & (v <= 1.0) & (v >= -1.0))
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A pattern in [0, 1] in object coordinates."""
    if texture == "solid":
        return np.ones_like(u)
    if texture == "stripes":
        return (np.sin(u * 9.0) > 0).astype(np.float32)
    if texture == "stripes_v":
        return (np.sin(v * 9.0) > 0).astype(np.float32)
    if texture == "checker":
        return ((np.sin(u * 7.0) * np.sin(v * 7.0)) > 0).astype(np.float32)
    if texture == "dots":
        return ((np.sin(u * 10.0) + np.sin(v * 10.0)) < 1.0).astype(np.float32)
    if texture == "rings":
        return (np.sin(np.hypot(u, v) * 14.0) > 0).astype(np.float32)
    if texture == "gradient":
        return np.clip(0.5 + 0.5 * u, 0.0, 1.0)
    raise ValueError(f"unknown texture {texture!r}")


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """A two-region textured background; returns (float image HxWx3 in [0,255], region map 0/1, stuff ids)."""
    upper, lower = rng.choice(len(STUFF_CLASSES), size=2, replace=False)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = height * (0.35 + 0.3 * rng.random()) + height * 0.08 * np.sin(
        xx / width * 2 * math.pi * rng.uniform(0.5, 2.0) + rng.uniform(0, 2 * math.pi)
    )
    region = (yy >= horizon).astype(np.uint8)  # 0 upper, 1 lower
    image = np.zeros((height, width, 3), np.float32)
    for idx, stuff in ((0, upper), (1, lower)):
        base = rng.uniform(60, 170, size=3)
        freq = rng.uniform(0.05, 0.25)
        phase = rng.uniform(0, 2 * math.pi, size=2)
        pattern = 0.5 + 0.25 * np.sin(xx * freq + phase[0]) * np.cos(yy * freq * (0.5 + stuff * 0.3) + phase[1])
        pattern += 0.1 * (yy / height if stuff % 2 else xx / width)
        sel = region == idx
        image[sel] = base[None, :] * (0.6 + 0.6 * pattern[sel][:, None])
    image += rng.normal(0, 6.0, size=image.shape)
    return image, region, (int(upper), int(lower))


def render(
    rng: np.random.Generator,
    height: int,
    width: int,
    objects: list[ObjectSpec],
    background: tuple[np.ndarray, np.ndarray, tuple[int, int]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Draw ``objects`` in order (later ones occlude earlier ones).

    Returns the RGB image (uint8, HxWx3), the instance map (int32; 0 background, ``k+1`` for
    ``objects[k]``: only visible pixels), the background region map (0 upper, 1 lower) and the two
    stuff class indices.
    """
    bg, region, stuff = background if background is not None else _background(rng, height, width)
    image = bg.copy()
    instances = np.zeros((height, width), np.int32)
    for k, obj in enumerate(objects):
        cls = OBJECT_CLASSES[obj.class_index]
        ext = obj.radius * max(1.0, obj.aspect) * 1.5 + 2
        x0, x1 = max(0, int(obj.cx - ext)), min(width, int(obj.cx + ext) + 1)
        y0, y1 = max(0, int(obj.cy - ext)), min(height, int(obj.cy + ext) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx - obj.cx, yy - obj.cy
        cos_a, sin_a = math.cos(obj.angle), math.sin(obj.angle)
        u = (dx * cos_a + dy * sin_a) / (obj.radius * obj.aspect)
        v = (-dx * sin_a + dy * cos_a) / obj.radius
        mask = _shape_mask(cls.shape, u, v)
        if not mask.any():
            continue
        shade = 0.55 + 0.45 * _texture(cls.texture, u, v)
        color = np.asarray(cls.color if obj.color is None else obj.color, np.float32)
        patch = image[y0:y1, x0:x1]
        patch[mask] = color[None, :] * shade[mask][:, None]
        instances[y0:y1, x0:x1][mask] = k + 1
    image += rng.normal(0, 4.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), instances, region, stuff


def random_objects(
    rng: np.random.Generator,
    height: int,
    width: int,
    n_objects: int,
    classes: list[int] | None = None,
    min_radius: float = 0.08,
    max_radius: float = 0.22,
    colors: str = "class",
) -> list[ObjectSpec]:
    _check_colors(colors)
    short = min(height, width)
    specs = []
    for i in range(n_objects):
        cls = classes[i] if classes is not None else int(rng.integers(len(OBJECT_CLASSES)))
        radius = short * rng.uniform(min_radius, max_radius)
        specs.append(
            ObjectSpec(
                class_index=cls,
                cx=float(rng.uniform(radius * 0.6, width - radius * 0.6)),
                cy=float(rng.uniform(radius * 0.6, height - radius * 0.6)),
                radius=float(radius),
                angle=float(rng.uniform(0, 2 * math.pi)),
                aspect=float(rng.uniform(0.8, 1.25)),
                color=instance_color(rng) if colors == "instance" else None,
            )
        )
    return specs


def classification_image(seed: int, index: int, label: int, size: int, colors: str = "class") -> Image.Image:
    """One ImageNet-style image whose label is the class of its large main object (plus small distractors)."""
    rng = np.random.default_rng([seed, index, label])
    main = random_objects(rng, size, size, 1, classes=[label], min_radius=0.2, max_radius=0.34, colors=colors)
    n_distract = int(rng.integers(0, 3))
    others = [c for c in range(len(OBJECT_CLASSES)) if c != label]
    distract = random_objects(
        rng, size, size, n_distract, classes=list(rng.choice(others, n_distract)), min_radius=0.06, max_radius=0.1,
        colors=colors,
    )
    # Distractors behind the main object half of the time, in front otherwise.
    objects = distract + main if rng.random() < 0.5 else main + distract
    image, _, _, _ = render(rng, size, size, objects)
    return Image.fromarray(image)


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def _save_jpeg(image: np.ndarray | Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    img.save(path, format="JPEG", quality=92)


def save_png(array: np.ndarray, path: Path, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8), mode="P" if palette is not None else "L")
    if palette is not None:
        img.putpalette(palette)
    img.save(path, format="PNG", optimize=False)


def write_image_sets(folder: Path, sets: dict[str, list[str]]) -> None:
    """The image-set lists of a layout (VOC's ImageSets/Segmentation, DAVIS's ImageSets/2017): ``<split>.txt`` for
    each split, one name a line."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in sets.items():
        (folder / f"{split}.txt").write_text("".join(n + "\n" for n in names))


def _boundary(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of a change of label (VOC marks these 255)."""
    import cv2

    edges = np.zeros(labels.shape, bool)
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edges[1:, :] |= labels[:-1, :] != labels[1:, :]
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    if width > 1:
        kernel = np.ones((width, width), np.uint8)
        edges = cv2.dilate(edges.astype(np.uint8), kernel) > 0
    return edges


WNID_BASE = 1_000_000


def wnid(label: int) -> str:
    return f"n{WNID_BASE + label:08d}"


def make_imagenet(root: Path, num: int = 8, size: int = 64, seed: int = 0, num_classes: int | None = None,
                  colors: str = "class") -> Path:
    """ImageNet-style folders: ``num`` train and ``max(2, num // 4)`` val images per class."""
    n_cls = num_classes or len(OBJECT_CLASSES)
    for split, count, offset in (("train", num, 0), ("val", max(2, num // 4), 10_000)):
        for label in range(n_cls):
            for i in range(count):
                img = classification_image(seed, offset + i, label, size, colors)
                _save_jpeg(img, root / split / wnid(label) / f"{wnid(label)}_{offset + i:05d}.JPEG")
    return root


# ADE20K: labels 1..150 with 0 = "other" (ignored under reduce_zero_label). Our stuff and thing classes
# take ids in that space; a band of "other" pixels along the image border keeps 0 present.
ADE_STUFF_IDS = {"wall": 1, "floor": 4, "sky": 3, "grass": 10}
ADE_THING_IDS = [13, 16, 20, 21, 23, 24, 28, 32, 37, 45]  # one per OBJECT_CLASSES entry


def _scene(rng: np.random.Generator, size: int, colors: str = "class"
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[ObjectSpec], tuple[int, int]]:
    height, width = size, int(size * 4 / 3)
    objects = random_objects(rng, height, width, int(rng.integers(2, 5)), colors=colors)
    image, instances, region, stuff = render(rng, height, width, objects)
    return image, instances, region, objects, stuff


def make_ade20k(root: Path, num: int = 8, size: int = 96, seed: int = 0, colors: str = "class") -> Path:
    base = root / "ADEChallengeData2016"
    for split, folder, count, offset in (("train", "training", num, 0), ("val", "validation", max(2, num // 2), 50_000)):
        for i in range(count):
            rng = np.random.default_rng([seed, offset + i, 150])
            image, instances, region, objects, stuff = _scene(rng, size, colors)
            label = np.where(region == 0, ADE_STUFF_IDS[STUFF_CLASSES[stuff[0]]], ADE_STUFF_IDS[STUFF_CLASSES[stuff[1]]])
            for k, obj in enumerate(objects):
                label[instances == k + 1] = ADE_THING_IDS[obj.class_index]
            label[:2, :] = 0
            label[:, :2] = 0
            name = f"ADE_{'train' if split == 'train' else 'val'}_{offset + i:08d}"
            _save_jpeg(image, base / "images" / folder / f"{name}.jpg")
            save_png(label, base / "annotations" / folder / f"{name}.png")
    return base


def make_voc(root: Path, num: int = 8, size: int = 96, seed: int = 0, colors: str = "class") -> Path:
    """VOC 2012 with SegmentationClass (palette, 255 borders) and SegmentationClassAug (no borders)."""
    base = root / "VOCdevkit" / "VOC2012"
    palette = voc_palette()
    splits: dict[str, list[str]] = {"train": [], "val": [], "aug": []}
    counts = {"train": num, "val": max(2, num // 2), "aug": num}
    index = 0
    for split in ("train", "val", "aug"):
        for _ in range(counts[split]):
            rng = np.random.default_rng([seed, index, 21])
            image, instances, _, objects, _ = _scene(rng, size, colors)
            label = np.zeros(instances.shape, np.uint8)
            for k, obj in enumerate(objects):
                label[instances == k + 1] = obj.class_index + 1  # VOC: 0 background, 1..20 objects
            name = f"2012_{index:06d}"
            index += 1
            splits[split].append(name)
            _save_jpeg(image, base / "JPEGImages" / f"{name}.jpg")
            aug_label = label.copy()
            label[_boundary(label, 3)] = 255  # VOC's void band along every object boundary
            if split != "aug":
                save_png(label, base / "SegmentationClass" / f"{name}.png", palette)
            save_png(aug_label, base / "SegmentationClassAug" / f"{name}.png")
    write_image_sets(base / "ImageSets" / "Segmentation", {**splits, "trainaug": splits["train"] + splits["aug"]})
    return base


COCO_CATEGORY_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def coco_categories() -> list[dict]:
    return [
        {"id": cid, "name": cls.name, "supercategory": cls.shape}
        for cid, cls in zip(COCO_CATEGORY_IDS, OBJECT_CLASSES, strict=True)
    ]


def _mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a binary mask as COCO polygons ([x1, y1, x2, y2, ...], pixel-corner coordinates)."""
    import cv2

    # Upsample 2x so contours run along pixel edges rather than through pixel centres.
    big = np.kron(mask.astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        pts = contour.reshape(-1, 2).astype(np.float64)
        if len(pts) < 3:
            continue
        # Pixel (i, j) of the original covers [2i, 2i+2); contour points sit on upsampled pixel centres.
        pts = (pts + 0.5) / 2.0
        pts = np.clip(pts, 0, [mask.shape[1], mask.shape[0]])
        polygons.append([round(float(c), 2) for c in pts.reshape(-1)])
    return polygons


def make_coco(root: Path, num: int = 8, size: int = 128, seed: int = 0, min_area: int = 24, colors: str = "class") -> Path:
    """COCO instances with polygon segmentations, bbox, area and iscrowd, from the visible object masks."""
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    for split, count, offset in (("train2017", num, 0), ("val2017", max(2, num // 2), 100_000)):
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, offset + i, 80])
            image, instances, _, objects, _ = _scene(rng, size, colors)
            image_id = offset + i + 1
            file_name = f"{image_id:012d}.jpg"
            _save_jpeg(image, root / split / file_name)
            images.append({"id": image_id, "file_name": file_name, "height": int(image.shape[0]), "width": int(image.shape[1])})
            for k, obj in enumerate(objects):
                mask = instances == k + 1
                area = int(mask.sum())
                if area < min_area:
                    continue
                polygons = _mask_polygons(mask)
                if not polygons:
                    continue
                ys, xs = np.nonzero(mask)
                x0, y0 = int(xs.min()), int(ys.min())
                bbox = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
                annotations.append(
                    {
                        "id": len(annotations) + 1 + offset * 10,
                        "image_id": image_id,
                        "category_id": COCO_CATEGORY_IDS[obj.class_index],
                        "segmentation": polygons,
                        "area": float(area),
                        "bbox": bbox,
                        "iscrowd": 0,
                    }
                )
        payload = {
            "info": {"description": "bam-dense synthetic COCO layout", "version": "1.0"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": coco_categories(),
        }
        kind = split.replace("2017", "")
        (ann_dir / f"instances_{kind}2017.json").write_text(json.dumps(payload, sort_keys=True))
    return root


@dataclass(frozen=True)
class Track:
    """An object's motion through a sequence: position, velocity, spin and a breathing deformation."""

    spec: ObjectSpec
    vx: float
    vy: float
    spin: float
    breathe: float

    def at(self, t: int) -> ObjectSpec:
        s = self.spec
        return ObjectSpec(
            class_index=s.class_index,
            cx=s.cx + self.vx * t,
            cy=s.cy + self.vy * t,
            radius=s.radius * (1.0 + 0.15 * math.sin(self.breathe * t)),
            angle=s.angle + self.spin * t,
            aspect=s.aspect * (1.0 + 0.2 * math.sin(0.5 * self.breathe * t + 1.0)),
            color=s.color,
        )


def davis_sequence(
    seed: int, index: int, height: int, width: int, n_frames: int, n_objects: int, void_border: bool = False,
    colors: str = "class",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frames (RGB uint8) and annotations (0 background, 1..K objects, optional 255 void borders).

    Objects move, spin and deform, occlude each other (fixed depth order) and the last one heads out of
    the frame. All K objects are visible in frame 0, as DAVIS requires (K = max id of frame 0).
    """
    _check_colors(colors)
    rng = np.random.default_rng([seed, index, 2017])
    classes = list(rng.choice(len(OBJECT_CLASSES), size=n_objects, replace=False))
    short = min(height, width)
    tracks = []
    for k in range(n_objects):
        radius = short * rng.uniform(0.13, 0.22)
        cx = rng.uniform(0.25, 0.75) * width
        cy = rng.uniform(0.3, 0.7) * height
        speed = short * rng.uniform(0.01, 0.03)
        heading = rng.uniform(0, 2 * math.pi)
        if k == n_objects - 1 and n_objects > 1:
            speed = width * 1.2 / max(n_frames, 1)  # leaves the frame before the end
        angle, aspect = float(rng.uniform(0, 6.28)), float(rng.uniform(0.85, 1.2))
        color = instance_color(rng) if colors == "instance" else None
        tracks.append(
            Track(
                ObjectSpec(int(classes[k]), float(cx), float(cy), float(radius), angle, aspect, color),
                vx=float(speed * math.cos(heading)),
                vy=float(speed * math.sin(heading) * 0.5),
                spin=float(rng.uniform(-0.08, 0.08)),
                breathe=float(rng.uniform(0.1, 0.4)),
            )
        )
    background = _background(rng, height, width)
    for t in range(n_frames):
        frame_rng = np.random.default_rng([seed, index, 2017, t])
        image, instances, _, _ = render(frame_rng, height, width, [tr.at(t) for tr in tracks], background=background)
        ann = instances.astype(np.uint8)
        if t == 0:
            present = set(np.unique(ann)) - {0}
            if present != set(range(1, n_objects + 1)):
                raise RuntimeError(f"synthetic DAVIS sequence {index}: not every object visible in frame 0")
        if void_border:
            border = _boundary(ann, 2) & (ann > 0)
            ann = ann.copy()
            ann[border] = 255
        yield image, ann


def make_davis(
    root: Path, num: int = 3, size: int = 96, seed: int = 0, n_frames: int = 10, void_border_every: int = 3,
    colors: str = "class",
) -> Path:
    """DAVIS-2017 layout: ``num`` val and ``num`` train sequences, 1..3 objects each."""
    palette = voc_palette()
    height, width = size, int(round(size * 854 / 480))
    sets: dict[str, list[str]] = {"train": [], "val": []}
    index = 0
    for split in ("val", "train"):
        for i in range(num):
            seq = f"synth-{split}-{i:03d}"
            sets[split].append(seq)
            n_objects = 1 + (index % 3)
            # Retry with the next index until all objects are visible in frame 0.
            for attempt in range(20):
                try:
                    frames = list(
                        davis_sequence(seed, index * 100 + attempt, height, width, n_frames, n_objects,
                                       void_border=(void_border_every > 0 and i % void_border_every == void_border_every - 1),
                                       colors=colors)
                    )
                    break
                except RuntimeError:
                    continue
            else:  # pragma: no cover - the generator places objects well inside the frame
                raise RuntimeError(f"could not place {n_objects} objects for {seq}")
            for t, (image, ann) in enumerate(frames):
                _save_jpeg(image, root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg")
                save_png(ann, root / "Annotations" / "480p" / seq / f"{t:05d}.png", palette)
            index += 1
    write_image_sets(root / "ImageSets" / "2017", sets)
    return root


# ---------------------------------------------------------------------------------------------
# In-memory dataset for pretraining without a data path
# ---------------------------------------------------------------------------------------------


class SyntheticImageNet:
    """``len == num_images``; item ``i`` is (PIL image, label) rendered on the fly, deterministic in (seed, i)."""

    def __init__(self, num_images: int = 512, size: int = 64, seed: int = 0, num_classes: int | None = None,
                 colors: str = "class"):
        _check_colors(colors)
        self.colors = colors
        self.num_images = num_images
        self.size = size
        self.seed = seed
        self.num_classes = num_classes or len(OBJECT_CLASSES)
        if not 1 <= self.num_classes <= len(OBJECT_CLASSES):
            raise ValueError(f"num_classes must be in 1..{len(OBJECT_CLASSES)}, got {self.num_classes}")
        self.targets = [i % self.num_classes for i in range(num_images)]
        self.classes = [OBJECT_CLASSES[c].name for c in range(self.num_classes)]

    def __len__(self) -> int:
        return self.num_images

    def load(self, index: int) -> tuple[Image.Image, int]:
        label = self.targets[index]
        return classification_image(self.seed, index, label, self.size, self.colors), label

    @classmethod
    def from_config(cls, synthetic, num_images: int | None = None, seed: int | None = None) -> SyntheticImageNet:
        """From a pretraining config's ``data.synthetic`` section, optionally with another size or seed."""
        return cls(synthetic.num_images if num_images is None else num_images, synthetic.size,
                   synthetic.seed if seed is None else seed, synthetic.num_classes, synthetic.colors)


DEFAULTS = {
    "imagenet": {"num": 8, "size": 64},
    "ade20k": {"num": 8, "size": 96},
    "voc": {"num": 8, "size": 96},
    "coco": {"num": 8, "size": 128},
    "davis": {"num": 3, "size": 96},
}
WRITERS = {"imagenet": make_imagenet, "ade20k": make_ade20k, "voc": make_voc, "coco": make_coco, "davis": make_davis}


def make(layout: str, root: str | Path, num: int | None = None, size: int | None = None, seed: int = 0,
         colors: str = "class") -> Path:
    """Write one synthetic dataset; returns the dataset root in the real layout's terms."""
    if layout not in WRITERS:
        raise ValueError(f"unknown layout {layout!r}; choose from {sorted(WRITERS)}")
    _check_colors(colors)
    params = dict(DEFAULTS[layout], colors=colors)
    if num is not None:
        params["num"] = num
    if size is not None:
        params["size"] = size
    out = WRITERS[layout](Path(root), seed=seed, **params)
    # What the leaderboard reads to tell generated data from the real dataset (bam_dense.bench.conditions), in the
    # folder given and in the layout's own root (VOCdevkit/VOC2012, ADEChallengeData2016), whichever a user names.
    for folder in {Path(root), Path(out)}:
        (folder / "SYNTHETIC.txt").write_text(f"generated by bam-dense make-synthetic {layout} (seed {seed}): not the real "
                                              "dataset\n")
    return out
