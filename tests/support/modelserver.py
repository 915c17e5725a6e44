"""The model base directory integration tests serve (the session's ``exported_model``), and
writable copies of it.

Servers are started with ``loadtest.servers.start_modelserver``.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def model_base_for_tests(request) -> Path:
    """The session's ``exported_model`` base dir (a quickly trained model, version 1)."""
    return request.getfixturevalue("exported_model")


def writable_copy(model_base: Path, parent: Path) -> Path:
    """A copy of the base dir ``model_base`` at ``parent/fashion_mnist``, for a test to change."""
    base = parent / model_base.name
    shutil.copytree(model_base, base)
    return base
