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
    if args.coco_root:
        train, val = register_coco_root(args.coco_root)
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), (val,)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    if comm.get_world_size() == 1:  # SyncBN needs a process group; one process normalises the same way with BN
        for node in (cfg.MODEL.RESNETS, cfg.MODEL.FPN, cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.ROI_MASK_HEAD):
            if node.NORM == "SyncBN":
                node.NORM = "BN"
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
    trainer.train()
    results = Trainer.test(cfg, trainer.model)
    if comm.is_main_process():
        write_metrics(results, args, str(Path(cfg.OUTPUT_DIR) / "model_final.pth"))
    return results


def main_lazy(args):
    from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, hooks
    from detectron2.engine.defaults import default_writers
    from detectron2.evaluation import inference_on_dataset, print_csv_format

    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if args.coco_root:
        train, val = register_coco_root(args.coco_root)
        cfg.dataloader.train.dataset.names, cfg.dataloader.test.dataset.names = train, val
        cfg.dataloader.evaluator.dataset_name = val
    if not torch.cuda.is_available():
        cfg.train.device = "cpu"
        cfg.train.amp.enabled = False
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
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    if start_iter == 0 and cfg.train.init_checkpoint:
        check_pretrained(model, cfg.train.init_checkpoint)
    trainer.train(start_iter, cfg.train.max_iter)
    results = evaluate()
    if comm.is_main_process():
        write_metrics(results, args, str(Path(cfg.train.output_dir) / "model_final.pth"))
    return results


def main(args):
    return main_lazy(args) if args.config_file.endswith(".py") else main_yaml(args)


def build_parser():
    parser = default_argument_parser()
    parser.add_argument("--checkpoint", help="pretraining checkpoint or converted .pkl for the backbone")
    parser.add_argument("--coco-root", help="COCO root: annotations/instances_{train,val}2017.json, {train,val}2017/")
    parser.add_argument("--trust-source", action="store_true", help="allow legacy pickles (trusted files only)")
    parser.add_argument("--metrics-out", help="metrics JSON (default <OUTPUT_DIR>/metrics.json)")
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url,
           args=(args,))
