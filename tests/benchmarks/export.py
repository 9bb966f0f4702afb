"""Benchmark of ``versioning.exporting.export``: throughput and peak memory of CSV and JSON Lines
exports of a long history.

Run from the repository root (PostgreSQL and MariaDB as in ``run.py``; a database
``versioning_bench_export_<pid>`` is created for the run and dropped after it)::

    python tests/benchmarks/export.py --backends postgresql --versions 1000000

The history is written straight into the tables (one ``INSERT ... SELECT`` each: five versions per
transaction, one insert then updates of two columns per record), then exported from an ``Engine``
(its own connection, one snapshot) to a file. Rows printed per backend and format:

* ``versions/s``: versions exported per second of wall-clock time (the file written, gzip off),
  the median of ``--repeat`` runs; and per second of this process's CPU time (the database
  server's work not counted), which a machine busy with other work changes far less;
* ``peak MiB``: the peak of memory allocated by Python during one export (``tracemalloc``), of
  all ``--versions`` and of the newest tenth of them: flat when they are alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from versioning import Versioned, history_table, transaction_table
from versioning.exporting import export

POSTGRESQL_URL = os.environ.get(
    "VERSIONING_BENCH_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432"
)
MARIADB_URL = os.environ.get("VERSIONING_MARIADB_URL", "mariadb+pymysql://root@127.0.0.1:3306")
PER_TRANSACTION = 5


class Base(DeclarativeBase):
    pass


class Payment(Versioned, Base):
    __tablename__ = "bench_export_payments"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(sa.String(20))
    payer: Mapped[str] = mapped_column(sa.String(80))
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    note: Mapped[str | None] = mapped_column(sa.Text)


def numbers(dialect: str, count: int) -> tuple[str, str]:
    """A ``FROM`` of the numbers 1..count (column ``i``), and a prefix the statement needs."""
    if dialect == "postgresql":
        return f"generate_series(1, {count}) AS s(i)", ""
    if dialect == "mariadb":
        return f"(SELECT seq AS i FROM seq_1_to_{count}) AS s", ""
    prefix = f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {count}) "
    return "s", prefix


def fill(engine: sa.Engine, versions: int) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    transactions = transaction_table(Base.metadata).name
    history = history_table(Payment).name
    dialect = engine.dialect.name
    count = versions // PER_TRANSACTION
    source, prefix = numbers(dialect, count)
    issued = {
        "postgresql": "timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'",
        "mariadb": "TIMESTAMP '2026-01-01 00:00:00' + INTERVAL i SECOND",
        "sqlite": "strftime('%Y-%m-%d %H:%M:%f000', '2026-01-01', '+' || i || ' seconds')",
    }[dialect]
    concat = "CONCAT('user-', i % 50)" if dialect == "mariadb" else "'user-' || (i % 50)"
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                f"{prefix}INSERT INTO {transactions} (id, issued_at, actor, source_ip, request_id) "
                f"SELECT i, {issued}, {concat}, '203.0.113.7', NULL FROM {source}"
            )
        )
        source, prefix = numbers(dialect, versions)
        # Record (i - 1) % records gets versions i, i + records, ...: its insert, then updates.
        records = versions // PER_TRANSACTION
        div = "DIV" if dialect == "mariadb" else "/"
        record = f"((i - 1) % {records})"
        step = f"((i - 1) {div} {records})"
        tx = f"((i - 1) {div} {PER_TRANSACTION} + 1)"
        changes = """'{"status": ["open", "paid"], "amount": ["10.00", "12.50"]}'"""
        if dialect == "postgresql":
            changes += "::json"
        connection.execute(
            sa.text(
                f"{prefix}INSERT INTO {history} (versioning_id, versioning_transaction_id, "
                f"versioning_operation, versioning_changes, id, status, payer, amount, note) "
                f"SELECT i, {tx}, CASE WHEN {step} = 0 THEN 'insert' ELSE 'update' END, "
                f"CASE WHEN {step} = 0 THEN NULL ELSE {changes} END, {record}, "
                f"CASE WHEN {step} = 0 THEN 'open' ELSE 'paid' END, 'Ann Example', "
                f"CASE WHEN {step} = 0 THEN 10.00 ELSE 12.50 END, 'a note of some length' "
                f"FROM {source}"
            )
        )


def measure(engine: sa.Engine, versions: int, repeat: int, folder: Path) -> None:
    name = engine.dialect.name
    for format in ("csv", "jsonl"):
        path = folder / f"out.{format}"
        walls: list[float] = []
        cpus: list[float] = []
        for _ in range(repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            written = export(engine, path, format=format)
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
            assert written == versions, written
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        size = path.stat().st_size / 2**20
        print(
            f"| {name} | {format} | {versions:,} | {versions / wall:,.0f} versions/s "
            f"| {versions / cpu:,.0f} versions/s | {wall:.1f} s | {size:,.0f} MiB |",
            flush=True,
        )


def peak(engine: sa.Engine, folder: Path, limit: int | None) -> float:
    tracemalloc.start()
    try:
        # Newest first: the versions of both runs are alike (updates), only their number differs.
        export(engine, folder / "peak.jsonl", format="jsonl", limit=limit, newest_first=True)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def run(engine: sa.Engine, versions: int, repeat: int, memory_only: bool = False) -> None:
    start = time.perf_counter()
    fill(engine, versions)
    print(f"<!-- {engine.dialect.name}: filled in {time.perf_counter() - start:.0f} s -->")
    with tempfile.TemporaryDirectory() as folder:
        if not memory_only:
            measure(engine, versions, repeat, Path(folder))
        small = peak(engine, Path(folder), versions // 10)
        full = peak(engine, Path(folder), None)
        print(
            f"| {engine.dialect.name} | peak memory (tracemalloc) | {versions // 10:,}: "
            f"{small:.1f} MiB | {versions:,}: {full:.1f} MiB |",
            flush=True,
        )
    Base.metadata.drop_all(engine)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="sqlite,postgresql,mariadb")
    parser.add_argument("--versions", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-only", action="store_true", help="skip the throughput rows")
    args = parser.parse_args()
    database = f"versioning_bench_export_{os.getpid()}"
    print(f"<!-- load average before: {os.getloadavg()[0]:.1f} -->")
    print("| backend | format | versions | throughput (wall) | per CPU second | time | file |")
    print("|---|---|---|---|---|---|---|")
    for name in args.backends.split(","):
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as folder:
                engine = sa.create_engine(f"sqlite:///{folder}/bench.sqlite")
                run(engine, args.versions, args.repeat, args.memory_only)
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
            run(engine, args.versions, args.repeat, args.memory_only)
        finally:
            engine.dispose()
            with admin.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE {database}")
            admin.dispose()


if __name__ == "__main__":
    main()
