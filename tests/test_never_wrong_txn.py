"""History that is never wrong (issue 8): time order, commits that commit nothing, rows deleted
underneath the session, and the library's own reads in the engine's debug log.

* Class 8: a transaction's ``issued_at`` comes from the database's clock, in the INSERT that
  allocates its id at commit, so time and id order agree for every record's history whatever the
  application servers' clocks say, and ``as_of(datetime)`` agrees with ``as_of(id)``.
* Class 21: a ``session.commit()`` after the database aborted or rolled back the transaction
  raises instead of returning normally with nothing committed.
* Class 14: a row deleted by another connection behaves as in plain SQLAlchemy (``StaleDataError``
  for an UPDATE, a warning for a DELETE) and nothing is recorded for it.
* Class 18 (logging): with ``echo="debug"`` no masked value the application did not load itself
  appears in the log through the library's own queries.

Every test runs on SQLite, PostgreSQL and MariaDB unless marked otherwise.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
import versioning.recording
from versioning import Operation, Versioned, VersioningError, as_of, audit_context, history
from versioning.schema import issued_at_utc, transaction_table_for

from helpers import backend_id, count, ops, read, waits_for_lock

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE


class Base(DeclarativeBase):
    pass


class Note(Versioned, Base):
    __tablename__ = "nwt_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(50))


class Counted(Versioned, Base):
    """Optimistic locking: the library trusts the session's values."""

    __tablename__ = "nwt_counted"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(50))
    version: Mapped[int] = mapped_column(default=1)
    __mapper_args__ = {"version_id_col": version}


class PlainNote(Base):
    """The same as Note without versioning: what plain SQLAlchemy does."""

    __tablename__ = "nwt_plain_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(50))


class PlainCounted(Base):
    __tablename__ = "nwt_plain_counted"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(50))
    version: Mapped[int] = mapped_column(default=1)
    __mapper_args__ = {"version_id_col": version}


class Secretive(Versioned, Base):
    __tablename__ = "nwt_secretive"
    __versioned__ = {"mask": {"email": versioning.masks.last4, "token": versioning.masks.redact}}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    email: Mapped[str] = mapped_column(sa.String(100))
    token: Mapped[str | None] = mapped_column(sa.Text)


TRANSACTIONS = transaction_table_for(Base.metadata)


def _times(versions: list[versioning.Version]) -> list[tuple[int, dt.datetime]]:
    out = []
    for version in versions:
        assert version.transaction is not None
        out.append((version.transaction_id, version.transaction.issued_at))
    return out


def _assert_time_follows_ids(pairs: list[tuple[int, dt.datetime]]) -> None:
    ordered = sorted(pairs)
    times = [at for _, at in ordered]
    assert all(at.tzinfo is not None and at.utcoffset() == dt.timedelta(0) for at in times)
    assert all(a < b for a, b in itertools.pairwise(times)), ordered


# -- class 8: time order ------------------------------------------------------------------------


def test_issued_at_increases_with_the_transaction_id(
    create_tables: Tables, sessions: Sessions
) -> None:
    """Back-to-back commits (no pause: several per millisecond) get strictly later times."""
    create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Note(id=1, text="a0"), Note(id=2, text="b0")])
        session.commit()
        for n in range(1, 30):
            note = session.get(Note, 1 if n % 3 else 2)
            assert note is not None
            note.text = f"t{n}"
            session.commit()
    pairs = _times(read(sessions, Note, 1)) + _times(read(sessions, Note, 2))
    _assert_time_follows_ids(list(set(pairs)))
    with sessions() as session:
        # The column is a plain DateTime (naive UTC on SQLite and MariaDB); read it as history does.
        rows = session.execute(sa.select(TRANSACTIONS.c.id, issued_at_utc(TRANSACTIONS))).all()
    _assert_time_follows_ids([tuple(row) for row in rows])  # type: ignore[misc]


class _SkewedClock:
    """A stand-in for the ``datetime`` module whose clock is an hour behind every other call,
    as two application servers whose clocks disagree."""

    def __init__(self) -> None:
        self.calls = 0
        clock = self

        class _Datetime(dt.datetime):
            @classmethod
            def now(cls, tz: dt.tzinfo | None = None) -> Any:  # type: ignore[override]
                clock.calls += 1
                skew = dt.timedelta(hours=1) if clock.calls % 2 else dt.timedelta(0)
                return dt.datetime.now(tz) - skew

        self.datetime = _Datetime
        self.UTC = dt.UTC
        self.timedelta = dt.timedelta


def test_a_skewed_application_clock_does_not_reorder_history(
    create_tables: Tables, sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_tables(Base.metadata)
    monkeypatch.setattr(versioning.recording, "dt", _SkewedClock())
    with sessions() as session:
        session.add(Note(id=1, text="v0"))
        session.commit()
        for n in range(1, 8):
            note = session.get(Note, 1)
            assert note is not None
            note.text = f"v{n}"
            session.commit()
    versions = read(sessions, Note, 1)
    _assert_time_follows_ids(_times(versions))
    now = dt.datetime.now(dt.UTC)
    assert all(abs(at - now) < dt.timedelta(minutes=5) for _, at in _times(versions))


@pytest.mark.backends("sqlite", "postgresql")
def test_a_database_clock_stepping_back_keeps_the_order(
    create_tables: Tables, sessions: Sessions
) -> None:
    """A transaction row from a moment the database clock has since stepped back from: the
    next transaction is still issued after it (MariaDB: see docs/concepts.md)."""
    engine = create_tables(Base.metadata)
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    with engine.begin() as connection:
        connection.execute(TRANSACTIONS.insert().values(issued_at=ahead))
    with sessions() as session:
        session.add(Note(id=1, text="v0"))
        session.commit()
        session.get(Note, 1).text = "v1"  # type: ignore[union-attr]
        session.commit()
    versions = read(sessions, Note, 1)
    times = [at for _, at in _times(versions)]
    assert ahead < times[0] < times[1]
    with sessions() as session:
        assert as_of(session, Note, 1, times[0]).text == "v0"  # type: ignore[union-attr]
        assert as_of(session, Note, 1, ahead) is None


def test_as_of_a_time_agrees_with_as_of_the_transaction_id(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Note(id=1, text="v0"))
        session.commit()
        for n in range(1, 12):
            note = session.get(Note, 1)
            if n == 6:
                session.delete(note)
            elif n == 7:
                session.add(Note(id=1, text="again"))
            else:
                assert note is not None
                note.text = f"v{n}"
            session.commit()
    versions = read(sessions, Note, 1)
    assert len(versions) == 12
    with sessions() as session:
        for version in versions:
            assert version.transaction is not None
            by_id = as_of(session, Note, 1, version.transaction_id)
            by_time = as_of(session, Note, 1, version.transaction.issued_at)
            before = as_of(
                session, Note, 1, version.transaction.issued_at - dt.timedelta.resolution
            )
            if version.operation is DELETE:
                assert by_id is None and by_time is None
            else:
                assert by_id is not None and by_time is not None
                assert by_id.text == by_time.text == version.state["text"]
            earlier = [v for v in versions if v.transaction_id < version.transaction_id]
            if not earlier or earlier[-1].operation is DELETE:
                assert before is None
            else:
                assert before is not None and before.text == earlier[-1].state["text"]


@pytest.mark.backends("postgresql", "mariadb")
def test_concurrent_writers_of_one_record_get_ordered_times(
    engine: sa.Engine, create_tables: Tables
) -> None:
    """Writers serialized by the record's row lock: later id, later time."""
    create_tables(Base.metadata)
    with Session(engine) as session:
        session.add(Note(id=1, text="0"))
        session.commit()
    pool = sa.create_engine(engine.url, pool_size=6, max_overflow=0)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for n in range(8):
                with Session(pool) as session, audit_context(actor=f"w{worker}"):
                    note = session.get(Note, 1, with_for_update=True)
                    assert note is not None
                    note.text = f"{worker}-{n}"
                    session.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    pool.dispose()
    assert not errors, errors
    with Session(engine) as session:
        versions = history(session, Note, 1)
    assert len(versions) == 33
    _assert_time_follows_ids(_times(versions))


# -- class 21: a commit that commits nothing raises ---------------------------------------------


#: History's own arguments are checked before any query, so the failing lookup is a query of the
#: caller's that the database rejects.
NOT_A_NUMBER = "not a number"


def _committed(sessions: Sessions) -> tuple[list[str], list[Operation]]:
    with sessions() as session:
        texts = list(session.scalars(sa.select(Note.text).order_by(Note.id)))
    return texts, ops(read(sessions, Note, 1))


def test_commit_after_a_failed_history_read_never_returns_with_nothing_committed(
    create_tables: Tables, sessions: Sessions, backend: str
) -> None:
    """History written early by a read, then a lookup the database rejects (PostgreSQL aborts
    the transaction): the commit raises; elsewhere it commits everything."""
    create_tables(Base.metadata)
    session = sessions()
    session.add(Note(id=1, text="v0"))
    session.flush()
    assert ops(history(session, Note, 1)) == [INSERT]  # writes the pending history now
    try:  # a lookup only PostgreSQL rejects (SQLite and MariaDB cast the text to 0)
        session.execute(
            sa.select(Note).where(Note.id == sa.cast(sa.literal(NOT_A_NUMBER), sa.Integer))
        )
    except sa.exc.DBAPIError:
        assert backend == "postgresql"
    if backend == "postgresql":
        with pytest.raises(VersioningError, match=r"aborted or rolled back.*session\.rollback"):
            session.commit()
        session.rollback()
        assert _committed(sessions) == ([], [])
        assert count(session.get_bind(), TRANSACTIONS) == 0
    else:
        session.commit()
        assert _committed(sessions) == (["v0"], [INSERT])


def test_commit_after_a_failed_statement_raises_before_writing_history(
    create_tables: Tables, sessions: Sessions, backend: str
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Note(id=1, text="v0"))
        session.commit()
    session = sessions()
    session.get(Note, 1).text = "v1"  # type: ignore[union-attr]
    session.flush()
    with pytest.raises(sa.exc.DBAPIError):
        session.execute(sa.text("SELECT * FROM nwt_no_such_table"))
    if backend == "postgresql":
        with pytest.raises(VersioningError, match="aborted or rolled back"):
            session.commit()
        session.rollback()
        assert _committed(sessions) == (["v0"], [INSERT])
    else:  # the failed statement alone was undone: the rest commits, with its history
        session.commit()
        assert _committed(sessions) == (["v1"], [INSERT, UPDATE])


def test_commit_after_a_failure_inside_a_rolled_back_savepoint_commits(
    create_tables: Tables, sessions: Sessions
) -> None:
    """The savepoint undid the failure: the transaction is whole and commits normally."""
    create_tables(Base.metadata)
    session = sessions()
    session.add(Note(id=1, text="v0"))
    session.flush()
    history(session, Note, 1)
    with pytest.raises(sa.exc.DBAPIError), session.begin_nested():
        session.execute(sa.text("SELECT * FROM nwt_no_such_table"))
    session.add(Note(id=2, text="w0"))
    session.commit()
    assert _committed(sessions) == (["v0", "w0"], [INSERT])
    assert ops(read(sessions, Note, 2)) == [INSERT]


@pytest.mark.backends("postgresql", "mariadb")
def test_the_victim_of_a_deadlock_cannot_commit(engine: sa.Engine, create_tables: Tables) -> None:
    """MariaDB rolls back a deadlocked transaction and runs later statements in a new one;
    PostgreSQL aborts it. Either way the victim's commit raises and records nothing."""
    create_tables(Base.metadata)
    with Session(engine) as session:
        session.add_all([Note(id=1, text="a"), Note(id=2, text="b")])
        session.commit()
    first, second = Session(engine), Session(engine)
    try:
        first.get(Note, 1).text = "first"  # type: ignore[union-attr]
        first.flush()
        second.get(Note, 2).text = "second"  # type: ignore[union-attr]
        second.flush()
        if engine.dialect.name == "postgresql":
            # Look for the deadlock after 50 ms instead of the server's default second (a
            # superuser's setting; the test only takes longer without it).
            for session in (first, second):
                if session.scalar(sa.text("SELECT current_setting('is_superuser')")) == "on":
                    session.execute(sa.text("SET LOCAL deadlock_timeout = '50ms'"))
        failures: dict[str, BaseException] = {}

        def lock(session: Session, name: str, key: int) -> None:
            try:
                session.execute(sa.select(Note.id).where(Note.id == key).with_for_update())
            except sa.exc.DBAPIError as exc:
                failures[name] = exc

        waiter = backend_id(first)
        thread = threading.Thread(target=lock, args=(first, "first", 2))
        thread.start()
        deadline = time.monotonic() + 30
        while not waits_for_lock(engine, waiter):
            assert time.monotonic() < deadline, "the first session never waited for the lock"
            threading.Event().wait(0.05)
        lock(second, "second", 1)
        thread.join(60)
        assert len(failures) == 1, failures
        [victim_name] = failures
        victim, winner = (first, second) if victim_name == "first" else (second, first)
        with pytest.raises(VersioningError, match="aborted or rolled back"):
            victim.commit()
        victim.rollback()
        winner.commit()
    finally:
        first.close()
        second.close()
    won = 2 if victim_name == "first" else 1
    with Session(engine) as session:
        texts = {row.id: row.text for row in session.execute(sa.select(Note.id, Note.text))}
        assert texts == {1: "a", 2: "b", won: "second" if won == 2 else "first"}
        assert ops(history(session, Note, won)) == [INSERT, UPDATE]
        assert ops(history(session, Note, 3 - won)) == [INSERT]


# -- class 14: rows deleted underneath the session ----------------------------------------------

TWINS = {Note: PlainNote, Counted: PlainCounted}


def _seed(sessions: Sessions, model: type[Any], keys: range) -> tuple[Session, dict[int, Any]]:
    """Rows ``keys`` of ``model``, held by a session that does not expire them on commit."""
    session = sessions(expire_on_commit=False)  # type: ignore[call-arg]
    held = {k: model(id=k, text=f"t{k}") for k in keys}
    session.add_all(held.values())
    session.commit()
    return session, held


def _delete_underneath(sessions: Sessions, model: type[Any], *keys: int) -> None:
    with sessions() as other:
        for key in keys:
            other.delete(other.get(model, key))
        other.commit()


def _outcome(action: Callable[[], None]) -> tuple[type[BaseException] | None, list[str]]:
    """What ``action`` raised (its type) and the warnings it gave, as plain SQLAlchemy sees."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            action()
        except Exception as exc:
            raised: type[BaseException] | None = type(exc)
        else:
            raised = None
    messages = [str(w.message).split(";")[0].replace("nwt_plain_", "nwt_") for w in caught]
    return raised, messages


@pytest.mark.parametrize("model", [Note, Counted], ids=["plain", "version_id_col"])
def test_updating_a_row_deleted_underneath_raises_stale_data_error(
    create_tables: Tables, sessions: Sessions, model: type[Any]
) -> None:
    engine = create_tables(Base.metadata)
    outcomes = []
    for kind in (TWINS[model], model):
        session, held = _seed(sessions, kind, range(1, 4))
        _delete_underneath(sessions, kind, 1, 3)
        held[1].text = "changed"
        held[2].text = "also changed"
        session.delete(held[3])  # gone too: the flush both updates and deletes missing rows

        def flush(session: Session = session) -> None:
            session.flush()

        outcomes.append(_outcome(flush))
        session.rollback()
    plain, versioned = outcomes
    assert versioned == plain == (sa.orm.exc.StaleDataError, [])
    assert ops(read(sessions, model, 1)) == [INSERT, DELETE]  # the other session's delete only
    assert ops(read(sessions, model, 2)) == [INSERT]
    assert ops(read(sessions, model, 3)) == [INSERT, DELETE]
    assert count(engine, TRANSACTIONS) == 2
    with sessions() as check:
        assert list(check.scalars(sa.select(model.text))) == ["t2"]


def test_deleting_a_row_deleted_underneath_warns_and_records_the_rest(
    create_tables: Tables, sessions: Sessions
) -> None:
    """As in SQLAlchemy, a DELETE that matched no row only warns; it records no DELETE, and the
    other changes of the flush are recorded as usual."""
    engine = create_tables(Base.metadata)
    outcomes = []
    for kind in (PlainNote, Note):
        session, held = _seed(sessions, kind, range(1, 5))
        _delete_underneath(sessions, kind, 1)
        session.delete(held[1])  # gone already
        session.delete(held[2])
        held[3].text = "changed"

        def commit(session: Session = session) -> None:
            session.commit()

        outcomes.append(_outcome(commit))
    plain, versioned = outcomes
    assert versioned == plain
    assert versioned[0] is None and any("expected to delete" in w for w in versioned[1])
    with sessions() as session:
        assert set(session.scalars(sa.select(Note.id))) == {3, 4}
    assert ops(read(sessions, Note, 1)) == [INSERT, DELETE]  # one DELETE: the other session's
    assert ops(read(sessions, Note, 2)) == [INSERT, DELETE]
    [*_, changed] = read(sessions, Note, 3)
    assert changed.operation is UPDATE and changed.changes == {"text": ("t3", "changed")}
    assert ops(read(sessions, Note, 4)) == [INSERT]
    assert count(engine, TRANSACTIONS) == 3


def test_deleting_a_versioned_row_deleted_underneath_raises_stale_data_error(
    create_tables: Tables, sessions: Sessions
) -> None:
    """With a version_id_col SQLAlchemy raises for a DELETE too: nothing is recorded."""
    engine = create_tables(Base.metadata)
    outcomes = []
    for kind in (PlainCounted, Counted):
        session, held = _seed(sessions, kind, range(1, 3))
        _delete_underneath(sessions, kind, 1)
        session.delete(held[1])
        held[2].text = "changed"

        def flush(session: Session = session) -> None:
            session.flush()

        outcomes.append(_outcome(flush))
        session.rollback()
    plain, versioned = outcomes
    assert versioned == plain == (sa.orm.exc.StaleDataError, [])
    assert ops(read(sessions, Counted, 1)) == [INSERT, DELETE]
    assert ops(read(sessions, Counted, 2)) == [INSERT]
    assert count(engine, TRANSACTIONS) == 2


@pytest.mark.backends("postgresql")
def test_a_row_re_created_during_the_flush_is_refused(
    engine: sa.Engine, create_tables: Tables, sessions: Sessions
) -> None:
    """PostgreSQL locks no missing row: another transaction can re-create it between the read
    and the UPDATE, which then matches it. Its old values are unknown: refused, nothing kept."""
    create_tables(Base.metadata)
    session, held = _seed(sessions, Note, range(1, 2))
    _delete_underneath(sessions, Note, 1)

    def re_create(mapper: Any, connection: sa.Connection, target: Any) -> None:
        with engine.begin() as other:
            other.execute(sa.insert(Note.__table__).values(id=1, text="re-created"))

    sa.event.listen(Note, "before_update", re_create)
    try:
        held[1].text = "changed"
        with pytest.raises(VersioningError, match="re-created by another transaction"):
            session.flush()
    finally:
        sa.event.remove(Note, "before_update", re_create)
    session.rollback()
    with sessions() as check:
        assert check.scalar(sa.select(Note.text)) == "re-created"
    assert ops(read(sessions, Note, 1)) == [INSERT, DELETE]


# -- class 18 (logging): masked values stay out of the engine's debug log -----------------------

EMAIL = "alice.secret@example.org"
TOKEN = "tok-7f3a9c-very-secret"


@pytest.fixture
def debug_engine(engine: sa.Engine, create_tables: Tables) -> Iterator[sa.Engine]:
    """The test database, two Secretive rows written without logging, and an engine on it with
    ``echo="debug"`` (every statement, its parameters and every row it returns are logged)."""
    create_tables(Base.metadata)
    with Session(engine) as session:
        session.add_all(
            [
                Secretive(id=1, name="ann", email=EMAIL, token=TOKEN),
                Secretive(id=2, name="bob", email="b." + EMAIL, token=TOKEN + "2"),
            ]
        )
        session.commit()
    engine.dispose()  # SQLite: no idle connection holds the file
    echoing = sa.create_engine(engine.url, echo="debug")
    yield echoing
    echoing.dispose()


def _run_logged(caplog: pytest.LogCaptureFixture, action: Callable[[], None]) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="sqlalchemy.engine"):
        action()
    return [record.getMessage() for record in caplog.records]


def _assert_no_masked_value(messages: list[str], *still_logged: str) -> None:
    assert messages, "nothing was logged"
    leaks = [m for m in messages if EMAIL in m or TOKEN in m or "example.org" in m]
    assert not leaks, leaks
    rows = [m for m in messages if m.startswith("Row ")]
    for value in still_logged:  # the rows the library read are still logged, but for the mask
        assert any(value in m and "masked by versioning" in m for m in rows), rows


def _masked_history_is_intact(sessions: Sessions, pk: int) -> versioning.Version:
    [*_, last] = read(sessions, Secretive, pk)
    assert last.state["email"].endswith(".org") and EMAIL not in last.state["email"]
    assert last.state["token"] == versioning.masks.REDACTED
    return last


def test_updates_and_deletes_keep_masked_values_out_of_the_log(
    debug_engine: sa.Engine, sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    def work() -> None:
        with Session(debug_engine) as session:
            ann = session.scalars(sa.select(Secretive).options(sa.orm.load_only(Secretive.name)))
            for obj in ann:
                if obj.id == 1:
                    obj.name = "ann2"  # the email and token were never loaded
                else:
                    session.delete(obj)
            session.commit()

    messages = _run_logged(caplog, work)
    _assert_no_masked_value(messages, "'ann'", "'bob'")
    assert ops(read(sessions, Secretive, 1)) == [INSERT, UPDATE]
    assert ops(read(sessions, Secretive, 2)) == [INSERT, DELETE]
    assert _masked_history_is_intact(sessions, 1).changes == {"name": ("ann", "ann2")}
    _masked_history_is_intact(sessions, 2)


def test_bulk_statements_keep_masked_values_out_of_the_log(
    debug_engine: sa.Engine, sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    def work() -> None:
        with Session(debug_engine) as session:
            session.execute(sa.update(Secretive).where(Secretive.id == 1).values(name="ann2"))
            session.execute(sa.delete(Secretive).where(Secretive.id == 2))
            session.commit()

    messages = _run_logged(caplog, work)
    _assert_no_masked_value(messages, "'ann'", "'bob'")
    assert ops(read(sessions, Secretive, 1)) == [INSERT, UPDATE]
    assert ops(read(sessions, Secretive, 2)) == [INSERT, DELETE]
    _masked_history_is_intact(sessions, 1)


def test_restore_keeps_masked_values_out_of_the_log(
    debug_engine: sa.Engine, sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    with sessions() as session:
        session.get(Secretive, 1).name = "ann2"  # type: ignore[union-attr]
        session.commit()
    first = read(sessions, Secretive, 1)[0]

    def work() -> None:
        with Session(debug_engine) as session:
            versioning.restore(session, Secretive, 1, at=first.transaction_id)
            session.commit()

    messages = _run_logged(caplog, work)
    _assert_no_masked_value(messages, "'ann2'")
    with sessions() as session:
        restored = session.get(Secretive, 1)
        assert restored is not None
        assert (restored.name, restored.email, restored.token) == ("ann", EMAIL, TOKEN)
    last = _masked_history_is_intact(sessions, 1)
    assert last.changes == {"name": ("ann2", "ann")}


@pytest.mark.backends("sqlite")
def test_commit_after_sqlite_rolled_back_the_transaction_raises(
    create_tables: Tables, sessions: Sessions
) -> None:
    """``INSERT OR ROLLBACK`` that fails rolls back the whole SQLite transaction; the history
    noted for the changes it undid must not be written on its own."""
    create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Note(id=1, text="v0"), PlainNote(id=1, text="p")])
        session.commit()
    session = sessions()
    session.get(Note, 1).text = "v1"  # type: ignore[union-attr]
    session.flush()
    with pytest.raises(sa.exc.IntegrityError):
        session.execute(sa.text("INSERT OR ROLLBACK INTO nwt_plain_notes VALUES (1, 'dup')"))
    with pytest.raises(VersioningError, match="aborted or rolled back"):
        session.commit()
    session.rollback()
    assert _committed(sessions) == (["v0"], [INSERT])


@pytest.mark.backends("postgresql")
def test_asyncpg_commit_after_a_failed_history_read_raises(
    engine: sa.Engine, create_tables: Tables, sessions: Sessions
) -> None:
    """The same on asyncpg, whose driver reports nothing either."""
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    create_tables(Base.metadata)
    async_engine = create_async_engine(engine.url.set(drivername="postgresql+asyncpg"))

    async def main() -> None:
        try:
            async with AsyncSession(async_engine) as session:
                session.add(Note(id=1, text="v0"))
                await session.flush()
                await session.run_sync(history, Note, 1)
                with pytest.raises(sa.exc.DBAPIError):
                    await session.execute(
                        sa.select(Note).where(
                            Note.id == sa.cast(sa.literal(NOT_A_NUMBER), sa.Integer)
                        )
                    )
                with pytest.raises(VersioningError, match="aborted or rolled back"):
                    await session.commit()
                await session.rollback()
        finally:
            await async_engine.dispose()

    asyncio.run(asyncio.wait_for(main(), 60))
    assert _committed(sessions) == ([], [])


@pytest.mark.backends("postgresql")
def test_a_row_re_created_before_its_delete_is_refused(
    engine: sa.Engine, create_tables: Tables, sessions: Sessions
) -> None:
    """The DELETE of a row found missing matches a row another transaction re-created in
    between: it would be deleted unrecorded. Refused, nothing kept."""
    create_tables(Base.metadata)
    session, held = _seed(sessions, Note, range(1, 4))
    _delete_underneath(sessions, Note, 1)

    def re_create(mapper: Any, connection: sa.Connection, target: Any) -> None:
        if target.id == 1:
            with engine.begin() as other:
                other.execute(sa.insert(Note.__table__).values(id=1, text="re-created"))

    sa.event.listen(Note, "before_delete", re_create)
    try:
        session.delete(held[1])
        session.delete(held[2])
        held[3].text = "changed"
        with pytest.raises(VersioningError, match="re-created by another transaction"):
            session.flush()
    finally:
        sa.event.remove(Note, "before_delete", re_create)
    session.rollback()
    with sessions() as check:
        assert dict(check.execute(sa.select(Note.id, Note.text)).all()) == {  # type: ignore[arg-type]
            1: "re-created",
            2: "t2",
            3: "t3",
        }
    assert ops(read(sessions, Note, 1)) == [INSERT, DELETE]
    assert ops(read(sessions, Note, 2)) == [INSERT]
    assert ops(read(sessions, Note, 3)) == [INSERT]


@pytest.mark.backends("postgresql")
def test_serializable_writers_of_different_tables_do_not_conflict(
    engine: sa.Engine, create_tables: Tables, sessions: Sessions
) -> None:
    """Taking the time must not make unrelated SERIALIZABLE transactions conflict: reading the
    latest transaction row would (a predicate lock on the index page the other one inserts
    into). Both commit, in order."""
    create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Note(id=1, text="a"), Secretive(id=1, name="s", email="e")])
        session.commit()
    serializable = engine.execution_options(isolation_level="SERIALIZABLE")
    with Session(serializable) as first, Session(serializable) as second:
        first.get(Note, 1).text = "first"  # type: ignore[union-attr]
        second.get(Secretive, 1).name = "second"  # type: ignore[union-attr]
        first.flush()
        second.flush()
        first.commit()
        second.commit()
    assert ops(read(sessions, Note, 1)) == [INSERT, UPDATE]
    assert ops(read(sessions, Secretive, 1)) == [INSERT, UPDATE]
    later = _times(read(sessions, Note, 1))[1:] + _times(read(sessions, Secretive, 1))[1:]
    _assert_time_follows_ids(later)
