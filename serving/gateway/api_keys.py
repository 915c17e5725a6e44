"""API keys of the gateway: read from the config, held as digests, compared in constant time.

``GATEWAY_API_KEYS`` (comma-separated) or ``GATEWAY_API_KEYS_FILE`` (one key per line; blank
lines and ``#`` comments ignored; e.g. a mounted Kubernetes Secret), never both. Only SHA-256
digests of the keys are kept, and every digest is compared with `hmac.compare_digest` on every
check (no early exit), so neither the time of an answer nor ``repr()`` of anything tells a
key. Keys are read once, at start-up: rotate them by restarting (a rolling restart on
Kubernetes). No Flask here: ``python -m serving.gateway`` checks the keys in gunicorn's master.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from pathlib import Path

from serving.gateway.config import ConfigError, GatewayConfig, env_name

__all__ = ["MIN_KEY_LENGTH", "ApiKeys", "load_api_keys"]

#: Shorter keys are refused at start-up (``openssl rand -hex 32`` gives 64 characters).
MIN_KEY_LENGTH = 16
# Visible ASCII without separators, so a key fits an HTTP header and a comma-separated list.
_KEY = re.compile(r"^[!-+\--~]+$")  # 0x21-0x7e except ','


class ApiKeys:
    """A set of accepted keys, held as SHA-256 digests; `matches` is constant-time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(k) for k in dict.fromkeys(keys))
        if not self._digests:
            raise ValueError("ApiKeys needs at least one key")

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys(<{len(self._digests)} keys>)"

    def matches(self, candidate: str) -> bool:
        """True when ``candidate`` is one of the keys (compares against every key)."""
        given = _digest(candidate)
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(digest, given)
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _check_keys(keys: list[str], source: str) -> list[str]:
    if not keys:
        raise ConfigError(f"{source} holds no API key")
    for i, key in enumerate(keys, 1):
        # The message names the key's position, never the key.
        if not _KEY.match(key):
            raise ConfigError(
                f"{source}: key {i} has characters other than visible ASCII (no spaces, commas)"
            )
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"{source}: key {i} is shorter than {MIN_KEY_LENGTH} characters "
                "(generate one with: openssl rand -hex 32)"
            )
    return keys


def load_api_keys(cfg: GatewayConfig) -> ApiKeys | None:
    """The keys ``cfg`` names (None: authentication off); `ConfigError` naming the variable."""
    if cfg.api_keys is not None:
        source = env_name("api_keys")
        keys = [k.strip() for k in cfg.api_keys.split(",") if k.strip()]
    elif cfg.api_keys_file is not None:
        source = f"{env_name('api_keys_file')}={cfg.api_keys_file}"
        try:
            text = Path(cfg.api_keys_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not a UTF-8 text file"
            raise ConfigError(f"{source}: cannot read the file: {reason}") from None
        lines = (line.strip() for line in text.splitlines())
        keys = [line for line in lines if line and not line.startswith("#")]
    else:
        return None
    return ApiKeys(_check_keys(keys, source))
