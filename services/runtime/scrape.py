"""Scraping an app's health into the flat ``metrics`` of a ``HealthSample``.

Shared by the agent (``--health-url``) and the health-watcher (``Policy.scrape_targets``), so
that a rule names the same metric whoever scraped it. The page is parsed with
``prometheus_client.parser`` — never by hand.

The mapping (the names rules use)
---------------------------------
- **counters, gauges, untyped**: the sample name, summed over its label sets
  (``requests_total``, ``errors_total``, ``queue_depth``); each labelled series also under its
  full key, labels sorted by name: ``http_requests_total{code="500",method="GET"}``. The
  ``<base>_created`` timestamps prometheus_client adds beside counters and histograms are dropped.
- **summaries** ``F``: each quantile as ``<base>_p<NN>[_ms]`` — the maximum over label sets (the
  worst handler); ``F_sum`` and ``F_count`` as counters.
- **histograms** ``F``: ``p50, p90, p95, p99`` estimated from the bucket *increases since the
  previous scrape* (linear interpolation within a bucket, as Prometheus' ``histogram_quantile``),
  so the value describes the last interval, not the process's whole life; left out on the first
  scrape and when nothing was observed in between; ``F_sum`` and ``F_count`` as counters.
- **units**: a family ending in ``_seconds`` gives milliseconds: ``request_latency_seconds`` →
  ``request_latency_p99_ms``; ``_milliseconds`` / ``_ms`` stay as they are
  (``latency_ms`` → ``latency_p99_ms``); any other family keeps its unit (``size_bytes_p99``).
- **the latency alias**: when exactly one summary/histogram family is in a time unit and no
  family already produced ``latency_p*`` keys, its quantiles are *also* forwarded as
  ``latency_pNN_ms`` — the name the default rules use.
- NaN and infinite values are left out (JSON cannot carry them). At most ``MAX_METRICS`` keys per
  sample: the aggregates and quantiles first, then labelled series.

A page that does not parse as the Prometheus text format (``OK``, JSON, HTML) is a plain health
endpoint: only its ``status_code`` is forwarded. A non-200 answer is not parsed at all. A scrape
that fails (refused, timed out, malformed HTTP) gives ``error``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from confbus.runtime.http import HttpError, http_get_url

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

MAX_METRICS = 512
HISTOGRAM_QUANTILES = (0.5, 0.9, 0.95, 0.99)
_TIME_UNITS = (("_seconds", 1000.0), ("_milliseconds", 1.0), ("_ms", 1.0))


@dataclass(frozen=True)
class ScrapeResult:
    metrics: dict[str, float]
    status_code: int | None
    error: str = ""


def series_key(name: str, labels: dict[str, str]) -> str:
    """``name{a="x",b="y"}``: labels sorted by name, values escaped as in the text format."""
    if not labels:
        return name
    inner = ",".join(
        '{}="{}"'.format(k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
        for k, v in sorted(labels.items())
    )
    return f"{name}{{{inner}}}"


def quantile_name(family: str, q: float) -> tuple[str, float, bool]:
    """(key, scale, timed) of quantile ``q`` of ``family``: ``lat_seconds``, 0.99 →
    (``lat_p99_ms``, 1000, True)."""
    pct = format(round(q * 100, 4), "g").replace(".", "_")
    for suffix, scale in _TIME_UNITS:
        if family.endswith(suffix) and len(family) > len(suffix):
            return f"{family[: -len(suffix)]}_p{pct}_ms", scale, True
    return f"{family}_p{pct}", 1.0, False


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``q`` of cumulative ``(upper bound, count)`` buckets sorted by bound (the last is
    ``+Inf``), interpolated linearly inside the bucket — Prometheus' algorithm."""
    if not buckets or not math.isinf(buckets[-1][0]):
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # in the +Inf bucket: the highest finite bound is all we know
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


@dataclass
class PromMapper:
    """Maps one endpoint's pages to metrics; keeps its histograms' previous buckets."""

    _previous: dict[str, dict[float, float]] = field(default_factory=dict)

    def map_text(self, text: str) -> dict[str, float]:
        """Raise ``ValueError`` when ``text`` is not the Prometheus text format."""
        # Imported at the first page: prometheus_client's package is ~1.3 MB of RSS, which an
        # agent forwarding no app's health never needs.
        from prometheus_client.parser import text_string_to_metric_families

        families = list(text_string_to_metric_families(text))
        if not families:
            raise ValueError("no metrics in the page")
        return self.map_families(families)

    def map_families(self, families: Iterable[Metric]) -> dict[str, float]:
        first: dict[str, float] = {}  # aggregates and quantiles
        labelled: dict[str, float] = {}
        timed: list[dict[float, float]] = []  # per timed family: q -> value in ms

        def add(name: str, labels: dict[str, str], value: float) -> None:
            if not math.isfinite(value):
                return
            first[name] = first.get(name, 0.0) + float(value)
            if labels:
                labelled[series_key(name, labels)] = float(value)

        def add_quantiles(family: str, qs: dict[float, float]) -> None:
            ms: dict[float, float] = {}
            for q, value in sorted(qs.items()):
                key, scale, is_timed = quantile_name(family, q)
                if math.isfinite(value):
                    first[key] = value * scale
                    if is_timed:
                        ms[q] = value * scale
            if ms:
                timed.append(ms)

        families = list(families)
        names = {s.name for fam in families for s in fam.samples}

        def is_created(name: str) -> bool:
            # prometheus_client exposes each counter's, summary's and histogram's creation
            # time as a separate gauge, ``<base>_created``: a timestamp, not a health signal.
            base = name.removesuffix("_created")
            return base != name and bool(
                {f"{base}_total", f"{base}_count", f"{base}_bucket", base} & names
            )

        for fam in families:
            if fam.type == "summary":
                qs: dict[float, float] = {}
                for s in fam.samples:
                    if s.name == fam.name and "quantile" in s.labels:
                        try:
                            q = float(s.labels["quantile"])
                        except ValueError:
                            continue
                        qs[q] = max(qs.get(q, -math.inf), s.value)
                    elif s.name in (f"{fam.name}_sum", f"{fam.name}_count"):
                        add(s.name, s.labels, s.value)
                add_quantiles(fam.name, qs)
            elif fam.type in ("histogram", "gaugehistogram"):
                cumulative: dict[float, float] = {}
                for s in fam.samples:
                    if s.name == f"{fam.name}_bucket" and "le" in s.labels:
                        try:
                            le = float(s.labels["le"])
                        except ValueError:
                            continue
                        if math.isfinite(s.value):
                            cumulative[le] = cumulative.get(le, 0.0) + s.value
                    elif s.name in (f"{fam.name}_sum", f"{fam.name}_count"):
                        add(s.name, s.labels, s.value)
                add_quantiles(fam.name, self._interval_quantiles(fam.name, cumulative))
            else:
                for s in fam.samples:
                    if not is_created(s.name):
                        add(s.name, s.labels, s.value)

        if len(timed) == 1 and not any(k.startswith("latency_p") for k in first):
            for q, value in timed[0].items():
                first[quantile_name("latency_ms", q)[0]] = value
        out = dict(list(first.items())[:MAX_METRICS])
        for key, value in labelled.items():
            if len(out) >= MAX_METRICS:
                break
            out.setdefault(key, value)
        return out

    def _interval_quantiles(
        self, family: str, cumulative: dict[float, float]
    ) -> dict[float, float]:
        previous = self._previous.get(family)
        self._previous[family] = cumulative
        if previous is None:
            return {}  # no interval yet: a lifetime quantile would hide a fresh regression
        if previous.keys() != cumulative.keys() or any(
            cumulative[le] < previous[le] for le in cumulative
        ):
            delta = dict(cumulative)  # the app restarted (or changed buckets): count afresh
        else:
            delta = {le: cumulative[le] - previous[le] for le in cumulative}
        buckets = sorted(delta.items())
        out: dict[float, float] = {}
        for q in HISTOGRAM_QUANTILES:
            value = histogram_quantile(q, buckets)
            if value is not None:
                out[q] = value
        return out


@dataclass
class Scraper:
    """One endpoint: ``scrape()`` never raises — a failure is the result's ``error``."""

    url: str
    timeout_s: float = 5.0
    mapper: PromMapper = field(default_factory=PromMapper)

    async def scrape(self) -> ScrapeResult:
        try:
            status, body = await http_get_url(self.url, timeout=self.timeout_s)
        except TimeoutError:
            return ScrapeResult({}, None, f"no answer from {self.url} within {self.timeout_s}s")
        except (
            OSError,
            HttpError,
            ValueError,
            anyio.EndOfStream,
            anyio.BrokenResourceError,
        ) as exc:
            return ScrapeResult({}, None, f"scrape of {self.url} failed: {exc}"[:300])
        if status != 200:
            return ScrapeResult({}, status)
        try:
            metrics = self.mapper.map_text(body.decode("utf-8", "replace"))
        except ValueError:
            metrics = {}  # a plain health endpoint ("OK", JSON, ...): the status is the signal
        return ScrapeResult(metrics, status)
