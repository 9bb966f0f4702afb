"""Every column type comes back from history as the column's own Python type, with its value.

Each value goes through the four ways history is read — ``Version.changes`` (insert, update old and
new, delete), ``Version.state``, ``as_of`` and ``restore`` — and must come back with the type a
live row of that column gives (``Decimal`` stays ``Decimal("12.30")``, a ``sa.Uuid`` a ``UUID``, an
``Enum`` column its member, a ``ChoiceType`` a ``Choice``...), and ``None`` stays ``None``.
"""

from __future__ import annotations

import datetime as dt
import enum
import io
import json
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy_utils as su  # type: ignore[import-untyped]
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy_utils.types.choice import Choice  # type: ignore[import-untyped]

from versioning import Operation, Versioned, as_of, history, restore
from versioning.catalog import from_metadata
from versioning.encoding import decode, decoder
from versioning.exporting import export, plain
from versioning.reading import _sqlite_issued_at
from versioning.schema import UTCDateTime
from versioning.searching import EntryReader

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]


class Base(DeclarativeBase):
    pass


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


KINDS = [("std", "Standard"), ("xpr", "Express")]

#: Microsecond precision on MariaDB too (its DATETIME and TIME keep whole seconds by default).
FINE_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb")
FINE_TIME = sa.Time().with_variant(mysql.TIME(fsp=6), "mariadb")


class ItemColumns:
    """The type matrix (also declared with database capture in test_database_capture)."""

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    big: Mapped[int | None] = mapped_column(sa.BigInteger)
    count: Mapped[int | None] = mapped_column(sa.Integer)
    amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
    ratio: Mapped[float | None] = mapped_column(sa.Float)
    flag: Mapped[bool | None] = mapped_column(sa.Boolean)
    title: Mapped[str | None] = mapped_column(sa.String(100))
    body: Mapped[str | None] = mapped_column(sa.Text)
    created: Mapped[dt.datetime | None] = mapped_column(FINE_DATETIME)
    day: Mapped[dt.date | None] = mapped_column(sa.Date)
    at: Mapped[dt.time | None] = mapped_column(FINE_TIME)
    uid: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    color: Mapped[Color | None] = mapped_column(sa.Enum(Color, name="types_color"))
    blob: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    doc: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    tags: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    ext_uid: Mapped[Any] = mapped_column(su.UUIDType(), nullable=True)
    kind: Mapped[Any] = mapped_column(su.ChoiceType(KINDS, impl=sa.String(10)), nullable=True)
    email: Mapped[Any] = mapped_column(su.EmailType(100), nullable=True)


class Item(ItemColumns, Versioned, Base):
    __tablename__ = "types_items"


class Event(Versioned, Base):
    """A timezone-aware timestamp: kept as such by PostgreSQL only."""

    __tablename__ = "types_events"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    happened: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


FIRST: dict[str, Any] = {
    "id": 1,
    "big": 2**40 + 1,
    "count": 7,
    "amount": Decimal("12.30"),
    "ratio": 2.5,
    "flag": True,
    "title": "Grüße aus Köln, 東京 ✓",
    "body": "Ünïcødé text\nsecond line — ñ ß 😀",
    "created": dt.datetime(2024, 2, 29, 13, 45, 30, 123456),
    "day": dt.date(2024, 2, 29),
    "at": dt.time(13, 45, 30, 250000),
    "uid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "color": Color.RED,
    "blob": b"\x00\x01\xffbinary\x80",
    "doc": {"a": [1, 2, {"b": None}], "ü": "ö", "n": 1.5},
    "tags": [1, "two", 3.5, None, True],
    "ext_uid": uuid.UUID("87654321-4321-8765-4321-876543218765"),
    "kind": Choice("std", "Standard"),
    "email": "alice@example.com",
}

#: A different value for every column (an update changes all of them).
SECOND: dict[str, Any] = {
    "id": 1,
    "big": -(2**40),
    "count": -3,
    "amount": Decimal("-0.05"),
    "ratio": -0.25,
    "flag": False,
    "title": "Ça va? Ελληνικά",
    "body": "Καλημέρα κόσμε — 2nd version",
    "created": dt.datetime(1999, 12, 31, 23, 59, 59, 999999),
    "day": dt.date(1999, 12, 31),
    "at": dt.time(0, 0, 1, 5),
    "uid": uuid.UUID("00000000-0000-4000-8000-000000000001"),
    "color": Color.GREEN,
    "blob": b"\xde\xad\xbe\xef",
    "doc": {"list": ["x", {"deep": [True, False]}], "empty": {}},
    "tags": ["ünï", 0, -1.25],
    "ext_uid": uuid.UUID("00000000-0000-4000-8000-0000000000ff"),
    "kind": Choice("xpr", "Express"),
    "email": "bob@example.org",
}

#: Values that are false but not None: they are values, and must be recorded as such.
FALSY: dict[str, Any] = {
    "id": 1,
    "big": 0,
    "count": 0,
    "amount": Decimal("0.00"),
    "ratio": 0.0,
    "flag": False,
    "title": "",
    "body": "",
    "blob": b"",
    "doc": {},
    "tags": [],
}

NONES: dict[str, Any] = dict.fromkeys(FIRST)
#: A row whose every column but the key is NULL.
EMPTY: dict[str, Any] = NONES | {"id": 1}


def assert_typed(actual: Any, expected: Any, where: str) -> None:
    """``actual`` equals ``expected`` and is of the same Python type."""
    if isinstance(expected, Choice):
        assert isinstance(actual, Choice), f"{where}: {actual!r} is not a Choice"
        assert (actual.code, actual.value) == (expected.code, expected.value), where
        return
    assert type(actual) is type(expected), (
        f"{where}: {actual!r} is a {type(actual).__name__}, expected a "
        f"{type(expected).__name__} ({expected!r})"
    )
    assert actual == expected, f"{where}: {actual!r} != {expected!r}"
    if isinstance(expected, Decimal):
        assert str(actual) == str(expected), f"{where}: {actual!r} != {expected!r}"
    if isinstance(expected, dt.datetime | dt.time):
        assert actual.tzinfo == expected.tzinfo, f"{where}: {actual!r} != {expected!r}"


def assert_values(actual: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
    for key, value in expected.items():
        assert key in actual, f"{where}: {key!r} missing from {sorted(actual)}"
        assert_typed(actual[key], value, f"{where}[{key!r}]")


def data(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` without the primary key (which an update never changes)."""
    return {key: value for key, value in values.items() if key != "id"}


def olds(version: Any) -> dict[str, Any]:
    return {key: old for key, (old, _) in version.changes.items()}


def news(version: Any) -> dict[str, Any]:
    return {key: new for key, (_, new) in version.changes.items()}


def full(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every other column of Item set to None."""
    return {key: None for key in FIRST} | dict(values)


def instance_values(instance: Any, keys: Mapping[str, Any]) -> dict[str, Any]:
    return {key: getattr(instance, key) for key in keys}


def live_values(sessions: Sessions, keys: Mapping[str, Any]) -> dict[str, Any]:
    """The live row of Item 1 as a fresh session loads it."""
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        values = instance_values(item, keys)
        session.rollback()
    return values


def write(session: Session, values: Mapping[str, Any]) -> None:
    item = session.get(Item, values["id"])
    if item is None:
        session.add(Item(**values))
    else:
        for key, value in values.items():
            setattr(item, key, value)
    session.commit()


def test_live_row_round_trips(create_tables: Tables, sessions: Sessions) -> None:
    """The test values survive the live table itself, so what follows tests history only."""
    create_tables(Base.metadata)
    write(sessions(), FIRST)
    assert_values(live_values(sessions, FIRST), FIRST, "live")


def test_insert_state_and_changes(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    write(session, FIRST)
    [version] = history(session, Item, 1)
    session.rollback()
    assert version.operation is Operation.INSERT
    assert set(version.state) == set(FIRST)
    assert_values(version.state, FIRST, "insert state")
    assert set(version.changes) == set(FIRST)
    assert_values(olds(version), NONES, "insert old")
    assert_values(news(version), FIRST, "insert new")


@pytest.mark.parametrize("loaded", [True, False], ids=["loaded", "expired"])
def test_update_changes_old_and_new(
    create_tables: Tables, sessions: Sessions, loaded: bool
) -> None:
    """Old values come back typed whether the session held them or had to read them."""
    create_tables(Base.metadata)
    session = sessions()
    item: Item | None = Item(**FIRST)
    session.add(item)
    session.commit()
    if loaded:
        session = sessions()
        item = session.get(Item, 1)
        assert item is not None
        assert_values(instance_values(item, FIRST), FIRST, "loaded")
    else:
        assert item is not None and set(FIRST) <= sa.inspect(item).unloaded  # expired
    for key, value in SECOND.items():
        setattr(item, key, value)
    session.commit()
    versions = history(session, Item, 1)
    session.rollback()
    assert [v.operation for v in versions] == [Operation.INSERT, Operation.UPDATE]
    update = versions[1]
    assert set(update.changes) == set(FIRST) - {"id"}
    assert_values(olds(update), data(FIRST), "old")
    assert_values(news(update), data(SECOND), "new")
    assert_values(update.state, SECOND, "update state")


def test_delete_state_and_changes(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    write(session, FIRST)
    session.delete(session.get(Item, 1))
    session.commit()
    versions = history(session, Item, 1)
    session.rollback()
    delete = versions[-1]
    assert delete.operation is Operation.DELETE
    assert_values(delete.state, FIRST, "delete state")
    assert set(delete.changes) == set(FIRST)
    assert_values(olds(delete), FIRST, "delete old")
    assert_values(news(delete), NONES, "delete new")


def test_as_of_instances_are_typed(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    write(session, FIRST)
    write(session, SECOND)
    first, second = history(session, Item, 1)
    for version, expected in ((first, FIRST), (second, SECOND)):
        by_id = as_of(session, Item, 1, version.transaction_id)
        assert_values(instance_values(by_id, expected), expected, "as_of(id)")
        assert version.transaction is not None
        by_time = as_of(session, Item, 1, version.transaction.issued_at)
        assert_values(instance_values(by_time, expected), expected, "as_of(datetime)")
        assert_values(instance_values(version.to_instance(), expected), expected, "to_instance")
    session.rollback()


def test_restore_writes_typed_values_back(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    write(session, FIRST)
    write(session, SECOND)
    first = history(session, Item, 1)[0]
    restored = restore(session, first)
    assert_values(instance_values(restored, FIRST), FIRST, "restored instance")
    session.commit()
    assert_values(live_values(sessions, FIRST), FIRST, "live after restore")
    last = history(session, Item, 1)[-1]
    session.rollback()
    assert last.operation is Operation.UPDATE
    assert set(last.changes) == set(FIRST) - {"id"}
    assert_values(olds(last), data(SECOND), "old")
    assert_values(news(last), data(FIRST), "new")
    assert_values(last.state, FIRST, "restore state")


def test_undelete_writes_typed_values_back(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    write(session, FIRST)
    session.delete(session.get(Item, 1))
    session.commit()
    delete = history(session, Item, 1)[-1]
    restore(session, delete)
    session.commit()
    assert_values(live_values(sessions, FIRST), FIRST, "live after undelete")
    reinsert = history(session, Item, 1)[-1]
    session.rollback()
    assert reinsert.operation is Operation.INSERT
    assert_values(reinsert.state, FIRST, "re-insert state")


def test_none_values(create_tables: Tables, sessions: Sessions) -> None:
    """None is recorded as None everywhere, and restoring to None writes NULL back."""
    create_tables(Base.metadata)
    session = sessions()
    write(session, EMPTY)
    write(session, FIRST)
    write(session, EMPTY)
    created, filled, emptied = history(session, Item, 1)
    assert created.changes == {"id": (None, 1)}
    assert_values(created.state, EMPTY, "insert state")
    assert_values(olds(emptied), data(FIRST), "old")
    assert_values(news(emptied), data(NONES), "new")
    assert set(emptied.changes) == set(FIRST) - {"id"}
    assert_values(emptied.state, EMPTY, "emptied state")
    assert_values(
        instance_values(as_of(session, Item, 1, created.transaction_id), EMPTY), EMPTY, "as_of"
    )

    restore(session, filled)
    session.commit()
    assert_values(live_values(sessions, FIRST), FIRST, "live after restore")
    restore(session, created)
    session.commit()
    assert_values(live_values(sessions, EMPTY), EMPTY, "live after restore to None")
    last = history(session, Item, 1)[-1]
    session.rollback()
    assert_values(news(last), data(NONES), "restored to None")


def test_false_values_are_values_not_none(create_tables: Tables, sessions: Sessions) -> None:
    """0, False, "", b"", {} and [] are recorded as changes from and to None."""
    create_tables(Base.metadata)
    session = sessions()
    write(session, FALSY)
    write(session, {key: None for key in FALSY} | {"id": 1})
    insert, update = history(session, Item, 1)
    at_insert = as_of(session, Item, 1, insert.transaction_id)
    session.rollback()
    assert set(insert.changes) == set(FALSY)
    assert_values(news(insert), FALSY, "insert new")
    assert_values(insert.state, full(FALSY), "insert state")
    assert set(update.changes) == set(FALSY) - {"id"}
    assert_values(olds(update), data(FALSY), "old")
    assert_values(instance_values(at_insert, FALSY), FALSY, "as_of")


def test_changes_hold_the_value_as_stored(create_tables: Tables, sessions: Sessions) -> None:
    """A TypeDecorator that normalises on the way in (EmailType lower-cases): ``changes`` agrees
    with ``state`` and with the live row, not with the un-normalised value the code assigned."""
    create_tables(Base.metadata)
    session = sessions()
    write(session, {"id": 1, "email": "Alice@Example.COM"})
    write(session, {"id": 1, "email": "Bob@Example.ORG"})
    insert, update = history(session, Item, 1)
    session.rollback()
    assert live_values(sessions, {"email": None}) == {"email": "bob@example.org"}
    assert insert.state["email"] == "alice@example.com"
    assert insert.changes["email"] == (None, "alice@example.com")
    assert update.state["email"] == "bob@example.org"
    assert update.changes["email"] == ("alice@example.com", "bob@example.org")


HERE = dt.timezone(dt.timedelta(hours=2))
THERE = dt.timezone(dt.timedelta(hours=-5, minutes=-30))


@pytest.mark.backends("postgresql")
def test_timezone_aware_datetime(create_tables: Tables, sessions: Sessions) -> None:
    """``DateTime(timezone=True)`` keeps aware datetimes (the same instants) on PostgreSQL.

    SQLite and MariaDB have no time zone type: such a column gives naive values there.
    """
    create_tables(Base.metadata)
    first = dt.datetime(2024, 6, 1, 12, 0, 0, 500000, tzinfo=HERE)
    second = dt.datetime(2024, 6, 1, 8, 30, 0, tzinfo=THERE)
    session = sessions()
    session.add(Event(id=1, happened=first))
    session.commit()
    session.get(Event, 1).happened = second  # type: ignore[union-attr]
    session.commit()
    insert, update = history(session, Event, 1)
    for value in (insert.state["happened"], insert.changes["happened"][1]):
        assert value.tzinfo is not None and value == first
    old, new = update.changes["happened"]
    assert old.tzinfo is not None and old == first
    assert new.tzinfo is not None and new == second
    assert update.state["happened"].tzinfo is not None and update.state["happened"] == second
    then = as_of(session, Event, 1, insert.transaction_id)
    assert then is not None and then.happened is not None
    assert then.happened.tzinfo is not None and then.happened == first
    restore(session, insert)
    session.commit()
    with sessions() as fresh:
        live = fresh.get(Event, 1)
        assert live is not None and live.happened is not None
        assert live.happened.tzinfo is not None and live.happened == first
        fresh.rollback()
    last = history(session, Event, 1)[-1]
    session.rollback()
    assert last.changes["happened"] == (second, first)
    assert all(value.tzinfo is not None for value in last.changes["happened"])


def test_export_writes_what_history_decodes(create_tables: Tables, sessions: Sessions) -> None:
    """The export's per-table fast paths (values read, decoded and encoded without the general
    chain) give, for every type, exactly :func:`plain` of what ``history`` decodes."""
    create_tables(Base.metadata)
    session = sessions()
    for values in (FIRST, SECOND, FALSY, {key: None for key in FIRST} | {"id": 1}):
        write(session, values)
    session.delete(session.get(Item, 1))
    session.commit()
    versions = history(session, Item, 1)
    stream = io.StringIO()
    assert export(session, stream, format="jsonl", table="types_items") == len(versions) == 5
    session.rollback()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    for line, version in zip(lines, versions, strict=True):
        where = f"{line['operation']} version {line['version_id']}"
        assert line["state"] == plain(dict(version.state)), where
        expected = {key: [plain(old), plain(new)] for key, (old, new) in version.changes.items()}
        assert line["changes"] == expected, where


def test_export_number_decoder_is_decodes() -> None:
    """A Numeric's stored value read by the export's shortcut is what ``decode`` gives."""
    reader = EntryReader(from_metadata(Base.metadata).tables[0], sqlite.dialect())
    for type_ in (sa.Numeric(10, 2), sa.Numeric(), sa.Integer(), sa.String(10)):
        fast = reader._decoder(type_)
        for stored in ("12.30", "-0.05", "1E+3", "NaN", "abc", "", 5, 2.5, True, None, [1]):
            expected = decode(type_, stored, sqlite.dialect())
            got = fast(stored)
            assert type(got) is type(expected) and str(got) == str(expected), (type_, stored)


@pytest.mark.parametrize(
    "dialect",
    [sqlite.dialect(), postgresql.dialect(), mysql.dialect(is_mariadb=True)],  # type: ignore[no-untyped-call]
    ids=["sqlite", "postgresql", "mariadb"],
)
def test_history_decoders_give_what_decode_gives(dialect: sa.Dialect) -> None:
    """``history()`` decodes ``changes`` with a decoder worked out once per column type: for
    every type of the matrix and every kind of stored value (right, wrong, JSON of any shape),
    it gives what ``decode`` gives, of the same type."""
    stored_values: list[Any] = [
        None, "12.30", "-0.05", "1E+3", "NaN", "abc", "", 5, 0, 2.5, True, False, [1, "a"],
        {"k": [1]}, "2024-05-06T07:08:09.123456", "2024-05-06T07:08:09+02:00", "2024-05-06",
        "07:08:09.5", "RED", "red", "std", "aGVsbG8=", "12345678-1234-5678-1234-567812345678",
        -3, 10**20,
    ]  # fmt: skip
    types = [column.type for model in (Item, Event) for column in model.__table__.columns] + [
        sa.Interval(),
        sa.Float(),
        sa.Numeric(asdecimal=False),
        sa.ARRAY(sa.Integer()),
    ]
    for type_ in types:
        fast = decoder(type_, dialect)
        for stored in stored_values:
            assert _outcome(lambda: fast(stored)) == _outcome(  # noqa: B023 - called at once
                lambda: decode(type_, stored, dialect)  # noqa: B023
            ), (type_, stored)


def _outcome(call: Callable[[], Any]) -> tuple[type, str]:
    """The type and ``repr`` of what ``call`` returns, or of the exception it raises."""
    try:
        got = call()
    except Exception as error:  # decode lets a few through (uuid.UUID(5): AttributeError)
        return type(error), str(error)
    return type(got), repr(got)


def test_history_reads_sqlite_issued_at_as_the_column_type_does() -> None:
    """On SQLite ``history()`` parses a transaction's ``issued_at`` text itself: the same
    ``datetime`` (aware, UTC) as :class:`~versioning.schema.UTCDateTime` gives, for the text
    the library writes and for any other."""
    dialect = sqlite.dialect()
    fast = _sqlite_issued_at(dialect)
    slow = UTCDateTime().result_processor(dialect, None)
    assert slow is not None
    for text in (
        "2024-05-06 07:08:09.123456",
        "2024-05-06 07:08:09.123000",
        "1999-12-31 23:59:59.999999",
        "2024-05-06 07:08:09",
        "2024-05-06 07:08:09.5",
        "2024-05-06T07:08:09.123456",
        None,
    ):
        assert _outcome(lambda: fast(text)) == _outcome(lambda: slow(text)), text  # noqa: B023
    assert fast("2024-05-06 07:08:09.123456") == dt.datetime(
        2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC
    )
