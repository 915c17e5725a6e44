"""Exceptions raised by the convserve clients; all subclass :class:`ClientError`."""

from __future__ import annotations

__all__ = [
    "ClientConnectionError",
    "ClientError",
    "ClientInputError",
    "ClientTimeout",
    "ServerError",
]


class ClientError(Exception):
    """Base class of every error the clients raise."""


class ClientInputError(ClientError):
    """A local input cannot be sent: missing/unreadable file, not an image, bad pixel array."""


class ClientConnectionError(ClientError):
    """The server cannot be reached (connection refused, DNS failure, gRPC UNAVAILABLE)."""


class ClientTimeout(ClientError):
    """The server did not answer within the timeout."""


class ServerError(ClientError):
    """The server answered with an error.

    ``status`` is the HTTP status (for gRPC, the status the gateway would use), ``code`` the
    machine-readable error code (e.g. ``invalid_image``, ``model_not_ready``), ``message``
    the server's human message.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @property
    def is_input_error(self) -> bool:
        """True when the server rejected the input itself (400, 413, 415)."""
        return self.status in (400, 413, 415)
