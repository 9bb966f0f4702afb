"""What every web integration reads from a request: its options, checked once, and their use.

Framework-free; :mod:`versioning.integrations.starlette` and :mod:`versioning.integrations.flask`
both build a :class:`RequestAudit` from their keyword options and ask it, per request, for the
source IP and the request id. Writing another integration (Django, Litestar, ...) means the same
two calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from versioning.errors import ConfigurationError
from versioning.integrations import forwarding, request_id

__all__ = ["FORWARDED_HEADERS", "RequestAudit"]

#: The forwarded headers a deployment's proxies may maintain; exactly one is read.
FORWARDED_HEADERS = ("X-Forwarded-For", "Forwarded")

#: An HTTP header field name (RFC 9110 "token").
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True)
class RequestAudit:
    """Checked options of a web integration; see :meth:`configure`."""

    trusted_proxies: forwarding.TrustedProxies
    forwarded_header: str
    request_id_header: str
    request_id_max_length: int

    @classmethod
    def configure(
        cls,
        owner: str,
        *,
        actor: object,
        trusted_proxies: Iterable[str],
        forwarded_header: object,
        request_id_header: object,
        request_id_max_length: object,
    ) -> RequestAudit:
        """Check the options (``owner`` names the integration in errors) and keep them."""
        if actor is not None and not callable(actor):
            raise ConfigurationError(
                f"{owner}: actor must be a callable taking the request and returning the actor, "
                f"got {actor!r}"
            )
        canonical = next(
            (
                name
                for name in FORWARDED_HEADERS
                if isinstance(forwarded_header, str) and forwarded_header.lower() == name.lower()
            ),
            None,
        )
        if canonical is None:
            raise ConfigurationError(
                f"{owner}: forwarded_header must be 'X-Forwarded-For' or 'Forwarded' (RFC 7239), "
                f"the one header your trusted proxies maintain; got {forwarded_header!r}"
            )
        if not isinstance(request_id_header, str) or not _TOKEN.fullmatch(request_id_header):
            raise ConfigurationError(
                f"{owner}: request_id_header must be an HTTP header name such as 'X-Request-ID', "
                f"got {request_id_header!r}"
            )
        length = request_id_max_length
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 128:
            raise ConfigurationError(
                f"{owner}: request_id_max_length must be an int from 1 to 128 (the length of the "
                f"transaction table's request_id column), got {length!r}"
            )
        return cls(forwarding.TrustedProxies(trusted_proxies), canonical, request_id_header, length)

    def source_ip(self, peer: str | None, header: Callable[[str], Sequence[str]]) -> str | None:
        """The client address: ``header(name)`` gives all values of a request header."""
        return forwarding.proxied_client_ip(
            peer,
            self.trusted_proxies,
            header(self.forwarded_header),
            rfc7239=self.forwarded_header == "Forwarded",
        )

    def request_id(self, inbound: str | None) -> str:
        """The inbound request id if it is safe, else a new one."""
        return request_id.accept(inbound, self.request_id_max_length)
