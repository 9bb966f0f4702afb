"""Benchmark of time travel with relationships: ``as_of`` of an order with its lines, and
``all_as_of`` of a whole table, each against the same result read by hand-written SQL.

Run from the repository root (PostgreSQL and MariaDB as in ``run.py``; a database
``versioning_bench_tt_<pid>`` is created for the run and dropped after it)::

    python tests/benchmarks/time_travel.py --backends sqlite,postgresql,mariadb

Rows printed (median of ``--repeat`` runs, milliseconds):

* ``as_of order + 50 lines``: ``versioning.as_of(session, Order, 1, at).lines`` (two queries),
  against the two hand-written queries (the order's latest version at ``at``; its lines' latest
  versions, then kept if they belonged to the order then) fetched as rows.
* ``all_as_of 10,000 x 10``: ``list(versioning.all_as_of(session, Item, at, Item.qty > 0))``
  (instances), against the best of two hand-written SQL forms (a window function, and the
  last version in the last transaction of each key, by two ``max()``) fetched as rows.
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


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
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


def by_hand(engine: sa.Engine, at: int) -> dict[str, Callable[[Session], Any]]:
    items = versioning.history_table(Item)
    orders = versioning.history_table(Order)
    lines = versioning.history_table(Line)
    tid, vid = items.c.versioning_transaction_id, items.c.versioning_id

    snapshot = [items.c.id, items.c.name, items.c.qty]

    def window(session: Session) -> list[Any]:
        rank = sa.func.row_number().over(partition_by=items.c.id, order_by=(tid.desc(), vid.desc()))
        inner = sa.select(*snapshot, items.c.versioning_operation, rank.label("r"))
        inner = inner.where(tid <= at).subquery()
        query = (
            sa.select(inner.c.id, inner.c.name, inner.c.qty)
            .where(inner.c.r == 1, inner.c.versioning_operation != "delete", inner.c.qty > 0)
            .order_by(inner.c.id)
        )
        return session.execute(query).all()

    def max_join(session: Session) -> list[Any]:
        """The last transaction of each key by then, then the last version in it."""
        last_tx = sa.select(items.c.id, sa.func.max(tid).label("t")).where(tid <= at)
        last_tx = last_tx.group_by(items.c.id).subquery()
        other = items.alias()
        last = (
            sa.select(sa.func.max(other.c.versioning_id).label("v"))
            .join(
                last_tx,
                sa.and_(
                    other.c.id == last_tx.c.id, other.c.versioning_transaction_id == last_tx.c.t
                ),
            )
            .group_by(other.c.id)
            .subquery()
        )
        query = (
            sa.select(*snapshot)
            .join(last, vid == last.c.v)
            .where(items.c.versioning_operation != "delete", items.c.qty > 0)
            .order_by(items.c.id)
        )
        return session.execute(query).all()

    def order_by_hand(session: Session) -> tuple[Any, list[Any]]:
        o_tid = orders.c.versioning_transaction_id
        order = session.execute(
            sa.select(orders)
            .where(orders.c.id == 1, o_tid <= at)
            .order_by(o_tid.desc(), orders.c.versioning_id.desc())
            .limit(1)
        ).first()
        l_tid = lines.c.versioning_transaction_id
        rank = sa.func.row_number().over(
            partition_by=lines.c.id, order_by=(l_tid.desc(), lines.c.versioning_id.desc())
        )
        candidates = sa.select(lines.c.id).where(lines.c.order_id == 1, l_tid <= at).distinct()
        inner = (
            sa.select(lines, rank.label("r"))
            .where(l_tid <= at, lines.c.id.in_(candidates))
            .subquery()
        )
        found = session.execute(
            sa.select(inner)
            .where(inner.c.r == 1, inner.c.versioning_operation != "delete", inner.c.order_id == 1)
            .order_by(inner.c.id)
        ).all()
        return order, found

    return {"window": window, "max_join": max_join, "order": order_by_hand}


def run(name: str, engine: sa.Engine, repeat: int) -> None:
    at = fill(engine)
    hand = by_hand(engine, at)
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
        print(
            f"| {name} | as_of order + {LINES} lines | {queries} queries | {a:.2f} | {h:.2f} "
            f"| {a / h:.2f} |"
        )

        def all_as_of() -> None:
            found = list(versioning.all_as_of(session, Item, at, Item.qty > 0))
            assert len(found) == RECORDS

        assert len(hand["window"](session)) == len(hand["max_join"](session)) == RECORDS
        w = median_ms(lambda: hand["window"](session), repeat)
        m = median_ms(lambda: hand["max_join"](session), repeat)
        v = median_ms(all_as_of, repeat)
        best = min(w, m)
        print(
            f"| {name} | all_as_of {RECORDS:,} x {VERSIONS} | window {w:.1f}, two max() {m:.1f} | "
            f"{v:.1f} | {best:.1f} | {v / best:.2f} |"
        )
        # The query all_as_of runs, alone (rows, no instances).
        spec = require_spec(Item)
        statement, table = latest(spec, at, True, translate=lambda t: [t.c.qty > 0])
        statement = statement.order_by(table.c.id)
        q = median_ms(lambda: session.execute(statement).all(), repeat)
        print(
            f"| {name} | all_as_of's query alone (rows) | | {q:.1f} | {best:.1f} | {q / best:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="sqlite,postgresql,mariadb")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    database = f"versioning_bench_tt_{os.getpid()}"
    print("| backend | workload | notes | versioning ms | by hand ms | ratio |")
    print("|---|---|---|---|---|---|")
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
