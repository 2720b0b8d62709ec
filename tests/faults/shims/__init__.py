"""Test-only entry points that run the real services with one deliberate bug or one injected
fault, named in their environment. Production code never reads these variables:

- ``CONFBUS_TEST_BUG``: the bug to build in (each shim lists the ones it knows; an unknown
  name is refused, so a typo cannot make a bug test pass vacuously).
- ``CONFBUS_TEST_FAULTS``: ``failpoint=unavailable:P`` or ``failpoint=error:P`` — that step
  raises (a transient ``Unavailable`` or an unexpected ``RuntimeError``) with probability P.
- ``CONFBUS_TEST_SEED``: the seed of those draws.
"""

from __future__ import annotations

import os

BUG_ENV = "CONFBUS_TEST_BUG"
FAULTS_ENV = "CONFBUS_TEST_FAULTS"
SEED_ENV = "CONFBUS_TEST_SEED"


def bug(known: tuple[str, ...]) -> str:
    name = os.environ.get(BUG_ENV, "")
    if name and name not in known:
        raise SystemExit(f"unknown {BUG_ENV}={name!r}; this shim knows {known}")
    return name
