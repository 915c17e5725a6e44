"""The model base directory integration tests serve (the session's ``exported_model``).

Servers are started with ``loadtest.servers.start_modelserver``.
"""

from __future__ import annotations

from pathlib import Path


def model_base_for_tests(request) -> Path:
    """The session's ``exported_model`` base dir (a quickly trained model, version 1)."""
    return request.getfixturevalue("exported_model")
