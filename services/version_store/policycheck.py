"""Checks of a policy beyond what ``validate.check_policy`` covers: the values other services
read (strategies, shares, timeouts), and limits the bus itself imposes.

Every failure is an ``InvalidConfig`` whose ``where`` names the field, so ``confbus policy``
can say which flag was wrong.
"""

from __future__ import annotations

import re

from confbus.schemas.policy import Policy
from confbus.schemas.streams import MAX_PAYLOAD
from confbus.version_store.errors import InvalidConfig
from confbus.version_store.validate import check_policy

# Content travels base64-encoded inside a JSON message (a third larger), with metadata around it:
# a config larger than this could never be published or fetched over the bus.
MAX_CONTENT_BYTES = (MAX_PAYLOAD - 64 * 1024) * 3 // 4

_STRATEGY = re.compile(
    r"^(?:all-at-once"
    r"|canary:[1-9][0-9]{0,5}"
    r"|linear:(?:[1-9][0-9]?|100)%"
    r"|exponential:(?:[1-9][0-9]?|100)%)$"
)
_ROLLBACK_STRATEGY = re.compile(r"^(?:all-at-once|batches:[1-9][0-9]{0,5})$")
STRATEGIES = "all-at-once, canary:N (N nodes first), linear:N% or exponential:N% (N in 1..100)"


def check_strategy(strategy: str, where: str = "strategy") -> None:
    if not _STRATEGY.fullmatch(strategy):
        raise InvalidConfig(f"unknown rollout strategy {strategy!r}; expected {STRATEGIES}", where)


def check_full_policy(policy: Policy) -> None:
    """Refuse a policy the version-store, the distributor or the rollbacker could not honour."""
    check_policy(policy)
    if policy.max_bytes > MAX_CONTENT_BYTES:
        raise InvalidConfig(
            f"max_bytes {policy.max_bytes} is more than the bus can carry in one message "
            f"({MAX_CONTENT_BYTES} bytes of content)",
            "max_bytes",
        )
    check_strategy(policy.strategy)
    if not _ROLLBACK_STRATEGY.fullmatch(policy.rollback.strategy):
        raise InvalidConfig(
            f"unknown rollback strategy {policy.rollback.strategy!r}; "
            "expected all-at-once or batches:N",
            "rollback.strategy",
        )
    for name, value in (
        ("max_excluded", policy.max_excluded),
        ("rollback.healthy_threshold", policy.rollback.healthy_threshold),
    ):
        if not 0.0 <= value <= 1.0:
            raise InvalidConfig(f"{name} is a share: 0.0 to 1.0, got {value}", name)
    for name, value in (
        ("bake_s", policy.bake_s),
        ("rollback.batch_delay_s", policy.rollback.batch_delay_s),
        ("retry_unanswered_s", policy.retry_unanswered_s),
    ):
        if value < 0:
            raise InvalidConfig(f"{name} cannot be negative, got {value}", name)
    if policy.vote_timeout_s <= 0:
        raise InvalidConfig(
            f"vote_timeout_s must be positive, got {policy.vote_timeout_s}", "vote_timeout_s"
        )
    if policy.keep_versions < 1:
        raise InvalidConfig(
            f"keep_versions must be at least 1, got {policy.keep_versions}", "keep_versions"
        )
    for i, url in enumerate(policy.webhooks):
        if not url.startswith(("http://", "https://")):
            raise InvalidConfig("a webhook is an http:// or https:// URL", f"webhooks[{i}]")
