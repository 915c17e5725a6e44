"""The Flask gateway: preprocessing, metrics and errors in front of a model backend.

``create_app(config=None, *, backend=None)`` builds the app (see `serving.gateway.app`);
``python -m serving.gateway`` serves it under gunicorn (see `serving.gateway.__main__`).

`create_app` is imported lazily: ``python -m serving.gateway`` must set up prometheus-client's
multiprocess directory before Flask and prometheus-client are imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.gateway.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from serving.gateway.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
