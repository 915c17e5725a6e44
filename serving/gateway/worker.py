"""The gateway's gunicorn worker: ``gthread`` that stops listening as soon as it stops accepting.

On SIGTERM gunicorn's master closes its copies of the listening sockets, but gunicorn 27's
``gthread`` worker keeps its own copies open while it drains the requests in flight (up to
``graceful_timeout``). Meanwhile the kernel still completes new TCP handshakes into the listen
backlog, so a new client is neither refused nor answered: it waits, then is reset when the
worker exits. `GatewayWorker` closes its listening sockets the moment it stops accepting, so
new connections are refused at once (clients and load balancers go elsewhere) while requests
in flight complete. ``tests/test_faults.py`` holds this.
"""

from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker

__all__ = ["GatewayWorker"]


class GatewayWorker(ThreadWorker):
    """gunicorn's ``gthread`` worker, closing its listeners when a graceful stop begins."""

    def set_accept_enabled(self, enabled: bool) -> None:
        """Start/stop accepting; once the worker is stopping, also close its listening sockets."""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()  # gunicorn's close() is idempotent; run() closes them again
