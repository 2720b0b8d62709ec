"""``--overlay SELECTOR=FILE`` and ``--for LABELS`` as the CLI parses them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from confbus.cli.commands.args import overlay_arg, selector_arg


def test_the_selector_is_everything_before_the_last_equals_sign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    for name in ("eu1.yaml", "conf/web.json"):
        (tmp_path / name).write_text("{}")
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


def test_a_missing_overlay_file_is_said_before_anything_connects(tmp_path: Path) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"cannot read .*: no such file"):
        overlay_arg(f"dc=eu1={tmp_path / 'eu1.yaml'}")


def test_an_empty_selector_is_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="empty selector"):
        selector_arg(" , ")
