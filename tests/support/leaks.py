"""What an answer of the gateway must never show a client: tracebacks, exception class names,
absolute paths of the server's files, internal host:port addresses.

Usage::

    from tests.support.leaks import leaks

    assert leaks(response.text, secrets=[str(model_dir), "127.0.0.1:8500"]) == []
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

# Loaded so that their exception classes are among the subclasses walked below.
import grpc  # noqa: F401
import PIL.Image  # noqa: F401
import requests  # noqa: F401
import werkzeug.exceptions  # noqa: F401

import serving.backends.errors
import serving.gateway.errors
import serving.preprocess  # noqa: F401

__all__ = ["exception_class_names", "leaks"]


def _subclasses(cls: type) -> Iterable[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@functools.cache
def exception_class_names() -> frozenset[str]:
    """Names of every exception class loaded in this process that reads like one
    (``ValueError``, ``ModelNotFound``, ``_InactiveRpcError``, ...; at least 6 characters)."""
    names = {c.__name__ for c in _subclasses(BaseException)}
    return frozenset(
        n
        for n in names
        if len(n) >= 6
        and re.fullmatch(r"_*[A-Z][A-Za-z0-9]*[a-z][A-Z][A-Za-z0-9]*|_*[A-Z]\w*Error", n)
    )


@functools.cache
def _class_pattern() -> re.Pattern[str]:
    alternatives = "|".join(sorted(map(re.escape, exception_class_names()), key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9_])(?:{alternatives})(?![A-Za-z0-9_])")


def leaks(text: str, secrets: Iterable[str] = ()) -> list[str]:
    """Every forbidden thing found in ``text``: ``secrets`` (paths, addresses), "Traceback",
    ``File "..."`` frames and exception class names."""
    found = [s for s in secrets if s and s in text]
    if "Traceback" in text:
        found.append("Traceback")
    found += re.findall(r'File "[^"]+", line \d+', text)
    named = set(_class_pattern().findall(text))
    # ...and anything shaped like one that is not loaded here (``_InactiveRpcError``)
    named |= set(re.findall(r"(?<![A-Za-z0-9])_*[A-Z][A-Za-z0-9]*(?:Error|Exception)\b", text))
    return found + sorted(named)
