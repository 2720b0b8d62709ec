"""A locked-down bus: one NATS user per role, subject permissions, credentials
(docs/design.md §7.3).

``confbus up --secure`` calls ``secure_stack`` before it starts anything: it creates (or keeps)
the users and their random passwords under ``<data-dir>/secrets/`` (mode 0700; every file 0600),
renders the ``authorization`` block the embedded nats-server includes, and hands the services
the ``service`` user through their environment — never their argv, never a log line. The ready
line says where the credentials are (``secrets=DIR``); each user has ``DIR/<user>.env``::

    set -a; . .confbus/secrets/ci.env; set +a      # CONFBUS_NATS_USER / CONFBUS_NATS_PASSWORD
    confbus publish payments config.json --wait

The roles (``docs/security.md`` has the full matrix and the production set-up):

- ``service`` — the confbus services: everything, except voting or heartbeating for a node.
- ``operator`` (one per person: ``--operator alice``) — read every stream and API; act
  (approve, reject, promote, policy, rollback, pause, restore) through the APIs, with its own
  name pinned in the subject of every act that records who did it.
- ``ci`` (``--ci NAME[=NS,NS]``) — propose changes (only for its namespaces, if given) as
  itself, the reads a pipeline needs (get, history, dry_run, change_status, rollout status),
  and the events; nothing else.
- ``agent-<node>`` (``--agent NODE``) — vote, heartbeat, report health and applies for its own
  node id; read ``CFG_TXN``; ask the coordinator to resolve; fetch a version it lacks.

Three modules: ``permissions`` (what each role may publish and subscribe to, derived from the
operations ``confbus.schemas.api`` declares), ``roster`` (the users and the files that hold
them) and ``command`` (``confbus up --secure`` and ``python -m confbus.cli.security``).

``python -m confbus.cli.security --data-dir DIR --agent n3`` adds users to a stack's secrets
(and, if that stack runs, makes its nats-server reload them); ``--secrets-dir`` renders the same
files anywhere, e.g. for a production NATS cluster.
"""

from __future__ import annotations

from confbus.cli.security.command import (
    Secured,
    add_secure_args,
    configure,
    main,
    roster_from_args,
    secure_stack,
)
from confbus.cli.security.permissions import (
    Permissions,
    agent_permissions,
    ci_permissions,
    operator_permissions,
    render_permissions,
    service_permissions,
)
from confbus.cli.security.roster import (
    Roster,
    User,
    load_roster,
    render_authorization,
    write_secrets,
)

__all__ = [
    "Permissions",
    "Roster",
    "Secured",
    "User",
    "add_secure_args",
    "agent_permissions",
    "ci_permissions",
    "configure",
    "load_roster",
    "main",
    "operator_permissions",
    "render_authorization",
    "render_permissions",
    "roster_from_args",
    "secure_stack",
    "service_permissions",
    "write_secrets",
]
