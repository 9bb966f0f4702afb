"""Benchmark of time travel with relationships: ``as_of`` of an order with its lines, and
``all_as_of`` of a whole table, each against the same result read by hand-written SQL.

Run from the repository root (PostgreSQL and MariaDB as in ``run.py``; a database
``versioning_bench_tt_<pid>`` is created for the run and dropped after it)::

    python tests/benchmarks/time_travel.py --backends sqlite,postgresql,mariadb

Rows printed (median of ``--repeat`` runs, milliseconds; wall-clock, or with ``--clock cpu``
the process's CPU time, for SQLite on a machine shared with other jobs). ``versioning`` returns
ORM instances, so each row has two hand-written contenders, and a ratio to each:

* **rows**: the hand-written SQL, its rows fetched as they come (``Row`` tuples, no instances);
* **ORM instances**: the same SQL, its rows made into instances by the ORM
  (``select(Model).from_statement(sql)`` in a session of its own on the same connection,
  closed after; for the order, its lines set on it with ``set_committed_value``).

The rows:

* ``as_of order + 50 lines``: ``versioning.as_of(session, Order, 1, at).lines`` (two queries),
  against the two hand-written queries (the order's latest version at ``at``; its lines' latest
  versions by a window function, then kept if they belonged to the order then).
* ``all_as_of 10,000 x 10``: ``list(versioning.all_as_of(session, Item, at, Item.qty > 0))``
  (transient instances), against the faster of two hand-written SQL forms (a window function,
  and the last version in the last transaction of each key, by two ``max()``).
* ``└ by hand: rows as transient instances``: that SQL's rows made into transient instances by
  hand the cheapest way there is (``ClassManager.new_instance()`` and ``__dict__.update()``
  per row, no identity map, no relationship loaders): what an instance costs at the least.
* ``all_as_of's query alone``: the statement ``all_as_of`` runs, its rows fetched, no instances.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.orm.attributes import set_committed_value

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import versioning
from versioning import Versioned
from versioning.declaration import require_spec
from versioning.snapshots import latest

POSTGRESQL_URL = os.environ.get(
    "VERSIONING_BENCH_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432"
)
MARIADB_URL = os.environ.get("VERSIONING_MARIADB_URL", "mariadb+pymysql://root@127.0.0.1:3306")
RECORDS, VERSIONS, LINES = 10_000, 10, 50


class Base(DeclarativeBase):
    pass


class Order(Versioned, Base):
    __tablename__ = "bench_tt_orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(sa.String(10))
    lines: Mapped[list[Line]] = relationship(order_by="Line.id")


class Line(Versioned, Base):
    __tablename__ = "bench_tt_lines"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("bench_tt_orders.id"), index=True)
    qty: Mapped[int]


class Item(Versioned, Base):
    __tablename__ = "bench_tt_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))
    qty: Mapped[int]


#: The clock timings read: wall-clock time, or (``--clock cpu``) this process's CPU time, which
#: other processes sharing the machine do not inflate, but which leaves out the database
#: server's work: a fair measure on SQLite only (the database runs in the process).
CLOCK: Callable[[], float] = time.perf_counter


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = CLOCK()
        fn()
        times.append((CLOCK() - start) * 1000)
    return statistics.median(times)


def fill(engine: sa.Engine) -> int:
    """The graph and the table; the transaction id of the moment read (after 5 of 10 versions)."""
    Base.metadata.create_all(engine)
    transactions = versioning.transaction_table(Base.metadata)
    with Session(engine) as session:
        session.add(Order(id=1, status="open"))
        session.add_all(Line(id=i, order_id=1, qty=1) for i in range(1, LINES + 1))
        session.execute(
            sa.insert(Item), [{"id": i, "name": f"item {i}", "qty": 0} for i in range(RECORDS)]
        )
        session.commit()
        middle = 0
        for version in range(1, VERSIONS):
            session.execute(sa.update(Item).values(qty=Item.qty + 1))
            session.execute(sa.update(Line).values(qty=Line.qty + 1))
            session.commit()
            if version == VERSIONS // 2:
                middle = int(session.scalar(sa.select(sa.func.max(transactions.c.id))) or 0)
    return middle


def hand_statements(at: int) -> dict[str, sa.Select[Any]]:
    """The hand-written SQL: two forms of the whole table at ``at`` (``window`` and
    ``max_join``), and the order at ``at`` with its lines (``order``, ``lines``)."""
    items = versioning.history_table(Item)
    orders = versioning.history_table(Order)
    lines = versioning.history_table(Line)
    tid, vid = items.c.versioning_transaction_id, items.c.versioning_id

    snapshot = [items.c.id, items.c.name, items.c.qty]

    rank = sa.func.row_number().over(partition_by=items.c.id, order_by=(tid.desc(), vid.desc()))
    inner = sa.select(*snapshot, items.c.versioning_operation, rank.label("r"))
    inner = inner.where(tid <= at).subquery()
    window = (
        sa.select(inner.c.id, inner.c.name, inner.c.qty)
        .where(inner.c.r == 1, inner.c.versioning_operation != "delete", inner.c.qty > 0)
        .order_by(inner.c.id)
    )

    # The last transaction of each key by then, then the last version in it.
    last_tx = sa.select(items.c.id, sa.func.max(tid).label("t")).where(tid <= at)
    last_tx = last_tx.group_by(items.c.id).subquery()
    other = items.alias()
    last = (
        sa.select(sa.func.max(other.c.versioning_id).label("v"))
        .join(
            last_tx,
            sa.and_(other.c.id == last_tx.c.id, other.c.versioning_transaction_id == last_tx.c.t),
        )
        .group_by(other.c.id)
        .subquery()
    )
    max_join = (
        sa.select(*snapshot)
        .join(last, vid == last.c.v)
        .where(items.c.versioning_operation != "delete", items.c.qty > 0)
        .order_by(items.c.id)
    )

    o_tid = orders.c.versioning_transaction_id
    order = (
        sa.select(orders)
        .where(orders.c.id == 1, o_tid <= at)
        .order_by(o_tid.desc(), orders.c.versioning_id.desc())
        .limit(1)
    )
    l_tid = lines.c.versioning_transaction_id
    line_rank = sa.func.row_number().over(
        partition_by=lines.c.id, order_by=(l_tid.desc(), lines.c.versioning_id.desc())
    )
    candidates = sa.select(lines.c.id).where(lines.c.order_id == 1, l_tid <= at).distinct()
    ranked = (
        sa.select(lines, line_rank.label("r"))
        .where(l_tid <= at, lines.c.id.in_(candidates))
        .subquery()
    )
    found = (
        sa.select(ranked)
        .where(ranked.c.r == 1, ranked.c.versioning_operation != "delete", ranked.c.order_id == 1)
        .order_by(ranked.c.id)
    )
    return {"window": window, "max_join": max_join, "order": order, "lines": found}


def by_hand(statements: dict[str, sa.Select[Any]]) -> dict[str, Callable[[Session], Any]]:
    """The hand-written SQL run, its rows fetched as they are (no instances)."""

    def rows(name: str) -> Callable[[Session], Any]:
        return lambda session: session.execute(statements[name]).all()

    def order(session: Session) -> tuple[Any, list[Any]]:
        return (
            session.execute(statements["order"]).first(),
            session.execute(statements["lines"]).all(),
        )

    return {"window": rows("window"), "max_join": rows("max_join"), "order": order}


def orm_instances(
    statements: dict[str, sa.Select[Any]], hand: dict[str, Callable[[Session], Any]], best: str
) -> dict[str, Callable[[Session], Any]]:
    """The hand-written queries again, with their rows made into ORM instances by hand: loaded
    by the ORM from the same statements (``select(Model).from_statement(...)``, in a session of
    their own on the same connection, closed after), and, for ``all_as_of``, the least a
    transient instance costs (``ClassManager.new_instance()`` and ``__dict__.update()`` per row,
    as ``versioning`` does, without its identity map and relationship loaders)."""

    def orm_order(session: Session) -> Any:
        with Session(bind=session.connection()) as own:
            order = own.scalars(sa.select(Order).from_statement(statements["order"])).one()
            lines = own.scalars(sa.select(Line).from_statement(statements["lines"])).all()
            set_committed_value(order, "lines", lines)
            return order

    def orm_items(session: Session) -> list[Any]:
        with Session(bind=session.connection()) as own:
            return list(own.scalars(sa.select(Item).from_statement(statements[best])))

    new = sa.inspect(Item).class_manager.new_instance
    keys = list(statements[best].selected_columns.keys())

    def transient_items(session: Session) -> list[Any]:
        out = []
        for row in session.execute(statements[best]):
            item = new()
            item.__dict__.update(zip(keys, row, strict=False))
            out.append(item)
        return out

    return {"order": orm_order, "items": orm_items, "transient": transient_items}


def run(name: str, engine: sa.Engine, repeat: int) -> None:
    at = fill(engine)
    sql = hand_statements(at)
    hand = by_hand(sql)
    statements: list[str] = []
    sa.event.listen(
        engine,
        "before_cursor_execute",
        lambda *a: statements.append(a[2]) if a[2].lstrip().upper().startswith("SELECT") else None,
    )
    with Session(engine) as session:

        def as_of() -> None:
            order = versioning.as_of(session, Order, 1, at)
            assert len(order.lines) == LINES and order.lines[0].qty == VERSIONS // 2 + 1

        statements.clear()
        as_of()
        queries = len(statements)
        a = median_ms(as_of, repeat)
        h = median_ms(lambda: hand["order"](session), repeat)
        assert len(hand["order"](session)[1]) == LINES

        def all_as_of() -> None:
            found = list(versioning.all_as_of(session, Item, at, Item.qty > 0))
            assert len(found) == RECORDS

        assert len(hand["window"](session)) == len(hand["max_join"](session)) == RECORDS
        w = median_ms(lambda: hand["window"](session), repeat)
        m = median_ms(lambda: hand["max_join"](session), repeat)
        best = "window" if w < m else "max_join"
        orm = orm_instances(sql, hand, best)
        order = orm["order"](session)
        assert len(order.lines) == LINES and order.lines[0].qty == VERSIONS // 2 + 1
        assert len(orm["items"](session)) == len(orm["transient"](session)) == RECORDS
        ho = median_ms(lambda: orm["order"](session), repeat)
        print(
            f"| {name} | `as_of` order + {LINES} lines ({queries} queries) | {a:.2f} | {h:.2f} "
            f"| {a / h:.2f} | {ho:.2f} | {a / ho:.2f} |"
        )
        v = median_ms(all_as_of, repeat)
        hi = median_ms(lambda: orm["items"](session), repeat)
        ht = median_ms(lambda: orm["transient"](session), repeat)
        rows = min(w, m)
        print(
            f"| {name} | `all_as_of` {RECORDS:,} x {VERSIONS}: instances | {v:.1f} | {rows:.1f} "
            f"| {v / rows:.2f} | {hi:.1f} | {v / hi:.2f} |"
        )
        print(
            f"| {name} | └ by hand: rows as transient instances (no identity, no loaders) "
            f"| {ht:.1f} | {rows:.1f} | {ht / rows:.2f} | | |"
        )
        # The query all_as_of runs, alone (rows, no instances).
        spec = require_spec(Item)
        statement, table = latest(spec, at, True, translate=lambda t: [t.c.qty > 0])
        statement = statement.order_by(table.c.id)
        q = median_ms(lambda: session.execute(statement).all(), repeat)
        print(
            f"| {name} | `all_as_of`'s query alone: rows (by hand: window {w:.1f}, two max() "
            f"{m:.1f}) | {q:.1f} | {rows:.1f} | {q / rows:.2f} | | |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="sqlite,postgresql,mariadb")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time (on a shared machine; meaningful on SQLite only)",
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    database = f"versioning_bench_tt_{os.getpid()}"
    print(
        "| backend | workload | versioning (ms) | by hand: rows (ms) | ratio "
        "| by hand: ORM instances (ms) | ratio |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.backends.split(","):
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as folder:
                engine = sa.create_engine(f"sqlite:///{folder}/bench.sqlite")
                run(name, engine, args.repeat)
                engine.dispose()
            continue
        server = POSTGRESQL_URL if name == "postgresql" else MARIADB_URL
        admin = sa.create_engine(
            server + ("/postgres" if name == "postgresql" else ""), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {database}")
        engine = sa.create_engine(f"{server}/{database}")
        try:
            run(name, engine, args.repeat)
        finally:
            engine.dispose()
            with admin.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE {database}")
            admin.dispose()


if __name__ == "__main__":
    main()
