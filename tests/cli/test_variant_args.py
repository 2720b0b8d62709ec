"""``--overlay SELECTOR=FILE`` and ``--for LABELS`` as the CLI parses them."""

from __future__ import annotations

import argparse

import pytest

from confbus.cli.commands.args import overlay_arg, selector_arg


def test_the_selector_is_everything_before_the_last_equals_sign() -> None:
    assert overlay_arg("dc=eu1=eu1.yaml") == ({"dc": "eu1"}, "eu1.yaml")
    assert overlay_arg("dc=eu1,tier=web=conf/web.json") == (
        {"dc": "eu1", "tier": "web"},
        "conf/web.json",
    )
    assert selector_arg("dc=eu1, tier=web") == {"dc": "eu1", "tier": "web"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("eu1.yaml", "expected SELECTOR=FILE"),
        ("dc=eu1=", "expected SELECTOR=FILE"),
        ("dc=eu1", "is not KEY=VALUE"),  # the selector "dc" alone, file "eu1"
        ("dc=e u=x.json", "must match"),
    ],
)
def test_a_bad_overlay_says_what_would_be_right(text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        overlay_arg(text)


def test_an_empty_selector_is_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="empty selector"):
        selector_arg(" , ")
