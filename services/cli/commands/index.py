"""Every ``confbus`` command, written once: its name, the module of ``confbus.cli.commands``
that registers it, its line in ``confbus --help`` and the description heading
``confbus NAME --help``.

A module registers a command with ``command(sub, NAME)``, which takes the texts from here;
``confbus --help`` lists the commands from here without importing a single command module
(start-up: ``tests/cli/test_startup.py``, which also checks that the modules register exactly
these commands). The listing follows this order. It imports nothing: every start-up pays for it.
"""

from __future__ import annotations

from typing import NamedTuple

PACKAGE = "confbus.cli.commands"
DOCSTRING = "__doc__"
"""A ``description`` that is the docstring of the command's module (the account it gives)."""


class Command(NamedTuple):
    module: str  # in PACKAGE
    help: str
    description: str | None = None

    @property
    def module_path(self) -> str:
        return f"{PACKAGE}.{self.module}"


UP = """\
Run confbus on this machine: nats-server (JetStream, fsync on every message) with its store
under --data-dir, every stream and bucket, and every service as its own process. When all of
them serve, one line goes to stdout:

  confbus ready nats=nats://127.0.0.1:4222 data=/abs/.confbus services=NAME:HTTP_PORT,...

Logs are in DATA_DIR/logs/, where things are in DATA_DIR/stack.json. A service that crashes
is restarted. Ctrl-C or SIGTERM stops everything (exit 0). One stack per data directory.

--ha runs the production shape here instead: 3 nats-servers as one cluster (R3 streams and
buckets), 3 etcd members as the version store, and 2 replicas of each service; nats= then
lists the three servers. Ports: NATS P, P+1, P+2 (cluster P+2000.., monitoring P+4000..),
etcd E, E+2, E+4 (peers E+1, E+3, E+5), with P = --nats-port and E = --etcd-port.
"""

COMMANDS: dict[str, Command] = {
    "replay": Command(
        "events",
        "print the events of the audit log (CFG_EVENTS), oldest first",
        "Print the events of CFG_EVENTS that match FILTER, one per line, then exit. Examples: "
        "confbus replay; confbus replay payments --since 2h; confbus replay 'payments.rollout.>' "
        "--json; confbus replay --from-seq 120",
    ),
    "tail": Command(
        "events",
        "follow the audit log: print events as they happen (Ctrl-C to stop)",
        "Print new events of CFG_EVENTS that match FILTER as they are stored.",
    ),
    "up": Command("up", "run the whole stack on this machine: nats-server and every service", UP),
    "agent": Command(
        "agent",
        "run the node agent: keep FILE switched to NS's versions (confbus agent --help)",
        "Run the node agent: stage, vote, apply atomically, heartbeat.",
    ),
    "txns": Command(
        "txn",
        "list in-doubt transactions with their age",
        "List transactions that are prepared but not yet decided.",
    ),
    "publish": Command(
        "publish",
        "propose FILE as the next version of NS and wait for the outcome",
        "Publish FILE ('-' for stdin) as a change of NS on cfg.change.NS and wait for the version "
        "store: prints 'NS vN sha256=… (status)', or the rejection on stderr and exits 1. Without "
        "--id the change id is auto-<sha256[:24]>-<base>, so a retry is idempotent.",
    ),
    "history": Command("store", "list the versions of NS, newest first"),
    "show": Command(
        "store",
        "print the exact bytes of a version",
        "Write the exact stored bytes of a version to stdout (sha256 of the output is the "
        "version's). --info prints its metadata instead.",
    ),
    "diff": Command("store", "unified diff between two versions of NS"),
    "approve": Command("store", "approve a draft version (by someone other than its author)"),
    "reject": Command("store", "refuse a draft (or not yet rolled out) version for good"),
    "backup": Command(
        "backup",
        "write the versions and policies of NS (or of every namespace) to a file",
        DOCSTRING,
    ),
    "restore": Command(
        "backup",
        "restore namespaces from a backup file (hashes checked; all or nothing per NS)",
        DOCSTRING,
    ),
    "policy": Command(
        "policy",
        "show or change the policy of NS",
        "Without options: print the namespace's policy (JSON, which --file reads back). With "
        "--file and/or flags: show what changes, store the policy, print it.",
    ),
    "doctor": Command(
        "doctor",
        "check NATS, streams and replicas, the store's quorum, leaders and agents",
        DOCSTRING,
    ),
    "rollback": Command(
        "rollback",
        "roll NS back to its last known good (or --to VERSION), batch by batch",
        DOCSTRING,
    ),
    "rollout": Command(
        "rollout",
        "show the namespace's current or last rollout (waves, per-node report)",
        "Show the current or last rollout of NS: its waves and, per node, the outcome, attempts "
        "and timing.",
    ),
    "pause": Command(
        "rollout",
        "hold the namespace's running rollout at its next wave boundary",
        "Hold the namespace's running rollout at its next wave boundary.",
    ),
    "resume": Command("rollout", "let a paused rollout go on", "Let a paused rollout go on."),
    "abort": Command(
        "rollout",
        "end the namespace's rollout as failed (switched waves stay switched)",
        "End the namespace's rollout as failed (switched waves stay switched).",
    ),
    "status": Command(
        "rollout",
        "the fleet of a namespace: per node liveness, applied and target version",
        "Show NS's production version and, per node: liveness, applied version, sha256 of the "
        "live file, target version, last heartbeat and status.",
    ),
    "forget": Command(
        "rollout",
        "forget a node gone for good (its records and targets; node.forgotten)",
        "Forget NODE, which must not be live (stop its agent first): status no longer lists it, "
        "and node.forgotten is said in each namespace it followed. A node that comes back later "
        "is a new member.",
    ),
    "console": Command(
        "console",
        "tokens for the web console and its HTTP API",
        "Create, list and revoke the tokens the console (and its HTTP API, as 'Authorization: "
        "Bearer TOKEN') accepts. Roles: viewer (reads), publisher (also publishes), operator "
        "(also approves, rejects, sets policies, pauses, resumes, aborts and rolls back).",
    ),
    "keys": Command("keys", "signing keys, trust rules and encryption keys"),
    "why": Command(
        "timetravel",
        "why a node runs the version it runs: the chain of events, newest first",
        "Show the chain of events that put NODE on its version in NS: the apply, its transaction "
        "(votes, epoch), the wave and rollout (or catch-up, or rollback batch and the alert and "
        "verdict behind it), the version — each with its stream sequence.",
    ),
    "diff-fleet": Command(
        "timetravel",
        "which nodes changed version between two moments, and through which rollouts",
        "Compare the fleet of NS at two moments: each node whose applied version changed, and "
        "what made the change (wave, catch-up, rollback batch).",
    ),
}

MODULES = tuple(dict.fromkeys(c.module_path for c in COMMANDS.values()))
"""The command modules, in the order of their commands above."""
