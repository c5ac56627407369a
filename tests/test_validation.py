"""The one judgement of configuration values that every configuration dialect uses."""

from __future__ import annotations

import math

import pytest

from growformer.validation import bool_from, int_from, is_finite, is_int, is_number, number_from


@pytest.mark.parametrize(
    ("value", "integer", "number"),
    [
        (3, True, True),
        (2.5, False, True),
        (True, False, False),
        ("3", False, False),
        (None, False, False),
    ],
)
def test_a_boolean_is_never_a_number(value, integer, number):
    assert (is_int(value), is_number(value)) == (integer, number)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_not_finite(value):
    assert not is_finite(value)


@pytest.mark.parametrize(
    ("value", "strings", "expected"),
    [
        (7, False, 7),
        ("7", False, None),
        ("7", True, 7),
        (" -2 ", True, -2),
        ("7.0", True, None),
        (True, True, None),
        (7.0, True, None),
    ],
)
def test_int_from(value, strings, expected):
    assert int_from(value, strings=strings) == expected


@pytest.mark.parametrize(
    ("value", "strings", "expected"),
    [
        (1, False, 1.0),
        (0.25, False, 0.25),
        ("0.25", False, None),
        ("0.25", True, 0.25),
        ("x", True, None),
        (False, True, None),
        ([0.5], True, None),
    ],
)
def test_number_from(value, strings, expected):
    assert number_from(value, strings=strings) == expected


def test_number_from_leaves_what_is_not_finite_to_the_caller():
    assert number_from(10**400) == 10**400 and math.isnan(number_from("nan", strings=True))


@pytest.mark.parametrize(
    ("value", "strings", "expected"),
    [
        (True, False, True),
        ("true", False, None),
        (" FALSE ", True, False),
        ("yes", True, None),
        (1, True, None),
    ],
)
def test_bool_from(value, strings, expected):
    assert bool_from(value, strings=strings) is expected
