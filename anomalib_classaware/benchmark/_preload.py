"""Imported by the benchmark's forkserver before the runner: keeps import-time deprecation noise off the console."""

import warnings

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

import anomalib_classaware.benchmark.runner  # noqa: E402, F401  (the import this module exists for)
