"""The review pages as an ASGI app (Starlette): mount it in Starlette or FastAPI.

``app.mount("/audit", review_app(Session, authorize=...))``. Each request asks
``authorize(request, action)`` first (a plain or an ``async`` function; a false answer is a 403
page), then renders its page in the threadpool with a session of its own.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import anyio
import sqlalchemy as sa
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from versioning.integrations.review import csrf
from versioning.integrations.review.pages import CSS, SECURITY_HEADERS, Page, Review

__all__ = ["review_app"]

#: The most of a restore form read (its fields are short).
FORM_LIMIT = 16_384


async def _chunks(stream: Iterator[bytes]) -> AsyncIterator[bytes]:
    """``stream``'s chunks, each made in the threadpool (its queries block)."""
    while (chunk := await run_in_threadpool(next, stream, None)) is not None:
        yield chunk


class _Stream(StreamingResponse):
    """A streamed page whose stream is closed, and ``on_close`` called, as soon as the response
    ends: read to its end, or cut short because the client went away (Starlette then cancels
    the response, or its ``send`` fails). The export's session is released at once, not when
    the garbage collector finds the abandoned stream."""

    def __init__(
        self, stream: Iterator[bytes], on_close: Callable[[], None] | None, **options: Any
    ) -> None:
        super().__init__(_chunks(stream), **options)
        self.stream = stream
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                close = getattr(self.stream, "close", None)
                if close is not None:
                    await run_in_threadpool(close)
                if self.on_close is not None:
                    await run_in_threadpool(self.on_close)


def review_app(
    sessionmaker: Callable[[], Session],
    *,
    authorize: Callable[[Request, str], Any] | None = None,
    allow_restore: bool = False,
    page_size: int = 50,
    title: str = "History",
    secret: str | bytes | None = None,
    actor: Callable[[Request], str] | None = None,
    metadata: sa.MetaData | None = None,
) -> Starlette:
    """The review pages as a Starlette app (see :mod:`versioning.integrations.review`)."""
    review = Review(
        sessionmaker,
        authorize=authorize,
        allow_restore=allow_restore,
        page_size=page_size,
        title=title,
        secret=secret,
        actor=actor,
        metadata=metadata,
    )

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def allowed(request: Request, action: str) -> bool:
        answer = review.authorize(request, action)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer is True

    def respond(request: Request, page: Page) -> Response:
        headers = {**SECURITY_HEADERS, **page.headers}
        response: Response
        if page.location is not None:
            response = RedirectResponse(page.location, status_code=page.status, headers=headers)
        elif page.stream is not None:
            response = _Stream(
                page.stream,
                page.on_close,
                status_code=page.status,
                media_type=page.content_type,
                headers=headers,
            )
        else:
            response = Response(
                page.body, status_code=page.status, media_type=page.content_type, headers=headers
            )
        if review.allow_restore and not request.cookies.get(csrf.COOKIE):
            response.set_cookie(
                csrf.COOKIE,
                cookie(request),
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path=base(request) or "/",
            )
        return response

    def cookie(request: Request) -> str:
        value: str | None = getattr(request.state, "csrf_cookie", None)
        if value is None:
            value = request.cookies.get(csrf.COOKIE) or csrf.new_cookie()
            request.state.csrf_cookie = value
        return value

    async def guarded(request: Request, action: str, render: Callable[[], Page]) -> Response:
        cookie(request)
        if not await allowed(request, action):
            return respond(request, review.refused(base(request), action))
        return respond(request, await run_in_threadpool(render))

    async def activity(request: Request) -> Response:
        params = dict(request.query_params)
        return await guarded(request, "view", lambda: review.activity(params, base(request)))

    async def transaction(request: Request) -> Response:
        number = str(request.path_params["number"])
        return await guarded(request, "view", lambda: review.transaction(number, base(request)))

    async def record(request: Request) -> Response:
        params = dict(request.query_params)
        value = cookie(request)
        return await guarded(request, "view", lambda: review.record(params, base(request), value))

    async def integrity(request: Request) -> Response:
        params = dict(request.query_params)
        return await guarded(request, "view", lambda: review.integrity(params, base(request)))

    async def digest_json(request: Request) -> Response:
        return await guarded(request, "view", lambda: review.digest_json(base(request)))

    async def export(request: Request) -> Response:
        params = dict(request.query_params)
        return await guarded(request, "export", lambda: review.export(params, base(request)))

    async def restore(request: Request) -> Response:
        # A small urlencoded form, parsed here (no multipart parser needed).
        body = await request.body()
        urlencoded = request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        )
        fields = dict(parse_qsl(body[:FORM_LIMIT].decode("utf-8", "replace"))) if urlencoded else {}
        given = request.cookies.get(csrf.COOKIE)
        return await guarded(
            request, "restore", lambda: review.restore(fields, base(request), request, given)
        )

    async def stylesheet(request: Request) -> Response:
        return Response(
            CSS,
            media_type="text/css",
            headers={**SECURITY_HEADERS, "Cache-Control": "max-age=3600"},
        )

    routes = [
        Route("/", activity),
        Route("/transaction/{number}", transaction),
        Route("/record", record),
        Route("/integrity", integrity),
        Route("/integrity/digest.json", digest_json),
        Route("/export", export),
        Route("/static/review.css", stylesheet),
    ]
    if allow_restore:
        routes.append(Route("/restore", restore, methods=["POST"]))

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return respond(
            request, review.error(base(request), status, "Not found", "There is no such page.")
        )

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
