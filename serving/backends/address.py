"""Backend addresses: ``grpc://host:port``, ``http(s)://host:port``, ``embedded:PATH``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from serving.backends.errors import BackendConfigError

__all__ = ["ACCEPTED_FORMS", "Address", "BackendKind", "parse_address"]

BackendKind = Literal["grpc", "http", "embedded"]

ACCEPTED_FORMS = "grpc://host:port, http://host:port or embedded:<path>"

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
_HOST = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Address:
    """A parsed address: ``kind`` and ``target`` (``host:port`` for gRPC, the base URL for
    REST, the model base path for embedded)."""

    kind: BackendKind
    target: str


def parse_address(address: str) -> Address:
    """Parse a backend address; raise `BackendConfigError` naming the accepted forms."""
    if address.startswith("grpc://"):
        target = address[len("grpc://") :].rstrip("/")
        if not _HOST_PORT.match(target):
            raise BackendConfigError(f"{address!r}: expected grpc://host:port")
        return Address("grpc", target)
    if address.startswith(("http://", "https://")):
        rest = address.split("://", 1)[1].rstrip("/")
        if not _HOST_PORT.match(rest) and not _HOST.match(rest):
            raise BackendConfigError(f"{address!r}: expected http://host:port")
        return Address("http", address.rstrip("/"))
    if address.startswith("embedded:"):
        path = address[len("embedded:") :]
        if not path.strip():
            raise BackendConfigError(f"{address!r}: expected embedded:<path to the model base dir>")
        return Address("embedded", path)
    raise BackendConfigError(f"{address!r}: expected {ACCEPTED_FORMS}")
