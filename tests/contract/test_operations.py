"""Endpoints declared once (``schemas/api``): every operation listed, servers bind all of theirs,
callers cannot cut an act short, and nothing outside ``schemas/`` names an operation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from confbus.runtime.api import Endpoint, call, serve_api, stop_api
from confbus.runtime.bus import Bus
from confbus.runtime.errors import Unavailable
from confbus.schemas.api import catalog, dist, health, rollback, store, txn
from confbus.schemas.api.operation import Operation

REPO = Path(__file__).resolve().parents[2]
MODULES = (store, txn, dist, health, rollback)


def test_every_declared_operation_is_listed_once() -> None:
    for module in MODULES:
        declared = [v for v in vars(module).values() if isinstance(v, Operation)]
        assert set(declared) == set(module.OPERATIONS), module.__name__
        assert len(module.OPERATIONS) == len(set(module.OPERATIONS))
        assert {op.service for op in module.OPERATIONS} == {module.SERVICE}
        names = [op.name for op in module.OPERATIONS]
        assert len(names) == len(set(names)), names
        patterns = [op.pattern for op in module.OPERATIONS]
        assert len(patterns) == len(set(patterns)), patterns
    assert set(catalog.SERVICES) == {m.SERVICE for m in MODULES}


def test_subjects_are_the_ones_on_the_wire() -> None:
    # The wire is unchanged from before the declarations: a mixed-version fleet still talks.
    assert store.GET.address == "cfg.api.store.get"
    assert store.APPROVE_AS.as_user("alice").address == "cfg.api.store.approve.alice"
    assert store.PROPOSE.as_user("ci", "payments").address == "cfg.api.store.propose.payments.ci"
    assert store.EXPORT_AT.at("0a1b2c").address == "cfg.api.store.export_0a1b2c"
    assert txn.SWITCH_AT.at("coord-1").address == "cfg.api.txn.switch_coord-1"
    assert dist.ABORT.address == "cfg.api.dist.abort"
    assert store.PROPOSE.pattern_for("ci") == "cfg.api.store.propose.*.ci"
    # A NATS wildcard stands for whole tokens: export_* would match no replica's subject.
    assert store.EXPORT_AT.grant == "cfg.api.store.*"
    assert store.GET.grant == store.GET.pattern


def test_open_tokens_must_be_named_and_must_be_names() -> None:
    with pytest.raises(ValueError, match="as_user / at"):
        _ = store.APPROVE_AS.address
    with pytest.raises(ValueError, match="as_user / at"):
        _ = store.EXPORT_AT.address
    with pytest.raises(ValueError, match="invalid identity"):
        store.APPROVE_AS.as_user("*")
    with pytest.raises(ValueError, match="invalid scope"):
        store.PROPOSE.as_user("ci", "a.b")
    with pytest.raises(ValueError, match="scope token"):
        store.PROPOSE.as_user("ci")
    with pytest.raises(ValueError, match="cannot name a replica"):
        store.EXPORT_AT.at("a.>")
    with pytest.raises(ValueError, match="not answered per replica"):
        store.GET.at("r1")


def test_a_switch_waits_as_long_as_the_coordinator_may_queue_it() -> None:
    req = txn.SwitchRequest(namespace="ns", version=1, nodes=["n1"], timeout_s=3.0)
    assert txn.SWITCH.deadline_s(req) == 2 * 3.0 + 15.0
    default = txn.SwitchRequest(namespace="ns", version=1, nodes=["n1"])
    assert txn.SWITCH.deadline_s(default) == 2 * txn.DEFAULT_VOTE_TIMEOUT_S + 15.0
    # A forward gives up first, so that the forwarding replica can still take over in time.
    assert txn.SWITCH_AT.deadline_s(req) < txn.SWITCH.deadline_s(req)


async def test_an_act_is_never_given_up_before_its_deadline(bus: Bus) -> None:
    req = txn.SwitchRequest(namespace="ns", version=1, nodes=["n1"], timeout_s=1.0)
    with pytest.raises(ValueError, match="wait at least its deadline"):
        await call(bus, txn.SWITCH, req, timeout=5.0)
    # A read may give up sooner: here nobody answers at all.
    with pytest.raises(Unavailable, match="no store service"):
        await call(bus, store.NAMESPACES, store.NamespacesRequest(), timeout=0.5)


async def _no_namespaces(req: store.NamespacesRequest) -> store.NamespacesReply:
    return store.NamespacesReply(namespaces=["a"])


async def test_serve_api_binds_every_declared_operation(bus: Bus) -> None:
    with pytest.raises(ValueError, match="no handler for get, history"):
        await serve_api(bus, [Endpoint(store.NAMESPACES, _no_namespaces)])
    with pytest.raises(ValueError, match=r"bind op\.at"):
        await serve_api(bus, [Endpoint(store.EXPORT_AT, _no_namespaces)], partial=True)
    with pytest.raises(ValueError, match="one service per serve_api"):
        await serve_api(
            bus,
            [Endpoint(store.NAMESPACES, _no_namespaces), Endpoint(txn.IN_DOUBT, _no_namespaces)],
        )
    # A test's stand-in binds what it needs, and is called through the same declaration.
    svc = await serve_api(bus, [Endpoint(store.NAMESPACES, _no_namespaces)], partial=True)
    try:
        reply = await call(bus, store.NAMESPACES, store.NamespacesRequest())
        assert reply.namespaces == ["a"]
    finally:
        await stop_api(svc)


# -- no operation named outside schemas/ -----------------------------------------------------------

# Operation names that are also ordinary words of the code (a CLI command, a Literal, a status
# key of the agent, an etcd call): a literal equal to one of these names something else.
HOMONYMS = {
    "get",
    "history",
    "diff",
    "approve",
    "promote",
    "reject",
    "namespaces",
    "export",
    "import",
    "status",
    "rollout",
    "pause",
    "resume",
    "abort",
    "forget",
    "switch",
    "resolve",
    "in_doubt",
    "verdict",
    "start",
}
# The modules that turn a declaration into a subject.
SUBJECT_BUILDERS = {"services/runtime/api.py"}
# The tests of the declarations themselves, which spell the wire to pin it.
CONTRACT_TESTS = {"tests/contract/test_operations.py", "tests/contract/test_asyncapi.py"}


def _python_files() -> list[Path]:
    roots = ("services", "tests", "benchmarks", "examples")
    files = (p for root in roots for p in (REPO / root).rglob("*.py"))
    return sorted(p for p in files if p.relative_to(REPO).as_posix() not in CONTRACT_TESTS)


def _violations(path: Path, names: set[str], rel: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), rel)):
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("cfg.api"):
                found.append(f"{where}: spells an API subject {node.value!r}")
            elif node.value in names:
                found.append(f"{where}: names the operation {node.value!r}")
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value if isinstance(func, ast.Attribute) else None
            if called == "Operation":
                found.append(f"{where}: declares an operation outside schemas/api")
            if (
                called in ("api", "api_group")
                and isinstance(owner, ast.Name)
                and owner.id == "subjects"
                and rel not in SUBJECT_BUILDERS
            ):
                found.append(f"{where}: builds an API subject by hand")
    return found


def test_no_operation_is_named_outside_schemas() -> None:
    names = {op.name for op in catalog.every_operation()} - HOMONYMS
    names |= {n.replace("{replica}", "") for n in names}  # export_ / switch_ prefixes
    assert "policy_get" in names and "mark_good" in names  # the check checks something
    found = [
        v
        for path in _python_files()
        for v in _violations(path, names, path.relative_to(REPO).as_posix())
    ]
    assert found == []


def test_the_check_finds_a_hand_made_call(tmp_path: Path) -> None:
    names = {op.name for op in catalog.every_operation()} - HOMONYMS
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from confbus.schemas import subjects\n"
        'x = subjects.api("store", "get")\n'
        'y = "policy_get"\n'
        'z = f"cfg.api.store.{x}"\n'
    )
    assert len(_violations(bad, names, "services/bad.py")) == 3
