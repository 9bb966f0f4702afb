"""The SQL form of history rows (``versioning.history_sql``) records what Python records.

Rows of a model with the whole type matrix are written to the live table (the new values) and to
a plain copy of it (the old values); the ``changes`` document computed by SQL from the two, and the
snapshot computed by SQL from the live row, must decode to exactly what
:func:`versioning.history_rows.history_row` records from the same values as the session reads
them — on every backend, with NULLs, unicode, Decimal scales, time zones, microseconds, negative
intervals, empty bytes, nested JSON, large integers and masks.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, cast

import pytest
import sqlalchemy as sa
import sqlalchemy_utils as su  # type: ignore[import-untyped]
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy_utils.types.choice import Choice  # type: ignore[import-untyped]

from versioning import Operation, Versioned
from versioning.declaration import require_spec
from versioning.encoding import decode, encode
from versioning.errors import ConfigurationError
from versioning.history_rows import Change, history_row
from versioning.history_sql import (
    changes_json,
    mask_sql,
    personal_json,
    snapshot_columns,
    value_json,
)
from versioning.masks import last4, redact, sql_form
from versioning.schema import CHANGES

Tables = Callable[[sa.MetaData], sa.Engine]


class Base(DeclarativeBase):
    pass


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Shade(enum.Enum):
    """Stored by value (``values_callable``), recorded by name."""

    LIGHT = "l"
    DARK = "d"


KINDS = [("std", "Standard"), ("xpr", "Express")]
FINE_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb")
FINE_TIME = sa.Time().with_variant(mysql.TIME(fsp=6), "mariadb")
#: A column of another collation than the table's (MariaDB: case-insensitive too).
OTHER_COLLATION = sa.String(50).with_variant(
    mysql.VARCHAR(50, collation="utf8mb4_unicode_ci"), "mariadb"
)


def shout(value: str) -> str:
    """A custom mask without an SQL form."""
    return value.upper()


@sql_form(lambda expr, dialect: sa.func.substr(expr, 1, 1))
def initial(value: str) -> str:
    """A custom mask with an SQL form (the first character)."""
    return value[:1]


class Item(Versioned, Base):
    __tablename__ = "hsql_items"
    __versioned__ = {"mask": {"secret": redact, "card": last4, "mail": redact, "loud": initial}}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    big: Mapped[int | None] = mapped_column(sa.BigInteger)
    count: Mapped[int | None] = mapped_column(sa.Integer)
    amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
    ratio: Mapped[float | None] = mapped_column(sa.Float)
    precise: Mapped[float | None] = mapped_column(sa.Double)
    flag: Mapped[bool | None] = mapped_column(sa.Boolean)
    title: Mapped[str | None] = mapped_column(sa.String(100))
    body: Mapped[str | None] = mapped_column(sa.Text)
    other: Mapped[str | None] = mapped_column(OTHER_COLLATION)
    created: Mapped[dt.datetime | None] = mapped_column(FINE_DATETIME)
    happened: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    day: Mapped[dt.date | None] = mapped_column(sa.Date)
    at: Mapped[dt.time | None] = mapped_column(FINE_TIME)
    span: Mapped[dt.timedelta | None] = mapped_column(sa.Interval)
    uid: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    color: Mapped[Color | None] = mapped_column(sa.Enum(Color, name="hsql_color"))
    shade: Mapped[Shade | None] = mapped_column(
        sa.Enum(
            Shade,
            name="hsql_shade",
            values_callable=lambda members: [m.value for m in members],
        )
    )
    blob: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    doc: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    tags: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    ext_uid: Mapped[Any] = mapped_column(su.UUIDType(), nullable=True)
    kind: Mapped[Any] = mapped_column(su.ChoiceType(KINDS, impl=sa.String(10)), nullable=True)
    email: Mapped[Any] = mapped_column(su.EmailType(100), nullable=True)
    secret: Mapped[str | None] = mapped_column(sa.String(50))
    card: Mapped[str | None] = mapped_column(sa.String(50))
    mail: Mapped[Any] = mapped_column(su.EmailType(100), nullable=True)
    loud: Mapped[str | None] = mapped_column(sa.String(50))


ITEMS = cast(sa.Table, Item.__table__)

#: The old rows: a plain copy of the live table (same column types, no history).
OLD = sa.Table(
    "hsql_items_old",
    Base.metadata,
    *(sa.Column(c.name, c.type, primary_key=c.primary_key) for c in ITEMS.columns),
)

FIRST: dict[str, Any] = {
    "big": 2**40 + 1,
    "count": 7,
    "amount": Decimal("12.30"),
    "ratio": 2.5,
    "precise": 0.1 + 0.2,
    "flag": True,
    "title": "Grüße aus Köln, 東京 ✓",
    "body": 'Ünïcødé text\nsecond line — ñ ß 😀 "quoted" \\ \t\x01',
    "other": "abc",
    "created": dt.datetime(2024, 2, 29, 13, 45, 30, 123456),
    "happened": dt.datetime(
        2024, 6, 1, 12, 0, 0, 500000, tzinfo=dt.timezone(dt.timedelta(hours=2))
    ),
    "day": dt.date(2024, 2, 29),
    "at": dt.time(13, 45, 30, 250000),
    "span": dt.timedelta(days=3, hours=4, microseconds=7),
    "uid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "color": Color.RED,
    "shade": Shade.LIGHT,
    "blob": b"\x00\x01\xffbinary\x80",
    "doc": {"a": [1, 2, {"b": None}], "ü": "ö", "n": 1.5},
    "tags": [1, "two", 3.5, None, True],
    "ext_uid": uuid.UUID("87654321-4321-8765-4321-876543218765"),
    "kind": Choice("std", "Standard"),
    "email": "alice@example.com",
    "secret": "hunter2",
    "card": "4111111111111111",
    "mail": "carol@example.com",
    "loud": "quiet",
}

SECOND: dict[str, Any] = {
    "big": -(2**62),
    "count": -3,
    "amount": Decimal("-0.05"),
    "ratio": -0.25,
    "precise": 1e-300,
    "flag": False,
    "title": "Ça va? Ελληνικά",
    "body": "Καλημέρα κόσμε — 2nd version" + "x" * 300,
    "other": "xyz",
    "created": dt.datetime(1999, 12, 31, 23, 59, 59),
    "happened": dt.datetime(
        2024, 6, 1, 8, 30, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))
    ),
    "day": dt.date(1999, 12, 31),
    "at": dt.time(0, 0, 1),
    "span": dt.timedelta(days=-1, microseconds=1),
    "uid": uuid.UUID("00000000-0000-4000-8000-000000000001"),
    "color": Color.GREEN,
    "shade": Shade.DARK,
    "blob": bytes(range(256)) * 3,
    "doc": {"list": ["x", {"deep": [True, False, {"deeper": {"z": 10**15}}]}], "empty": {}},
    "tags": ["ünï", 0, -1.25],
    "ext_uid": uuid.UUID("00000000-0000-4000-8000-0000000000ff"),
    "kind": Choice("xpr", "Express"),
    "email": "bob@example.org",
    "secret": "correct horse",
    "card": "5500 0000 0000 0004",
    "mail": "dave@example.org",
    "loud": "louder",
}

#: False but not None: values, recorded as such.
FALSY: dict[str, Any] = {
    "big": 0,
    "count": 0,
    "amount": Decimal("0.00"),
    "ratio": 0.0,
    "precise": 0.0,
    "flag": False,
    "title": "",
    "body": "",
    "other": "",
    "span": dt.timedelta(0),
    "blob": b"",
    "doc": {},
    "tags": [],
    "secret": "",
    "card": "",
}

NONES: dict[str, Any] = dict.fromkeys(FIRST)

#: How each test case's old and new rows differ: (name, old values, new values).
Case = tuple[str, Mapping[str, Any], Mapping[str, Any]]


def cases() -> list[Case]:
    out: list[Case] = [
        ("nothing", FIRST, FIRST),
        ("nothing, all NULL", NONES, NONES),
        ("everything", FIRST, SECOND),
        ("everything back", SECOND, FIRST),
        ("falsy from NULL", NONES, NONES | FALSY),
        ("falsy to NULL", NONES | FALSY, NONES),
        (
            "case only",
            FIRST | {"title": "abc", "other": "abc"},
            FIRST | {"title": "ABC", "other": "ABC"},
        ),
        (
            "trailing space",
            FIRST | {"title": "abc", "other": "abc"},
            FIRST | {"title": "abc ", "other": "abc "},
        ),
        ("accent only", FIRST | {"title": "e", "other": "e"}, FIRST | {"title": "é", "other": "é"}),
        ("same masked, other real", FIRST, FIRST | {"card": "4999999999991111", "secret": "other"}),
        ("same masked, mask of 4", FIRST | {"card": "1234"}, FIRST | {"card": "9876"}),
        ("mask of unicode", FIRST | {"card": "ab😀cdéf"}, FIRST | {"card": "zz😀😀éf"}),
        ("mask from NULL", FIRST | {"card": None, "secret": None, "mail": None}, FIRST),
        ("mask to NULL", FIRST, FIRST | {"card": None, "secret": None, "mail": None}),
        (
            "microseconds 0 and 1",
            FIRST | {"created": dt.datetime(2024, 1, 1), "at": dt.time(0, 0)},
            FIRST | {"created": dt.datetime(2024, 1, 1, 0, 0, 0, 1), "at": dt.time(0, 0, 0, 1)},
        ),
        (
            "old dates",
            FIRST | {"day": dt.date(1, 1, 1), "created": dt.datetime(999, 3, 4, 5, 6, 7)},
            FIRST | {"day": dt.date(9999, 12, 31), "created": dt.datetime(1970, 1, 1)},
        ),
        (
            "large spans",
            FIRST | {"span": dt.timedelta(days=-4000, seconds=5, microseconds=999999)},
            FIRST | {"span": dt.timedelta(days=40000, microseconds=1)},
        ),
        (
            "large ints",
            FIRST | {"big": 2**63 - 1, "count": -(2**31)},
            FIRST | {"big": -(2**63), "count": 2**31 - 1},
        ),
        (
            "floats",
            FIRST | {"ratio": 1e16, "precise": 123456.789e200},
            FIRST | {"ratio": 3.0, "precise": -2.2250738585072014e-308},
        ),
        (
            "decimal scales",
            FIRST | {"amount": Decimal("99999999.99")},
            FIRST | {"amount": Decimal("-0.10")},
        ),
        (
            "json scalars",
            FIRST | {"doc": "just a string", "tags": 5},
            FIRST | {"doc": 2.5, "tags": False},
        ),
        ("json key order", FIRST | {"doc": {"a": 1, "b": 2}}, FIRST | {"doc": {"b": 2, "a": 1}}),
        ("one byte", FIRST | {"blob": b"a"}, FIRST | {"blob": b"ab"}),
        ("three bytes", FIRST | {"blob": b"abc"}, FIRST | {"blob": b"\xff\xfe\xfd\xfc"}),
    ]
    for key in FIRST:
        out.append((f"{key} alone", FIRST, FIRST | {key: SECOND[key]}))
        out.append((f"{key} from NULL", NONES, NONES | {key: FIRST[key]}))
        out.append((f"{key} to NULL", FIRST, FIRST | {key: None}))
    return out


def _fit(backend: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as ``backend`` can store them: MariaDB keeps no time zone, nor floats beyond
    its range; SQLite no time zone either (the column is naive there)."""
    out = dict(values)
    happened = out.get("happened")
    if backend != "postgresql" and happened is not None:
        out["happened"] = happened.replace(tzinfo=None)
    if backend == "mariadb" and out.get("ratio") == 1e16:
        out["ratio"] = 1e6  # FLOAT is single precision
    return out


def _typed_equal(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, Choice):
        assert isinstance(actual, Choice), where
        assert (actual.code, actual.value) == (expected.code, expected.value), where
        return
    assert type(actual) is type(expected), f"{where}: {actual!r} != {expected!r}"
    assert actual == expected, f"{where}: {actual!r} != {expected!r}"
    if isinstance(expected, Decimal):
        assert str(actual) == str(expected), f"{where}: {actual!r} != {expected!r}"
    if isinstance(expected, dt.datetime | dt.time):
        assert actual.tzinfo == expected.tzinfo, f"{where}: {actual!r} != {expected!r}"
        if isinstance(expected, dt.datetime):
            assert actual.utcoffset() == expected.utcoffset(), where


def _document(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _write_cases(connection: sa.Connection, backend: str, all_cases: list[Case]) -> None:
    table = ITEMS
    olds = [{"id": i} | _fit(backend, old) for i, (_, old, _) in enumerate(all_cases, 1)]
    news = [{"id": i} | _fit(backend, new) for i, (_, _, new) in enumerate(all_cases, 1)]
    connection.execute(OLD.insert(), olds)
    connection.execute(table.insert(), news)


def _rows(connection: sa.Connection, table: sa.Table) -> dict[int, dict[str, Any]]:
    """Each row of ``table`` by id, with the Python values SQLAlchemy reads."""
    return {row.id: dict(row._mapping) for row in connection.execute(sa.select(table))}


def _assert_as_python(
    connection: sa.Connection,
    all_cases: list[Case],
    before: Mapping[int, dict[str, Any]],
    after: Mapping[int, dict[str, Any]],
    by_sql: Mapping[int, Any],
) -> int:
    """Assert that each case's document from SQL (``by_sql``, by id; missing: none) decodes to
    what ``history_row`` records from the same rows; the number of values compared."""
    spec = require_spec(Item)
    dialect = connection.dialect
    checked = 0
    for id_, (name, _, _) in enumerate(all_cases, 1):
        row = history_row(Change(spec, None, Operation.UPDATE, before[id_], after[id_]), connection)
        expected = None if row is None else row[CHANGES]
        got = by_sql.get(id_)
        if expected is None:
            assert got is None, f"{name}: SQL recorded {got!r}, Python nothing"
            continue
        assert got is not None, f"{name}: SQL recorded nothing, Python {expected!r}"
        assert list(got) == list(expected), f"{name}: keys {list(got)} != {list(expected)}"
        for key, pair in expected.items():
            type_ = spec.type_of(key)
            for side, want, have in zip(("old", "new"), pair, got[key], strict=True):
                _typed_equal(
                    decode(type_, have, dialect),
                    decode(type_, want, dialect),
                    f"{name}: {key} {side} (SQL {have!r}, Python {want!r})",
                )
                checked += 1
    return checked


def test_changes_decode_to_what_python_records(create_tables: Tables, engine: sa.Engine) -> None:
    create_tables(Base.metadata)
    spec = require_spec(Item)
    dialect = engine.dialect
    all_cases = cases()
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Aware datetimes are read, and recorded, in the session's time zone.
            connection.exec_driver_sql("SET LOCAL TIME ZONE 'Asia/Kolkata'")
        _write_cases(connection, engine.dialect.name, all_cases)
        before, after = _rows(connection, OLD), _rows(connection, ITEMS)
        old, new = OLD.alias("o"), ITEMS.alias("n")
        document = changes_json(spec, old, new, dialect)
        query = (
            sa.select(new.c.id, sa.type_coerce(document, sa.Text()))
            .select_from(old.join(new, old.c.id == new.c.id))
            .order_by(new.c.id)
        )
        by_sql = {id_: _document(doc) for id_, doc in connection.execute(query)}
        # The same SQL with its constants written in (as a trigger's body holds it).
        literal = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        assert {id_: _document(doc) for id_, doc in connection.exec_driver_sql(literal)} == by_sql
        checked = _assert_as_python(connection, all_cases, before, after, by_sql)
        assert checked > 200
        by_name = {name: by_sql[i] for i, (name, _, _) in enumerate(all_cases, 1)}
        assert by_name["nothing"] is None
        assert set(by_name["case only"]) == {"title", "other"}
        assert set(by_name["trailing space"]) == {"title", "other"}
        assert by_name["same masked, other real"] == {
            "secret": ["[REDACTED]", "[REDACTED]"],
            "card": ["************1111", "************1111"],
        }
        assert by_name["same masked, mask of 4"] == {"card": ["****", "****"]}
        assert by_name["mask of unicode"] == {"card": ["***cdéf", "**😀😀éf"]}
        assert by_name["mail alone"] == {"mail": ["[redacted]", "[redacted]"]}


def test_insert_snapshot_is_what_python_records(create_tables: Tables, engine: sa.Engine) -> None:
    """``INSERT ... SELECT`` of the snapshot writes the history row Python would write."""
    create_tables(Base.metadata)
    spec = require_spec(Item)
    history = spec.history
    all_cases = cases()
    with engine.begin() as connection:
        _write_cases(connection, engine.dialect.name, all_cases)
        after = _rows(connection, ITEMS)
        tx_id = connection.execute(
            spec.transactions.insert()
            .values(issued_at=dt.datetime(2024, 1, 1))
            .returning(spec.transactions.c.id)
        ).scalar_one()
        live = ITEMS.alias("live")
        columns = snapshot_columns(spec, live, engine.dialect)
        connection.execute(
            history.insert().from_select(
                ["versioning_transaction_id", "versioning_operation"]
                + [name for name, _ in columns],
                sa.select(sa.literal(tx_id), sa.literal("insert"), *(expr for _, expr in columns)),
            )
        )
        written = {
            row.id: dict(row._mapping)
            for row in connection.execute(
                sa.select(history).where(history.c.versioning_transaction_id == tx_id)
            )
        }
        assert len(written) == len(all_cases)
        for id_, (name, _, _) in enumerate(all_cases, 1):
            row = history_row(Change(spec, None, Operation.INSERT, None, after[id_]), connection)
            assert row is not None and row[CHANGES] is None
            for key in spec.attrs:
                column = spec.history_names[key]
                _typed_equal(written[id_][column], row[column], f"{name}: {key}")


#: Where the update trigger of the test below writes each document.
LOG = sa.Table(
    "hsql_log",
    Base.metadata,
    sa.Column("item_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("doc", sa.Text().with_variant(mysql.LONGTEXT(), "mariadb")),
)


def _install_update_trigger(connection: sa.Connection) -> None:
    """An AFTER UPDATE trigger on the items writing each changed row's document to LOG:
    statement-level with transition tables on PostgreSQL, row-level elsewhere."""
    dialect = connection.dialect
    spec = require_spec(Item)

    def sql(element: Any) -> str:
        return str(element.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))

    if dialect.name == "postgresql":  # the transition tables, by name
        old, new = (
            sa.table(name, *(sa.column(c.name, c.type) for c in ITEMS.columns))
            for name in ("old_rows", "new_rows")
        )
        document = sa.cast(changes_json(spec, old, new, dialect), sa.Text())
        select = (
            sa.select(new.c.id, document.label("doc"))
            .select_from(old.join(new, old.c.id == new.c.id))
            .subquery("d")
        )
        insert = LOG.insert().from_select(
            ["item_id", "doc"], sa.select(select).where(select.c.doc.is_not(None))
        )
        connection.exec_driver_sql(
            "CREATE FUNCTION hsql_log_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"{sql(insert)}; RETURN NULL; END $$"
        )
        connection.exec_driver_sql(
            "CREATE TRIGGER hsql_log_update AFTER UPDATE ON hsql_items REFERENCING OLD TABLE AS "
            "old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION hsql_log_update()"
        )
        return
    old_row, new_row = (
        sa.table(name, *(sa.column(c.name, c.type) for c in ITEMS.columns))
        for name in ("old", "new")
    )
    body = sql(changes_json(spec, old_row, new_row, dialect))
    if dialect.name == "sqlite":
        connection.exec_driver_sql(
            "CREATE TRIGGER hsql_log_update AFTER UPDATE ON hsql_items FOR EACH ROW "
            f"WHEN {body} IS NOT NULL BEGIN "
            f"INSERT INTO hsql_log (item_id, doc) VALUES (new.id, {body}); END"
        )
        return
    connection.exec_driver_sql(
        "CREATE TRIGGER hsql_log_update AFTER UPDATE ON hsql_items FOR EACH ROW BEGIN "
        f"DECLARE d LONGTEXT DEFAULT {body}; "
        "IF d IS NOT NULL THEN INSERT INTO hsql_log (item_id, doc) VALUES (new.id, d); END IF; "
        "END"
    )


def test_the_sql_runs_in_an_update_trigger(create_tables: Tables, engine: sa.Engine) -> None:
    """The documents a trigger writes, from its OLD and NEW rows, are Python's too."""
    create_tables(Base.metadata)
    all_cases = cases()
    backend = engine.dialect.name
    with engine.begin() as connection:
        if backend == "postgresql":
            connection.exec_driver_sql("SET LOCAL TIME ZONE 'Asia/Kolkata'")
        connection.execute(
            ITEMS.insert(),
            [{"id": i} | _fit(backend, old) for i, (_, old, _) in enumerate(all_cases, 1)],
        )
        before = _rows(connection, ITEMS)
        _install_update_trigger(connection)
        for id_, (_, _, new) in enumerate(all_cases, 1):
            connection.execute(ITEMS.update().where(ITEMS.c.id == id_).values(_fit(backend, new)))
        after = _rows(connection, ITEMS)
        logged = {row.item_id: json.loads(row.doc) for row in connection.execute(sa.select(LOG))}
        assert _assert_as_python(connection, all_cases, before, after, logged) > 200


@pytest.mark.backends("postgresql")
def test_arrays(create_tables: Tables, engine: sa.Engine) -> None:
    """A PostgreSQL ARRAY is recorded item by item, each as its type encodes it."""
    create_tables(ArrayBase.metadata)
    spec = require_spec(Tagged)
    values = [
        {"id": 1, "nums": [1, 2, None, 3], "stamps": [dt.datetime(2024, 1, 1, 0, 0, 0, 5)],
         "amounts": [Decimal("1.50"), None], "names": ["a", 'b"c', "ü"]},
        {"id": 2, "nums": [], "stamps": None, "amounts": [Decimal("-2.00")], "names": []},
    ]  # fmt: skip
    with engine.begin() as connection:
        connection.execute(ArrayOld.insert(), values)
        connection.execute(
            TAGGED.insert(),
            [
                {"id": 1, "nums": [3], "stamps": [], "amounts": None, "names": ["a"]},
                values[0] | {"id": 2},
            ],
        )
        old, new = ArrayOld.alias("o"), TAGGED.alias("n")
        query = (
            sa.select(new.c.id, changes_json(spec, old, new, engine.dialect))
            .select_from(old.join(new, old.c.id == new.c.id))
            .order_by(new.c.id)
        )
        by_sql = {id_: _document(doc) for id_, doc in connection.execute(query)}
        before, after = _rows(connection, ArrayOld), _rows(connection, TAGGED)
        for id_ in (1, 2):
            row = history_row(
                Change(spec, None, Operation.UPDATE, before[id_], after[id_]), connection
            )
            assert row is not None
            assert by_sql[id_] == row[CHANGES]


class ArrayBase(DeclarativeBase):
    pass


class Tagged(Versioned, ArrayBase):
    __tablename__ = "hsql_tagged"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    nums: Mapped[Any] = mapped_column(postgresql.ARRAY(sa.Integer), nullable=True)
    stamps: Mapped[Any] = mapped_column(postgresql.ARRAY(sa.DateTime), nullable=True)
    amounts: Mapped[Any] = mapped_column(postgresql.ARRAY(sa.Numeric(10, 2)), nullable=True)
    names: Mapped[Any] = mapped_column(postgresql.ARRAY(sa.Text), nullable=True)


TAGGED = cast(sa.Table, Tagged.__table__)

ArrayOld = sa.Table(
    "hsql_tagged_old",
    ArrayBase.metadata,
    *(sa.Column(c.name, c.type, primary_key=c.primary_key) for c in TAGGED.columns),
)


def test_mask_sql_forms_give_python_outputs(engine: sa.Engine) -> None:
    """``redact`` and ``last4`` in SQL give what they give in Python, counting characters."""
    values = ["", "a", "abcd", "abcde", "4111111111111111", "ab😀cdéf", "東京都渋谷区", "x" * 300]
    with engine.connect() as connection:
        for mask in (redact, last4, initial):
            for value in values:
                expr = mask_sql(mask, sa.literal(value, sa.String()), engine.dialect)
                assert connection.execute(sa.select(expr)).scalar_one() == mask(value), (
                    mask,
                    value,
                )
            assert (
                connection.execute(
                    sa.select(mask_sql(mask, sa.null(), engine.dialect))
                ).scalar_one()
                is None
            )


def test_value_json_of_null_is_null(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        expr = value_json(sa.Integer(), sa.null(), engine.dialect)
        assert connection.execute(sa.select(expr)).scalar_one() == "null"


# --- without a database --------------------------------------------------------------------------

DIALECTS = [sqlite.dialect(), postgresql.dialect(), mysql.dialect(is_mariadb=True)]  # type: ignore[no-untyped-call]


class Plain(Versioned, Base):
    """A custom mask without an SQL form."""

    __tablename__ = "hsql_plain"
    __versioned__ = {"mask": {"code": shout}}
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str | None] = mapped_column(sa.String(20))


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_custom_mask_without_sql_form_is_refused(dialect: sa.Dialect) -> None:
    spec = require_spec(Plain)
    table = Plain.__table__
    for build in (
        lambda: changes_json(spec, table.alias("o"), table.alias("n"), dialect),
        lambda: snapshot_columns(spec, table, dialect),
    ):
        with pytest.raises(ConfigurationError) as raised:
            build()
        message = str(raised.value)
        assert "'shout'" in message and "Plain.code" in message and "sql_form" in message


class Converted(Versioned, Base):
    """Masks whose output Python passes through the column type (EmailType lower-cases)."""

    __tablename__ = "hsql_converted"
    __versioned__ = {"mask": {"mail": last4, "kept": redact}}
    id: Mapped[int] = mapped_column(primary_key=True)
    mail: Mapped[Any] = mapped_column(su.EmailType(100), nullable=True)
    kept: Mapped[Any] = mapped_column(su.EmailType(100), nullable=True)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_masks_python_converts_are_refused_but_redact(dialect: sa.Dialect) -> None:
    """``history_row`` records a mask's output as the column's TypeDecorator converts it: SQL
    cannot, but for ``redact``, whose output is a constant."""
    spec = require_spec(Converted)
    table = cast(sa.Table, Converted.__table__)
    with pytest.raises(ConfigurationError, match=r"Converted\.mail"):
        changes_json(spec, table.alias("o"), table.alias("n"), dialect)
    assert [name for name, _ in snapshot_columns(spec, table, dialect)] == ["id", "mail", "kept"]


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_types_without_sql_form_are_refused_when_built(dialect: sa.Dialect) -> None:
    column: sa.ColumnClause[Any] = sa.column("x")
    refused: list[sa.types.TypeEngine[Any]] = [
        sa.PickleType(),
        sa.Float(asdecimal=True),
        sa.ARRAY(sa.Integer(), dimensions=2),
    ]
    if dialect.name != "postgresql":
        refused.append(sa.ARRAY(sa.Integer()))
    else:
        refused.append(postgresql.INET())
    for type_ in refused:
        with pytest.raises(ConfigurationError) as raised:
            value_json(type_, column, dialect, "Model.col")
        message = str(raised.value)
        assert "Model.col" in message and "session capture" in message and "exclude" in message


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_every_type_of_the_matrix_compiles(dialect: sa.Dialect) -> None:
    """Built and compiled once per backend, constants written in (as in a trigger)."""
    spec = require_spec(Item)
    table = ITEMS
    document = changes_json(spec, table.alias("o"), table.alias("n"), dialect)
    sql = str(document.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    for key in spec.attrs:
        assert json.dumps(key) in sql
    snapshot = snapshot_columns(spec, table, dialect)
    assert [name for name, _ in snapshot] == [spec.history_names[k] for k in spec.attrs]


def test_unknown_backend_is_refused() -> None:
    from sqlalchemy.dialects import mssql

    for dialect in (mssql.dialect(), mysql.dialect()):  # type: ignore[no-untyped-call]
        with pytest.raises(ConfigurationError, match="PostgreSQL, MariaDB and SQLite"):
            value_json(sa.Integer(), sa.column("x"), dialect)


#: Per backend: (column type, an SQL literal of a stored value) — values written by other
#: clients, in forms the session path never writes.
STORED_FORMS: dict[str, list[tuple[sa.types.TypeEngine[Any], str]]] = {
    "postgresql": [
        (sa.Interval(), "INTERVAL '1 year 2 mons 3 days 04:05:06.7'"),
        (sa.Interval(), "INTERVAL '-1 year -2 mons +3 days -04:05:06.000001'"),
        (sa.Interval(), "INTERVAL '100 hours 61 minutes'"),
        (sa.Interval(), "INTERVAL '0'"),
        (postgresql.INTERVAL(), "INTERVAL '-7 days 00:00:00.5'"),
        (sa.Time(timezone=True), "TIMETZ '13:45:30.25+05:30'"),
        (sa.Time(timezone=True), "TIMETZ '00:00:00-08'"),
        (sa.DateTime(timezone=True), "TIMESTAMPTZ '1900-01-01 00:00:00+00'"),
        (sa.DateTime(), "TIMESTAMP '0001-01-01 00:00:00.000001'"),
        (sa.Float(), "CAST('NaN' AS FLOAT8)"),
        (sa.Float(), "CAST('Infinity' AS FLOAT8)"),
        (sa.Float(), "CAST('-Infinity' AS FLOAT8)"),
        (sa.Float(), "CAST(1e-7 AS FLOAT8)"),
        (sa.REAL(), "CAST(0.1 AS REAL)"),
        (sa.Numeric(), "CAST('0.00000010' AS NUMERIC)"),
        (sa.Numeric(), "CAST('NaN' AS NUMERIC)"),
        (sa.Numeric(), "CAST('123456789012345678901234567890.123' AS NUMERIC)"),
        (sa.Numeric(asdecimal=False), "CAST('12.30' AS NUMERIC)"),
        (sa.CHAR(5), "CAST('ab' AS CHAR(5))"),
        (sa.JSON(), "CAST('null' AS JSON)"),
        (sa.JSON(), 'CAST(\'{"b": 1,  "a": [1.0, "\\u00e9"]}\' AS JSON)'),
        (postgresql.JSONB(), 'CAST(\'{"b": 1, "a": 2}\' AS JSONB)'),
        (sa.Uuid(as_uuid=False), "CAST('12345678-1234-5678-1234-567812345678' AS UUID)"),
        (sa.LargeBinary(), "CAST(repeat('ab', 100) AS BYTEA)"),
    ],
    "mariadb": [
        (sa.DateTime(), "CAST('2024-02-29 13:45:30' AS DATETIME)"),
        (mysql.DATETIME(fsp=3), "CAST('2024-02-29 13:45:30.120' AS DATETIME(3))"),
        (sa.Time(), "CAST('-01:00:00' AS TIME)"),
        (mysql.TIME(fsp=6), "CAST('-01:00:00.25' AS TIME(6))"),
        (sa.Time(), "CAST('25:00:01' AS TIME)"),
        (mysql.TIME(fsp=6), "CAST('23:59:59.999999' AS TIME(6))"),
        (sa.Float(), "CAST(1e-7 AS DOUBLE)"),
        (sa.Numeric(asdecimal=False), "CAST(12.30 AS DECIMAL(10, 2))"),
        (sa.Uuid(), "'12345678-1234-5678-1234-567812345678'"),
        (sa.Uuid(), "'1234567812345678123456781234567A'"),
        (sa.LargeBinary(), "CAST(REPEAT('xé', 100) AS BINARY)"),
        (sa.JSON(), '\'{"b": 1,  "a": [1.0, "\\\\u00e9"]}\''),
    ],
    "sqlite": [
        (sa.DateTime(), "'2024-02-29 13:45:30'"),
        (sa.DateTime(), "'2024-02-29 13:45:30.5'"),
        (sa.DateTime(), "'2024-02-29T13:45:30.000120'"),
        (sa.Time(), "'13:45:30'"),
        (sa.Time(), "'13:45:30.5'"),
        (sa.Interval(), "'1969-12-31 23:59:59.5'"),
        (sa.Interval(), "'1970-01-01 00:00:00'"),
        (sa.Numeric(), "12.3"),
        (sa.Numeric(12, 4), "12"),
        (sa.Numeric(asdecimal=False), "12.30"),
        (sa.Float(), "9e999"),
        (sa.Float(), "-9e999"),
        (sa.Float(), "0.30000000000000004"),
        (sa.Float(), "5e-324"),
        (sa.Float(), "CAST(3 AS REAL)"),
        (sa.Uuid(), "'1234567812345678123456781234567A'"),
        (sa.Uuid(as_uuid=False), "'12345678123456781234567812345678'"),
        (sa.LargeBinary(), "x'" + (bytes(range(256)) * 4).hex() + "'"),
        (sa.LargeBinary(), "x''"),
        (sa.JSON(), '\'{"b": 1,  "a": [1.0, "\\u00e9"]}\''),
    ],
}


def test_stored_forms_decode_to_what_the_driver_reads(engine: sa.Engine) -> None:
    """Values in forms other clients write decode to what SQLAlchemy reads from them."""
    dialect = engine.dialect
    with engine.connect() as connection:
        if dialect.name == "postgresql":
            connection.exec_driver_sql("SET TIME ZONE 'America/St_Johns'")  # -03:30 / -02:30
        for type_, literal in STORED_FORMS[dialect.name]:
            raw: sa.ColumnClause[Any] = sa.literal_column(literal)
            query = sa.select(sa.type_coerce(raw, type_), value_json(type_, raw, dialect))
            value, text = connection.execute(query).one()
            where = f"{type_!r} {literal}"
            if isinstance(value, float | Decimal) and value != value:  # NaN
                assert str(decode(type_, json.loads(text), dialect)) == str(value), where
                continue
            # What Python records: the value read, encoded, stored as JSON text.
            recorded = json.loads(json.dumps(encode(type_, value, dialect, where)))
            expected = decode(type_, recorded, dialect)
            _typed_equal(decode(type_, json.loads(text), dialect), expected, where)
        connection.rollback()


class Person(Versioned, Base):
    __tablename__ = "hsql_people"
    __versioned__ = {"personal": ["name", "email"]}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(sa.String(50))
    email: Mapped[str | None] = mapped_column(sa.String(50))


def test_personal_salts(engine: sa.Engine) -> None:
    """A fresh random salt per personal column and row, as ``personal.salts`` gives."""
    assert personal_json(require_spec(Item), engine.dialect) is None
    salts = personal_json(require_spec(Person), engine.dialect)
    assert salts is not None
    with engine.connect() as connection:
        rows = [
            _document(connection.execute(sa.select(sa.type_coerce(salts, sa.Text()))).scalar_one())
            for _ in range(3)
        ]
    values = [salt for row in rows for salt in row.values()]
    assert all(list(row) == ["email", "name"] for row in rows)
    assert all(len(salt) == 32 and bytes.fromhex(salt) and salt == salt.lower() for salt in values)
    assert len(set(values)) == len(values)
