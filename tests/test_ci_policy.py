"""Under CI a missing tool or data file fails the run: every skip goes through
tests/support/ci.py `missing`, which fails under ``CI=true`` and skips elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.ci import in_ci, missing

TESTS = Path(__file__).resolve().parent
SKIPS = re.compile(r"pytest\.skip\(|pytest\.mark\.skip(if)?\b|importorskip\(|pytest\.xfail\(")


def test_no_test_skips_on_its_own():
    offenders = [
        f"{path.relative_to(TESTS)}:{n}"
        for path in sorted(TESTS.rglob("*.py"))
        if path.name not in ("ci.py", Path(__file__).name)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SKIPS.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("", False), ("false", False), ("0", False)],
)
def test_in_ci_reads_the_ci_variable(monkeypatch, value, expected):
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_missing_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(
        pytest.fail.Exception, match=r"^promtool not installed \(required under CI\)$"
    ):
        missing("promtool not installed")


def test_missing_skips_elsewhere(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^promtool not installed$"):
        missing("promtool not installed")
