"""The agent's health forwarding: the Prometheus mapping, scraping real HTTP endpoints, and a
real agent process forwarding a real app's /metrics as samples tagged with its version."""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream, TaskGroup

from confbus.agent.disk import NamespaceDisk
from confbus.agent.health import HealthForwarder
from confbus.agent.main import add_agent_args, build_agent
from confbus.procs.agent import agent_argv
from confbus.procs.nats import NatsServer
from confbus.procs.proc import Proc
from confbus.runtime.bus import Bus
from confbus.runtime.scrape import MAX_METRICS, PromMapper, Scraper, histogram_quantile
from confbus.runtime.tcp import TcpListener
from confbus.schemas import subjects
from confbus.schemas.health import HealthSample, decode_sample
from tests.health_watcher.app import HEALTH_PATH, MetricsApp

# -- the mapping -------------------------------------------------------------------------------

PAGE = """\
# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{code="200",method="GET"} 90
http_requests_total{code="500",method="GET"} 10
# HELP http_requests_created Creation time.
# TYPE http_requests_created gauge
http_requests_created{code="200",method="GET"} 1.7e9
# TYPE errors_total counter
errors_total 10
# TYPE queue_depth gauge
queue_depth{queue="a"} 2
queue_depth{queue="b"} 5
# TYPE temperature gauge
temperature NaN
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{handler="x",quantile="0.5"} 0.01
rpc_duration_seconds{handler="x",quantile="0.99"} 0.2
rpc_duration_seconds{handler="y",quantile="0.99"} 0.35
rpc_duration_seconds_sum{handler="x"} 4
rpc_duration_seconds_count{handler="x"} 100
# TYPE payload_bytes summary
payload_bytes{quantile="0.9"} 512
"""


def test_prometheus_page_maps_to_named_metrics() -> None:
    m = PromMapper().map_text(PAGE)
    assert m["http_requests_total"] == 100
    assert m['http_requests_total{code="500",method="GET"}'] == 10
    assert m["errors_total"] == 10
    assert m["queue_depth"] == 7 and m['queue_depth{queue="b"}'] == 5
    assert not any("created" in k for k in m)
    assert "temperature" not in m  # NaN cannot travel in JSON
    # Summary quantiles: seconds → ms, the worst label set.
    assert m["rpc_duration_p99_ms"] == pytest.approx(350)
    assert m["rpc_duration_p50_ms"] == pytest.approx(10)
    assert m["rpc_duration_seconds_count"] == 100
    assert m["payload_bytes_p90"] == 512  # no time unit: kept as it is
    # The one timed family is also the latency alias the default rules name.
    assert m["latency_p99_ms"] == pytest.approx(350)
    assert all(math.isfinite(v) for v in m.values())


def test_latency_alias_only_when_unambiguous() -> None:
    two = PAGE + '# TYPE db_seconds summary\ndb_seconds{quantile="0.99"} 1\n'
    assert "latency_p99_ms" not in PromMapper().map_text(two)
    own = '# TYPE latency_ms summary\nlatency_ms{quantile="0.99"} 42\n'
    assert PromMapper().map_text(own) == {"latency_p99_ms": 42}


def _histogram(counts: dict[str, float]) -> str:
    lines = ["# TYPE req_seconds histogram"]
    lines += [f'req_seconds_bucket{{le="{le}"}} {n}' for le, n in counts.items()]
    lines += [f"req_seconds_count {counts['+Inf']}", "req_seconds_sum 1"]
    return "\n".join(lines) + "\n"


def test_histogram_quantiles_describe_the_last_interval() -> None:
    mapper = PromMapper()
    first = mapper.map_text(_histogram({"0.1": 100, "1": 100, "+Inf": 100}))
    assert "req_p99_ms" not in first  # no interval yet
    assert first["req_seconds_count"] == 100
    # 100 new observations, all between 0.1 s and 1 s: the lifetime p50 would be < 0.1 s.
    second = mapper.map_text(_histogram({"0.1": 100, "1": 200, "+Inf": 200}))
    assert second["req_p50_ms"] == pytest.approx(550)
    assert second["latency_p99_ms"] == pytest.approx(991)
    # Nothing observed since: no quantile rather than a stale one.
    assert "req_p99_ms" not in mapper.map_text(_histogram({"0.1": 100, "1": 200, "+Inf": 200}))
    # The app restarted (counts dropped): its new counts are the interval.
    after = mapper.map_text(_histogram({"0.1": 10, "1": 10, "+Inf": 10}))
    assert after["req_p99_ms"] == pytest.approx(99)


def test_histogram_quantile_edges() -> None:
    inf = math.inf
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(1.0, 5)]) is None  # no +Inf bucket
    assert histogram_quantile(0.5, [(1.0, 0), (inf, 0)]) is None
    assert histogram_quantile(0.99, [(1.0, 1), (inf, 10)]) == 1.0  # in +Inf: the last bound


def test_plain_text_is_not_metrics_and_the_cap_holds() -> None:
    for text in ("OK", '{"status": "ok"}', "<html>up</html>", ""):
        with pytest.raises(ValueError):
            PromMapper().map_text(text)
    many = "".join(f'm{{i="{i}"}} {i}\n' for i in range(2 * MAX_METRICS))
    m = PromMapper().map_text(many)
    assert len(m) == MAX_METRICS and m["m"] == sum(range(2 * MAX_METRICS))


# -- scraping real endpoints --------------------------------------------------------------


@pytest.fixture
async def app() -> AsyncIterator[MetricsApp]:
    app = MetricsApp()
    async with anyio.create_task_group() as tg:
        await app.start(tg)
        yield app
        tg.cancel_scope.cancel()


async def _chunked_server(tg: TaskGroup, body: bytes) -> int:
    async def serve(stream: SocketStream) -> None:
        async with stream:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += await stream.receive()
            chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
            out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            out += b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
            await stream.send(out)

    listener = await TcpListener.bind("127.0.0.1")
    tg.start_soon(listener.serve, serve)
    return listener.port


async def test_scrapes_metrics_plain_health_failures_and_chunked_bodies(app: MetricsApp) -> None:
    app.serve_traffic(200, 0.25)
    res = await Scraper(app.url()).scrape()
    assert res.status_code == 200 and res.error == ""
    assert res.metrics["requests_total"] == 200 and res.metrics["errors_total"] == 50
    assert res.metrics['app_requests_total{code="500"}'] == 50
    assert res.metrics["latency_p99_ms"] == pytest.approx(50)

    plain = await Scraper(app.url(HEALTH_PATH)).scrape()
    assert (plain.status_code, plain.metrics, plain.error) == (200, {}, "")
    app.health_status = 503
    assert (await Scraper(app.url(HEALTH_PATH)).scrape()).status_code == 503

    with anyio.fail_after(5):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()  # a port nobody listens on
    refused = await Scraper(f"http://127.0.0.1:{port}/metrics").scrape()
    assert refused.status_code is None and "failed" in refused.error
    bad_url = await Scraper("https://example.invalid/metrics").scrape()
    assert "http://" in bad_url.error

    async with anyio.create_task_group() as tg:
        chunked = await _chunked_server(tg, b"requests_total 7\nerrors_total 1\n")
        res = await Scraper(f"http://127.0.0.1:{chunked}/metrics").scrape()
        assert res.metrics == {"requests_total": 7, "errors_total": 1}
        tg.cancel_scope.cancel()


async def test_forwarder_publishes_per_namespace_and_errors(bus: Bus, app: MetricsApp) -> None:
    sub = await bus.nc.subscribe("cfg.health.>")
    versions: dict[str, int | None] = {"web": 4, "db": None}
    fwd = HealthForwarder("n1", app.url(), lambda: versions, interval_s=0.1)
    sent = await fwd.forward_once(bus)
    assert [(s.namespace, s.version) for s in sent] == [("web", 4), ("db", None)]
    got = {}
    for _ in range(2):
        msg = await sub.next_msg(timeout=5)
        got[msg.subject] = decode_sample(msg.data)
    assert set(got) == {subjects.health("web", "n1"), subjects.health("db", "n1")}
    assert got[subjects.health("web", "n1")].metrics["in_flight"] == 3

    down = HealthForwarder("n1", "http://127.0.0.1:1/metrics", lambda: {"web": 4}, 0.1)
    (sample,) = await down.forward_once(bus)
    assert sample.error and sample.status_code is None and sample.metrics == {}
    await sub.unsubscribe()


def test_agent_flags() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_agent_args(parser)
    base = ["--node", "n1", "--namespace", "web", "--path", "/tmp/x"]
    agent = build_agent(parser.parse_args([*base, "--health-url", "http://127.0.0.1:9/m"]))
    assert agent.health_url == "http://127.0.0.1:9/m" and agent.health_interval_s == 5.0
    assert build_agent(parser.parse_args(base)).health_url is None
    with pytest.raises(SystemExit, match="health-url"):
        build_agent(parser.parse_args([*base, "--health-url", "ftp://x/metrics"]))
    with pytest.raises(SystemExit, match="health-interval"):
        build_agent(
            parser.parse_args([*base, "--health-url", "http://h/m", "--health-interval", "0"])
        )


async def test_agent_process_forwards_its_apps_metrics_with_the_applied_version(
    bus: Bus, nats_server: NatsServer, app: MetricsApp, tmp_path: Path
) -> None:
    live, state = tmp_path / "etc" / "web.json", tmp_path / "state"
    live.parent.mkdir()
    content = b'{"fail_ratio": 0}\n'
    disk = NamespaceDisk("web", live, state)
    disk.load()
    assert disk.apply(3, hashlib.sha256(content).hexdigest(), content)

    sub = await bus.nc.subscribe(subjects.health("web", "n1"))
    health = ("--health-url", app.url(), "--health-interval", "0.1")
    argv = agent_argv(nats_server.url, "n1", {"web": live}, state, *health)
    proc = Proc("agent-n1", argv, tmp_path)
    await anyio.to_thread.run_sync(proc.start)
    try:

        async def next_sample() -> HealthSample:
            return decode_sample((await sub.next_msg(timeout=10)).data)

        first = await next_sample()
        assert first.version == 3 and first.node == "n1" and first.status_code == 200
        assert first.metrics["requests_total"] == 0

        app.serve_traffic(1000, 0.1)
        with anyio.fail_after(10):
            while (s := await next_sample()).metrics.get("requests_total") != 1000:
                pass
        assert s.metrics["errors_total"] == 100 and s.version == 3
        assert s.metrics['app_requests_total{code="500"}'] == 100
        assert app.scrapes >= 2
    finally:
        await anyio.to_thread.run_sync(proc.stop)
        await sub.unsubscribe()
