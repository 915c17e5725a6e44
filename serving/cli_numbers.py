"""Checked numbers for command lines and environment variables: one parser, one message style.

A `Number` says what a setting accepts (integer or finite float, bounds) and parses text
into it; NaN and infinity are never accepted. The message always reads ``expected <what>,
got <text>``; the caller names the setting: argparse prefixes ``argument --flag:``, the
gateway's config ``GATEWAY_NAME:``.

Example::

    from serving.cli_numbers import POSITIVE_FLOAT, Number
    parser.add_argument("--timeout", type=POSITIVE_FLOAT)   # "--timeout inf" → exit 2:
    # "argument --timeout: expected a finite number > 0, got 'inf'"
    POSITIVE_FLOAT.parse("nan")    # ValueError: expected a finite number > 0, got 'nan'
    Number(int, low=0, high=65535).parse("70000")   # ValueError: expected an integer in [0, 65535], ...
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

__all__ = [
    "FRACTION",
    "NON_NEGATIVE_FLOAT",
    "NON_NEGATIVE_INT",
    "PORT",
    "POSITIVE_FLOAT",
    "POSITIVE_INT",
    "RATIO",
    "Number",
]


@dataclass(frozen=True)
class Number:
    """An integer or finite float within optional bounds (``*_open``: the bound is excluded).

    Calling it parses text for argparse (``type=Number(...)``), raising
    ``argparse.ArgumentTypeError``; `parse` and `check` raise ``ValueError``.
    """

    kind: type[int] | type[float]
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    @property
    def description(self) -> str:
        """What is accepted, e.g. ``a finite number > 0`` or ``an integer in [0, 65535]``."""
        noun = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{noun} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high:g}"
        return noun

    def _ok(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.high_open else value > self.high)
        )

    def parse(self, text: str) -> int | float:
        """``text`` as this number; ``ValueError("expected ..., got 'text'")`` otherwise."""
        try:
            value = self.kind(text.strip())
        except (TypeError, ValueError):
            raise ValueError(f"expected {self.description}, got {text!r}") from None
        if not self._ok(value):
            raise ValueError(f"expected {self.description}, got {text!r}")
        return value

    def check(self, value: object) -> int | float:
        """An already-typed ``value`` (e.g. a config field set in code), checked the same way."""
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind is int:
            numeric = numeric and isinstance(value, int)
        if not numeric or not self._ok(value):  # type: ignore[arg-type]
            raise ValueError(f"expected {self.description}, got {value!r}")
        return value  # type: ignore[return-value]

    def __call__(self, text: str) -> int | float:
        try:
            return self.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


POSITIVE_INT = Number(int, low=1)
NON_NEGATIVE_INT = Number(int, low=0)
POSITIVE_FLOAT = Number(float, low=0, low_open=True)
NON_NEGATIVE_FLOAT = Number(float, low=0)
FRACTION = Number(float, low=0, high=1, high_open=True)  # [0, 1)
RATIO = Number(float, low=0, high=1)  # [0, 1]
#: A TCP port; 0 means "pick one" or "disabled", as the program documents.
PORT = Number(int, low=0, high=65535)
