"""``python -m training`` — see :mod:`training.cli` (``python -m training --help``)."""

import os
import sys

# TensorFlow turns its oneDNN kernels on by default only on some CPUs; on this project's
# 2-core AVX2 machine they were off, and on they cost about a quarter less CPU per epoch
# (docs/BENCHMARKS.md). Read when TensorFlow is imported, so set before anything imports it;
# TF_ENABLE_ONEDNN_OPTS=0 in the environment keeps them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from training.cli import main

if __name__ == "__main__":
    sys.exit(main())
