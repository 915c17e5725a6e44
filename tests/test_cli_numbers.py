"""serving.cli_numbers: the one checked-number parser of every CLI and of the gateway's env."""

from __future__ import annotations

import argparse
import math

import pytest

from serving.cli_numbers import (
    FRACTION,
    NON_NEGATIVE_FLOAT,
    PORT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    RATIO,
    Number,
)


@pytest.mark.parametrize(
    ("rule", "text", "value"),
    [
        (POSITIVE_INT, "3", 3),
        (POSITIVE_INT, " 12 ", 12),
        (POSITIVE_FLOAT, "0.5", 0.5),
        (POSITIVE_FLOAT, "1e3", 1000.0),
        (NON_NEGATIVE_FLOAT, "0", 0.0),
        (FRACTION, "0", 0.0),
        (RATIO, "1", 1.0),
        (PORT, "0", 0),
        (PORT, "65535", 65535),
    ],
)
def test_accepted_values(rule, text, value):
    assert rule.parse(text) == value
    assert type(rule.parse(text)) is rule.kind
    assert rule(text) == value


@pytest.mark.parametrize(
    ("rule", "text", "message"),
    [
        (POSITIVE_FLOAT, "inf", "expected a finite number > 0, got 'inf'"),
        (POSITIVE_FLOAT, "-inf", "expected a finite number > 0, got '-inf'"),
        (POSITIVE_FLOAT, "nan", "expected a finite number > 0, got 'nan'"),
        (POSITIVE_FLOAT, "1e999", "expected a finite number > 0, got '1e999'"),
        (POSITIVE_FLOAT, "0", "expected a finite number > 0, got '0'"),
        (NON_NEGATIVE_FLOAT, "-0.1", "expected a finite number >= 0, got '-0.1'"),
        (POSITIVE_INT, "0", "expected an integer >= 1, got '0'"),
        (POSITIVE_INT, "1.5", "expected an integer >= 1, got '1.5'"),
        (POSITIVE_INT, "", "expected an integer >= 1, got ''"),
        (FRACTION, "1", "expected a finite number in [0, 1), got '1'"),
        (RATIO, "1.01", "expected a finite number in [0, 1], got '1.01'"),
        (PORT, "65536", "expected an integer in [0, 65535], got '65536'"),
        (Number(float, high=10, high_open=True), "10", "expected a finite number < 10, got '10'"),
        (Number(float), "soon", "expected a finite number, got 'soon'"),
    ],
)
def test_refused_values_have_one_message_style(rule, text, message):
    with pytest.raises(ValueError) as info:
        rule.parse(text)
    assert str(info.value) == message
    with pytest.raises(argparse.ArgumentTypeError) as info:
        rule(text)
    assert str(info.value) == message


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 0, -1, True, "1", None])
def test_check_refuses_typed_values(value):
    with pytest.raises(ValueError, match=r"^expected a finite number > 0, got "):
        POSITIVE_FLOAT.check(value)


def test_check_wants_an_int_for_an_integer_rule():
    assert POSITIVE_INT.check(3) == 3
    with pytest.raises(ValueError, match=r"^expected an integer >= 1, got 3.0$"):
        POSITIVE_INT.check(3.0)


def test_argparse_names_the_flag():
    parser = argparse.ArgumentParser(prog="p", exit_on_error=False)
    parser.add_argument("--timeout", type=POSITIVE_FLOAT)
    with pytest.raises(argparse.ArgumentError) as info:
        parser.parse_args(["--timeout", "inf"])
    assert str(info.value) == "argument --timeout: expected a finite number > 0, got 'inf'"
