"""The gateway's gunicorn worker: ``gthread`` that stops listening as soon as it stops accepting.

On SIGTERM gunicorn's master closes its copies of the listening sockets, but gunicorn 27's
``gthread`` worker keeps its own copies open while it drains the requests in flight (up to
``graceful_timeout``). Meanwhile the kernel still completes new TCP handshakes into the listen
backlog, so a new client is neither refused nor answered: it waits, then is reset when the
worker exits. `GatewayWorker` closes its listening sockets the moment it stops accepting, so
new connections are refused at once (clients and load balancers go elsewhere) while requests
in flight complete. ``tests/test_faults.py`` holds this.

Its heartbeat to the master (touching a file) runs at most once a second, instead of on every
pass of the event loop, i.e. about every other request under load: each is a syscall and a GIL
release, and the master only needs one within ``--timeout`` (30 s by default).

It also starts all of its pool's threads at once: ``ThreadPoolExecutor`` starts them one at a
time, when a request finds none idle, so a worker's thread count rose whenever its concurrency
reached a new high. With the count fixed from the start, a rising count means a leak
(``python -m loadtest soak`` judges exactly that).
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

from gunicorn.workers.gthread import ThreadWorker

__all__ = ["GatewayWorker"]


class GatewayWorker(ThreadWorker):
    """gunicorn's ``gthread`` worker, closing its listeners when a graceful stop begins."""

    _last_notify = float("-inf")

    def notify(self) -> None:
        """The heartbeat, at most every second (and at least four times per ``timeout``)."""
        now = time.monotonic()
        if now - self._last_notify >= min(1.0, self.timeout / 4):
            self._last_notify = now
            super().notify()

    def get_thread_pool(self) -> futures.ThreadPoolExecutor:
        """gthread's pool, with every one of its ``threads`` threads already started."""
        pool = super().get_thread_pool()
        all_started = threading.Barrier(self.cfg.threads + 1)
        for _ in range(self.cfg.threads):
            pool.submit(all_started.wait)  # each waits, so the next submit starts a new thread
        all_started.wait(timeout=30)
        return pool

    def set_accept_enabled(self, enabled: bool) -> None:
        """Start/stop accepting; once the worker is stopping, also close its listening sockets."""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()  # gunicorn's close() is idempotent; run() closes them again
