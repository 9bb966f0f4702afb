"""Database-side capture (work in progress towards issue #14): PostgreSQL triggers that record
every write to a table, whoever makes it, with the same history the session path writes.

``__versioned__["capture"] = "database"``: ``create_all`` installs the triggers and the session
path leaves the model alone, so that ORM writes, raw SQL and other clients are all recorded by
the triggers, once. Each case compares with what the session path records for the same change
of a twin model.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
import test_types as types
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
from versioning import ConfigurationError, Operation, Versioned, audit_context, history, masks
from versioning.declaration import versioned_spec
from versioning.triggers import trigger_fingerprint

from helpers import tamper

pytestmark = pytest.mark.backends("postgresql", "sqlite", "mariadb")
#: What only PostgreSQL does (deferred triggers, what it knows of a client, psql).
postgresql_only = pytest.mark.backends("postgresql")

Tables = Callable[[sa.MetaData], sa.Engine]


class Base(DeclarativeBase):
    pass


class _Columns:
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    price: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
    seen: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    card: Mapped[str | None] = mapped_column(sa.String(20))
    doc: Mapped[Any] = mapped_column(sa.JSON, nullable=True)


class Item(_Columns, Versioned, Base):
    """Captured by the database: create_all installs its trigger."""

    __tablename__ = "dbcap_items"
    __versioned__ = {"capture": "database", "mask": {"card": masks.last4}}


class Twin(_Columns, Versioned, Base):
    """The same columns, captured by the session: what the triggers must match."""

    __tablename__ = "dbcap_twins"
    __versioned__ = {"mask": {"card": masks.last4}}


ITEMS = Item.__table__
SPEC = versioned_spec(sa.inspect(Item))


@pytest.fixture
def captured(create_tables: Tables) -> sa.Engine:
    return create_tables(Base.metadata)


def _versions(engine: sa.Engine, model: type[Any], pk: int = 1) -> list[tuple[Any, ...]]:
    with Session(engine) as session:
        return [
            (v.operation, v.changes, v.state, v.transaction.actor)
            for v in history(session, model, pk)
        ]


VALUES = {
    "name": "bolt",
    "price": Decimal("12.30"),
    "seen": dt.datetime(2026, 5, 1, 12, 30, 15, 120000, tzinfo=dt.UTC),
    "card": "4111111111111111",
    "doc": {"b": [1, 2.5], "a": {"x": None}},
}
CHANGED = {"name": "nut", "price": Decimal("7.00"), "card": "4000000000000002", "doc": None}


def test_raw_sql_is_recorded_as_the_session_path_records_it(captured: sa.Engine) -> None:
    engine = captured
    with engine.begin() as connection:
        connection.execute(ITEMS.insert(), {"id": 1, **VALUES})
    with engine.begin() as connection:
        connection.execute(ITEMS.update().where(ITEMS.c.id == 1).values(CHANGED))
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM dbcap_items WHERE id = 1")
    with Session(engine) as session:
        twin = Twin(id=1, **VALUES)
        session.add(twin)
        session.commit()
        for key, value in CHANGED.items():
            setattr(twin, key, value)
        session.commit()
        session.delete(twin)
        session.commit()
    ours = _versions(engine, Item)
    theirs = _versions(engine, Twin)
    assert [v[0] for v in ours] == [Operation.INSERT, Operation.UPDATE, Operation.DELETE]
    assert [v[:3] for v in ours] == [v[:3] for v in theirs]
    assert ours[1][1]["card"] == ("************1111", "************0002")


@postgresql_only
def test_another_clients_transaction_row_says_what_the_database_knows(
    captured: sa.Engine,
) -> None:
    engine = captured
    with engine.begin() as connection:
        connection.exec_driver_sql("SET application_name = 'nightly-fix'")
        connection.execute(ITEMS.insert(), {"id": 1, **VALUES})
        connection.execute(ITEMS.insert(), {"id": 2, **VALUES})
    with Session(engine) as session:
        versions = [v for pk in (1, 2) for v in history(session, Item, pk)]
        transaction = versions[0].transaction
        assert transaction.actor == "postgres"
        assert transaction.extra == {"database_user": "postgres", "application_name": "nightly-fix"}
        # One transaction row for the database transaction.
        assert {v.transaction_id for v in versions} == {transaction.id}


def test_the_applications_context_goes_on_its_transaction_row(captured: sa.Engine) -> None:
    engine = captured
    with (
        audit_context(actor="alice", source_ip="10.0.0.7", request_id="r-1", reason="fix", t=7),
        Session(engine) as session,
    ):  # raw SQL through the session: the app's context
        session.execute(sa.text("INSERT INTO dbcap_items (id, name) VALUES (1, 'bolt')"))
        session.commit()
    with Session(engine) as session:
        transaction = history(session, Item, 1)[0].transaction
    assert (transaction.actor, transaction.source_ip, transaction.request_id) == (
        "alice",
        "10.0.0.7",
        "r-1",
    )
    assert (transaction.reason, transaction.extra) == ("fix", {"t": 7})


def test_an_update_that_changes_nothing_records_nothing(captured: sa.Engine) -> None:
    engine = captured
    with engine.begin() as connection:
        connection.execute(ITEMS.insert(), {"id": 1, **VALUES})
    with engine.begin() as connection:
        connection.execute(ITEMS.update().where(ITEMS.c.id == 1).values(VALUES))
        connection.exec_driver_sql("UPDATE dbcap_items SET price = 12.3 WHERE id = 1")
    assert [v[0] for v in _versions(engine, Item)] == [Operation.INSERT]


def test_rolled_back_work_leaves_nothing(captured: sa.Engine) -> None:
    engine = captured
    with engine.connect() as connection:
        with connection.begin():
            connection.execute(ITEMS.insert(), {"id": 1, **VALUES})
        transaction = connection.begin()
        connection.execute(ITEMS.update().values(name="gone"))
        transaction.rollback()
        with connection.begin():
            savepoint = connection.begin_nested()
            connection.execute(ITEMS.update().values(name="undone"))
            savepoint.rollback()
            connection.execute(ITEMS.update().values(name="kept"))
    versions = _versions(engine, Item)
    assert [(v[0], v[1]) for v in versions][1:] == [(Operation.UPDATE, {"name": ("bolt", "kept")})]
    with engine.connect() as connection:
        count = connection.exec_driver_sql("SELECT count(*) FROM versioning_transaction").scalar()
    # SQLite keys another client's statement by its millisecond: two in one may share a row.
    assert count == 2 or (engine.dialect.name == "sqlite" and count == 1)


@postgresql_only
def test_transaction_ids_follow_commit_order(captured: sa.Engine) -> None:
    """The transaction that wrote first but committed last gets the larger id: the row is
    written at commit, as the session path's."""
    engine = captured
    with engine.begin() as connection:
        connection.execute(ITEMS.insert(), [{"id": i, **VALUES} for i in (1, 2)])
    late = engine.connect()
    late_tx = late.begin()
    late.execute(ITEMS.update().where(ITEMS.c.id == 2).values(name="late first write"))
    with engine.begin() as early:
        early.execute(ITEMS.update().where(ITEMS.c.id == 1).values(name="early"))
    done = threading.Event()

    def finish() -> None:
        late.execute(ITEMS.update().where(ITEMS.c.id == 1).values(name="late"))
        late_tx.commit()
        late.close()
        done.set()

    finish()
    assert done.is_set()
    with Session(engine) as session:
        versions = history(session, Item, 1)
    assert [v.changes["name"][1] for v in versions[1:]] == ["early", "late"]
    assert versions[1].transaction_id < versions[2].transaction_id


def test_the_fingerprint_changes_with_the_columns() -> None:
    from sqlalchemy.dialects import postgresql

    assert SPEC is not None
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    first = trigger_fingerprint(SPEC, dialect)
    assert first == trigger_fingerprint(SPEC, dialect)
    twin = versioned_spec(sa.inspect(Twin))
    assert twin is not None
    assert trigger_fingerprint(twin, dialect) != first


def test_orm_writes_are_recorded_once_by_the_triggers(captured: sa.Engine) -> None:
    engine = captured
    with audit_context(actor="alice", request_id="r-9", ticket=3), Session(engine) as session:
        item = Item(id=1, **VALUES)
        session.add(item)
        session.commit()
        for key, value in CHANGED.items():
            setattr(item, key, value)
        session.commit()
        session.execute(sa.update(Item).where(Item.id == 1).values(name="bulk"))
        session.commit()
        session.delete(session.get_one(Item, 1))
        session.commit()
    versions = _versions(engine, Item)
    assert [v[0] for v in versions] == [
        Operation.INSERT,
        Operation.UPDATE,
        Operation.UPDATE,
        Operation.DELETE,
    ]
    assert {v[3] for v in versions} == {"alice"}
    with Session(engine) as session:
        transaction = history(session, Item, 1)[0].transaction
    assert (transaction.request_id, transaction.extra) == ("r-9", {"ticket": 3})


def test_one_transaction_row_when_both_paths_write(captured: sa.Engine) -> None:
    """A transaction that changes a model of each kind has one transaction row: the triggers
    use the one the session path wrote."""
    engine = captured
    with audit_context(actor="bob"), Session(engine) as session:
        session.add_all([Item(id=1, **VALUES), Twin(id=1, **VALUES)])
        session.commit()
    with Session(engine) as session:
        ours, theirs = history(session, Item, 1)[0], history(session, Twin, 1)[0]
    assert ours.transaction_id == theirs.transaction_id
    assert ours.transaction.actor == "bob"
    with engine.connect() as connection:
        count = connection.exec_driver_sql("SELECT count(*) FROM versioning_transaction").scalar()
    assert count == 1


def _declare(options: dict[str, Any], name: str) -> None:
    class Local(DeclarativeBase):
        pass

    type(
        name,
        (Versioned, Local),
        {
            "__tablename__": name.lower(),
            "__versioned__": options,
            "__annotations__": {"id": Mapped[int], "name": Mapped[str]},
            "id": mapped_column(primary_key=True),
            "name": mapped_column(sa.String(20)),
        },
    )


def test_the_capture_option_is_checked_at_declaration() -> None:
    with pytest.raises(ConfigurationError, match=r"\['capture'\] must be one of"):
        _declare({"capture": "trigger"}, "BadCapture")
    with pytest.raises(ConfigurationError, match="has no SQL form"):
        _declare({"capture": "database", "mask": {"name": str.upper}}, "NoSQLMask")
    _declare({"capture": "database", "mask": {"name": masks.redact}}, "SQLMask")


def test_a_key_change_ends_the_old_keys_history_as_the_session_path_does(
    captured: sa.Engine,
) -> None:
    engine = captured
    with engine.begin() as connection:
        connection.execute(ITEMS.insert(), {"id": 1, **VALUES})
    with engine.begin() as connection:
        connection.execute(ITEMS.update().where(ITEMS.c.id == 1).values(id=2, name="moved"))
    with Session(engine) as session:
        twin = Twin(id=1, **VALUES)
        session.add(twin)
        session.commit()
        twin.id, twin.name = 2, "moved"
        session.commit()
    for pk in (1, 2):
        assert [v[:3] for v in _versions(engine, Item, pk)] == [
            v[:3] for v in _versions(engine, Twin, pk)
        ]
    assert [v[0] for v in _versions(engine, Item, 1)] == [Operation.INSERT, Operation.DELETE]


# --- digests, seals and verify -------------------------------------------------------------------


def _write_everything(engine: sa.Engine) -> None:
    """History of every kind: another client's raw SQL, ORM writes, and a transaction where
    both paths write."""
    with engine.begin() as connection:  # one statement (SQLite: one transaction row a statement)
        connection.execute(ITEMS.insert().values([{"id": i, **VALUES} for i in (1, 2)]))
    with audit_context(actor="alice"), Session(engine) as session:
        item = session.get_one(Item, 1)
        item.name, item.doc = "nut", {"z": 1, "a": [True, None]}
        session.add(Twin(id=1, **VALUES))
        session.commit()
        session.delete(session.get_one(Item, 2))
        session.commit()


def _verify(engine: sa.Engine) -> versioning.Report:
    with Session(engine) as session:
        return versioning.verify(session, metadata=Base.metadata)


def _seal(engine: sa.Engine) -> versioning.Seal | None:
    with Session(engine) as session:
        made = versioning.seal(session, metadata=Base.metadata)
        session.commit()
        return made


def test_database_captured_history_is_digested_at_the_next_seal(captured: sa.Engine) -> None:
    engine = captured
    _write_everything(engine)
    before = _verify(engine)
    assert before.ok, before.problems
    assert before.unsealed == 3 and before.versions_checked == 5
    made = _seal(engine)
    assert made is not None and made.count == 4  # 3 transactions, the mixed one in 2 segments
    after = _verify(engine)
    assert after.ok, after.problems
    assert (after.unsealed, after.versions_checked) == (0, 5)
    assert _seal(engine) is None  # nothing left to digest or link


def test_tampering_with_database_captured_history_is_found_once_sealed(
    captured: sa.Engine,
) -> None:
    engine = captured
    _write_everything(engine)
    _seal(engine)
    with engine.begin() as connection, tamper(connection):
        connection.exec_driver_sql(
            "UPDATE dbcap_items_history SET name = 'forged' "
            "WHERE id = 1 AND versioning_operation = 'update'"
        )
        version = connection.exec_driver_sql(
            "SELECT versioning_id FROM dbcap_items_history "
            "WHERE id = 1 AND versioning_operation = 'update'"
        ).scalar_one()
        tx = connection.exec_driver_sql("SELECT max(id) FROM versioning_transaction").scalar_one()
        connection.exec_driver_sql(
            "INSERT INTO dbcap_items_history (versioning_transaction_id, versioning_operation, id, "
            f"name) VALUES ({tx}, 'insert', 9, 'smuggled')"
        )
    report = _verify(engine)
    found = sorted((p.kind, p.table, p.version_id == version) for p in report.problems)
    assert found == [
        ("added", "dbcap_items_history", False),
        ("altered", "dbcap_items_history", True),
    ], report.problems


# --- stale triggers -------------------------------------------------------------------------------


@postgresql_only
def test_check_triggers_names_missing_and_stale_triggers_and_a_migration_refreshes_them(
    captured: sa.Engine,
) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    from versioning.migrations import install_capture_triggers
    from versioning.triggers import check_triggers, drop

    engine = captured
    assert check_triggers(engine, Base.metadata) == []
    assert SPEC is not None
    with engine.begin() as connection:
        drop(connection, SPEC)
    [missing] = check_triggers(engine, Base.metadata)
    assert (missing.table, missing.kind) == ("dbcap_items", "missing")
    # Installed for other columns (as before a migration added one): stale.
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION dbcap_items_versioning_capture() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$"
        )
        connection.exec_driver_sql(
            "COMMENT ON FUNCTION dbcap_items_versioning_capture() IS 'versioning capture 00'"
        )
        connection.exec_driver_sql(
            "CREATE CONSTRAINT TRIGGER versioning_capture AFTER INSERT OR UPDATE OR DELETE ON "
            "dbcap_items DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "
            "dbcap_items_versioning_capture()"
        )
    [stale] = check_triggers(engine, Base.metadata)
    assert (stale.table, stale.kind) == ("dbcap_items", "stale")
    with engine.begin() as connection:
        install_capture_triggers(Operations(MigrationContext.configure(connection)), Base.metadata)
    assert check_triggers(engine, Base.metadata) == []
    with engine.begin() as connection:
        connection.execute(ITEMS.insert(), {"id": 1, **VALUES})
    assert [v[0] for v in _versions(engine, Item)] == [Operation.INSERT]


def test_guard_writes_lets_raw_writes_to_a_database_captured_table_through(
    captured: sa.Engine,
) -> None:
    """Its triggers record them: nothing to guard against (the session-captured twin is)."""
    engine = sa.create_engine(captured.url)
    try:
        versioning.guard_writes(engine)
        with engine.begin() as connection:
            connection.execute(ITEMS.insert(), {"id": 1, **VALUES})
            connection.exec_driver_sql("UPDATE dbcap_items SET name = 'raw' WHERE id = 1")
            with pytest.raises(versioning.UncapturedWriteError):
                connection.execute(Twin.__table__.insert(), {"id": 1, **VALUES})
    finally:
        engine.dispose()
    assert [v[0] for v in _versions(captured, Item)] == [Operation.INSERT, Operation.UPDATE]


# --- the type matrix ------------------------------------------------------------------------------


class TypedItem(types.ItemColumns, Versioned, Base):
    __tablename__ = "dbcap_types"
    __versioned__ = {"capture": "database"}


@pytest.mark.parametrize(
    "first", [types.FIRST, types.FALSY, types.EMPTY], ids=["values", "falsy", "nulls"]
)
def test_the_type_matrix_reads_back_as_the_session_path_records_it(
    captured: sa.Engine, first: dict[str, Any]
) -> None:
    """Every column type, written by the ORM and recorded by the triggers, reads back with the
    column's own Python type and value: insert, an update of every column, a delete."""
    engine = captured
    with Session(engine) as session:
        session.add(TypedItem(**first))
        session.commit()
        item = session.get_one(TypedItem, 1)
        for key, value in types.data(types.SECOND).items():
            setattr(item, key, value)
        session.commit()
        session.delete(item)
        session.commit()
    with Session(engine) as session:
        insert, update, delete = history(session, TypedItem, 1)
    types.assert_values(insert.state, first, "insert state")
    changed = {k for k in types.data(types.SECOND) if first.get(k) != types.SECOND[k]}
    assert set(update.changes) == changed
    types.assert_values(types.olds(update), {k: first.get(k) for k in changed}, "old")
    types.assert_values(types.news(update), {k: types.SECOND[k] for k in changed}, "new")
    types.assert_values(update.state, types.SECOND, "update state")
    types.assert_values(delete.state, types.SECOND, "delete state")


# --- concurrency ---------------------------------------------------------------------------------


@postgresql_only
def test_many_writers_leave_each_records_history_whole_and_in_commit_order(
    captured: sa.Engine,
) -> None:
    """Threads, each a plain client, write a row of their own first and then shared rows (so a
    transaction that wrote first may commit last): every record's versions chain (each old value
    the previous new one), their transaction ids follow that order, and the last one is the
    live row."""
    engine = captured
    threads, rounds, shared = 6, 15, (1, 2, 3)
    own = [10 + i for i in range(threads)]
    with engine.begin() as connection:
        connection.execute(
            ITEMS.insert(), [{"id": i, "name": "0", "price": 0} for i in (*shared, *own)]
        )
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(worker: int) -> None:
        try:
            start.wait(30)
            for round_ in range(rounds):
                with engine.begin() as connection:
                    connection.exec_driver_sql("SET LOCAL lock_timeout = '20s'")
                    connection.execute(
                        ITEMS.update()
                        .where(ITEMS.c.id == own[worker])
                        .values(price=ITEMS.c.price + 1)
                    )
                    for record in shared[round_ % 2 :]:
                        connection.execute(
                            ITEMS.update()
                            .where(ITEMS.c.id == record)
                            .values(price=ITEMS.c.price + 1, name=f"w{worker}r{round_}")
                        )
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(120)
    assert errors == []
    with Session(engine) as session:
        for record in (*shared, *own):
            versions = history(session, Item, record)[1:]  # after the seeding insert
            prices = [v.state["price"] for v in versions]
            assert prices == [Decimal(n) for n in range(1, len(versions) + 1)], record
            assert all(
                v.changes["price"][0] == previous.state["price"]
                for previous, v in itertools.pairwise(versions)
            ), record
            ids = [v.transaction_id for v in versions]
            assert ids == sorted(ids) and len(set(ids)) == len(ids), record
            live = session.get_one(Item, record)
            assert live.price == versions[-1].state["price"]


@postgresql_only
def test_a_write_from_psql_is_recorded_with_the_databases_identity(captured: sa.Engine) -> None:
    import shutil
    import subprocess

    psql = shutil.which("psql")
    if psql is None:  # pragma: no cover - the PostgreSQL service comes with its client
        pytest.fail("psql is not installed (apt-get install postgresql-client)")
    url = captured.url
    subprocess.run(
        [
            psql,
            "-h",
            str(url.host),
            "-p",
            str(url.port or 5432),
            "-U",
            str(url.username),
            "-d",
            str(url.database),
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "INSERT INTO dbcap_items (id, name) VALUES (1, 'from psql')",
        ],
        check=True,
        capture_output=True,
        env={"PGPASSWORD": url.password or "", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    with Session(captured) as session:
        [version] = history(session, Item, 1)
    assert version.state["name"] == "from psql"
    assert version.transaction.actor == str(url.username)
    assert version.transaction.extra == {
        "database_user": str(url.username),
        "application_name": "psql",
    }


class Note(Versioned, Base):
    __tablename__ = "dbcap_notes"
    __versioned__ = {"capture": "database", "exclude": ["views"]}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(50))
    views: Mapped[int] = mapped_column(default=0)


def test_excluded_columns_are_left_out_and_their_changes_record_nothing(
    captured: sa.Engine,
) -> None:
    engine = captured
    with engine.begin() as connection:
        connection.execute(Note.__table__.insert(), {"id": 1, "text": "a", "views": 0})
        connection.exec_driver_sql("UPDATE dbcap_notes SET views = views + 1")
        connection.exec_driver_sql("UPDATE dbcap_notes SET text = 'b', views = 5")
    with Session(engine) as session:
        versions = history(session, Note, 1)
    assert [(v.operation, v.changes) for v in versions][1:] == [
        (Operation.UPDATE, {"text": ("a", "b")})
    ]
    assert versions[0].state == {"id": 1, "text": "a"}


class Member(Versioned, Base):
    __tablename__ = "dbcap_members"
    __versioned__ = {"capture": "database", "personal": ["email"]}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email: Mapped[str | None] = mapped_column(sa.String(80))
    plan: Mapped[str] = mapped_column(sa.String(10))


@pytest.mark.parametrize("sealed_first", [True, False], ids=["sealed", "unsealed"])
def test_personal_values_are_erased_and_the_proof_still_holds(
    captured: sa.Engine, sealed_first: bool
) -> None:
    engine = captured
    members = Member.__table__
    with engine.begin() as connection:
        connection.execute(members.insert(), {"id": 1, "email": "ada@example.com", "plan": "a"})
    with engine.begin() as connection:
        connection.execute(members.update().values(email="ada@example.org", plan="b"))
    if sealed_first:
        _seal(engine)
    with Session(engine) as session:
        versioning.erase(session, Member, 1, columns=["email"], reason="GDPR request")
        session.commit()
    _seal(engine)
    report = _verify(engine)
    assert report.ok, report.problems
    with engine.connect() as connection:
        text = "CHAR" if engine.dialect.name == "mariadb" else "TEXT"
        stored = connection.exec_driver_sql(
            f"SELECT email, CAST(versioning_changes AS {text}) FROM dbcap_members_history"
        ).all()
    assert all("ada@" not in str(row) for row in stored), stored
    with Session(engine) as session:
        versions = history(session, Member, 1)
    assert [v.state["email"] for v in versions] == [None, None]
    assert versions[1].changes["plan"] == ("a", "b")


def test_a_restore_is_recorded_by_the_triggers_with_its_reason(captured: sa.Engine) -> None:
    engine = captured
    with engine.begin() as connection:
        connection.execute(ITEMS.insert(), {"id": 1, **VALUES})
    with engine.begin() as connection:
        connection.execute(ITEMS.update().where(ITEMS.c.id == 1).values(CHANGED))
    with audit_context(actor="carol"), Session(engine) as session:
        first = history(session, Item, 1)[0]
        versioning.restore(session, first)
        session.commit()
    with Session(engine) as session:
        versions = history(session, Item, 1)
    last = versions[-1]
    assert last.operation is Operation.UPDATE
    # A masked value cannot be restored (history holds the mask's output): it stays as it is.
    assert {**last.state, "card": None} == {**versions[0].state, "card": None}
    assert last.transaction.actor == "carol"
    assert last.transaction.reason is not None and "restore" in last.transaction.reason


def test_seal_and_verify_from_the_registry_alone_know_the_tables_the_triggers_write(
    captured: sa.Engine,
) -> None:
    """The CLI's way (a connection, no models): the registry says which history tables the
    triggers write, so their rows get digests and verify."""
    engine = captured
    _write_everything(engine)
    with engine.begin() as connection:
        made = versioning.seal(connection)
    assert made is not None and made.count == 4
    with engine.connect() as connection:
        report = versioning.verify(connection)
    assert report.ok, report.problems
    assert (report.unsealed, report.versions_checked) == (0, 5)


def test_a_metadata_can_make_database_capture_the_default() -> None:
    from versioning.declaration import require_spec

    class Local(DeclarativeBase):
        pass

    Local.metadata.info["versioning_capture"] = "database"

    class Plain(Versioned, Local):
        __tablename__ = "dbcap_default_plain"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Kept(Versioned, Local):
        __tablename__ = "dbcap_default_kept"
        __versioned__ = {"capture": "session"}
        id: Mapped[int] = mapped_column(primary_key=True)

    assert require_spec(Plain).capture == "database"
    assert require_spec(Kept).capture == "session"

    class Wrong(DeclarativeBase):
        pass

    Wrong.metadata.info["versioning_capture"] = "trigger"
    with pytest.raises(ConfigurationError, match="must be one of"):

        class Bad(Versioned, Wrong):
            __tablename__ = "dbcap_default_bad"
            id: Mapped[int] = mapped_column(primary_key=True)


@pytest.mark.backends("sqlite")
def test_another_clients_statement_on_sqlite_gets_a_transaction_row_of_its_own(
    captured: sa.Engine,
) -> None:
    """SQLite knows no transaction id and nothing of its clients: a write from outside the
    application gets a transaction row per statement, saying so."""
    engine = captured
    with engine.begin() as connection:
        connection.execute(ITEMS.insert().values([{"id": 1, **VALUES}, {"id": 2, **VALUES}]))
    with Session(engine) as session:
        versions = [v for pk in (1, 2) for v in history(session, Item, pk)]
    assert {v.transaction_id for v in versions} == {versions[0].transaction_id}
    assert versions[0].transaction.actor == "sqlite"
    assert versions[0].transaction.extra == {"client": "sqlite"}


def test_a_savepoint_rolled_back_in_the_application_leaves_nothing(captured: sa.Engine) -> None:
    engine = captured
    with audit_context(actor="dana"), Session(engine) as session:
        with session.begin_nested() as savepoint:
            session.add(Item(id=1, **VALUES))
            session.flush()
            savepoint.rollback()
        session.add(Item(id=2, **VALUES))
        session.commit()
    with Session(engine) as session:
        assert history(session, Item, 1) == []
        [version] = history(session, Item, 2)
    assert version.transaction.actor == "dana"
    with engine.connect() as connection:
        count = connection.exec_driver_sql("SELECT count(*) FROM versioning_transaction").scalar()
    assert count == 1


@pytest.mark.backends("sqlite")
def test_check_triggers_on_sqlite(captured: sa.Engine) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    from versioning.migrations import install_capture_triggers
    from versioning.triggers import check_triggers, drop

    engine = captured
    assert check_triggers(engine, Base.metadata) == []
    assert SPEC is not None
    with engine.begin() as connection:
        drop(connection, SPEC)
    [missing] = check_triggers(engine, Base.metadata)
    assert (missing.table, missing.kind) == ("dbcap_items", "missing")
    with engine.begin() as connection:  # as installed for a model of other columns
        for operation in ("INSERT", "UPDATE", "DELETE"):
            connection.exec_driver_sql(
                f"CREATE TRIGGER dbcap_items_versioning_capture_{operation.lower()} AFTER "
                f"{operation} ON dbcap_items FOR EACH ROW BEGIN SELECT 'versioning capture 00'; END"
            )
    [stale] = check_triggers(engine, Base.metadata)
    assert (stale.table, stale.kind) == ("dbcap_items", "stale")
    with engine.begin() as connection:
        install_capture_triggers(Operations(MigrationContext.configure(connection)), Base.metadata)
    assert check_triggers(engine, Base.metadata) == []
    # One of the three dropped: missing; one of them replaced: stale.
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER dbcap_items_versioning_capture_delete")
    [missing] = check_triggers(engine, Base.metadata)
    assert (missing.table, missing.kind) == ("dbcap_items", "missing")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER dbcap_items_versioning_capture_delete AFTER DELETE ON dbcap_items "
            "FOR EACH ROW BEGIN SELECT 'versioning capture 00'; END"
        )
    [stale] = check_triggers(engine, Base.metadata)
    assert (stale.table, stale.kind) == ("dbcap_items", "stale")


# --- MariaDB: what its triggers cannot know, and commit order ----------------------------------

mariadb_only = pytest.mark.backends("mariadb")


@mariadb_only
def test_another_clients_statement_on_mariadb_gets_a_transaction_row_of_its_own(
    captured: sa.Engine,
) -> None:
    """A MariaDB trigger cannot see its transaction's identity: a write from outside the
    application gets a transaction row per statement, with the database user and client."""
    engine = captured
    with engine.begin() as connection:
        connection.execute(ITEMS.insert().values([{"id": 1, **VALUES}, {"id": 2, **VALUES}]))
        connection.execute(ITEMS.update().where(ITEMS.c.id == 1).values(name="fixed"))
    with Session(engine) as session:
        first, second = (history(session, Item, pk) for pk in (1, 2))
    assert first[0].transaction_id == second[0].transaction_id  # one statement
    assert first[1].transaction_id > first[0].transaction_id  # the next statement
    transaction = first[0].transaction
    assert transaction.actor == "root"
    assert transaction.source_ip in (None, "127.0.0.1", "::1")
    assert transaction.extra is not None
    assert transaction.extra["client"] == "mariadb"
    assert transaction.extra["database_user"].startswith("root@")
    assert first[1].changes == {"name": ("bolt", "fixed")}


@mariadb_only
def test_the_applications_context_is_not_left_on_its_pooled_connection(
    create_tables: Tables,
) -> None:
    """After the application's transaction, a write from the same pooled connection outside a
    session is another client's: the application's context and transaction row are not reused."""
    engine = create_tables(Base.metadata)
    single = sa.create_engine(engine.url, poolclass=sa.pool.StaticPool)
    try:
        with audit_context(actor="dana"), Session(single) as session:
            session.add(Item(id=1, **VALUES))
            session.commit()
        with single.begin() as connection:
            connection.execute(ITEMS.update().where(ITEMS.c.id == 1).values(name="raw"))
        with audit_context(actor="eve"), Session(single) as session:
            session.get_one(Item, 1).name = "eve's"
            session.commit()
        with Session(single) as session:
            versions = history(session, Item, 1)
        assert [v.transaction.actor for v in versions] == ["dana", "root", "eve"]
        assert len({v.transaction_id for v in versions}) == 3
    finally:
        single.dispose()


@mariadb_only
def test_a_write_that_would_break_commit_order_is_refused_and_a_retry_is_recorded(
    captured: sa.Engine,
) -> None:
    """MariaDB's triggers fire at each write: an application transaction that wrote first (and
    so got the smaller transaction id) and then changes a record another transaction changed
    and committed in the meantime is refused at its commit, nothing of it committed; its retry
    is recorded in commit order."""
    engine = captured
    with engine.begin() as connection:
        connection.execute(ITEMS.insert(), [{"id": i, **VALUES} for i in (1, 2)])
    late = Session(engine)
    try:
        with audit_context(actor="late"):
            late.get_one(Item, 2).name = "late first write"
            late.flush()
            with Session(engine) as early:
                early.get_one(Item, 1).name = "early"
                early.commit()
            late.get_one(Item, 1).name = "late"
            late.flush()
            with pytest.raises(versioning.CommitOrderError, match=r"dbcap_items.*[Rr]etry"):
                late.commit()
    finally:
        late.rollback()
        late.close()
    with audit_context(actor="late"), Session(engine) as retry:
        retry.get_one(Item, 2).name = "late first write"
        retry.flush()
        retry.get_one(Item, 1).name = "late"
        retry.commit()
    with Session(engine) as session:
        versions = history(session, Item, 1)
        assert [v.changes["name"][1] for v in versions[1:]] == ["early", "late"]
        assert versions[1].transaction_id < versions[2].transaction_id
        assert versions[2].transaction.actor == "late"
        assert [v.state["name"] for v in history(session, Item, 2)] == [
            "bolt",
            "late first write",
        ]


@mariadb_only
def test_many_writers_on_mariadb_are_recorded_in_commit_order_or_refused_and_retried(
    captured: sa.Engine,
) -> None:
    """Application transactions (one transaction row each, written at their first write) change
    a row of their own first and then shared rows; one refused for commit order is rolled back
    and retried: every record's versions chain, their transaction ids follow that order, and
    each transaction's versions carry its worker's context."""
    engine = captured
    threads, rounds, shared = 4, 10, (1, 2, 3)
    own = [10 + i for i in range(threads)]
    with engine.begin() as connection:
        connection.execute(
            ITEMS.insert(), [{"id": i, "name": "0", "price": 0} for i in (*shared, *own)]
        )
    errors: list[BaseException] = []
    refused = [0]
    start = threading.Barrier(threads)

    def work(worker: int) -> None:
        try:
            start.wait(30)
            for round_ in range(rounds):
                for _ in range(50):
                    try:
                        with audit_context(actor=f"w{worker}"), Session(engine) as session:
                            session.execute(
                                ITEMS.update()
                                .where(ITEMS.c.id == own[worker])
                                .values(price=ITEMS.c.price + 1)
                            )
                            for record in shared[round_ % 2 :]:
                                session.execute(
                                    ITEMS.update()
                                    .where(ITEMS.c.id == record)
                                    .values(price=ITEMS.c.price + 1, name=f"w{worker}r{round_}")
                                )
                            session.commit()
                        break
                    except versioning.CommitOrderError:
                        refused[0] += 1
                    except sa.exc.OperationalError as error:  # a deadlock: retried too
                        if "Deadlock" not in str(error):
                            raise
                else:  # pragma: no cover - reported below
                    raise AssertionError("no retry went through")
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(120)
    print("ERRS", [str(e)[:600] for e in errors])
    assert errors == []
    with Session(engine) as session:
        for record in (*shared, *own):
            versions = history(session, Item, record)[1:]
            prices = [v.state["price"] for v in versions]
            assert prices == [Decimal(n) for n in range(1, len(versions) + 1)], record
            ids = [v.transaction_id for v in versions]
            assert ids == sorted(ids) and len(set(ids)) == len(ids), record
            assert session.get_one(Item, record).price == versions[-1].state["price"]
            if record in own:
                assert {v.transaction.actor for v in versions} == {f"w{own.index(record)}"}


@mariadb_only
def test_check_triggers_on_mariadb(captured: sa.Engine) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    from versioning.migrations import install_capture_triggers
    from versioning.triggers import check_triggers, drop

    engine = captured
    assert check_triggers(engine, Base.metadata) == []
    assert SPEC is not None
    with engine.begin() as connection:
        drop(connection, SPEC)
    [missing] = check_triggers(engine, Base.metadata)
    assert (missing.table, missing.kind) == ("dbcap_items", "missing")
    with engine.begin() as connection:  # as installed for a model of other columns
        for operation in ("INSERT", "UPDATE", "DELETE"):
            connection.exec_driver_sql(
                f"CREATE TRIGGER dbcap_items_versioning_capture_{operation.lower()} "
                f"AFTER {operation} ON dbcap_items FOR EACH ROW BEGIN END"
            )
    [stale] = check_triggers(engine, Base.metadata)
    assert (stale.table, stale.kind) == ("dbcap_items", "stale")
    with engine.begin() as connection:
        install_capture_triggers(Operations(MigrationContext.configure(connection)), Base.metadata)
    assert check_triggers(engine, Base.metadata) == []


@postgresql_only
def test_truncate_of_a_captured_table_is_refused_on_postgresql(captured: sa.Engine) -> None:
    """TRUNCATE fires no row trigger: it is refused, naming the table and what to use, and
    nothing is lost; DELETE is recorded."""
    engine = captured
    with engine.begin() as connection:
        connection.execute(ITEMS.insert(), [{"id": i, **VALUES} for i in (1, 2)])
    refused = pytest.raises(versioning.UncapturedWriteError, match="DELETE FROM dbcap_items")
    with refused, engine.begin() as connection:
        connection.exec_driver_sql("TRUNCATE dbcap_items")
    with engine.begin() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(ITEMS)).scalar() == 2
        connection.exec_driver_sql("DELETE FROM dbcap_items")
    with Session(engine) as session:
        assert [v.operation for v in history(session, Item, 2)] == [
            Operation.INSERT,
            Operation.DELETE,
        ]


def test_a_write_from_a_later_before_commit_hook_carries_the_applications_context(
    captured: sa.Engine,
) -> None:
    """A ``before_commit`` hook registered after the library's that writes a captured model
    (an outbox, say) is still the application's transaction: its history carries the context
    and shares the transaction row — also when nothing else of the transaction is captured by
    the database."""
    engine = captured
    session = Session(engine)
    outbox: list[Item] = []

    @sa.event.listens_for(session, "before_commit")
    def _outbox(hooked: Session) -> None:
        if outbox:
            hooked.add_all(outbox)
            outbox.clear()
            hooked.flush()

    try:
        with audit_context(actor="dana"):
            session.add(Item(id=1, **VALUES))
            outbox.append(Item(id=2, **VALUES))
            session.commit()
        with audit_context(actor="erin"):  # only the hook writes a captured model
            session.add(Twin(id=3, **VALUES))
            outbox.append(Item(id=4, **VALUES))
            session.commit()
    finally:
        session.close()
    with Session(engine) as reader:
        first, second, fourth = ([v] for pk in (1, 2, 4) for [v] in [history(reader, Item, pk)])
        [twin] = history(reader, Twin, 3)
    assert first[0].transaction.actor == second[0].transaction.actor == "dana"
    assert first[0].transaction_id == second[0].transaction_id
    assert fourth[0].transaction.actor == "erin"
    assert fourth[0].transaction_id == twin.transaction_id


@mariadb_only
def test_a_write_from_the_mariadb_client_is_recorded_with_the_databases_identity(
    captured: sa.Engine,
) -> None:
    import shutil
    import subprocess

    client = shutil.which("mariadb")
    if client is None:  # pragma: no cover - the MariaDB service comes with its client
        pytest.fail("the mariadb client is not installed (apt-get install mariadb-client)")
    url = captured.url
    subprocess.run(
        [
            client,
            "-h",
            str(url.host),
            "-P",
            str(url.port or 3306),
            "-u",
            str(url.username),
            str(url.database),
            "-e",
            "INSERT INTO dbcap_items (id, name) VALUES (1, 'from the client'); "
            "UPDATE dbcap_items SET name = 'fixed' WHERE id = 1",
        ],
        check=True,
        capture_output=True,
        env={"MYSQL_PWD": url.password or "", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    with Session(captured) as session:
        inserted, updated = history(session, Item, 1)
    assert inserted.state["name"] == "from the client"
    assert updated.changes == {"name": ("from the client", "fixed")}
    for version in (inserted, updated):
        assert version.transaction.actor == str(url.username)
        assert version.transaction.extra is not None
        assert version.transaction.extra["client"] == "mariadb"
    # Two statements of the client (each its own transaction here): two transaction rows.
    assert inserted.transaction_id < updated.transaction_id


@pytest.mark.backends("sqlite")
def test_a_write_from_another_process_on_sqlite_is_recorded(captured: sa.Engine) -> None:
    """A plain sqlite3 connection in another process (no SQLAlchemy, no versioning)."""
    import subprocess
    import sys

    database = captured.url.database
    assert database is not None
    script = (
        "import sqlite3, sys\n"
        "connection = sqlite3.connect(sys.argv[1])\n"
        "with connection:\n"
        "    connection.execute(\"INSERT INTO dbcap_items (id, name) VALUES (1, 'elsewhere')\")\n"
        "connection.close()\n"
    )
    subprocess.run([sys.executable, "-c", script, database], check=True, timeout=60)
    with Session(captured) as session:
        [version] = history(session, Item, 1)
    assert version.state["name"] == "elsewhere"
    assert version.transaction.actor == "sqlite"
    assert version.transaction.extra == {"client": "sqlite"}
