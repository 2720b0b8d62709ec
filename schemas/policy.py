"""The per-namespace policy, owned by the version-store and read by every other service."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

from confbus.schemas.names import Format, Label, Namespace, NodeId
from confbus.schemas.sealing import WrappedDataKey
from confbus.schemas.signing import SigningRule

MIB = 1024 * 1024
DEFAULT_MAX_BYTES = MIB
RETRY_UNANSWERED_S = 60.0


class HealthRule(msgspec.Struct, frozen=True, kw_only=True):
    """One health rule, e.g. ``error_rate > 0.05 over 30s``.

    ``metric`` is one of ``error_rate`` (errors / requests from counters), ``latency_p99_ms``
    (or another ``latency_pNN_ms``), ``health_status`` (HTTP status of a health endpoint),
    or the name of any gauge the agents forward.

    ``op`` and ``threshold`` describe the *bad* condition: ``error_rate > 0.05`` is unhealthy.
    The full semantics (windows, majority, hysteresis) are in ``services/health_watcher/README.md``.
    """

    name: str
    metric: str
    op: Literal[">", ">=", "<", "<=", "==", "!="] = ">"
    threshold: float
    window_s: float = 30.0
    min_samples: int = 3
    consecutive: int = 2  # hysteresis: this many bad evaluations in a row raise an alert
    # error_rate only: the counters whose increases over the window make the ratio
    # (a forwarded key, e.g. ``http_requests_total{code="500"}``; see the metric mapping).
    errors: str = "errors_total"
    requests: str = "requests_total"
    # PromQL (the policy's ``prometheus``): when ``query`` is set the rule's value is that
    # query's, run through Prometheus's HTTP API for verdicts (never for the watcher's own
    # alerts: route Prometheus's alerting rules through Alertmanager). ``metric`` then only names
    # the value. Templated: {{namespace}}, {{version}}, {{nodes}} (a regex of the judged node
    # ids, for ``=~``), {{window}} (e.g. ``30s``). An empty, NaN or failed result is no value.
    query: str = ""
    # PromQL whose value is the rule's sample count (e.g. requests in the window); fewer than
    # ``min_samples`` is no value. Without it a PromQL rule needs only a finite result.
    samples_query: str = ""
    # Canary against baseline: ``query`` runs once on the judged nodes and once on the nodes
    # still on the previous version (or, when none is left, on the judged nodes over the window
    # before ``since``), and ``op threshold`` judges ``canary / baseline`` (ratio) or
    # ``canary - baseline`` (difference). A canary value at or under ``floor`` is never bad.
    compare: Literal["", "ratio", "difference"] = ""
    floor: float = 0.0


class ScrapeTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A Prometheus (or plain health) endpoint the health-watcher scrapes itself.

    Its samples are attributed to ``node`` and tagged with the version that node's agent last
    reported applying (from its heartbeat); a node with no agent gives samples with no version,
    which no rule judges.
    """

    url: str  # http://host:port/path
    node: NodeId
    interval_s: float = 5.0


class PrometheusSource(msgspec.Struct, frozen=True, kw_only=True):
    """The Prometheus server the namespace's PromQL rules query (its HTTP API)."""

    url: str  # the base, e.g. http://prometheus:9090
    # A query that has not answered by then is no value (``on_missing_data``): a Prometheus
    # that is down or slow never holds a bake up past this.
    timeout_s: float = 3.0


class MailTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where the rollbacker mails rollout and rollback outcomes (SMTP)."""

    to: list[str]
    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "confbus@localhost"
    starttls: bool = False
    username: str = ""
    # The name of an environment variable of the rollbacker holding the SMTP password: the
    # password itself never sits in the policy (which events and backups carry).
    password_env: str = ""


class RollbackPolicy(msgspec.Struct, frozen=True, kw_only=True):
    automatic: bool = True
    strategy: str = "all-at-once"  # or "batches:N"
    batch_delay_s: float = 0.0
    healthy_threshold: float = 0.8  # share of a batch that must be healthy before the next
    # The suspect window: an alert rolls a version back only this long after it became
    # production — even one that passed its bake and is the last known good (then to the last
    # known good before it, and it loses its mark).
    window_s: float = 3600.0
    cooldown_s: float = 300.0
    max_per_window: int = 3
    cap_window_s: float = 3600.0


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    format: Format = "json"
    json_schema: dict[str, Any] | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    require_approval: bool = False
    strategy: str = "all-at-once"  # all-at-once | canary:N | linear:STEP% | exponential:START%
    bake_s: float = 0.0
    # Live targets that may miss their vote and be left out (they catch up later): a share
    # below 1 (0.1 = 10 %, of the rollout's live targets, rounded down to whole nodes), or a
    # count of nodes from 1 up. 0, the default: among live nodes the switch is all or nothing.
    # Nodes away when their wave comes are never counted: they were not there to vote.
    max_excluded: float = 0.0
    vote_timeout_s: float = 5.0
    # A wave that no ready node answered (the bus or the agents unreachable, not a bad config)
    # is retried with backoff for this long after its first attempt before the rollout fails.
    retry_unanswered_s: float = RETRY_UNANSWERED_S
    on_missing_data: Literal["pass", "fail"] = "pass"
    on_newer_version: Literal["supersede", "queue"] = "supersede"
    selector: dict[Label, Label] = {}
    health_rules: list[HealthRule] = []
    rollback: RollbackPolicy = RollbackPolicy()
    webhooks: list[str] = []
    secret: bool = False  # content never appears in events, logs or replay
    cold_start_last_good: bool = False  # agent restart with no bus serves the last known good
    keep_versions: int = 10  # versions an agent keeps on disk
    scrape_targets: list[ScrapeTarget] = []  # endpoints the health-watcher scrapes itself
    prometheus: PrometheusSource | None = None  # for rules with a ``query``
    mail: MailTarget | None = None  # rollout and rollback outcomes, besides ``webhooks``
    # Who must sign a version before the store takes it (confbus.schemas.signing). Agents hold
    # their own rule, from their trust roots file: this one is the store's early refusal.
    signing: SigningRule | None = None
    # A secret namespace's data keys, wrapped by the operator's KEK (newest last: new versions
    # are sealed with it; older ones still open the versions sealed before a rotation).
    data_keys: list[WrappedDataKey] = []


_canonical = msgspec.json.Encoder(order="sorted")


def policy_digest(policy: Policy) -> str:
    """A short fingerprint of everything a policy says (sha256 of its canonical JSON, 16 hex
    digits): a rejection records the one it was judged under, so that a retry after the
    policy changed is judged afresh rather than answered from the record."""
    return hashlib.sha256(_canonical.encode(policy)).hexdigest()[:16]
