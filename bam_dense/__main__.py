"""``python -m bam_dense``: the ``bam-dense`` command (used by the Makefile before the console script exists)."""

import sys

from bam_dense.cli import main

sys.exit(main())
