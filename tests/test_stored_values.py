"""History holds what the database stored, not what was sent (issue 8, classes 5, 6, 7, 20).

A ``Numeric(10, 2)`` rounds, MariaDB's ``DATETIME`` drops microseconds, PostgreSQL's ``CHAR(5)``
pads and MariaDB's strips, SQLite and MariaDB keep no time zone, MariaDB's ``FLOAT`` is single
precision. Whatever the backend does, the snapshot and ``changes`` must agree with the live row as a
fresh session loads it, and a write that stores the same value records nothing. The oracle is the
live row itself, read before and after each write, so each case holds on every backend whatever
that backend does with the value.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy_utils as su  # type: ignore[import-untyped]
from sqlalchemy import event
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
from versioning import Operation, Version, Versioned, as_of, history, stored
from versioning.encoding import decode, encode
from versioning.reading import version_at

from helpers import read

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[..., Session]


class Base(DeclarativeBase):
    pass


class Stored(Versioned, Base):
    """Columns whose stored value may differ from the one sent, and one that never does."""

    __tablename__ = "sv_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
    stamp: Mapped[dt.datetime | None] = mapped_column(sa.DateTime)
    at: Mapped[dt.time | None] = mapped_column(sa.Time)
    code: Mapped[str | None] = mapped_column(sa.CHAR(5))
    happened: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    ratio: Mapped[float | None] = mapped_column(sa.Float)
    email: Mapped[Any] = mapped_column(su.EmailType(100), nullable=True)
    qty: Mapped[int | None] = mapped_column(sa.Integer)
    day: Mapped[dt.date | None] = mapped_column(sa.Date)
    name: Mapped[str | None] = mapped_column(sa.String(50))


class Locked(Versioned, Base):
    """With a ``version_id_col`` old values come from the session, which keeps what it sent."""

    __tablename__ = "sv_locked"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
    stamp: Mapped[dt.datetime | None] = mapped_column(sa.DateTime)
    at: Mapped[dt.time | None] = mapped_column(sa.Time)
    code: Mapped[str | None] = mapped_column(sa.CHAR(5))
    happened: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    ratio: Mapped[float | None] = mapped_column(sa.Float)
    email: Mapped[Any] = mapped_column(su.EmailType(100), nullable=True)
    qty: Mapped[int | None] = mapped_column(sa.Integer)
    day: Mapped[dt.date | None] = mapped_column(sa.Date)
    name: Mapped[str | None] = mapped_column(sa.String(50))
    version: Mapped[int] = mapped_column(nullable=False)

    __mapper_args__ = {"version_id_col": version}


class Secret(Versioned, Base):
    __tablename__ = "sv_secrets"
    __versioned__ = {"mask": {"body": versioning.masks.last4}}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    body: Mapped[str | None] = mapped_column(sa.Text().with_variant(mysql.LONGTEXT(), "mariadb"))


KEYS = ("amount", "stamp", "at", "code", "happened", "ratio", "email", "qty", "day", "name")
HERE = dt.timezone(dt.timedelta(hours=2))
THERE = dt.timezone(dt.timedelta(hours=-5))
NOON = dt.datetime(2024, 3, 1, 12, 0, 0)

#: Each write in turn; many store what the previous one stored on some backends, not on others.
WRITES: list[dict[str, Any]] = [
    {"amount": Decimal("1.005"), "stamp": NOON.replace(microsecond=123456), "code": "ab"},
    {"amount": Decimal("1.001")},  # 1.01 -> 1.00 where 1.005 was rounded up; SQLite kept 1.00
    {"amount": Decimal("1.004")},  # stores 1.00 again: nothing changed
    {"amount": Decimal("1.00")},  # the same, written exactly
    {"stamp": NOON.replace(microsecond=654321)},  # MariaDB keeps whole seconds only
    {"stamp": NOON},
    {"at": dt.time(8, 30, 0, 250000)},  # MariaDB's TIME keeps whole seconds too
    {"at": dt.time(8, 30, 0, 750000)},
    {"code": "ab "},  # PostgreSQL pads to "ab   ", MariaDB strips to "ab"
    {"code": "ab   "},
    {"code": "abcde"},
    {"happened": dt.datetime(2024, 6, 1, 12, 0, 0, 500000, tzinfo=HERE)},
    {"happened": dt.datetime(2024, 6, 1, 5, 0, 0, 500000, tzinfo=THERE)},  # the same instant
    {"happened": dt.datetime(2024, 6, 1, 10, 0, 0, 500000)},  # naive: the same on SQLite/MariaDB
    {"ratio": 1 / 3},  # single precision on MariaDB
    {"ratio": 0.333333333},
    {"email": "Alice@Example.COM"},  # EmailType lower-cases on the way in
    {"email": "ALICE@example.com"},  # stored as the same address: nothing changed
    {"qty": 5},
    {"qty": "5"},  # a str in an integer column: stored as the integer 5, nothing changed
    {"qty": True},  # stored as 1
    {"day": dt.date(2024, 1, 1)},
    {"day": dt.datetime(2024, 1, 1, 15, 30)},  # a datetime in a DATE column: the date is stored
    {"name": "x"},
    {"amount": Decimal("2.499"), "name": "y", "code": "xy"},
]


def same(a: Any, b: Any) -> bool:
    """Equal, of the same type, the same digits (Decimal), both naive or both aware."""
    if type(a) is not type(b) or a != b:
        return False
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, dt.datetime | dt.time):
        # Aware values are instants: PostgreSQL gives them back in the session's time zone.
        return (a.tzinfo is None) is (b.tzinfo is None)
    return True


def live(sessions: Sessions, model: type[Any]) -> dict[str, Any]:
    """The live row of record 1 as a fresh session loads it."""
    with sessions() as session:
        obj = session.get(model, 1)
        assert obj is not None
        values = {key: getattr(obj, key) for key in (*KEYS, "version") if hasattr(obj, key)}
        session.rollback()
    return values


def assert_agrees(
    version: Version, before: Mapping[str, Any] | None, after: Mapping[str, Any], where: str
) -> None:
    """``version`` records exactly the step from live row ``before`` to live row ``after``."""
    for key, value in after.items():
        assert same(version.state[key], value), f"{where}: state[{key}] {version.state[key]!r}"
    if before is None:
        return
    differing = {key for key in after if not same(before[key], after[key])}
    assert set(version.changes) == differing, f"{where}: {dict(version.changes)} vs {differing}"
    for key in differing:
        old, new = version.changes[key]
        assert same(old, before[key]), f"{where}: old {key} {old!r} != {before[key]!r}"
        assert same(new, after[key]), f"{where}: new {key} {new!r} != {after[key]!r}"


def run_writes(
    sessions: Sessions,
    model: type[Any],
    write: Callable[[dict[str, Any]], None],
) -> None:
    """Apply WRITES one by one; after each, history agrees with the live rows around it."""
    previous = live(sessions, model)
    count = len(read(sessions, model, 1))
    for step, values in enumerate(WRITES):
        write(values)
        current = live(sessions, model)
        versions = read(sessions, model, 1)
        where = f"write {step} {values}"
        if all(same(previous[k], current[k]) for k in current):
            assert len(versions) == count, f"{where}: stored nothing new, recorded {versions[-1]}"
        else:
            assert len(versions) == count + 1, f"{where}: the row changed, nothing recorded"
            assert versions[-1].operation is Operation.UPDATE
            assert_agrees(versions[-1], previous, current, where)
        previous, count = current, len(versions)


def test_insert_snapshot_is_the_stored_row(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    values = {
        "amount": Decimal("1.005"),
        "stamp": NOON.replace(microsecond=999999),
        "code": "ab ",
        "happened": dt.datetime(2024, 6, 1, 12, 0, 0, 500000, tzinfo=HERE),
        "ratio": 1 / 3,
        "email": "Bob@Example.ORG",
        "name": "n",
    }
    with sessions() as session:
        session.add(Stored(id=1, **values))
        session.commit()
    [insert] = read(sessions, Stored, 1)
    row = live(sessions, Stored)
    assert row["amount"] == Decimal("1.01") or row["amount"] == Decimal("1.00")  # SQLite: float
    assert_agrees(insert, None, row, "insert")
    assert {key: new for key, (_, new) in insert.changes.items()} == {"id": 1} | {
        key: value for key, value in insert.state.items() if key != "id" and value is not None
    }


def test_unit_of_work_records_stored_values(create_tables: Tables, sessions: Sessions) -> None:
    """Each write in its own session: old values come from the row read before the flush."""
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Stored(id=1))
        session.commit()

    def write(values: dict[str, Any]) -> None:
        with sessions() as session:
            obj = session.get(Stored, 1)
            for key, value in values.items():
                setattr(obj, key, value)
            session.commit()

    run_writes(sessions, Stored, write)


@pytest.mark.parametrize("model", [Stored, Locked], ids=["read-before", "version_id_col"])
def test_a_session_keeping_what_it_sent(
    create_tables: Tables, sessions: Sessions, model: type[Any]
) -> None:
    """One session without expiry holds the values it sent (SQLAlchemy's behaviour), never the
    stored ones; history must not take them as the old values of the next change."""
    create_tables(Base.metadata)
    session = sessions(expire_on_commit=False)
    obj = model(id=1, **dict.fromkeys(KEYS))  # every value loaded: none is read before a flush
    session.add(obj)
    session.commit()

    def write(values: dict[str, Any]) -> None:
        for key, value in values.items():
            setattr(obj, key, value)
        session.commit()

    run_writes(sessions, model, write)
    assert obj.amount == Decimal("2.499")  # the session keeps the value sent, as SQLAlchemy does


def test_one_flush_with_several_changes(create_tables: Tables, sessions: Sessions) -> None:
    """Two flushes of one transaction: the second's old values are what the first stored."""
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Stored(id=1, amount=Decimal("0.50")))
        session.commit()
    before = live(sessions, Stored)
    with sessions() as session:
        obj = session.get(Stored, 1)
        assert obj is not None
        obj.amount = Decimal("1.006")
        session.flush()
        obj.amount = Decimal("1.009")  # 1.01 as well: nothing changes in the second flush
        session.flush()
        obj.name = "z"
        session.commit()
    after = live(sessions, Stored)
    versions = read(sessions, Stored, 1)
    assert len(versions) == 3, versions
    assert_agrees(versions[1], before, after | {"name": None}, "first flush")
    assert versions[2].changes == {"name": (None, "z")}


def test_statements_record_stored_values(create_tables: Tables, sessions: Sessions) -> None:
    """ORM ``update()`` and ``insert()`` read rows back: the same agreement."""
    create_tables(Base.metadata)
    with sessions() as session:
        session.execute(
            sa.insert(Stored).values(
                id=1, amount=Decimal("1.005"), code="ab ", stamp=NOON.replace(microsecond=5)
            )
        )
        session.commit()
    [insert] = read(sessions, Stored, 1)
    assert_agrees(insert, None, live(sessions, Stored), "insert statement")

    def write(values: dict[str, Any]) -> None:
        with sessions() as session:
            session.execute(sa.update(Stored).where(Stored.id == 1).values(**values))
            session.commit()

    run_writes(sessions, Stored, write)


def test_upserts_record_stored_values(
    create_tables: Tables, sessions: Sessions, backend: str
) -> None:
    """An upsert that meets an existing row compares what it stored with what was there."""
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Stored(id=1, amount=Decimal("1.01"), name="a"))
        session.commit()

    def write(values: dict[str, Any]) -> None:
        statement = upsert_insert(backend).values(id=1, **values)
        if backend == "mariadb":
            statement = statement.on_duplicate_key_update(
                {key: getattr(statement.inserted, key) for key in values}
            )
        else:
            statement = statement.on_conflict_do_update(
                index_elements=["id"],
                set_={key: getattr(statement.excluded, key) for key in values},
            )
        with sessions() as session:
            session.execute(statement)
            session.commit()

    run_writes(sessions, Stored, write)


def upsert_insert(backend: str) -> Any:
    if backend == "postgresql":
        return postgresql.insert(Stored)
    if backend == "sqlite":
        return sqlite.insert(Stored)
    return mysql.insert(Stored)


class Priced(Versioned, Base):
    """Joined inheritance: the subclass's own inexact column is read back through the join."""

    __tablename__ = "sv_priced"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(20))
    base_amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "priced"}


class Discounted(Priced):
    __tablename__ = "sv_discounted"
    id: Mapped[int] = mapped_column(sa.ForeignKey("sv_priced.id"), primary_key=True)
    discount: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
    __mapper_args__ = {"polymorphic_identity": "discounted"}


def test_joined_inheritance_reads_back_subclass_columns(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Discounted(id=1, base_amount=Decimal("9.996"), discount=Decimal("0.125")))
        session.add(Priced(id=2, base_amount=Decimal("5.555")))
        session.commit()
        obj = session.get(Discounted, 1)
        assert obj is not None
        obj.discount = Decimal("0.1251")  # stored as it was: nothing changes
        obj.base_amount = Decimal("1.116")
        session.commit()
    with sessions() as session:
        live_rows = {
            o.id: (o.base_amount, getattr(o, "discount", None))
            for o in session.scalars(sa.select(Priced).order_by(Priced.id))
        }
        session.rollback()
    insert, update = read(sessions, Discounted, 1)
    [other] = read(sessions, Priced, 2)
    assert live_rows[2][0] == other.state["base_amount"]
    assert str(other.state["base_amount"]) == str(live_rows[2][0])
    assert insert.model is Discounted
    first_discount = insert.state["discount"]
    assert first_discount in (Decimal("0.12"), Decimal("0.13"))  # SQLite: float rounding
    assert update.changes["base_amount"][1] == live_rows[1][0] == Decimal("1.12")
    assert "discount" not in update.changes or update.changes["discount"] == (
        first_discount,
        live_rows[1][1],
    )
    assert update.state["discount"] == live_rows[1][1]


class _Selects:
    """Counts the SELECTs sent to one live table."""

    def __init__(self, engine: sa.Engine, table: str) -> None:
        self.engine, self.table = engine, table
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = statement.lstrip().upper()
        if text.startswith("SELECT") and f"FROM {self.table.upper()}" in text.replace("`", ""):
            self.statements.append(statement)

    def __enter__(self) -> _Selects:
        event.listen(self.engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self)


def test_values_stored_as_sent_cost_no_query(
    create_tables: Tables, sessions: Sessions, engine: sa.Engine, backend: str
) -> None:
    """Only a flush that wrote a value the database may change reads rows back: one SELECT per
    model for all of them; values known to be stored as sent (the common case) cost nothing."""
    create_tables(Base.metadata)
    exact = {
        "amount": Decimal("12.30"),
        "stamp": NOON,
        "at": dt.time(8, 30),
        "code": "abcde",
        "happened": dt.datetime(2024, 1, 1, tzinfo=dt.UTC) if backend == "postgresql" else None,
        "ratio": 0.5 if backend != "mariadb" else None,
        "email": "a@example.com",
        "qty": 3,
        "day": dt.date(2024, 1, 1),
        "name": "n",
    }
    with sessions() as session, _Selects(engine, "sv_items") as counter:
        session.add_all([Stored(id=i, **exact) for i in range(1, 11)])
        session.commit()
    assert counter.statements == []
    with sessions() as session, _Selects(engine, "sv_items") as counter:
        session.add_all([Stored(id=i, amount=Decimal("1.005")) for i in range(11, 31)])
        session.add_all([Stored(id=i, name="plain") for i in range(31, 41)])
        session.commit()
    assert len(counter.statements) == 1, counter.statements
    with sessions() as session:
        amounts = {v.state["amount"] for i in range(11, 31) for v in history(session, Stored, i)}
        session.rollback()
    assert len(amounts) == 1 and amounts <= {Decimal("1.01"), Decimal("1.00")}


def test_masked_long_text_over_64k(create_tables: Tables, sessions: Sessions) -> None:
    """Class 20: the masked copy of a long text fits its snapshot column on every backend."""
    engine = create_tables(Base.metadata)
    first, second = "a" * 70_000 + "1234", "b" * 200_000 + "5678"
    with sessions() as session:
        session.add(Secret(id=1, body=first))
        session.commit()
        obj = session.get(Secret, 1)
        assert obj is not None
        obj.body = second
        session.commit()
    insert, update = read(sessions, Secret, 1)
    assert insert.state["body"] == versioning.masks.last4(first)
    assert update.state["body"] == versioning.masks.last4(second)
    assert update.changes["body"] == (versioning.masks.last4(first), versioning.masks.last4(second))
    with engine.connect() as connection:
        assert connection.scalar(sa.select(Secret.body)) == second
    if engine.dialect.name in ("mysql", "mariadb"):
        column = versioning.history_table(Secret).c.body
        assert isinstance(column.type.dialect_impl(engine.dialect), mysql.LONGTEXT)


# --- class 6: PostgreSQL arrays decode by item type -------------------------------------------


class ArrayBase(DeclarativeBase):
    pass


class Shade(enum.Enum):
    LIGHT = "light"
    DARK = "dark"


class Arrays(Versioned, ArrayBase):
    __tablename__ = "sv_arrays"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    days: Mapped[Any] = mapped_column(postgresql.ARRAY(sa.Date), nullable=True)
    amounts: Mapped[Any] = mapped_column(postgresql.ARRAY(sa.Numeric(10, 2)), nullable=True)
    stamps: Mapped[Any] = mapped_column(postgresql.ARRAY(sa.DateTime), nullable=True)
    uids: Mapped[Any] = mapped_column(postgresql.ARRAY(sa.Uuid), nullable=True)
    shades: Mapped[Any] = mapped_column(
        postgresql.ARRAY(sa.Enum(Shade, name="sv_shade")), nullable=True
    )
    grid: Mapped[Any] = mapped_column(postgresql.ARRAY(sa.Integer, dimensions=2), nullable=True)
    plain: Mapped[Any] = mapped_column(sa.ARRAY(sa.Numeric(10, 2)), nullable=True)


ARRAYS_FIRST: dict[str, Any] = {
    "days": [dt.date(2024, 1, 1), dt.date(2024, 2, 29)],
    "amounts": [Decimal("1.50"), Decimal("-0.01")],
    "stamps": [dt.datetime(2024, 1, 1, 8, 30, 0, 123456)],
    "uids": [uuid.UUID(int=1), uuid.UUID(int=2)],
    "shades": [Shade.LIGHT],
    "grid": [[1, 2], [3, 4]],
    "plain": [Decimal("0.10")],
}
ARRAYS_SECOND: dict[str, Any] = {
    "days": [dt.date(1999, 12, 31)],
    "amounts": [Decimal("1.005"), Decimal("2")],  # stored as 1.01 and 2.00
    "stamps": [dt.datetime(2000, 1, 1), dt.datetime(2001, 1, 1, 0, 0, 1)],
    "uids": [uuid.UUID(int=3)],
    "shades": [Shade.DARK, Shade.LIGHT],
    "grid": [[5, 6], [7, 8]],
    "plain": [Decimal("9.99"), Decimal("0.00")],
}


def _typed(actual: Any, expected: Any) -> bool:
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(_typed(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return same(actual, expected)


@pytest.mark.backends("postgresql")
def test_arrays_come_back_typed(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(ArrayBase.metadata)
    with sessions() as session:
        session.add(Arrays(id=1, **ARRAYS_FIRST))
        session.commit()
        obj = session.get(Arrays, 1)
        assert obj is not None
        for key, value in ARRAYS_SECOND.items():
            setattr(obj, key, value)
        session.commit()
    with sessions() as session:
        obj = session.get(Arrays, 1)
        assert obj is not None
        stored = {key: getattr(obj, key) for key in ARRAYS_SECOND}
        session.rollback()
    assert stored["amounts"] == [Decimal("1.01"), Decimal("2.00")]
    insert, update = read(sessions, Arrays, 1)
    for key, value in ARRAYS_FIRST.items():
        assert _typed(insert.state[key], value), (key, insert.state[key])
        old, new = update.changes[key]
        assert _typed(old, value), (key, old, value)
        assert _typed(new, stored[key]), (key, new, stored[key])
        assert _typed(update.state[key], stored[key]), (key, update.state[key])


# --- class 7: history stays readable when the model's types change -----------------------------


class Tone(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class ToneWithoutBlue(enum.Enum):
    RED = "red"
    GREEN = "green"


def _paint_model(tones: type[enum.Enum], sizes: sa.types.TypeEngine[Any]) -> type[Any]:
    """The same table declared afresh (a new MetaData), as after a deploy that changed types."""

    class Fresh(DeclarativeBase):
        pass

    class Paint(Versioned, Fresh):
        __tablename__ = "sv_paint"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        tone: Mapped[Any] = mapped_column(sa.Enum(tones, name="sv_tone"), nullable=True)
        label: Mapped[Any] = mapped_column(
            sa.Enum(tones, name="sv_label", native_enum=False, length=10), nullable=True
        )
        size: Mapped[Any] = mapped_column(sizes, nullable=True)

    return Paint


def test_history_outlives_a_removed_enum_member_and_a_changed_type(
    create_tables: Tables, sessions: Sessions
) -> None:
    """A value the model's type no longer accepts comes back as stored, as a ``str``: the rest of
    the record's history (and the other values of that version) reads as usual."""
    old_model = _paint_model(Tone, sa.String(20))
    create_tables(old_model.metadata)
    with sessions() as session:
        session.add(old_model(id=1, tone=Tone.BLUE, label=Tone.BLUE, size="large"))
        session.commit()
        obj = session.get(old_model, 1)
        obj.tone, obj.label, obj.size = Tone.RED, Tone.GREEN, "small"
        session.commit()
    new_model = _paint_model(ToneWithoutBlue, sa.Date())
    insert, update = read(sessions, new_model, 1)
    assert insert.state == {"id": 1, "tone": "BLUE", "label": "BLUE", "size": "large"}
    assert insert.changes == {
        "id": (None, 1),
        "tone": (None, "BLUE"),
        "label": (None, "BLUE"),
        "size": (None, "large"),
    }
    assert update.state["tone"] is ToneWithoutBlue.RED
    assert update.state["label"] is ToneWithoutBlue.GREEN
    assert update.state["size"] == "small"
    assert update.changes == {
        "tone": ("BLUE", ToneWithoutBlue.RED),
        "label": ("BLUE", ToneWithoutBlue.GREEN),
        "size": ("large", "small"),
    }
    with sessions() as session:
        then = as_of(session, new_model, 1, insert.transaction_id)
        assert then is not None and (then.tone, then.label, then.size) == ("BLUE", "BLUE", "large")
        at = version_at(session, new_model, 1, insert.transaction_id)
        assert at is not None and at.state["tone"] == "BLUE"
        assert [v.operation for v in history(session, new_model, 1)] == [
            Operation.INSERT,
            Operation.UPDATE,
        ]
        session.rollback()


# --- pure logic: no database -------------------------------------------------------------------

DIALECTS = {
    "sqlite": sqlite.pysqlite.dialect(),
    "postgresql": postgresql.psycopg.dialect(),
    "mariadb": sa.create_engine("mariadb+pymysql://user@localhost/db").dialect,
}


def stored_as_sent(type_: sa.types.TypeEngine[Any], dialect: str, value: Any) -> bool | None:
    """``None`` when the type needs no check on ``dialect``, else the check's verdict."""
    check = stored.exactness(type_, DIALECTS[dialect])
    return None if check is None else stored.is_stored_as_sent(check, value)


@pytest.mark.parametrize(
    ("type_", "dialect", "value", "expected"),
    [
        (sa.Numeric(10, 2), "postgresql", Decimal("12.30"), True),
        (sa.Numeric(10, 2), "postgresql", Decimal("1.005"), False),
        (sa.Numeric(10, 2), "postgresql", Decimal("12.3"), False),  # comes back as 12.30
        (sa.Numeric(10, 2), "postgresql", 12, False),
        (sa.Numeric(10, 2), "mariadb", Decimal("-0.05"), True),
        (sa.Numeric(10, 2), "sqlite", Decimal("12.30"), True),
        (sa.Numeric(), "postgresql", Decimal("1.23456789"), None),  # unconstrained NUMERIC
        (sa.Numeric(), "mariadb", Decimal("1.5"), False),  # DECIMAL(10, 0) there
        (sa.Numeric(10, 2, asdecimal=False), "postgresql", 1.5, False),
        (sa.Float(), "sqlite", 1 / 3, None),
        (sa.Float(), "postgresql", 1 / 3, None),
        (sa.Float(), "mariadb", 1 / 3, False),  # single precision
        (sa.Double(), "mariadb", 1 / 3, None),
        (sa.REAL(), "postgresql", 0.5, False),
        (sa.DateTime(), "mariadb", NOON, True),
        (sa.DateTime(), "mariadb", NOON.replace(microsecond=1), False),
        (sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb"), "mariadb", NOON, True),
        (
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb"),
            "mariadb",
            NOON.replace(microsecond=1),
            True,
        ),
        (sa.DateTime(), "sqlite", NOON.replace(microsecond=1), True),
        (sa.DateTime(timezone=True), "sqlite", NOON.replace(tzinfo=dt.UTC), False),
        (sa.DateTime(timezone=True), "mariadb", NOON.replace(tzinfo=dt.UTC), False),
        (sa.DateTime(timezone=True), "postgresql", NOON.replace(tzinfo=HERE), True),
        (sa.DateTime(timezone=True), "postgresql", NOON, False),  # naive: in the session's zone
        (sa.DateTime(), "postgresql", NOON.replace(tzinfo=HERE), False),
        (postgresql.TIMESTAMP(precision=3), "postgresql", NOON.replace(microsecond=1000), True),
        (postgresql.TIMESTAMP(precision=3), "postgresql", NOON.replace(microsecond=1), False),
        (sa.Time(), "mariadb", dt.time(1, 2, 3, 4), False),
        (sa.Time(), "postgresql", dt.time(1, 2, 3, 4), True),
        (sa.CHAR(5), "postgresql", "abcde", True),
        (sa.CHAR(5), "postgresql", "ab", False),
        (sa.CHAR(5), "mariadb", "ab", True),
        (sa.CHAR(5), "mariadb", "ab ", False),
        (sa.CHAR(5), "sqlite", "ab ", None),
        (sa.BINARY(4), "mariadb", b"ab", False),
        (sa.BINARY(4), "mariadb", b"abcd", True),
        (sa.Interval(), "mariadb", dt.timedelta(seconds=1, microseconds=5), False),
        (sa.Interval(), "postgresql", dt.timedelta(seconds=1, microseconds=5), None),
        (sa.Integer(), "postgresql", 5, True),
        (sa.Integer(), "postgresql", "5", False),
        (sa.Integer(), "mariadb", True, False),
        (sa.String(10), "mariadb", "x ", True),
        (sa.Date(), "sqlite", dt.datetime(2024, 1, 1), False),
        (sa.Enum(Shade), "postgresql", Shade.DARK, True),
        (sa.Enum(Shade), "postgresql", "DARK", False),
        (sa.JSON(), "postgresql", {"a": 1}, None),
        (su.EmailType(50), "postgresql", "A@B.C", None),  # normalised by its own bind
        (postgresql.ARRAY(sa.Integer), "postgresql", [1], None),
        (postgresql.ARRAY(sa.Numeric(10, 2)), "postgresql", [Decimal("1.00")], False),
        (postgresql.INET(), "postgresql", "10.0.0.1/32", False),  # unknown: read back
        (sa.Numeric(10, 2), "sqlite", None, True),
    ],
)
def test_which_values_are_stored_as_sent(
    type_: sa.types.TypeEngine[Any], dialect: str, value: Any, expected: bool | None
) -> None:
    assert stored_as_sent(type_, dialect, value) is expected


def test_decode_arrays_by_item_type_and_keep_what_no_longer_fits() -> None:
    dialect = DIALECTS["postgresql"]
    array = postgresql.ARRAY(sa.Date, dimensions=2)
    data = encode(array, [[dt.date(2024, 1, 2)], [dt.date(2024, 1, 3)]], dialect, "x")
    assert data == [["2024-01-02"], ["2024-01-03"]]
    assert decode(array, data, dialect) == [[dt.date(2024, 1, 2)], [dt.date(2024, 1, 3)]]
    enums = postgresql.ARRAY(sa.Enum(Shade, name="sv_shade"))
    assert decode(enums, ["DARK", "LIGHT"], dialect) == [Shade.DARK, Shade.LIGHT]
    assert decode(sa.Enum(ToneWithoutBlue), "BLUE", dialect) == "BLUE"
    assert decode(sa.Date(), "large", dialect) == "large"
    assert decode(sa.Numeric(10, 2), "n/a", dialect) == "n/a"
    assert decode(sa.Numeric(10, 2), "1.50", dialect) == Decimal("1.50")
