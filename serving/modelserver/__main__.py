"""``python -m serving.modelserver``: see `serving.modelserver` for the flags and an example."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from serving.modelserver.server import main

sys.exit(main())
