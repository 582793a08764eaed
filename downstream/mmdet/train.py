#!/usr/bin/env python
"""`bam-dense det train` as a script, for launchers (single process, torchrun, srun).

    python downstream/mmdet/train.py CONFIG --checkpoint CKPT [options]
    torchrun --nproc_per_node=8 downstream/mmdet/train.py CONFIG --checkpoint CKPT --launcher pytorch
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a clone without installing

from bam_dense.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["det", "train", *sys.argv[1:]]))
