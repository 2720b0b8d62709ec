"""``confbus up``: the embedded single-machine stack (docs/design.md §7.1).

Starts nats-server (JetStream, ``sync_interval: always``) under ``--data-dir``, provisions
streams and buckets, runs every service below as its own process, and prints one line when
all of them serve:

    confbus ready nats=nats://127.0.0.1:4222 data=/abs/.confbus services=coordinator:41234,…

Adding a service to the stack is one row in ``SERVICES``: a name, the module that
``python -m`` runs (built on ``confbus.runtime.service.service_main``, so it takes
``--nats-url``/``--http-port`` and prints the JSON ready line), and its own arguments. A row
whose module does not exist yet is skipped, so the stack runs with whatever has been built.
A ready line's extra ``<name>_port`` or ``<name>_url`` keys show up in the stack's line as
``<name>=URL`` (health-watcher's Alertmanager receiver, for one).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from importlib.util import find_spec
from pathlib import Path

from confbus.cli import security
from confbus.cli.commands import console
from confbus.cli.commands.options import DATA_DIR, Option, Subparsers, add, command
from confbus.cli.exitcodes import FAILED, USAGE, CliError
from confbus.cli.ha import HaPorts
from confbus.cli.stack import ServiceSpec, Stack, StackConfig
from confbus.procs.etcd import ETCD_HINT, etcd_binary


def _store_url(data_dir: Path, opts: argparse.Namespace) -> list[str]:
    url = opts.store or f"sqlite://{(data_dir / 'store.db').as_posix()}"
    return ["--store", url]


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("version-store", "confbus.version_store", _store_url),
    ServiceSpec("coordinator", "confbus.coordinator"),
    ServiceSpec("distributor", "confbus.distributor"),
    ServiceSpec("health-watcher", "confbus.health_watcher"),
    ServiceSpec("rollbacker", "confbus.rollbacker"),
    ServiceSpec("historian", "confbus.historian"),
    ServiceSpec("console", "confbus.console"),
)


_NATS_PORT = Option(
    ("--nats-port",),
    {
        "type": int,
        "default": "4222",  # a str, as from the environment: argparse applies type
        "help": "port of the embedded nats-server on 127.0.0.1; 0 picks a free one",
    },
    env="CONFBUS_NATS_PORT",
)
_LOG_LEVEL = Option(
    ("--log-level",),
    {"default": "info", "help": "the services' log level"},
    env="CONFBUS_LOG_LEVEL",
)


def register(sub: Subparsers) -> None:
    p = command(sub, "up")
    add(p, DATA_DIR.but(help="JetStream store, SQLite store, logs"), _NATS_PORT)
    p.add_argument(
        "--nats-url",
        dest="external_nats",
        metavar="URL",
        help="use this NATS (with JetStream) instead of starting nats-server",
    )
    p.add_argument(
        "--ha",
        action="store_true",
        help="the production shape on this machine: 3 NATS (a cluster), 3 etcd members, "
        "2 replicas of each service (needs etcd-server)",
    )
    p.add_argument(
        "--etcd-port",
        type=int,
        default=None,
        help="with --ha: first etcd client port (default 2379; free ports with --nats-port 0)",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="version-store backend: sqlite:///path or etcd://host:port,… "
        "(default: sqlite under the data dir)",
    )
    p.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="SERVICE",
        help="do not run this service (repeatable), e.g. to run it yourself in a debugger",
    )
    p.add_argument(
        "--add-service",
        action="append",
        default=[],
        metavar="NAME=MODULE",
        help="also run `python -m MODULE` as NAME (repeatable): your own service built "
        "on services.runtime",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long each service may take to be ready (default %(default)s)",
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a service may take to stop before SIGKILL (default %(default)s)",
    )
    add(p, _LOG_LEVEL)
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="echo the services' logs on stderr (they always go to DATA_DIR/logs/)",
    )
    security.add_secure_args(p)
    p.set_defaults(run_local=run_local)


def run_local(args: argparse.Namespace) -> int:
    return Stack(stack_config(args)).run()


# The fields of StackConfig that are a flag under their own name: of ``confbus up``, and the
# connection's, of ``confbus`` itself. stack_config works out the others.
_UP_FLAGS = ("nats_port", "ready_timeout", "stop_timeout", "log_level", "verbose")
_NATS_LOGIN_FLAGS = ("nats_user", "nats_password", "nats_creds", "tls_ca")


def stack_config(args: argparse.Namespace) -> StackConfig:
    services = [spec for spec in SERVICES if spec.runnable()]
    known = {spec.name for spec in SERVICES}
    unknown = set(args.without) - known
    if unknown:
        raise CliError(
            f"--without {', '.join(sorted(unknown))}: no such service "
            f"(known: {', '.join(sorted(known))})",
            USAGE,
        )
    services = [spec for spec in services if spec.name not in args.without]
    if args.add_service and os.getcwd() not in sys.path:
        # `python -m` looks in the working directory first; look there too (last, though).
        sys.path.append(os.getcwd())
    for item in args.add_service:
        name, sep, module = item.partition("=")
        extra = ServiceSpec(name.strip(), module.strip(), user=True)
        if not sep or not extra.name or not extra.module:
            raise CliError(f"--add-service {item!r}: expected NAME=MODULE", USAGE)
        if extra.name in {spec.name for spec in services}:
            raise CliError(f"--add-service {item!r}: {extra.name} runs already", USAGE)
        if not extra.runnable():
            raise CliError(f"--add-service {item!r}: python -m {extra.module} finds nothing", USAGE)
        services.append(extra)
    if args.external_nats is None and not 0 <= args.nats_port <= 65535:
        raise CliError(f"--nats-port {args.nats_port}: expected 0..65535", USAGE)
    ha = _ha_ports(args) if args.ha else None
    if ha is not None:
        services = replicated(services)
    _check_store_client(args)
    config = StackConfig(
        data_dir=Path(args.data_dir).expanduser().resolve(),
        services=services,
        options=args,
        nats_url=args.external_nats,
        ha=ha,
        **{name: getattr(args, name) for name in (*_UP_FLAGS, *_NATS_LOGIN_FLAGS)},
    )
    config = security.configure(config, args)  # --secure, --tls-cert: users, permissions, TLS
    return console.with_login_link(config)


HA_REPLICAS = 2


def _check_store_client(args: argparse.Namespace) -> None:
    """An etcd store needs aetcd, an extra (it brings grpcio, about 20 MB, that the embedded
    shape does without): say so in one line before anything starts, not as the traceback of
    a version-store that exits before it is ready."""
    store = args.store or ""
    if not store.startswith("etcd://") or find_spec("aetcd") is not None:
        return
    what = "--ha keeps its versions in etcd" if args.ha else f"--store {store} is etcd"
    raise CliError(f"{what}, whose client is not installed: pip install 'confbus[etcd]'", FAILED)


def _ha_ports(args: argparse.Namespace) -> HaPorts:
    if args.external_nats is not None:
        raise CliError("--ha starts its own NATS cluster: leave out --nats-url", USAGE)
    if etcd_binary() is None:
        raise CliError(f"--ha needs etcd for the version store: {ETCD_HINT}", FAILED)
    ports = HaPorts.derive(args.nats_port, args.etcd_port)
    if args.store is None:
        args.store = ports.store_url()  # the version-store's --store (see _store_url)
    return ports


def _replica_args(
    spec: ServiceSpec, instance: str, data_dir: Path, opts: argparse.Namespace
) -> list[str]:
    return [*spec.args(data_dir, opts), "--instance", instance, "--replicas", "3"]


def replicated(services: list[ServiceSpec]) -> list[ServiceSpec]:
    """Each service twice, as ``<name>-1`` and ``<name>-2`` with that ``--instance``."""
    out = []
    for spec in services:
        for i in range(1, HA_REPLICAS + 1):
            name = f"{spec.name}-{i}"
            args = functools.partial(_replica_args, spec, name)
            after = f"{spec.name}-1" if i > 1 else None
            out.append(ServiceSpec(name, spec.module, args, after, spec.user))
    return out
