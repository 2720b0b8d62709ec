"""NATS server URLs: the default, and the check that refuses what is not one. Apart from
``confbus.runtime.bus`` so that the CLI checks ``--nats-url`` without importing nats-py."""

from __future__ import annotations

from collections.abc import Sequence

from confbus.runtime.errors import InvalidInput

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def split_urls(urls: str | Sequence[str]) -> list[str]:
    if isinstance(urls, str):
        return [u.strip() for u in urls.split(",") if u.strip()]
    return list(urls)


# What nats-py speaks; a URL without a scheme means nats://.
NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def check_urls(urls: str | Sequence[str]) -> list[str]:
    """The server URLs of ``urls``, or ``InvalidInput`` naming the one that is not a NATS URL
    (an ``http://`` address is the likeliest: the console's, pasted by mistake)."""
    servers = split_urls(urls)
    if not servers:
        raise InvalidInput("no NATS URL given", where="nats_url")
    for url in servers:
        scheme, sep, rest = url.partition("://")
        if sep and scheme.lower() not in NATS_SCHEMES:
            raise InvalidInput(
                f"{url} is not a NATS URL: the scheme is nats:// (or tls://, ws://, wss://), "
                f"e.g. nats://{rest}; an http:// address is a web page, such as the console's",
                where="nats_url",
            )
    return servers
