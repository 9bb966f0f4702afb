"""Test backends: each test taking the ``engine`` fixture runs on SQLite, PostgreSQL and MariaDB.

PostgreSQL comes from pytest-postgresql's ``postgresql_noproc`` (a running server at the address in
``pyproject.toml``; a fresh database is made from its template for the test session). MariaDB is
reached at ``VERSIONING_MARIADB_URL`` (default ``mariadb+pymysql://root@127.0.0.1:3306``) and gets a
fresh database too. A server that is not reachable is left out, with one line saying so — unless
``CI=true``, where every backend is required.

``create_tables`` creates a ``MetaData``'s tables once per run and backend and deletes their rows
after each test (id counters go on: read generated ids back, never assume 1, 2, ...); a test that
leaves an audit context open fails.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from pytest_postgresql import factories
from sqlalchemy import event
from sqlalchemy.orm import Session

from versioning import context as versioning_context
from versioning.append_only import maintenance
from versioning.schema import CAPTURED_BY_DATABASE

# The web glue is installed as ``versioning.integrations``; the repository folder of the same name
# must never be importable as a top-level package here, or a stale ``import integrations`` would
# pass only because the checkout is on ``sys.path``.
sys.modules["integrations"] = None  # type: ignore[assignment]

BACKENDS = ("sqlite", "postgresql", "mariadb")
MARIADB_URL = os.environ.get("VERSIONING_MARIADB_URL", "mariadb+pymysql://root@127.0.0.1:3306")
# One database per test run, so that runs on the same servers (a developer's and CI's) never meet.
TEST_DB = f"versioning_tests_{os.getpid()}"
REQUIRED = os.environ.get("CI", "").lower() == "true"


postgresql_noproc = factories.postgresql_noproc(dbname=TEST_DB)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _pg_address(config: pytest.Config) -> tuple[str, int]:
    return str(config.getini("postgresql_host")), int(config.getini("postgresql_port"))


def _maria_address() -> tuple[str, int]:
    parts = urlsplit(MARIADB_URL)
    return parts.hostname or "127.0.0.1", parts.port or 3306


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): run only on these backends")
    missing = []
    if not _reachable(*_pg_address(config)):
        missing.append("postgresql")
    if not _reachable(*_maria_address()):
        missing.append("mariadb")
    available = [b for b in BACKENDS if b not in missing]
    config.stash[_AVAILABLE] = available
    if missing and REQUIRED:
        raise pytest.UsageError(
            f"CI=true requires every backend, but {', '.join(missing)} is not reachable "
            f"(PostgreSQL {_pg_address(config)}, MariaDB {_maria_address()})"
        )


_AVAILABLE = pytest.StashKey[list[str]]()


def pytest_report_header(config: pytest.Config) -> str:
    available = config.stash[_AVAILABLE]
    if len(available) == len(BACKENDS):
        return "backends: sqlite, postgresql, mariadb"
    return (
        f"backends: {', '.join(available)} only — start PostgreSQL on 127.0.0.1:5432 and MariaDB "
        f"on 127.0.0.1:3306 (or set VERSIONING_MARIADB_URL) to run every test on all three"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        wanted = list(metafunc.config.stash[_AVAILABLE])
        marker = metafunc.definition.get_closest_marker("backends")
        if marker is not None:
            wanted = [b for b in wanted if b in marker.args]
        metafunc.parametrize("backend", wanted, scope="session")


def _sqlite_engine(path: Path, **options: Any) -> sa.Engine:
    """SQLite with working SAVEPOINTs: pysqlite's own transaction handling is turned off."""
    engine = sa.create_engine(f"sqlite:///{path}", **options)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


@pytest.fixture(scope="session")
def _postgresql_url(request: pytest.FixtureRequest) -> Iterator[str]:
    from pytest_postgresql.janitor import DatabaseJanitor

    noproc = request.getfixturevalue("postgresql_noproc")
    janitor = DatabaseJanitor(
        user=noproc.user,
        host=noproc.host,
        port=noproc.port,
        dbname=TEST_DB,
        template_dbname=noproc.template_dbname,
        password=noproc.password,
    )
    janitor.drop()
    with janitor:
        password = f":{noproc.password}" if noproc.password else ""
        yield (
            f"postgresql+psycopg://{noproc.user}{password}@{noproc.host}:{noproc.port}/{TEST_DB}"
        )


@pytest.fixture(scope="session")
def _mariadb_url() -> Iterator[str]:
    from sqlalchemy_utils import create_database, database_exists, drop_database

    url = f"{MARIADB_URL}/{TEST_DB}?charset=utf8mb4"
    if database_exists(url):
        drop_database(url)
    create_database(url)
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def engine(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sa.Engine]:
    """An engine on a fresh, empty database of ``backend``."""
    if backend == "sqlite":
        engine = _sqlite_engine(tmp_path_factory.mktemp("sqlite") / "test.sqlite")
    elif backend == "postgresql":
        url = request.getfixturevalue("_postgresql_url")
        # A test that leaves a transaction open must fail, not hang the DROP in teardown.
        engine = sa.create_engine(url, connect_args={"options": "-c lock_timeout=20000"})
    else:
        url = request.getfixturevalue("_mariadb_url")
        engine = sa.create_engine(
            url,
            connect_args={
                "init_command": "SET SESSION lock_wait_timeout=20, innodb_lock_wait_timeout=20"
            },
        )
    yield engine
    _kept.pop(engine, None)
    engine.dispose()


# --- tables: created once, emptied after each test -----------------------------------------------
#
# Creating and dropping a schema is most of what a database test costs (MariaDB above all), so
# a ``MetaData`` passed to ``create_tables`` stays created on its engine after the test, and the
# test's rows are deleted instead. The next test asking for the same ``MetaData`` finds empty
# tables. Their id counters are not reset: on MariaDB that takes an ALTER TABLE a table (about
# 10 ms each, more than most tests), and no test may depend on the values of generated ids anyway
# (read them back from the rows, or give explicit ids).
# The old way comes back whenever sharing would be unsafe: a test that runs DDL of its own
# (``ALTER TABLE``, a ``create_all`` of its own, ...) has its tables dropped afterwards, and a
# test that takes ``engine`` without ``create_tables`` starts on a database with none of the kept
# tables (see ``_kept_tables_dropped``).

_kept: dict[sa.Engine, list[sa.MetaData]] = {}
_DDL = re.compile(r"\s*(CREATE|ALTER|DROP|RENAME)\b(?!\s+(SEQUENCE|TEMPORARY)\b)", re.IGNORECASE)


class _DDLSeen:
    """Notes any DDL (other than a sequence's) run on any engine while it is switched on."""

    def __init__(self) -> None:
        self.on = False
        self.seen = False

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.on and _DDL.match(statement):
            self.seen = True


_ddl_seen = _DDLSeen()
event.listen(sa.Engine, "before_cursor_execute", _ddl_seen)


def _drop_kept(engine: sa.Engine, keep: list[sa.MetaData] | None = None) -> None:
    kept = _kept.setdefault(engine, [])
    for metadata in reversed(list(kept)):
        if keep is None or metadata not in keep:
            metadata.drop_all(engine)
            kept.remove(metadata)


def _empty(engine: sa.Engine, metadatas: list[sa.MetaData]) -> None:
    """See _empty_once. SQLite and MariaDB cannot switch triggers off: the deletes of a table
    captured by the database write history, which a second pass deletes."""
    _empty_once(engine, metadatas)
    if engine.dialect.name in ("sqlite", "mariadb") and any(
        CAPTURED_BY_DATABASE in t.info for m in metadatas for t in m.tables.values()
    ):
        _empty_once(engine, metadatas)


def _empty_once(engine: sa.Engine, metadatas: list[sa.MetaData]) -> None:
    """Delete every row of ``metadatas``' tables, in one transaction (id counters go on).

    TRUNCATE re-creates a table's files on PostgreSQL and InnoDB (tens of milliseconds a table), so
    one round trip first finds the tables that hold rows, and only those are emptied."""
    # The registry of history tables describes the schema, which is kept: its rows too.
    tables = [
        t
        for m in metadatas
        for t in reversed(m.sorted_tables)
        if t.info.get("versioning") != "catalog"
    ]
    if not tables:
        return
    preparer = engine.dialect.identifier_preparer
    names = [preparer.format_table(t) for t in tables]
    dialect = engine.dialect.name
    probe = " UNION ALL ".join(
        f"SELECT {i} {'FROM DUAL ' if dialect == 'mariadb' else ''}"
        f"WHERE EXISTS (SELECT 1 FROM {name})"
        for i, name in enumerate(names)
    )
    with engine.begin() as connection:
        with_rows = [names[row[0]] for row in connection.exec_driver_sql(probe)]
        # In dependency order (children first), so deletes are valid with foreign keys checked.
        with_rows.sort(key=names.index)
        if dialect == "mariadb":
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
        elif dialect == "postgresql":
            # Tables captured by the database record deletes too: no trigger fires here.
            connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
        try:
            # History and transaction tables are append-only: their triggers let only the
            # library's maintenance switch through.
            with maintenance(connection):
                for name in with_rows:
                    connection.exec_driver_sql(f"DELETE FROM {name}")
        finally:
            if dialect == "mariadb":
                connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")


@pytest.fixture
def create_tables(engine: sa.Engine) -> Iterator[Callable[[sa.MetaData], sa.Engine]]:
    """Call with a ``MetaData``: its tables (history included) exist, empty, until the test ends."""
    used: list[sa.MetaData] = []
    kept = _kept.setdefault(engine, [])

    def create(metadata: sa.MetaData) -> sa.Engine:
        _ddl_seen.on = False
        try:
            if metadata not in kept:
                # Kept tables this test does not use could share names with the new ones.
                _drop_kept(engine, keep=used)
                metadata.drop_all(engine)
                metadata.create_all(engine)
                kept.append(metadata)
            used.append(metadata)
        finally:
            _ddl_seen.on = True
        return engine

    _ddl_seen.seen = False
    yield create
    _ddl_seen.on = False
    if _ddl_seen.seen:
        # The test changed a schema itself: drop what it used, as if nothing were kept.
        for metadata in reversed(used):
            metadata.drop_all(engine)
            if metadata in kept:
                kept.remove(metadata)
    else:
        try:
            _empty(engine, used)
        except BaseException:
            # Loud (the cleanup must be fixed), but the next test still gets fresh tables.
            for metadata in reversed(used):
                metadata.drop_all(engine)
                kept.remove(metadata)
            raise


@pytest.fixture(autouse=True)
def _kept_tables_dropped(request: pytest.FixtureRequest) -> None:
    """A test on ``engine`` that does not use ``create_tables`` starts with none of the kept tables
    (it may create tables of the same names, or inspect the database)."""
    if "engine" in request.fixturenames and "create_tables" not in request.fixturenames:
        _drop_kept(request.getfixturevalue("engine"))


@pytest.fixture(autouse=True)
def _no_audit_context_left_behind() -> Iterator[None]:
    """Fail a test that leaves an audit context open on its thread (a request, an ``__enter__``
    that raised after pushing its frame, ...) — and clean up, so that the leak cannot spill into
    the following tests (it would: frames nest)."""
    token = versioning_context._current.set(None)
    yield
    leaked = versioning_context._current.get()
    versioning_context._current.reset(token)
    assert leaked is None, "the test left an audit context open on its thread"


@pytest.fixture
def queued_engine(engine: sa.Engine) -> Iterator[sa.Engine]:
    """``engine`` for many concurrent writers: on SQLite, which lets one writer in at a time, an
    engine on the same database whose one connection the writers queue for (woken as soon as it is
    free, where a locked database file makes them poll it in sleeps of up to 100 ms); elsewhere
    ``engine`` itself."""
    if engine.dialect.name != "sqlite":
        yield engine
        return
    assert engine.url.database is not None
    queued = _sqlite_engine(Path(engine.url.database), pool_size=1, max_overflow=0, pool_timeout=60)
    yield queued
    queued.dispose()


@pytest.fixture
def sessions(engine: sa.Engine) -> Iterator[Callable[[], Session]]:
    """A factory of sessions on ``engine``; every session it made is closed after the test."""
    made: list[Session] = []

    def make(**kwargs: Any) -> Session:
        session = Session(engine, **kwargs)
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()
