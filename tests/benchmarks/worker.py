"""One contender, one group of workloads, one database: the process ``run.py`` starts per cell.

Usage (``run.py`` does this for you)::

    python tests/benchmarks/worker.py URL CONTENDER GROUP

CONTENDER is one of ``plain``, ``handwritten`` (the naive floor), ``correctfloor`` (the naive
floor plus one locked read of the rows a flush updates or deletes), ``versioning``,
``undigested`` (this library with its digests switched off: what they cost), ``continuum``,
``history``; GROUP one of ``write``,
``session``, ``bulk``, ``reads``, ``memory``, ``integrity`` (``seal`` and ``verify``),
``digests`` (what the digests cost: the write workloads with them on and off by turns). The
worker drops every table of the database, declares the model of its contender, runs the group (a
warm-up first, untimed, then fresh tables and the timed run) and prints one JSON object on its
last stdout line:
``{"metrics": {name: [sample, ...]}, "notes": {name: text}, "errors": {name: text}}``. A
workload that fails lands in ``errors``; the others still run. Profile one group with
``python -m cProfile -s cumtime tests/benchmarks/worker.py URL CONTENDER GROUP`` (the database
must exist; ``run.py`` creates and drops its own).

Each contender runs in a process of its own because SQLAlchemy-Continuum and sqlalchemy-history
change the ORM globally (``make_versioned``) and both declare a table named ``transaction``.
"""

# No ``from __future__ import annotations``: the model's ``Mapped[...]`` annotations are then
# objects, not strings SQLAlchemy resolves in ``sys.modules["__main__"]``, which under
# ``python -m cProfile`` is not this module.
import datetime as dt
import gc
import json
import random
import statistics
import sys
import tempfile
import time
import traceback
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

CONTENDERS = (
    "plain",
    "handwritten",
    "correctfloor",
    "versioning",
    "undigested",
    "dbcapture",
    "continuum",
    "history",
)
GROUPS = ("write", "session", "bulk", "reads", "memory", "integrity", "digests")

ROWS = 5_000  # inserts, updates, bulk update
BATCH = 500  # rows per commit
BIG_SESSION = 20_000  # objects held by the session in the single-row commit workload
SMALL_SESSION = 200
COMMITS = 200  # single-row commits timed per session size
WARM_UP_COMMITS = 5
AS_OF_SIZES = (100, 10_000, 100_000)  # versions of one record, for as_of
AS_OF_CALLS = 200
HISTORY_VERSIONS = 200
HISTORY_CALLS = 50
# The write and bulk workloads are repeated within a process: at least once, at most MAX_ROUNDS
# times, until ROUND_BUDGET seconds have passed (a 5-second peer run stays at one round).
MAX_ROUNDS = 5
ROUND_BUDGET = 1.5
READ_BUDGET = 2.0  # seconds of calls per read metric at most (at least MIN_CALLS calls)
MIN_CALLS = 20

BASE_TIME = dt.datetime(2024, 1, 1, 12, 0, 0)
CATEGORIES = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta")

# Integer ids that autoincrement on every backend (SQLite only does so for INTEGER PRIMARY KEY).
ID_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# MariaDB's DATETIME has second precision unless told otherwise.
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb")

KEYS = ("id", "name", "category", "quantity", "price", "created_at")


class ItemColumns:
    """The benchmark model: an int key, two strings, an int, a Numeric and a datetime."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    category: Mapped[str] = mapped_column(sa.String(50))
    quantity: Mapped[int]
    price: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    created_at: Mapped[dt.datetime] = mapped_column(TIMESTAMP)


def values(i: int) -> dict[str, Any]:
    """The values of row ``i`` (no key): the same data for every contender."""
    return {
        "name": f"item {i:06d}",
        "category": CATEGORIES[i % len(CATEGORIES)],
        "quantity": i % 1000,
        "price": Decimal(f"{i % 10000}.{i % 100:02d}"),
        "created_at": BASE_TIME + dt.timedelta(seconds=i, microseconds=i % 1000),
    }


# --------------------------------------------------------------------------------------------
# Contenders: each declares the same model its own way.


class Contender:
    """A declared model plus what the workloads need to know about its history."""

    name: str
    metadata: sa.MetaData
    Item: Any

    def version_rows(self, connection: sa.Connection) -> int | None:
        """Rows in the history/version table(s), or None where there is no history."""
        return None

    def build_histories(
        self, connection: sa.Connection, sizes: dict[int, int]
    ) -> list[dt.datetime]:
        """Write ``sizes`` (record id -> versions) straight into the history tables.

        Returns the ``issued_at`` of every transaction, in id order (ids are 1, 2, ...).
        """
        raise NotImplementedError

    def as_of(self, session: Session, pk: int, at: int | dt.datetime) -> Any:
        raise NotImplementedError

    def history(self, session: Session, pk: int) -> list[Any]:
        raise NotImplementedError


def _plain() -> Contender:
    class Base(DeclarativeBase):
        pass

    class Item(ItemColumns, Base):
        __tablename__ = "bench_item"

    contender = Contender()
    contender.name, contender.metadata, contender.Item = "plain", Base.metadata, Item
    return contender


def _history_plan(sizes: dict[int, int]) -> Iterator[tuple[int, int, int]]:
    """(transaction id, record id, version number) of synthetic histories, one version a tx."""
    tx_id = 0
    for pk, count in sizes.items():
        for version in range(count):
            tx_id += 1
            yield tx_id, pk, version


def _snapshot(pk: int, version: int) -> dict[str, Any]:
    row = values(pk)
    row["id"] = pk
    row["name"] = f"item {pk:06d} v{version}"
    row["quantity"] = version
    return row


def _insert_chunked(
    connection: sa.Connection, table: sa.Table, rows: Iterator[dict[str, Any]]
) -> None:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == 10_000:
            connection.execute(table.insert(), chunk)
            chunk = []
    if chunk:
        connection.execute(table.insert(), chunk)


class Handwritten(Contender):
    """The lower bound: plain ORM, plus per flush one transaction row and ONE executemany.

    The shadow table mirrors a minimal versioning: the model's columns (no constraints), an
    autoincrement id, the transaction id (a foreign key, indexed), the operation, and an index
    on (record key, transaction id) so that a record's history can be read. No diff, no audit
    context, no reading of old values: each row is the object's state after the flush.
    """

    def __init__(self) -> None:
        class Base(DeclarativeBase):
            pass

        class Item(ItemColumns, Base):
            __tablename__ = "bench_item"

        self.name, self.metadata, self.Item = "handwritten", Base.metadata, Item
        self.transactions = sa.Table(
            "bench_transaction",
            Base.metadata,
            sa.Column("id", ID_TYPE, primary_key=True, autoincrement=True),
            sa.Column("issued_at", TIMESTAMP, nullable=False),
            sa.Index("ix_bench_transaction_issued_at", "issued_at", "id"),
            sqlite_autoincrement=True,
        )
        item_columns = [sa.Column(c.name, c.type, nullable=True) for c in Item.__table__.columns]
        self.shadow = sa.Table(
            "bench_item_shadow",
            Base.metadata,
            sa.Column("shadow_id", ID_TYPE, primary_key=True, autoincrement=True),
            sa.Column(
                "transaction_id",
                ID_TYPE,
                sa.ForeignKey(self.transactions.c.id),
                nullable=False,
                index=True,
            ),
            sa.Column("operation", sa.String(6), nullable=False),
            *item_columns,
            sa.Index("ix_bench_item_shadow_record", "id", "transaction_id"),
        )
        event.listen(Session, "after_flush", self._after_flush)

    def _after_flush(self, session: Session, flush_context: Any) -> None:
        rows: list[dict[str, Any]] = []
        item = self.Item
        for objects, operation in (
            (session.new, "insert"),
            (session.dirty, "update"),
            (session.deleted, "delete"),
        ):
            for obj in objects:
                if isinstance(obj, item):
                    loaded = sa.inspect(obj).dict
                    row = {key: loaded.get(key) for key in KEYS}
                    row["operation"] = operation
                    rows.append(row)
        if not rows:
            return
        connection = session.connection()
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        result = connection.execute(self.transactions.insert().values(issued_at=now))
        assert result.inserted_primary_key is not None
        tx_id = result.inserted_primary_key[0]
        for row in rows:
            row["transaction_id"] = tx_id
        connection.execute(self.shadow.insert(), rows)

    def version_rows(self, connection: sa.Connection) -> int | None:
        return connection.execute(sa.select(sa.func.count()).select_from(self.shadow)).scalar_one()

    def build_histories(
        self, connection: sa.Connection, sizes: dict[int, int]
    ) -> list[dt.datetime]:
        plan = list(_history_plan(sizes))
        stamps = [BASE_TIME + dt.timedelta(seconds=tx_id) for tx_id, _, _ in plan]
        _insert_chunked(
            connection,
            self.transactions,
            ({"id": tx_id, "issued_at": stamps[tx_id - 1]} for tx_id, _, _ in plan),
        )
        _insert_chunked(
            connection,
            self.shadow,
            (
                {
                    "transaction_id": tx_id,
                    "operation": "insert" if version == 0 else "update",
                    **_snapshot(pk, version),
                }
                for tx_id, pk, version in plan
            ),
        )
        return stamps

    def as_of(self, session: Session, pk: int, at: int | dt.datetime) -> Any:
        """The best query by hand: max() of the record's transaction ids up to ``at`` (one probe
        of the (id, transaction_id) index), then that version; a datetime is turned into a
        transaction id by the (issued_at, id) index, as a subquery or, on MariaDB (which probes
        the index for max() only with a constant), as a query of its own."""
        connection = session.connection()
        shadow, tx = self.shadow, self.transactions
        bound: Any = at
        if isinstance(at, dt.datetime):
            bound = (
                sa.select(tx.c.id)
                .where(tx.c.issued_at <= at.astimezone(dt.UTC).replace(tzinfo=None))
                .order_by(tx.c.issued_at.desc(), tx.c.id.desc())
                .limit(1)
            )
            if connection.dialect.name in ("mysql", "mariadb"):
                bound = connection.execute(bound).scalar()
                if bound is None:
                    return None
            else:
                bound = bound.scalar_subquery()
        latest = (
            sa.select(sa.func.max(shadow.c.transaction_id))
            .where(shadow.c.id == pk, shadow.c.transaction_id <= bound)
            .scalar_subquery()
        )
        statement = (
            sa.select(shadow)
            .where(shadow.c.id == pk, shadow.c.transaction_id == latest)
            .order_by(shadow.c.shadow_id.desc())
            .limit(1)
        )
        row = connection.execute(statement).mappings().first()
        if row is None or row["operation"] == "delete":
            return None
        instance = self.Item.__mapper__.class_manager.new_instance()
        for key in KEYS:
            setattr(instance, key, row[key])
        return instance

    def history(self, session: Session, pk: int) -> list[Any]:
        shadow, tx = self.shadow, self.transactions
        statement = (
            sa.select(shadow, tx.c.issued_at)
            .join(tx, shadow.c.transaction_id == tx.c.id)
            .where(shadow.c.id == pk)
            .order_by(shadow.c.transaction_id, shadow.c.shadow_id)
        )
        return [dict(row) for row in session.connection().execute(statement).mappings()]


class CorrectFloor(Handwritten):
    """The correct floor: the lower bound plus, per flush, one locked read of the rows it updates
    or deletes (``SELECT ... WHERE id IN (...) ORDER BY id FOR UPDATE``; SQLite: a plain
    ``SELECT``, its writers are serialized anyway), in chunks of 500 keys.

    That read is what history needs to stay right under concurrency (the values another
    transaction committed since the session loaded them: see ``tests/test_concurrency.py``), so
    this is the least a correct versioning scheme can cost. The rows read are fetched (every
    column) and dropped: the floor still records each object's state after the flush.
    """

    CHUNK = 500

    def __init__(self) -> None:
        super().__init__()
        self.name = "correctfloor"
        event.listen(Session, "before_flush", self._before_flush)

    def _before_flush(self, session: Session, flush_context: Any, instances: Any) -> None:
        item = self.Item
        keys = [
            obj.id for obj in session.dirty if isinstance(obj, item) and session.is_modified(obj)
        ]
        keys.extend(obj.id for obj in session.deleted if isinstance(obj, item))
        if not keys:
            return
        table = item.__table__
        connection = session.connection()
        lock = connection.dialect.name != "sqlite"
        keys.sort()
        for start in range(0, len(keys), self.CHUNK):
            statement = (
                sa.select(table)
                .where(table.c.id.in_(keys[start : start + self.CHUNK]))
                .order_by(table.c.id)
            )
            if lock:
                statement = statement.with_for_update()
            connection.execute(statement).all()


class Library(Contender):
    """This library: ``versioning.Versioned`` (``options``: the model's ``__versioned__``)."""

    def __init__(self, name: str = "versioning", options: dict[str, Any] | None = None) -> None:
        import versioning

        self.versioning = versioning

        class Base(DeclarativeBase):
            pass

        class Item(versioning.Versioned, ItemColumns, Base):
            __tablename__ = "bench_item"
            __versioned__ = options or {}

        self.name, self.metadata, self.Item = name, Base.metadata, Item
        self.history_table = versioning.history_table(Item)
        self.transactions = versioning.transaction_table(Base.metadata)

    def version_rows(self, connection: sa.Connection) -> int | None:
        table = self.history_table
        return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()

    def build_histories(
        self, connection: sa.Connection, sizes: dict[int, int]
    ) -> list[dt.datetime]:
        from versioning import Operation

        plan = list(_history_plan(sizes))
        stamps = [
            (BASE_TIME + dt.timedelta(seconds=tx_id)).replace(tzinfo=dt.UTC) for tx_id, _, _ in plan
        ]
        _insert_chunked(
            connection,
            self.transactions,
            ({"id": tx_id, "issued_at": stamps[tx_id - 1]} for tx_id, _, _ in plan),
        )

        def rows() -> Iterator[dict[str, Any]]:
            for tx_id, pk, version in plan:
                changes = None
                if version:
                    before, after = _snapshot(pk, version - 1), _snapshot(pk, version)
                    changes = {k: [before[k], after[k]] for k in ("name", "quantity")}
                yield {
                    "versioning_transaction_id": tx_id,
                    "versioning_operation": Operation.UPDATE if version else Operation.INSERT,
                    **_snapshot(pk, version),
                    "versioning_changes": changes,
                }

        _insert_chunked(connection, self.history_table, rows())
        return stamps

    def as_of(self, session: Session, pk: int, at: int | dt.datetime) -> Any:
        return self.versioning.as_of(session, self.Item, pk, at)

    def history(self, session: Session, pk: int) -> list[Any]:
        return self.versioning.history(session, self.Item, pk)


class Peer(Contender):
    """SQLAlchemy-Continuum or sqlalchemy-history: ``make_versioned`` + ``__versioned__``."""

    def __init__(self, name: str, module_name: str) -> None:
        module = __import__(module_name)
        module.make_versioned(user_cls=None)

        class Base(DeclarativeBase):
            pass

        class Item(ItemColumns, Base):
            __tablename__ = "bench_item"
            __versioned__: dict[str, Any] = {}

        sa.orm.configure_mappers()
        self.name, self.metadata, self.Item = name, Base.metadata, Item
        self.version_table = Base.metadata.tables["bench_item_version"]

    def version_rows(self, connection: sa.Connection) -> int | None:
        table = self.version_table
        return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


#: Seconds spent in the digest code (hashing the rows, writing the digest row) while it is
#: switched on with ``clocked=True``.
DIGEST_CLOCK = [0.0]


def _clocked(function: Callable[..., Any]) -> Callable[..., Any]:
    def clocked(*arguments: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*arguments)
        finally:
            DIGEST_CLOCK[0] += time.perf_counter() - start

    return clocked


def switch_digests(on: bool, *, clocked: bool = False) -> None:
    """Switch this library's digests on or off (off: no row is hashed, the history INSERT is the
    plain one, no digest row written); ``clocked``: on, with the time spent in them added to
    :data:`DIGEST_CLOCK`."""
    from versioning import recording

    if not hasattr(recording, "_benchmark_saved"):
        recording._benchmark_saved = (  # type: ignore[attr-defined]
            recording._hash_rows,
            recording._history_insert,
            recording._write_digest,
        )
    hashes, insert, write = recording._benchmark_saved  # type: ignore[attr-defined]
    if on and clocked:
        recording._hash_rows, recording._write_digest = _clocked(hashes), _clocked(write)
        recording._history_insert = insert
    elif on:
        recording._hash_rows, recording._history_insert, recording._write_digest = (
            hashes,
            insert,
            write,
        )
    else:
        recording._hash_rows = lambda history, rows: [bytes(32)] * len(rows)  # type: ignore[assignment]
        recording._history_insert = lambda history: history.insert()  # type: ignore[assignment]
        recording._write_digest = lambda *arguments: None  # type: ignore[assignment]


class Undigested(Library):
    """This library with the digests written at commit switched off (their cost, by difference)."""

    def __init__(self) -> None:
        super().__init__()
        switch_digests(False)
        self.name = "undigested"


class DatabaseCapture(Library):
    """This library with the model captured by the database's triggers."""

    def __init__(self) -> None:
        super().__init__("dbcapture", {"capture": "database"})


def make_contender(name: str) -> Contender:
    contender: Contender
    if name == "plain":
        contender = _plain()
    elif name == "handwritten":
        contender = Handwritten()
    elif name == "correctfloor":
        contender = CorrectFloor()
    elif name == "versioning":
        contender = Library()
    elif name == "undigested":
        contender = Undigested()
    elif name == "dbcapture":
        contender = DatabaseCapture()
    elif name == "continuum":
        contender = Peer(name, "sqlalchemy_continuum")
    elif name == "history":
        contender = Peer(name, "sqlalchemy_history")
    else:
        raise SystemExit(f"unknown contender {name!r}; one of {', '.join(CONTENDERS)}")
    # As in an application that has run a query: the reads group builds instances before any
    # ORM query, and an unconfigured mapper's attributes cannot be set yet.
    sa.orm.configure_mappers()
    return contender


# --------------------------------------------------------------------------------------------
# The database


def make_engine(url: str) -> sa.Engine:
    return sa.create_engine(url)


def drop_everything(engine: sa.Engine) -> None:
    """Drop every table (and PostgreSQL sequence) of the database, whoever created it."""
    reflected = sa.MetaData()
    reflected.reflect(engine)
    reflected.drop_all(engine)
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            for name in sa.inspect(connection).get_sequence_names():
                connection.exec_driver_sql(f'DROP SEQUENCE IF EXISTS "{name}"')


def fresh_tables(engine: sa.Engine, contender: Contender) -> None:
    drop_everything(engine)
    contender.metadata.create_all(engine)


def load_rows(engine: sa.Engine, contender: Contender, count: int) -> None:
    """Live rows 1..count written with Core (untimed setup; no history)."""
    table = contender.Item.__table__
    with engine.begin() as connection:
        rows = ({"id": i, **values(i)} for i in range(1, count + 1))
        _insert_chunked(connection, table, rows)


# --------------------------------------------------------------------------------------------
# Workloads


class Result:
    def __init__(self) -> None:
        #: metric -> samples (one per round)
        self.metrics: dict[str, list[float]] = {}
        self.notes: dict[str, str] = {}
        self.errors: dict[str, str] = {}

    def run(self, name: str, measure: Callable[[], float]) -> bool:
        """Store ``measure()`` as metric ``name``, or the error it raised."""
        try:
            self.add(name, measure())
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            message = " ".join(str(error).split())
            self.errors[name] = f"{type(error).__name__}: {message}"[:300]
            return False
        return True

    def add(self, name: str, value: float) -> None:
        self.metrics.setdefault(name, []).append(value)


def insert_rows(engine: sa.Engine, contender: Contender, count: int = ROWS) -> None:
    item = contender.Item
    with Session(engine) as session:
        for start in range(1, count + 1, BATCH):
            session.add_all([item(**values(i)) for i in range(start, start + BATCH)])
            session.commit()


def update_rows(engine: sa.Engine, contender: Contender, count: int = ROWS) -> None:
    item = contender.Item
    with Session(engine) as session:
        for start in range(1, count + 1, BATCH):
            batch = session.scalars(
                sa.select(item).where(item.id.between(start, start + BATCH - 1)).order_by(item.id)
            ).all()
            for obj in batch:
                obj.name = f"{obj.name} updated"
                obj.quantity = obj.quantity + 1
            session.commit()


def timed(function: Callable[[], None]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def rounds() -> Iterator[int]:
    """Round numbers: at least one, at most MAX_ROUNDS, until ROUND_BUDGET seconds have passed."""
    start = time.perf_counter()
    for number in range(MAX_ROUNDS):
        if number and time.perf_counter() - start > ROUND_BUDGET:
            return
        yield number


def _timed_updates(engine: sa.Engine, contender: Contender) -> float:
    return timed(lambda: update_rows(engine, contender))


def group_write(engine: sa.Engine, contender: Contender, out: Result) -> None:
    fresh_tables(engine, contender)  # warm-up: compile every statement once
    insert_rows(engine, contender, BATCH)
    update_rows(engine, contender, BATCH)
    for _ in rounds():
        fresh_tables(engine, contender)
        if not out.run("inserts_s", lambda: timed(lambda: insert_rows(engine, contender))):
            out.errors.setdefault("updates_s", "not run: the inserts failed")
            break
        if not out.run("updates_s", lambda: timed(lambda: update_rows(engine, contender))):
            break
        if engine.dialect.name == "postgresql":
            # The same updates again, under snapshot isolation: there a row changed since the
            # transaction's snapshot fails its UPDATE, so this library need not read it first.
            snapshot = engine.execution_options(isolation_level="REPEATABLE READ")
            if not out.run("updates_rr_s", partial(_timed_updates, snapshot, contender)):
                break
        with engine.connect() as connection:
            out.add("history_rows", contender.version_rows(connection) or 0)


def single_row_commits(engine: sa.Engine, contender: Contender) -> tuple[float, float]:
    """ms per commit of one changed row, in a session holding SMALL_SESSION loaded objects and
    in one holding BIG_SESSION, the two taking turns commit by commit.

    Both sessions are open at once (``expire_on_commit=False``, the objects kept in a list, so
    the identity maps stay full), so the process holds the same objects in memory in both
    measurements and drift of the machine hits both alike: the ratio isolates what a commit
    costs per object the session holds. They hold disjoint rows.
    """
    item = contender.Item
    small_rows = sa.select(item).where(item.id <= SMALL_SESSION).order_by(item.id)
    big_rows = (
        sa.select(item)
        .where(item.id.between(SMALL_SESSION + 1, SMALL_SESSION + BIG_SESSION))
        .order_by(item.id)
    )
    with (
        Session(engine, expire_on_commit=False) as small,
        Session(engine, expire_on_commit=False) as big,
    ):
        held = {small: small.scalars(small_rows).all(), big: big.scalars(big_rows).all()}
        assert [len(objects) for objects in held.values()] == [SMALL_SESSION, BIG_SESSION]
        elapsed = dict.fromkeys(held, 0.0)
        gc.collect()
        for i in range(COMMITS + WARM_UP_COMMITS):
            for session, objects in held.items():
                start = time.perf_counter()
                objects[i % SMALL_SESSION].quantity += 1
                session.commit()
                if i >= WARM_UP_COMMITS:
                    elapsed[session] += time.perf_counter() - start
        del held
    return elapsed[small] / COMMITS * 1000, elapsed[big] / COMMITS * 1000


def group_session(engine: sa.Engine, contender: Contender, out: Result) -> None:
    fresh_tables(engine, contender)
    load_rows(engine, contender, SMALL_SESSION + BIG_SESSION)
    times: list[float] = []

    def measure() -> float:
        times.extend(single_row_commits(engine, contender))
        return times[0]

    if out.run("commit_small_ms", measure):
        out.add("commit_big_ms", times[1])
        out.add("commit_ratio", times[1] / times[0])
    else:
        out.errors["commit_big_ms"] = out.errors["commit_small_ms"]


def bulk_update(engine: sa.Engine, contender: Contender, last: int) -> None:
    item = contender.Item
    with Session(engine) as session:
        session.execute(
            sa.update(item)
            .where(item.id.between(1, last))
            .values(quantity=item.quantity + 1, category="bulk")
        )
        session.commit()


def group_bulk(engine: sa.Engine, contender: Contender, out: Result) -> None:
    fresh_tables(engine, contender)  # warm-up
    load_rows(engine, contender, 50)
    bulk_update(engine, contender, 50)
    fresh_tables(engine, contender)
    load_rows(engine, contender, ROWS)

    def measure() -> float:
        return timed(lambda: bulk_update(engine, contender, ROWS))

    for number in rounds():  # every round updates the same 5,000 rows again
        with engine.connect() as connection:
            before = contender.version_rows(connection)
        if not out.run("bulk_update_s", measure):
            return
        if number == 0:
            with engine.connect() as connection:
                after = contender.version_rows(connection)
            if before is not None and after is not None:
                out.add("bulk_history_rows", after - before)
                if after == before:
                    out.notes["bulk_update_s"] = "no history"


def _median_call(calls: list[Callable[[], Any]]) -> float:
    """Median time of one call, in ms: all ``calls``, or as many as fit in READ_BUDGET seconds
    (at least MIN_CALLS), so that a slow query plan cannot stretch the run to minutes."""
    times: list[float] = []
    for call in calls:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if len(times) >= MIN_CALLS and sum(times) > READ_BUDGET:
            break
    return statistics.median(times) * 1000


def _least_call(call: Callable[[], Any], count: int) -> tuple[float, float]:
    """The least wall-clock time and the least process CPU time of ``count`` calls, in ms: on a
    shared machine other load only ever adds time, so the least is the call's own cost."""
    wall, cpu = [], []
    for _ in range(count):
        used, start = time.process_time(), time.perf_counter()
        call()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - used)
    return min(wall) * 1000, min(cpu) * 1000


def group_reads(engine: sa.Engine, contender: Contender, out: Result) -> None:
    if type(contender).as_of is Contender.as_of:
        out.notes["reads"] = "not measured"
        return
    fresh_tables(engine, contender)
    # Record 1: 10^2 versions, 2: 10^4, 3: 10^5, 4: 200 (history()); one transaction a version.
    sizes = {1: AS_OF_SIZES[0], 4: HISTORY_VERSIONS, 2: AS_OF_SIZES[1], 3: AS_OF_SIZES[2]}
    with engine.begin() as connection:
        stamps = contender.build_histories(connection, sizes)
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    first_tx: dict[int, int] = {}
    tx_id = 1
    for pk, count in sizes.items():
        first_tx[pk] = tx_id
        tx_id += count
    rng = random.Random(5)
    with Session(engine) as session:
        for pk in sizes:  # warm-up
            assert contender.as_of(session, pk, first_tx[pk]) is not None
        for pk, label in ((1, "as_of_2"), (2, "as_of_4"), (3, "as_of_5")):
            ats = [
                rng.randrange(first_tx[pk], first_tx[pk] + sizes[pk]) for _ in range(AS_OF_CALLS)
            ]

            def calls(pk: int = pk, ats: list[int] = ats) -> float:
                return _median_call([lambda at=at: contender.as_of(session, pk, at) for at in ats])

            out.run(f"{label}_ms", calls)
        moments = [
            stamps[rng.randrange(first_tx[3], first_tx[3] + sizes[3]) - 1]
            + dt.timedelta(milliseconds=500)
            for _ in range(AS_OF_CALLS)
        ]
        out.run(
            "as_of_5_dt_ms",
            lambda: _median_call([lambda at=at: contender.as_of(session, 3, at) for at in moments]),
        )
        if "as_of_2_ms" in out.metrics and "as_of_5_ms" in out.metrics:
            out.add("as_of_ratio", out.metrics["as_of_5_ms"][0] / out.metrics["as_of_2_ms"][0])
        assert len(contender.history(session, 4)) == HISTORY_VERSIONS
        out.run(
            "history_ms",
            lambda: _median_call([lambda: contender.history(session, 4)] * HISTORY_CALLS),
        )
        least = _least_call(lambda: contender.history(session, 4), HISTORY_CALLS)
        out.add("history_least_ms", least[0])
        out.add("history_cpu_ms", least[1])
        session.rollback()


def group_memory(engine: sa.Engine, contender: Contender, out: Result) -> None:
    fresh_tables(engine, contender)  # warm-up, untraced
    insert_rows(engine, contender, BATCH)
    fresh_tables(engine, contender)
    gc.collect()

    def traced() -> float:
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            insert_rows(engine, contender)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return (peak - baseline) / 2**20

    out.run("insert_peak_mib", traced)


# --------------------------------------------------------------------------------------------


SEALED_TRANSACTIONS = 100_000
VERIFIED_TRANSACTIONS = 1_000  # of 50 versions each


def group_integrity(engine: sa.Engine, contender: Contender, out: Result) -> None:
    """``seal`` of 100,000 transactions' digests; ``verify`` throughput and peak memory."""
    if not isinstance(contender, Library):
        return
    import versioning
    from versioning.schema import integrity_tables

    fresh_tables(engine, contender)
    transactions = contender.transactions
    digests = integrity_tables(transactions)[0]
    with engine.begin() as connection:  # digest rows as commits write them (seal reads no more)
        for start in range(1, SEALED_TRANSACTIONS + 1, 10_000):
            ids = range(start, start + 10_000)
            connection.execute(
                transactions.insert(), [{"id": i, "issued_at": BASE_TIME} for i in ids]
            )
            connection.execute(
                digests.insert(),
                [{"transaction_id": i, "segment": 1, "digest": "0" * 64, "rows": {}} for i in ids],
            )

    def seal() -> float:
        with Session(engine) as session:
            start = time.perf_counter()
            versioning.seal(session)
            session.commit()
            return time.perf_counter() - start

    out.run("seal_100k_s", seal)
    fresh_tables(engine, contender)
    item = contender.Item
    with Session(engine) as session:
        for start in range(1, VERIFIED_TRANSACTIONS * 50 + 1, 50):
            session.add_all([item(**values(i)) for i in range(start, start + 50)])
            session.commit()

    def verify() -> float:
        with Session(engine) as session:
            start = time.perf_counter()
            report = versioning.verify(session)
            elapsed = time.perf_counter() - start
        assert report.ok and report.versions_checked == VERIFIED_TRANSACTIONS * 50, report
        return report.versions_checked / elapsed / 1000

    def traced() -> float:
        gc.collect()
        tracemalloc.start()
        try:
            with Session(engine) as session:
                versioning.verify(session)
            return tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()

    for _ in range(3):
        out.run("verify_kversions_s", verify)
    out.run("verify_peak_mib", traced)

    with Session(engine) as session:
        versioning.seal(session)
        session.commit()

    def archive() -> float:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            manifest = versioning.archive(
                engine,
                before=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1),
                output=Path(folder) / "archive.jsonl.gz",
            )
            elapsed = time.perf_counter() - start
        assert manifest.versions == VERIFIED_TRANSACTIONS * 50, manifest
        return manifest.versions / elapsed / 1000

    for _ in range(3):
        out.run("archive_kversions_s", archive)


DIGEST_ROUNDS = 20  # of the insert and update workloads (10 samples of each state per commit)
DIGEST_COMMITS = 400  # single-row commits


class Paired:
    """Wall-clock and CPU times of the same commits with the digests on and with them off, by
    position in the workload, and of the digest code in those with them on.

    The machine's other load only ever adds time: the least time each commit took with the
    digests on, summed, over the same with them off, is the ratio of the workloads' times on a
    quiet machine. The same with this process's CPU time (``time.process_time``) leaves out the
    database server's share (all of SQLite's work is in this process) but is much less disturbed
    by other processes. The least time of the digest code (a millisecond or two, seldom
    interrupted) is what the digests cost a commit, measured directly."""

    def __init__(self) -> None:
        self.times: dict[tuple[int, bool], list[float]] = {}
        self.cpu: dict[tuple[int, bool], list[float]] = {}
        self.code: dict[int, list[float]] = {}

    @contextmanager
    def commit(self, position: int, on: bool) -> Iterator[None]:
        switch_digests(on, clocked=True)
        # A full collection now, none during the commit: a collection would otherwise fall on
        # the same commits round after round (where the allocations add up to its threshold),
        # on with the digests in one process and off in another, and the least time of those
        # commits would be the collection's (20 ms in a commit of 25 on SQLite), not theirs.
        gc.collect()
        gc.disable()
        clock = DIGEST_CLOCK[0]
        cpu = time.process_time()
        start = time.perf_counter()
        try:
            yield
            elapsed, used = time.perf_counter() - start, time.process_time() - cpu
        finally:
            gc.enable()
        self.times.setdefault((position, on), []).append(elapsed)
        self.cpu.setdefault((position, on), []).append(used)
        if on:
            self.code.setdefault(position, []).append(DIGEST_CLOCK[0] - clock)

    def add(self, out: Result, name: str) -> None:
        positions = sorted(self.code)
        for metric, samples in (("ratio", self.times), ("cpu_ratio", self.cpu)):
            least = {
                on: sum(min(samples[position, on]) for position in positions)
                for on in (True, False)
            }
            out.add(f"digest_{name}_{metric}", least[True] / least[False])
        code = sum(min(self.code[position]) for position in positions)
        out.add(f"digest_{name}_code_ms", code / len(positions) * 1000)
        # The digest code's own time over the commit's without the digests: least times both,
        # so much less scattered than the pair of wall-clock sums above. An upper bound for the
        # inserts (the code's time includes the digest row's round trip); for the updates it
        # also counts encoding the changes document, which the driver does otherwise.
        off = sum(min(self.times[position, False]) for position in positions)
        out.add(f"digest_{name}_share", code / off)


def group_digests(engine: sa.Engine, contender: Contender, out: Result) -> None:
    """What the digests cost, paired within one process: the insert and update workloads (commits
    of 500) and single-row commits with the digests on and off by turns, commit by commit (each
    round of the workloads starts with the other), so that the machine's drift hits both alike;
    see :class:`Paired` for the ratio. One sample per process and workload."""
    if not isinstance(contender, Library) or isinstance(contender, Undigested):
        return
    item = contender.Item
    fresh_tables(engine, contender)  # warm-up: compile every statement once, both ways
    for on in (True, False):
        switch_digests(on)
        insert_rows(engine, contender, BATCH)
        update_rows(engine, contender, BATCH)
    inserts, updates = Paired(), Paired()
    for number in range(DIGEST_ROUNDS):
        fresh_tables(engine, contender)
        gc.collect()
        with Session(engine) as session:
            for k, first in enumerate(range(1, ROWS + 1, BATCH)):
                with inserts.commit(k, (k + number) % 2 == 0):
                    session.add_all([item(**values(i)) for i in range(first, first + BATCH)])
                    session.commit()
        with Session(engine) as session:
            for k, first in enumerate(range(1, ROWS + 1, BATCH)):
                with updates.commit(k, (k + number) % 2 == 0):
                    last = first + BATCH - 1
                    rows = sa.select(item).where(item.id.between(first, last)).order_by(item.id)
                    for obj in session.scalars(rows).all():
                        obj.name = f"{obj.name} updated"
                        obj.quantity = obj.quantity + 1
                    session.commit()
    inserts.add(out, "inserts")
    updates.add(out, "updates")
    fresh_tables(engine, contender)
    load_rows(engine, contender, SMALL_SESSION)
    commits = Paired()
    with Session(engine, expire_on_commit=False) as session:
        objects = session.scalars(sa.select(item).order_by(item.id)).all()
        for i in range(2 * WARM_UP_COMMITS):
            objects[i].quantity += 1
            session.commit()
        gc.collect()
        for i in range(DIGEST_COMMITS):
            with commits.commit(0, i % 2 == 0):
                objects[i % SMALL_SESSION].quantity += 1
                session.commit()
    switch_digests(True)
    commits.add(out, "commit")


GROUP_FUNCTIONS = {
    "digests": group_digests,
    "write": group_write,
    "session": group_session,
    "bulk": group_bulk,
    "reads": group_reads,
    "memory": group_memory,
    "integrity": group_integrity,
}


@contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # pysqlite stores Decimal as float and says so once; the data are the same for everyone.
        warnings.filterwarnings("ignore", message=".*does \\*not\\* support Decimal objects")
        yield


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in CONTENDERS or argv[2] not in GROUPS:
        print(__doc__, file=sys.stderr)
        return 2
    url, name, group = argv
    out = Result()
    with quiet():
        try:
            contender = make_contender(name)
        except Exception as error:
            out.errors["setup"] = f"{type(error).__name__}: {error}"[:300]
            print(json.dumps(out.__dict__))
            return 0
        engine = make_engine(url)
        try:
            GROUP_FUNCTIONS[group](engine, contender, out)
        except Exception as error:  # setup of the group failed: every workload of it fails
            traceback.print_exc(file=sys.stderr)
            out.errors["group"] = f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
        finally:
            try:
                drop_everything(engine)
            finally:
                engine.dispose()
    print(json.dumps(out.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
