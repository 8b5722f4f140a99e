"""Sizes and durations: `parse_size` and `parse_duration`, including fuzzing."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import PolicyError, parse_duration, parse_size

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4
MAX_BYTES = 2**63 - 1
T = TypeVar("T")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1, 1),
        (4096, 4096),
        (1024.0, 1024),
        ("4096", 4096),
        ("4096b", 4096),
        ("4096B", 4096),
        ("100k", 100 * KiB),
        ("100K", 100 * KiB),
        ("100KB", 100 * KiB),
        ("100KiB", 100 * KiB),
        ("100kib", 100 * KiB),
        ("512M", 512 * MiB),
        ("512MB", 512 * MiB),  # binary on purpose: MB means MiB, as in docker and cgroup tools
        ("512MiB", 512 * MiB),
        ("1.5G", 3 * GiB // 2),
        ("1.5GiB", 3 * GiB // 2),
        ("2T", 2 * TiB),
        ("1P", 1024**5),
        (" 64 M ", 64 * MiB),
        (".5k", 512),
        ("1.", 1),
        ("0.1k", 102),  # fractional bytes round down
        (str(MAX_BYTES), MAX_BYTES),
    ],
)
def test_parse_size_accepts(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        0,
        -1,
        "0",
        "0k",
        "0.0001k",
        "",
        "   ",
        "M",
        "12X",
        "1.5.G",
        "1e9",
        "-5M",
        "+5M",
        "5 M B",
        "5ib",
        "١٢",  # non-ASCII digits
        "1" * 65,
        True,
        False,
        None,
        1.5,
        float("inf"),
        float("nan"),
        MAX_BYTES + 1,
        "8E",
        str(MAX_BYTES + 1),
        [1],
        b"1M",
    ],
)
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(PolicyError) as info:
        parse_size(bad, "resources.memory")
    err = info.value
    assert err.path == "resources.memory"
    assert err.value is bad or err.value == bad or (isinstance(bad, float) and math.isnan(bad))
    assert "resources.memory" in str(err)


def test_parse_size_message_says_what_is_expected() -> None:
    with pytest.raises(PolicyError, match=r"'512M'.*\(got '12X'\)"):
        parse_size("12X", "memory")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (90, 90.0),
        (0.5, 0.5),
        ("90", 90.0),
        ("1.5", 1.5),
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1m 30s", 90.0),
        (" 2M ", 120.0),
        (1_000_000_000, 1e9),
    ],
)
def test_parse_duration_accepts(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        0,
        -1,
        0.0,
        -0.5,
        "0",
        "0s",
        "",
        "s",
        "1x",
        "1 h h",
        "1y",
        "-5s",
        "inf",
        "nan",
        float("inf"),
        float("nan"),
        True,
        None,
        [60],
        1e9 + 1,
        "1" * 65,
    ],
)
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(PolicyError) as info:
        parse_duration(bad, "resources.timeout")
    assert info.value.path == "resources.timeout"
    assert "resources.timeout" in str(info.value)


def test_default_paths() -> None:
    with pytest.raises(PolicyError) as size_info:
        parse_size("x")
    with pytest.raises(PolicyError) as duration_info:
        parse_duration("x")
    assert (size_info.value.path, duration_info.value.path) == ("size", "duration")


@given(st.integers(min_value=1, max_value=2**40), st.sampled_from(["", "b", "k", "M", "G", "T"]))
@settings(max_examples=300, deadline=None)
def test_parse_size_units_are_binary(number: int, unit: str) -> None:
    power = {"": 0, "b": 0, "k": 1, "M": 2, "G": 3, "T": 4}[unit]
    expected = number * 1024**power
    if expected > MAX_BYTES:
        with pytest.raises(PolicyError):
            parse_size(f"{number}{unit}")
    else:
        assert parse_size(f"{number}{unit}") == expected


def _outcome(parse: Callable[[object, str], T], value: object) -> T | PolicyError:
    """The parsed value, or the PolicyError; any other exception fails the test."""
    try:
        return parse(value, "x")
    except PolicyError as err:
        return err


_SIZE_LIKE = st.from_regex(r"\A\s?[-+]?\d{0,22}\.?\d{0,4}\s?[kKmMgGtTpPeEbBi]{0,3}\s?\Z")
_ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
    _SIZE_LIKE,
)


@given(_ANYTHING)
@settings(max_examples=300, deadline=None)
def test_parse_size_returns_a_size_or_raises_policy_error(value: object) -> None:
    size = _outcome(parse_size, value)
    if isinstance(size, PolicyError):
        assert size.path == "x"
        assert str(size).startswith("x: ")
    else:
        assert type(size) is int
        assert 1 <= size <= MAX_BYTES


_DURATION_LIKE = st.from_regex(r"\A\s?[-+]?\d{0,12}\.?\d{0,4}\s?(ms|s|m|h|d|x)?(\d{1,3}[smh])?\Z")


@given(st.one_of(_ANYTHING, _DURATION_LIKE))
@settings(max_examples=300, deadline=None)
def test_parse_duration_returns_seconds_or_raises_policy_error(value: object) -> None:
    seconds = _outcome(parse_duration, value)
    if isinstance(seconds, PolicyError):
        assert seconds.path == "x"
        assert str(seconds).startswith("x: ")
    else:
        assert type(seconds) is float
        assert 0 < seconds <= 1e9
        assert math.isfinite(seconds)


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"pids": 1}, "resources.pids"),
        ({"fds": 15}, "resources.fds"),
        ({"memory": (1 << 20) - 1}, "resources.memory"),
        ({"memory": "100k"}, "resources.memory"),
    ],
)
def test_limits_below_what_a_sandbox_needs_to_start(kwargs: dict[str, object], path: str) -> None:
    from policies import PolicyError, ResourcePolicy

    with pytest.raises(PolicyError, match="at least") as err:
        ResourcePolicy(**kwargs)  # type: ignore[arg-type]
    assert err.value.path == path
    ResourcePolicy(pids=2, fds=16, memory=1 << 20)  # the minimums themselves are fine
