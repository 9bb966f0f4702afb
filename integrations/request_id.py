"""Request ids: take a safe inbound one, otherwise make a new one.

An inbound id (``X-Request-ID`` by default) links our audit trail to the logs of the proxy or
service that sent the request, so it is kept — but only if it is short and made of characters that
cannot break a log line, a header or a query; anything else is replaced by a fresh random id.
"""

from __future__ import annotations

import re
import uuid

from versioning.errors import ConfigurationError

__all__ = [
    "FORWARDED_HEADERS",
    "MAX_LENGTH",
    "accept",
    "check_actor",
    "check_forwarded_header",
    "check_settings",
    "new",
]

#: Longest inbound id kept.
MAX_LENGTH = 64

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/=-]*")
#: An HTTP header field name (RFC 9110 "token").
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_settings(owner: str, header: object, max_length: object) -> None:
    """Raise ``ConfigurationError`` unless the request-id settings of ``owner`` are usable."""
    if not isinstance(header, str) or not _TOKEN.fullmatch(header):
        raise ConfigurationError(
            f"{owner}: request_id_header must be an HTTP header name such as 'X-Request-ID', "
            f"got {header!r}"
        )
    if (
        isinstance(max_length, bool)
        or not isinstance(max_length, int)
        or not 1 <= max_length <= 128
    ):
        raise ConfigurationError(
            f"{owner}: request_id_max_length must be an int from 1 to 128 (the length of the "
            f"transaction table's request_id column), got {max_length!r}"
        )


FORWARDED_HEADERS = ("X-Forwarded-For", "Forwarded")


def check_forwarded_header(owner: str, header: object) -> str:
    """The canonical name of a supported forwarded header, or ``ConfigurationError``."""
    for name in FORWARDED_HEADERS:
        if isinstance(header, str) and header.lower() == name.lower():
            return name
    raise ConfigurationError(
        f"{owner}: forwarded_header must be 'X-Forwarded-For' or 'Forwarded' (RFC 7239), the one "
        f"header your trusted proxies maintain; got {header!r}"
    )


def check_actor(owner: str, actor: object) -> None:
    """Raise ``ConfigurationError`` unless ``actor`` is ``None`` or a callable."""
    if actor is not None and not callable(actor):
        raise ConfigurationError(
            f"{owner}: actor must be a callable taking the request and returning the actor, "
            f"got {actor!r}"
        )


def new() -> str:
    """A fresh request id: 32 hexadecimal characters."""
    return uuid.uuid4().hex


def accept(inbound: str | None, max_length: int = MAX_LENGTH) -> str:
    """``inbound`` if it is a safe id of at most ``max_length`` characters, else a new one."""
    if inbound is not None and len(inbound) <= max_length and _SAFE.fullmatch(inbound):
        return inbound
    return new()
