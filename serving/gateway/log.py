"""Logging for the gateway: configured once, to stderr, with the request id on every line.

`configure_logging` is idempotent (it marks its handler), so calling it from every
`create_app` is safe. Records logged outside a request show ``-`` as the request id.
"""

from __future__ import annotations

import logging
import sys

from flask import g, has_request_context

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (the current request's id, or ``-``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = "-"
        if has_request_context():
            rid = g.get("request_id", "-")
        record.request_id = rid
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send all log records to stderr with the request id; safe to call more than once."""
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "_convserve_gateway", False):
            break
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(RequestIdFilter())
        handler._convserve_gateway = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
