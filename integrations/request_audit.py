"""What every web integration reads from a request: its options, checked once, and their use.

Framework-free; :mod:`versioning.integrations.starlette` and :mod:`versioning.integrations.flask`
both build a :class:`RequestAudit` from their keyword options and ask it, per request, for the
source IP (:meth:`RequestAudit.source_ip`) and for the request id with the extra values that go
with it (:meth:`RequestAudit.request_id`). Writing another integration (Django, Litestar, ...)
means the same two calls.

Who may choose the stored request id (``trust_request_id``):

* ``"proxies"`` (the default): an inbound id is taken only from a peer in ``trusted_proxies`` —
  your proxy sets it (``proxy_set_header X-Request-ID $request_id`` in nginx). Any other client's
  id is not the request id: a safe one is kept in ``extra["untrusted_request_id"]``, so support
  can still find a request a client quotes, and a fresh id is the request id.
* ``"always"``: every safe inbound id is taken (the app is reachable only through proxies that
  set or overwrite the header).
* ``"never"``: the header is not read; every request gets a fresh id.

A header sent more than once is ambiguous (a client's copy may come first): it counts as absent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from versioning.errors import ConfigurationError
from versioning.integrations import forwarding, request_id

__all__ = ["FORWARDED_HEADERS", "TRUST_REQUEST_ID", "UNTRUSTED_REQUEST_ID", "RequestAudit"]

#: The forwarded headers a deployment's proxies may maintain; exactly one is read.
FORWARDED_HEADERS = ("X-Forwarded-For", "Forwarded")

#: The values of ``trust_request_id``.
TRUST_REQUEST_ID = ("proxies", "always", "never")

#: The ``extra`` key under which an id sent by an untrusted client is kept.
UNTRUSTED_REQUEST_ID = "untrusted_request_id"

#: An HTTP header field name (RFC 9110 "token").
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True)
class RequestAudit:
    """Checked options of a web integration; see :meth:`configure`."""

    trusted_proxies: forwarding.TrustedProxies
    forwarded_header: str
    request_id_header: str
    request_id_max_length: int
    trust_request_id: str

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
        trust_request_id: object,
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
        if not isinstance(trust_request_id, str) or trust_request_id not in TRUST_REQUEST_ID:
            raise ConfigurationError(
                f"{owner}: trust_request_id must be 'proxies' (take the inbound request id only "
                f"from trusted_proxies), 'always' or 'never', got {trust_request_id!r}"
            )
        return cls(
            forwarding.TrustedProxies(trusted_proxies),
            canonical,
            request_id_header,
            length,
            trust_request_id,
        )

    def source_ip(self, peer: str | None, header: Callable[[str], Sequence[str]]) -> str | None:
        """The client address: ``header(name)`` gives all values of a request header."""
        return forwarding.proxied_client_ip(
            peer,
            self.trusted_proxies,
            header(self.forwarded_header),
            rfc7239=self.forwarded_header == "Forwarded",
        )

    def request_id(
        self, peer: str | None, header: Callable[[str], Sequence[str]]
    ) -> tuple[str, dict[str, str]]:
        """The request id to record, and the extra values that go with it.

        ``peer`` is the socket's peer address; ``header(name)`` gives all values of a header.
        """
        trust = self.trust_request_id
        if trust == "never":
            return request_id.new(), {}
        values = header(self.request_id_header)
        inbound = values[0] if len(values) == 1 else None
        if not request_id.is_safe(inbound, self.request_id_max_length):
            return request_id.new(), {}
        assert inbound is not None
        if trust == "always" or self._from_trusted_proxy(peer):
            return inbound, {}
        return request_id.new(), {UNTRUSTED_REQUEST_ID: inbound}

    def _from_trusted_proxy(self, peer: str | None) -> bool:
        if not self.trusted_proxies or peer is None:
            return False
        return forwarding.parse_ip(peer) in self.trusted_proxies
