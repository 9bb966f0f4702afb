"""Concurrency: many writers on the same and different rows keep every record's history whole.

Threads (each with its own ``Session``) and asyncio tasks (each with its own ``AsyncSession``)
update a few shared counters and rows of their own — locked reads, blind writes of unloaded
attributes, SQL-expression increments, ORM bulk ``update()`` — with savepoints released or rolled
back and whole transactions rolled back on purpose. Afterwards every record's history must be
exactly what was committed: one row per committed change, nothing from a rollback, the actor and
request of the writer that made it, transaction ids increasing in the order the changes were
committed, each version's old values equal to the previous version's new values, the live row equal
to the last version. Targeted tests check that transaction ids follow commit order when the later
committer flushed first. PostgreSQL and MariaDB only (SQLite serializes writers).

Every row a transaction touches is taken in ascending key order, so the workload itself cannot
deadlock; should the database still report a deadlock, the whole transaction is retried (the
assertions are about history, not about the workload). Every wait is bounded: lock timeouts on the
connections and timeouts on joins.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from versioning import Operation, Version, Versioned, audit_context, history, history_table
from versioning.schema import TRANSACTION_ID, VERSION_ID

from helpers import backend_id, waited_for_lock

pytestmark = pytest.mark.backends("postgresql", "mariadb")

Tables = Callable[[sa.MetaData], sa.Engine]

THREADS = 8
TASKS = 12
ROUNDS = 25
#: Counters every worker updates.
SHARED = (1, 2, 3)
#: Bound for a whole workload; a hang (a deadlock nobody detects) fails the test.
TIMEOUT = 240.0
#: Lock waits on the workers' connections fail after this many seconds.
LOCK_TIMEOUT = 15
SEED = "seed"


class Base(DeclarativeBase):
    pass


class Counter(Versioned, Base):
    __tablename__ = "conc_counters"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    n: Mapped[int]
    #: The tag of the transaction that last wrote the row: its request id.
    last: Mapped[str] = mapped_column(sa.String(50))


# -- engines -------------------------------------------------------------------------------------


def _connect_args(dialect: str, driver: str) -> dict[str, Any]:
    if dialect == "postgresql":
        if driver == "asyncpg":
            return {"server_settings": {"lock_timeout": str(LOCK_TIMEOUT * 1000)}}
        return {"options": f"-c lock_timeout={LOCK_TIMEOUT * 1000}"}
    return {
        "init_command": (
            f"SET SESSION lock_wait_timeout={LOCK_TIMEOUT}, innodb_lock_wait_timeout={LOCK_TIMEOUT}"
        )
    }


@pytest.fixture
def pool(engine: sa.Engine) -> Iterator[sa.Engine]:
    """An engine on the test database with a connection for every worker."""
    pooled = sa.create_engine(
        engine.url,
        pool_size=max(THREADS, 4) + 2,
        max_overflow=0,
        pool_timeout=LOCK_TIMEOUT,
        connect_args=_connect_args(engine.dialect.name, engine.dialect.driver),
    )
    yield pooled
    pooled.dispose()


def async_engine_for(engine: sa.Engine) -> AsyncEngine:
    driver = {"postgresql": "asyncpg", "mariadb": "aiomysql"}[engine.dialect.name]
    return create_async_engine(
        engine.url.set(drivername=f"{engine.dialect.name}+{driver}"),
        pool_size=TASKS + 2,
        max_overflow=0,
        pool_timeout=LOCK_TIMEOUT,
        connect_args=_connect_args(engine.dialect.name, driver),
    )


# -- the workload --------------------------------------------------------------------------------

#: lock: ``get(with_for_update=True)`` then ``n += 1``; own: plain ``get`` of the worker's own row
#: then ``n += 1``; blind: write ``last`` of an expired instance without loading it (the library
#: reads the old values); expr: ``n = Counter.n + 1`` on an expired instance; bulk: ORM
#: ``update(Counter).where(...)``. Every step also writes the transaction's tag into ``last``.
SHARED_KINDS = ("lock", "blind", "expr", "bulk")
INCREMENTS = {"lock": 1, "own": 1, "expr": 1, "bulk": 1, "blind": 0}
SYNC_SETTINGS = ("auto", "fetch", "evaluate", False)


@dataclass(frozen=True)
class Step:
    record: int
    kind: str
    #: None, "release" or "rollback": the step runs in a savepoint that ends so.
    savepoint: str | None
    sync: Any = "auto"


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    rollback: bool


def plan(worker: int, round_: int, own: int) -> Plan:
    """What one transaction of a worker does: steps in ascending record order."""
    rng = random.Random(worker * 1000 + round_)
    records = sorted(rng.sample(SHARED, rng.choice((1, 1, 2, 3))))
    if rng.random() < 0.7:
        records.append(own)  # own rows have keys above the shared ones
    steps = []
    for record in records:
        kind = "own" if record == own else rng.choice(SHARED_KINDS)
        roll = rng.random()
        savepoint = None if roll < 0.7 else ("release" if roll < 0.85 else "rollback")
        steps.append(Step(record, kind, savepoint, rng.choice(SYNC_SETTINGS)))
    return Plan(tuple(steps), rollback=rng.random() < 0.15)


@dataclass
class Committed:
    actor: str
    #: record -> how much the transaction added to its counter (0 for a blind write)
    touched: dict[int, int]


@dataclass
class Log:
    """What the workers did, filled by them; read after they are all done."""

    committed: dict[str, Committed] = field(default_factory=dict)
    rolled_back: set[str] = field(default_factory=set)
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _RollBackSavepoint(Exception):
    pass


def _is_deadlock(error: DBAPIError) -> bool:
    return "deadlock" in str(error.orig).lower()


def statement_for(step: Step, tag: str) -> Any:
    return (
        update(Counter)
        .where(Counter.id == step.record)
        .values(n=Counter.n + 1, last=tag)
        .execution_options(synchronize_session=step.sync)
    )


def apply(session: Session, objects: dict[int, Counter], step: Step, tag: str) -> None:
    obj = objects[step.record]
    if step.kind == "lock":
        got = session.get(Counter, step.record, with_for_update=True, populate_existing=True)
        assert got is obj
        obj.n += 1
    elif step.kind == "own":
        got = session.get(Counter, step.record)
        assert got is obj
        obj.n += 1
    elif step.kind == "expr":
        assert "n" in sa.inspect(obj).expired_attributes
        obj.n = Counter.n + 1  # type: ignore[assignment]
    elif step.kind == "bulk":
        session.execute(statement_for(step, tag))
    else:
        assert step.kind == "blind"
        assert "last" in sa.inspect(obj).expired_attributes
    if step.kind != "bulk":
        obj.last = tag
    session.flush()


def run_transaction(
    session: Session, objects: dict[int, Counter], plan_: Plan, tag: str, log: Log, actor: str
) -> None:
    touched: dict[int, int] = {}
    for step in plan_.steps:
        if step.savepoint is None:
            apply(session, objects, step, tag)
        else:
            try:
                with session.begin_nested():
                    apply(session, objects, step, tag)
                    if step.savepoint == "rollback":
                        raise _RollBackSavepoint
            except _RollBackSavepoint:
                continue
        touched[step.record] = INCREMENTS[step.kind]
    if plan_.rollback:
        session.rollback()
        with log.lock:
            log.rolled_back.add(tag)
    else:
        session.commit()
        with log.lock:
            log.committed[tag] = Committed(actor, touched)


def thread_worker(pool: sa.Engine, worker: int, log: Log, start: threading.Barrier) -> None:
    actor = f"thread-{worker}"
    own = 100 + worker
    with Session(pool) as session, audit_context(actor=actor):
        # Instances of every row the worker writes, kept for blind writes (expired on commit).
        objects = {obj.id: obj for obj in session.scalars(select(Counter))}
        session.commit()
        start.wait(timeout=TIMEOUT)
        for round_ in range(ROUNDS):
            plan_ = plan(worker, round_, own)
            for attempt in range(20):
                tag = f"{actor}:{round_}:{attempt}"
                try:
                    with audit_context(request_id=tag):
                        run_transaction(session, objects, plan_, tag, log, actor)
                    break
                except DBAPIError as error:
                    session.rollback()
                    if not _is_deadlock(error):
                        raise
                    with log.lock:
                        log.retries += 1
            else:
                raise AssertionError(f"{actor} round {round_}: deadlocked 20 times")


def seed(engine: sa.Engine, own: list[int]) -> None:
    with Session(engine) as session, audit_context(actor=SEED, request_id=SEED):
        session.add_all(Counter(id=i, n=0, last=SEED) for i in (*SHARED, *own))
        session.commit()


# -- checking ------------------------------------------------------------------------------------


def check(engine: sa.Engine, log: Log, records: list[int]) -> None:
    """Every record's history is exactly the committed changes, chained, in commit order."""
    assert log.committed, "the workload committed nothing"
    assert log.rolled_back, "the workload rolled nothing back"
    changed = {tag: c for tag, c in log.committed.items() if c.touched}
    history_rows = history_table(Counter)
    transactions = Base.metadata.tables["versioning_transaction"]
    with Session(engine) as session:
        for record in records:
            versions = history(session, Counter, record)
            check_record(session, record, versions, log)
            raw = session.execute(
                select(history_rows.c[TRANSACTION_ID])
                .where(history_rows.c.id == record)
                .order_by(history_rows.c[VERSION_ID])
            ).scalars()
            # Written in commit order: the write order agrees with the transaction order.
            assert list(raw) == [v.transaction_id for v in versions], record
        tx_rows = session.execute(select(transactions.c.request_id, transactions.c.actor)).all()
        # One transaction row per committed transaction that changed something, none for a
        # rollback, a rolled-back savepoint only, or a deadlocked attempt.
        assert sorted(r.request_id for r in tx_rows) == sorted([SEED, *changed])
        assert all(r.actor == changed[r.request_id].actor for r in tx_rows if r.request_id != SEED)
        total = session.execute(select(sa.func.count()).select_from(history_rows)).scalar_one()
        assert total == len(records) + sum(len(c.touched) for c in changed.values())


def describe(record: int, versions: list[Version]) -> str:
    lines = [f"history of counter {record}:"]
    for v in versions:
        lines.append(
            f"  tx {v.transaction_id} {v.operation.value} {dict(v.state)} {dict(v.changes)}"
        )
    return "\n".join(lines)


def check_record(session: Session, record: int, versions: list[Version], log: Log) -> None:
    expected = sorted(tag for tag, c in log.committed.items() if record in c.touched)
    first, rest = versions[0], versions[1:]
    assert first.operation is Operation.INSERT
    assert dict(first.state) == {"id": record, "n": 0, "last": SEED}
    # Exactly one version per committed change: none lost, none doubled, none rolled back.
    assert sorted(v.state["last"] for v in rest) == expected, record
    previous = first
    for version in rest:
        tag = version.state["last"]
        assert version.operation is Operation.UPDATE
        assert version.transaction is not None
        assert version.transaction.request_id == tag
        assert version.transaction.actor == log.committed[tag].actor
        assert version.transaction_id > previous.transaction_id, describe(record, versions)
        # The snapshots chain: the old values are the previous version's new values.
        step = log.committed[tag].touched[record]
        assert version.state["n"] == previous.state["n"] + step, describe(record, versions)
        for key, (old, new) in version.changes.items():
            assert old == previous.state[key], describe(record, versions)
            assert new == version.state[key], describe(record, versions)
        unchanged = {k: v for k, v in version.state.items() if k not in version.changes}
        assert unchanged == {k: previous.state[k] for k in unchanged}, describe(record, versions)
        previous = version
    live = session.get(Counter, record)
    assert live is not None
    assert {"id": live.id, "n": live.n, "last": live.last} == dict(previous.state)
    assert live.n == sum(log.committed[tag].touched[record] for tag in expected)


# -- threads -------------------------------------------------------------------------------------


def test_threads_updating_the_same_and_different_rows(
    create_tables: Tables, pool: sa.Engine
) -> None:
    engine = create_tables(Base.metadata)
    own = [100 + w for w in range(THREADS)]
    seed(engine, own)
    log = Log()
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def target(worker: int) -> None:
        try:
            thread_worker(pool, worker, log, start)
        except BaseException as error:  # reported by the main thread
            errors.append(error)
            start.abort()

    threads = [threading.Thread(target=target, args=(w,), daemon=True) for w in range(THREADS)]
    deadline = time.monotonic() + TIMEOUT
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"workers still running after {TIMEOUT}s (a deadlock?): {stuck}"
    if errors:
        raise errors[0]
    check(engine, log, [*SHARED, *own])


# -- asyncio tasks --------------------------------------------------------------------------------


async def apply_async(
    session: AsyncSession, objects: dict[int, Counter], step: Step, tag: str
) -> None:
    obj = objects[step.record]
    if step.kind == "lock":
        got = await session.get(Counter, step.record, with_for_update=True, populate_existing=True)
        assert got is obj
        obj.n += 1
    elif step.kind == "own":
        got = await session.get(Counter, step.record)
        assert got is obj
        obj.n += 1
    elif step.kind == "expr":
        assert "n" in sa.inspect(obj).expired_attributes
        obj.n = Counter.n + 1  # type: ignore[assignment]
    elif step.kind == "bulk":
        await session.execute(statement_for(step, tag))
    else:
        assert step.kind == "blind"
        assert "last" in sa.inspect(obj).expired_attributes
    if step.kind != "bulk":
        obj.last = tag
    await session.flush()


async def run_transaction_async(
    session: AsyncSession,
    objects: dict[int, Counter],
    plan_: Plan,
    tag: str,
    log: Log,
    actor: str,
) -> None:
    touched: dict[int, int] = {}
    for step in plan_.steps:
        if step.savepoint is None:
            await apply_async(session, objects, step, tag)
        else:
            try:
                async with session.begin_nested():
                    await apply_async(session, objects, step, tag)
                    if step.savepoint == "rollback":
                        raise _RollBackSavepoint
            except _RollBackSavepoint:
                continue
        touched[step.record] = INCREMENTS[step.kind]
    if plan_.rollback:
        await session.rollback()
        log.rolled_back.add(tag)
    else:
        await session.commit()
        log.committed[tag] = Committed(actor, touched)


async def task_worker(engine: AsyncEngine, worker: int, log: Log, start: asyncio.Event) -> None:
    actor = f"task-{worker}"
    own = 100 + worker
    async with AsyncSession(engine) as session, audit_context(actor=actor):
        objects = {obj.id: obj for obj in await session.scalars(select(Counter))}
        await session.commit()
        await start.wait()
        for round_ in range(ROUNDS):
            plan_ = plan(worker, round_, own)
            for attempt in range(20):
                tag = f"{actor}:{round_}:{attempt}"
                try:
                    async with audit_context(request_id=tag):
                        await run_transaction_async(session, objects, plan_, tag, log, actor)
                    break
                except DBAPIError as error:
                    await session.rollback()
                    if not _is_deadlock(error):
                        raise
                    log.retries += 1
            else:
                raise AssertionError(f"{actor} round {round_}: deadlocked 20 times")


def test_asyncio_tasks_updating_the_same_and_different_rows(
    create_tables: Tables, engine: sa.Engine
) -> None:
    create_tables(Base.metadata)
    own = [100 + w for w in range(TASKS)]
    seed(engine, own)
    log = Log()

    async def main() -> None:
        async_engine = async_engine_for(engine)
        try:
            start = asyncio.Event()
            tasks = [
                asyncio.create_task(task_worker(async_engine, w, log, start)) for w in range(TASKS)
            ]
            start.set()
            try:
                await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await async_engine.dispose()

    asyncio.run(main())
    check(engine, log, [*SHARED, *own])


# -- commit order --------------------------------------------------------------------------------


def seed_two(engine: sa.Engine) -> None:
    with Session(engine) as session, audit_context(actor=SEED, request_id=SEED):
        session.add_all([Counter(id=1, n=0, last=SEED), Counter(id=2, n=0, last=SEED)])
        session.commit()


def write(session: Session, how: str, obj: Counter, tag: str) -> None:
    """Increment ``obj`` (or only tag it, for a blind write) in the way ``how`` says."""
    if how == "lock":
        session.get(Counter, obj.id, with_for_update=True, populate_existing=True)
        obj.n += 1
        obj.last = tag
    elif how == "blind":
        obj.last = tag
    elif how == "expr":
        obj.n = Counter.n + 1  # type: ignore[assignment]
        obj.last = tag
    else:
        session.execute(
            update(Counter).where(Counter.id == obj.id).values(n=Counter.n + 1, last=tag)
        )
    session.flush()


def expected_n(how: str) -> int:
    return 0 if how == "blind" else 1


def check_commit_order(engine: sa.Engine, how: str) -> None:
    """A changed X (1) first, B changed Y (2) and committed, then A changed Y and committed."""
    with Session(engine) as session:
        y = history(session, Counter, 2)
        x = history(session, Counter, 1)
    assert [v.state["last"] for v in x] == [SEED, "a"]
    assert [v.state["last"] for v in y] == [SEED, "b", "a"]
    assert [v.transaction.actor for v in y if v.transaction] == [SEED, "b", "a"]
    # B committed first, so its transaction id is the smaller, though A flushed first.
    assert y[0].transaction_id < y[1].transaction_id < y[2].transaction_id
    assert x[1].transaction_id == y[2].transaction_id
    assert [v.state["n"] for v in y] == [0, 1, 1 + expected_n(how)]
    assert y[2].changes.get("last") == ("b", "a")
    if how != "blind":
        assert y[2].changes["n"] == (1, 2)
    with Session(engine) as session:
        live = session.get(Counter, 2)
        assert live is not None
        assert (live.n, live.last) == (y[2].state["n"], "a")


@pytest.mark.parametrize("how", ["lock", "blind", "expr", "bulk"])
def test_transaction_ids_follow_commit_order_not_first_flush(
    create_tables: Tables, pool: sa.Engine, how: str
) -> None:
    """B commits between A's first flush and A's change of the same row as B."""
    engine = create_tables(Base.metadata)
    seed_two(engine)
    with Session(pool) as a, Session(pool) as b:
        a_objects = {obj.id: obj for obj in a.scalars(select(Counter))}
        a.commit()  # expired: blind writes read the old values from the database
        with audit_context(actor="a"):
            write(a, "lock", a_objects[1], "a")
        with audit_context(actor="b"):
            y = b.get(Counter, 2, with_for_update=True)
            assert y is not None
            y.n += 1
            y.last = "b"
            b.commit()
        write(a, how, a_objects[2], "a")
        a.commit()
    check_commit_order(engine, how)


@pytest.mark.parametrize("how", ["lock", "blind", "expr", "bulk"])
def test_transaction_ids_follow_commit_order_when_waiting_for_a_lock(
    create_tables: Tables, pool: sa.Engine, how: str
) -> None:
    """A, which flushed first, waits for B's lock on Y; B commits; A goes on and commits."""
    engine = create_tables(Base.metadata)
    seed_two(engine)
    errors: list[BaseException] = []
    with Session(pool) as a, Session(pool) as b:
        a_objects = {obj.id: obj for obj in a.scalars(select(Counter))}
        a.commit()
        with audit_context(actor="a"):
            write(a, "lock", a_objects[1], "a")
        with audit_context(actor="b"):
            y = b.get(Counter, 2, with_for_update=True)
            assert y is not None
            y.n += 1
            y.last = "b"
            b.flush()

        def finish_a() -> None:
            try:
                write(a, how, a_objects[2], "a")
                a.commit()
            except BaseException as error:
                errors.append(error)

        waiter = backend_id(a)
        thread = threading.Thread(target=finish_a, daemon=True)
        thread.start()
        waited = waited_for_lock(pool, waiter, thread)
        b.commit()
        thread.join(LOCK_TIMEOUT * 2)
        assert not thread.is_alive(), "A is still waiting after B committed"
        if errors:
            raise errors[0]
        assert waited, "A did not wait for B's row lock"
    check_commit_order(engine, how)


# -- values the session loaded before another transaction committed ------------------------------
#
# Under READ COMMITTED (PostgreSQL) and for writes under REPEATABLE READ (MariaDB), an UPDATE acts
# on the row as last committed, which may differ from what the session loaded earlier without a
# lock. The history must describe the row as it really was and became.


def test_snapshot_holds_a_column_another_transaction_changed_meanwhile(
    create_tables: Tables, pool: sa.Engine
) -> None:
    """A loads Y without a lock; B changes Y.last and commits; A changes only Y.n and commits.

    No update is lost (each wrote its own column): the row ends as n=5, last="b", and so must
    A's version of it, or as_of/restore of that version would silently undo B's change.
    """
    engine = create_tables(Base.metadata)
    seed_two(engine)
    with Session(pool) as a, Session(pool) as b, audit_context(actor="a"):
        y_a = a.get(Counter, 2)
        assert y_a is not None and (y_a.n, y_a.last) == (0, SEED)
        with audit_context(actor="b"):
            y_b = b.get(Counter, 2)
            assert y_b is not None
            y_b.last = "b"
            b.commit()
        y_a.n = 5
        a.commit()
    with Session(engine) as session:
        versions = history(session, Counter, 2)
        live = session.get(Counter, 2)
        assert live is not None and (live.n, live.last) == (5, "b")
    assert [v.transaction.actor for v in versions if v.transaction] == [SEED, "b", "a"]
    assert versions[2].changes == {"n": (0, 5)}
    assert dict(versions[2].state) == {"id": 2, "n": 5, "last": "b"}


def test_expression_increment_over_a_value_another_transaction_changed(
    create_tables: Tables, pool: sa.Engine
) -> None:
    """A loads Y (n=0) without a lock; B increments Y.n and commits; A writes ``n = n + 1``.

    The database computes 2 from the committed 1; the history must say 1 -> 2, not 0 -> 2.
    """
    engine = create_tables(Base.metadata)
    seed_two(engine)
    with Session(pool) as a, Session(pool) as b, audit_context(actor="a"):
        y_a = a.get(Counter, 2)
        assert y_a is not None and y_a.n == 0
        with audit_context(actor="b"):
            y_b = b.get(Counter, 2)
            assert y_b is not None
            y_b.n += 1
            b.commit()
        y_a.n = Counter.n + 1  # type: ignore[assignment]
        a.commit()
    with Session(engine) as session:
        versions = history(session, Counter, 2)
    assert [v.state["n"] for v in versions] == [0, 1, 2]
    assert [v.changes for v in versions[1:]] == [{"n": (0, 1)}, {"n": (1, 2)}]


def test_delete_snapshot_holds_what_another_transaction_committed_meanwhile(
    create_tables: Tables, pool: sa.Engine
) -> None:
    """A loads Y without a lock; B changes Y and commits; A deletes Y.

    The delete version is the row as it was deleted (B's values): restoring it must not undo B.
    """
    engine = create_tables(Base.metadata)
    seed_two(engine)
    with Session(pool) as a, Session(pool) as b, audit_context(actor="a"):
        y_a = a.get(Counter, 2)
        assert y_a is not None and (y_a.n, y_a.last) == (0, SEED)
        with audit_context(actor="b"):
            y_b = b.get(Counter, 2)
            assert y_b is not None
            y_b.n, y_b.last = 7, "b"
            b.commit()
        a.delete(y_a)
        a.commit()
    with Session(engine) as session:
        versions = history(session, Counter, 2)
    assert [v.operation for v in versions] == [Operation.INSERT, Operation.UPDATE, Operation.DELETE]
    assert dict(versions[2].state) == {"id": 2, "n": 7, "last": "b"}


def test_blind_write_records_the_locked_row_not_an_older_snapshot(
    create_tables: Tables, pool: sa.Engine
) -> None:
    """A reads X (on MariaDB this fixes A's REPEATABLE READ snapshot); B increments Y and commits;
    A writes only ``last`` of its expired instance of Y, without loading it.

    The library reads Y's old values locked (B's n=1). SQLAlchemy also loads Y's expired key and
    ``n`` during the flush, with a plain read that sees A's older snapshot (n=0). The version must
    hold the row as it is (n=1, unchanged), not that older read.
    """
    engine = create_tables(Base.metadata)
    seed_two(engine)
    with Session(pool) as a, Session(pool) as b:
        a_objects = {obj.id: obj for obj in a.scalars(select(Counter))}
        a.commit()  # every instance expired
        with audit_context(actor="a"):
            assert a.get(Counter, 1) is a_objects[1]  # a plain read: the snapshot starts
            with audit_context(actor="b"):
                y_b = b.get(Counter, 2)
                assert y_b is not None
                y_b.n, y_b.last = 1, "b"
                b.commit()
            a_objects[2].last = "a"
            a.commit()
    with Session(engine) as session:
        versions = history(session, Counter, 2)
        live = session.get(Counter, 2)
        assert live is not None and (live.n, live.last) == (1, "a")
    assert versions[2].changes == {"last": ("b", "a")}
    assert dict(versions[2].state) == {"id": 2, "n": 1, "last": "a"}
