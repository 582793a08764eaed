#!/usr/bin/env python
"""DAVIS evaluator speed: bam-dense against the official davis2017-evaluation, as whole processes.

    python benchmarks/davis_eval.py --official-repo /path/to/davis2017-evaluation [--sequences 6 --frames 40]

Generates a synthetic DAVIS-2017 set at 480p (854x480 frames, 1-3 objects per sequence) with predictions
(the ground truth shifted and eroded), then times ``bam-dense davis eval`` and the official
``evaluation_method.py --task semi-supervised`` on the same inputs, each as a fresh process, and checks
that both write the same global CSV. Without ``--official-repo`` (or when the official code or pandas
cannot be imported) the baseline is a plain per-frame reference written here: whole-frame boundaries and
dilations, as the official code computes them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bam_dense.data.synthetic import make_davis, voc_palette  # noqa: E402

REFERENCE = r'''
import sys, numpy as np, cv2
from pathlib import Path
from PIL import Image
from skimage.morphology import disk
root, res = Path(sys.argv[1]), Path(sys.argv[2])
def bmap(seg):
    e = np.zeros_like(seg); s = np.zeros_like(seg); se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]; s[:-1, :] = seg[1:, :]; se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]; b[:, -1] = seg[:, -1] ^ s[:, -1]; b[-1, -1] = 0
    return b
js, fs = [], []
for seq in (root / "ImageSets/2017/val.txt").read_text().split():
    files = sorted((root / "Annotations/480p" / seq).glob("*.png"))[1:-1]
    gts = [np.array(Image.open(f)) for f in files]
    k = int(np.array(Image.open(sorted((root / "Annotations/480p" / seq).glob("*.png"))[0])).max())
    for obj in range(1, k + 1):
        jv, fv = [], []
        for f, g in zip(files, gts):
            p = np.array(Image.open(res / seq / f.name)) == obj
            g = g == obj
            u = (p | g).sum(); jv.append(1.0 if u == 0 else (p & g).sum() / u)
            r = np.ceil(0.008 * np.linalg.norm(g.shape)); d = disk(r).astype(np.uint8)
            fb, gb = bmap(p), bmap(g)
            fd, gd = cv2.dilate(fb.astype(np.uint8), d), cv2.dilate(gb.astype(np.uint8), d)
            nf, ng = fb.sum(), gb.sum()
            if nf == 0 or ng == 0: fv.append(float(nf == 0 and ng == 0)); continue
            P, R = (fb & (gd > 0)).sum() / nf, (gb & (fd > 0)).sum() / ng
            fv.append(0.0 if P + R == 0 else 2 * P * R / (P + R))
        js.append(np.mean(jv)); fs.append(np.mean(fv))
print("J&F-Mean %.3f" % ((np.mean(js) + np.mean(fs)) / 2))
'''


def build(root: Path, n_seq: int, n_frames: int) -> Path:
    make_davis(root, num=n_seq, size=480, seed=3, n_frames=n_frames, void_border_every=0)
    res = root / "results"
    kernel = np.ones((7, 7), np.uint8)
    for seq in (root / "ImageSets" / "2017" / "val.txt").read_text().split():
        for p in sorted((root / "Annotations" / "480p" / seq).glob("*.png")):
            a = np.array(Image.open(p))
            out = np.zeros_like(a)
            for k in range(1, int(a.max()) + 1):
                out[cv2.erode(np.roll(a == k, (5, 7), axis=(0, 1)).astype(np.uint8), kernel) > 0] = k
            (res / seq).mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(out, mode="P")
            img.putpalette(voc_palette())
            img.save(res / seq / p.name)
    return res


def timed(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", help="checkout of davisvideochallenge/davis2017-evaluation")
    parser.add_argument("--official-pythonpath", default=None,
                        help="folder put on the official evaluator's PYTHONPATH (e.g. pandas and scikit-image installed "
                             "there with pip install --target, outside the project's environment)")
    parser.add_argument("--sequences", type=int, default=6)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="bam-dense worker processes (default: CPU count)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "DAVIS"
        res = build(root, args.sequences, args.frames)
        n_frames = sum(len(list((root / "Annotations" / "480p" / s).glob("*.png"))) for s in (root / "ImageSets/2017/val.txt").read_text().split())
        print(f"inputs: {args.sequences} sequences, {n_frames} frames at 854x480, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        ours_cmd = [sys.executable, "-m", "bam_dense.cli", "davis", "eval", "--davis-root", str(root), "--results", str(res)]
        if args.workers:
            ours_cmd += ["--workers", str(args.workers)]
        official = Path(args.official_repo) if args.official_repo else None
        use_official = bool(official and (official / "evaluation_method.py").exists())
        if use_official:
            label = "official davis2017-evaluation"
            official_env = dict(os.environ)
            if args.official_pythonpath:
                official_env["PYTHONPATH"] = args.official_pythonpath
            base_cmd = [sys.executable, str(official / "evaluation_method.py"), "--task", "semi-supervised",
                        "--results_path", str(res), "--davis_path", str(root)]
        else:
            label = "per-frame reference (whole-frame boundaries, as the official code)"
            script = Path(tmp) / "reference.py"
            script.write_text(REFERENCE)
        ours, baseline, ours_csv, base_csv = [], [], None, None
        for _ in range(args.repeat):  # the two take turns, so that a shared machine's load falls on both alike
            for csv in res.glob("*.csv"):
                csv.unlink()
            t, _ = timed(ours_cmd, env)
            ours.append(t)
            ours_csv = (res / "global_results-val.csv").read_text()
            for csv in res.glob("*.csv"):
                csv.unlink()
            if use_official:
                t, _ = timed(base_cmd, official_env, str(official))
                base_csv = (res / "global_results-val.csv").read_text()
            else:
                t, out = timed([sys.executable, str(script), str(root), str(res)])
            baseline.append(t)
        if not use_official:
            print(f"reference: {out.strip()}")
        print("per turn (bam-dense, baseline) seconds: " + ", ".join(f"({o:.2f}, {b:.2f})" for o, b in zip(ours, baseline))
              + "; ratios " + ", ".join(f"{b / o:.1f}x" for o, b in zip(ours, baseline)))
        o, b = min(ours), min(baseline)
        print(f"bam-dense davis eval: {o:.2f} s (best of {args.repeat}), {n_frames / o:.0f} frames/s")
        print(f"{label}: {b:.2f} s (best of {args.repeat}), {n_frames / b:.0f} frames/s")
        print(f"speed-up: {b / o:.1f}x")
        if base_csv is not None:
            print("global CSV identical:", base_csv == ours_csv)
            print(ours_csv.strip())


if __name__ == "__main__":
    main()
