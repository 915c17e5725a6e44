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
from pathlib import Path

from loadtest.periodic import Periodic
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


class VersionSwapper(Periodic):
    """Every ``every_s`` seconds: publish a copy of the newest version as newest + 1, then remove
    the oldest while more than ``keep`` versions remain. Runs in a daemon thread between
    `start` and `stop`; an error stops it and is kept in ``error`` (and logged)."""

    def __init__(self, base: str | os.PathLike[str], every_s: float, *, keep: int = 2):
        if keep < 1:
            raise ValueError("keep must be >= 1")
        super().__init__(every_s, name="version-swapper")
        self.base = Path(base)
        self.keep = keep
        self.published: list[int] = []
        self.removed: list[int] = []
        self.error: str = ""

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

    def tick(self) -> bool:
        """One swap; False (stop) after a failed one."""
        try:
            self.swap_once()
        except OSError as exc:
            self.error = f"version swap failed: {exc}"
            log.error("%s", self.error)
            return False
        return True
