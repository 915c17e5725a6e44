"""``python -m training`` — see :mod:`training.cli` (``python -m training --help``)."""

import os
import sys

# TensorFlow's oneDNN kernels are off by default on CPUs without AVX-512 (this project's
# 2-core AVX2 machine among them); on, training costs about a quarter less CPU time
# (docs/BENCHMARKS.md). Read when TensorFlow is imported, so set before anything imports it;
# TF_ENABLE_ONEDNN_OPTS=0 in the environment turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from training.cli import main

if __name__ == "__main__":
    sys.exit(main())
