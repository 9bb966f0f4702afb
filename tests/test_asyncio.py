"""AsyncSession: writes are captured, and ``versioning.asyncio`` reads and restores without I/O
surprises (``MissingGreenlet``) — on aiosqlite, asyncpg and aiomysql.

Each test runs its coroutine with ``asyncio.run`` on an async engine opened on the same database
as the ``engine`` fixture, and disposes of that engine before the loop closes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import time
import traceback
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import MissingGreenlet, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
import versioning.asyncio
from versioning import Operation, Versioned, audit_context

Tables = Callable[[sa.MetaData], sa.Engine]

#: Upper bound for one test's coroutine: a hang fails the test instead of the run.
TIMEOUT = 120.0
US = dt.timedelta(microseconds=1)


class Base(DeclarativeBase):
    pass


class Order(Versioned, Base):
    __tablename__ = "async_orders"
    __versioned__ = {"exclude": ["priority", "memo"], "mask": {"card": versioning.masks.last4}}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    number: Mapped[str] = mapped_column(sa.String(20), unique=True)
    status: Mapped[str] = mapped_column(sa.String(20))
    total: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))
    card: Mapped[str | None] = mapped_column(sa.String(40))
    #: Excluded, filled by the server: only a reload gives its value after a re-creating restore.
    priority: Mapped[int] = mapped_column(server_default=sa.text("3"))
    #: Excluded and deferred: not loaded unless asked for.
    memo: Mapped[str | None] = mapped_column(sa.String(100), deferred=True)


CARD = "4111111111111111"


def _async_url(engine: sa.Engine) -> sa.URL:
    driver = {
        "sqlite": "sqlite+aiosqlite",
        "postgresql": "postgresql+asyncpg",
        "mariadb": "mariadb+aiomysql",
    }[engine.dialect.name]
    return engine.url.set(drivername=driver)


@pytest.fixture
def async_engine(engine: sa.Engine) -> AsyncEngine:
    """An async engine on the database of ``engine``, set up like it (see conftest.py).

    Tests dispose of it at the end of their event loop (see :func:`run`).
    """
    url = _async_url(engine)
    name = engine.dialect.name
    if name == "sqlite":
        async_engine = create_async_engine(url)

        @event.listens_for(async_engine.sync_engine, "connect")
        def _connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN: savepoints work
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(async_engine.sync_engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN")

    elif name == "postgresql":
        # A test that leaves a transaction open must fail, not hang the DROP in teardown.
        async_engine = create_async_engine(
            url, connect_args={"server_settings": {"lock_timeout": "20000"}}
        )
    else:
        async_engine = create_async_engine(
            url,
            connect_args={
                "init_command": "SET SESSION lock_wait_timeout=20, innodb_lock_wait_timeout=20"
            },
        )
    assert async_engine.url.database == engine.url.database
    return async_engine


def run(engine: AsyncEngine, main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main()`` in a new event loop, bounded in time; dispose of ``engine`` in that loop."""

    async def scope() -> None:
        try:
            await asyncio.wait_for(main(), TIMEOUT)
        finally:
            await engine.dispose()

    asyncio.run(scope())


async def pause() -> None:
    """Keep consecutive transactions' issued_at apart by well over a microsecond."""
    await asyncio.sleep(0.005)


def new_order(**values: Any) -> Order:
    defaults: dict[str, Any] = {
        "id": 1,
        "number": "A-1",
        "status": "new",
        "total": Decimal("10.00"),
        "card": CARD,
    }
    return Order(**(defaults | values))


async def add(session: AsyncSession, obj: Any) -> None:
    session.add(obj)
    await session.commit()
    await pause()


async def change(session: AsyncSession, pk: int, **values: Any) -> None:
    order = await session.get(Order, pk)
    assert order is not None
    for key, value in values.items():
        setattr(order, key, value)
    await session.commit()
    await pause()


async def remove(session: AsyncSession, pk: int) -> None:
    await session.delete(await session.get(Order, pk))
    await session.commit()
    await pause()


def unloaded_columns(obj: Any) -> set[str]:
    state = sa.inspect(obj)
    return {prop.key for prop in state.mapper.column_attrs if prop.key in state.unloaded}


def columns(obj: Any) -> dict[str, Any]:
    """Every column attribute of ``obj``, read plainly: a lazy load would raise here."""
    return {prop.key: getattr(obj, prop.key) for prop in sa.inspect(type(obj)).column_attrs}


def live(engine: sa.Engine, pk: int) -> dict[str, Any] | None:
    """The live row as a fresh sync session loads it, or None."""
    with Session(engine) as session:
        obj = session.get(Order, pk)
        return None if obj is None else columns(obj)


def counts(engine: sa.Engine) -> tuple[int, int, int]:
    tables = [
        Base.metadata.tables[Order.__tablename__],
        versioning.history_table(Order),
        Base.metadata.tables[versioning.TRANSACTION_TABLE],
    ]
    with engine.connect() as connection:
        one, two, three = (
            connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in tables
        )
    return one, two, three


# -- capture --------------------------------------------------------------------------------------


def test_writes_through_an_async_session_are_captured(
    create_tables: Tables, async_engine: AsyncEngine
) -> None:
    engine = create_tables(Base.metadata)

    async def main() -> None:
        context = audit_context(
            actor="alice", source_ip="2001:DB8::1", request_id="r-1", reason="test", job=7
        )
        async with context, AsyncSession(async_engine) as session:
            session.add(new_order())
            await session.commit()  # expires the order (expire_on_commit)
            [order] = (await session.scalars(sa.select(Order))).all()
            await session.commit()
            # Every attribute is expired: the capture must load the old values itself.
            assert "status" in sa.inspect(order).expired_attributes
            order.status = "paid"
            order.total = Decimal("12.50")
            await session.commit()
            await session.delete(order)
            await session.commit()

    run(async_engine, main)

    with Session(engine) as session:
        inserted, updated, deleted = versioning.history(session, Order, 1)
    assert inserted.operation is Operation.INSERT
    assert inserted.state == {
        "id": 1,
        "number": "A-1",
        "status": "new",
        "total": Decimal("10.00"),
        "card": "************1111",
    }
    assert updated.operation is Operation.UPDATE
    assert updated.changes == {
        "status": ("new", "paid"),
        "total": (Decimal("10.00"), Decimal("12.50")),
    }
    assert deleted.operation is Operation.DELETE
    assert deleted.state["status"] == "paid"
    transactions = {v.transaction_id for v in (inserted, updated, deleted)}
    assert len(transactions) == 3
    for version in (inserted, updated, deleted):
        tx = version.transaction
        assert tx is not None
        assert (tx.actor, tx.source_ip, tx.request_id, tx.reason) == (
            "alice",
            "2001:db8::1",
            "r-1",
            "test",
        )
        assert tx.extra == {"job": 7}
        assert tx.issued_at.tzinfo is not None


def test_a_rolled_back_async_transaction_leaves_no_history(
    create_tables: Tables, async_engine: AsyncEngine
) -> None:
    engine = create_tables(Base.metadata)

    async def main() -> None:
        async with AsyncSession(async_engine) as session:
            session.add(new_order())
            await session.flush()
            await session.rollback()

    run(async_engine, main)
    assert counts(engine) == (0, 0, 0)


# -- reading --------------------------------------------------------------------------------------


def test_history_as_of_and_version_at(create_tables: Tables, async_engine: AsyncEngine) -> None:
    create_tables(Base.metadata)

    async def main() -> None:
        async with AsyncSession(async_engine) as session:
            async with audit_context(actor="alice"):
                await add(session, new_order())
            async with audit_context(actor="bob"):
                await change(session, 1, status="paid")
            await remove(session, 1)

            versions = await versioning.asyncio.history(session, Order, 1)
            by_instance = await versioning.asyncio.history(session, new_order())
            assert by_instance == versions
            assert [v.operation for v in versions] == [
                Operation.INSERT,
                Operation.UPDATE,
                Operation.DELETE,
            ]
            created, paid, deleted = versions
            assert created.transaction is not None and paid.transaction is not None
            assert deleted.transaction is not None
            assert (created.transaction.actor, paid.transaction.actor) == ("alice", "bob")
            assert deleted.transaction.actor is None
            assert paid.changes == {"status": ("new", "paid")}
            assert created.primary_key == (1,)
            assert await versioning.asyncio.history(session, Order, 99) == []

            # By transaction id.
            old = await versioning.asyncio.as_of(session, Order, 1, created.transaction_id)
            assert isinstance(old, Order)
            assert sa.inspect(old).transient
            assert (old.id, old.status, old.card, old.total) == (
                1,
                "new",
                "************1111",
                Decimal("10.00"),
            )
            assert old.priority is None and old.memo is None  # excluded: unset, no load
            later = await versioning.asyncio.as_of(session, Order, 1, paid.transaction_id)
            assert later is not None and later.status == "paid"
            assert await versioning.asyncio.as_of(session, Order, 1, deleted.transaction_id) is None
            assert (
                await versioning.asyncio.as_of(session, Order, 1, created.transaction_id - 1)
                is None
            )

            # By moment.
            t_created = created.transaction.issued_at
            t_paid = paid.transaction.issued_at
            at_paid = await versioning.asyncio.as_of(session, Order, 1, t_paid)
            assert at_paid is not None and at_paid.status == "paid"
            just_before = await versioning.asyncio.as_of(session, Order, 1, t_paid - US)
            assert just_before is not None and just_before.status == "new"
            assert await versioning.asyncio.as_of(session, Order, 1, t_created - US) is None
            with pytest.raises(versioning.ArgumentError):
                await versioning.asyncio.as_of(session, Order, 1, dt.datetime(2030, 1, 1))

            # version_at: the version itself, deletes included, without its transaction.
            found = await versioning.asyncio.version_at(session, Order, 1, paid.transaction_id)
            assert found is not None
            assert found.operation is Operation.UPDATE and found.version_id == paid.version_id
            assert found.state == paid.state and found.transaction is None
            at_delete = await versioning.asyncio.version_at(
                session, Order, 1, dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
            )
            assert at_delete is not None and at_delete.operation is Operation.DELETE
            assert await versioning.asyncio.version_at(session, Order, 1, t_created - US) is None
            await session.rollback()

        # The results are plain values: usable after the session is closed, with no I/O.
        assert paid.to_instance().status == "paid"
        assert sa.inspect(paid.to_instance()).transient
        assert old.status == "new" and columns(old)["priority"] is None

    run(async_engine, main)


def test_the_async_forms_take_an_async_session(
    create_tables: Tables, async_engine: AsyncEngine, engine: sa.Engine
) -> None:
    create_tables(Base.metadata)

    async def main() -> None:
        with Session(engine) as sync_session:
            for call in (
                versioning.asyncio.history(sync_session, Order, 1),  # type: ignore[arg-type]
                versioning.asyncio.as_of(sync_session, Order, 1, 1),  # type: ignore[call-overload]
                versioning.asyncio.version_at(sync_session, Order, 1, 1),  # type: ignore[arg-type]
                versioning.asyncio.restore(sync_session, Order, 1, at=1),  # type: ignore[call-overload]
            ):
                with pytest.raises(versioning.ArgumentError, match="AsyncSession"):
                    await call

    run(async_engine, main)


def test_seal_verify_and_digest_async_and_across_drivers(
    create_tables: Tables, async_engine: AsyncEngine, engine: sa.Engine
) -> None:
    """Digests written through the async driver verify through it and through the sync one."""
    create_tables(Base.metadata)

    async def main() -> None:
        async with AsyncSession(async_engine) as session:
            async with audit_context(actor="alice", reason="async", extra={"n": 1}):
                await add(session, new_order())
            await change(session, 1, status="paid", total=Decimal("12.5"))
            made = await versioning.asyncio.seal(session, metadata=Base.metadata)
            await session.commit()
            assert made is not None and made.count == 2
            saved = await versioning.asyncio.digest(session, metadata=Base.metadata)
            assert saved is not None and saved.seal_id == made.id
            report = await versioning.asyncio.verify(session, [saved], metadata=Base.metadata)
            assert report.ok and report.versions_checked == 2, report.problems
            await session.rollback()

    run(async_engine, main)
    with Session(engine) as session:
        report = versioning.verify(session, metadata=Base.metadata)
    assert report.ok and report.unsealed == 0, report.problems


def sync_read_error(session: AsyncSession) -> BaseException | None:
    """What the sync ``history()`` raises when called from a coroutine, or None."""
    try:
        versioning.history(session.sync_session, Order, 1)
    except Exception as error:  # returned, and checked by the caller
        # The driver leaves behind a coroutine it never awaited: drop every reference to it (the
        # traceback's frames) and collect it now, so its warning is not reported in a later test.
        seen: BaseException | None = error
        while seen is not None:
            traceback.clear_frames(seen.__traceback__)
            seen.__traceback__ = None
            seen = seen.__cause__ or seen.__context__
        return error
    return None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_the_sync_functions_cannot_read_from_async_code(
    create_tables: Tables, async_engine: AsyncEngine
) -> None:
    """Why versioning.asyncio exists: the sync read does I/O outside the greenlet bridge."""
    create_tables(Base.metadata)

    async def main() -> None:
        async with AsyncSession(async_engine) as session:
            await add(session, new_order())
            error = sync_read_error(session)
            gc.collect()
            assert isinstance(error, MissingGreenlet | StatementError), error
            assert "greenlet_spawn has not been called" in str(error)
            await session.rollback()
            assert len(await versioning.asyncio.history(session, Order, 1)) == 1
            await session.rollback()
        gc.collect()

    run(async_engine, main)


# -- restore --------------------------------------------------------------------------------------


def test_restore_an_existing_record(
    create_tables: Tables, async_engine: AsyncEngine, engine: sa.Engine
) -> None:
    create_tables(Base.metadata)
    state: dict[str, Any] = {}

    async def main() -> None:
        async with AsyncSession(async_engine) as session:
            await add(session, new_order(memo="keep me"))
            await change(session, 1, status="paid", total=Decimal("99.00"), priority=1)
            created = (await versioning.asyncio.history(session, Order, 1))[0]

            # Every attribute of the order in the identity map is expired by the last commit.
            restored = await versioning.asyncio.restore(
                session, Order, 1, at=created.transaction_id
            )
            assert isinstance(restored, Order)
            assert sa.inspect(restored).persistent
            assert unloaded_columns(restored) == set()
            state.update(columns(restored))  # plain attribute access: no lazy load
            await session.commit()

            # Restoring a Version, to the state it already has: nothing to write, still loaded.
            again = await versioning.asyncio.restore(session, created)
            assert again is restored
            assert unloaded_columns(again) == set()
            assert again.status == "new"
            await session.commit()

    run(async_engine, main)
    assert state == {
        "id": 1,
        "number": "A-1",
        "status": "new",
        "total": Decimal("10.00"),
        "card": CARD,  # masked: keeps its live value
        "priority": 1,  # excluded: keeps its live value
        "memo": "keep me",  # excluded and deferred: loaded all the same
    }
    assert live(engine, 1) == state
    with Session(engine) as session:
        versions = versioning.history(session, Order, 1)
    assert [v.operation for v in versions] == [Operation.INSERT, Operation.UPDATE, Operation.UPDATE]
    assert versions[-1].changes == {
        "status": ("paid", "new"),
        "total": (Decimal("99.00"), Decimal("10.00")),
    }
    tx = versions[-1].transaction
    assert tx is not None and tx.reason is not None
    assert tx.reason.startswith("restore Order 1 to transaction ")


def test_restore_a_deleted_record(
    create_tables: Tables, async_engine: AsyncEngine, engine: sa.Engine
) -> None:
    create_tables(Base.metadata)
    state: dict[str, Any] = {}

    async def main() -> None:
        async with AsyncSession(async_engine, expire_on_commit=False) as session:
            await add(session, new_order(priority=1, memo="gone"))
            await change(session, 1, status="shipped")
            await remove(session, 1)
            deleted = (await versioning.asyncio.history(session, Order, 1))[-1]
            assert deleted.operation is Operation.DELETE

            async with audit_context(actor="support", reason="customer asked"):
                restored = await versioning.asyncio.restore(session, deleted)
                assert unloaded_columns(restored) == set()
                state.update(columns(restored))
                await session.commit()
            # expire_on_commit=False: still readable after the commit.
            assert restored.status == "shipped"

    run(async_engine, main)
    assert state == {
        "id": 1,
        "number": "A-1",
        "status": "shipped",
        "total": Decimal("10.00"),
        "card": None,  # masked: history cannot give it back, the column default applies
        "priority": 3,  # excluded: the server default, read back after the flush
        "memo": None,
    }
    assert live(engine, 1) == state
    with Session(engine) as session:
        last = versioning.history(session, Order, 1)[-1]
    assert last.operation is Operation.INSERT
    assert last.transaction is not None
    assert (last.transaction.actor, last.transaction.reason) == ("support", "customer asked")


def test_restore_errors_from_the_async_form(
    create_tables: Tables, async_engine: AsyncEngine, engine: sa.Engine
) -> None:
    create_tables(Base.metadata)
    before: list[tuple[int, int, int]] = []

    async def main() -> None:
        async with AsyncSession(async_engine) as session:
            await add(session, new_order(id=1, number="A-1"))
            await change(session, 1, number="A-9")
            await add(session, new_order(id=2, number="A-1"))
            created = (await versioning.asyncio.history(session, Order, 1))[0]
            await session.rollback()
            before.append(counts(engine))

            # Order 2 now holds the number order 1 had: putting it back violates the unique key.
            with pytest.raises(versioning.RestoreConflictError):
                await versioning.asyncio.restore(session, created)
            await session.rollback()

            with pytest.raises(versioning.RestoreError, match="did not exist"):
                await versioning.asyncio.restore(session, Order, 1, at=created.transaction_id - 1)
            with pytest.raises(versioning.ArgumentError, match=r"at=\.\.\."):
                await versioning.asyncio.restore(session, Order, 1)  # type: ignore[call-overload]
            await session.rollback()

    run(async_engine, main)
    assert counts(engine) == before[0]
    assert live(engine, 1)["number"] == "A-9"  # type: ignore[index]
    assert live(engine, 2)["number"] == "A-1"  # type: ignore[index]


# -- concurrency ----------------------------------------------------------------------------------


def test_concurrent_tasks_record_their_own_context(
    create_tables: Tables, async_engine: AsyncEngine, engine: sa.Engine
) -> None:
    """Tasks interleave on one loop, each in its own audit_context with its own AsyncSession."""
    create_tables(Base.metadata)
    tasks = 12
    # SQLite has one writer at a time, and a transaction that reads before it writes fails at
    # once ("database is locked") instead of waiting: there, tasks take turns for transactions.
    turns = asyncio.Semaphore(1 if engine.dialect.name == "sqlite" else tasks)

    async def worker(n: int) -> None:
        async with audit_context(actor=f"user-{n}", request_id=f"req-{n}", task=n):
            await asyncio.sleep(0)
            async with AsyncSession(async_engine) as session:
                async with turns:
                    session.add(new_order(id=n, number=f"N-{n}"))
                    await asyncio.sleep(0.001)  # let the other tasks run mid-transaction
                    await session.commit()
                async with audit_context(reason=f"pay {n}"), turns:
                    order = await session.get(Order, n)
                    assert order is not None
                    order.status = "paid"
                    await asyncio.sleep(0.001)
                    await session.commit()

    async def main() -> None:
        started = time.monotonic()
        await asyncio.gather(*(worker(n) for n in range(1, tasks + 1)))
        assert time.monotonic() - started < 60

    run(async_engine, main)

    with Session(engine) as session:
        for n in range(1, tasks + 1):
            created, paid = versioning.history(session, Order, n)
            assert created.operation is Operation.INSERT and paid.operation is Operation.UPDATE
            assert paid.changes == {"status": ("new", "paid")}
            for version, reason in ((created, None), (paid, f"pay {n}")):
                tx = version.transaction
                assert tx is not None
                assert (tx.actor, tx.request_id, tx.reason, tx.extra) == (
                    f"user-{n}",
                    f"req-{n}",
                    reason,
                    {"task": n},
                )
    assert counts(engine) == (tasks, 2 * tasks, 2 * tasks)


# -- search ---------------------------------------------------------------------------------------


def test_search_iter_search_and_transaction_changes(
    create_tables: Tables, async_engine: AsyncEngine
) -> None:
    create_tables(Base.metadata)

    async def main() -> None:
        async with AsyncSession(async_engine) as session:
            async with audit_context(actor="alice"):
                await add(session, new_order())
            async with audit_context(actor="bob"):
                await change(session, 1, status="paid")
                await add(session, new_order(id=2, number="A-2"))
            found = await versioning.asyncio.search(session, actor="bob")
            assert [(v.primary_key, v.operation) for v in found] == [
                ((2,), Operation.INSERT),
                ((1,), Operation.UPDATE),
            ]
            assert found[1].changes == {"status": ("new", "paid")}
            streamed = [v async for v in versioning.asyncio.iter_search(session, chunk=2)]
            assert [v.version_id for v in streamed] == [
                v.version_id for v in await versioning.asyncio.search(session)
            ]
            assert len(streamed) == 3 and streamed[-1].state["card"] == "************1111"
            oldest = [
                v
                async for v in versioning.asyncio.iter_search(
                    session, chunk=1, limit=2, newest_first=False
                )
            ]
            assert [v.operation for v in oldest] == [Operation.INSERT, Operation.UPDATE]
            [inserted] = await versioning.asyncio.transaction_changes(
                session, oldest[0].transaction_id
            )
            assert inserted.state["number"] == "A-1"
            with pytest.raises(versioning.ArgumentError, match="timezone-aware"):
                await versioning.asyncio.search(session, since=dt.datetime(2026, 1, 1))
            with pytest.raises(versioning.ArgumentError, match="takes an AsyncSession"):
                await versioning.asyncio.search(Session())  # type: ignore[arg-type]

    run(async_engine, main)


def test_an_async_flush_in_autocommit_is_refused(
    create_tables: Tables, async_engine: AsyncEngine
) -> None:
    """Autocommit would commit the change at once and its history later or never: refused
    before anything is written (see versioning.autocommit)."""
    engine = create_tables(Base.metadata)

    async def main() -> None:
        autocommit = async_engine.execution_options(isolation_level="AUTOCOMMIT")
        async with AsyncSession(autocommit) as session:
            session.add(new_order())
            with pytest.raises(versioning.VersioningError, match=r"Order: .*autocommit mode"):
                await session.flush()

    run(async_engine, main)
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(Order)).scalar() == 0
