"""An endpoint of ``cfg.api.<service>``, declared once: its name, subject, request and reply
types, and its deadline rule.

The server binds a handler to it (``confbus.runtime.api.serve_api``), every caller calls
through it (``confbus.runtime.api.call``), ``confbus up --secure`` derives its permissions
from it and ``schemas/asyncapi.json`` documents it. Nothing else spells an operation's name.

Three shapes of subject, all under ``cfg.api.<service>``:

- plain: ``get`` → ``cfg.api.store.get``;
- pinned (``confbus.runtime.identity``): ``approve.*`` → ``cfg.api.store.approve.<user>``, the
  caller's NATS user in the last token, ``propose.*.*`` → ``propose.<ns>.<user>``; a client
  names the tokens with ``as_user``;
- one per replica: ``export_{replica}`` → ``cfg.api.store.export_<token>``, answered only by
  the replica that holds a session; ``at(token)`` names it.

The deadline is how long a caller waits for the answer. It is one rule per operation so that
no two callers disagree: a switch's depends on its vote timeout, since the coordinator may
queue it behind another switch of the namespace. A caller may wait *longer* (a test under
load), and may give up *sooner* only on a read (``acts=False``), where not hearing back loses
an answer, never an act the service goes on to carry out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import msgspec

from confbus.schemas import subjects
from confbus.schemas.names import check_name

Req = TypeVar("Req")
Rep = TypeVar("Rep")

REPLICA = "{replica}"
# One subject token a replica may be named by: no '.', no wildcard, no space.
_TOKEN_RE = re.compile(r"^[^.*>\s]{1,64}$")


@dataclass(frozen=True)
class Deadline(Generic[Req]):
    """How long a caller waits for the answer to a request: a fixed number of seconds, or a
    rule of the request (``rule``, described in words by ``doc`` for the AsyncAPI document)."""

    seconds: float = 0.0
    rule: Callable[[Req], float] | None = None
    doc: str = ""

    def of(self, request: Req) -> float:
        return self.rule(request) if self.rule is not None else self.seconds

    def describe(self) -> str:
        return self.doc or f"{self.seconds:g} s"


# eq=False: an operation is its declaration, compared (and hashed) by identity.
@dataclass(frozen=True, eq=False)
class Operation(Generic[Req, Rep]):
    """One request/reply endpoint (``nats.micro``) of ``cfg.api.<service>``."""

    service: str
    name: str  # the endpoint's name (``$SRV.INFO``); its subject unless ``subject`` says
    request: type[Req]
    reply: type[Rep]
    deadline: Deadline[Req]
    summary: str
    # Whether it changes anything (a write, a switch, a rollback): a caller never gives up on
    # one before its deadline.
    acts: bool = False
    # For an act that is safe to repeat: why (a read always is). A call is retried after a
    # timeout or a 503 only if it is safe to repeat (``confbus.runtime.api.call``).
    idempotent: str = ""
    # The replica that takes a request says so at once (``confbus.runtime.api``), so that a
    # caller waiting on a long act finds out within a second when that replica dies, instead
    # of at the deadline — and, the act being idempotent, sends it again.
    acknowledged: bool = False
    # The subject tokens after ``cfg.api.<service>.`` when they are not just ``name``; a ``*``
    # token is filled in by ``as_user`` (the last one is always the caller's NATS user).
    subject: str = ""
    # What the ``*`` tokens before the identity hold (``propose.<namespace>.<user>``).
    scope: tuple[str, ...] = ()
    # A pinned operation's plain twin: the same act with a self-declared identity, which only
    # confbus services may use once authentication is on.
    twin: Operation[Any, Any] | None = None
    # What ``at``/``as_user`` made this from (None: this is the declaration).
    declared_as: Operation[Req, Rep] | None = field(default=None, repr=False)
    _decoder: msgspec.json.Decoder[Rep] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.tokens.split(".").count("*") != (len(self.scope) + 1 if self.pinned else 0):
            raise ValueError(f"{self.service}.{self.name}: name each scope token, then the user")

    # -- what it is ------------------------------------------------------------------------

    @property
    def declaration(self) -> Operation[Req, Rep]:
        """The constant this was declared as (itself, unless made by ``at``/``as_user``)."""
        return self.declared_as if self.declared_as is not None else self

    @property
    def tokens(self) -> str:
        """The subject after ``cfg.api.<service>.``: ``get``, ``approve.*``, ``export_{replica}``
        (a ``*`` is named by ``as_user``, ``{replica}`` by ``at``)."""
        return self.subject or self.name

    @property
    def pinned(self) -> bool:
        """The caller's NATS user is the last token of the subject."""
        return self.tokens.endswith(".*")

    @property
    def per_replica(self) -> bool:
        return REPLICA in self.name

    @property
    def pattern(self) -> str:
        """The subject as a NATS pattern (each token a caller fills in is ``*``)."""
        return subjects.api(self.service, self.tokens.replace(REPLICA, "*"))

    @property
    def address(self) -> str:
        """The subject a request is sent to; ``ValueError`` while a token is still open."""
        tokens = self.tokens
        if "*" in tokens.split(".") or REPLICA in tokens:
            raise ValueError(
                f"{self.service}.{self.name} needs its open subject tokens named "
                "(as_user / at) before it is called"
            )
        return subjects.api(self.service, tokens)

    @property
    def grant(self) -> str:
        """What a permission names to let a caller use this operation: its ``pattern``, except
        for one answered per replica (``export_<token>``), where it is every one-token subject
        of the service — a NATS wildcard stands for whole tokens only, so ``export_*`` would
        match nothing (permissions keep the acts they must not open in their denies)."""
        return subjects.api(self.service, "*") if self.per_replica else self.pattern

    def pattern_for(self, identity: str) -> str:
        """The subjects of a pinned operation that ``identity`` may use (the permission that
        pins it): ``cfg.api.store.approve.<identity>``, ``cfg.api.store.propose.*.<identity>``."""
        if not self.pinned:
            raise ValueError(f"{self.service}.{self.name} does not pin the caller's identity")
        return self.pattern.removesuffix("*") + check_name(identity, "identity")

    @property
    def retry_safe(self) -> bool:
        """Whether a request that may have reached the service can be sent again: a read, or
        an act declared ``idempotent``."""
        return not self.acts or bool(self.idempotent)

    def why_not_retried(self) -> str:
        """Why a request that may have reached the service is not sent again ("" if it is)."""
        if self.retry_safe:
            return ""
        return (
            f"{self.service}.{self.name} acts and may have been carried out already; "
            "sending it again could act twice"
        )

    def deadline_s(self, request: Req) -> float:
        return self.deadline.of(request)

    def decode_reply(self, data: bytes) -> Rep:
        # One reply decoder per operation (msgspec perf-tips), kept by the declaration for the
        # operations ``at``/``as_user`` make from it, and built at the first reply: building
        # one at import, for each of the ~80 operations, was start-up time every process paid.
        op = self.declaration
        decoder = op._decoder
        if decoder is None:
            decoder = msgspec.json.Decoder(op.reply)
            object.__setattr__(op, "_decoder", decoder)
        return decoder.decode(data)

    # -- naming the open tokens --------------------------------------------------------------

    def at(self, replica: str) -> Operation[Req, Rep]:
        """The operation of one replica: ``export_{replica}`` → ``export_<replica>``."""
        if not self.per_replica:
            raise ValueError(f"{self.service}.{self.name} is not answered per replica")
        if not _TOKEN_RE.fullmatch(replica):
            raise ValueError(f"{replica!r} cannot name a replica in a subject token")
        return replace(self, name=self.name.replace(REPLICA, replica), declared_as=self.declaration)

    def as_user(self, identity: str, *scope: str) -> Operation[Req, Rep]:
        """A pinned operation as ``identity`` calls it: ``approve.*`` → ``approve.<identity>``,
        ``propose.*.*`` with scope ``(ns,)`` → ``propose.<ns>.<identity>``. Every token is
        checked, so no name can become a wildcard."""
        parts = self.tokens.split(".")
        open_tokens = parts.count("*")
        if not self.pinned or open_tokens != len(scope) + 1:
            raise ValueError(
                f"{self.service}.{self.name} takes {max(open_tokens - 1, 0)} scope token(s) "
                "and an identity"
            )
        given = iter([*(check_name(s, "scope") for s in scope), check_name(identity, "identity")])
        tokens = ".".join(next(given) if p == "*" else p for p in parts)
        return replace(self, subject=tokens, declared_as=self.declaration)


def seconds(value: float) -> Deadline[Any]:
    """A deadline that does not depend on the request."""
    return Deadline(seconds=value)
