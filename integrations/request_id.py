"""Request ids: take a safe inbound one, otherwise make a new one.

An inbound id (``X-Request-ID`` by default) links our audit trail to the logs of the proxy or
service that sent the request, so it is kept — but only if it is short and made of characters that
cannot break a log line, a header or a query; anything else is replaced by a fresh random id.
"""

from __future__ import annotations

import re
import uuid

__all__ = ["MAX_LENGTH", "accept", "is_safe", "new"]

#: Longest inbound id kept.
MAX_LENGTH = 64

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/=-]*")


def new() -> str:
    """A fresh request id: 32 hexadecimal characters."""
    return uuid.uuid4().hex


def is_safe(inbound: str | None, max_length: int = MAX_LENGTH) -> bool:
    """Whether ``inbound`` is an id of at most ``max_length`` safe characters."""
    return inbound is not None and len(inbound) <= max_length and bool(_SAFE.fullmatch(inbound))


def accept(inbound: str | None, max_length: int = MAX_LENGTH) -> str:
    """``inbound`` if it is a safe id of at most ``max_length`` characters, else a new one."""
    if inbound is not None and is_safe(inbound, max_length):
        return inbound
    return new()
