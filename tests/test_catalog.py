"""The registry of history tables: what a tool reads from the database alone (issue 12).

``metadata.create_all()`` and ``versioning.migrations.write_catalog`` write it; ``catalog.load``
reads it back with no model imported. The catalog loaded must describe the same tables as the
models do, read the same values for every type of the type matrix (tests/test_types.py), and let
``versioning.verify`` recompute the same hashes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import test_stored_values as stored_values
import test_types as types_matrix
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import versioning
from versioning import CatalogError, Versioned, catalog, erase, masks
from versioning.canonical import row_hash
from versioning.personal import committed_view
from versioning.schema import VERSION_ID
from versioning.type_descriptions import describe, is_exact, rebuild

from helpers import another_schema, tamper

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]


class Base(DeclarativeBase):
    pass


labels = sa.Table(
    "cat_note_labels",
    Base.metadata,
    sa.Column("note_id", sa.ForeignKey("cat_notes.id"), primary_key=True),
    sa.Column("label_id", sa.ForeignKey("cat_labels.id"), primary_key=True),
)


class Account(Versioned, Base):
    """Masked and personal columns; a joined-table subclass adds columns to its history."""

    __tablename__ = "cat_accounts"
    __versioned__ = {"mask": {"card": masks.last4}, "personal": ["email"]}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(20))
    email: Mapped[str | None] = mapped_column("email_address", sa.String(100))
    card: Mapped[str | None] = mapped_column(sa.String(40))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "account"}


class Company(Account):
    __tablename__ = "cat_companies"
    id: Mapped[int] = mapped_column(sa.ForeignKey("cat_accounts.id"), primary_key=True)
    vat: Mapped[str | None] = mapped_column(sa.String(20))
    __mapper_args__ = {"polymorphic_identity": "company"}


class Note(Versioned, Base):
    __tablename__ = "cat_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(sa.Text)
    labels: Mapped[list[Label]] = relationship(secondary=labels)


class Label(Versioned, Base):
    __tablename__ = "cat_labels"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))


def _without_model(description: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in description.items() if key != "model"}


def assert_same_catalog(
    loaded: catalog.Catalog, in_process: catalog.Catalog, dialect: sa.Dialect
) -> None:
    """The loaded catalog describes every table as the models do (types included)."""
    assert [e.name for e in loaded.tables] == [e.name for e in in_process.tables]
    for got, want in zip(loaded.tables, in_process.tables, strict=True):
        assert got.model is None
        for field in ("live", "primary_key", "columns", "masked", "personal", "kind"):
            assert getattr(got, field) == getattr(want, field), (want.name, field)
        assert dict(got.attributes) == dict(want.attributes), want.name
        assert list(got.history.c.keys()) == list(want.history.c.keys()), want.name
        assert _without_model(catalog.describe_entry(got, dialect)) == _without_model(
            catalog.describe_entry(want, dialect)
        )
        assert got.inexact == frozenset(), want.name
    assert loaded.transaction.fullname == in_process.transaction.fullname


def _as_stored(value: Any) -> Any:
    """A value read through the models, with the application's enum members as the stored
    names (what a catalog without the application reads)."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, list):
        return [_as_stored(item) for item in value]
    return value


def assert_same_values(connection: sa.Connection, loaded: catalog.Catalog, models: Any) -> int:
    """Every history row reads the same through the loaded catalog as through the models, and
    hashes the same; the number of rows compared."""
    compared = 0
    for entry in loaded.tables:
        model_table = models.entry(entry.name).history
        order = [model_table.c[VERSION_ID]]
        want_rows = connection.execute(sa.select(model_table).order_by(*order)).mappings().all()
        got_rows = (
            connection.execute(sa.select(entry.history).order_by(entry.history.c[VERSION_ID]))
            .mappings()
            .all()
        )
        assert len(got_rows) == len(want_rows)
        for got, want in zip(got_rows, want_rows, strict=True):
            for name in entry.columns:
                expected = _as_stored(want[name])
                assert got[name] == expected, (entry.name, name, got[name], expected)
                assert type(got[name]) is type(expected), (entry.name, name, got[name])
            assert row_hash(entry.history, committed_view(entry.history, got)) == row_hash(
                model_table, committed_view(model_table, want)
            )
            compared += 1
    return compared


def test_the_type_matrix_reads_and_hashes_the_same_from_the_registry(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(types_matrix.Base.metadata)
    for values in (
        types_matrix.FIRST,
        types_matrix.SECOND,
        types_matrix.FALSY,
        types_matrix.EMPTY,
    ):
        types_matrix.write(sessions(), types_matrix.full(values))
    with sessions() as session:
        session.add(types_matrix.Event(id=1, happened=types_matrix.FIRST["created"]))
        session.delete(session.get(types_matrix.Item, 1))
        session.commit()
        in_process = catalog.from_session(session, metadata=types_matrix.Base.metadata)
    with engine.connect() as connection:
        loaded = catalog.load(connection)
        assert_same_catalog(loaded, in_process, connection.dialect)
        assert assert_same_values(connection, loaded, in_process) == 6
        report = versioning.verify(connection)
    assert report.ok, report.problems
    assert report.versions_checked == 6


@pytest.mark.backends("postgresql")
def test_arrays_read_and_hash_the_same_from_the_registry(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(stored_values.ArrayBase.metadata)
    with sessions() as session:
        session.add(stored_values.Arrays(id=1, **stored_values.ARRAYS_FIRST))
        session.commit()
        obj = session.get(stored_values.Arrays, 1)
        assert obj is not None
        for key, value in stored_values.ARRAYS_SECOND.items():
            setattr(obj, key, value)
        session.commit()
        in_process = catalog.from_session(session, metadata=stored_values.ArrayBase.metadata)
    with engine.connect() as connection:
        loaded = catalog.load(connection)
        assert_same_catalog(loaded, in_process, connection.dialect)
        assert assert_same_values(connection, loaded, in_process) == 2
        assert versioning.verify(connection).ok


def _seed(sessions: Sessions) -> None:
    with sessions() as session:
        session.add(Account(id=1, email="ann@example.com", card="4111111111111111"))
        session.add(Company(id=2, email="co@example.com", card="5500000000000004", vat="DE1"))
        label = Label(id=1, name="urgent")
        session.add(Note(id=1, body="first", labels=[label]))
        session.commit()
        company = session.get(Company, 2)
        assert company is not None
        company.vat = "DE2"
        session.commit()


def test_verify_from_the_registry_passes_on_clean_data_and_names_a_tampered_row(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    _seed(sessions)
    with sessions() as session:
        versioning.seal(session)
        session.commit()
        # Personal values erased: the proof still holds.
        erase(session, Account, 1, columns=["email"], reason="asked to")
        session.commit()
        in_process = catalog.from_session(session)
    with engine.connect() as connection:
        loaded = catalog.load(connection)
        assert_same_catalog(loaded, in_process, connection.dialect)
        assert {e.kind for e in loaded.tables} == {"model", "link"}
        accounts = loaded.entry("cat_accounts")
        assert accounts.masked == {"card"} and accounts.personal == {"email_address"}
        assert accounts.attributes["email"] == "email_address"
        assert loaded.entry("cat_note_labels").primary_key == ("note_id", "label_id")
        assert assert_same_values(connection, loaded, in_process) == 6
        clean = versioning.verify(connection)
        assert clean.ok, clean.problems
        assert clean.versions_checked == 6
        with sessions() as session:
            assert versioning.verify(session).versions_checked == 6
        history = loaded.entry("cat_accounts").history
        update = connection.execute(
            sa.select(history.c[VERSION_ID]).where(history.c.vat == "DE2")
        ).scalar_one()
        connection.rollback()
    with engine.begin() as connection, tamper(connection):
        connection.execute(history.update().where(history.c[VERSION_ID] == update).values(vat="X"))
    with engine.connect() as connection:
        report = versioning.verify(connection)
    assert [(p.kind, p.table, p.version_id) for p in report.problems] == [
        ("altered", "cat_accounts_history", update)
    ]


def test_seal_and_digest_from_a_connection(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    _seed(sessions)
    with engine.begin() as connection:
        made = versioning.seal(connection)
        assert made is not None
        assert versioning.seal(connection) is None  # nothing left to seal
        newest = versioning.digest(connection)
    assert newest is not None and newest.hash == made.hash
    with sessions() as session:
        from_models = versioning.digest(session)
        session.rollback()
    assert from_models == newest
    with engine.connect() as connection:
        assert versioning.verify(connection, [newest]).ok


def test_a_database_without_the_registry_says_what_to_run(engine: sa.Engine) -> None:
    with engine.connect() as connection, pytest.raises(CatalogError) as raised:
        catalog.load(connection)
    message = str(raised.value)
    assert "versioning_catalog" in message
    assert "create_all" in message and "write_catalog" in message
    with engine.connect() as connection, pytest.raises(CatalogError):
        versioning.verify(connection)


def test_the_migration_helper_writes_the_registry(
    create_tables: Tables, sessions: Sessions
) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    from versioning.migrations import write_catalog

    engine = create_tables(Base.metadata)
    with engine.connect() as connection:
        expected = catalog.load(connection)
        connection.rollback()
    registry = expected.registry
    with engine.begin() as connection:
        connection.execute(registry.delete())
        connection.execute(  # a history table the database no longer has: its row goes
            registry.insert().values(
                history_table="gone_history", live_table="gone", kind="model", description={}
            )
        )
    with engine.begin() as connection:
        assert catalog.load(connection).tables == ()
        context = MigrationContext.configure(connection, opts={"target_metadata": Base.metadata})
        write_catalog(Operations(context))
        write_catalog(Operations(context))  # again: harmless
    with engine.connect() as connection:
        assert_same_catalog(catalog.load(connection), expected, connection.dialect)
        listed = connection.execute(sa.select(registry.c.history_table)).scalars().all()
    assert "gone_history" not in listed
    assert len(listed) == len(expected.tables)


def test_an_entry_is_found_by_history_or_live_name_and_an_unknown_one_lists_them() -> None:
    found = catalog.from_metadata(Base.metadata)
    assert found.entry("cat_accounts") is found.entry("cat_accounts_history")
    assert found.entry("cat_accounts").model is Account
    with pytest.raises(CatalogError) as raised:
        found.entry("invoices")
    assert "'invoices'" in str(raised.value)
    assert "cat_accounts, cat_labels, cat_note_labels, cat_notes" in str(raised.value)


# --- type descriptions, without a database ---------------------------------------------------


class _Stores(sa.types.TypeDecorator[str]):
    """A decorator whose storage depends on the dialect: not hashable from what it stores."""

    impl = sa.String(10)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        return dialect.type_descriptor(sa.Text())


class _Lower(sa.types.TypeDecorator[str]):
    impl = sa.String(10)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else str(value).lower()


DIALECTS = [sqlite.dialect(), postgresql.dialect(), mysql.dialect(is_mariadb=True)]


CASES = [(column, dialect) for dialect in DIALECTS for column in types_matrix.Item.__table__.c]
CASES += [(column, postgresql.dialect()) for column in stored_values.Arrays.__table__.c]


@pytest.mark.parametrize(("column", "dialect"), CASES, ids=lambda x: getattr(x, "name", None))
def test_a_description_rebuilds_a_type_that_describes_the_same(
    column: sa.Column[Any], dialect: sa.Dialect
) -> None:
    description = describe(column.type, dialect)
    assert describe(rebuild(description), dialect) == description
    assert is_exact(description)


def test_a_custom_type_is_read_as_stored_and_marked_when_it_cannot_hash_the_same() -> None:
    dialect = postgresql.dialect()
    lower = describe(_Lower(), dialect)
    assert is_exact(lower) and isinstance(rebuild(lower), sa.String)
    stores = describe(_Stores(), dialect)
    assert not is_exact(stores) and isinstance(rebuild(stores), sa.String)


def test_a_history_table_in_another_schema_is_loaded_and_verified(
    engine: sa.Engine, tmp_path: Path
) -> None:
    class Local(DeclarativeBase):
        pass

    class Remote(Versioned, Local):
        __tablename__ = "cat_remote"
        __table_args__ = {"schema": "cat_other"}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(20))

    with another_schema(engine, tmp_path, "cat_other") as bound:
        Local.metadata.create_all(bound)
        try:
            with Session(bound) as session:
                session.add(Remote(id=1, name="x"))
                session.commit()
            with bound.connect() as connection:
                found = catalog.load(connection)
                entry = found.entry("cat_other.cat_remote")
                assert entry is found.entry("cat_remote_history")
                assert (entry.name, entry.history.schema) == (
                    "cat_other.cat_remote_history",
                    "cat_other",
                )
                report = versioning.verify(connection)
            assert report.ok and report.versions_checked == 1
        finally:
            Local.metadata.drop_all(bound)
