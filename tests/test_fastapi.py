"""FastAPI: the same ``AuditContextMiddleware``, with dependencies, end to end on a real database.

The app is the shape users write: a session dependency (``yield Session``), an authentication
dependency reading a bearer token and calling ``versioning.set_actor`` (sync — run in the
threadpool — or async), an endpoint updating a versioned model and a background task writing after
the response. The transaction rows are read back with ``versioning.history``.
"""

# No ``from __future__ import annotations``: FastAPI must see the real ``Annotated[...]`` of the
# dependencies declared inside ``make_app``.
import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import httpx2 as httpx
import pytest
import sqlalchemy as sa
from fastapi import BackgroundTasks, Depends, FastAPI, Header, HTTPException
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from starlette.testclient import TestClient

from versioning import (
    AuditContext,
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
    __tablename__ = "fastapi_accounts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(sa.String(50))
    balance: Mapped[int] = mapped_column(default=0)


class Notice(Versioned, Base):
    """Written by the background task: one notice per account."""

    __tablename__ = "fastapi_notices"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(100))


PEER = "203.0.113.5"
FRESH_ID = re.compile(r"[0-9a-f]{32}")
N_CONCURRENT = 50

Tables = Callable[[sa.MetaData], sa.Engine]


def seen(ctx: AuditContext) -> dict[str, str | None]:
    return {"actor": ctx.actor, "source_ip": ctx.source_ip, "request_id": ctx.request_id}


def recorded(tx: Transaction | None) -> tuple[str | None, str | None, str | None]:
    assert tx is not None
    return tx.actor, tx.source_ip, tx.request_id


def seed(engine: sa.Engine, *ids: int) -> None:
    with Session(engine) as session:
        session.add_all(Account(id=i, owner=f"owner-{i}", balance=0) for i in ids)
        session.commit()


def versions_of(engine: sa.Engine, model: type[Any], pk: int) -> list[Any]:
    with Session(engine) as session:
        return history(session, model, pk)


def user_of(authorization: str | None) -> str:
    """``Bearer token-<name>`` is the user ``<name>``; anything else is rejected."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.startswith("token-") or token == "token-":
        raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
    return token.removeprefix("token-")


class Rendezvous:
    """Holds requests between authentication and their write, so they really overlap."""

    def __init__(self, async_parties: int, sync_parties: int) -> None:
        self.async_barrier = asyncio.Barrier(async_parties)
        self.sync_barrier = threading.Barrier(sync_parties, timeout=20)

    async def wait_async(self) -> None:
        async with asyncio.timeout(20):
            await self.async_barrier.wait()

    def wait_sync(self) -> None:
        self.sync_barrier.wait()


def make_app(
    engine: sa.Engine,
    *,
    auth_kind: str,
    endpoint_kind: str,
    rendezvous: Rendezvous | None = None,
    events: list[Any] | None = None,
    trust_request_id: str = "always",
) -> FastAPI:
    """The test client's peer is no proxy: these tests trust any inbound request id unless they
    say otherwise (the default, "proxies", has a test of its own)."""
    log = events if events is not None else []

    def get_session() -> Iterator[Session]:
        # expire_on_commit=False: reading the result after commit must not open a new read
        # transaction (on SQLite it would hold a lock while the background task writes).
        with Session(engine, expire_on_commit=False) as session:
            yield session

    def authenticate_sync(authorization: Annotated[str | None, Header()] = None) -> str:
        user = user_of(authorization)
        set_actor(user)
        return user

    async def authenticate_async(authorization: Annotated[str | None, Header()] = None) -> str:
        await asyncio.sleep(0)
        user = user_of(authorization)
        set_actor(user)
        return user

    authenticate = authenticate_sync if auth_kind == "sync" else authenticate_async
    SessionDep = Annotated[Session, Depends(get_session)]
    UserDep = Annotated[str, Depends(authenticate)]

    def write_notice(account_id: int, text: str) -> None:
        """The background task: its own session, after the response."""
        log.append(("task", seen(current_context())))
        with Session(engine) as session:
            session.add(Notice(id=account_id, text=text))
            session.commit()

    def deposit(
        session: Session, account_id: int, amount: int, background_tasks: BackgroundTasks
    ) -> dict[str, Any]:
        account = session.get(Account, account_id)
        if account is None:
            raise HTTPException(404, "no such account")
        account.balance += amount
        session.commit()
        background_tasks.add_task(write_notice, account_id, f"deposit of {amount}")
        return {"balance": account.balance}

    def open_account(
        session: Session, account_id: int, owner: str, background_tasks: BackgroundTasks
    ) -> dict[str, Any]:
        session.add(Account(id=account_id, owner=owner, balance=0))
        session.commit()
        background_tasks.add_task(write_notice, account_id, f"welcome {owner}")
        return {"id": account_id}

    app = FastAPI()
    app.add_middleware(
        AuditContextMiddleware, trusted_proxies=["10.0.0.0/8"], trust_request_id=trust_request_id
    )

    if endpoint_kind == "async":

        @app.post("/accounts/{account_id}/deposit")
        async def deposit_async(
            account_id: int,
            amount: int,
            session: SessionDep,
            user: UserDep,
            background_tasks: BackgroundTasks,
        ) -> dict[str, Any]:
            before = seen(current_context())
            await asyncio.sleep(0.001)
            result = deposit(session, account_id, amount, background_tasks)
            return {**result, "user": user, "before": before, "after": seen(current_context())}

        @app.post("/accounts/{account_id}")
        async def open_async(
            account_id: int, session: SessionDep, user: UserDep, background_tasks: BackgroundTasks
        ) -> dict[str, Any]:
            before = seen(current_context())
            if rendezvous is not None:
                await rendezvous.wait_async()
            await asyncio.sleep((account_id % 5) * 0.002)
            result = open_account(session, account_id, user, background_tasks)
            return {**result, "before": before, "after": seen(current_context())}

    else:

        @app.post("/accounts/{account_id}/deposit")
        def deposit_sync(
            account_id: int,
            amount: int,
            session: SessionDep,
            user: UserDep,
            background_tasks: BackgroundTasks,
        ) -> dict[str, Any]:
            before = seen(current_context())
            time.sleep(0.001)
            result = deposit(session, account_id, amount, background_tasks)
            return {**result, "user": user, "before": before, "after": seen(current_context())}

        @app.post("/accounts/{account_id}")
        def open_sync(
            account_id: int, session: SessionDep, user: UserDep, background_tasks: BackgroundTasks
        ) -> dict[str, Any]:
            before = seen(current_context())
            if rendezvous is not None:
                rendezvous.wait_sync()
            time.sleep((account_id % 5) * 0.002)
            result = open_account(session, account_id, user, background_tasks)
            return {**result, "before": before, "after": seen(current_context())}

    return app


KINDS = pytest.mark.parametrize(
    ("auth_kind", "endpoint_kind"),
    [("sync", "sync"), ("sync", "async"), ("async", "sync"), ("async", "async")],
    ids=["sync-auth-sync-endpoint", "sync-auth-async-endpoint", "async-auth-sync-endpoint",
         "async-auth-async-endpoint"],
)  # fmt: skip


@KINDS
def test_endpoint_with_dependencies_records_actor_ip_and_request_id(
    auth_kind: str, endpoint_kind: str, engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1)
    events: list[Any] = []
    app = make_app(engine, auth_kind=auth_kind, endpoint_kind=endpoint_kind, events=events)
    client = TestClient(app, client=(PEER, 1234))
    response = client.post(
        "/accounts/1/deposit",
        params={"amount": 5},
        headers={"Authorization": "Bearer token-alice", "X-Request-ID": "fa-1"},
    )
    assert response.status_code == 200, response.text
    own = {"actor": "alice", "source_ip": PEER, "request_id": "fa-1"}
    assert response.json() == {"balance": 5, "user": "alice", "before": own, "after": own}
    assert response.headers.get_list("x-request-id") == ["fa-1"]

    seed_version, update = versions_of(engine, Account, 1)
    assert recorded(seed_version.transaction) == (None, None, None)
    assert update.operation is Operation.UPDATE
    assert update.changes == {"balance": (0, 5)}
    assert recorded(update.transaction) == ("alice", PEER, "fa-1")

    # The background task ran after the response, in the request's context, in its own
    # transaction.
    assert events == [("task", own)]
    (notice,) = versions_of(engine, Notice, 1)
    assert notice.operation is Operation.INSERT
    assert notice.state["text"] == "deposit of 5"
    assert recorded(notice.transaction) == ("alice", PEER, "fa-1")
    assert notice.transaction_id != update.transaction_id


@KINDS
def test_fresh_request_id_and_forwarded_client_through_a_trusted_proxy(
    auth_kind: str, endpoint_kind: str, engine: sa.Engine, create_tables: Tables
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1)
    app = make_app(engine, auth_kind=auth_kind, endpoint_kind=endpoint_kind)
    client = TestClient(app, client=("10.0.0.1", 1234))
    response = client.post(
        "/accounts/1/deposit",
        params={"amount": 1},
        headers={
            "Authorization": "Bearer token-bob",
            "X-Request-ID": "not a valid id",
            "X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.0.0.2",
        },
    )
    assert response.status_code == 200, response.text
    (rid,) = response.headers.get_list("x-request-id")
    assert FRESH_ID.fullmatch(rid)
    _, update = versions_of(engine, Account, 1)
    assert recorded(update.transaction) == ("bob", "198.51.100.7", rid)
    (notice,) = versions_of(engine, Notice, 1)
    assert recorded(notice.transaction) == ("bob", "198.51.100.7", rid)


def test_by_default_a_client_cannot_choose_the_request_id(
    engine: sa.Engine, create_tables: Tables
) -> None:
    """The default ``trust_request_id="proxies"``: the id of a direct client is kept aside, in
    ``extra``, and the request, its background task and the response get a fresh one; the id our
    proxy sends is the request id."""
    create_tables(Base.metadata)
    seed(engine, 1, 2)
    app = make_app(engine, auth_kind="sync", endpoint_kind="async", trust_request_id="proxies")
    direct = TestClient(app, client=(PEER, 1234))
    response = direct.post(
        "/accounts/1/deposit",
        params={"amount": 1},
        headers={"Authorization": "Bearer token-eve", "X-Request-ID": "victim-request-0001"},
    )
    assert response.status_code == 200, response.text
    (rid,) = response.headers.get_list("x-request-id")
    assert FRESH_ID.fullmatch(rid)
    _, update = versions_of(engine, Account, 1)
    (notice,) = versions_of(engine, Notice, 1)
    for tx in (update.transaction, notice.transaction):
        assert recorded(tx) == ("eve", PEER, rid)
        assert dict(tx.extra) == {"untrusted_request_id": "victim-request-0001"}
    proxied = TestClient(app, client=("10.0.0.1", 1234))
    response = proxied.post(
        "/accounts/2/deposit",
        params={"amount": 1},
        headers={
            "Authorization": "Bearer token-eve",
            "X-Request-ID": "lb-7f3a",
            "X-Forwarded-For": "198.51.100.7",
        },
    )
    assert response.headers.get_list("x-request-id") == ["lb-7f3a"]
    _, update = versions_of(engine, Account, 2)
    assert recorded(update.transaction) == ("eve", "198.51.100.7", "lb-7f3a")
    assert dict(update.transaction.extra) == {}


@KINDS
@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic token-alice", "Bearer "])
def test_rejected_token_writes_nothing_and_still_echoes_the_request_id(
    authorization: str | None,
    auth_kind: str,
    endpoint_kind: str,
    engine: sa.Engine,
    create_tables: Tables,
) -> None:
    create_tables(Base.metadata)
    seed(engine, 1)
    events: list[Any] = []
    app = make_app(engine, auth_kind=auth_kind, endpoint_kind=endpoint_kind, events=events)
    client = TestClient(app, client=(PEER, 1234))
    headers = {"X-Request-ID": "denied-1"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = client.post("/accounts/1/deposit", params={"amount": 5}, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers.get_list("x-request-id") == ["denied-1"]
    assert [v.operation for v in versions_of(engine, Account, 1)] == [Operation.INSERT]
    assert versions_of(engine, Notice, 1) == []
    assert events == []


@KINDS
def test_concurrent_requests_with_different_tokens(
    auth_kind: str,
    endpoint_kind: str,
    engine: sa.Engine,
    queued_engine: sa.Engine,
    create_tables: Tables,
) -> None:
    """50 requests at once, each authenticated as its own user by the dependency.

    Each endpoint waits for other requests between authentication (``set_actor``) and its write
    (all 50 for async endpoints, groups of 10 in the threadpool). Every row — the endpoint's and
    its background task's — must carry its own request's user, client IP and request id.
    """
    create_tables(Base.metadata)
    rendezvous = Rendezvous(async_parties=N_CONCURRENT, sync_parties=10)
    app = make_app(
        queued_engine, auth_kind=auth_kind, endpoint_kind=endpoint_kind, rendezvous=rendezvous
    )

    def own(i: int) -> dict[str, str]:
        return {"actor": f"user-{i}", "source_ip": f"198.51.100.{i}", "request_id": f"req-{i}"}

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer token-user-{i}",
            "X-Forwarded-For": f"198.51.100.{i}",
            "X-Request-ID": f"req-{i}",
        }
        return await client.post(f"/accounts/{i}", headers=headers)

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            async with asyncio.timeout(120):
                return await asyncio.gather(*(one(client, i) for i in range(N_CONCURRENT)))

    responses = asyncio.run(main())
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert response.json() == {"id": i, "before": own(i), "after": own(i)}
        assert response.headers.get_list("x-request-id") == [f"req-{i}"]
    tx_ids = set()
    with Session(engine) as session:  # one session reads them all
        for i in range(N_CONCURRENT):
            (account,) = history(session, Account, i)
            assert account.state["owner"] == f"user-{i}"
            assert recorded(account.transaction) == tuple(own(i).values())
            (notice,) = history(session, Notice, i)
            assert notice.state["text"] == f"welcome user-{i}"
            assert recorded(notice.transaction) == tuple(own(i).values())
            tx_ids.update((account.transaction_id, notice.transaction_id))
    assert len(tx_ids) == 2 * N_CONCURRENT
