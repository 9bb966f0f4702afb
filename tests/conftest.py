"""Test backends: each test taking the ``engine`` fixture runs on SQLite, PostgreSQL and MariaDB.

PostgreSQL comes from pytest-postgresql's ``postgresql_noproc`` (a running server at the address in
``pyproject.toml``; a fresh database is made from its template for the test session). MariaDB is
reached at ``VERSIONING_MARIADB_URL`` (default ``mariadb+pymysql://root@127.0.0.1:3306``) and gets a
fresh database too. A server that is not reachable is left out, with one line saying so — unless
``CI=true``, where every backend is required.
"""

from __future__ import annotations

import os
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


def _sqlite_engine(path: Path) -> sa.Engine:
    """SQLite with working SAVEPOINTs: pysqlite's own transaction handling is turned off."""
    engine = sa.create_engine(f"sqlite:///{path}")

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
    engine.dispose()


@pytest.fixture
def create_tables(engine: sa.Engine) -> Iterator[Callable[[sa.MetaData], sa.Engine]]:
    """Call with a ``MetaData``: its tables (history included) exist until the test ends."""
    created: list[sa.MetaData] = []

    def create(metadata: sa.MetaData) -> sa.Engine:
        metadata.drop_all(engine)
        metadata.create_all(engine)
        created.append(metadata)
        return engine

    yield create
    for metadata in reversed(created):
        metadata.drop_all(engine)


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
