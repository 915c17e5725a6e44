"""Whether the suite runs in CI, and the one way a test reports a missing tool or data file.

Under ``CI=true`` (``.ci/run`` sets it, as CI services do) everything the suite needs is
installed, so a missing tool or file is a failure; elsewhere the test is skipped with the
same message.

Usage::

    from tests.support.ci import missing
    if shutil.which("promtool") is None:
        missing("promtool not installed (apt-get install prometheus)")
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["in_ci", "missing"]


def in_ci() -> bool:
    """True when ``CI`` is set to anything but an empty/false value."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(message: str) -> NoReturn:
    """Fail the test under CI, skip it elsewhere."""
    if in_ci():
        pytest.fail(f"{message} (required under CI)")
    pytest.skip(message)
