"""``confbus keys``: signing keys, trust rules, and a secret namespace's encryption keys.

- ``keys new NAME`` — an Ed25519 key pair: ``NAME.key`` (PKCS#8 PEM, 0600) and ``NAME.pub``
  (JSON: name and public key) for policies and trust roots;
- ``keys trust NS PUB… --threshold N [--rollbacker PUB]`` — who must sign NS: in the
  namespace's policy (the store's check), or with ``--roots FILE`` in an agent's trust roots
  file (the check that counts: agents take it from that file only);
- ``keys revoke NS NAME [--from-version V]`` — NAME's signatures of V and later are refused,
  those of older versions stay valid (the policy change is recorded with its actor);
- ``keys kek NAME`` — a key-encryption key file (0600) for publishers and agents of secret
  namespaces; ``keys data-key NS --kek FILE`` — a new data key for NS, wrapped by that KEK,
  kept in the policy (a rotation: new versions are sealed with it; nothing applied is
  re-encrypted).

The design is docs/design.md §7.4 and §7.6.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import msgspec

from confbus.cli.commands.args import acting_as, nats_identity
from confbus.cli.commands.options import ACTOR, NAMESPACE, Subparsers, add, command
from confbus.cli.exitcodes import FAILED, OK, USAGE, CliError
from confbus.cli.output import out
from confbus.client import Client, check_namespace
from confbus.runtime.errors import InvalidInput, NotFound
from confbus.runtime.sealing import (
    Kek,
    SealingError,
    load_kek,
    load_keks,
    new_data_key,
    new_kek,
    open_sealed,
)
from confbus.runtime.sealing import kek_file_bytes as _kek_bytes
from confbus.runtime.signing import SigningKey
from confbus.schemas.api import store as store_api
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.policy import Policy
from confbus.schemas.sealing import is_sealed
from confbus.schemas.signing import (
    KEY_NAME_PATTERN,
    SigningRule,
    TrustedKey,
    TrustRoots,
    decode_trust_roots,
    decode_trusted_key,
)

_encode = msgspec.json.Encoder().encode


def register(sub: Subparsers) -> None:
    keys = command(sub, "keys")
    ks = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    p = ks.add_parser("new", help="make an Ed25519 key pair NAME.key / NAME.pub")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--dir", default=".", help="where to write them (default: here)")
    p.set_defaults(run_local=run_new)

    p = ks.add_parser("kek", help="make a key-encryption key file NAME.kek")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--dir", default=".", help="where to write it (default: here)")
    p.set_defaults(run_local=run_kek)

    trust, trust_roots = _in_policy_and_roots(ks, "trust", "set who must sign NS")
    for p in trust, trust_roots:
        p.add_argument("keys", nargs="*", metavar="PUB", help="public key files (NAME.pub)")
        p.add_argument("--threshold", type=int, default=1, help="distinct signers needed (1)")
        p.add_argument(
            "--rollbacker", action="append", default=[], metavar="PUB", help="may sign rollbacks"
        )
    add(trust, ACTOR)
    trust.set_defaults(func=run_trust)
    trust_roots.set_defaults(run_local=run_trust_roots)

    revoke, revoke_roots = _in_policy_and_roots(
        ks, "revoke", "refuse NAME's signatures from a version on"
    )
    for p in revoke, revoke_roots:
        p.add_argument("name", metavar="NAME")
        p.add_argument(
            "--from-version",
            type=int,
            required=p is revoke_roots,
            metavar="V",
            help="the first version refused (policy: default the next one)",
        )
    add(revoke, ACTOR)
    revoke.set_defaults(func=run_revoke)
    revoke_roots.set_defaults(run_local=run_revoke_roots)

    p = ks.add_parser("data-key", help="a new data key for secret NS, wrapped by --kek")
    add(p, NAMESPACE)
    p.add_argument("--kek", required=True, metavar="FILE", help="the key-encryption key")
    add(p, ACTOR)
    p.set_defaults(func=run_data_key)


def _in_policy_and_roots(
    ks: Subparsers, name: str, what: str
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """A trust change's two commands: ``NAME`` changes the namespace's policy (the store's
    check), ``NAME-roots`` an agent's trust roots file (the check that counts)."""
    policy = ks.add_parser(name, help=f"{what}, in the namespace's policy")
    roots = ks.add_parser(f"{name}-roots", help=f"{what}, in an agent's file")
    roots.add_argument("roots", metavar="FILE", help="the agent's trust roots file")
    add(policy, NAMESPACE)
    add(roots, NAMESPACE)
    return policy, roots


# -- local files ------------------------------------------------------------------------------


def _check_key_name(name: str) -> None:
    import re

    if not re.fullmatch(KEY_NAME_PATTERN, name):
        raise CliError(f"key name {name!r}: expected {KEY_NAME_PATTERN}", USAGE)


def run_new(args: argparse.Namespace) -> int:
    _check_key_name(args.name)
    folder = Path(args.dir)
    private, public = folder / f"{args.name}.key", folder / f"{args.name}.pub"
    if private.exists():
        raise CliError(f"{private} exists: a key is never overwritten", FAILED)
    folder.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate(args.name)
    from confbus.cli.security.roster import write_private  # the security package is heavy

    write_private(private, key.pem())
    public.write_bytes(_encode(key.trusted()) + b"\n")
    out(f"{private} (private, 0600) and {public} (public) key id {key.key_id}")
    return OK


def run_kek(args: argparse.Namespace) -> int:
    _check_key_name(args.name)
    folder = Path(args.dir)
    path = folder / f"{args.name}.kek"
    if path.exists():
        raise CliError(f"{path} exists: a key is never overwritten", FAILED)
    folder.mkdir(parents=True, exist_ok=True)
    from confbus.cli.security.roster import write_private  # the security package is heavy

    write_private(path, _kek_bytes(new_kek(args.name)))
    out(f"{path} (key-encryption key {args.name!r}, 0600): give it to publishers and agents only")
    return OK


def read_public(path: str) -> TrustedKey:
    try:
        return decode_trusted_key(Path(path).read_bytes())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", FAILED) from None
    except DECODE_ERRORS as exc:
        raise CliError(f"{path}: not a public key file (confbus keys new): {exc}", FAILED) from None


def _rule(args: argparse.Namespace) -> SigningRule:
    keys = [read_public(p) for p in args.keys]
    if not 0 <= args.threshold <= len(keys):
        raise CliError(
            f"--threshold {args.threshold} with {len(keys)} keys: at most one per key", USAGE
        )
    return SigningRule(
        keys=keys, threshold=args.threshold, rollbackers=[read_public(p) for p in args.rollbacker]
    )


def _read_roots(path: Path) -> TrustRoots:
    try:
        return decode_trust_roots(path.read_bytes())
    except FileNotFoundError:
        return TrustRoots()
    except DECODE_ERRORS as exc:
        raise CliError(f"{path}: not a trust roots file: {exc}", FAILED) from None


def _write_roots(path: Path, ns: str, rule: SigningRule) -> None:
    roots = _read_roots(path)
    new = TrustRoots(namespaces={**roots.namespaces, ns: rule})
    path.write_bytes(json.dumps(msgspec.to_builtins(new), indent=2).encode() + b"\n")
    out(f"{path}: {ns} needs {rule.threshold} of {', '.join(k.name for k in rule.keys) or '-'}")


def run_trust_roots(args: argparse.Namespace) -> int:
    _check_ns(args.namespace)
    _write_roots(Path(args.roots), args.namespace, _rule(args))
    return OK


def _revoked(rule: SigningRule, name: str, from_version: int) -> SigningRule:
    def cut(keys: list[TrustedKey]) -> list[TrustedKey]:
        return [
            msgspec.structs.replace(k, until_version=from_version) if k.name == name else k
            for k in keys
        ]

    if not any(k.name == name for k in [*rule.keys, *rule.rollbackers]):
        raise CliError(f"no key named {name!r} in this rule", FAILED)
    return msgspec.structs.replace(rule, keys=cut(rule.keys), rollbackers=cut(rule.rollbackers))


def run_revoke_roots(args: argparse.Namespace) -> int:
    _check_ns(args.namespace)
    if args.from_version < 1:
        raise CliError("--from-version is a version number (1 or more)", USAGE)
    path = Path(args.roots)
    rule = _read_roots(path).namespaces.get(args.namespace)
    if rule is None:
        raise CliError(f"{path} has no rule for {args.namespace}", FAILED)
    _write_roots(path, args.namespace, _revoked(rule, args.name, args.from_version))
    return OK


def _check_ns(ns: str) -> None:
    try:
        check_namespace(ns)
    except InvalidInput as exc:
        raise CliError(exc.message, USAGE) from None


# -- the policy ------------------------------------------------------------------------------


async def _save(args: argparse.Namespace, client: Client, new: Policy) -> Policy:
    who = acting_as(args, args.identity)
    req = store_api.PolicySetRequest(policy=new, actor=who)
    if nats_identity(args) is not None:
        return await client.call(store_api.POLICY_SET_AS.as_user(who), req)
    return await client.set_policy(new, actor=who)


async def run_trust(args: argparse.Namespace, client: Client) -> int:
    _check_ns(args.namespace)
    policy = await client.policy(args.namespace)
    rule = _rule(args)
    await _save(args, client, msgspec.structs.replace(policy, signing=rule))
    names = ", ".join(k.name for k in rule.keys) or "-"
    out(f"{args.namespace}: the store takes versions signed by {rule.threshold} of {names}")
    return OK


async def run_revoke(args: argparse.Namespace, client: Client) -> int:
    _check_ns(args.namespace)
    policy = await client.policy(args.namespace)
    if policy.signing is None:
        raise CliError(f"{args.namespace} has no signing rule", FAILED)
    start = args.from_version
    if start is None:
        try:
            start = (await client.get(args.namespace, "latest", content=False)).info.version + 1
        except NotFound:
            start = 1
    rule = _revoked(policy.signing, args.name, start)
    await _save(args, client, msgspec.structs.replace(policy, signing=rule))
    out(
        f"{args.namespace}: {args.name}'s signatures refused from v{start} on; versions it "
        "signed before stay valid (update every agent's trust roots the same way)"
    )
    return OK


async def run_data_key(args: argparse.Namespace, client: Client) -> int:
    _check_ns(args.namespace)
    try:
        kek = load_kek(Path(args.kek))
    except SealingError as exc:
        raise CliError(str(exc), FAILED) from None
    policy = await client.policy(args.namespace)
    if not policy.secret:
        raise CliError(
            f"{args.namespace} is not secret: confbus policy {args.namespace} --secret first",
            FAILED,
        )
    key = new_data_key(kek)
    new = msgspec.structs.replace(policy, data_keys=[*policy.data_keys, key])
    await _save(args, client, new)
    out(f"{args.namespace}: data key {key.id} (wrapped by {kek.id!r}) seals new versions")
    return OK


# -- what publish, show and agents take --------------------------------------------------------


def add_trust_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sign",
        action="append",
        default=[],
        metavar="KEYFILE",
        help="sign with this private key (confbus keys new; repeat for several signers)",
    )
    add_kek_arg(p, "seal a secret namespace's content with its data key, which this KEK unwraps")


def add_kek_arg(p: argparse.ArgumentParser, what: str) -> None:
    env = os.environ.get("CONFBUS_KEK_FILE")
    p.add_argument(
        "--kek",
        action="append",
        default=[env] if env else [],
        metavar="FILE",
        help=f"{what} (env CONFBUS_KEK_FILE)",
    )


def signing_keys(args: argparse.Namespace) -> list[SigningKey]:
    keys = []
    for path in args.sign:
        try:
            keys.append(SigningKey.load(Path(path)))
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot use signing key {path}: {exc}", FAILED) from None
    return keys


def kek_files(args: argparse.Namespace) -> dict[str, Kek] | None:
    if not args.kek:
        return None
    try:
        return load_keks([Path(p) for p in args.kek])
    except SealingError as exc:
        raise CliError(str(exc), FAILED) from None


def opened(content: bytes, keks: dict[str, Kek] | None) -> bytes:
    """A version's bytes to show: a sealed secret's plaintext, which needs its KEK."""
    if not is_sealed(content):
        return content
    if not keks:
        raise CliError("this version is sealed (a secret namespace): give --kek FILE", FAILED)
    try:
        return open_sealed(content, keks)[0]
    except SealingError as exc:
        raise CliError(str(exc), FAILED) from None
