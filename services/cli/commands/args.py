"""What the command modules share about their arguments: argparse types for numbers and names,
the files flags name (read with a limit), and who acts (``--as``/``--author``,
``$CONFBUS_IDENTITY``, or the NATS user)."""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys

from confbus.cli.exitcodes import FAILED, USAGE, CliError
from confbus.client import check_namespace
from confbus.runtime.codec import encode
from confbus.runtime.errors import InvalidInput
from confbus.runtime.identity import is_identity
from confbus.schemas.names import LABEL_PATTERN
from confbus.schemas.selectors import SelectorError, parse_selector
from confbus.schemas.streams import MAX_PAYLOAD

# -- argparse types -----------------------------------------------------------------------------


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def positive_int(text: str) -> int:
    """A count, a version or a stream sequence: 1 or more."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def natural_int(text: str) -> int:
    """0 or more (``--base 0``: refuse unless the namespace has no version yet)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """A duration in seconds: a finite number above 0."""
    value = _seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def seconds_or_zero(text: str) -> float:
    """A duration that may be 0 (``--bake 0``: none)."""
    value = _seconds(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value == float("inf"):  # nan, inf
        raise argparse.ArgumentTypeError(f"not a finite number of seconds: {text!r}")
    return value


def label_pair(text: str) -> tuple[str, str]:
    """``key=value``, both labels as agents carry them (``confbus agent --label``)."""
    key, sep, value = text.partition("=")
    if not sep or not all(re.fullmatch(LABEL_PATTERN, part) for part in (key, value)):
        raise argparse.ArgumentTypeError(
            f"expected key=value, each letters, digits and _./- (e.g. dc=eu1): {text!r}"
        )
    return key, value


def selector_arg(text: str) -> dict[str, str]:
    """``dc=eu1,tier=web``: a label selector (``confbus.schemas.selectors``)."""
    try:
        selector = parse_selector(text)
    except SelectorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not selector:
        raise argparse.ArgumentTypeError(f"an empty selector: {text!r}")
    return selector


def overlay_arg(text: str) -> tuple[dict[str, str], str]:
    """``SELECTOR=FILE`` (``dc=eu1=eu1.yaml``, ``dc=eu1,tier=web=web.json``): the selector is
    everything before the last ``=``; FILE is checked as every input file is."""
    selector, sep, path = text.rpartition("=")
    if not sep or not path or not selector:
        raise argparse.ArgumentTypeError(
            f"expected SELECTOR=FILE, e.g. dc=eu1=eu1.yaml or dc=eu1,tier=web=web.yaml: {text!r}"
        )
    return selector_arg(selector), input_file(path)


def check_ns(namespace: str) -> str:
    """``namespace``, or a usage error (exit 2) saying what a namespace may be."""
    try:
        return check_namespace(namespace)
    except InvalidInput as exc:
        raise CliError(exc.message, USAGE) from None


# -- inputs -------------------------------------------------------------------------------------


def input_file(text: str) -> str:
    """A file named on the command line ('-': stdin), as an argparse type: one that is not
    there or cannot be read is a usage error (exit 2), said before anything connects."""
    if text == "-":
        return text
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"cannot read {text}: no such file")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"cannot read {text}: it is a directory")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text}: permission denied")
    return text


def read_file(path: str, limit: int = MAX_PAYLOAD) -> bytes:
    """The file's bytes ('-': stdin), refused beyond ``limit``: nothing larger than a bus
    message can be a config, and a file like /dev/zero would otherwise be read forever."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:  # gone since the arguments were checked
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", USAGE) from None
    if len(data) > limit:
        raise CliError(
            f"{path} is larger than {limit} bytes: more than confbus carries (a config is at "
            "most its namespace's max_bytes, 1 MiB unless the policy says otherwise)",
            FAILED,
        )
    return data


def fits(request: object, what: str) -> None:
    """Refuse here a request the bus would refuse (nats-py raises on an oversized payload)."""
    size = len(encode(request))
    if size > MAX_PAYLOAD:
        raise CliError(
            f"{what} is {size} bytes on the wire: more than the bus carries ({MAX_PAYLOAD})",
            FAILED,
        )


# -- who acts -----------------------------------------------------------------------------------


def identity(explicit: str | None = None) -> str:
    """Who is acting: ``--as``/``--author``, else ``$CONFBUS_IDENTITY``, else the OS user.

    With NATS authentication on, the NATS user is the identity: see ``acting_as``.
    """
    if explicit:
        return explicit
    if env := os.environ.get("CONFBUS_IDENTITY"):
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def nats_identity(args: argparse.Namespace) -> str | None:
    """The NATS user this command authenticates as (``--nats-user``), if any: with
    authentication on, the store records that user, whatever a flag says."""
    user: str | None = getattr(args, "nats_user", None)
    return user or None


def acting_as(args: argparse.Namespace, explicit: str | None) -> str:
    """Who acts: the NATS user when authenticated (``explicit`` may only repeat it), else
    ``identity(explicit)``."""
    user = nats_identity(args)
    if user is None:
        return identity(explicit)
    if not is_identity(user):
        raise CliError(
            f"NATS user {user!r} cannot be pinned into a subject (a confbus identity is "
            "[a-z0-9][a-z0-9_-]{0,63})",
            USAGE,
        )
    if explicit and explicit != user:
        raise CliError(
            f"with NATS authentication you act as your NATS user {user!r}; {explicit!r} "
            "cannot be claimed (leave out --as/--author)",
            USAGE,
        )
    return user
