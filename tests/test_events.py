"""Failed and denied actions on record: ``record_event``, the ``events`` reader, events in the
digest chain, append-only event rows, and failed commits recorded when switched on.

Every database test runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
import test_asyncio
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import versioning
import versioning.asyncio
from versioning import AppendOnlyError, ArgumentError, EventError, Versioned, audit_context
from versioning.schema import EVENT_TABLE, TRANSACTION_TABLE

from helpers import count, read, tamper

#: The async engine fixture and runner of the asyncio tests.
async_engine = test_asyncio.async_engine
run = test_asyncio.run

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]


class Base(DeclarativeBase):
    pass


class Account(Versioned, Base):
    __tablename__ = "event_accounts"
    __versioned__ = {"mask": {"secret": versioning.masks.redact}}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email: Mapped[str] = mapped_column(sa.String(80), unique=True)
    secret: Mapped[str | None] = mapped_column(sa.String(40))


class Ticket(Versioned, Base):
    __tablename__ = "event_tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(40))


EVENTS = Base.metadata.tables[EVENT_TABLE]
TRANSACTIONS = Base.metadata.tables[TRANSACTION_TABLE]


def _events(sessions: Sessions, **filters: Any) -> list[versioning.Event]:
    with sessions() as session:
        return versioning.events(session, metadata=Base.metadata, **filters)


def _record(bind: Any, action: str = "login", **kwargs: Any) -> versioning.Event:
    kwargs.setdefault("outcome", "denied")
    return versioning.record_event(bind, action, metadata=Base.metadata, **kwargs)


# --- checking values (no database) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": ""}, "action '' has 0 characters; it must be 1 to 100"),
        ({"action": "   "}, "not only spaces"),
        ({"action": "x" * 101}, "has 101 characters; it must be 1 to 100"),
        ({"action": "log\nin"}, "action 'log\\nin' contains the control character '\\n'"),
        ({"action": 7}, "action must be a str, got int 7"),
        ({"outcome": "d" * 33}, "has 33 characters; it must be 1 to 32"),
        ({"outcome": None}, "outcome must be a str, got NoneType None"),
        ({"target": "t" * 256}, "has 256 characters; it must be 1 to 255"),
        ({"target": 12}, "target must be a str or None, got int 12"),
        ({"details": [1, 2]}, "details must be a dict (a JSON object) or None, got list [1, 2]"),
        ({"details": {"at": dt.date(2026, 1, 2)}}, "details must be JSON-serializable"),
        ({"details": {"ratio": float("nan")}}, "details must be JSON-serializable"),
        ({"details": {"note": "a\x00b"}}, "details['note'] holds a string with the character"),
        ({"details": {"blob": "x" * 70_000}}, "more than the 65535 an event may hold"),
    ],
)
def test_values_are_checked_before_anything_is_written(
    kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"action": "login", "outcome": "denied", **kwargs}
    action = arguments.pop("action")
    with pytest.raises(ArgumentError) as caught:
        versioning.record_event(sa.create_engine("sqlite://"), action, **arguments)
    assert message in str(caught.value)


def test_a_bind_that_is_not_one_is_refused() -> None:
    with pytest.raises(ArgumentError, match="takes a Session, Engine or Connection, got str"):
        versioning.record_event("sqlite://", "login", outcome="denied", metadata=Base.metadata)


def test_record_failed_commits_refuses_what_it_cannot_switch_on() -> None:
    with pytest.raises(ArgumentError, match="takes a sessionmaker, async_sessionmaker"):
        versioning.record_failed_commits(sa.create_engine("sqlite://"))
    with pytest.raises(ArgumentError, match="must be True or False"):
        versioning.record_failed_commits(sessionmaker(), enabled="yes")  # type: ignore[arg-type]


# --- recording and reading ----------------------------------------------------------------------


def test_an_event_survives_the_callers_rollback(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    context = audit_context(
        actor="mallory", source_ip="203.0.113.7", request_id="req-1", reason="login form", tries=3
    )
    with context, sessions() as session:
        made = _record(session, target="account:alice", details={"why": "bad password"})
        session.add(Account(id=1, email="a@example.org"))
        session.flush()
        session.rollback()
    assert count(engine, Account.__table__) == 0
    assert read(sessions, Account, 1) == []
    (found,) = _events(sessions)
    assert found == made
    assert (found.action, found.outcome, found.target) == ("login", "denied", "account:alice")
    assert found.details == {"why": "bad password"}
    tx = found.transaction
    assert (tx.actor, tx.source_ip, tx.request_id, tx.reason) == (
        "mallory",
        "203.0.113.7",
        "req-1",
        "login form",
    )
    assert tx.extra == {"tries": 3}
    assert tx.id == found.transaction_id and tx.issued_at.tzinfo is not None


@pytest.mark.backends("postgresql", "mariadb")
def test_an_event_recorded_inside_an_open_write_transaction_stays(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Account(id=1, email="a@example.org"))
        session.flush()  # holds the row's lock and an open transaction
        made = _record(session, "permission", outcome="denied", target="account:1")
        with engine.connect() as connection:
            # Committed already: another connection sees it while the caller's is open.
            assert connection.scalar(sa.select(EVENTS.c.action).where(EVENTS.c.id == made.id))
        session.rollback()
    assert [e.id for e in _events(sessions)] == [made.id]
    assert count(engine, Account.__table__) == 0


@pytest.mark.backends("sqlite")
def test_sqlite_refuses_while_the_callers_transaction_is_open(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Account(id=1, email="a@example.org"))
        session.flush()
        with pytest.raises(EventError, match="cannot write on SQLite while the session's"):
            _record(session)
        session.rollback()
        _record(session)  # the transaction is over: it is written
    with engine.connect() as connection:
        connection.execute(sa.select(1))
        with pytest.raises(EventError, match="while the connection's transaction is open"):
            _record(connection)
    assert len(_events(sessions)) == 1


def test_an_engine_and_a_connection_are_binds_too(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    first = _record(engine, "export", outcome="failed")
    with engine.connect() as connection:
        second = _record(connection, "export", outcome="success")
    assert [e.id for e in _events(sessions, newest_first=False)] == [first.id, second.id]
    assert second.transaction_id > first.transaction_id


def test_filters_and_pages(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    with audit_context(actor="alice", request_id="r1"):
        a = _record(engine, "login", outcome="denied")
        b = _record(engine, "login", outcome="success")
    with audit_context(actor="bob", source_ip="198.51.100.1"):
        c = _record(engine, "delete_invoice", outcome="denied", target="invoice:9")
        d = _record(engine, "export", outcome="failed")

    def ids(**filters: Any) -> list[int]:
        return [e.id for e in _events(sessions, **filters)]

    assert ids() == [d.id, c.id, b.id, a.id]
    assert ids(newest_first=False) == [a.id, b.id, c.id, d.id]
    assert ids(outcome="denied") == [c.id, a.id]
    assert ids(outcome=["denied", "failed"], actor="bob") == [d.id, c.id]
    assert ids(action="login", actor="alice", request_id="r1") == [b.id, a.id]
    assert ids(target="invoice:9") == [c.id]
    assert ids(source_ip="198.51.100.1", action="export") == [d.id]
    assert ids(transaction_id=b.transaction_id) == [b.id]
    assert ids(since=c.transaction.issued_at) == [d.id, c.id]
    assert ids(until=c.transaction.issued_at) == [b.id, a.id]
    assert ids(since=b.transaction.issued_at, until=d.transaction.issued_at) == [c.id, b.id]
    assert ids(actor="nobody") == []
    # Pages: nothing skipped or shown twice, also when events are recorded meanwhile.
    first = _events(sessions, limit=3)
    assert [e.id for e in first] == [d.id, c.id, b.id]
    later = _record(engine, "login", outcome="denied")
    assert ids(limit=3, after=first[-1]) == [a.id]
    assert ids(
        limit=2, after=_events(sessions, newest_first=False, limit=2)[-1], newest_first=False
    ) == [
        c.id,
        d.id,
    ]
    assert ids(limit=1) == [later.id]
    with pytest.raises(ArgumentError, match="since must be a timezone-aware datetime"):
        _events(sessions, since="2026-01-01")
    with pytest.raises(ArgumentError, match="needs a timezone-aware datetime, got the naive"):
        _events(sessions, until=dt.datetime(2026, 1, 1))
    with pytest.raises(ArgumentError, match="limit must be a positive int or None"):
        _events(sessions, limit=0)
    with pytest.raises(ArgumentError, match="after must be the last Event"):
        _events(sessions, after=3)


# --- events in the chain ------------------------------------------------------------------------


def _verify(sessions: Sessions) -> versioning.Report:
    with sessions() as session:
        return versioning.verify(session, metadata=Base.metadata)


def _found(report: versioning.Report) -> set[tuple[str, str | None, int | None, int | None]]:
    return {(p.kind, p.table, p.transaction_id, p.version_id) for p in report.problems}


def test_seal_and_verify_cover_events(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Account(id=1, email="a@example.org"))
        session.commit()
    denied = _record(engine, "login", outcome="denied", details={"n": [1, 2.5, None]})
    failed = _record(engine, "export", outcome="failed", target="invoices")
    with sessions() as session:
        made = versioning.seal(session, metadata=Base.metadata)
        session.commit()
    assert made is not None and made.count == 3
    report = _verify(sessions)
    assert report.ok, report.problems
    assert (report.versions_checked, report.events_checked) == (1, 2)

    with engine.begin() as connection, tamper(connection):
        connection.execute(
            EVENTS.update().where(EVENTS.c.id == denied.id).values(outcome="success")
        )
        connection.execute(EVENTS.delete().where(EVENTS.c.id == failed.id))
    assert _found(_verify(sessions)) == {
        ("altered", EVENT_TABLE, denied.transaction_id, denied.id),
        ("missing", EVENT_TABLE, failed.transaction_id, None),
    }
    problems = {p.kind: p.detail for p in _verify(sessions).problems}
    assert f"event row {denied.id} of {EVENT_TABLE}" in problems["altered"]
    assert f"an event row of {EVENT_TABLE} written by transaction" in problems["missing"]


def test_an_event_row_added_behind_the_librarys_back_is_named(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    kept = _record(engine, "login", outcome="denied")
    with engine.begin() as connection:
        added = connection.execute(
            EVENTS.insert()
            .values(transaction_id=kept.transaction_id, action="login", outcome="success")
            .returning(EVENTS.c.id)
        ).scalar_one()
    assert _found(_verify(sessions)) == {("added", EVENT_TABLE, kept.transaction_id, added)}


def test_event_rows_are_append_only(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    made = _record(engine)
    for statement in (
        EVENTS.update().where(EVENTS.c.id == made.id).values(outcome="success"),
        EVENTS.delete().where(EVENTS.c.id == made.id),
    ):
        with engine.begin() as connection, pytest.raises(AppendOnlyError) as caught:
            connection.execute(statement)
        assert caught.value.table == EVENT_TABLE
    assert [e.outcome for e in _events(sessions)] == ["denied"]


# --- failed commits -----------------------------------------------------------------------------


@pytest.fixture
def recording(engine: sa.Engine) -> sessionmaker[Session]:
    factory = sessionmaker(engine)
    versioning.record_failed_commits(factory)
    return factory


def test_a_failed_commit_leaves_an_event_and_nothing_else(
    create_tables: Tables, sessions: Sessions, recording: sessionmaker[Session]
) -> None:
    engine = create_tables(Base.metadata)
    with recording() as session:
        session.add(Account(id=1, email="a@example.org", secret="hunter2"))
        session.commit()
    with audit_context(actor="carol", request_id="req-9"), recording() as session:
        session.get_one(Account, 1).secret = "changed"
        session.add(Account(id=2, email="a@example.org", secret="s3cret"))  # email is unique
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()
        session.rollback()
    (found,) = _events(sessions)
    assert (found.action, found.outcome, found.target) == ("commit_failed", "error", "Account")
    assert found.details == {
        "error": "sqlalchemy.exc.IntegrityError",
        "stage": "flush",
        "records": {"Account": {"keys": [[2], [1]], "keys_left_out": 0, "without_key": 0}},
    }
    assert (found.transaction.actor, found.transaction.request_id) == ("carol", "req-9")
    # No value, masked or not, is in the event.
    assert "s3cret" not in repr(found) and "changed" not in repr(found)
    assert "a@example.org" not in repr(found)
    # The caller's transaction was rolled back: history as before.
    assert count(engine, Account.__table__) == 1
    assert [v.state["secret"] for v in read(sessions, Account, 1)] == ["[REDACTED]"]
    assert read(sessions, Account, 2) == []
    assert _verify(sessions).ok


def test_new_records_without_a_key_yet_are_counted(
    create_tables: Tables, sessions: Sessions, recording: sessionmaker[Session]
) -> None:
    create_tables(Base.metadata)
    with recording() as session:
        session.add(Ticket(title="first"))
        session.flush()
        ticket_id = session.query(Ticket.id).scalar()
        session.add(Ticket(title=None))  # NOT NULL
        with pytest.raises(sa.exc.IntegrityError):
            session.flush()
        session.rollback()
    (found,) = _events(sessions)
    assert found.details is not None
    assert found.details["records"] == {
        "Ticket": {"keys": [[ticket_id]], "keys_left_out": 0, "without_key": 1}
    }


def test_a_commit_failing_after_the_flush_is_recorded(
    create_tables: Tables, sessions: Sessions, recording: sessionmaker[Session]
) -> None:
    engine = create_tables(Base.metadata)
    with recording() as session:

        @event.listens_for(session, "before_commit")
        def _refuse(session: Session) -> None:
            session.flush()
            raise RuntimeError("the application refused the commit")

        session.add(Account(id=5, email="e@example.org"))
        try:
            session.commit()
        except RuntimeError:
            session.rollback()
    (found,) = _events(sessions)
    assert found.details == {
        "error": "builtins.RuntimeError",
        "stage": "commit",
        "records": {"Account": {"keys": [[5]], "keys_left_out": 0, "without_key": 0}},
    }
    assert count(engine, Account.__table__) == 0


def test_nothing_is_recorded_without_the_switch_on_success_or_on_a_plain_rollback(
    create_tables: Tables, sessions: Sessions, recording: sessionmaker[Session]
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:  # not switched on
        session.add_all(
            [Account(id=1, email="a@example.org"), Account(id=2, email="a@example.org")]
        )
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()
    with recording() as session:
        session.add(Account(id=3, email="c@example.org"))
        session.commit()
        session.get_one(Account, 3).email = "d@example.org"
        session.flush()
        session.rollback()  # the application's choice, not a failure
    with recording() as session:
        with pytest.raises(sa.exc.IntegrityError), session.begin_nested():
            session.add(Account(id=4, email="c@example.org"))
        session.commit()  # a savepoint rolled back; the transaction went on
    assert _events(sessions) == []


def test_a_failure_to_record_is_logged_never_raised(
    create_tables: Tables,
    sessions: Sessions,
    recording: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create_tables(Base.metadata)
    with recording() as session:
        session.add(Account(id=1, email="a@example.org"))
        session.commit()

    def _down(*args: Any) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("the server went away"))

    monkeypatch.setattr("versioning.failed_commits.record", _down)
    with recording() as session, caplog.at_level(logging.ERROR, logger="versioning"):
        session.add(Account(id=2, email="a@example.org"))
        with pytest.raises(sa.exc.IntegrityError):  # the application's error, not ours
            session.commit()
    assert "the failed commit of Account was not recorded (sqlalchemy.exc.OperationalError)" in (
        caplog.text
    )
    assert _events(sessions) == []


# --- asyncio ------------------------------------------------------------------------------------


def test_the_async_forms(create_tables: Tables, async_engine: AsyncEngine) -> None:
    create_tables(Base.metadata)
    factory = async_sessionmaker(async_engine)
    versioning.record_failed_commits(factory)

    async def main() -> None:
        async with factory() as session:
            with audit_context(actor="eve"):
                made = await versioning.asyncio.record_event(
                    session, "login", outcome="denied", metadata=Base.metadata
                )
            by_engine = await versioning.asyncio.record_event(
                async_engine, "login", outcome="success", metadata=Base.metadata
            )
            async with async_engine.connect() as connection:
                by_connection = await versioning.asyncio.record_event(
                    connection, "export", outcome="failed", metadata=Base.metadata
                )
            session.add_all(
                [Account(id=1, email="a@example.org"), Account(id=2, email="a@example.org")]
            )
            with pytest.raises(sa.exc.IntegrityError):
                await session.commit()
            await session.rollback()
            found = await versioning.asyncio.events(
                session, metadata=Base.metadata, newest_first=False
            )
        assert [e.id for e in found[:3]] == [made.id, by_engine.id, by_connection.id]
        assert found[0].transaction.actor == "eve"
        assert found[3].action == "commit_failed" and found[3].details is not None
        assert found[3].details["records"]["Account"]["keys"] == [[1], [2]]
        with pytest.raises(ArgumentError, match="takes an AsyncSession, AsyncEngine"):
            await versioning.asyncio.record_event(
                Session(), "login", outcome="denied", metadata=Base.metadata
            )

    run(async_engine, main)


def test_a_database_without_the_event_table_is_told_how_to_get_it(
    engine: sa.Engine, sessions: Sessions
) -> None:
    metadata = sa.MetaData()
    versioning.transaction_table(metadata)
    tables = [t for t in metadata.sorted_tables if t.name != EVENT_TABLE]
    metadata.create_all(engine, tables=tables)
    try:
        with pytest.raises(EventError, match="has no versioning_event table, so no event can"):
            versioning.record_event(engine, "login", outcome="denied", metadata=metadata)
        with sessions() as session, pytest.raises(EventError, match="create it"):
            versioning.events(session, metadata=metadata)
        with engine.connect() as connection:  # nothing was written
            transactions = metadata.tables[TRANSACTION_TABLE]
            assert connection.scalar(sa.select(sa.func.count()).select_from(transactions)) == 0
    finally:
        metadata.drop_all(engine, tables=tables)


def test_the_write_guard_flags_changes_to_event_rows(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    made = _record(engine)
    with engine.connect() as connection:
        versioning.guard_writes(connection)
        with pytest.raises(versioning.UncapturedWriteError, match="on event table 'versioning_"):
            connection.execute(EVENTS.delete().where(EVENTS.c.id == made.id))
        connection.rollback()
    assert [e.id for e in _events(sessions)] == [made.id]


def test_an_orm_statement_names_its_model(
    create_tables: Tables, sessions: Sessions, recording: sessionmaker[Session]
) -> None:
    create_tables(Base.metadata)
    with recording() as session:
        session.add(Account(id=1, email="a@example.org"))
        session.commit()
        session.execute(sa.update(Account).where(Account.id == 1).values(secret="x"))
        session.add(Account(id=2, email="a@example.org"))
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()
    (found,) = _events(sessions)
    assert found.details is not None
    assert found.details["records"] == {
        "Account": {"keys": [[2]], "keys_left_out": 0, "without_key": 0, "statement": True}
    }
