#!/usr/bin/env python
"""Pretraining entry point: ``python pretrain/train.py --config FILE [KEY.SUB=VALUE ...]``.

Same arguments as ``bam-dense pretrain``. Several processes on one or more nodes::

    torchrun --nproc_per_node=8 pretrain/train.py --config configs/pretrain/bam_vit_small_16gpu.yaml
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 pretrain/train.py --config ...

and on SLURM with ``pretrain/slurm.sh``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from bam_dense.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
