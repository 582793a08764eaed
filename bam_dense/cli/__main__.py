"""``python -m bam_dense.cli``: the ``bam-dense`` command without the console script."""

import sys

from bam_dense.cli import main

sys.exit(main())
