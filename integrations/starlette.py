"""Starlette and FastAPI: an audit context for every request and websocket.

``AuditContextMiddleware`` is a pure ASGI middleware (``BaseHTTPMiddleware`` would run the app in a
task group whose context copies break propagation). It opens one ``audit_context`` around the whole
``http`` or ``websocket`` connection — endpoint, dependencies, sync endpoints in the threadpool and
``BackgroundTasks`` that run after the response — and closes it afterwards.

* **actor**: your ``actor(connection)`` callable, or else the user that Starlette's
  ``AuthenticationMiddleware`` authenticated (``request.user.identity``; an identity ``0`` is an
  actor like any other). It is asked when the
  first change is flushed, so authentication placed inside this middleware is seen. Code that
  learns the user later calls :func:`versioning.set_actor`; the value holds for the rest of the
  request, including in threadpool workers.
* **source_ip**: the peer address, or — only when the peer is one of ``trusted_proxies`` — the
  client found in the one header those proxies maintain, ``forwarded_header``:
  ``X-Forwarded-For`` (default) or RFC 7239 ``Forwarded`` (see
  :mod:`versioning.integrations.forwarding`).
  The other header is never read, since a client can send it itself.
* **request_id**: a safe inbound ``X-Request-ID`` (the header name is configurable) sent by one of
  ``trusted_proxies`` (``trust_request_id="proxies"``, the default; or ``"always"``, ``"never"``),
  else a new one; echoed in the response headers (and on the websocket handshake). A safe id sent
  by an untrusted client is kept in ``extra["untrusted_request_id"]``.

Requires the ``starlette`` extra: ``pip install 'sqlalchemy-versioning[starlette]'``.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from versioning.context import audit_context
from versioning.integrations import request_id
from versioning.integrations.request_audit import RequestAudit

__all__ = ["ActorCallable", "AuditContextMiddleware"]

#: Gives the actor of a request (a user name or id), or ``None`` if it is anonymous.
ActorCallable = Callable[[HTTPConnection], "str | int | None"]


def authenticated_user(connection: HTTPConnection) -> str | int | None:
    """The identity of the user set by Starlette's ``AuthenticationMiddleware``, if any.

    The identity is returned as it is — ``0`` and ``""`` included — and checked like any actor, so
    an authenticated user is never silently recorded as anonymous (a ``UUID`` is given as text).
    """
    user = connection.scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    identity: Any = user.identity
    return str(identity) if isinstance(identity, uuid.UUID) else identity


class AuditContextMiddleware:
    """Open an :func:`versioning.audit_context` for each HTTP request and websocket.

    ``app.add_middleware(AuditContextMiddleware, trusted_proxies=["10.0.0.0/8"])``
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        actor: ActorCallable | None = None,
        trusted_proxies: Iterable[str] = (),
        forwarded_header: str = "X-Forwarded-For",
        request_id_header: str = "X-Request-ID",
        request_id_max_length: int = request_id.MAX_LENGTH,
        trust_request_id: str = "proxies",
    ) -> None:
        self.settings = RequestAudit.configure(
            "AuditContextMiddleware",
            actor=actor,
            trusted_proxies=trusted_proxies,
            forwarded_header=forwarded_header,
            request_id_header=request_id_header,
            request_id_max_length=request_id_max_length,
            trust_request_id=trust_request_id,
        )
        self.app = app
        self.actor: ActorCallable = actor if actor is not None else authenticated_user
        self._header_bytes = request_id_header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        client = scope.get("client")
        peer = client[0] if client else None
        settings = self.settings
        source_ip = settings.source_ip(peer, headers.getlist)
        rid, extra = settings.request_id(peer, headers.getlist)
        # A partial, so that an error about what the callable returned names the callable.
        actor_of_request = functools.partial(self.actor, HTTPConnection(scope))

        echo = (self._header_bytes, rid.encode("latin-1"))

        async def send_with_request_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                kept = [h for h in message.get("headers", ()) if h[0].lower() != echo[0]]
                message = {**message, "headers": [*kept, echo]}
            await send(message)

        context = audit_context(
            actor=actor_of_request, source_ip=source_ip, request_id=rid, **extra
        )
        context.open()  # not ``async with``: that would ask for the actor before the endpoint runs
        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            context.close()
