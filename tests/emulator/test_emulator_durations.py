"""OpenAI's duration strings: known examples and a format/parse round trip."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from o1common.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.12, "120ms"),
        (0.0004, "1ms"),
        (1, "1s"),
        (7.66, "7.66s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (3600, "1h0m0s"),
        (3725.25, "1h2m5.25s"),
    ],
)
def test_known_examples(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(math.ceil(seconds * 1000) / 1000)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("1h2m3.5s", 3723.5), ("1.5s", 1.5), ("250us", 0.00025), ("0s", 0.0), ("2m", 120.0)],
)
def test_parse_go_style(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "abc", "5", "1x", "s", "1s2", "-1s"])
def test_parse_rejects_bad_strings_naming_them(bad: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


def test_format_rejects_negative() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        format_duration(-1)


@given(st.integers(min_value=0, max_value=10**9))
def test_round_trip_milliseconds(ms: int) -> None:
    assert round(parse_duration(format_duration(ms / 1000)) * 1000) == ms


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_format_rounds_up_to_the_millisecond(seconds: float) -> None:
    parsed = parse_duration(format_duration(seconds))
    assert seconds - 1e-9 <= parsed < seconds + 0.001 + 1e-9
