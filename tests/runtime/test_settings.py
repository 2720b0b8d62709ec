"""A process's flags fill the fields their dests name: the common ones ``Settings``, a
process's own ones its own dataclass (``from_flags``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from confbus.runtime.settings import add_common_args, from_flags, settings_from_args


@dataclass
class Worker:
    name: str
    retry_s: float = 1.0
    paths: list[str] = field(default_factory=list)
    instance: str = "own run id"  # the same name as a common flag's, another meaning
    started: bool = field(default=False, init=False)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    parser.add_argument("--name", required=True)
    parser.add_argument("--retry", dest="retry_s", type=float, default=2.5)
    parser.add_argument("--path", dest="path", action="append", default=[])
    return parser.parse_args(argv)


def test_own_flags_fill_their_fields_and_given_values_the_rest() -> None:
    args = parse("--name", "w1", "--path", "a", "--path", "b", "--instance", "replica-2")
    worker = from_flags(args, Worker, paths=[p.upper() for p in args.path])
    assert (worker.name, worker.retry_s, worker.paths) == ("w1", 2.5, ["A", "B"])
    # --instance is a common flag: it names the replica (Settings), not the worker's field.
    assert worker.instance == "own run id" and not worker.started
    assert settings_from_args(args).instance == "replica-2"


def test_a_given_value_wins_over_the_flag_of_its_name() -> None:
    worker = from_flags(parse("--name", "w1", "--retry", "9"), Worker, retry_s=0.5)
    assert worker.retry_s == 0.5
