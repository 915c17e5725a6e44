"""What ``python -m loadtest compare`` can measure: configurations and measurements.

A `Configuration` is one row that Locust loads: how to start what it needs (through
``loadtest.servers``) and which locustfile target and host to point Locust at. A `Measurement`
is a row measured without Locust (the in-process model limit). Both may say they cannot run
(``available`` returns the reason, e.g. the command that installs a peer); compare then
reports the row as skipped with that reason.

Example::

    @contextlib.contextmanager
    def _floor(ctx: Context) -> Iterator[str]:
        with start_floor("flask", env=ctx.gateway_env) as server:
            yield server.url                         # Locust's --host

    def configurations() -> list[Entry]:             # what a plug-in module exports
        return [Configuration("flask floor", "gateway", _floor, group="floor",
                              count_labels=False)]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.servers import Server

GROUPS = ("ours", "peer", "floor", "limit")


@dataclass
class Context:
    """What every row of one compare run shares.

    ``gateway_env`` is the ``GATEWAY_*`` settings (workers, threads, ...) given to the gateway
    and to anything that must run under the same server settings (the floors). ``shared``
    starts a server once and keeps it for the rest of the run (e.g. one model server behind
    several rows); everything started through it is stopped when the run ends.
    """

    model_dir: Path
    gateway_env: dict[str, str]
    stack: contextlib.ExitStack
    _servers: dict[str, Server] = field(default_factory=dict, repr=False)

    def shared(self, key: str, start: Callable[[], Server]) -> Server:
        """The server started under ``key`` (by ``start`` the first time)."""
        if key not in self._servers:
            self._servers[key] = self.stack.enter_context(start())
        return self._servers[key]


def always_available() -> str | None:
    """Nothing is missing."""
    return None


@dataclass(frozen=True)
class Configuration:
    """One Locust-loaded row.

    ``start(ctx)`` is a context manager that starts what the row needs and yields Locust's
    ``--host``; leaving it stops what it started. ``target`` is the locustfile's ``--target``
    and ``locust_args`` any further locustfile flags (e.g. ``("--peer", "bentoml")``).
    ``count_labels=False`` for rows that answer a fixed prediction on purpose (floors).
    """

    name: str
    target: str
    start: Callable[[Context], AbstractContextManager[str]]
    batch_size: int = 1
    group: str = "ours"
    available: Callable[[], str | None] = always_available
    locust_args: tuple[str, ...] = ()
    count_labels: bool = True
    note: str = ""


@dataclass(frozen=True)
class Measurement:
    """Rows measured without Locust: ``measure(ctx, images)`` returns one dict per row, each
    with at least ``name``, ``batch_size`` and ``images_per_second`` (other summary keys such
    as ``p50_ms`` optional). ``images`` is the same ImageSet Locust sends."""

    name: str
    measure: Callable[[Context, Any], list[dict[str, Any]]]
    group: str = "limit"
    available: Callable[[], str | None] = always_available
    note: str = ""


Entry = Configuration | Measurement
