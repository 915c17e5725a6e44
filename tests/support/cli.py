"""``python -m loadtest`` called in the test process (no interpreter start-up per case).

Usage::

    from tests.support.cli import loadtest_main

    assert loadtest_main(["run", "--users", "0", ...]) == 2
"""

from __future__ import annotations

from loadtest.__main__ import main


def loadtest_main(argv: list[str]) -> int:
    """``python -m loadtest`` in this process; argparse's errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)
