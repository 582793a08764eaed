"""The ``bam-dense`` command line.

Only argparse is imported here, so ``bam-dense --help`` stays fast with nothing but the core installed.
Each subcommand names the function of :mod:`bam_dense.cli.commands` that runs it; that module and the
library code it calls are imported only when the subcommand runs. Nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from bam_dense.core.errors import UserFacingError

Handler = str  # "package.module:function", called with the parsed argparse.Namespace


def positive_int(text: str) -> int:
    """argparse type of sizes and counts: a whole number >= 1 (0 or less fails here, not deep inside a model)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type of temperatures and scales: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _force(p, what: str = "replace an existing --out (refused without it)") -> None:
    p.add_argument("--force", action="store_true", help=what)


def _add(sub, name: str, handler: Handler, help_text: str, description: str | None = None):
    parser = sub.add_parser(
        name,
        help=help_text,
        description=description or help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(_handler=handler)
    return parser


def _pretrain(sub) -> None:
    p = _add(
        sub,
        "pretrain",
        "bam_dense.cli.commands:pretrain",
        "pretrain an encoder (BAM, BYOL, LEWEL_B, DINO, MoCo v3, CO-BYOL, CO-DINO, CO-MoCoV3, CO-BAM, LEWEL-BAM)",
        "Pretrain an encoder from a YAML config (configs/pretrain/*.yaml).\n\n"
        "Overrides are KEY.SUB=VALUE pairs, VALUE parsed as YAML, e.g.\n"
        "  bam-dense pretrain --config configs/pretrain/bam_tiny_cpu.yaml optim.epochs=2 run.output_dir=runs/x\n"
        "Multi-GPU: torchrun --nproc_per_node=8 pretrain/train.py --config ... (same arguments).\n"
        "Before queueing a long run: bam-dense pretrain --config ... --dry-run [data.views.global_size=64 ...]",
    )
    p.add_argument("--config", required=True, help="pretraining YAML file")
    p.add_argument("overrides", nargs="*", help="KEY.SUB=VALUE config overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="build everything the full run builds, run a few steps and one k-NN evaluation at reduced "
                        "batch/data sizes (outputs in <run.output_dir>/dry-run), print s/step and peak memory; shrink "
                        "the input size, if needed, with overrides such as data.views.global_size=64")
    p.add_argument("--dry-run-steps", type=positive_int, default=2, metavar="N", help="optimizer steps of --dry-run (default 2)")
    p.add_argument("--dry-run-scale", type=positive_float, default=None, metavar="F",
                   help="--dry-run: multiply the crop sizes (data.views.global_size/local_size, eval.knn sizes) by F, "
                        "rounded to multiples of 32, e.g. 0.25 on a CPU")
    p.add_argument("--data-root", default=None,
                   help="--dry-run: ImageNet-style folder to read (default: the config's data.path if it exists, "
                        "else synthetic images written in that layout)")


def _convert(sub) -> None:
    from bam_dense.convert.registry import FORMAT_NAMES, TARGET_NAMES  # the rows; no torch

    p = _add(
        sub,
        "convert",
        "bam_dense.cli.commands:convert",
        "convert a pretraining checkpoint for timm, torchvision, MMSeg, MMDet, detectron2 or safetensors",
        "Convert a checkpoint's backbone for a downstream framework and write a coverage report\n"
        "(PATH.report.json) listing every mapped, dropped and filled tensor. Exits non-zero, naming the\n"
        "tensors, when a backbone tensor of the target stays unfilled or a shape does not match.",
    )
    p.add_argument("src", help="source checkpoint (.pth/.pt/.ckpt/.safetensors)")
    p.add_argument(
        "--to",
        required=True,
        choices=TARGET_NAMES,
        help="the framework to write for; what each target's file holds and what reads it: docs/converting.md",
    )
    p.add_argument("--out", required=True, help="output file (or folder for timm-folder); never the source itself")
    _force(p)
    p.add_argument("--arch", help="timm architecture, e.g. vit_small_patch16_224, resnet50 (read from the checkpoint when recorded)")
    p.add_argument("--which", choices=["student", "teacher"], default=None, help="which network of a pretraining checkpoint (default: teacher when present)")
    p.add_argument("--img-size", type=positive_int, default=None, help="interpolate the ViT position embedding to this image size (mmseg targets)")
    p.add_argument(
        "--source-format",
        default="auto",
        choices=("auto", *FORMAT_NAMES),
        help="source layout (detected automatically by default)",
    )
    p.add_argument("--trust-source", action="store_true", help="allow legacy pickles that need code execution to load (only for files you trust)")


def _davis(sub) -> None:
    p = sub.add_parser("davis", help="DAVIS-2017 label propagation and evaluation", description="DAVIS-2017 video object segmentation")
    dsub = p.add_subparsers(dest="davis_command", required=True, metavar="{propagate,eval}")
    prop = _add(
        dsub,
        "propagate",
        "bam_dense.cli.commands:davis_propagate",
        "propagate first-frame masks with frozen features (the DINO protocol)",
    )
    _encoder_args(prop)
    prop.add_argument("--davis-root", required=True, help="DAVIS folder with JPEGImages/480p, Annotations/480p, ImageSets/2017")
    prop.add_argument("--out", required=True,
                      help="results folder (one sub-folder of PNGs per sequence); a re-run into it skips the finished "
                           "sequences only if they were computed from the same checkpoint content and options")
    prop.add_argument("--overwrite", action="store_true",
                      help="--out holds results of other inputs: delete them and start clean (refused without it)")
    prop.add_argument("--set", default="val", help="ImageSets/2017/<set>.txt (default val)")
    prop.add_argument("--sequences", nargs="*", help="only these sequences")
    prop.add_argument("--n-last-frames", type=positive_int, default=7, help="previous frames kept as context (default 7)")
    prop.add_argument("--size-mask-neighborhood", type=int, default=12, help="neighbourhood radius in patches (default 12; 0 disables)")
    prop.add_argument("--topk", type=positive_int, default=5, help="affinities kept per target patch over all context frames (default 5)")
    prop.add_argument("--temperature", type=positive_float, default=0.1, help="affinity temperature (default 0.1)")
    prop.add_argument("--resolution", type=positive_int, default=480,
                      help="short side of the resized frames: 480 = DINO's protocol (default), 960 = the short side "
                           "DINOv3 reports (the 480p frames upsampled); recorded with the results")
    prop.add_argument("--patch-size", type=positive_int, default=None, help="ViT patch size / CNN stride (read from the model by default)")
    prop.add_argument("--resnet-stage", type=int, choices=[1, 2, 3, 4], default=4, help="ResNet stage whose dense map is used (1-4, default 4)")
    prop.add_argument("--save-overlays", action="store_true", help="also write overlay JPEGs and a GIF per sequence")

    ev = _add(
        dsub,
        "eval",
        "bam_dense.cli.commands:davis_eval",
        "score results with J and F exactly as davis2017-evaluation does",
    )
    ev.add_argument("--davis-root", required=True, help="DAVIS folder")
    ev.add_argument("--results", required=True, help="results folder: <seq>/<frame>.png")
    ev.add_argument("--task", choices=["semi-supervised", "unsupervised"], default="semi-supervised")
    ev.add_argument("--set", default="val")
    ev.add_argument("--sequences", nargs="*", help="only these sequences")
    ev.add_argument("--out", default=None, help="where the CSVs and chart go (default: the results folder)")
    ev.add_argument("--workers", type=positive_int, default=None, help="processes (default: CPU count)")


def _finetune(sub, name: str, title: str, example: str, data_root_help: str) -> None:
    """``seg`` and ``det``: the same train/test commands over MMSegmentation or MMDetection."""
    p = sub.add_parser(name, help=title, description=title)
    msub = p.add_subparsers(dest=f"{name}_command", required=True, metavar="{train,test}")
    tr = _add(msub, "train", "bam_dense.cli.commands:finetune_train", "fine-tune from a pretrained backbone (the weight check runs first)")
    tr.add_argument("config", help=f"mmengine config, e.g. {example}")
    tr.add_argument("--checkpoint", help="pretraining checkpoint (converted on the fly) or an already converted file "
                    "(required, except with --dry-run: then a random-init checkpoint of the config's backbone)")
    tr.add_argument("--work-dir", help="work directory (default work_dirs/<config name>)")
    tr.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="mmengine config overrides")
    tr.add_argument("--amp", action="store_true", help="mixed precision (AmpOptimWrapper)")
    tr.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    tr.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none", help="job launcher (torchrun: pytorch)")
    tr.add_argument("--data-root", help=data_root_help)
    tr.add_argument("--trust-source", action="store_true", help="allow legacy pickles (trusted files only)")
    _dry_run_args(tr, train=True)
    te = _add(msub, "test", "bam_dense.cli.commands:finetune_test", "evaluate a fine-tuned model and write metrics JSON")
    te.add_argument("config")
    te.add_argument("--checkpoint", required=True, help="fine-tuned checkpoint, or a work dir (its latest checkpoint)")
    te.add_argument("--work-dir")
    te.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    te.add_argument("--out", help="metrics JSON path (default <work-dir>/metrics.json)")
    _force(te)
    te.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    te.add_argument("--data-root", help=data_root_help)
    _dry_run_args(te, train=False)


def _dry_run_args(p, train: bool) -> None:
    what = ("conversion, weight check, a few iterations and one validation" if train
            else "the test on a few images, metrics JSON written")
    p.add_argument("--dry-run", action="store_true",
                   help=f"the recipe as the full run builds it, at reduced sizes ({what}); prints s/iter and peak "
                        "memory; without --data-root, synthetic data in the dataset's layout under <work-dir>/data "
                        "(default work dir: work_dirs/<config>/dry-run)")
    if train:
        p.add_argument("--dry-run-iters", type=positive_int, default=2, metavar="N", help="training iterations of --dry-run (default 2)")
    p.add_argument("--dry-run-scale", type=positive_float, default=None, metavar="F",
                   help="--dry-run: multiply every image size (pipelines, preprocessor, sliding window, ViT img_size) by F, "
                        "e.g. 0.25 on a CPU")
    p.add_argument("--dry-run-images", type=positive_int, default=2, metavar="N", help="--dry-run: evaluation images (default 2)")


def _seg(sub) -> None:
    _finetune(sub, "seg", "semantic segmentation with MMSegmentation (ADE20K, VOC)",
              "configs/mmseg/upernet_vit-b16_ade20k-512x512_160k.py",
              "dataset root in the official layout (overrides the config's data_root)")


def _det(sub) -> None:
    _finetune(sub, "det", "COCO detection with MMDetection", "configs/mmdet/mask-rcnn_r50_fpn_1x_coco.py",
              "COCO root: annotations/, train2017/, val2017/")


def _bench(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark plan and report against the published leaderboard", description="Leaderboard reproduction")
    bsub = p.add_subparsers(dest="bench_command", required=True, metavar="{run,report}")
    run = _add(bsub, "run", "bam_dense.cli.commands:bench_run", "run (or print) the steps of a plan file")
    run.add_argument("plan", help="configs/bench/*.yaml (relative paths in it: from the working directory, else "
                                  "bam-dense's bundled configs/)")
    run.add_argument("--run-dir", required=True, help="where every step writes its outputs and metrics (relative: from "
                                                      "the working directory)")
    run.add_argument("--steps", nargs="*", help="only these steps (default: all)")
    run.add_argument("--skip", nargs="*", default=[], help="skip these steps")
    run.add_argument("--force", action="store_true", help="re-run every step, even those done with the same inputs")
    run.add_argument("--overwrite", action="store_true",
                     help="delete the results the run directory holds from other inputs (another checkpoint, options or "
                          "bam-dense version) and make them again; without it such a run is refused")
    run.add_argument("--print-slurm", action="store_true", help="print one sbatch command per step instead of running")
    run.add_argument("--dry-run", action="store_true",
                     help="run every step through its own --dry-run (pretraining, seg/det train+test, DAVIS on one "
                          "sequence, probe): the plan's configs at reduced sizes, synthetic data where a data root "
                          "is missing; always re-runs")
    run.add_argument("--dry-run-scale", type=positive_float, default=None, metavar="F",
                     help="--dry-run: multiply input sizes by F in every step (e.g. 0.25 on a CPU)")
    rep = _add(bsub, "report", "bam_dense.cli.commands:bench_report", "write report.md and charts for one or more run directories")
    rep.add_argument("run_dirs", nargs="+", help="run directories (several: side by side)")
    rep.add_argument("--out", help="report folder (default: the first run directory)")


def _demo(sub) -> None:
    p = _add(
        sub,
        "demo",
        "bam_dense.cli.commands:demo",
        "run the whole chain on generated synthetic data (a pipeline check, not a benchmark)",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--reduced", action="store_true", help="smallest sizes (used by the tests)")
    p.add_argument("--skip", nargs="*", default=[], help="skip steps: probe davis seg det")


FEATURE_CACHE_HELP = ("feature cache folder shared by the protocols of a checkpoint (eval linear, eval retrieval, probe): "
                      "one extraction per checkpoint, resolution, preprocessing, split and token selection (default: none)")


def _probe(sub) -> None:
    p = _add(
        sub,
        "probe",
        "bam_dense.cli.commands:probe",
        "cheap dense evaluation: linear per-patch segmentation probe (mIoU) and DAVIS label propagation (J&F)",
    )
    _encoder_args(p, device=False, pos_resample=False)
    p.add_argument("--ade-root", help="ADE20K-layout folder (ADEChallengeData2016) for the linear probe")
    p.add_argument("--davis-root", help="DAVIS-layout folder for label propagation")
    p.add_argument("--image-size", type=positive_int, default=64, help="probe input size (default 64)")
    p.add_argument("--steps", type=positive_int, default=1500, help="full-batch Adam steps of the linear probe (default 1500)")
    p.add_argument("--davis-resolution", type=positive_int, default=96, help="DAVIS short side (default 96)")
    p.add_argument("--random-baseline", action="store_true", help="also score the same encoder at its random initialisation")
    p.add_argument("--cache-dir", default=None, help=FEATURE_CACHE_HELP + "; the random-init baseline is never cached")
    p.add_argument("--out", help="write the numbers as JSON")
    _force(p)


def _eval(sub) -> None:
    p = sub.add_parser("eval", help="frozen-feature protocols: in-context retrieval segmentation, ImageNet linear probe",
                       description="Frozen-feature evaluation protocols, each with the published recipe it reproduces "
                                   "(docs/protocols.md). DAVIS propagation: bam-dense davis propagate.")
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="{retrieval,linear}")
    r = _add(
        esub,
        "retrieval",
        "bam_dense.cli.commands:eval_retrieval",
        "in-context retrieval segmentation (Hummingbird; open-hummingbird-eval's algorithm) on VOC or ADE20K",
        "Hummingbird retrieval segmentation (Balazevic et al. 2023) on frozen patch features: a memory bank of\n"
        "training patch features and their label fractions, each validation patch labelled by softmax attention\n"
        "over its k nearest memory patches (faiss, exact inner product), upsampled, mIoU as mmseg's IoUMetric.\n"
        "Defaults are the published ones: 512 px, memory 1024*10^4 patches, 2 augmentation passes, k 30, T 0.02.",
    )
    _encoder_args(r)
    r.add_argument("--dataset", required=True, choices=["voc", "ade20k"], help="VOCdevkit/VOC2012 (trainaug memory, val) or ADEChallengeData2016")
    r.add_argument("--data-root", required=True, help="the dataset folder (or a folder above it) in its official layout")
    r.add_argument("--out", help="metrics JSON (mIoU, per-class IoU, every protocol parameter)")
    _force(r)
    r.add_argument("--input-size", type=positive_int, default=512, help="square input side (default 512; 504 for patch 14)")
    r.add_argument("--memory-size", type=int, default=1024 * 10**4,
                   help="memory-bank patches (default 10240000, the published size); 0 keeps every patch")
    r.add_argument("--augmentation-epochs", type=positive_int, default=2, help="augmented passes over the training set (default 2)")
    r.add_argument("--no-augment", action="store_true", help="one plain pass (resize only) instead of the published augmentation")
    r.add_argument("--neighbours", type=positive_int, default=30, help="nearest neighbours per patch (default 30)")
    r.add_argument("--temperature", type=positive_float, default=0.02, help="softmax temperature of the attention (default 0.02)")
    r.add_argument("--train-list", help="file of training image ids restricting the memory bank (default: all; VOC trainaug.txt)")
    r.add_argument("--nn-backend", choices=["auto", "faiss", "faiss-gpu", "torch"], default="auto",
                   help="exact nearest-neighbour search: faiss IndexFlatIP on the CPU, faiss's GPU index, or a matrix "
                        "product on the device; auto = faiss on CPU, on CUDA faiss-gpu when installed, else torch")
    r.add_argument("--batch-size", type=positive_int, default=16)
    r.add_argument("--seed", type=int, default=0, help="augmentation and patch-sampling seed (default 0)")
    r.add_argument("--cache-dir", default=None, help=FEATURE_CACHE_HELP + "; augmented memory-bank views are never cached")

    li = _add(
        esub,
        "linear",
        "bam_dense.cli.commands:eval_linear",
        "ImageNet linear probe on frozen features (the sources' recipes, a grid of classifiers trained in one pass)",
        "Linear probe on an ImageNet-layout folder (train/<class>/*, val/<class>/*). One classifier per learning rate\n"
        "(and, for dinov2, per token choice) is trained on the same batches in one pass; one is selected by --selection.\n"
        "--protocol augmented (default, the sources'): a fresh RandomResizedCrop + flip of every training image each\n"
        "epoch, encoded once per batch for every classifier. --protocol cached-centre-crop: centre-crop features encoded\n"
        "once and cached (fast; another protocol, named linear-cached-centre-crop in the results).\n"
        "Recipes: dino-vits (CLS of the last 4 blocks), dino-vitb (last CLS + average-pooled patch tokens),\n"
        "bam (dino-vitb + BatchNorm head, lr 0.002), dinov2 (blocks {1,4} x avgpool x 13 lrs, 10 epochs),\n"
        "mocov3-vit (CLS, lr 3, 90 epochs), mocov3-r50 (pooled, lr 0.1, 90 epochs),\n"
        "lewel-r50 (ResNet pooled features, lr 0.4, 50 epochs).",
    )
    _encoder_args(li)
    li.add_argument("--data-root", required=True, help="ImageNet-layout folder with train/ and val/")
    li.add_argument("--recipe", choices=["dino-vits", "dino-vitb", "bam", "dinov2", "mocov3-vit", "mocov3-r50", "lewel-r50"],
                    default=None, help="feature and optimisation recipe (default: the checkpoint source's: bam, dinov2, "
                                       "mocov3-*, lewel-r50; else dino-vits for ViTs up to width 384, dino-vitb for wider "
                                       "ViTs, lewel-r50 for ResNets)")
    li.add_argument("--protocol", choices=["augmented", "cached-centre-crop"], default="augmented",
                    help="augmented (default): the sources' fresh crops and flips every epoch; cached-centre-crop: "
                         "centre-crop features cached once (fast, reported as its own protocol)")
    li.add_argument("--resolution", type=positive_int, default=224, help="centre-crop side (default 224; resize to side*256/224 first)")
    li.add_argument("--cache-dir", default=None, help=FEATURE_CACHE_HELP)
    li.add_argument("--lrs", type=positive_float, nargs="+", default=None,
                    help="learning rates per 256 images (default: DINOv2's grid 1e-5..0.1; the recipe's lr is always added)")
    li.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: the recipe's: 100, 90, 50 or 10)")
    li.add_argument("--batch-size", type=positive_int, default=None, help="classifier batch (default: the recipe's, 1024 or 256)")
    li.add_argument("--selection", choices=["val", "holdout"], default="val",
                    help="lr selection: best validation top-1 (DINOv2's rule, default) or best on a held-out train part")
    li.add_argument("--holdout-fraction", type=float, default=0.1, help="share of each class held out for --selection holdout")
    li.add_argument("--workers", type=int, default=0, help="data-loading processes (augmented crops, feature extraction)")
    li.add_argument("--seed", type=int, default=0)
    li.add_argument("--out", help="metrics JSON (top-1, every lr's accuracy, the selection rule, the recipe)")
    _force(li)


# bam_dense.convert.sources.pos_resample_choices(), spelled out so that --help imports no torch (a test compares them)
POS_RESAMPLE_CHOICES = ("auto", "timm", "dino", "dinov2", "dinov2-reg", "deit", "rope")


def _encoder_args(p, device: bool = True, pos_resample: bool = True) -> None:
    """The options of every command that reads an encoder's frozen features (eval retrieval, eval linear, davis
    propagate, probe), declared once: what :func:`bam_dense.encoders.load_extractor` takes."""
    g = p.add_argument_group("encoder", "the checkpoint whose frozen features are read (bam_dense.encoders)")
    g.add_argument("--checkpoint", required=True,
                   help="bam-dense checkpoint or a public encoder's file (DINO, DINOv2 with/without registers, DINOv3, iBOT, "
                        "MAE, MoCo v3, DeiT/timm, torchvision); 'random' for a random-init --arch")
    g.add_argument("--arch", help="timm architecture when the checkpoint does not record it")
    g.add_argument("--which", choices=["student", "teacher"], default=None, help="network of a pretraining checkpoint (default teacher)")
    if device:
        g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    if pos_resample:
        g.add_argument("--pos-resample", choices=POS_RESAMPLE_CHOICES, default="auto",
                       help="how a ViT's position table is resampled to the input size: auto (default) = the rule of the "
                            "checkpoint's source (dino: DINO/iBOT; dinov2, dinov2-reg: DINOv2 without/with registers; deit: "
                            "MAE, DeiT, MoCo v3; rope: DINOv3; timm: BAM, bam-dense, timm files); a rule's name overrides it "
                            "(docs/protocols.md)")
    g.add_argument("--trust-source", action="store_true", help="allow legacy pickles (trusted files only)")


def _tools(sub) -> None:
    d = _add(sub, "doctor", "bam_dense.cli.commands:doctor", "report versions and which features can run here, with the fix for each")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    i = _add(
        sub,
        "install-openmmlab",
        "bam_dense.cli.commands:install_openmmlab",
        "build (or take from cache) mmcv 2.1.0 with ops, then install mmengine, mmsegmentation and mmdet",
    )
    i.add_argument("--cache-dir", default=None, help="wheel cache (default ~/.cache/bam-dense/wheels or $BAM_DENSE_CACHE)")
    i.add_argument("--cuda", choices=["auto", "yes", "no"], default="auto", help="build CUDA ops: auto = when a GPU and nvcc are present")
    i.add_argument("--jobs", type=positive_int, default=None, help="parallel compile jobs (default: CPU count)")
    i.add_argument("--force-rebuild", action="store_true", help="ignore the cached wheel")
    i.add_argument("--log", default=None, help="build log file (default <cache-dir>/logs/...)")
    m = _add(sub, "make-synthetic", "bam_dense.cli.commands:make_synthetic", "write a synthetic dataset in a real dataset's on-disk layout")
    m.add_argument("layout", choices=["imagenet", "ade20k", "voc", "coco", "davis"])
    m.add_argument("--root", required=True, help="output folder (refused when it holds anything, unless --force)")
    _force(m, "write into a --root that is not empty (files of the same names are replaced)")
    m.add_argument("--num", type=positive_int, default=None, help="images (sequences for davis) per split")
    m.add_argument("--size", type=positive_int, default=None, help="image size (short side)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--colors", choices=["class", "instance"], default="class",
                   help="object colours: fixed per class, or random per object so that only shape and texture "
                        "tell the classes apart (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bam-dense",
        description="Self-supervised pretraining (BAM, LEWEL, CO-SSL) to dense-prediction benchmarks:\n"
        "pretrain -> convert -> segment / detect / propagate -> leaderboard.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from bam_dense import __version__

    parser.add_argument("--version", action="version", version=f"bam-dense {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_pretrain, _convert, _eval, _davis, _seg, _det, _bench, _demo, _probe, _tools):
        add(sub)
    return parser


def resolve(handler: Handler) -> Callable[[argparse.Namespace], int | None]:
    module_name, func_name = handler.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = resolve(args._handler)
    try:
        status = handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserFacingError as err:  # one clear line, no traceback
        print(f"bam-dense {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(status or 0)
