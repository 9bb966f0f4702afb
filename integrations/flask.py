"""Flask: an audit context for every request, around the whole WSGI call.

``VersioningAudit(app)`` (or ``VersioningAudit()`` then ``init_app(app)``) wraps ``app.wsgi_app``.
Each request runs in a copy of the server thread's ``contextvars`` context, with an
:func:`versioning.audit_context` opened before Flask sees the request and kept until the server
has iterated and closed the response body. So every ``before_request``, the view, every
``after_request`` and ``teardown_request`` function — even after another one raised — and a
streamed body, with or without ``stream_with_context``, run inside it. And since the context lives
only in that copy, nothing of a request can leak into the next one on the same worker thread,
whatever the other hooks or the server do.

* **actor**: your ``actor(request)`` callable (e.g. reading Flask-Login's ``current_user``). It is
  asked when the first change is flushed, so a user loaded by a later hook is seen; code that
  learns the user later still calls :func:`versioning.set_actor`. ``0`` is an actor; ``None``
  and ``False`` mean anonymous.
* **source_ip** and **request_id**: as for Starlette — the peer (the WSGI ``REMOTE_ADDR``) unless
  it is one of ``trusted_proxies`` (then the client from ``forwarded_header``, ``X-Forwarded-For``
  by default or ``Forwarded``); the inbound ``X-Request-ID`` only from ``trusted_proxies`` by
  default (``trust_request_id``), else a new one, echoed in the response.

Requires the ``flask`` extra: ``pip install 'sqlalchemy-versioning[flask]'``.

:func:`review_blueprint` gives the review pages (see :mod:`versioning.integrations.review`) as a
blueprint; they also need the ``review`` extra (Jinja2).
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from flask import Blueprint, Flask, Request, Response, g, request, url_for
from werkzeug.datastructures import EnvironHeaders

from versioning.context import audit_context
from versioning.errors import ConfigurationError
from versioning.integrations import request_id
from versioning.integrations.request_audit import RequestAudit

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from sqlalchemy.orm import Session

    from versioning.integrations.review.pages import Page

__all__ = ["VersioningAudit", "review_blueprint"]

#: Gives the actor of a request (a user name or id), or ``None`` if it is anonymous.
ActorCallable = Callable[[Request], "str | int | None"]

#: Where the request's state waits in the WSGI environ for the ``before_request`` hook.
_ENVIRON_KEY = "versioning.audit"


class _RequestState:
    """What the actor callable of one request needs: Flask's request object, once it exists."""

    __slots__ = ("request",)

    def __init__(self) -> None:
        self.request: Request | None = None


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
        trust_request_id: str = "proxies",
    ) -> None:
        self.settings = RequestAudit.configure(
            "VersioningAudit",
            actor=actor,
            trusted_proxies=trusted_proxies,
            forwarded_header=forwarded_header,
            request_id_header=request_id_header,
            request_id_max_length=request_id_max_length,
            trust_request_id=trust_request_id,
        )
        self.actor = actor
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` and install the hook that hands the request to the actor."""
        if "versioning" in app.extensions:
            raise ConfigurationError(
                f"VersioningAudit is already installed on the Flask app {app.name!r}: call "
                "init_app() once per app"
            )
        # First of all before_request functions: the actor callable gets Flask's own request
        # object (with whatever a later hook attaches to it), even when it runs after the request.
        app.before_request_funcs.setdefault(None, []).insert(0, _keep_request)
        app.wsgi_app = _AuditedApp(app, app.wsgi_app, self)  # type: ignore[method-assign]
        app.extensions["versioning"] = self


def _keep_request() -> None:
    state = request.environ.get(_ENVIRON_KEY)
    if isinstance(state, _RequestState) and state.request is None:
        # The request object itself, not the proxy: the actor may be asked after the request
        # context ended (a streamed body) or in a worker thread.
        state.request = cast(Request, request._get_current_object())  # type: ignore[attr-defined]


class _AuditedApp:
    """``app.wsgi_app`` run inside a request's own audit context (see the module docstring)."""

    def __init__(self, app: Flask, wsgi_app: WSGIApplication, audit: VersioningAudit) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.audit = audit
        self._header = audit.settings.request_id_header
        self._header_lower = self._header.lower()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        context = contextvars.copy_context()
        return context.run(self._run, context, environ, start_response)

    def _run(
        self,
        context: contextvars.Context,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        settings = self.audit.settings
        headers = EnvironHeaders(environ)
        peer = environ.get("REMOTE_ADDR")
        source_ip = settings.source_ip(peer, headers.getlist)
        rid, extra = settings.request_id(peer, headers.getlist)
        state = _RequestState()
        environ[_ENVIRON_KEY] = state
        actor = self.audit.actor
        actor_source: Callable[[], str | int | None] | None = None
        if actor is not None:
            app = self.app

            def actor_of_request() -> str | int | None:
                current = state.request
                if current is None:  # asked before the before_request hooks ran
                    current = state.request = app.request_class(environ)
                return actor(current)

            actor_of_request.__wrapped__ = actor  # type: ignore[attr-defined]  # named in errors
            actor_source = actor_of_request
        # Opened in this request's own copy of the contextvars context and never closed: the
        # copy is dropped with the request, so the frame cannot outlive it, whatever happens.
        audit_context(actor=actor_source, source_ip=source_ip, request_id=rid, **extra).open()
        name, lower = self._header, self._header_lower

        def start_with_request_id(
            status: str,
            response_headers: list[tuple[str, str]],
            exc_info: tuple[type[BaseException], BaseException, TracebackType]
            | tuple[None, None, None]
            | None = None,
        ) -> Callable[[bytes], object]:
            kept = [(k, v) for k, v in response_headers if k.lower() != lower]
            kept.append((name, rid))
            return start_response(status, kept, exc_info)

        body = self.wsgi_app(environ, start_with_request_id)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(body, file_wrapper):
            # A file sent with send_file(): reading it writes nothing, and the server recognises
            # its own wrapper to use sendfile(), which a wrapper of ours would prevent.
            return body
        return _Body(body, context)


class _Body:
    """A response body iterated and closed inside the request's context."""

    __slots__ = ("_body", "_context", "_iterator")

    def __init__(self, body: Iterable[bytes], context: contextvars.Context) -> None:
        self._body = body
        self._context = context
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._body)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        close: Any = getattr(self._body, "close", None)
        if close is not None:
            self._context.run(close)


def review_blueprint(
    sessionmaker: Callable[[], Session],
    *,
    authorize: Callable[[Request, str], bool] | None = None,
    allow_restore: bool = False,
    page_size: int = 50,
    title: str = "History",
    secret: str | bytes | None = None,
    actor: Callable[[Request], str] | None = None,
    metadata: sa.MetaData | None = None,
    name: str = "versioning_review",
) -> Blueprint:
    """The review pages as a Flask blueprint: ``app.register_blueprint(review_blueprint(Session,
    authorize=...), url_prefix="/audit")``. The same pages, templates and rules as
    :func:`versioning.integrations.review.review_app`; ``authorize(request, action)`` is a plain
    function here."""
    from versioning.integrations.review import csrf
    from versioning.integrations.review.pages import CSS, SECURITY_HEADERS, Review

    if inspect.iscoroutinefunction(authorize):
        raise ConfigurationError(
            "review_blueprint(): authorize must be a plain function in Flask (an async one is "
            "never awaited there): def authorize(request, action) -> bool"
        )
    review = Review(
        sessionmaker,
        authorize=authorize,
        allow_restore=allow_restore,
        page_size=page_size,
        title=title,
        secret=secret,
        actor=actor,
        metadata=metadata,
        where="review_blueprint",
    )
    blueprint = Blueprint(name, __name__)

    def base() -> str:
        return url_for(f"{blueprint.name}.activity").rstrip("/")

    def cookie() -> str:
        value: str | None = g.get("versioning_review_csrf")
        if value is None:
            value = request.cookies.get(csrf.COOKIE) or csrf.new_cookie()
            g.versioning_review_csrf = value
        return value

    def respond(page: Page) -> Response:
        headers = {**SECURITY_HEADERS, **page.headers}
        if page.location is not None:
            response = Response(
                "", status=page.status, headers={**headers, "Location": page.location}
            )
        elif page.stream is not None:
            response = Response(page.stream, status=page.status, headers=headers)
            response.content_type = page.content_type
            if page.on_close is not None:  # the WSGI server closes it, client gone or not
                response.call_on_close(page.on_close)
        else:
            response = Response(page.body, status=page.status, headers=headers)
            response.content_type = page.content_type
        if review.allow_restore and not request.cookies.get(csrf.COOKIE):
            response.set_cookie(
                csrf.COOKIE,
                cookie(),
                httponly=True,
                samesite="Strict",
                secure=request.scheme == "https",
                path=base() or "/",
            )
        return response

    def guarded(action: str, render: Callable[[], Page]) -> Response:
        cookie()
        current = cast(Request, request._get_current_object())  # type: ignore[attr-defined]
        if review.authorize(current, action) is not True:
            return respond(review.refused(base(), action))
        return respond(render())

    @blueprint.route("/")
    def activity() -> Response:
        return guarded("view", lambda: review.activity(request.args.to_dict(), base()))

    @blueprint.route("/transaction/<number>")
    def transaction(number: str) -> Response:
        return guarded("view", lambda: review.transaction(number, base()))

    @blueprint.route("/record")
    def record() -> Response:
        return guarded("view", lambda: review.record(request.args.to_dict(), base(), cookie()))

    @blueprint.route("/integrity")
    def integrity() -> Response:
        return guarded("view", lambda: review.integrity(request.args.to_dict(), base()))

    @blueprint.route("/integrity/digest.json")
    def digest_json() -> Response:
        return guarded("view", lambda: review.digest_json(base()))

    @blueprint.route("/export")
    def export() -> Response:
        return guarded("export", lambda: review.export(request.args.to_dict(), base()))

    @blueprint.route("/static/review.css")
    def stylesheet() -> Response:
        return Response(
            CSS,
            content_type="text/css",
            headers={**SECURITY_HEADERS, "Cache-Control": "max-age=3600"},
        )

    @blueprint.route("/<path:rest>", methods=["GET", "HEAD", "POST"])
    def not_found(rest: str) -> Response:
        # Below the blueprint's own paths (a path converter matches last): its 404 page, with
        # the review headers, as the Starlette app has it.
        return respond(review.error(base(), 404, "Not found", "There is no such page."))

    if allow_restore:

        @blueprint.route("/restore", methods=["POST"])
        def restore() -> Response:
            current = cast(Request, request._get_current_object())  # type: ignore[attr-defined]
            given = request.cookies.get(csrf.COOKIE)
            return guarded(
                "restore",
                lambda: review.restore(request.form.to_dict(), base(), current, given),
            )

    return blueprint
