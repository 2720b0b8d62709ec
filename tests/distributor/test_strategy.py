"""Strategies and selectors: the grammar, the waves, and the errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confbus.distributor.strategy import (
    InvalidSelector,
    InvalidStrategy,
    NoTargets,
    Strategy,
    parse_selector,
    parse_strategy,
)
from confbus.runtime.errors import InvalidInput


def nodes(n: int) -> list[str]:
    return [f"n{i:03d}" for i in range(n)]


@pytest.mark.parametrize(
    ("text", "n", "sizes"),
    [
        ("all-at-once", 8, [8]),
        (None, 3, [3]),
        ("linear:25%", 8, [2, 2, 2, 2]),
        ("linear:30%", 8, [3, 2, 3]),
        ("linear:50%", 3, [2, 1]),
        ("linear:10%", 4, [1, 1, 1, 1]),
        ("canary:1", 8, [1, 7]),
        ("canary:2", 2, [2]),
        ("canary:10", 4, [4]),
        ("canary:25%", 8, [2, 6]),
        ("exponential:10%", 8, [1, 1, 2, 3, 1]),
        ("exponential:25%", 8, [2, 2, 4]),
        ("exponential:100%", 5, [5]),
        ("linear:100%", 5, [5]),
    ],
)
def test_waves(text: str | None, n: int, sizes: list[int]) -> None:
    waves = parse_strategy(text).waves(nodes(n))
    assert [len(w) for w in waves] == sizes
    assert [x for w in waves for x in w] == nodes(n)  # in node order, each once


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("blue-green", "unknown strategy 'blue-green'"),
        ("linear", "linear needs an argument"),
        ("linear:25", "a percentage like 25%"),
        ("linear:0%", "above 0"),
        ("exponential:150%", "at most 100"),
        ("canary:0", "at least one node"),
        ("canary:abc", "a node count or a percentage"),
        ("canary:-1", "a node count or a percentage"),
    ],
)
def test_bad_strategies_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(InvalidStrategy) as err:
        parse_strategy(text)
    assert says in str(err.value)
    assert "expected all-at-once, canary:N" in str(err.value)
    assert isinstance(err.value, InvalidInput)  # a permanent, clear refusal


def test_canonical_text_round_trips() -> None:
    for text in ("all-at-once", "canary:3", "canary:5%", "linear:25%", "exponential:12.5%"):
        assert str(parse_strategy(text)) == text
        assert parse_strategy(str(parse_strategy(text))) == parse_strategy(text)


def test_empty_target_set_is_refused() -> None:
    with pytest.raises(NoTargets):
        Strategy("linear", percent=25).waves([])


def test_selectors() -> None:
    assert parse_selector(None) == {}
    assert parse_selector("dc=eu1, tier=web") == {"dc": "eu1", "tier": "web"}
    assert parse_selector({"dc": "eu1"}) == {"dc": "eu1"}
    for bad, says in (
        ("dc", "is not KEY=VALUE"),
        ("dc=eu 1", "label value 'eu 1'"),
        ({"": "x"}, "label name ''"),
        ("dc=eu1,dc=us1", "given twice"),
        ({"dc": "eu1", "*": "x"}, "label name '*'"),
    ):
        with pytest.raises(InvalidSelector, match="invalid selector") as err:
            parse_selector(bad)
        assert says in str(err.value)


strategies = st.one_of(
    st.just("all-at-once"),
    st.integers(1, 20).map(lambda n: f"canary:{n}"),
    st.integers(1, 100).map(lambda p: f"linear:{p}%"),
    st.integers(1, 100).map(lambda p: f"exponential:{p}%"),
    st.integers(1, 100).map(lambda p: f"canary:{p}%"),
)


@given(strategies, st.integers(1, 300))
def test_waves_partition_the_targets(text: str, n: int) -> None:
    waves = parse_strategy(text).waves(nodes(n))
    assert all(waves)
    assert [x for w in waves for x in w] == nodes(n)
    if text == "all-at-once":
        assert len(waves) == 1
    if text.startswith("canary:") and not text.endswith("%"):
        assert len(waves[0]) == min(n, int(text.split(":")[1]))
        assert len(waves) <= 2
