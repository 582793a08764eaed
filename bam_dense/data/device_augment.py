"""Multi-crop augmentation split between the data workers and the training device (``data.augment_on: device``).

Workers decode the image and draw every random parameter of every view with the same torch RNG calls, in the
same order, as the PIL pipeline of :class:`bam_dense.data.pretrain.Views` (they walk its very transforms), so
the two paths draw identical parameters for the same ``(seed, epoch, index)``. A worker then only cuts the
drawn box out of the decoded image (a view of its array; Pillow's integer box ``reduce`` first when the box is
more than ``REDUCE_GAP`` times the output size, which bounds what is shipped) and sends uint8 pixels with one
row of parameters per crop. The device runs the expensive part batched with per-sample parameters:

* resize: PIL's antialiased bicubic/bilinear resampling (``precompute_coeffs`` and the 22-bit fixed-point
  coefficients of Pillow's ``Resample.c``, two passes each rounded to 8 bits, in the order Pillow picks per
  image) as batched matrix products, exact integer arithmetic in float64 (the default on CPU); float32 (the
  default on CUDA) stays within 2 levels of float64;
* flip, then colour jitter in each sample's own order: brightness, contrast and saturation as Pillow's
  ``ImageEnhance`` blends (float32 arithmetic, truncation, clipping, the contrast mean rounded as
  ``ImageStat``), hue as Pillow's 8-bit HSV round trip with torchvision's wrapping hue shift;
* grayscale (ITU-R 601-2 luma in Pillow's 16-bit fixed point), Gaussian blur as Pillow computes it (three
  extended box-blur passes per axis with the radius of Gwosdek et al. and Pillow's 24-bit fixed-point
  weights, rounded after each pass, edges clamped), solarize at 128, ``ToTensor`` and ``Normalize``.

Every operation is thus an emulation of the PIL operation the worker path runs, not an approximation of it: on
the CPU a crop that needed no reduction comes out bitwise equal to the worker path's tensor
(``tests/test_device_augment.py``). Nothing on the device draws random numbers, so a resumed run stays bitwise
equal to an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import PIL
import torch
from PIL import Image
from torchvision import transforms as T

from bam_dense.core.config import ViewsConfig
from bam_dense.data.pretrain import RandomPILBlur, Views

REDUCE_GAP = 3.0  # a box more than this many times the output size is first box-reduced by an integer factor
# Pillow 13 resizes vertically first when the height shrinks by more than twice as many pixels as the width
# (python-pillow/Pillow#9549); earlier versions always run the horizontal pass first.
PILLOW_VERTICAL_FIRST = int(PIL.__version__.split(".")[0]) >= 13

# One row of parameters per crop (float64; integers are exact).
(H, W, BOX_H, BOX_W, FLIP, JITTER, ORDER, BRIGHT, CONTRAST, SATUR, HUE, GRAY, BLUR, BLUR_R, BLUR_WW, BLUR_FW, SOLAR,
 THRESH, CROP_H, CROP_W) = (0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22)
N_PARAMS = 23  # CROP_H, CROP_W: the box before any reduction (what Pillow's resize sees on the worker path)
_FACTOR_COLUMN = (BRIGHT, CONTRAST, SATUR, HUE)  # torchvision's fn_idx 0..3


class CropBatch(NamedTuple):
    """One crop position of a batch: ``pixels`` (B, Hmax, Wmax, 3) uint8, each crop top-left with arbitrary
    padding, ``params`` (B, N_PARAMS)."""

    pixels: torch.Tensor
    params: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> CropBatch:
        return CropBatch(self.pixels.to(device, non_blocking=non_blocking), self.params.to(device, non_blocking=non_blocking))


# ------------------------------------------------------------------------------------------- worker side
def pil_blur_box(radius: float, passes: int = 3) -> tuple[int, int, int]:
    """Pillow's GaussianBlur(radius) as ``passes`` extended box blurs: (integer radius, weight, edge weight) / 2**24.

    ``_gaussian_blur_radius`` and ``ImagingHorizontalBoxBlur`` of Pillow's ``BoxBlur.c``, float32 where C uses float.
    """
    f32 = np.float32
    r = f32(radius)
    sigma2 = f32(r * r / f32(passes))
    big_l = f32(math.sqrt(12.0 * float(sigma2) + 1.0))
    small_l = f32(math.floor((float(big_l) - 1.0) / 2.0))
    a = f32((f32(2) * small_l + f32(1)) * (small_l * (small_l + f32(1)) - f32(3) * sigma2))
    a = f32(a / (f32(6) * (sigma2 - (small_l + f32(1)) * (small_l + f32(1)))))
    box = f32(small_l + a)
    ri = int(box)
    ww = int(f32(16777216.0) / (box * f32(2) + f32(1)))
    fw = ((1 << 24) - (ri * 2 + 1) * ww) // 2
    return ri, ww, fw


class DeviceViews:
    """Worker half of ``augment_on: device``: draws each view's parameters exactly as :class:`Views` would and
    returns ``[(uint8 HWC crop, parameter row), ...]`` in the same crop order."""

    def __init__(self, cfg: ViewsConfig):
        self.cfg = cfg
        self.pil_views = Views(cfg)
        self.global_views = [_plan(v) for v in self.pil_views.global_views]
        self.local_view = _plan(self.pil_views.local_view)

    @property
    def n_global(self) -> int:
        return self.pil_views.n_global

    @property
    def n_crops(self) -> int:
        return self.pil_views.n_crops

    def __call__(self, img: Image.Image) -> list[tuple[np.ndarray, torch.Tensor]]:
        pixels = _Pixels(img)
        crops = [_draw(plan, pixels) for plan in self.global_views]
        crops += [_draw(self.local_view, pixels) for _ in range(self.cfg.local_crops)]
        return crops


class _Pixels:
    """The decoded image, converted to one HWC uint8 array the first time a crop needs no reduction: its crops
    are then views of that array (no copy until collate), cheaper than converting each crop."""

    def __init__(self, img: Image.Image):
        self.img = img
        self._array = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.asarray(self.img)
        return self._array


def _plan(compose: T.Compose) -> list:
    known = (T.RandomResizedCrop, T.RandomHorizontalFlip, T.RandomApply, T.RandomGrayscale, RandomPILBlur,
             T.RandomSolarize, T.ToTensor, T.Normalize)
    for t in compose.transforms:
        if not isinstance(t, known):
            raise TypeError(f"augment_on: device cannot run {type(t).__name__} on the device")
        if isinstance(t, T.RandomApply) and not (len(t.transforms) == 1 and isinstance(t.transforms[0], T.ColorJitter)):
            raise TypeError("augment_on: device supports RandomApply only around one ColorJitter")
    return list(compose.transforms)


def _draw(plan: list, pixels: _Pixels) -> tuple[np.ndarray, torch.Tensor]:
    """Consume the torch RNG as the PIL transforms in ``plan`` would; return the shipped crop and its parameters."""
    nan = float("nan")
    p = [0.0] * N_PARAMS  # a list: indexing a tensor element by element would cost more than the whole crop
    p[ORDER:ORDER + 4] = [0.0, 1.0, 2.0, 3.0]
    p[BRIGHT], p[CONTRAST], p[SATUR], p[HUE], p[THRESH] = nan, nan, nan, nan, 256.0
    crop = None
    for t in plan:
        if isinstance(t, T.RandomResizedCrop):
            i, j, h, w = T.RandomResizedCrop.get_params(pixels.img, t.scale, t.ratio)
            out_h, out_w = t.size
            fy, fx = math.ceil(h / (REDUCE_GAP * out_h)), math.ceil(w / (REDUCE_GAP * out_w))
            if fx > 1 or fy > 1:
                crop = np.asarray(pixels.img.crop((j, i, j + w, i + h)).reduce((fx, fy)))
                box_h, box_w = float(np.float32(h / fy)), float(np.float32(w / fx))
            else:
                crop = pixels.array[i:i + h, j:j + w]
                box_h, box_w = float(h), float(w)
            p[H], p[W], p[BOX_H], p[BOX_W] = float(crop.shape[0]), float(crop.shape[1]), box_h, box_w
            p[CROP_H], p[CROP_W] = float(h), float(w)
        elif isinstance(t, T.RandomHorizontalFlip):
            p[FLIP] = float(bool(torch.rand(1) < t.p))
        elif isinstance(t, T.RandomApply):
            if not t.p < torch.rand(1):
                cj = t.transforms[0]
                fn_idx, b, c, s, h = cj.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue)
                p[JITTER] = 1.0
                p[ORDER:ORDER + 4] = [float(k) for k in fn_idx.tolist()]
                for col, value in zip(_FACTOR_COLUMN, (b, c, s, h)):
                    p[col] = nan if value is None else value
        elif isinstance(t, T.RandomGrayscale):
            p[GRAY] = float(bool(torch.rand(1) < t.p))
        elif isinstance(t, RandomPILBlur):
            if not torch.rand(()).item() >= t.p:
                radius = t.radius[0] + (t.radius[1] - t.radius[0]) * torch.rand(()).item()
                p[BLUR] = 1.0
                p[BLUR_R], p[BLUR_WW], p[BLUR_FW] = (float(v) for v in pil_blur_box(radius))
        elif isinstance(t, T.RandomSolarize):
            if torch.rand(1).item() < t.p:
                p[SOLAR], p[THRESH] = 1.0, float(t.threshold)
    return crop, torch.tensor(p, dtype=torch.float64)


def collate_device(batch):
    """``augment_on: device`` counterpart of :func:`bam_dense.data.pretrain.collate`: one :class:`CropBatch` per crop."""
    crops = []
    for v in range(len(batch[0][0])):
        pixels = [sample[0][v][0] for sample in batch]
        hmax, wmax = max(x.shape[0] for x in pixels), max(x.shape[1] for x in pixels)
        # Padding is never read with a non-zero weight (resample_matrix is zero beyond each crop), so it is
        # left uninitialised: filling it would cost a worker more than the copy below.
        padded = np.empty((len(batch), hmax, wmax, 3), dtype=np.uint8)
        for k, x in enumerate(pixels):
            padded[k, :x.shape[0], :x.shape[1]] = x
        crops.append(CropBatch(torch.from_numpy(padded), torch.stack([sample[0][v][1] for sample in batch])))
    labels = torch.tensor([sample[1] for sample in batch])
    failed = sum(sample[2] for sample in batch)
    return crops, labels, failed


# ------------------------------------------------------------------------------------------- device side
_PRECISION_BITS = 22  # Pillow Resample.c: 32 - 8 - 2


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    a = -0.5
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def _bilinear(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    return torch.where(x < 1.0, 1.0 - x, torch.zeros_like(x))


def resample_matrix(in_size: torch.Tensor, box: torch.Tensor, out_size: int, in_max: int, interpolation: str) -> torch.Tensor:
    """(B, out_size, in_max) integer coefficients of Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for
    resampling ``[0, box)`` of inputs ``in_size`` long (float64; zero beyond each input)."""
    filt, support0 = (_bicubic, 2.0) if interpolation == "bicubic" else (_bilinear, 1.0)
    dev = in_size.device
    box32 = box.to(torch.float32).to(torch.float64)  # in0, in1 are C floats
    scale = box32 / out_size  # (B,)
    filterscale = scale.clamp(min=1.0)
    support = support0 * filterscale
    xx = torch.arange(out_size, device=dev, dtype=torch.float64)
    center = (xx[None, :] + 0.5) * scale[:, None]  # (B, out)
    xmin = torch.trunc(center - support[:, None] + 0.5).clamp(min=0)
    xmax = torch.minimum(torch.trunc(center + support[:, None] + 0.5), in_size[:, None].to(torch.float64))
    x = torch.arange(in_max, device=dev, dtype=torch.float64)
    inside = (x[None, None, :] >= xmin[..., None]) & (x[None, None, :] < xmax[..., None])
    w = filt((x[None, None, :] - center[..., None] + 0.5) / filterscale[:, None, None])
    w = torch.where(inside, w, torch.zeros_like(w))
    total = w.sum(-1, keepdim=True)
    w = torch.where(total != 0, w / torch.where(total != 0, total, torch.ones_like(total)), w)
    scaled = w * (1 << _PRECISION_BITS)
    return torch.where(w < 0, torch.trunc(scaled - 0.5), torch.trunc(scaled + 0.5))


def _clip8(acc: torch.Tensor) -> torch.Tensor:
    return torch.floor(acc / (1 << _PRECISION_BITS)).clamp(0, 255)


def vertical_first(params: torch.Tensor, out_size: int) -> torch.Tensor:
    """Which samples Pillow resizes vertically first: (B,) bool (``PILLOW_VERTICAL_FIRST``)."""
    h, w = params[:, CROP_H], params[:, CROP_W]
    if not PILLOW_VERTICAL_FIRST:
        return torch.zeros_like(h, dtype=torch.bool)
    return (h > out_size) & (h - out_size > 2 * (w - out_size))


def resize(pixels: torch.Tensor, params: torch.Tensor, out_size: int, interpolation: str,
           dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Pillow's ``Image.resize(size, resample)`` of each sample's ``[0, BOX_W) x [0, BOX_H)``: (B, 3, out, out).

    Two passes, each rounded to 8 bits, in the order Pillow picks (:func:`vertical_first`).
    ``dtype=torch.float64`` reproduces Pillow's integer arithmetic exactly; float32 may differ by a level or two.
    """
    x = pixels.permute(0, 3, 1, 2).to(dtype)  # (B, 3, Hmax, Wmax)
    hmax, wmax = x.shape[-2:]
    kx = resample_matrix(params[:, W], params[:, BOX_W], out_size, wmax, interpolation)
    ky = resample_matrix(params[:, H], params[:, BOX_H], out_size, hmax, interpolation)
    if dtype == torch.float64:
        half = float(1 << (_PRECISION_BITS - 1))

        def rnd(acc: torch.Tensor) -> torch.Tensor:
            return _clip8(acc + half)
    else:
        kx, ky = (kx / (1 << _PRECISION_BITS)).to(dtype), (ky / (1 << _PRECISION_BITS)).to(dtype)

        def rnd(acc: torch.Tensor) -> torch.Tensor:
            return torch.floor(acc + 0.5).clamp(0, 255)
    first_v = vertical_first(params, out_size)
    out = x.new_empty(x.shape[0], x.shape[1], out_size, out_size)
    for group, vertical in ((~first_v, False), (first_v, True)):
        idx = group.nonzero().flatten()
        if not idx.numel():
            continue
        whole = idx.numel() == x.shape[0]  # one order for the whole batch: no copies
        xs = x if whole else x.index_select(0, idx)
        kxs = (kx if whole else kx.index_select(0, idx))[:, None]
        kys = (ky if whole else ky.index_select(0, idx))[:, None]
        if vertical:
            y = rnd(torch.matmul(rnd(torch.matmul(kys, xs)), kxs.transpose(2, 3)))
        else:
            y = rnd(torch.matmul(kys, rnd(torch.matmul(xs, kxs.transpose(2, 3)))))
        if whole:
            return y
        out.index_copy_(0, idx, y)
    return out


def luma(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L: (19595 R + 38470 G + 7471 B + 32768) >> 16 (exact in float32), keeps a channel dim."""
    acc = x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 32768
    return torch.floor(acc / 65536)


def blend(degenerate: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Pillow's ``ImagingBlend(degenerate, x, alpha)`` in 8 bits: float32 arithmetic, clipped, truncated."""
    a = alpha.to(torch.float32).view(-1, 1, 1, 1)
    tmp = degenerate + a * (x - degenerate)
    return torch.floor(tmp.clamp(0, 255))


def contrast_mean(x: torch.Tensor) -> torch.Tensor:
    """``int(ImageStat.Stat(img.convert('L')).mean[0] + 0.5)`` per sample: (B, 1, 1, 1)."""
    lum = luma(x).to(torch.float64)
    mean = lum.sum(dim=(1, 2, 3)) / lum[0].numel()
    return torch.floor(mean + 0.5).to(x.dtype).view(-1, 1, 1, 1)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).to(torch.float64)


def adjust_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """torchvision's PIL ``adjust_hue``: Pillow's 8-bit RGB -> HSV, H += uint8(int(hue * 255)) mod 256, HSV -> RGB.

    The arithmetic follows Pillow's ``rgb2hsv_row``/``hsv2rgb`` (Convert.c): float32 where C stores floats,
    float64 where it computes with double literals.
    """
    x64 = x.to(torch.float64)
    r, g, b = x64[:, 0], x64[:, 1], x64[:, 2]
    maxc = torch.maximum(r, torch.maximum(g, b))
    minc = torch.minimum(r, torch.minimum(g, b))
    gray = maxc == minc
    cr = (maxc - minc).to(torch.float32)
    safe_cr = torch.where(gray, torch.ones_like(cr), cr)
    safe_max = torch.where(maxc == 0, torch.ones_like(maxc), maxc).to(torch.float32)
    s = (cr / safe_max).to(torch.float64)
    rc = ((maxc - r).to(torch.float32) / safe_cr).to(torch.float64)
    gc = ((maxc - g).to(torch.float32) / safe_cr).to(torch.float64)
    bc = ((maxc - b).to(torch.float32) / safe_cr).to(torch.float64)
    h = torch.where(r == maxc, _f32(bc - gc), torch.where(g == maxc, _f32(2.0 + rc - bc), _f32(4.0 + gc - rc)))
    h = _f32(torch.fmod(h / 6.0 + 1.0, 1.0))
    uh = torch.trunc(h * 255.0).clamp(0, 255)
    us = torch.trunc(s * 255.0).clamp(0, 255)
    uh = torch.where(gray, torch.zeros_like(uh), uh)
    us = torch.where(gray, torch.zeros_like(us), us)
    shift = torch.remainder(torch.trunc(hue.to(torch.float64) * 255), 256).view(-1, 1, 1)
    uh = torch.remainder(uh + shift, 256)
    v = maxc
    hf = uh * 6.0 / 255.0
    i = torch.floor(hf)
    f = _f32(hf - i)
    fs = _f32(us / 255.0)
    p = torch.floor(v * (1.0 - fs) + 0.5).clamp(0, 255)
    q = torch.floor(v * (1.0 - _f32(fs * f)) + 0.5).clamp(0, 255)
    t = torch.floor(v * (1.0 - fs * (1.0 - f)) + 0.5).clamp(0, 255)
    i6 = torch.remainder(i, 6)
    cases = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out_r, out_g, out_b = torch.zeros_like(v), torch.zeros_like(v), torch.zeros_like(v)
    for k, (cr_, cg_, cb_) in enumerate(cases):
        sel = i6 == k
        out_r, out_g, out_b = torch.where(sel, cr_, out_r), torch.where(sel, cg_, out_g), torch.where(sel, cb_, out_b)
    zero_s = us == 0
    out = torch.stack([torch.where(zero_s, v, out_r), torch.where(zero_s, v, out_g), torch.where(zero_s, v, out_b)], 1)
    return out.to(x.dtype)


def box_blur(x: torch.Tensor, radius: torch.Tensor, ww: torch.Tensor, fw: torch.Tensor, passes: int = 3) -> torch.Tensor:
    """Pillow's ``ImagingBoxBlur`` with per-sample (integer radius, weight, edge weight): ``passes`` horizontal
    passes then ``passes`` vertical ones, each rounded to 8 bits, edges clamped. Each pass is a depthwise
    convolution of the replicate-padded image with that sample's kernel (float64: integer sums, exact)."""
    n, c = x.shape[:2]
    y = x.to(torch.float64)
    rmax = int(radius.max().item()) + 1
    offsets = torch.arange(-rmax, rmax + 1, device=x.device, dtype=torch.float64).abs()[None]
    r = radius.to(torch.float64).view(-1, 1)
    zero = torch.zeros((), device=x.device, dtype=torch.float64)
    kernel = torch.where(offsets <= r, ww.to(torch.float64).view(-1, 1),
                         torch.where(offsets == r + 1, fw.to(torch.float64).view(-1, 1), zero))  # (n, 2 rmax + 1)
    kernel = kernel.repeat_interleave(c, dim=0)  # one per (sample, channel)
    horizontal, vertical = kernel.view(n * c, 1, 1, -1), kernel.view(n * c, 1, -1, 1)
    y = y.reshape(1, n * c, *y.shape[2:])
    for weight, pad in ((horizontal, (rmax, rmax, 0, 0)), (vertical, (0, 0, rmax, rmax))):
        for _ in range(passes):
            acc = torch.nn.functional.conv2d(torch.nn.functional.pad(y, pad, mode="replicate"), weight, groups=n * c)
            y = torch.floor((acc + (1 << 23)) / (1 << 24))
    return y.view(n, c, *y.shape[2:]).to(x.dtype)


class DeviceAugment:
    """Device half of ``augment_on: device``: a list of :class:`CropBatch` (on the device) -> normalised crops."""

    def __init__(self, cfg: ViewsConfig, device: torch.device | str = "cpu", resize_dtype: torch.dtype | None = None):
        self.cfg = cfg
        self.device = torch.device(device)
        self.resize_dtype = resize_dtype or (torch.float64 if self.device.type == "cpu" else torch.float32)
        n_global = cfg.global_crops
        self.sizes = [cfg.global_size] * n_global + [cfg.local_size] * cfg.local_crops
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def __call__(self, crops) -> list[torch.Tensor]:
        if isinstance(crops[0], torch.Tensor):  # already augmented (augment_on: worker)
            return crops
        return [self.apply(c.pixels, c.params, size) for c, size in zip(crops, self.sizes)]

    def apply(self, pixels: torch.Tensor, params: torch.Tensor, size: int) -> torch.Tensor:
        p = params
        x = resize(pixels, p, size, self.cfg.interpolation, self.resize_dtype).to(torch.float32)
        x = torch.where(p[:, FLIP].view(-1, 1, 1, 1) > 0, x.flip(-1), x)
        x = self.color_jitter(x, p)
        gray = p[:, GRAY].view(-1, 1, 1, 1) > 0
        x = torch.where(gray, luma(x).expand_as(x), x)
        blur = (p[:, BLUR] > 0).nonzero().flatten()
        if blur.numel():
            q = p.index_select(0, blur)
            x = x.index_copy(0, blur, box_blur(x.index_select(0, blur), q[:, BLUR_R], q[:, BLUR_WW], q[:, BLUR_FW]))
        solar = (p[:, SOLAR].view(-1, 1, 1, 1) > 0) & (x >= p[:, THRESH].to(torch.float32).view(-1, 1, 1, 1))
        x = torch.where(solar, 255 - x, x)
        return x.div(255).sub(self.mean).div(self.std)

    @staticmethod
    def color_jitter(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        on = p[:, JITTER] > 0
        for pos in range(4):
            op = p[:, ORDER + pos]
            factor = torch.zeros_like(op)
            for k, col in enumerate(_FACTOR_COLUMN):
                factor = torch.where(op == k, p[:, col], factor)
            active = on & ~torch.isnan(factor)
            is_blend = active & (op < 3)
            if bool(is_blend.any()):
                degenerate = torch.where((op == 1).view(-1, 1, 1, 1), contrast_mean(x),
                                         torch.where((op == 2).view(-1, 1, 1, 1), luma(x), torch.zeros_like(x[:, :1])))
                y = blend(degenerate, x, torch.nan_to_num(factor, nan=1.0))
                x = torch.where(is_blend.view(-1, 1, 1, 1), y, x)
            is_hue = (active & (op == 3)).nonzero().flatten()
            if is_hue.numel():
                x = x.index_copy(0, is_hue, adjust_hue(x.index_select(0, is_hue), factor.index_select(0, is_hue)))
        return x
