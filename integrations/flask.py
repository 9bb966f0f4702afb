"""Flask: an audit context for every request, through Flask's request lifecycle.

``VersioningAudit(app)`` (or ``VersioningAudit()`` then ``init_app(app)``) opens an
:func:`versioning.audit_context` before any other ``before_request`` function and closes it when
the request is torn down, so the view, the other hooks and the teardown all see it.

* **actor**: your ``actor(request)`` callable (e.g. reading Flask-Login's ``current_user``). It is
  asked when the first change is flushed, so a user loaded by a later hook is seen; code that
  learns the user later still calls :func:`versioning.set_actor`.
* **source_ip** and **request_id**: as for Starlette — the peer address unless it is one of
  ``trusted_proxies`` (then the client from ``forwarded_header``, ``X-Forwarded-For`` by default
  or ``Forwarded``), and a safe inbound ``X-Request-ID`` or a new one, echoed in the response.

Requires the ``flask`` extra: ``pip install 'sqlalchemy-versioning[flask]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

from flask import Flask, Request, Response, g, request

from versioning.context import audit_context
from versioning.integrations import request_id
from versioning.integrations.request_audit import RequestAudit

__all__ = ["VersioningAudit"]

#: Gives the actor of a request (a user name or id), or ``None`` if it is anonymous.
ActorCallable = Callable[[Request], "str | int | None"]

_G_KEY = "_versioning_audit"


class VersioningAudit:
    """Flask extension: one audit context per request. ``VersioningAudit(app, actor=...)``."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        actor: ActorCallable | None = None,
        trusted_proxies: Iterable[str] = (),
        forwarded_header: str = "X-Forwarded-For",
        request_id_header: str = "X-Request-ID",
        request_id_max_length: int = request_id.MAX_LENGTH,
    ) -> None:
        self.settings = RequestAudit.configure(
            "VersioningAudit",
            actor=actor,
            trusted_proxies=trusted_proxies,
            forwarded_header=forwarded_header,
            request_id_header=request_id_header,
            request_id_max_length=request_id_max_length,
        )
        self.actor = actor
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Install the request hooks on ``app``."""
        # First of all before_request functions, so that every hook and the view see the context.
        app.before_request_funcs.setdefault(None, []).insert(0, self._open)
        app.after_request(self._echo)
        # Teardown functions run in reverse order: first in the list, so closed after all others.
        app.teardown_request_funcs.setdefault(None, []).insert(0, self._close)
        app.extensions["versioning"] = self

    def _open(self) -> None:
        # The request object itself, not the proxy: the lazy actor may run in a worker thread.
        current = cast(Request, request._get_current_object())  # type: ignore[attr-defined]
        settings = self.settings
        source_ip = settings.source_ip(current.environ.get("REMOTE_ADDR"), current.headers.getlist)
        rid = settings.request_id(current.headers.get(settings.request_id_header))
        actor = self.actor

        def actor_of_request() -> str | int | None:
            return actor(current) if actor is not None else None

        context = audit_context(actor=actor_of_request, source_ip=source_ip, request_id=rid)
        context.open()
        setattr(g, _G_KEY, (context, rid))

    def _echo(self, response: Response) -> Response:
        opened = getattr(g, _G_KEY, None)
        if opened is not None:
            response.headers[self.settings.request_id_header] = opened[1]
        return response

    def _close(self, exc: BaseException | None) -> None:
        opened = g.pop(_G_KEY, None)
        if opened is not None:
            opened[0].close()
