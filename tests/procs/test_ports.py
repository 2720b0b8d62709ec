"""Ports for processes that dial each other: distinct, free, and never from the range the
kernel takes outgoing connections' source ports from."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from confbus.procs import ports


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    low, _ = ports.ephemeral_range()
    assert low - 10_000 >= 2_000, "this machine's range leaves no room below it"
    chosen = ports.free_ports(40)
    assert len(set(chosen)) == 40
    assert all(10_000 <= p < low for p in chosen)
    assert all(bindable(p) for p in chosen)


def test_without_room_below_the_range_the_kernel_chooses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wide = tmp_path / "ip_local_port_range"
    wide.write_text("1024\t65535\n")
    monkeypatch.setattr(ports, "_RANGE_FILE", wide)
    assert ports.ephemeral_range() == (1024, 65535)
    chosen = ports.free_ports(10)
    assert len(set(chosen)) == 10
    assert all(bindable(p) for p in chosen)
