#!/usr/bin/env python
"""detectron2 fine-tuning and evaluation for bam-dense checkpoints (COCO, Mask R-CNN R50-FPN/C4, ViTDet).

    python downstream/detectron2/train_net.py --config-file configs/detectron2/mask_rcnn_R_50_FPN_1x_ssl.yaml \
        --checkpoint runs/lewel/checkpoints/last.pth --coco-root /datasets/coco --num-gpus 8
    python downstream/detectron2/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth

* ``--checkpoint`` takes a converted ``.pkl`` or any checkpoint ``bam-dense convert`` reads (converted on the
  fly into ``<OUTPUT_DIR>/pretrained/`` with its coverage report).
* ``--coco-root`` registers ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/`` under
  that root as the training and test sets.
* Before iteration 1 every backbone tensor (and res5 in the C4 ROI head) must hold the checkpoint's value.
* Registers ``Res5ROIHeadsExtraNorm`` (MoCo's C4 head with one BatchNorm after res5), which stock
  detectron2 lacks.
* Multi-GPU and multi-node through detectron2's launcher (``--num-gpus``, ``--num-machines``,
  ``--machine-rank``, ``--dist-url``); ``--resume`` continues from ``OUTPUT_DIR/last_checkpoint``.
* Writes ``<OUTPUT_DIR>/metrics.json`` (box and mask AP, AP50, AP75, APs/m/l, config, weights, SHA-256).
* ``--dry-run``: the same config at ``--dry-run-iters`` iterations (default 2), batch 2, no workers, one
  evaluation on ``--dry-run-images`` images (default 2), on synthetic COCO written under
  ``<OUTPUT_DIR>/data`` when no ``--coco-root`` is given; ``--dry-run-scale F`` multiplies the input sizes (the
  YAML's INPUT sizes; the LazyConfig's LSJ size, test resize and ``square_pad``), precise-BN runs at most as
  many batches as training, and the box score threshold is 0 so that the untrained model's boxes reach the COCO
  scorer. Prints s/iter and peak memory.

detectron2 is not on the package index; build it from https://github.com/facebookresearch/detectron2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a clone without installing

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyConfig, get_cfg, instantiate  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import COCOEvaluator, verify_results  # noqa: E402
from detectron2.layers import get_norm  # noqa: E402
from detectron2.modeling import ROI_HEADS_REGISTRY  # noqa: E402
from detectron2.modeling.roi_heads import Res5ROIHeads  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from bam_dense.downstream.weight_check import check_suffix_matched, raise_if_not_loaded  # noqa: E402


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5 ROI head with one extra normalisation layer after res5 (the MoCo C4 setting)."""

    def _build_res5_block(self, cfg):
        seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels


COCO_FIELDS = {"AP": "AP", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_s", "APm": "AP_m", "APl": "AP_l"}  # d2 -> bam-dense


def register_coco_root(root: str) -> tuple[str, str]:
    names = ("bam_coco_2017_train", "bam_coco_2017_val")
    for name, split in zip(names, ("train2017", "val2017")):
        ann = os.path.join(root, "annotations", f"instances_{split}.json")
        if not os.path.isfile(ann):
            raise FileNotFoundError(f"--coco-root {root}: {ann} does not exist")
        register_coco_instances(name, {}, ann, os.path.join(root, split))
    return names


def prepare_weights(checkpoint: str, output_dir: str, trust_source: bool) -> str:
    if checkpoint.endswith(".pkl"):
        return checkpoint
    from bam_dense.convert import convert

    out = Path(output_dir) / "pretrained" / f"{Path(checkpoint).stem}_detectron2.pkl"
    if comm.is_main_process():
        print(convert(checkpoint, "detectron2", out, trust_source=trust_source).summary())
    comm.synchronize()
    return str(out)


def check_pretrained(model: torch.nn.Module, weights: str) -> None:
    """The pretrained part: FPN's bottom-up ResNet, ViTDet's ViT, or C4's ResNet plus res5 in the ROI head."""
    module = model.module if hasattr(model, "module") else model
    if hasattr(module.backbone, "bottom_up"):
        prefixes = ("backbone.bottom_up.",)
    elif hasattr(module.backbone, "net"):
        prefixes = ("backbone.net.",)
    else:
        prefixes = ("backbone.", "roi_heads.res5.")
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("roi_heads.res5.norm.")}  # the extra norm is new
    result = check_suffix_matched(state, weights, prefixes)
    raise_if_not_loaded(result, weights, "detectron2 backbone")
    print(f"[bam-dense] pretrained-weight check: all {result.checked} backbone tensors hold {weights}")


# ---------------------------------------------------------------------------------------------
# --dry-run: sizes only
# ---------------------------------------------------------------------------------------------


def _r32(x: float) -> int:
    return max(32, int(round(x / 32.0)) * 32)


def dry_run_data(args, output_dir: str) -> None:
    """No --coco-root: synthetic COCO in the real layout under OUTPUT_DIR/data (written once)."""
    if args.coco_root:
        return
    from bam_dense.data.coco80 import relabel_as_coco80
    from bam_dense.data.synthetic import make

    root = Path(output_dir) / "data" / "coco"
    if not (root / ".complete").exists():
        make("coco", root, num=4)
        relabel_as_coco80(root / "annotations")  # the recipe's 80 classes: the evaluator maps all of them
        (root / ".complete").write_text("")
    args.coco_root = str(root)


def dry_run_subset(name: str, n: int) -> str:
    """A registered dataset cut to its first ``n`` images (the evaluator scores only the images it saw)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    new = f"{name}_dry_run_{n}"
    if new not in DatasetCatalog.list():
        DatasetCatalog.register(new, lambda: DatasetCatalog.get(name)[:n])
        meta = {k: v for k, v in MetadataCatalog.get(name).as_dict().items() if k != "name"}
        MetadataCatalog.get(new).set(**meta)
    return new


def dry_run_yaml(cfg, args) -> dict:
    changed = {}

    def put(node, key, value, where):
        old = getattr(node, key)
        if old != value:
            changed[where] = (old, value)
            setattr(node, key, value)

    iters = args.dry_run_iters
    put(cfg.SOLVER, "MAX_ITER", iters, "SOLVER.MAX_ITER")
    put(cfg.SOLVER, "IMS_PER_BATCH", min(2, cfg.SOLVER.IMS_PER_BATCH), "SOLVER.IMS_PER_BATCH")
    put(cfg.SOLVER, "CHECKPOINT_PERIOD", iters, "SOLVER.CHECKPOINT_PERIOD")
    put(cfg.TEST, "EVAL_PERIOD", 0, "TEST.EVAL_PERIOD")  # the one evaluation runs after training
    put(cfg.DATALOADER, "NUM_WORKERS", 0, "DATALOADER.NUM_WORKERS")
    put(cfg.DATASETS, "TEST", tuple(dry_run_subset(n, args.dry_run_images) for n in cfg.DATASETS.TEST), "DATASETS.TEST")
    # a random-init model after a few iterations scores no box above the recipe's threshold, and detectron2 reports
    # NaN for an empty prediction set: keep every box so that the evaluation itself is exercised (as the mm dry-run)
    put(cfg.MODEL.ROI_HEADS, "SCORE_THRESH_TEST", 0.0, "MODEL.ROI_HEADS.SCORE_THRESH_TEST")
    if cfg.TEST.PRECISE_BN.ENABLED:  # the SSL recipes re-estimate BN statistics over 200 batches after training
        put(cfg.TEST.PRECISE_BN, "NUM_ITER", min(iters, cfg.TEST.PRECISE_BN.NUM_ITER), "TEST.PRECISE_BN.NUM_ITER")
    f = args.dry_run_scale
    if f:
        put(cfg.INPUT, "MIN_SIZE_TRAIN", tuple(_r32(s * f) for s in cfg.INPUT.MIN_SIZE_TRAIN), "INPUT.MIN_SIZE_TRAIN")
        put(cfg.INPUT, "MAX_SIZE_TRAIN", _r32(cfg.INPUT.MAX_SIZE_TRAIN * f), "INPUT.MAX_SIZE_TRAIN")
        put(cfg.INPUT, "MIN_SIZE_TEST", _r32(cfg.INPUT.MIN_SIZE_TEST * f), "INPUT.MIN_SIZE_TEST")
        put(cfg.INPUT, "MAX_SIZE_TEST", _r32(cfg.INPUT.MAX_SIZE_TEST * f), "INPUT.MAX_SIZE_TEST")
    return changed


def dry_run_lazy(cfg, args) -> dict:
    changed = {}

    def put(node, key, value, where):
        old = node[key] if key in node else None
        if old != value:
            changed[where] = (old, value)
            node[key] = value

    iters = args.dry_run_iters
    put(cfg.train, "max_iter", iters, "train.max_iter")
    put(cfg.train, "eval_period", 0, "train.eval_period")
    put(cfg.train.checkpointer, "period", iters, "train.checkpointer.period")
    put(cfg.dataloader.train, "total_batch_size", min(2, cfg.dataloader.train.total_batch_size), "dataloader.train.total_batch_size")
    put(cfg.dataloader.train, "num_workers", 0, "dataloader.train.num_workers")
    put(cfg.dataloader.test, "num_workers", 0, "dataloader.test.num_workers")
    put(cfg.model.roi_heads.box_predictor, "test_score_thresh", 0.0, "model.roi_heads.box_predictor.test_score_thresh")
    names = cfg.dataloader.test.dataset.names
    names = names if isinstance(names, str) else names[0]
    put(cfg.dataloader.test.dataset, "names", dry_run_subset(names, args.dry_run_images), "dataloader.test.dataset.names")
    cfg.dataloader.evaluator.dataset_name = cfg.dataloader.test.dataset.names
    f = args.dry_run_scale
    if f:
        for i, aug in enumerate(cfg.dataloader.train.mapper.augmentations):
            for key in ("target_height", "target_width"):
                if key in aug:
                    put(aug, key, _r32(aug[key] * f), f"dataloader.train.mapper.augmentations[{i}].{key}")
            if "crop_size" in aug:
                put(aug, "crop_size", tuple(_r32(c * f) for c in aug["crop_size"]), f"dataloader.train.mapper.augmentations[{i}].crop_size")
        for i, aug in enumerate(cfg.dataloader.test.mapper.augmentations):
            for key in ("short_edge_length", "max_size"):
                if key in aug:
                    put(aug, key, _r32(aug[key] * f), f"dataloader.test.mapper.augmentations[{i}].{key}")
        backbone = cfg.model.backbone
        if "square_pad" in backbone and backbone.square_pad:
            put(backbone, "square_pad", _r32(backbone.square_pad * f), "model.backbone.square_pad")
    return changed


def report_dry_run(args, changed: dict, seconds: list[float], results: dict) -> None:
    """The dry-run summary, in the format of every other --dry-run (bam_dense.core.dry_run_report)."""
    from bam_dense.core.dry_run_report import changed_line, closing_lines, line
    from bam_dense.core.memory import peak_memory

    if not comm.is_main_process():
        return
    per = sum(seconds[1:]) / max(len(seconds) - 1, 1) if len(seconds) > 1 else (seconds[0] if seconds else float("nan"))
    lines = [f"dry-run of {args.config_file} (detectron2)", line("data", str(args.coco_root)), changed_line(changed),
             line("ran", f"{len(seconds)} training iteration(s); {per:.2f} s/iter"),
             line("evaluation", f"{args.dry_run_images} image(s): box AP {results.get('bbox', {}).get('AP')}, "
                                f"mask AP {results.get('segm', {}).get('AP')}"),
             *closing_lines(*peak_memory(), [])]
    for text in lines:
        print(f"[bam-dense] {text}")


def _iteration_timer(seconds: list[float]):
    import time

    from detectron2.engine import HookBase

    class DryRunTimer(HookBase):
        def before_step(self):
            self._t = time.perf_counter()

        def after_step(self):
            seconds.append(time.perf_counter() - self._t)

    return DryRunTimer()


def write_metrics(results: dict, args, weights: str) -> None:
    from bam_dense.downstream.mm_common import write_metrics as write

    metrics = {}
    for task in ("bbox", "segm"):
        for field, name in COCO_FIELDS.items():
            value = results.get(task, {}).get(field)
            if value is not None:
                metrics[f"{task}_{name}"] = float(value)
    out = Path(args.metrics_out or Path(args.output_dir) / "metrics.json")
    write(out, "instance_segmentation", metrics, args.config_file, weights, {"framework": "detectron2", "ap_scale": "percent"})
    print(f"[bam-dense] metrics -> {out}")


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return COCOEvaluator(dataset_name, output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))


def setup_yaml(args):
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.dry_run:
        dry_run_data(args, cfg.OUTPUT_DIR)
    if args.coco_root:
        train, val = register_coco_root(args.coco_root)
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), (val,)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    if comm.get_world_size() == 1:  # SyncBN needs a process group; one process normalises the same way with BN
        for node in (cfg.MODEL.RESNETS, cfg.MODEL.FPN, cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.ROI_MASK_HEAD):
            if node.NORM == "SyncBN":
                node.NORM = "BN"
    if args.dry_run:
        args.dry_run_changed = dry_run_yaml(cfg, args)
    if args.checkpoint and not args.eval_only:
        cfg.MODEL.WEIGHTS = prepare_weights(args.checkpoint, cfg.OUTPUT_DIR, args.trust_source)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main_yaml(args):
    cfg = setup_yaml(args)
    args.output_dir = cfg.OUTPUT_DIR
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
            write_metrics(results, args, cfg.MODEL.WEIGHTS)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if trainer.start_iter == 0 and cfg.MODEL.WEIGHTS:
        check_pretrained(trainer.model, cfg.MODEL.WEIGHTS)
    seconds: list[float] = []
    if args.dry_run:
        trainer.register_hooks([_iteration_timer(seconds)])
    trainer.train()
    results = Trainer.test(cfg, trainer.model)
    if comm.is_main_process():
        write_metrics(results, args, str(Path(cfg.OUTPUT_DIR) / "model_final.pth"))
    if args.dry_run:
        report_dry_run(args, args.dry_run_changed, seconds, results)
    return results


def main_lazy(args):
    from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, hooks
    from detectron2.engine.defaults import default_writers
    from detectron2.evaluation import inference_on_dataset, print_csv_format

    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if args.dry_run:
        dry_run_data(args, cfg.train.output_dir)
    if args.coco_root:
        train, val = register_coco_root(args.coco_root)
        cfg.dataloader.train.dataset.names, cfg.dataloader.test.dataset.names = train, val
        cfg.dataloader.evaluator.dataset_name = val
    if not torch.cuda.is_available():
        cfg.train.device = "cpu"
        cfg.train.amp.enabled = False
    changed = dry_run_lazy(cfg, args) if args.dry_run else {}
    if args.checkpoint and not args.eval_only:
        cfg.train.init_checkpoint = prepare_weights(args.checkpoint, cfg.train.output_dir, args.trust_source)
    default_setup(cfg, args)
    args.output_dir = cfg.train.output_dir

    model = instantiate(cfg.model).to(cfg.train.device)

    def evaluate():
        results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
        print_csv_format(results)
        return results

    if args.eval_only:
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        results = evaluate()
        if comm.is_main_process():
            write_metrics(results, args, cfg.train.init_checkpoint)
        return results
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, loader, optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    seconds: list[float] = []
    if args.dry_run:
        trainer.register_hooks([_iteration_timer(seconds)])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    if start_iter == 0 and cfg.train.init_checkpoint:
        check_pretrained(model, cfg.train.init_checkpoint)
    trainer.train(start_iter, cfg.train.max_iter)
    results = evaluate()
    if comm.is_main_process():
        write_metrics(results, args, str(Path(cfg.train.output_dir) / "model_final.pth"))
    if args.dry_run:
        report_dry_run(args, changed, seconds, results)
    return results


def main(args):
    return main_lazy(args) if args.config_file.endswith(".py") else main_yaml(args)


def build_parser():
    parser = default_argument_parser()
    parser.add_argument("--checkpoint", help="pretraining checkpoint or converted .pkl for the backbone")
    parser.add_argument("--coco-root", help="COCO root: annotations/instances_{train,val}2017.json, {train,val}2017/")
    parser.add_argument("--trust-source", action="store_true", help="allow legacy pickles (trusted files only)")
    parser.add_argument("--metrics-out", help="metrics JSON (default <OUTPUT_DIR>/metrics.json)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the config at a few iterations, batch 2, one evaluation on a few images; synthetic COCO "
                             "under OUTPUT_DIR/data without --coco-root; prints s/iter and peak memory")
    parser.add_argument("--dry-run-iters", type=int, default=2, help="training iterations of --dry-run (default 2)")
    parser.add_argument("--dry-run-images", type=int, default=2, help="evaluation images of --dry-run (default 2)")
    parser.add_argument("--dry-run-scale", type=float, default=None, help="--dry-run: multiply the input sizes by F")
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url,
           args=(args,))
