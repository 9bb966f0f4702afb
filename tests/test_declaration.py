"""Declaring a versioned model: the history and transaction tables, options and their errors."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    declarative_base,
    mapped_column,
    relationship,
)

import versioning
from versioning import (
    TRANSACTION_TABLE,
    ConfigurationError,
    Operation,
    Versioned,
    VersioningError,
    audit_context,
    history,
    history_table,
    masks,
)
from versioning.schema import (
    CATALOG_TABLE,
    DIGEST_TABLE,
    EVENT_TABLE,
    HORIZON_TABLE,
    SEAL_ENTRY_TABLE,
    SEAL_TABLE,
)


class Status(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


Timestamp = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mariadb")


class Base(DeclarativeBase):
    pass


class Customer(Base):  # not versioned: live tables may reference it, history tables must not
    __tablename__ = "decl_customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


class Order(Versioned, Base):
    __tablename__ = "decl_orders"
    __table_args__ = (sa.UniqueConstraint("customer_id", "code", name="uq_decl_orders_code"),)
    __versioned__ = {"exclude": ["view_count"], "mask": {"card_number": masks.last4}}

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(20), unique=True, index=True)
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("decl_customers.id"))
    customer: Mapped[Customer] = relationship()
    status: Mapped[Status] = mapped_column(sa.Enum(Status, name="decl_order_status"))
    total: Mapped[decimal.Decimal] = mapped_column(sa.Numeric(10, 2))
    quantity: Mapped[int] = mapped_column(sa.CheckConstraint("quantity >= 0"), default=1)
    big: Mapped[int | None] = mapped_column(sa.BigInteger)
    ratio: Mapped[float | None] = mapped_column(sa.Float)
    paid: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    note: Mapped[str | None] = mapped_column(sa.Text)
    due: Mapped[dt.date | None] = mapped_column(sa.Date)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    token: Mapped[uuid.UUID] = mapped_column(sa.Uuid, default=uuid.uuid4)
    payload: Mapped[Any | None] = mapped_column(sa.JSON)
    blob: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    card_number: Mapped[str | None] = mapped_column(sa.String(19))
    view_count: Mapped[int] = mapped_column(default=0)


class Shipment(Versioned, Base):
    __tablename__ = "decl_shipments"
    __versioned__ = {"table_name": "decl_shipment_audit"}

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("decl_orders.id"))
    carrier: Mapped[str] = mapped_column("carrier_name", sa.String(30))


LIVE = {"decl_customers", "decl_orders", "decl_shipments"}
#: Beside the transaction table: the digests and seals (docs/integrity.md), the registry, the
#: events and the horizons of prunes (docs/auditing.md).
INTEGRITY = {DIGEST_TABLE, SEAL_TABLE, SEAL_ENTRY_TABLE, CATALOG_TABLE, EVENT_TABLE, HORIZON_TABLE}
GENERATED = {"decl_orders_history", "decl_shipment_audit", TRANSACTION_TABLE} | INTEGRITY


# --- tables added at declaration ---------------------------------------------------------------


def test_declaring_adds_history_and_transaction_tables() -> None:
    assert set(Base.metadata.tables) == LIVE | GENERATED
    assert history_table(Order) is Base.metadata.tables["decl_orders_history"]
    assert history_table(Shipment) is Base.metadata.tables["decl_shipment_audit"]
    assert "decl_shipments_history" not in Base.metadata.tables
    assert versioning.transaction_table(Base.metadata) is Base.metadata.tables[TRANSACTION_TABLE]


def test_tables_exist_right_after_the_class_statement_without_configure() -> None:
    class FreshBase(DeclarativeBase):
        pass

    class Author(Versioned, FreshBase):
        __tablename__ = "authors"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        books: Mapped[list[Book]] = relationship(back_populates="author")

    # Book is not declared yet: mappers cannot have been configured, history must already exist
    assert not sa.inspect(Author).configured
    assert set(FreshBase.metadata.tables) == {
        "authors",
        "authors_history",
        TRANSACTION_TABLE,
        *INTEGRITY,
    }

    class Book(Versioned, FreshBase):
        __tablename__ = "books"
        id: Mapped[int] = mapped_column(primary_key=True)
        author_id: Mapped[int] = mapped_column(sa.ForeignKey("authors.id"))
        author: Mapped[Author] = relationship(back_populates="books")

    assert set(FreshBase.metadata.tables) == {
        "authors",
        "authors_history",
        "books",
        "books_history",
        TRANSACTION_TABLE,
        *INTEGRITY,
    }
    # one transaction table per MetaData, referenced by every history table
    transactions = FreshBase.metadata.tables[TRANSACTION_TABLE]
    for model in (Author, Book):
        assert {fk.column for fk in history_table(model).foreign_keys} == {transactions.c.id}


def test_declaring_a_versioned_model_does_not_configure_other_mappers() -> None:
    # the usual forward reference: Writer names Article, declared later; a versioned model
    # declared in between must not force the mappers to configure before Article exists
    class FreshBase(DeclarativeBase):
        pass

    class Writer(FreshBase):
        __tablename__ = "writers"
        id: Mapped[int] = mapped_column(primary_key=True)
        articles: Mapped[list[Article]] = relationship(back_populates="writer")

    class Tag(Versioned, FreshBase):
        __tablename__ = "tags"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Article(Versioned, FreshBase):
        __tablename__ = "articles"
        id: Mapped[int] = mapped_column(primary_key=True)
        writer_id: Mapped[int] = mapped_column(sa.ForeignKey("writers.id"))
        writer: Mapped[Writer] = relationship(back_populates="articles")

    assert not sa.inspect(Writer).configured
    assert "tags_history" in FreshBase.metadata.tables
    assert "articles_history" in FreshBase.metadata.tables
    FreshBase.registry.configure()
    assert sa.inspect(Writer).attrs.articles.mapper.class_ is Article
    assert "writer" not in history_table(Article).c


def test_each_metadata_gets_its_own_transaction_table() -> None:
    class OtherBase(DeclarativeBase):
        pass

    class Thing(Versioned, OtherBase):
        __tablename__ = "decl_orders"  # same live name, different MetaData: no clash
        id: Mapped[int] = mapped_column(primary_key=True)

    assert history_table(Thing) is OtherBase.metadata.tables["decl_orders_history"]
    assert history_table(Thing) is not history_table(Order)
    other_tx = OtherBase.metadata.tables[TRANSACTION_TABLE]
    assert other_tx is not Base.metadata.tables[TRANSACTION_TABLE]
    assert {fk.column.table for fk in history_table(Thing).foreign_keys} == {other_tx}


def test_history_table_of_unversioned_model_raises() -> None:
    with pytest.raises(VersioningError, match="Customer"):
        history_table(Customer)


def test_history_columns_and_order() -> None:
    table = history_table(Order)
    assert [c.name for c in table.c] == [
        "versioning_id",
        "versioning_transaction_id",
        "versioning_operation",
        "id",
        "code",
        "customer_id",
        "status",
        "total",
        "quantity",
        "big",
        "ratio",
        "paid",
        "note",
        "due",
        "created_at",
        "token",
        "payload",
        "blob",
        "card_number",
        "versioning_changes",
    ]
    assert [c.name for c in table.primary_key] == ["versioning_id"]
    assert not table.c.versioning_transaction_id.nullable
    assert not table.c.versioning_operation.nullable
    # snapshot columns use the column name, not the attribute key
    assert [c.name for c in history_table(Shipment).c][3:6] == ["id", "order_id", "carrier_name"]


def test_history_table_has_no_unique_constraints_and_no_foreign_keys_to_live_tables() -> None:
    for table in (history_table(Order), history_table(Shipment)):
        assert not any(isinstance(c, sa.UniqueConstraint) for c in table.constraints)
        assert not any(isinstance(c, sa.CheckConstraint) for c in table.constraints)
        assert not any(index.unique for index in table.indexes)
        assert not any(column.unique for column in table.c)
        assert {fk.column.table.name for fk in table.foreign_keys} == {TRANSACTION_TABLE}
        assert {fk.parent.name for fk in table.foreign_keys} == {"versioning_transaction_id"}


def test_snapshot_columns_are_nullable_without_defaults() -> None:
    for column in history_table(Order).c:
        if column.name.startswith("versioning_") and column.name != "versioning_changes":
            continue
        assert column.nullable, column.name
        assert column.default is None and column.server_default is None, column.name
        assert column.onupdate is None and column.server_onupdate is None, column.name
        assert not column.constraints, column.name


def test_snapshot_column_types_equal_live_types() -> None:
    live = Order.__table__
    table = history_table(Order)
    for column in live.c:
        if column.name in ("view_count", "card_number"):
            continue
        snapshot = table.c[column.name]
        assert type(snapshot.type) is type(column.type), column.name
        assert repr(snapshot.type) == repr(column.type), column.name
    assert repr(history_table(Shipment).c.carrier_name.type) == repr(sa.String(30))


def test_exclude_and_mask_shape_the_history_table() -> None:
    table = history_table(Order)
    assert "view_count" not in table.c  # excluded: not recorded at all
    assert isinstance(table.c.card_number.type, sa.Text)  # masked: holds the mask output


# --- on the database ---------------------------------------------------------------------------


@pytest.fixture
def empty_db(engine: sa.Engine) -> Iterator[sa.Engine]:
    """``engine``, with Base's tables dropped before and after the test."""
    Base.metadata.drop_all(engine)
    yield engine
    Base.metadata.drop_all(engine)


def test_create_all_creates_history_and_transaction_tables(empty_db: sa.Engine) -> None:
    Base.metadata.create_all(empty_db)
    names = set(sa.inspect(empty_db).get_table_names())
    assert names >= LIVE | GENERATED


def test_created_history_table_has_no_unique_or_foreign_keys_to_live_tables(
    empty_db: sa.Engine,
) -> None:
    Base.metadata.create_all(empty_db)
    inspector = sa.inspect(empty_db)
    for name in ("decl_orders_history", "decl_shipment_audit"):
        assert inspector.get_unique_constraints(name) == []
        assert [i["name"] for i in inspector.get_indexes(name) if i["unique"]] == []
        assert inspector.get_pk_constraint(name)["constrained_columns"] == ["versioning_id"]
        fks = inspector.get_foreign_keys(name)
        assert [(fk["referred_table"], fk["constrained_columns"]) for fk in fks] == [
            (TRANSACTION_TABLE, ["versioning_transaction_id"])
        ]
        columns = inspector.get_columns(name)
        snapshot = [c for c in columns if not c["name"].startswith("versioning_")]
        assert snapshot and all(c["nullable"] for c in snapshot)
    # the live table, by contrast, has its unique constraints
    live_unique = inspector.get_unique_constraints("decl_orders") + [
        i for i in inspector.get_indexes("decl_orders") if i["unique"]
    ]
    assert live_unique


def test_created_snapshot_column_types_equal_live_types(empty_db: sa.Engine) -> None:
    Base.metadata.create_all(empty_db)
    inspector = sa.inspect(empty_db)
    dialect = empty_db.dialect

    def types(table: str) -> dict[str, str]:
        return {
            c["name"]: str(c["type"].compile(dialect=dialect)) for c in inspector.get_columns(table)
        }

    live = types("decl_orders")
    hist = types("decl_orders_history")
    for name, type_ in live.items():
        if name in ("view_count", "card_number"):
            continue
        assert hist[name] == type_, name


def test_alembic_autogenerate_sees_the_generated_tables(empty_db: sa.Engine) -> None:
    with empty_db.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    added = {diff[1].name for diff in diffs if isinstance(diff, tuple) and diff[0] == "add_table"}
    assert added >= LIVE | GENERATED


def test_alembic_autogenerate_finds_nothing_to_do_after_create_all(empty_db: sa.Engine) -> None:
    Base.metadata.create_all(empty_db)
    with empty_db.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    ours = LIVE | GENERATED

    def table_of(diff: Any) -> str | None:
        if isinstance(diff, list):  # column-level modifications come grouped
            return table_of(diff[0])
        for item in diff[1:]:
            if isinstance(item, sa.Table):
                return item.name
            if isinstance(item, sa.Column | sa.Index | sa.UniqueConstraint):
                return item.table.name
            if isinstance(item, str) and item in ours:
                return item
        return None

    assert [d for d in diffs if table_of(d) in GENERATED] == []


# --- classic declarative_base() ----------------------------------------------------------------

ClassicBase: Any = declarative_base()


class ClassicItem(Versioned, ClassicBase):
    __tablename__ = "decl_classic_items"
    __versioned__ = {"exclude": ["hits"], "mask": {"secret": masks.redact}}

    id = sa.Column(sa.Integer, primary_key=True)
    name = sa.Column(sa.String(40), nullable=False, unique=True)
    price = sa.Column(sa.Numeric(8, 2))
    secret = sa.Column(sa.String(30))
    hits = sa.Column(sa.Integer, default=0)


def test_classic_declarative_base_declares_the_same_way() -> None:
    assert set(ClassicBase.metadata.tables) == {
        "decl_classic_items",
        "decl_classic_items_history",
        TRANSACTION_TABLE,
        *INTEGRITY,
    }
    table = history_table(ClassicItem)
    assert table is ClassicBase.metadata.tables["decl_classic_items_history"]
    assert [c.name for c in table.c] == [
        "versioning_id",
        "versioning_transaction_id",
        "versioning_operation",
        "id",
        "name",
        "price",
        "secret",
        "versioning_changes",
    ]
    assert repr(table.c.price.type) == repr(sa.Numeric(8, 2))
    assert isinstance(table.c.secret.type, sa.Text)
    assert table.c.name.nullable and not table.c.name.unique


def test_classic_declarative_base_on_the_database(engine: sa.Engine) -> None:
    ClassicBase.metadata.drop_all(engine)
    try:
        ClassicBase.metadata.create_all(engine)
        assert {"decl_classic_items_history", TRANSACTION_TABLE} <= set(
            sa.inspect(engine).get_table_names()
        )
        with Session(engine) as session:
            with audit_context(actor="alice"):
                session.add(ClassicItem(id=1, name="pen", price=decimal.Decimal("1.50"), hits=3))
                session.commit()
            item = session.get(ClassicItem, 1)
            assert item is not None
            item.secret = "hunter2"
            item.hits = 4
            session.commit()
            versions = history(session, ClassicItem, 1)
            session.commit()
        assert [v.operation for v in versions] == [Operation.INSERT, Operation.UPDATE]
        assert versions[0].state == {
            "id": 1,
            "name": "pen",
            "price": decimal.Decimal("1.50"),
            "secret": None,
        }
        assert versions[1].changes == {"secret": (None, "[REDACTED]")}
        assert versions[0].transaction is not None
        assert versions[0].transaction.actor == "alice"
    finally:
        ClassicBase.metadata.drop_all(engine)


# --- configuration errors ----------------------------------------------------------------------


def fresh_base() -> type[DeclarativeBase]:
    class FreshBase(DeclarativeBase):
        pass

    return FreshBase


def assert_names(error: pytest.ExceptionInfo[ConfigurationError], *words: str) -> None:
    assert isinstance(error.value, VersioningError)
    message = str(error.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_unknown_column_in_exclude() -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError) as error:

        class Invoice(Versioned, FreshBase):
            __tablename__ = "invoices"
            __versioned__ = {"exclude": ["view_cuont"]}
            id: Mapped[int] = mapped_column(primary_key=True)
            view_count: Mapped[int]

    assert_names(error, "Invoice", "view_cuont", "exclude")


def test_unknown_column_in_mask() -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError) as error:

        class Invoice(Versioned, FreshBase):
            __tablename__ = "invoices"
            __versioned__ = {"mask": {"card": masks.last4}}
            id: Mapped[int] = mapped_column(primary_key=True)
            card_number: Mapped[str] = mapped_column(sa.String(19))

    assert_names(error, "Invoice", "'card'", "mask")


@pytest.mark.parametrize(
    "column_type", [sa.Integer(), sa.Numeric(10, 2), sa.DateTime(), sa.LargeBinary(), sa.JSON()]
)
def test_mask_on_non_string_column(column_type: sa.types.TypeEngine[Any]) -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError) as error:

        class Invoice(Versioned, FreshBase):
            __tablename__ = "invoices"
            __versioned__ = {"mask": {"amount": masks.redact}}
            id: Mapped[int] = mapped_column(primary_key=True)
            amount: Mapped[Any] = mapped_column(column_type)

    assert_names(error, "Invoice", "'amount'", "mask")


@pytest.mark.parametrize("column_type", [sa.String(20), sa.Text(), sa.Unicode(20)])
def test_mask_on_string_columns_is_accepted(column_type: sa.types.TypeEngine[Any]) -> None:
    FreshBase = fresh_base()

    class Invoice(Versioned, FreshBase):
        __tablename__ = "invoices"
        __versioned__ = {"mask": {"card": masks.last4}}
        id: Mapped[int] = mapped_column(primary_key=True)
        card: Mapped[str] = mapped_column(column_type)

    assert isinstance(history_table(Invoice).c.card.type, sa.Text)


def test_excluding_the_primary_key() -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError) as error:

        class Invoice(Versioned, FreshBase):
            __tablename__ = "invoices"
            __versioned__ = {"exclude": ["number"]}
            number: Mapped[int] = mapped_column(primary_key=True)

    assert_names(error, "Invoice", "'number'", "primary key")


def test_excluding_part_of_a_composite_primary_key() -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError) as error:

        class Line(Versioned, FreshBase):
            __tablename__ = "lines"
            __versioned__ = {"exclude": ["line_no"]}
            invoice_id: Mapped[int] = mapped_column(primary_key=True)
            line_no: Mapped[int] = mapped_column(primary_key=True)

    assert_names(error, "Line", "'line_no'", "primary key")


def test_masking_the_primary_key() -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError) as error:

        class Invoice(Versioned, FreshBase):
            __tablename__ = "invoices"
            __versioned__ = {"mask": {"number": masks.last4}}
            number: Mapped[str] = mapped_column(sa.String(20), primary_key=True)

    assert_names(error, "Invoice", "'number'", "primary key")


def test_unknown_option_key() -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError) as error:

        class Invoice(Versioned, FreshBase):
            __tablename__ = "invoices"
            __versioned__ = {"excludes": ["view_count"]}  # type: ignore[typeddict-unknown-key]
            id: Mapped[int] = mapped_column(primary_key=True)
            view_count: Mapped[int]

    assert_names(error, "Invoice", "excludes")


def test_exclude_given_as_a_bare_string() -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError) as error:

        class Invoice(Versioned, FreshBase):
            __tablename__ = "invoices"
            __versioned__ = {"exclude": "view_count"}
            id: Mapped[int] = mapped_column(primary_key=True)
            view_count: Mapped[int]

    assert_names(error, "Invoice", "view_count", "exclude", "list")


def test_both_excluded_and_masked() -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError) as error:

        class Invoice(Versioned, FreshBase):
            __tablename__ = "invoices"
            __versioned__ = {"exclude": ["card"], "mask": {"card": masks.redact}}
            id: Mapped[int] = mapped_column(primary_key=True)
            card: Mapped[str] = mapped_column(sa.String(19))

    assert_names(error, "Invoice", "card")


def test_mask_that_is_not_callable() -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError) as error:

        class Invoice(Versioned, FreshBase):
            __tablename__ = "invoices"
            __versioned__ = {"mask": {"card": "last4"}}  # type: ignore[dict-item]
            id: Mapped[int] = mapped_column(primary_key=True)
            card: Mapped[str] = mapped_column(sa.String(19))

    assert_names(error, "Invoice", "card", "callable")


def test_options_may_name_columns_by_column_name() -> None:
    FreshBase = fresh_base()

    class Invoice(Versioned, FreshBase):
        __tablename__ = "invoices"
        __versioned__ = {"exclude": ["hit_count"], "mask": {"card_no": masks.last4}}
        id: Mapped[int] = mapped_column(primary_key=True)
        hits: Mapped[int] = mapped_column("hit_count")
        card: Mapped[str] = mapped_column("card_no", sa.String(19))

    table = history_table(Invoice)
    assert "hit_count" not in table.c
    assert isinstance(table.c.card_no.type, sa.Text)


def test_no_primary_key() -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError) as error:

        class LogLine(Versioned, FreshBase):
            __table__ = sa.Table(
                "log_lines", FreshBase.metadata, sa.Column("message", sa.String(100))
            )

    assert_names(error, "LogLine", "primary key")


def test_history_table_name_clashing_with_an_existing_table() -> None:
    FreshBase = fresh_base()
    sa.Table("invoices_history", FreshBase.metadata, sa.Column("id", sa.Integer, primary_key=True))
    with pytest.raises(ConfigurationError) as error:

        class Invoice(Versioned, FreshBase):
            __tablename__ = "invoices"
            id: Mapped[int] = mapped_column(primary_key=True)

    assert_names(error, "Invoice", "invoices_history", "table_name")


def test_table_name_option_clashing_with_a_live_table() -> None:
    FreshBase = fresh_base()

    class Payment(FreshBase):
        __tablename__ = "payments"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(ConfigurationError) as error:

        class Invoice(Versioned, FreshBase):
            __tablename__ = "invoices"
            __versioned__ = {"table_name": "payments"}
            id: Mapped[int] = mapped_column(primary_key=True)

    assert_names(error, "Invoice", "payments", "table_name")


def test_two_models_choosing_the_same_history_table_name() -> None:
    FreshBase = fresh_base()

    class Invoice(Versioned, FreshBase):
        __tablename__ = "invoices"
        __versioned__ = {"table_name": "audit_log"}
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(ConfigurationError) as error:

        class Receipt(Versioned, FreshBase):
            __tablename__ = "receipts"
            __versioned__ = {"table_name": "audit_log"}
            id: Mapped[int] = mapped_column(primary_key=True)

    assert_names(error, "Receipt", "audit_log", "table_name")
    assert history_table(Invoice).info["live_table"] == "invoices"


def test_live_table_named_like_the_transaction_table() -> None:
    FreshBase = fresh_base()

    class Thing(FreshBase):
        __tablename__ = TRANSACTION_TABLE
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(ConfigurationError, match=TRANSACTION_TABLE):

        class Invoice(Versioned, FreshBase):
            __tablename__ = "invoices"
            id: Mapped[int] = mapped_column(primary_key=True)


def test_configuration_error_is_a_versioning_error() -> None:
    assert issubclass(ConfigurationError, VersioningError)


# --- no web framework --------------------------------------------------------------------------


def test_importing_versioning_imports_no_web_framework() -> None:
    code = (
        "import sys, versioning\n"
        "frameworks = ('starlette', 'fastapi', 'flask', 'werkzeug', 'django')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in frameworks))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout
