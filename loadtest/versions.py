"""Publishing and removing model versions in a base path while servers poll it.

`publish_copy` adds a version the way ``training.export`` writes one (into a dot folder that
``list_versions`` ignores, then renamed, so a poller never sees it half-written);
`remove_version` deletes one the same way (renamed away first). `VersionSwapper` does both
on a timer during a soak::

    from loadtest.versions import VersionSwapper, publish_copy

    publish_copy(base, 1, 2)                       # base/2 = a copy of base/1
    with VersionSwapper(base, every_s=10, keep=2) as swapper:
        ...                                        # every 10 s: one new version, oldest removed
    swapper.published, swapper.removed
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from types import TracebackType

from serving.contract import list_versions

log = logging.getLogger(__name__)


def publish_copy(base: str | os.PathLike[str], src: int, dst: int) -> Path:
    """Publish version ``dst`` under ``base`` as a copy of version ``src``: copy, then rename."""
    root = Path(base)
    final = root / str(dst)
    if final.exists():
        raise FileExistsError(f"version {dst} already exists under {root}")
    tmp = root / f".tmp-{dst}-{os.getpid()}"
    shutil.copytree(root / str(src), tmp)
    os.rename(tmp, final)
    return final


def remove_version(base: str | os.PathLike[str], version: int) -> None:
    """Remove version ``version`` under ``base`` (renamed to a dot folder first, then deleted)."""
    root = Path(base)
    doomed = root / f".rm-{version}-{os.getpid()}"
    os.rename(root / str(version), doomed)
    shutil.rmtree(doomed)


class VersionSwapper:
    """Every ``every_s`` seconds: publish a copy of the newest version as newest + 1, then remove
    the oldest while more than ``keep`` versions remain. Runs in a daemon thread between
    `start` and `stop`; an error stops it and is kept in ``error`` (and logged)."""

    def __init__(self, base: str | os.PathLike[str], every_s: float, *, keep: int = 2):
        if every_s <= 0 or keep < 1:
            raise ValueError("every_s must be > 0 and keep >= 1")
        self.base = Path(base)
        self.every_s = every_s
        self.keep = keep
        self.published: list[int] = []
        self.removed: list[int] = []
        self.error: str = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def swap_once(self) -> None:
        """One swap: publish newest + 1, remove the oldest beyond ``keep``."""
        versions = list_versions(self.base)
        if not versions:
            raise FileNotFoundError(f"no version under {self.base} to copy")
        new = versions[-1] + 1
        publish_copy(self.base, versions[-1], new)
        self.published.append(new)
        for old in versions[: max(0, len(versions) + 1 - self.keep)]:
            remove_version(self.base, old)
            self.removed.append(old)
        log.info("versions: published %d, now %s", new, list_versions(self.base))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.swap_once()
            except OSError as exc:
                self.error = f"version swap failed: {exc}"
                log.error("%s", self.error)
                return

    def start(self) -> VersionSwapper:
        """Start swapping in a daemon thread (the first swap after ``every_s``)."""
        self._thread = threading.Thread(target=self._run, name="version-swapper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop swapping (waits for a swap in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def __enter__(self) -> VersionSwapper:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
