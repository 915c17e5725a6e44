"""The command lines' argparse: a bad argument gives one line on stderr and exit status 2.

Example::

    from serving.cli_parser import OneLineErrorParser
    parser = OneLineErrorParser(prog="python -m loadtest.modelserver")
    parser.parse_args(["--bogus"])   # stderr: "... error: unrecognized arguments: --bogus (see --help)"
"""

from __future__ import annotations

import argparse
from typing import NoReturn

USAGE_EXIT_STATUS = 2  # argparse's own


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT_STATUS, f"{self.prog}: error: {message} (see --help)\n")
