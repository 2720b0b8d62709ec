"""The pure parts of PromQL rules: templating, the one number of an answer (and why there is
none), the comparison of a canary with its baseline, and the window a verdict judges."""

from __future__ import annotations

import json
import math

import pytest

from confbus.health_watcher.promql import (
    QueryFailed,
    Scope,
    compared,
    number_of,
    render,
    window_of,
)
from confbus.schemas.policy import HealthRule


def answer(result_type: str, result: object) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": result_type, "result": result}}
    ).encode()


def test_the_query_is_templated_with_the_scope() -> None:
    q = 'sum(rate(x{ns="{{namespace}}",v="{{version}}",n=~"{{nodes}}"}[{{window}}]))'
    out = render(q, namespace="web", version=7, nodes=["n2", "n1"], window="30s")
    assert out == 'sum(rate(x{ns="web",v="7",n=~"n1|n2"}[30s]))'


def test_one_number_or_the_reason_there_is_none() -> None:
    assert number_of(answer("vector", [{"metric": {}, "value": [1.0, "0.25"]}])) == 0.25
    assert number_of(answer("scalar", [1.0, "3"])) == 3.0
    cases = {
        answer("vector", []): "empty result",
        answer("vector", [{"value": [1, "1"]}, {"value": [1, "2"]}]): "2 series",
        answer("vector", [{"value": [1, "NaN"]}]): "NaN (no traffic",
        answer("matrix", []): "a matrix result",
        b'{"status": "error", "error": "parse error at char 4"}': "parse error at char 4",
        b"<html>": "not a Prometheus answer",
    }
    for body, why in cases.items():
        with pytest.raises(QueryFailed, match=why.replace("(", r"\(")):
            number_of(body)


def test_a_canary_against_its_baseline() -> None:
    assert compared("ratio", 0.1, 0.02) == pytest.approx(5.0)
    assert compared("difference", 0.1, 0.02) == pytest.approx(0.08)
    assert compared("ratio", 0.0, 0.0) == 1.0
    assert math.isinf(compared("ratio", 0.01, 0.0))  # errors where the baseline has none


def test_the_window_is_cut_to_the_time_since_the_switch() -> None:
    rule = HealthRule(name="r", metric="m", threshold=1.0, window_s=60.0, query="x")
    assert window_of(rule, Scope("web", 1, ["n1"], now=1000.0)) == 60.0
    assert window_of(rule, Scope("web", 1, ["n1"], now=1000.0, since=990.0)) == 10.0
    assert window_of(rule, Scope("web", 1, ["n1"], now=1000.0, since=999.9)) == 1.0
    assert window_of(rule, Scope("web", 1, ["n1"], now=1000.0, window_s=5.0)) == 5.0
