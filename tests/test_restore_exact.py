"""Restoring exactly: version counters, stale sessions, savepoints, generated columns, secrets.

A restore never writes a version counter back (a stale writer must still fail), compares against
the row the database holds (not what a session remembers), leaves no reason behind when it is
rolled back, never writes a column the database computes, and never lets a masked value out through
its error. Every test runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm.exc import StaleDataError

import versioning
from versioning import Operation, Versioned, history, masks, restore
from versioning.restoring import _constraint, _generated, _set_on_update

from helpers import count, ops, read

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[..., Session]

INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE


class Base(DeclarativeBase):
    pass


class Doc(Versioned, Base):
    """Optimistic locking with SQLAlchemy's own counter."""

    __tablename__ = "rx_docs"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    version: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": version}


class Memo(Versioned, Base):
    """A version counter left out of history: restore cannot know its last value."""

    __tablename__ = "rx_memos"
    __versioned__ = {"exclude": ["revision"]}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(50))
    revision: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": revision}


class Note(Versioned, Base):
    """No version counter: a stale session must not decide what the restore writes."""

    __tablename__ = "rx_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(sa.String(20))


class Shape(Versioned, Base):
    __tablename__ = "rx_shapes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    width: Mapped[int] = mapped_column()
    height: Mapped[int] = mapped_column()
    area: Mapped[int] = mapped_column(sa.Computed("width * height", persisted=True))


class Counter(Versioned, Base):
    __tablename__ = "rx_counters"
    id: Mapped[int] = mapped_column(sa.Identity(always=True), primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(20))


class Page(Versioned, Base):
    """``edits`` is set by every UPDATE (``onupdate``): a restore is an update like any other."""

    __tablename__ = "rx_pages"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(sa.String(50))
    edits: Mapped[int] = mapped_column(default=0, onupdate=sa.text("edits + 1"))


class Person(Versioned, Base):
    __tablename__ = "rx_people"
    __versioned__ = {"mask": {"email": masks.redact}}
    __table_args__ = (sa.UniqueConstraint("name", "email", name="uq_rx_people_name_email"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))
    email: Mapped[str] = mapped_column(sa.String(60), default=lambda: UNKNOWN)
    city: Mapped[str] = mapped_column(sa.String(20))


class Code(Versioned, Base):
    """The same conflict without masked columns: the database's detail is kept."""

    __tablename__ = "rx_codes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(sa.String(20), unique=True)


SECRET = "alice.secret@example.org"
OTHER = "alice.other@example.org"
UNKNOWN = "unknown.person@example.org"  # what a re-created record gets: a masked value too

TX = Base.metadata.tables[versioning.TRANSACTION_TABLE]


def row(engine: sa.Engine, model: type[Any], pk: Any) -> dict[str, Any] | None:
    """The live row, read on a connection of its own."""
    table = model.__table__
    with engine.connect() as connection:
        found = connection.execute(sa.select(table).where(table.c.id == pk)).mappings().first()
    return None if found is None else dict(found)


DIGESTS = Base.metadata.tables[versioning.schema.DIGEST_TABLE]


def reasons(engine: sa.Engine) -> list[str | None]:
    """Each transaction's reason as the readers show it: the row's, then its digest's note (what
    restores noted after the row was written early: the row itself is never updated)."""
    query = (
        sa.select(TX.c.reason, DIGESTS.c.note)
        .outerjoin(DIGESTS, sa.and_(DIGESTS.c.transaction_id == TX.c.id, DIGESTS.c.segment == 1))
        .order_by(TX.c.id)
    )
    with engine.connect() as connection:
        return [
            "; ".join(part for part in (reason, note) if part is not None) or None
            for reason, note in connection.execute(query)
        ]


def written(engine: sa.Engine) -> dict[str, int]:
    """How many rows every table of this module holds."""
    return {t.name: count(engine, t) for t in Base.metadata.sorted_tables}


# -- class 10: the version counter only grows ------------------------------------------------------


def test_restore_bumps_the_version_so_a_stale_writer_fails(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    writer = sessions(expire_on_commit=False)
    restorer = sessions()
    restorer.add(Doc(id=1, title="first"))
    restorer.commit()
    held = writer.get(Doc, 1)
    assert held is not None and held.version == 1
    writer.commit()

    doc = restorer.get(Doc, 1)
    assert doc is not None
    doc.title = "second"
    restorer.commit()
    created = read(sessions, Doc, 1)[0]
    restore(restorer, Doc, 1, at=created.transaction_id)
    restorer.commit()
    assert row(engine, Doc, 1) == {"id": 1, "title": "first", "version": 3}

    held.title = "stale"
    with pytest.raises(StaleDataError):
        writer.commit()
    writer.rollback()
    assert row(engine, Doc, 1) == {"id": 1, "title": "first", "version": 3}
    versions = read(sessions, Doc, 1)
    assert ops(versions) == [INSERT, UPDATE, UPDATE]
    assert versions[-1].changes == {"title": ("second", "first"), "version": (2, 3)}
    assert versions[-1].state == {"id": 1, "title": "first", "version": 3}


def test_undelete_gives_a_version_after_every_one_it_had(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    writer = sessions(expire_on_commit=False)
    restorer = sessions()
    restorer.add(Doc(id=1, title="first"))
    restorer.commit()
    held = writer.get(Doc, 1)
    assert held is not None and held.version == 1
    writer.commit()

    restorer.delete(restorer.get(Doc, 1))
    restorer.commit()
    deleted = read(sessions, Doc, 1)[-1]
    restored = restore(restorer, deleted)
    assert restored.version == 2
    restorer.commit()
    assert row(engine, Doc, 1) == {"id": 1, "title": "first", "version": 2}

    held.title = "stale"
    with pytest.raises(StaleDataError):
        writer.commit()
    writer.rollback()
    assert row(engine, Doc, 1) == {"id": 1, "title": "first", "version": 2}
    versions = read(sessions, Doc, 1)
    assert ops(versions) == [INSERT, DELETE, INSERT]
    assert versions[-1].state == {"id": 1, "title": "first", "version": 2}, "as stored"

    # Restoring an older version after several updates and a delete: still after the last one.
    for title in ("b", "c"):
        doc = restorer.get(Doc, 1)
        assert doc is not None
        doc.title = title
        restorer.commit()
    restorer.delete(restorer.get(Doc, 1))
    restorer.commit()
    restore(restorer, Doc, 1, at=versions[0].transaction_id)
    restorer.commit()
    assert row(engine, Doc, 1) == {"id": 1, "title": "first", "version": 5}
    assert read(sessions, Doc, 1)[-1].state["version"] == 5


def test_restore_differing_only_in_the_version_records_nothing(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add(Doc(id=1, title="a"))
    session.commit()
    doc = session.get(Doc, 1)
    assert doc is not None
    doc.title = "b"
    session.commit()
    doc.title = "a"
    session.commit()
    before = written(engine)
    restore(session, read(sessions, Doc, 1)[0])  # title "a", version 1
    session.commit()
    assert written(engine) == before
    assert row(engine, Doc, 1) == {"id": 1, "title": "a", "version": 3}


def test_undelete_with_an_excluded_version_counter_is_refused(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add(Memo(id=1, text="a"))
    session.commit()
    session.delete(session.get(Memo, 1))
    session.commit()
    before = written(engine)
    with pytest.raises(versioning.RestoreError, match=r"Memo .*'revision'.*version") as raised:
        restore(session, read(sessions, Memo, 1)[-1])
    assert "history" in str(raised.value)
    session.rollback()
    assert written(engine) == before
    assert row(engine, Memo, 1) is None


# -- class 11: compare against the database row ----------------------------------------------------


def test_restore_through_a_stale_session_writes_what_the_database_lacks(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    stale = sessions(expire_on_commit=False)
    held = Note(id=1, status="new")
    stale.add(held)
    stale.commit()  # the session keeps status="new"
    other = sessions()
    note = other.get(Note, 1)
    assert note is not None
    note.status = "paid"
    other.commit()

    created = read(sessions, Note, 1)[0]
    restored = restore(stale, created)
    assert restored is held and held.status == "new"
    stale.commit()
    assert row(engine, Note, 1) == {"id": 1, "status": "new"}
    versions = read(sessions, Note, 1)
    assert ops(versions) == [INSERT, UPDATE, UPDATE]
    assert versions[-1].changes == {"status": ("paid", "new")}


def test_restore_through_a_stale_session_with_a_version_counter(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    stale = sessions(expire_on_commit=False)
    held = Doc(id=1, title="first")
    stale.add(held)
    stale.commit()  # the session keeps version 1
    other = sessions()
    doc = other.get(Doc, 1)
    assert doc is not None
    doc.title = "second"
    other.commit()

    restored = restore(stale, Doc, 1, at=read(sessions, Doc, 1)[0].transaction_id)
    assert restored is held and (held.title, held.version) == ("first", 3)
    stale.commit()
    assert row(engine, Doc, 1) == {"id": 1, "title": "first", "version": 3}
    assert read(sessions, Doc, 1)[-1].changes == {
        "title": ("second", "first"),
        "version": (2, 3),
    }


def test_undelete_of_a_row_deleted_under_the_session(
    create_tables: Tables, sessions: Sessions, recwarn: pytest.WarningsRecorder
) -> None:
    engine = create_tables(Base.metadata)
    stale = sessions(expire_on_commit=False)
    stale.add(Note(id=1, status="new"))
    stale.commit()
    held = stale.get(Note, 1)
    stale.commit()  # ends the read (SQLite would otherwise lock the other writer out)
    other = sessions()
    other.delete(other.get(Note, 1))
    other.commit()

    restored = restore(stale, read(sessions, Note, 1)[-1])
    assert restored is not held
    assert held not in stale
    stale.commit()
    assert row(engine, Note, 1) == {"id": 1, "status": "new"}
    assert ops(read(sessions, Note, 1)) == [INSERT, DELETE, INSERT]
    assert not recwarn.list


@pytest.mark.parametrize("autoflush", [True, False])
def test_pending_changes_are_flushed_and_recorded_before_the_restore(
    create_tables: Tables, sessions: Sessions, autoflush: bool
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions(autoflush=autoflush)
    session.add_all([Note(id=1, status="new"), Note(id=2, status="new")])
    session.commit()
    note = session.get(Note, 1)
    assert note is not None
    note.status = "paid"
    session.commit()
    created = read(sessions, Note, 1)[0]

    note.status = "pending edit"  # not flushed yet
    other = session.get(Note, 2)
    assert other is not None
    other.status = "also pending"
    restore(session, created)
    session.commit()
    assert row(engine, Note, 1) == {"id": 1, "status": "new"}
    assert row(engine, Note, 2) == {"id": 2, "status": "also pending"}
    versions = read(sessions, Note, 1)
    assert [v.changes for v in versions[2:]] == [
        {"status": ("paid", "pending edit")},
        {"status": ("pending edit", "new")},
    ]
    assert versions[2].transaction_id == versions[3].transaction_id


# -- class 12: the reason follows savepoints -------------------------------------------------------


class Boom(Exception):
    pass


def restore_in_a_failing_savepoint(session: Session, version: versioning.Version) -> None:
    with session.begin_nested():
        restore(session, version)
        raise Boom


def test_restore_rolled_back_with_its_savepoint_leaves_no_reason(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add_all([Note(id=1, status="new"), Note(id=2, status="new")])
    session.commit()
    note = session.get(Note, 1)
    assert note is not None
    note.status = "paid"
    session.commit()
    created = read(sessions, Note, 1)[0]

    other = session.get(Note, 2)
    assert other is not None
    other.status = "kept"
    with pytest.raises(Boom):
        restore_in_a_failing_savepoint(session, created)
    session.commit()
    assert row(engine, Note, 1) == {"id": 1, "status": "paid"}
    assert row(engine, Note, 2) == {"id": 2, "status": "kept"}
    assert reasons(engine)[-1] is None
    assert len(read(sessions, Note, 1)) == 2

    # A savepoint that is released keeps its restore, and its reason.
    with session.begin_nested():
        restore(session, created)
    session.commit()
    assert reasons(engine)[-1] == f"restore Note 1 to transaction {created.transaction_id}"
    assert row(engine, Note, 1) == {"id": 1, "status": "new"}


def test_reason_of_a_transaction_written_early_follows_savepoints(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add_all([Note(id=i, status="new") for i in (1, 2, 3)])
    session.commit()
    for i in (1, 3):
        note = session.get(Note, i)
        assert note is not None
        note.status = "paid"
    session.commit()
    one, three = read(sessions, Note, 1)[0], read(sessions, Note, 3)[0]

    other = session.get(Note, 2)
    assert other is not None
    other.status = "kept"
    history(session, Note, 2)  # writes the transaction row now
    with pytest.raises(Boom):
        restore_in_a_failing_savepoint(session, one)
    restore(session, three)
    session.commit()
    reason = reasons(engine)[-1]
    assert reason == f"restore Note 3 to transaction {three.transaction_id}"
    assert row(engine, Note, 1) == {"id": 1, "status": "paid"}

    # The savepoint's reason alone, rolled back: the early-written row keeps no reason.
    note = session.get(Note, 2)
    assert note is not None
    note.status = "kept again"
    history(session, Note, 2)
    with pytest.raises(Boom):
        restore_in_a_failing_savepoint(session, one)
    session.commit()
    assert reasons(engine)[-1] is None


def test_a_failed_restore_leaves_no_reason(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add_all([Code(id=1, code="A"), Note(id=1, status="new")])
    session.commit()
    code = session.get(Code, 1)
    assert code is not None
    code.code = "B"
    session.commit()
    session.add(Code(id=2, code="A"))
    session.commit()
    created = read(sessions, Code, 1)[0]

    note = session.get(Note, 1)
    assert note is not None
    note.status = "kept"
    with pytest.raises(versioning.RestoreConflictError), session.begin_nested():
        restore(session, created)
    session.commit()
    assert row(engine, Note, 1) == {"id": 1, "status": "kept"}
    assert row(engine, Code, 1) == {"id": 1, "code": "B"}
    assert reasons(engine)[-1] is None


# -- class 13: columns the database computes -------------------------------------------------------


def test_restore_and_undelete_with_a_computed_column(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add(Shape(id=1, width=2, height=3))
    session.commit()
    shape = session.get(Shape, 1)
    assert shape is not None
    shape.width = 5
    session.commit()
    created = read(sessions, Shape, 1)[0]
    assert created.state["area"] == 6

    restore(session, created)
    session.commit()
    assert row(engine, Shape, 1) == {"id": 1, "width": 2, "height": 3, "area": 6}
    assert read(sessions, Shape, 1)[-1].changes == {"width": (5, 2), "area": (15, 6)}

    session.delete(session.get(Shape, 1))
    session.commit()
    restore(session, read(sessions, Shape, 1)[-1])
    session.commit()
    assert row(engine, Shape, 1) == {"id": 1, "width": 2, "height": 3, "area": 6}
    last = read(sessions, Shape, 1)[-1]
    assert (last.operation, last.state) == (INSERT, {"id": 1, "width": 2, "height": 3, "area": 6})


def test_identity_always_key_restores_but_is_not_re_created(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    counter = Counter(label="a")
    session.add(counter)
    session.commit()
    pk = counter.id
    counter.label = "b"
    session.commit()
    restore(session, read(sessions, Counter, pk)[0])
    session.commit()
    assert row(engine, Counter, pk) == {"id": pk, "label": "a"}

    session.delete(session.get(Counter, pk))
    session.commit()
    before = written(engine)
    with pytest.raises(versioning.RestoreError, match=r"Counter .*'id'.*generated") as raised:
        restore(session, read(sessions, Counter, pk)[-1])
    assert "by hand" in str(raised.value)
    session.rollback()
    assert written(engine) == before
    assert row(engine, Counter, pk) is None


def test_restore_leaves_onupdate_columns_to_the_update(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add(Page(id=1, body="a"))
    session.commit()
    page = session.get(Page, 1)
    assert page is not None
    page.body = "b"
    session.commit()
    restore(session, read(sessions, Page, 1)[0])
    session.commit()
    assert row(engine, Page, 1) == {"id": 1, "body": "a", "edits": 2}
    assert read(sessions, Page, 1)[-1].changes == {"body": ("b", "a"), "edits": (1, 2)}


def test_which_columns_the_database_generates() -> None:
    def column(*args: Any, **kwargs: Any) -> sa.Column[Any]:
        return sa.Column("c", sa.Integer, *args, **kwargs)

    assert _generated(column(sa.Computed("1")))
    assert _generated(column(sa.Identity(always=True)))
    assert not _generated(column(sa.Identity()))
    assert _generated(column(server_default=sa.FetchedValue()))
    assert not _generated(column(server_default=sa.text("1")))
    assert not _generated(column(default=1))
    assert _set_on_update(column(onupdate=1))
    assert _set_on_update(column(server_onupdate=sa.FetchedValue()))
    assert _set_on_update(column(sa.Computed("1")))
    assert not _set_on_update(column(server_default=sa.text("1")))


# -- class 18: no masked value in a conflict's error -----------------------------------------------


def _assert_no_secret(error: BaseException) -> None:
    printed = "".join(traceback.format_exception(error))
    for value in (SECRET, OTHER, UNKNOWN, "alice.", "unknown.person"):
        assert value not in str(error)
        assert value not in printed
    assert error.__cause__ is None
    assert error.__context__ is None


@pytest.mark.parametrize("undelete", [False, True], ids=["update", "undelete"])
def test_conflict_on_a_masked_column_keeps_the_value_out_of_the_error(
    create_tables: Tables, sessions: Sessions, backend: str, undelete: bool
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add(Person(id=1, name="a", email=SECRET, city="Oslo"))
    session.commit()
    if undelete:
        session.delete(session.get(Person, 1))
    else:
        person = session.get(Person, 1)
        assert person is not None
        person.name = "b"
        person.email = OTHER
    session.commit()
    session.add(Person(id=2, name="a", email=UNKNOWN if undelete else OTHER, city="Rome"))
    session.commit()
    target = read(sessions, Person, 1)[-1 if undelete else 0]
    before = written(engine)

    with pytest.raises(versioning.RestoreConflictError) as raised:
        restore(session, target)
    error = raised.value
    _assert_no_secret(error)
    message = str(error)
    assert "Person" in message and "unique" in message and "masked" in message
    if backend == "sqlite":
        assert "rx_people.name, rx_people.email" in message
    else:
        assert "uq_rx_people_name_email" in message
    # A later use of the session before rollback() quotes the flush's error: ours, not the driver's.
    with pytest.raises(sa.exc.PendingRollbackError) as later:
        session.execute(sa.select(1))
    for value in (SECRET, OTHER, UNKNOWN):
        assert value not in str(later.value)
    session.rollback()
    assert written(engine) == before
    assert len(read(sessions, Person, 1)) == 2


def test_conflict_without_masked_columns_keeps_the_detail(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add(Code(id=1, code="A-1"))
    session.commit()
    code = session.get(Code, 1)
    assert code is not None
    code.code = "B-1"
    session.commit()
    session.add(Code(id=2, code="A-1"))
    session.commit()
    before = written(engine)
    with pytest.raises(versioning.RestoreConflictError) as raised:
        restore(session, Code, 1, at=read(sessions, Code, 1)[0].transaction_id)
    assert "code" in str(raised.value)
    assert isinstance(raised.value.__cause__, sa.exc.IntegrityError)
    session.rollback()
    assert written(engine) == before


class _Driver(Exception):
    """Stands in for a DB-API error (its args as the driver gives them)."""


def _integrity(*args: Any) -> sa.exc.IntegrityError:
    return sa.exc.IntegrityError("INSERT ...", {}, _Driver(*args))


def test_which_constraint_a_driver_error_names_without_its_values() -> None:
    crafted = "Duplicate entry 'a-x' for key 'leak' for key 'uq_people'"  # value: x' for key 'leak
    assert _constraint(_integrity(1062, crafted)) == "a unique constraint ('uq_people')"
    assert _constraint(_integrity(1062, "Duplicate entry 'a-x@y' for key 'x@y'")) == (
        "a unique constraint"
    )
    fk = "Cannot add or update a child row: ... CONSTRAINT `fk_a` FOREIGN KEY (`a`) REFERENCES"
    assert _constraint(_integrity(1452, fk)) == "a foreign key constraint ('fk_a')"
    assert _constraint(_integrity("UNIQUE constraint failed: t.a, t.b")) == (
        "a unique constraint (on t.a, t.b)"
    )
    assert _constraint(_integrity("NOT NULL constraint failed: t.a")) == (
        "a not null constraint (on t.a)"
    )
    assert _constraint(_integrity("CHECK constraint failed: a > 'secret'")) == (
        "a check constraint"
    )
    assert _constraint(_integrity("something else: 'secret'")) == "a constraint"
