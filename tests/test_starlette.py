"""Starlette: ``AuditContextMiddleware`` end to end, with a real database and Starlette's clients.

Every request that writes is checked where it matters: the transaction row read back with
``versioning.history`` carries the request's actor, source IP and request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
)
from starlette.background import BackgroundTasks
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from versioning import (
    AuditContext,
    ConfigurationError,
    ContextError,
    Operation,
    Transaction,
    Versioned,
    current_context,
    history,
    set_actor,
)
from versioning.integrations.starlette import AuditContextMiddleware


class Base(DeclarativeBase):
    pass


class Account(Versioned, Base):
    __tablename__ = "starlette_accounts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(default=0)


PEER = "203.0.113.5"
FRESH_ID = re.compile(r"[0-9a-f]{32}")
N_CONCURRENT = 50

Tables = Callable[[sa.MetaData], sa.Engine]


# --- database helpers ---------------------------------------------------------------------------


def seed(engine: sa.Engine, *ids: int) -> None:
    """Create accounts outside any request (their transaction row has no context)."""
    with Session(engine) as session:
        session.add_all(Account(id=i, balance=0) for i in ids)
        session.commit()


def deposit(engine: sa.Engine, account_id: int) -> None:
    """Update one versioned row in its own short transaction (one session per request)."""
    with Session(engine) as session:
        account = session.get_one(Account, account_id)
        account.balance += 1
        session.commit()


def open_account(engine: sa.Engine, account_id: int) -> None:
    """Insert one versioned row: an insert-only transaction, so SQLite writers simply queue."""
    with Session(engine) as session:
        session.add(Account(id=account_id, balance=0))
        session.commit()


WRITES: dict[str, Callable[[sa.Engine, int], None]] = {"deposit": deposit, "open": open_account}


def versions(engine: sa.Engine, account_id: int) -> list[Any]:
    with Session(engine) as session:
        return history(session, Account, account_id)


def transactions(engine: sa.Engine, account_id: int) -> list[Transaction]:
    """The transaction row of each version of an account, oldest first."""
    with Session(engine) as session:
        versions = history(session, Account, account_id)
    result = []
    for version in versions:
        assert version.transaction is not None
        result.append(version.transaction)
    return result


def request_transaction(engine: sa.Engine, account_id: int) -> Transaction:
    """The transaction of the one update a request made to a seeded account."""
    with Session(engine) as session:
        versions = history(session, Account, account_id)
    assert [v.operation for v in versions] == [Operation.INSERT, Operation.UPDATE]
    seed_tx, tx = (v.transaction for v in versions)
    assert seed_tx is not None and tx is not None
    assert (seed_tx.actor, seed_tx.source_ip, seed_tx.request_id) == (None, None, None)
    return tx


def recorded(tx: Transaction) -> tuple[str | None, str | None, str | None]:
    return tx.actor, tx.source_ip, tx.request_id


def seen(ctx: AuditContext) -> dict[str, str | None]:
    return {"actor": ctx.actor, "source_ip": ctx.source_ip, "request_id": ctx.request_id}


# --- the app ------------------------------------------------------------------------------------


def header_actor(connection: HTTPConnection) -> str | None:
    """An ``actor=`` callable: the user named by a header (a stand-in for a session lookup)."""
    return connection.headers.get("x-user")


class TokenBackend(AuthenticationBackend):
    """``Authorization: Bearer <name>`` authenticates the user ``<name>``."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(token)


class Rendezvous:
    """Holds requests between reading their context and writing, so they really overlap."""

    def __init__(self, async_parties: int, sync_parties: int) -> None:
        self.async_barrier = asyncio.Barrier(async_parties)
        self.sync_barrier = threading.Barrier(sync_parties, timeout=20)

    async def wait_async(self) -> None:
        async with asyncio.timeout(20):
            await self.async_barrier.wait()

    def wait_sync(self) -> None:
        self.sync_barrier.wait()


def jitter(account_id: int) -> float:
    return (account_id % 5) * 0.002


def make_app(
    engine: sa.Engine,
    *,
    auth: str | None = None,
    rendezvous: Rendezvous | None = None,
    lifespan: Callable[[Starlette], contextlib.AbstractAsyncContextManager[Any]] | None = None,
    events: list[Any] | None = None,
    **audit_options: Any,
) -> Starlette:
    """A small app: async and sync endpoints that write, a websocket, background tasks.

    ``auth`` places Starlette's ``AuthenticationMiddleware`` "inside" or "outside" ours. The test
    client's peer is no proxy: these tests trust any inbound request id unless they say otherwise
    (the default, "proxies", has tests of its own).
    """
    log = events if events is not None else []
    audit_options.setdefault("trust_request_id", "always")

    async def write_async(request: Request) -> Response:
        account_id = int(request.path_params["id"])
        late = request.headers.get("x-late-actor")
        if late is not None:
            set_actor(late)
        before = seen(current_context())
        if rendezvous is not None:
            await rendezvous.wait_async()
        await asyncio.sleep(jitter(account_id))
        WRITES[request.path_params["action"]](engine, account_id)
        return JSONResponse({"before": before, "after": seen(current_context())})

    def write_sync(request: Request) -> Response:
        account_id = int(request.path_params["id"])
        late = request.headers.get("x-late-actor")
        if late is not None:
            set_actor(late)
        before = seen(current_context())
        if rendezvous is not None:
            rendezvous.wait_sync()
        time.sleep(jitter(account_id))
        WRITES[request.path_params["action"]](engine, account_id)
        return JSONResponse(
            {
                "before": before,
                "after": seen(current_context()),
                "worker_thread": threading.current_thread() is not threading.main_thread(),
            }
        )

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        async for message in websocket.iter_json():
            if "actor" in message:
                set_actor(message["actor"])
            deposit(engine, message["id"])
            await websocket.send_json(seen(current_context()))

    def background_sync(account_id: int) -> None:
        log.append(("sync task", seen(current_context())))
        deposit(engine, account_id)

    async def background_async(account_id: int) -> None:
        await asyncio.sleep(0)
        log.append(("async task", seen(current_context())))
        deposit(engine, account_id)

    async def with_background(request: Request) -> Response:
        deposit(engine, 1)
        set_actor("bob")  # learnt late: applies to everything flushed after it, tasks included
        tasks = BackgroundTasks()
        tasks.add_task(background_sync, 2)
        tasks.add_task(background_async, 3)
        return JSONResponse({"ok": True}, background=tasks)

    async def state(request: Request) -> Response:
        return JSONResponse({"started": request.state.started})

    async def ping(request: Request) -> Response:
        return JSONResponse({})

    async def fail(request: Request) -> Response:
        deposit(engine, 1)
        raise RuntimeError("boom")

    audit = Middleware(AuditContextMiddleware, **audit_options)
    authentication = Middleware(AuthenticationMiddleware, backend=TokenBackend())
    middleware = {
        None: [audit],
        "inside": [audit, authentication],  # the first listed is the outermost
        "outside": [authentication, audit],
    }[auth]
    return Starlette(
        routes=[
            Route("/async/{action}/{id:int}", write_async, methods=["POST"]),
            Route("/sync/{action}/{id:int}", write_sync, methods=["POST"]),
            Route("/background", with_background, methods=["POST"]),
            Route("/state", state),
            Route("/ping", ping),
            Route("/fail", fail, methods=["POST"]),
            WebSocketRoute("/ws", websocket_endpoint),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )


def context_app(**options: Any) -> Starlette:
    """The middleware alone, before an endpoint that answers the audit context it sees."""

    async def context(request: Request) -> Response:
        return JSONResponse(seen(current_context()))

    options.setdefault("trust_request_id", "always")
    return Starlette(
        routes=[Route("/context", context, methods=["POST"])],
        middleware=[Middleware(AuditContextMiddleware, **options)],
    )


class ResponseSpy:
    """Outermost ASGI wrapper noting in ``events`` when the response has been fully sent."""

    def __init__(self, app: ASGIApp, events: list[Any]) -> None:
        self.app = app
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def spy(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.events.append(("response sent", None))

        await self.app(scope, receive, spy)


def request_ids(response: httpx.Response, header: str = "x-request-id") -> list[str]:
    return response.headers.get_list(header)


# --- one request: actor, source IP, request id --------------------------------------------------


def test_async_endpoint_records_actor_ip_and_request_id(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1)
    client = TestClient(make_app(engine, actor=header_actor), client=(PEER, 1234))
    response = client.post(
        "/async/deposit/1", headers={"X-User": "alice", "X-Request-ID": "req-1.a:b/c+d=e"}
    )
    assert response.status_code == 200, response.text
    own = {"actor": "alice", "source_ip": PEER, "request_id": "req-1.a:b/c+d=e"}
    assert response.json() == {"before": own, "after": own}
    assert request_ids(response) == ["req-1.a:b/c+d=e"]
    tx = request_transaction(engine, 1)
    assert recorded(tx) == ("alice", PEER, "req-1.a:b/c+d=e")
    assert tx.reason is None and dict(tx.extra) == {}


def test_actor_callable_returning_none_records_no_actor(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1)
    client = TestClient(make_app(engine, actor=header_actor), client=(PEER, 1234))
    response = client.post("/async/deposit/1")
    assert response.status_code == 200, response.text
    (rid,) = request_ids(response)
    assert FRESH_ID.fullmatch(rid)
    assert recorded(request_transaction(engine, 1)) == (None, PEER, rid)


def test_without_actor_option_or_authentication_the_actor_is_none(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1)
    client = TestClient(make_app(engine), client=(PEER, 1234))
    response = client.post("/async/deposit/1", headers={"X-User": "alice"})
    assert response.status_code == 200, response.text
    (rid,) = request_ids(response)
    assert recorded(request_transaction(engine, 1)) == (None, PEER, rid)


@pytest.mark.parametrize("order", ["inside", "outside"])
def test_authenticated_user_is_the_actor(
    order: str, engine: sa.Engine, create_tables: Tables
) -> None:
    """AuthenticationMiddleware inside ours (runs later) or outside it: the user is the actor."""
    create_tables(Base.metadata)
    seed(engine, 1, 2)
    client = TestClient(make_app(engine, auth=order), client=(PEER, 1234))
    response = client.post(
        "/async/deposit/1", headers={"Authorization": "Bearer carol", "X-Request-ID": "auth-1"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["after"] == {"actor": "carol", "source_ip": PEER, "request_id": "auth-1"}
    assert recorded(request_transaction(engine, 1)) == ("carol", PEER, "auth-1")
    # An anonymous request (UnauthenticatedUser) has no actor.
    response = client.post("/sync/deposit/2", headers={"X-Request-ID": "anon-1"})
    assert response.status_code == 200, response.text
    assert recorded(request_transaction(engine, 2)) == (None, PEER, "anon-1")


@pytest.mark.parametrize("order", ["inside", "outside"])
def test_actor_callable_reading_request_user(
    order: str, engine: sa.Engine, create_tables: Tables
) -> None:
    """``connection.user`` raises until AuthenticationMiddleware ran: the actor is asked late."""

    def user_actor(connection: HTTPConnection) -> str | None:
        return connection.user.identity if connection.user.is_authenticated else None

    create_tables(Base.metadata)
    seed(engine, 1)
    client = TestClient(make_app(engine, auth=order, actor=user_actor), client=(PEER, 1234))
    response = client.post("/sync/deposit/1", headers={"Authorization": "Bearer carol"})
    assert response.status_code == 200, response.text
    (rid,) = request_ids(response)
    assert recorded(request_transaction(engine, 1)) == ("carol", PEER, rid)


def test_actor_callable_is_not_asked_by_a_request_that_writes_nothing(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1)
    asked: list[str] = []

    def counting_actor(connection: HTTPConnection) -> str:
        asked.append(connection.url.path)
        return "alice"

    client = TestClient(make_app(engine, actor=counting_actor), client=(PEER, 1234))
    assert client.get("/ping").status_code == 200
    assert asked == []
    assert client.post("/async/deposit/1").status_code == 200
    assert set(asked) == {"/async/deposit/1"}
    assert request_transaction(engine, 1).actor == "alice"


@pytest.mark.parametrize("order", ["inside", "outside"])
def test_set_actor_overrides_the_authenticated_user(
    order: str, engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1)
    client = TestClient(make_app(engine, auth=order), client=(PEER, 1234))
    response = client.post(
        "/async/deposit/1", headers={"Authorization": "Bearer carol", "X-Late-Actor": "svc:42"}
    )
    assert response.status_code == 200, response.text
    assert request_transaction(engine, 1).actor == "svc:42"


def test_sync_endpoint_in_threadpool_set_actor_then_write(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1, 2)
    client = TestClient(make_app(engine, actor=header_actor), client=(PEER, 1234))
    response = client.post(
        "/sync/deposit/1",
        headers={"X-User": "alice", "X-Late-Actor": "dave", "X-Request-ID": "sync-1"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["worker_thread"] is True
    assert (
        body["before"]
        == body["after"]
        == {
            "actor": "dave",
            "source_ip": PEER,
            "request_id": "sync-1",
        }
    )
    assert request_ids(response) == ["sync-1"]
    assert recorded(request_transaction(engine, 1)) == ("dave", PEER, "sync-1")
    # Without set_actor the sync endpoint gets the actor callable's value.
    response = client.post("/sync/deposit/2", headers={"X-User": "alice"})
    assert response.status_code == 200, response.text
    (rid,) = request_ids(response)
    assert recorded(request_transaction(engine, 2)) == ("alice", PEER, rid)


# --- request ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inbound",
    ["a", "abc-123", "A0._:+/=-z", "0" * 32, "x" * 64, "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"],
)
def test_valid_inbound_request_id_is_kept_and_echoed(inbound: str) -> None:
    """Through the middleware alone; recorded on every backend by
    ``test_async_endpoint_records_actor_ip_and_request_id``."""
    client = TestClient(context_app(), client=(PEER, 1234))
    response = client.post("/context", headers={"X-Request-ID": inbound})
    assert response.status_code == 200, response.text
    assert request_ids(response) == [inbound]
    assert response.json()["request_id"] == inbound


@pytest.mark.parametrize(
    "inbound",
    [
        "",
        " abc",
        "abc ",
        "-abc",
        ".abc",
        "../etc/passwd",
        "a b",
        "a;b",
        "a,b",
        "a\tb",
        "<script>",
        "x" * 65,
        "x" * 10_000,
        b"caf\xc3\xa9",
        b"\xff\xfe",
    ],
    ids=lambda v: repr(v)[:20],
)
def test_invalid_inbound_request_id_is_replaced_by_a_fresh_one(inbound: str | bytes) -> None:
    """Through the middleware alone; recorded on every backend by the test below."""
    client = TestClient(context_app(), client=(PEER, 1234))
    response = client.post("/context", headers={"X-Request-ID": inbound})
    assert response.status_code == 200, response.text
    (rid,) = request_ids(response)
    assert FRESH_ID.fullmatch(rid)
    assert response.json()["request_id"] == rid


def test_invalid_inbound_request_id_is_replaced_and_the_fresh_one_recorded(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1)
    client = TestClient(make_app(engine), client=(PEER, 1234))
    response = client.post("/async/deposit/1", headers={"X-Request-ID": "../etc/passwd"})
    assert response.status_code == 200, response.text
    (rid,) = request_ids(response)
    assert FRESH_ID.fullmatch(rid)
    assert request_transaction(engine, 1).request_id == rid


def test_each_request_gets_its_own_fresh_request_id(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1, 2)
    client = TestClient(make_app(engine), client=(PEER, 1234))
    first = client.post("/async/deposit/1")
    second = client.post("/sync/deposit/2")
    (rid1,) = request_ids(first)
    (rid2,) = request_ids(second)
    assert rid1 != rid2
    assert request_transaction(engine, 1).request_id == rid1
    assert request_transaction(engine, 2).request_id == rid2


def test_request_id_header_and_max_length_are_configurable(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1, 2, 3)
    app = make_app(engine, request_id_header="X-Correlation-ID", request_id_max_length=128)
    client = TestClient(app, client=(PEER, 1234))

    longest = "c" * 128
    response = client.post(
        "/async/deposit/1", headers={"X-Correlation-ID": longest, "X-Request-ID": "other"}
    )
    assert request_ids(response, "x-correlation-id") == [longest]
    assert request_ids(response) == []  # the default header is neither read nor written
    assert request_transaction(engine, 1).request_id == longest

    response = client.post("/async/deposit/2", headers={"X-Correlation-ID": "c" * 129})
    (rid,) = request_ids(response, "x-correlation-id")
    assert FRESH_ID.fullmatch(rid)
    assert request_transaction(engine, 2).request_id == rid

    short = TestClient(make_app(engine, request_id_max_length=8), client=(PEER, 1234))
    response = short.post("/async/deposit/3", headers={"X-Request-ID": "abcdefghi"})
    (rid,) = request_ids(response)
    assert FRESH_ID.fullmatch(rid)
    assert request_transaction(engine, 3).request_id == rid


def test_by_default_only_a_trusted_proxy_chooses_the_request_id(
    engine: sa.Engine, create_tables: Tables
) -> None:
    """``X-Request-ID: victim-request-0001`` from any client used to be stored as is."""
    create_tables(Base.metadata)
    seed(engine, 1, 2, 3)
    options = {"trusted_proxies": ["10.0.0.0/8"], "trust_request_id": "proxies"}
    direct = TestClient(make_app(engine, **options), client=(PEER, 1234))
    response = direct.post("/async/deposit/1", headers={"X-Request-ID": "victim-request-0001"})
    assert response.status_code == 200, response.text
    (rid,) = request_ids(response)
    assert FRESH_ID.fullmatch(rid)
    tx = request_transaction(engine, 1)
    assert recorded(tx) == (None, PEER, rid)
    assert dict(tx.extra) == {"untrusted_request_id": "victim-request-0001"}
    # An unsafe client id is not kept at all.
    response = direct.post("/async/deposit/2", headers={"X-Request-ID": "<b>victim</b>"})
    (rid,) = request_ids(response)
    tx = request_transaction(engine, 2)
    assert recorded(tx) == (None, PEER, rid) and dict(tx.extra) == {}
    # Through our proxy: its id is the request id.
    proxied = TestClient(make_app(engine, **options), client=("10.0.0.7", 1234))
    response = proxied.post(
        "/async/deposit/3", headers={"X-Request-ID": "lb-7f3a", "X-Forwarded-For": CLIENT}
    )
    assert request_ids(response) == ["lb-7f3a"]
    tx = request_transaction(engine, 3)
    assert recorded(tx) == (None, CLIENT, "lb-7f3a") and dict(tx.extra) == {}


def test_trust_request_id_never_ignores_even_the_proxy(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1)
    app = make_app(engine, trusted_proxies=["10.0.0.0/8"], trust_request_id="never")
    client = TestClient(app, client=("10.0.0.7", 1234))
    response = client.post("/async/deposit/1", headers={"X-Request-ID": "lb-7f3a"})
    (rid,) = request_ids(response)
    assert FRESH_ID.fullmatch(rid)
    tx = request_transaction(engine, 1)
    assert tx.request_id == rid and dict(tx.extra) == {}


# --- what the actor may be ----------------------------------------------------------------------


class NumberedUser(SimpleUser):
    """A user whose identity is not its display name: a number (0 included) or a UUID."""

    def __init__(self, identity: object) -> None:
        super().__init__(f"user {identity}")
        self._identity = identity

    @property
    def identity(self) -> Any:
        return self._identity


class NumberedBackend(AuthenticationBackend):
    """``Authorization: Id <n>`` authenticates the user whose identity is the int ``n``."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        scheme, _, value = conn.headers.get("authorization", "").partition(" ")
        if scheme == "Id":
            return AuthCredentials(["authenticated"]), NumberedUser(int(value))
        if scheme == "Uuid":
            return AuthCredentials(["authenticated"]), NumberedUser(uuid.UUID(value))
        return None


def test_authenticated_user_with_identity_zero_is_the_actor_zero(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1, 2, 3)
    app = make_app(engine)
    app.add_middleware(AuthenticationMiddleware, backend=NumberedBackend())  # outside ours
    client = TestClient(app, client=(PEER, 1234))
    some_uuid = "12345678-1234-5678-1234-567812345678"
    for account, authorization in ((1, "Id 0"), (2, f"Uuid {some_uuid}"), (3, None)):
        headers = {"Authorization": authorization} if authorization else {}
        response = client.post(f"/async/deposit/{account}", headers=headers)
        assert response.status_code == 200, response.text
    assert request_transaction(engine, 1).actor == "0"
    assert request_transaction(engine, 2).actor == some_uuid
    assert request_transaction(engine, 3).actor is None


def authenticated_and_id(connection: HTTPConnection) -> object:
    """``user.is_authenticated and user.id``: ``False`` for an anonymous request."""
    user_id = connection.headers.get("x-user-id")
    return user_id is not None and int(user_id)


def authenticated_flag(connection: HTTPConnection) -> object:
    return connection.headers.get("x-user-id") is not None


def test_actor_callable_answering_false_zero_or_true(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1, 2, 3)
    client = TestClient(make_app(engine, actor=authenticated_and_id), client=(PEER, 1234))
    assert client.post("/async/deposit/1").status_code == 200
    assert client.post("/sync/deposit/2", headers={"X-User-Id": "0"}).status_code == 200
    assert request_transaction(engine, 1).actor is None
    assert request_transaction(engine, 2).actor == "0"
    # True is a flag, not an actor: the write is refused, naming the callable, and nothing changes.
    flagged = TestClient(make_app(engine, actor=authenticated_flag), client=(PEER, 1234))
    with pytest.raises(ContextError, match=r"actor callable .*authenticated_flag returned True"):
        flagged.post("/async/deposit/3", headers={"X-User-Id": "1"})
    assert [v.operation for v in versions(engine, 3)] == [Operation.INSERT]
    with Session(engine) as session:
        assert session.get_one(Account, 3).balance == 0


# --- websockets ---------------------------------------------------------------------------------


def test_websocket_records_context_and_echoes_request_id_on_accept(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1, 2)
    client = TestClient(make_app(engine, actor=header_actor), client=(PEER, 1234))
    with client.websocket_connect(
        "/ws", headers={"X-User": "carol", "X-Request-ID": "ws-1"}
    ) as websocket:
        assert (b"x-request-id", b"ws-1") in websocket.extra_headers
        websocket.send_json({"id": 1})
        own = {"actor": "carol", "source_ip": PEER, "request_id": "ws-1"}
        assert websocket.receive_json() == own
        websocket.send_json({"id": 2, "actor": "dave"})  # set_actor inside the handler
        assert websocket.receive_json() == {**own, "actor": "dave"}
    assert recorded(request_transaction(engine, 1)) == ("carol", PEER, "ws-1")
    assert recorded(request_transaction(engine, 2)) == ("dave", PEER, "ws-1")


def test_websocket_with_invalid_request_id_gets_a_fresh_one(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1)
    client = TestClient(make_app(engine, auth="inside"), client=(PEER, 1234))
    with client.websocket_connect(
        "/ws", headers={"X-Request-ID": "bad id", "Authorization": "Bearer erin"}
    ) as websocket:
        echoed = [v.decode() for k, v in websocket.extra_headers if k == b"x-request-id"]
        websocket.send_json({"id": 1})
        websocket.receive_json()
    (rid,) = echoed
    assert FRESH_ID.fullmatch(rid)
    assert recorded(request_transaction(engine, 1)) == ("erin", PEER, rid)


# --- background tasks, lifespan, end of the request ---------------------------------------------


def test_background_tasks_write_after_the_response_with_the_same_context(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1, 2, 3)
    events: list[Any] = []
    app = ResponseSpy(make_app(engine, actor=header_actor, events=events), events)
    client = TestClient(app, client=(PEER, 1234))
    response = client.post("/background", headers={"X-User": "alice", "X-Request-ID": "bg-1"})
    assert response.status_code == 200, response.text
    assert request_ids(response) == ["bg-1"]
    late = {"actor": "bob", "source_ip": PEER, "request_id": "bg-1"}
    assert events == [("response sent", None), ("sync task", late), ("async task", late)]
    endpoint_tx = request_transaction(engine, 1)
    assert recorded(endpoint_tx) == ("alice", PEER, "bg-1")
    sync_tx = request_transaction(engine, 2)
    async_tx = request_transaction(engine, 3)
    assert recorded(sync_tx) == recorded(async_tx) == ("bob", PEER, "bg-1")
    assert len({endpoint_tx.id, sync_tx.id, async_tx.id}) == 3


def test_app_with_lifespan_works_and_lifespan_gets_no_request_context(
    engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    events: list[Any] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append(("startup", seen(current_context())))
        seed(engine, 1)  # a write at startup: no request, no context
        yield {"started": True}
        events.append(("shutdown", seen(current_context())))

    app = make_app(engine, actor=header_actor, lifespan=lifespan)
    empty = {"actor": None, "source_ip": None, "request_id": None}
    with TestClient(app, client=(PEER, 1234)) as client:
        assert events == [("startup", empty)]
        assert client.get("/state").json() == {"started": True}
        response = client.post("/async/deposit/1", headers={"X-User": "alice"})
        assert response.status_code == 200, response.text
    assert events == [("startup", empty), ("shutdown", empty)]
    (rid,) = request_ids(response)
    assert recorded(request_transaction(engine, 1)) == ("alice", PEER, rid)


def test_lifespan_scope_is_passed_through_untouched() -> None:
    calls: list[tuple[Scope, Receive, Send, AuditContext]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append((scope, receive, send, current_context()))

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        raise AssertionError("not called")

    middleware = AuditContextMiddleware(inner, actor=header_actor)
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    asyncio.run(middleware(scope, receive, send))
    ((got_scope, got_receive, got_send, context),) = calls
    assert got_scope is scope and got_receive is receive and got_send is send
    assert scope == {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    assert context == AuditContext()


def test_context_ends_with_the_request_even_when_the_endpoint_fails(
    engine: sa.Engine, create_tables: Tables
) -> None:
    """httpx's ASGITransport runs the app in the caller's task: a leaked context would show."""
    create_tables(Base.metadata)
    seed(engine, 1, 2)
    app = make_app(engine, actor=header_actor)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app, client=(PEER, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post("/async/deposit/1", headers={"X-User": "alice"})
            assert response.status_code == 200, response.text
            assert current_context() == AuditContext()
            with pytest.raises(RuntimeError, match="boom"):
                await client.post("/fail", headers={"X-User": "alice"})
            assert current_context() == AuditContext()

    asyncio.run(main())
    deposit(engine, 2)  # written by the caller after the requests: no context of theirs
    assert recorded(request_transaction(engine, 2)) == (None, None, None)
    # /fail wrote before raising, in its own committed transaction, with its request's context.
    assert [tx.actor for tx in transactions(engine, 1)] == [None, "alice", "alice"]


# --- source IP: peers, proxies, forwarded headers -----------------------------------------------

TRUSTED = ["10.0.0.0/8", "2001:db8::/32"]
XFF, FWD = "X-Forwarded-For", "Forwarded"
CLIENT = "198.51.100.7"
HeaderList = Sequence[tuple[str, str | bytes]]


def source_ip_of(
    peer: str, headers: HeaderList | Mapping[str, str | bytes], **options: Any
) -> str | None:
    """Send one request from ``peer`` with ``headers`` through the middleware, without a database
    (``test_proxy_headers_end_to_end`` records the same on every backend): the source IP of the
    audit context the endpoint saw."""
    client = TestClient(context_app(**options), client=(peer, 1234))
    response = client.post("/context", headers=headers)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    ip: str | None = response.json()["source_ip"]
    return ip


def recorded_source_ip_of(
    engine: sa.Engine, peer: str, headers: HeaderList | Mapping[str, str | bytes], **options: Any
) -> str | None:
    """Send one request from ``peer`` with ``headers``; the source IP its transaction recorded."""
    seed(engine, 1)
    client = TestClient(make_app(engine, **options), client=(peer, 1234))
    response = client.post("/async/deposit/1", headers=headers)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    ip = request_transaction(engine, 1).source_ip
    assert response.json()["after"]["source_ip"] == ip
    return ip


@pytest.mark.parametrize(
    ("peer", "headers", "options", "client"),
    [
        (PEER, {XFF: CLIENT}, {"trusted_proxies": TRUSTED}, PEER),
        (
            "10.0.0.1",
            [(XFF, "6.6.6.6, 198.51.100.7, 10.0.0.2")],
            {"trusted_proxies": TRUSTED},
            CLIENT,
        ),
        (
            "10.0.0.1",
            [(FWD, 'for=6.6.6.6, for="[2001:db9::17]:4711";proto=https, for=10.0.0.3')],
            {"trusted_proxies": TRUSTED, "forwarded_header": "Forwarded"},
            "2001:db9::17",
        ),
        ("10.0.0.1", [(XFF, "garbage")], {"trusted_proxies": TRUSTED}, "10.0.0.1"),
    ],
    ids=["untrusted-peer", "x-forwarded-for-chain", "forwarded-chain", "garbage"],
)
def test_proxy_headers_end_to_end(
    peer: str,
    headers: HeaderList | Mapping[str, str],
    options: dict[str, Any],
    client: str,
    engine: sa.Engine,
    create_tables: Tables,
) -> None:
    """One case per feature recorded on every backend; the tables below run without a database."""
    create_tables(Base.metadata)
    assert recorded_source_ip_of(engine, peer, headers, **options) == client


@pytest.mark.parametrize("forwarded_header", [XFF, FWD])
@pytest.mark.parametrize("trusted", [[], ["10.0.0.0/8"]], ids=["no-proxies", "peer-not-trusted"])
@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "198.51.100.7"},
        {"X-Forwarded-For": "198.51.100.7, 10.0.0.2"},
        {"Forwarded": "for=198.51.100.7"},
        {"Forwarded": 'for="[2001:db9::1]:443"', "X-Forwarded-For": "198.51.100.7"},
    ],
    ids=["xff", "xff-chain", "forwarded", "both"],
)
def test_untrusted_peer_cannot_spoof_its_address(
    trusted: list[str],
    headers: dict[str, str],
    forwarded_header: str,
) -> None:
    options = {"trusted_proxies": trusted, "forwarded_header": forwarded_header}
    assert source_ip_of(PEER, headers, **options) == PEER


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        ("10.0.0.1", [(XFF, "198.51.100.7")], CLIENT),
        ("10.0.0.1", [(XFF, "198.51.100.7, 10.0.0.2, 10.9.9.9")], CLIENT),
        ("10.0.0.1", [(XFF, "6.6.6.6, 198.51.100.7, 10.0.0.2")], CLIENT),
        ("10.0.0.1", [(XFF, "6.6.6.6, 198.51.100.7"), (XFF, "10.0.0.2")], CLIENT),
        ("10.0.0.1", [(XFF, "198.51.100.7:8080")], CLIENT),
        ("10.0.0.1", [(XFF, "::ffff:198.51.100.7")], CLIENT),
        ("10.0.0.1", [(XFF, "2001:DB9:0::0:1")], "2001:db9::1"),
        ("2001:db8::1", [(XFF, "198.51.100.7, 2001:db8::2")], CLIENT),
        ("::ffff:10.0.0.1", [(XFF, "198.51.100.7")], CLIENT),
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", [(XFF, "10.0.0.2, 10.0.0.3")], "10.0.0.2"),
    ],
    ids=[
        "one-hop",
        "two-proxies",
        "spoofed-left-part-ignored",
        "two-header-lines",
        "port",
        "v4-mapped",
        "v6-normalised",
        "v6-proxy",
        "v4-mapped-peer",
        "no-header",
        "all-trusted",
    ],
)
def test_trusted_proxy_chain_yields_the_client(peer: str, headers: HeaderList, client: str) -> None:
    """The default ``forwarded_header`` is X-Forwarded-For."""
    assert source_ip_of(peer, headers, trusted_proxies=TRUSTED) == client


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        ("10.0.0.1", [(FWD, "for=198.51.100.7")], CLIENT),
        (
            "10.0.0.1",
            [(FWD, 'for=6.6.6.6, for="[2001:db9::17]:4711";proto=https, for=10.0.0.3')],
            "2001:db9::17",
        ),
        ("10.0.0.1", [(FWD, "for=6.6.6.6, for=198.51.100.7"), (FWD, "for=10.0.0.2")], CLIENT),
        ("10.0.0.1", [(FWD, 'For="198.51.100.7:8080";PROTO=https;by=10.0.0.1')], CLIENT),
        ("10.0.0.1", [(FWD, "for=::ffff:198.51.100.7")], CLIENT),
        ("2001:db8::1", [(FWD, 'for=198.51.100.7, for="[2001:db8::2]"')], CLIENT),
        # An element without for= written by the client, left of our proxy's hop, does not matter.
        ("10.0.0.1", [(FWD, "proto=http, for=198.51.100.7")], CLIENT),
        ("10.0.0.1", [(FWD, "proto=http"), (FWD, "for=198.51.100.7;proto=https")], CLIENT),
        ("10.0.0.1", [(FWD, "garbage;;,, for=198.51.100.7, for=10.0.0.2")], CLIENT),
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", [(FWD, "for=10.0.0.2, for=10.0.0.3")], "10.0.0.2"),
    ],
    ids=[
        "one-hop",
        "v6-with-port",
        "two-header-lines",
        "case-port-and-params",
        "v4-mapped",
        "v6-proxy",
        "client-element-without-for",
        "client-line-without-for",
        "client-garbage-on-the-left",
        "no-header",
        "all-trusted",
    ],
)
def test_forwarded_setting_walks_the_rfc7239_chain(
    peer: str, headers: HeaderList, client: str
) -> None:
    options = {"trusted_proxies": TRUSTED, "forwarded_header": "Forwarded"}
    assert source_ip_of(peer, headers, **options) == client


@pytest.mark.parametrize("options", [{}, {"forwarded_header": XFF}], ids=["default", "explicit"])
@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ([(FWD, "for=6.6.6.6"), (XFF, "198.51.100.7")], CLIENT),
        ([(FWD, 'for="[2001:db9::66]"'), (XFF, "6.6.6.6, 198.51.100.7, 10.0.0.2")], CLIENT),
        ([(FWD, "for=10.0.0.9, for=6.6.6.6"), (XFF, "198.51.100.7")], CLIENT),
        # Our proxy added no X-Forwarded-For: the client's Forwarded is still not believed.
        ([(FWD, "for=6.6.6.6")], "10.0.0.1"),
        ([(FWD, "for=6.6.6.6"), (XFF, "garbage")], "10.0.0.1"),
    ],
    ids=["forwarded-then-xff", "chain", "forwarded-names-a-proxy", "no-xff", "garbage-xff"],
)
def test_default_setting_ignores_a_forwarded_header_sent_by_the_client(
    options: dict[str, str],
    headers: HeaderList,
    client: str,
) -> None:
    """Our proxies maintain X-Forwarded-For; a Forwarded header can only come from the client."""
    assert source_ip_of("10.0.0.1", headers, trusted_proxies=TRUSTED, **options) == client


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ([(XFF, "6.6.6.6"), (FWD, "for=198.51.100.7")], CLIENT),
        (
            [(XFF, "6.6.6.6, 10.0.0.2"), (FWD, "for=203.0.113.9;proto=https, for=10.0.0.3")],
            "203.0.113.9",
        ),
        # Our proxy added no Forwarded: the client's X-Forwarded-For is still not believed.
        ([(XFF, "6.6.6.6")], "10.0.0.1"),
        ([(XFF, "6.6.6.6"), (FWD, "for=unknown")], "10.0.0.1"),
    ],
    ids=["xff-then-forwarded", "chains", "no-forwarded", "unknown-forwarded"],
)
def test_forwarded_setting_ignores_x_forwarded_for(headers: HeaderList, client: str) -> None:
    options = {"trusted_proxies": TRUSTED, "forwarded_header": "Forwarded"}
    assert source_ip_of("10.0.0.1", headers, **options) == client


@pytest.mark.parametrize(
    ("value", "client"),
    [
        ("forwarded", CLIENT),
        ("FORWARDED", CLIENT),
        ("x-forwarded-for", "203.0.113.9"),
        ("X-FORWARDED-FOR", "203.0.113.9"),
    ],
)
def test_forwarded_header_option_is_case_insensitive(value: str, client: str) -> None:
    headers = [(FWD, "for=198.51.100.7"), (XFF, "203.0.113.9")]
    options = {"trusted_proxies": TRUSTED, "forwarded_header": value}
    assert source_ip_of("10.0.0.1", headers, **options) == client


@pytest.mark.parametrize(
    ("peer", "trusted", "client"),
    [
        ("10.0.0.1", ["::ffff:10.0.0.0/104"], CLIENT),
        ("10.0.0.1", ["::ffff:10.0.0.1"], CLIENT),
        ("::ffff:10.0.0.1", ["::ffff:10.0.0.1"], CLIENT),
        ("::ffff:10.0.0.1", ["10.0.0.1"], CLIENT),
        ("10.1.0.1", ["::ffff:10.0.0.0/112"], "10.1.0.1"),  # outside the mapped network
    ],
)
def test_trusted_proxies_written_as_ipv4_mapped_ipv6_are_trusted(
    peer: str, trusted: list[str], client: str
) -> None:
    headers = {XFF: "6.6.6.6, 198.51.100.7"}
    assert source_ip_of(peer, headers, trusted_proxies=trusted) == client


PADDED: list[tuple[str, HeaderList]] = [
    (XFF, [(XFF, "x" * 10_000 + ", 198.51.100.7")]),
    (XFF, [(XFF, "9" * 10_000 + ", 198.51.100.7, 10.0.0.2")]),
    (XFF, [(XFF, ", ".join(["6.6.6.6"] * 1000) + ", 198.51.100.7")]),
    (XFF, [(XFF, "," * 10_000 + "198.51.100.7")]),
    (XFF, [(XFF, "x" * 10_000), (XFF, "198.51.100.7, 10.0.0.2")]),
    (XFF, [(XFF, "6.6.6.6")] * 500 + [(XFF, "198.51.100.7")]),
    (FWD, [(FWD, 'for="' + "x" * 10_000 + '", for=198.51.100.7')]),
    (FWD, [(FWD, "proto=http;" + "a=b;" * 3000 + ", for=198.51.100.7;proto=https")]),
    (FWD, [(FWD, ", ".join(["for=6.6.6.6"] * 1000) + ", for=198.51.100.7, for=10.0.0.2")]),
    (FWD, [(FWD, "x" * 10_000), (FWD, "for=198.51.100.7")]),
]
PADDED_IDS = [
    "xff-10kb-letters",
    "xff-10kb-digits",
    "xff-1000-hops",
    "xff-10k-commas",
    "xff-10kb-line",
    "xff-500-lines",
    "forwarded-10kb-quoted",
    "forwarded-12kb-params",
    "forwarded-1000-elements",
    "forwarded-10kb-line",
]


@pytest.mark.parametrize("peer", ["10.0.0.1", PEER], ids=["trusted-peer", "untrusted-peer"])
@pytest.mark.parametrize(("forwarded_header", "headers"), PADDED, ids=PADDED_IDS)
def test_huge_client_padding_left_of_the_proxy_hop_does_not_hide_the_client(
    peer: str,
    forwarded_header: str,
    headers: HeaderList,
) -> None:
    """Only the tail is read: the hop our proxy appended on the right is still found."""
    options = {"trusted_proxies": TRUSTED, "forwarded_header": forwarded_header}
    expected = CLIENT if peer == "10.0.0.1" else PEER
    assert source_ip_of(peer, headers, **options) == expected


GARBAGE: list[HeaderList] = [
    [(XFF, "garbage")],
    [(XFF, "")],
    [(XFF, ",,,")],
    [(XFF, "unknown")],
    [(XFF, "198.51.100.7, unknown")],
    [(XFF, "198.51.100.7 10.0.0.2")],
    [(XFF, "1.2.3.4.5")],
    [(XFF, "999.1.1.1")],
    [(XFF, "198.51.100.7:http")],
    [(XFF, "[2001:db9::1")],
    [(XFF, "[2001:db9::1]x")],
    [(XFF, "fe80::1%eth0")],
    [(XFF, "198.51.100.7/24")],
    [(XFF, "0x7f.1")],
    [(XFF, "-1.0.0.0")],
    [(XFF, "'; DROP TABLE starlette_accounts; --")],
    [(XFF, b"198.51.100.7\xff")],
    [(XFF, b"\xc3\xa9")],
    [(XFF, "198.51.100.7,")],
    [(FWD, "for=")],
    [(FWD, "by=198.51.100.7")],
    [(FWD, "for=198.51.100.7, proto=https")],
    [(FWD, "for=198.51.100.7"), (FWD, "proto=https;by=10.0.0.1")],
    [(FWD, 'for="_hidden"')],
    [(FWD, "for=unknown")],
    [(FWD, "for=198.51.100.7, for=unknown")],
    [(FWD, 'for="[2001:db9::1"')],
    [(FWD, "garbage"), (XFF, "198.51.100.7")],
    [(FWD, ";;;,,,===")],
]


@pytest.mark.parametrize("headers", GARBAGE, ids=lambda h: repr(h)[:40])
def test_garbage_forwarded_headers_record_the_peer(headers: HeaderList) -> None:
    """Garbage in the header that is read (the first one of each case): the proxy is recorded."""
    options = {"trusted_proxies": TRUSTED, "forwarded_header": headers[0][0]}
    assert source_ip_of("10.0.0.1", headers, **options) == "10.0.0.1"


@pytest.mark.parametrize("peer", ["10.0.0.1", PEER], ids=["trusted-peer", "untrusted-peer"])
@pytest.mark.parametrize(
    ("forwarded_header", "headers", "client"),
    [
        (XFF, [(XFF, "198.51.100.7, " * 700 + "10.0.0.2")], CLIENT),
        (FWD, [(FWD, "for=198.51.100.7, " * 600 + "for=10.0.0.2")], CLIENT),
        (XFF, [(XFF, "198.51.100.7")] * 500 + [(XFF, "10.0.0.2")], CLIENT),
        # One entry longer than the tail that is read: it cannot be verified, the proxy is kept.
        (XFF, [(XFF, "9" * 10_240)], "10.0.0.1"),
        (FWD, [(FWD, "for=10.0.0.2;" + "x" * 10_240)], "10.0.0.1"),
        # The header that is not read may be as large as it likes.
        (XFF, [(XFF, "198.51.100.7"), (FWD, "for=10.0.0.2;" + "x" * 10_240)], CLIENT),
        (FWD, [(FWD, "for=198.51.100.7"), (XFF, "9" * 10_240)], CLIENT),
        # More than 32 trusted hops: the walk stops at a hop, never at the far left.
        (XFF, [(XFF, "6.6.6.6, " + ", ".join(f"10.0.0.{i}" for i in range(1, 41)))], "10.0.0.9"),
    ],
    ids=[
        "xff-10kb",
        "forwarded-10kb",
        "xff-500-lines",
        "xff-10kb-digits",
        "forwarded-10kb-param",
        "xff-read-forwarded-10kb",
        "forwarded-read-xff-10kb",
        "xff-40-trusted-hops",
    ],
)
def test_oversized_forwarded_headers_are_read_from_the_tail(
    peer: str,
    forwarded_header: str,
    headers: HeaderList,
    client: str,
) -> None:
    """A trusted chain yields what its right end says; an untrusted peer is always the peer."""
    options = {"trusted_proxies": TRUSTED, "forwarded_header": forwarded_header}
    expected = client if peer == "10.0.0.1" else PEER
    assert source_ip_of(peer, headers, **options) == expected


@pytest.mark.parametrize(
    ("forwarded_header", "headers"),
    [
        (XFF, [(XFF, "6.6.6.6, " + "1" * 5000 + ", 10.0.0.2")]),
        (XFF, [(XFF, "6.6.6.6"), (XFF, "1" * 5000), (XFF, "10.0.0.2")]),
        (FWD, [(FWD, "for=6.6.6.6, for=10.0.0.3;x=" + "y" * 5000 + ", for=10.0.0.2")]),
        (FWD, [(FWD, "for=6.6.6.6"), (FWD, "for=10.0.0.3;x=" + "y" * 5000), (FWD, "for=10.0.0.2")]),
    ],
    ids=["xff-one-line", "xff-three-lines", "forwarded-one-line", "forwarded-three-lines"],
)
def test_an_entry_cut_by_the_length_limit_stops_the_walk(
    forwarded_header: str, headers: HeaderList
) -> None:
    """An entry only partly read is unverifiable, like garbage: the walk stops at the last
    verified hop, whether the proxies joined the header into one line or sent several (the same
    header either way), and never reaches what lies further left."""
    options = {"trusted_proxies": TRUSTED, "forwarded_header": forwarded_header}
    assert source_ip_of("10.0.0.1", headers, **options) == "10.0.0.2"


def test_peer_without_an_ip_address_records_no_source_ip(
    engine: sa.Engine, create_tables: Tables
) -> None:
    """Starlette's TestClient default peer is the name "testclient": not an address."""
    create_tables(Base.metadata)
    seed(engine, 1)
    client = TestClient(make_app(engine, trusted_proxies=TRUSTED))
    response = client.post("/async/deposit/1", headers={"X-Forwarded-For": "198.51.100.7"})
    assert response.status_code == 200, response.text
    assert request_transaction(engine, 1).source_ip is None


# --- configuration ------------------------------------------------------------------------------

BAD_OPTIONS: list[dict[str, Any]] = [
    {"trusted_proxies": ["not-an-ip"]},
    {"trusted_proxies": ["10.0.0.0/33"]},
    {"trusted_proxies": ["10.0.0.1", "example.com"]},
    {"trusted_proxies": [None]},
    {"trusted_proxies": "10.0.0.0/8"},
    {"request_id_header": ""},
    {"request_id_header": "X Request ID"},
    {"request_id_header": "X-Request-ID:"},
    {"request_id_header": "X-Request-ID\r\nSet-Cookie: a=b"},
    {"request_id_header": "X-Request-ID\n"},
    {"request_id_header": "X-Réquest-ID"},
    {"request_id_header": "X(Request)"},
    {"request_id_max_length": 0},
    {"request_id_max_length": -1},
    {"request_id_max_length": 129},
    {"request_id_max_length": 10_000},
    {"request_id_max_length": "64"},
    {"request_id_max_length": True},
    {"request_id_header": None},
    {"actor": "alice"},
    {"forwarded_header": "X-Real-IP"},
    {"forwarded_header": ""},
    {"forwarded_header": None},
    {"forwarded_header": "X-Forwarded-For, Forwarded"},
    {"forwarded_header": ["Forwarded"]},
    {"forwarded_header": " Forwarded"},
    {"forwarded_header": "X-Forwarded"},
    {"forwarded_header": b"Forwarded"},
    {"trust_request_id": "yes"},
    {"trust_request_id": "Proxies"},
    {"trust_request_id": None},
    {"trust_request_id": True},
]


@pytest.mark.parametrize("options", BAD_OPTIONS, ids=lambda o: repr(o)[:40])
def test_bad_configuration_raises_at_construction(options: dict[str, Any]) -> None:
    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("not reached")

    with pytest.raises(ConfigurationError):
        AuditContextMiddleware(inner, **options)


@pytest.mark.parametrize(
    "options",
    [
        {"trusted_proxies": ["not-an-ip"]},
        {"request_id_header": ""},
        {"request_id_max_length": 129},
        {"forwarded_header": "X-Real-IP"},
    ],
    ids=repr,
)
def test_bad_configuration_fails_the_app_before_any_request_is_served(
    options: dict[str, Any],
) -> None:
    """``add_middleware`` is lazy: the error comes when Starlette builds its middleware stack."""
    served: list[str] = []

    async def endpoint(request: Request) -> Response:
        served.append(request.url.path)
        return JSONResponse({})

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(AuditContextMiddleware, **options)
    with pytest.raises(ConfigurationError):
        TestClient(app).get("/")
    assert served == []


# --- concurrency --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["callable", "set_actor", "authentication"])
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_concurrent_requests_never_see_each_others_context(
    kind: str, how: str, engine: sa.Engine, queued_engine: sa.Engine, create_tables: Tables
) -> None:
    """50 requests at once, each with its own actor, client IP and request id.

    Each endpoint reads its context, then waits for other requests (all 50 for async endpoints,
    groups of 10 in the threadpool), then writes: the writes interleave with other requests'
    context reads, and every row must still carry its own request's values.
    """
    create_tables(Base.metadata)
    rendezvous = Rendezvous(async_parties=N_CONCURRENT, sync_parties=10)
    app = make_app(
        queued_engine,
        actor=header_actor if how == "callable" else None,
        auth="inside" if how == "authentication" else None,
        trusted_proxies=["10.0.0.0/8"],
        rendezvous=rendezvous,
    )

    def own(i: int) -> dict[str, str]:
        return {"actor": f"user-{i}", "source_ip": f"198.51.100.{i}", "request_id": f"req-{i}"}

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        actor_header = {
            "callable": ("X-User", f"user-{i}"),
            "set_actor": ("X-Late-Actor", f"user-{i}"),
            "authentication": ("Authorization", f"Bearer user-{i}"),
        }[how]
        headers = dict(
            [actor_header, ("X-Forwarded-For", f"198.51.100.{i}"), ("X-Request-ID", f"req-{i}")]
        )
        return await client.post(f"/{kind}/open/{i}", headers=headers)

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            async with asyncio.timeout(120):
                return await asyncio.gather(*(one(client, i) for i in range(N_CONCURRENT)))

    responses = asyncio.run(main())
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["before"], body["after"]) == (own(i), own(i))
        assert request_ids(response) == [f"req-{i}"]
    tx_ids = set()
    for i in range(N_CONCURRENT):
        (tx,) = transactions(engine, i)
        assert recorded(tx) == tuple(own(i).values())
        tx_ids.add(tx.id)
    assert len(tx_ids) == N_CONCURRENT
