"""``bam-dense davis propagate``: semi-supervised VOS by label propagation with frozen features.

The DINO protocol (DOWNSTREAM.md 4.2), for ViT and ResNet encoders:

1. Frames are read with OpenCV, resized so the short side is ``resolution`` and the long side is floored
   to a multiple of 64 (bilinear), BGR -> RGB, normalised with mean (0.485, 0.456, 0.406) and std
   (0.228, 0.224, 0.225) (DINO's 0.228 kept for comparability). The published resolutions
   (:data:`PUBLISHED_RESOLUTIONS`): 480, DINO's protocol (the 480p frames as they are), and 960, the short
   side DINOv3 reports DAVIS at (its paper, Tab. 14; no code released: here the 480p frames are upsampled
   with the same rule, and every other parameter is DINO's). J&F moves by ten points or more with the
   resolution, so it is recorded with every result (``propagation.json``, then the metrics JSON).
2. The first frame's mask is resized (nearest) to the feature grid and one-hot encoded with
   ``max label + 1`` channels (void, 255, counts as background).
3. Features (:class:`bam_dense.encoders.FeatureExtractor`): ViT patch tokens of the last block after the final
   norm; ResNet: the map after a chosen stage.
   The ViT's position table is resampled to the frame's grid by the checkpoint source's own rule, recorded
   with the loaded encoder (``pos_resample``: ``auto``, or a rule of :mod:`bam_dense.models.pos_embed` named
   to override it: ``dino``, ``dinov2``, ``dinov2-reg``, ``deit``, ``timm``).
4. Context: the first frame plus the ``n_last_frames`` previous frames with their *soft* label maps.
5. Affinity ``exp(<f_t, f_s> / T)`` of L2-normalised features, restricted to sources within
   ``size_mask_neighborhood`` patches (Chebyshev distance) of the target position, keeping for each target
   the ``topk`` largest over all context frames jointly (ties kept), normalised to sum to 1.
6. Bilinear upsampling by the patch size, per-channel min-max normalisation, argmax, nearest resize to the
   original size, indexed PNG with the DAVIS palette. Frame 0 is written as its ground truth.

Step 5 never builds the ``(h*w) x (n_ctx*h*w)`` affinity: targets are processed in bands of rows, and a
band only meets the source rows within the neighbourhood radius, so memory is bounded by the band size.
:func:`propagate_labels_dense` is the plain full-matrix computation, kept as the reference the tests and
``benchmarks/davis_propagate.py`` compare against.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bam_dense.core.errors import UserFacingError
from bam_dense.data.synthetic import voc_palette

MEAN = (0.485, 0.456, 0.406)
STD = (0.228, 0.224, 0.225)  # DINO's value (0.229 elsewhere), kept for comparability
PALETTE = voc_palette()  # the DAVIS palette; any palette scores the same since the evaluator reads indices


PUBLISHED_RESOLUTIONS = {
    480: "DINO eval_video_segmentation.py: 480p frames, short side 480",
    960: "DINOv3 (paper Tab. 14): short side 960, the 480p frames upsampled; DINO's other parameters",
}


def resolution_protocol(resolution: int) -> str:
    """Which published protocol a short side belongs to (or that it belongs to none)."""
    return PUBLISHED_RESOLUTIONS.get(resolution, f"short side {resolution}: no published protocol uses it")


# Target rows per band: a band meets the source rows within the radius, so narrower bands multiply fewer
# masked-out sources (at 480p: 4 target rows meet 28 source rows, 16 meet 40). Measured on 2 idle CPU cores
# (docs/benchmarks.md): 4 rows 0.079 s per frame at 480p against 0.105 s with 16, 0.83 against 1.10 s at 960;
# similarities 8 x 208 x 1456 (10 MB) at most at 480p, 40 MB at 960.
BAND_ROWS = 4


@dataclass
class PropagationParams:
    n_last_frames: int = 7
    size_mask_neighborhood: int = 12
    topk: int = 5
    temperature: float = 0.1
    resolution: int = 480
    band_rows: int = BAND_ROWS


def target_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(th, tw): short side ``resolution``, long side floored to a multiple of 64 (DINO's read_frame)."""
    if height > width:
        tw = resolution
        th = int(((resolution * height) / width) // 64 * 64)
    else:
        th = resolution
        tw = int(((resolution * width) / height) // 64 * 64)
    return th, tw


def read_frame(path: str | Path, resolution: int) -> tuple[torch.Tensor, int, int]:
    import cv2  # here, not at the top: propagation itself runs where OpenCV is absent (benchmarks/gpu_check.py)

    img = cv2.imread(str(path))
    if img is None:
        raise UserFacingError(f"cannot read frame {path}")
    ori_h, ori_w = img.shape[:2]
    th, tw = target_size(ori_h, ori_w, resolution)
    img = cv2.resize(img, (tw, th)).astype(np.float32) / 255.0
    img = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))
    tensor = torch.from_numpy(img)
    for channel, m, s in zip(tensor, MEAN, STD):
        channel.sub_(m).div_(s)
    return tensor, ori_h, ori_w


def read_first_mask(path: str | Path, patch: int, resolution: int) -> tuple[torch.Tensor, np.ndarray]:
    """(one-hot ``1 x C x h x w`` at feature resolution, the original mask)."""
    with Image.open(path) as seg:
        original = np.asarray(seg).copy()
        th, tw = target_size(seg.size[1], seg.size[0], resolution)
        small = np.asarray(seg.resize((tw // patch, th // patch), Image.NEAREST)).astype(np.int64)
    labels = torch.from_numpy(small)
    labels[labels == 255] = 0  # void is not an object to propagate
    n_classes = int(labels.max()) + 1
    one_hot = F.one_hot(labels, n_classes).permute(2, 0, 1).float().unsqueeze(0)
    return one_hot, original


def _neighbourhood(target_rows: torch.Tensor, target_cols: torch.Tensor, source_rows: torch.Tensor,
                   source_cols: torch.Tensor, radius: int) -> torch.Tensor:
    return ((target_rows[:, None] - source_rows[None, :]).abs() <= radius) & (
        (target_cols[:, None] - source_cols[None, :]).abs() <= radius)


@lru_cache(maxsize=256)
def _band_outside(h: int, w: int, y0: int, y1: int, sy0: int, sy1: int, radius: int, device: str) -> torch.Tensor:
    """``t x s``: True where a source of rows ``sy0..sy1`` is outside the target's neighbourhood (rows ``y0..y1``);
    the same for every frame of a video, so built once."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    t_sl, s_sl = slice(y0 * w, y1 * w), slice(sy0 * w, sy1 * w)
    return ~_neighbourhood(rows[t_sl], cols[t_sl], rows[s_sl], cols[s_sl], radius)


def propagate_labels(feat_tar: torch.Tensor, feats_ctx: torch.Tensor, segs_ctx: torch.Tensor, h: int, w: int,
                     radius: int, topk: int, temperature: float, band_rows: int = BAND_ROWS) -> torch.Tensor:
    """Soft labels ``C x h*w`` of the target from the context, with memory bounded by the band size.

    ``feat_tar`` ``h*w x D`` and ``feats_ctx`` ``n x h*w x D`` are L2-normalised; ``segs_ctx`` is ``n x C x h*w``.

    Per band: similarities ``n x t x s`` (one batched product, no copy of the context), sources outside the
    neighbourhood set to -inf, each frame's top-(k+1), then the top-(k+1) of those ``n * (k+1)`` candidates (the
    joint top over all frames). Only the k kept similarities are exponentiated, and labels are gathered for them
    alone. Where the (k+1)-th value equals the k-th (a tie: DINO keeps every source reaching the k-th value),
    that target's weights are computed over every source as the dense reference does.
    """
    n, hw, _ = feats_ctx.shape
    C = segs_ctx.shape[1]
    device = feat_tar.device
    out = torch.empty(C, hw, device=device, dtype=feat_tar.dtype)
    for y0 in range(0, h, band_rows):
        y1 = min(h, y0 + band_rows)
        sy0, sy1 = (max(0, y0 - radius), min(h, y1 + radius)) if radius > 0 else (0, h)
        t_sl, s_sl = slice(y0 * w, y1 * w), slice(sy0 * w, sy1 * w)
        logits = torch.matmul(feat_tar[t_sl], feats_ctx[:, s_sl].transpose(1, 2))  # n x t x s
        if radius > 0:
            logits.masked_fill_(_band_outside(h, w, y0, y1, sy0, sy1, radius, str(device))[None], float("-inf"))
        s = logits.shape[2]
        k = min(topk, n * s)
        # one more than k: the (k+1)-th value equal to the k-th one is a tie at the k-th value
        per_frame = logits.topk(min(k + 1, s), dim=2)  # n x t x k'
        cand_vals = per_frame.values.permute(1, 0, 2).reshape(logits.shape[1], -1)  # t x n*k', frame-major
        top = cand_vals.topk(min(k + 1, cand_vals.shape[1]), dim=1)
        kth = top.values[:, k - 1].clone()  # the weights below reuse top.values in place
        tied = (torch.nonzero(top.values[:, k] == kth).flatten() if top.values.shape[1] > k
                else torch.empty(0, dtype=torch.long, device=device))
        frame = torch.div(top.indices[:, :k], per_frame.values.shape[2], rounding_mode="floor")  # t x k
        pos = per_frame.indices.permute(1, 0, 2).reshape(logits.shape[1], -1).gather(1, top.indices[:, :k])  # t x k
        weights = top.values[:, :k].div_(temperature).exp_()
        weights.div_(weights.sum(dim=1, keepdim=True))
        labels = segs_ctx[:, :, s_sl][frame, :, pos]  # t x k x C
        out[:, t_sl] = torch.einsum("tk,tkc->ct", weights, labels)
        if len(tied):  # ties at the k-th value: every tied source weighs in
            sub = logits[:, tied].div_(temperature).permute(1, 0, 2).reshape(len(tied), -1)  # q x (n*s)
            keep = sub >= (kth[tied] / temperature)[:, None]
            weights = sub.exp_().mul_(keep)
            weights.div_(weights.sum(dim=1, keepdim=True))
            out[:, t_sl][:, tied] = segs_ctx[:, :, s_sl].permute(1, 0, 2).reshape(C, -1) @ weights.t()
    return out


def propagate_labels_dense(feat_tar: torch.Tensor, feats_ctx: torch.Tensor, segs_ctx: torch.Tensor, h: int, w: int,
                           radius: int, topk: int, temperature: float) -> torch.Tensor:
    """Reference: DINO's full ``n x hw x hw`` affinity, neighbourhood mask multiplied in, top-k per column."""
    n, hw, _ = feats_ctx.shape
    aff = torch.exp(torch.bmm(feat_tar.unsqueeze(0).expand(n, -1, -1), feats_ctx.transpose(1, 2)) / temperature)  # n x t x s
    if radius > 0:
        rows = torch.arange(h).repeat_interleave(w)
        cols = torch.arange(w).repeat(h)
        aff = aff * _neighbourhood(rows, cols, rows, cols, radius).to(aff)[None]
    aff = aff.transpose(2, 1).reshape(-1, hw)  # (n*s) x t
    tk_min = aff.topk(topk, dim=0).values.min(dim=0).values
    aff[aff < tk_min] = 0
    aff = aff / aff.sum(dim=0, keepdim=True)
    segs = segs_ctx.transpose(2, 1).reshape(-1, segs_ctx.shape[1]).t()  # C x (n*s)
    return segs @ aff


def norm_mask(mask: torch.Tensor) -> torch.Tensor:
    """Per channel: (x - min) / max, for channels whose max is above 0 (DINO's norm_mask)."""
    mask = mask.clone()
    for c in range(mask.shape[0]):
        m = mask[c]
        if m.max() > 0:
            m = m - m.min()
            mask[c] = m / m.max()
    return mask


def overlay(frame_path: Path, mask: np.ndarray, alpha: float = 0.5) -> Image.Image:
    image = np.asarray(Image.open(frame_path).convert("RGB")).astype(np.float32)
    colors = np.asarray(PALETTE, np.float32).reshape(-1, 3)[mask]
    blended = np.where(mask[..., None] > 0, image * (1 - alpha) + colors * alpha, image)
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


def save_indexed(mask: np.ndarray, path: Path) -> None:
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(PALETTE)
    img.save(path, format="PNG")


def propagate_sequence(extractor, frame_paths: list[Path], first_mask: Path, out_dir: Path, params: PropagationParams,
                       save_overlays: bool = False, batch_size: int = 8, progress=None) -> None:
    """Propagate ``first_mask`` through ``frame_paths`` and write one indexed PNG per frame."""
    out_dir.mkdir(parents=True, exist_ok=True)
    patch = extractor.patch
    first_seg, original = read_first_mask(first_mask, patch, params.resolution)
    save_indexed(original, out_dir / f"{frame_paths[0].stem}.png")
    overlays = [overlay(frame_paths[0], original)] if save_overlays else []

    features: dict[int, torch.Tensor] = {}
    sizes: dict[int, tuple[int, int]] = {}

    def feature(i: int) -> torch.Tensor:
        if i not in features:  # batched extraction of the next frames
            batch = list(range(i, min(len(frame_paths), i + batch_size)))
            frames = []
            for j in batch:
                tensor, oh, ow = read_frame(frame_paths[j], params.resolution)
                frames.append(tensor)
                sizes[j] = (oh, ow)
            maps = extractor(torch.stack(frames))
            for j, m in zip(batch, maps):
                features[j] = F.normalize(m.flatten(1).t(), dim=1)  # hw x D
        return features.pop(i)

    feat0 = feature(0)
    _, _, h, w = first_seg.shape
    if feat0.shape[0] != h * w:
        raise UserFacingError(f"{first_mask}: the mask grid {h}x{w} does not match the feature grid ({feat0.shape[0]} cells)")
    seg0 = first_seg[0].flatten(1).to(feat0.device)  # C x hw
    queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=params.n_last_frames)
    for t in range(1, len(frame_paths)):
        feat_t = feature(t)
        ctx_feats = torch.stack([feat0] + [f for f, _ in queue])
        ctx_segs = torch.stack([seg0] + [s for _, s in queue])
        soft = propagate_labels(feat_t, ctx_feats, ctx_segs, h, w, params.size_mask_neighborhood, params.topk,
                                params.temperature, params.band_rows)
        queue.append((feat_t, soft))
        up = F.interpolate(soft.reshape(1, -1, h, w), scale_factor=patch, mode="bilinear", align_corners=False,
                           recompute_scale_factor=False)[0]
        labels = norm_mask(up).argmax(dim=0).cpu().numpy().astype(np.uint8)
        oh, ow = sizes.pop(t)
        labels = np.asarray(Image.fromarray(labels).resize((ow, oh), Image.NEAREST))
        save_indexed(labels, out_dir / f"{frame_paths[t].stem}.png")
        if save_overlays:
            overlays.append(overlay(frame_paths[t], labels))
        if progress is not None:
            progress.update(1)
    if save_overlays:
        ov_dir = out_dir.parent / "_overlays" / out_dir.name
        ov_dir.mkdir(parents=True, exist_ok=True)
        for path, img in zip(frame_paths, overlays):
            img.save(ov_dir / f"{path.stem}.jpg", quality=90)
        overlays[0].save(ov_dir.parent / f"{out_dir.name}.gif", save_all=True, append_images=overlays[1:], duration=150, loop=0)


def checkpoint_identity(checkpoint: str, arch: str | None) -> dict:
    """What the results are computed from: a file's size and SHA-256 (not its name), or the random-init ``arch``."""
    from bam_dense.core.identity import file_identity

    if checkpoint == "random":
        return {"random_init": arch}
    if Path(checkpoint).is_file():
        return file_identity(checkpoint)
    return {"name": checkpoint}  # an extractor given in code (tests, the probe): its name is all there is


# what propagate writes into --out: the only entries --overwrite deletes
RESULT_FILES = ("propagation.json", "metrics.json", "global_results-*.csv", "per-sequence_results-*")


def _result_entries(out_dir: Path) -> list[Path]:
    """Sequence folders (masks), overlays, the record and ``davis eval``'s outputs found in ``out_dir``."""
    if not out_dir.is_dir():
        return []
    found = [d for d in out_dir.iterdir() if d.is_dir() and (d.name == "_overlays" or (d / ".done").exists()
                                                              or any(d.glob("*.png")))]
    return found + [f for pattern in RESULT_FILES for f in out_dir.glob(pattern) if f.is_file()]


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '(not recorded)')} there, {new.get(k, '(none)')} now" for k in keys if old.get(k) != new.get(k)]


def check_previous_results(out_dir: Path, inputs: dict, overwrite: bool) -> None:
    """Refuse to add to results computed from other inputs (another checkpoint, other options, other code);
    with ``overwrite``, delete those results first. Resuming with the same inputs keeps the finished sequences."""
    import shutil

    record = out_dir / "propagation.json"
    entries = _result_entries(out_dir)
    if not [e for e in entries if e != record]:  # a record and nothing it could mislabel
        return
    try:
        loaded = json.loads(record.read_text()) if record.is_file() else None
    except (OSError, ValueError):
        loaded = None
    old = loaded.get("inputs") if isinstance(loaded, dict) else None
    if old == inputs:
        return
    if not overwrite:
        why = ("; ".join(_differences(old, inputs)) if isinstance(old, dict)
               else f"{record} is missing or records no inputs, so they cannot be told apart from this run's")
        raise UserFacingError(f"--out {out_dir} holds propagation results of other inputs ({why}). Choose a new --out "
                              "folder, or add --overwrite to delete those results and start clean")
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def run(checkpoint: str, davis_root: str, out: str, arch: str | None = None, subset: str = "val",
        sequences: list[str] | None = None, params: PropagationParams | None = None, patch_size: int | None = None,
        resnet_stage: int = 4, which: str | None = None, device: str | None = None, save_overlays: bool = False,
        trust_source: bool = False, extractor=None, pos_resample: str = "auto", overwrite: bool = False) -> list[str]:
    """Propagate every sequence of ``subset`` (or ``sequences``); returns the sequences processed now.

    ``pos_resample`` (``auto`` or a rule's name): how a ViT's position table is resampled to the frames, for
    the extractor built here from ``checkpoint`` (a given ``extractor`` carries its own).

    Sequences finished in ``out`` are skipped only when ``out/propagation.json`` records the same inputs
    (checkpoint content, options, bam-dense version); other inputs are refused, or deleted first with ``overwrite``.
    """
    from tqdm import tqdm

    from bam_dense import __version__
    from bam_dense.core.atomic import atomic_write_text
    from bam_dense.encoders import load_extractor

    params = params or PropagationParams()
    root, out_dir = Path(davis_root), Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserFacingError(f"--out {out_dir} is a file; propagation writes a folder (one sub-folder per sequence)")
    if out_dir.resolve() == root.resolve():
        raise UserFacingError(f"--out {out_dir} is the DAVIS folder itself: choose a results folder outside the data")
    if sequences is None:
        listing = root / "ImageSets" / "2017" / f"{subset}.txt"
        if not listing.is_file():
            raise UserFacingError(f"{listing} does not exist (is {root} a DAVIS-2017 folder?)")
        sequences = [s.strip() for s in listing.read_text().splitlines() if s.strip()]
        if not sequences:
            raise UserFacingError(f"{listing} lists no sequences: nothing to propagate")
    if not sequences:
        raise UserFacingError("no sequences to propagate (--sequences given without names)")
    identity = checkpoint_identity(checkpoint, arch)
    if extractor is None:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        extractor = load_extractor(checkpoint, arch, which, trust_source, dev, resnet_stage, pos_resample)
    if patch_size is not None and patch_size != extractor.patch:
        raise UserFacingError(f"--patch-size {patch_size} differs from the model's {extractor.patch}")
    kind = getattr(extractor, "kind", None)
    inputs = {"checkpoint": identity, "which": which, **vars(params), "patch_size": extractor.patch,
              "resnet_stage": resnet_stage if kind == "cnn" else None,
              "pos_resample": extractor.pos_resample if kind == "vit" else None, "bam_dense": __version__}
    inputs = json.loads(json.dumps(inputs))  # as the record reads back
    check_previous_results(out_dir, inputs, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": checkpoint, "subset": subset, **vars(params), "patch_size": extractor.patch,
              "resolution_protocol": resolution_protocol(params.resolution), "inputs": inputs}
    if kind == "vit":
        record["pos_resample"] = extractor.pos_resample
    atomic_write_text(out_dir / "propagation.json", json.dumps(record, indent=1))
    done_now = []
    for seq in sequences:
        seq_out = out_dir / seq
        if (seq_out / ".done").exists():
            continue
        frames = sorted((root / "JPEGImages" / "480p" / seq).glob("*.jpg"))
        first = root / "Annotations" / "480p" / seq / f"{frames[0].stem}.png" if frames else None
        if not frames or first is None or not first.is_file():
            raise UserFacingError(f"sequence {seq}: frames or first annotation missing under {root}")
        with tqdm(total=len(frames) - 1, desc=seq, unit="frame", leave=False, disable=None) as bar:
            propagate_sequence(extractor, frames, first, seq_out, params, save_overlays, progress=bar)
        (seq_out / ".done").write_text("")
        done_now.append(seq)
    return done_now
