"""Reading images that real datasets contain: CMYK, grayscale, palette, RGBA, 16-bit, truncated, corrupt.

``read_rgb(path)`` returns an 8-bit RGB PIL image or raises :class:`BadImage` naming the file.
``ImageFolderSource`` lists an ImageNet-style folder (``<root>/<class>/<image>``) without opening files;
failures are counted where the data is consumed (see :class:`bam_dense.data.pretrain.PretrainDataset`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class BadImage(Exception):
    """An image file that cannot be decoded; the message names the file and the reason."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping 16-bit data or leaving alpha artefacts."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F":
            lo, hi = float(arr.min()), float(max(arr.max(), arr.min() + 1e-12))
            arr = (arr - lo) / (hi - lo) * 255.0
        else:
            arr = arr / hi * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        return img.convert("RGB")
    return img.convert("RGB")


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode and convert to RGB; truncated and corrupt files raise :class:`BadImage`."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(f"{path}: {type(err).__name__}: {err}") from err
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


class ImageFolderSource:
    """``root/<class>/<file>`` listing (classes sorted, as torchvision's ImageFolder); files are not opened.

    A ``train/`` sub-folder is used when ``root`` contains one.
    """

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        if (root / "train").is_dir():
            root = root / "train"
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {root} does not exist")
        self.root = root
        self.classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
        if not self.classes:
            raise FileNotFoundError(f"{root} has no class sub-folders (expected <root>/<class>/<image>)")
        self.samples: list[tuple[str, int]] = []
        for label, cls in enumerate(self.classes):
            for dirpath, _, files in sorted(os.walk(root / cls, followlinks=True)):
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, name), label))
        if not self.samples:
            raise FileNotFoundError(f"{root} has class folders but no images with extensions {IMAGE_EXTENSIONS}")
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return read_rgb(path), label
