"""Small helpers shared by the test modules (importable since pytest puts tests/ on sys.path)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from versioning import Operation, Version, history
from versioning.append_only import maintenance

Sessions = Callable[[], Session]


@contextmanager
def another_schema(engine: sa.Engine, tmp_path: Path, name: str) -> Iterator[sa.Engine]:
    """An engine on the test database where schema ``name`` exists (SQLite: a database file
    attached under that name), dropped afterwards."""
    if engine.dialect.name == "sqlite":
        own = sa.create_engine(f"sqlite:///{tmp_path / 'main.sqlite'}")

        @sa.event.listens_for(own, "connect")
        def _connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.execute(f"ATTACH DATABASE '{tmp_path / 'other.sqlite'}' AS {name}")

        try:
            yield own
        finally:
            own.dispose()
        return
    create, drop = (
        ("CREATE SCHEMA", "DROP SCHEMA IF EXISTS {} CASCADE")
        if engine.dialect.name == "postgresql"
        else ("CREATE DATABASE", "DROP DATABASE IF EXISTS {}")
    )
    with engine.begin() as connection:
        connection.exec_driver_sql(drop.format(name))
        connection.exec_driver_sql(f"{create} {name}")
    try:
        yield engine
    finally:
        engine.dispose()  # no pooled connection holds a lock on the schema
        with engine.begin() as connection:
            connection.exec_driver_sql(drop.format(name))


def tamper(connection: sa.Connection) -> AbstractContextManager[None]:
    """A block in which the connection's transaction may UPDATE/DELETE history and transaction
    rows, which are append-only (their triggers refuse it otherwise): a test's raw fixture or
    tampering, as the library's own maintenance does it."""
    return maintenance(connection)


def count(engine: sa.Engine, table: sa.Table) -> int:
    """Rows in ``table``, counted on a connection of its own."""
    with engine.connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


def read(sessions: Sessions, model: type[Any], pk: Any) -> list[Version]:
    """The record's history, read in a fresh session that is closed afterwards."""
    with sessions() as session:
        return history(session, model, pk)


def ops(versions: list[Version]) -> list[Operation]:
    return [v.operation for v in versions]


def backend_id(session: Session) -> int:
    """The server's id of the session's connection (its backend pid, its thread id)."""
    dialect = session.get_bind().dialect.name
    query = "SELECT pg_backend_pid()" if dialect == "postgresql" else "SELECT CONNECTION_ID()"
    return int(session.execute(sa.text(query)).scalar_one())


def waits_for_lock(engine: sa.Engine, backend: int) -> bool:
    """Whether that connection waits for a row lock (the server is shared: only that one).

    Not from MariaDB's ``information_schema.innodb_trx``: InnoDB refreshes that table's cache
    only when nobody has read it for 100 ms, so polling it (ours, or another test run's on the
    same server) can show a wait that began after the first read never; the InnoDB monitor is
    read live."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            query = (
                "SELECT count(*) FROM pg_stat_activity "
                f"WHERE pid = {backend} AND wait_event_type = 'Lock'"
            )
            return bool(connection.exec_driver_sql(query).scalar())
        status = str(connection.exec_driver_sql("SHOW ENGINE INNODB STATUS").one()[2])
    return any(
        f"thread id {backend}," in transaction and "\nLOCK WAIT " in transaction
        for transaction in status.split("\n---TRANSACTION ")[1:]
    )


def waited_for_lock(engine: sa.Engine, backend: int, thread: threading.Thread) -> bool:
    """Wait until the server shows connection ``backend`` waiting for a row lock (``True``), or
    until ``thread``, which runs on it, ends without having waited (``False``); 30 s at most."""
    deadline = time.monotonic() + 30
    while thread.is_alive() and time.monotonic() < deadline:
        if waits_for_lock(engine, backend):
            return True
        time.sleep(0.01)
    return False
