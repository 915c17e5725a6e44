"""``python -m client`` — see :mod:`client.cli` for usage and exit codes."""

import sys

from client.cli import main

sys.exit(main())
