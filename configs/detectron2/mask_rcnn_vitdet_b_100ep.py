# ViTDet Mask R-CNN on a ViT-B/16 (DOWNSTREAM.md 3c), as a detectron2 LazyConfig: detectron2's own ViT with
# window attention (global in blocks 2/5/8/11) and relative positions, simple feature pyramid from the last
# block, LSJ at 1024 (flip, ResizeScale 0.1-2.0, FixedSizeCrop), batch 64, 184,375 iterations (100 epochs),
# AdamW lr 1e-4 wd 0.1 with layer-wise decay 0.7, pos_embed without weight decay, AMP.
# Run: python downstream/detectron2/train_net.py --config-file configs/detectron2/mask_rcnn_vitdet_b_100ep.py \
#        --checkpoint bam_vitb.pth --num-gpus 8 --coco-root /datasets/coco
# train.init_checkpoint is set to the converted .pkl (timm names, matched by suffix to backbone.net.*).
from functools import partial

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

image_size = 1024
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.RandomFlip)(horizontal=True),
            L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
            L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
        ],
        image_format="RGB",
        use_instance_mask=True,
        recompute_boxes=True,
    ),
    total_batch_size=64,
    num_workers=8,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DatasetMapper)(is_train=False, augmentations=[L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)],
                            image_format="RGB"),
    num_workers=4,
)
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = ""  # set by train_net.py --checkpoint (a .pkl with matching_heuristics)
train.max_iter = 184375  # 100 epochs at batch 64

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[163889, 177546], num_updates=train.max_iter),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
optimizer.lr = 1e-4
optimizer.weight_decay = 0.1
