"""Request/reply contracts of the ``cfg.api.<service>.<op>`` endpoints (``nats.micro``).

Each module declares its service's requests and replies and, as ``Operation`` constants, its
operations (name, subject, types, deadline); ``catalog`` lists them all. A failed request is
answered with the ``Nats-Service-Error`` / ``Nats-Service-Error-Code`` headers and an
``ApiError`` body. Codes follow HTTP: 400 invalid, 403 forbidden, 404 not found, 409 conflict,
503 unavailable (retry).
"""

from __future__ import annotations

import msgspec

from confbus.schemas.api.operation import Deadline, Operation
from confbus.schemas.base import LazyDecoder


class ApiError(msgspec.Struct, frozen=True, kw_only=True):
    code: int
    error: str
    where: str = ""


decode_api_error: LazyDecoder[ApiError] = LazyDecoder(ApiError)

__all__ = ["ApiError", "Deadline", "Operation", "decode_api_error"]
