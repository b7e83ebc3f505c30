"""``python -m anomalib_classaware.benchmark``: same as the ``anomalib-classaware-bench`` console script."""

import sys

from anomalib_classaware.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
