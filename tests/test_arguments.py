"""Arguments of ``history``, ``as_of``, ``version_at`` and ``restore`` (sync and async) are checked
before any query, and a bad one raises the same ``ArgumentError`` on every backend.

The tables of bad inputs run without a database: the sessions have no bind, so a call that got
past the checks would fail with ``UnboundExecutionError`` instead. The tests taking ``engine`` show
on each backend that valid keys of every type work and that a refused call wrote nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

import versioning
import versioning.asyncio
from versioning import ArgumentError, Operation, Versioned, arguments, as_of, history, restore
from versioning.reading import version_at

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

DOC_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
REF_ID = "6f1c2c1e-5d3a-4c1b-9a7e-0d5c3b2a1f00"


class Base(DeclarativeBase):
    pass


class Color(enum.Enum):
    RED = "r"
    BLUE = "b"


class Order(Versioned, Base):
    __tablename__ = "args_orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(sa.String(20))


class Tag(Versioned, Base):
    __tablename__ = "args_tags"
    name: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20))


class Doc(Versioned, Base):
    __tablename__ = "args_docs"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20))


class Ref(Versioned, Base):
    """A UUID key whose attribute holds strings (``as_uuid=False``)."""

    __tablename__ = "args_refs"
    id: Mapped[str] = mapped_column(sa.Uuid(as_uuid=False), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20))


class Line(Versioned, Base):
    __tablename__ = "args_lines"
    order_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20))


class Swatch(Versioned, Base):
    __tablename__ = "args_swatches"
    color: Mapped[Color] = mapped_column(sa.Enum(Color, native_enum=False), primary_key=True)
    day: Mapped[dt.date] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20))


#: (model, key): a valid key of each kind, and the record it names (``create``).
VALID: list[tuple[type[Any], Any, dict[str, Any]]] = [
    (Order, 1, {"id": 1}),
    (Order, [1], {"id": 1}),
    (Order, {"id": 1}, {"id": 1}),
    (Tag, "ann", {"name": "ann"}),
    (Doc, DOC_ID, {"id": DOC_ID}),
    (Ref, REF_ID, {"id": REF_ID}),
    (Ref, uuid.UUID(REF_ID), {"id": REF_ID}),
    (Ref, REF_ID.upper().replace("-", ""), {"id": REF_ID}),
    (Line, (1, "a"), {"order_id": 1, "code": "a"}),
    (Line, [1, "a"], {"order_id": 1, "code": "a"}),
    (Line, {"code": "a", "order_id": 1}, {"order_id": 1, "code": "a"}),
    (Swatch, (Color.RED, dt.date(2024, 1, 2)), {"color": Color.RED, "day": dt.date(2024, 1, 2)}),
    (Swatch, ("BLUE", dt.date(2024, 1, 2)), {"color": Color.BLUE, "day": dt.date(2024, 1, 2)}),
]

#: (model, bad key, the whole message, identical for every function and backend).
BAD_KEYS: list[tuple[type[Any], Any, str]] = [
    (
        Order,
        "1",
        "Order.id is a key column of type Integer(): pass an int, got '1' (str) (convert it "
        "yourself: int('1'), and refuse what does not convert)",
    ),
    (Order, "abc", "Order.id is a key column of type Integer(): pass an int, got 'abc' (str)"),
    (
        Order,
        None,
        "Order.id is None in the key given: no record has a NULL primary key; pass the key of "
        "the record",
    ),
    (Order, True, "Order.id is a key column of type Integer(): pass an int, got True (bool)"),
    (Order, 1.0, "Order.id is a key column of type Integer(): pass an int, got 1.0 (float)"),
    (
        Order,
        2**63,
        "Order.id is a key column of type Integer(): pass an int from -9223372036854775808 to "
        "9223372036854775807, got 9223372036854775808 (int); no database integer holds it",
    ),
    (
        Order,
        {"ident": 1},
        "Order has the primary key (id): the dict must have exactly these keys, got "
        "['ident']; pass one id value (or a tuple or list holding it)",
    ),
    (
        Order,
        (1, 2),
        "Order has the primary key (id): pass one id value (or a tuple or list holding it), got "
        "(1, 2)",
    ),
    (
        Order,
        (),
        "Order has the primary key (id): pass one id value (or a tuple or list holding it), got ()",
    ),
    (Tag, 1, "Tag.name is a key column of type String(length=20): pass a str, got 1 (int)"),
    (
        Tag,
        "a\x00b",
        "Tag.name is a key column of type String(length=20): pass a str without NUL, got 'a\\x00b' "
        "(str); PostgreSQL cannot store a NUL in text",
    ),
    (
        Tag,
        "a\ud800",
        "Tag.name is a key column of type String(length=20): pass a str without lone "
        "surrogates, got 'a\\ud800' (str); it cannot be encoded as UTF-8",
    ),
    (
        Doc,
        str(DOC_ID),
        f"Doc.id is a key column of type Uuid(): pass a uuid.UUID, got '{DOC_ID}' (str) "
        f"(convert it yourself: uuid.UUID('{DOC_ID}'))",
    ),
    (Doc, "abc", "Doc.id is a key column of type Uuid(): pass a uuid.UUID, got 'abc' (str)"),
    (
        Doc,
        DOC_ID.int,
        f"Doc.id is a key column of type Uuid(): pass a uuid.UUID, got {DOC_ID.int} (int)",
    ),
    (
        Ref,
        "abc",
        "Ref.id is a key column of type Uuid(as_uuid=False): pass a UUID string such as "
        "'12345678-1234-5678-1234-567812345678', or a uuid.UUID, got 'abc' (str)",
    ),
    (
        Line,
        1,
        "Line has the primary key (order_id, code): pass a tuple or list of 2 values in the "
        "order (order_id, code), or a dict by attribute name {'order_id': ..., 'code': ...}, "
        "got 1",
    ),
    (
        Line,
        (1, "a", 3),
        "Line has the primary key (order_id, code): pass a tuple or list of 2 values in the "
        "order (order_id, code), or a dict by attribute name {'order_id': ..., 'code': ...}, "
        "got (1, 'a', 3)",
    ),
    (
        Line,
        (1, None),
        "Line.code is None in the key given: no record has a NULL primary key; pass the key of "
        "the record",
    ),
    (
        Line,
        ("1", "a"),
        "Line.order_id is a key column of type Integer(): pass an int, got '1' (str) (convert it "
        "yourself: int('1'), and refuse what does not convert)",
    ),
    (
        Line,
        {"order_id": 1},
        "Line has the primary key (order_id, code): the dict must have exactly these keys, "
        "got ['order_id']; pass a tuple or list of 2 values in the order "
        "(order_id, code), or a dict by attribute name {'order_id': ..., 'code': ...}",
    ),
    (
        Line,
        {"order_id": 1, "code": 2},
        "Line.code is a key column of type String(length=20): pass a str, got 2 (int)",
    ),
    (
        Swatch,
        ("GREEN", dt.date(2024, 1, 2)),
        "Swatch.color is a key column of type Enum('RED', 'BLUE', name='color', "
        "native_enum=False): pass a Color member or its name, one of ['RED', 'BLUE'], got "
        "'GREEN' (str)",
    ),
    (
        Swatch,
        (Color.RED, dt.datetime(2024, 1, 2, tzinfo=dt.UTC)),
        "Swatch.day is a key column of type Date(): pass a datetime.date, got "
        "datetime.datetime(2024, 1, 2, 0, 0, tzinfo=datetime.timezone.utc) (datetime)",
    ),
]


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


#: Each reader and ``restore``, sync and async, called with (session, model, key); the async
#: forms get an ``AsyncSession`` without a bind, the sync ones a ``Session`` without one.
FUNCTIONS: dict[str, Callable[[type[Any], Any], Any]] = {
    "history": lambda model, key: history(Session(), model, key),
    "as_of": lambda model, key: as_of(Session(), model, key, 1),
    "version_at": lambda model, key: version_at(Session(), model, key, 1),
    "restore": lambda model, key: restore(Session(), model, key, at=1),
    "async history": lambda model, key: run(versioning.asyncio.history(AsyncSession(), model, key)),
    "async as_of": lambda model, key: run(versioning.asyncio.as_of(AsyncSession(), model, key, 1)),
    "async version_at": lambda model, key: run(
        versioning.asyncio.version_at(AsyncSession(), model, key, 1)
    ),
    "async restore": lambda model, key: run(
        versioning.asyncio.restore(AsyncSession(), model, key, at=1)
    ),
}


@pytest.mark.parametrize("function", list(FUNCTIONS))
@pytest.mark.parametrize(
    ("model", "key", "message"), BAD_KEYS, ids=[f"{m.__name__}-{k!r}" for m, k, _ in BAD_KEYS]
)
def test_a_bad_key_is_refused_before_any_query(
    function: str, model: type[Any], key: Any, message: str
) -> None:
    with pytest.raises(ArgumentError) as raised:
        FUNCTIONS[function](model, key)
    assert str(raised.value) == message
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, TypeError)


@pytest.mark.parametrize("function", list(FUNCTIONS))
@pytest.mark.parametrize(
    ("model", "key", "_"), VALID, ids=[f"{m.__name__}-{k!r}" for m, k, _ in VALID]
)
def test_a_valid_key_gets_to_the_query(
    function: str, model: type[Any], key: Any, _: dict[str, Any]
) -> None:
    """The same keys pass the checks: the unbound session is the first thing to fail."""
    with pytest.raises(sa.exc.UnboundExecutionError):
        FUNCTIONS[function](model, key)


def test_keys_are_normalised_to_what_the_column_stores() -> None:
    spec = versioning.declaration.require_spec

    class Number:
        def __index__(self) -> int:
            return 7

    class Small(enum.IntEnum):
        ONE = 1

    for given, expected in ((Number(), 7), (Small.ONE, 1), (-(2**63), -(2**63))):
        [value] = arguments.primary_key(spec(Order), given)
        assert value == expected and type(value) is int
    assert arguments.primary_key(spec(Line), {"code": "a", "order_id": 1}) == (1, "a")

    class Code(enum.StrEnum):
        ANN = "ann"

    [name] = arguments.primary_key(spec(Tag), Code.ANN)
    assert name == "ann" and type(name) is str
    assert arguments.primary_key(spec(Ref), uuid.UUID(REF_ID)) == (REF_ID,)
    assert arguments.primary_key(spec(Ref), "{" + REF_ID.upper() + "}") == (REF_ID,)
    assert arguments.primary_key(spec(Doc), DOC_ID)[0] is DOC_ID
    day = dt.date(2024, 1, 2)
    assert arguments.primary_key(spec(Swatch), ("RED", day)) == ("RED", day)


ENGINE = sa.create_engine("sqlite://")

#: (sync function name, a call with ``session`` in first place).
SYNC: dict[str, Callable[[Any], Any]] = {
    "history": lambda session: history(session, Order, 1),
    "as_of": lambda session: as_of(session, Order, 1, 1),
    "version_at": lambda session: version_at(session, Order, 1, 1),
    "restore": lambda session: restore(session, Order, 1, at=1),
}
ASYNC: dict[str, Callable[[Any], Any]] = {
    "history": lambda session: run(versioning.asyncio.history(session, Order, 1)),
    "as_of": lambda session: run(versioning.asyncio.as_of(session, Order, 1, 1)),
    "version_at": lambda session: run(versioning.asyncio.version_at(session, Order, 1, 1)),
    "restore": lambda session: run(versioning.asyncio.restore(session, Order, 1, at=1)),
}


@pytest.mark.parametrize("function", list(SYNC))
@pytest.mark.parametrize(
    ("given", "advice"),
    [
        (ENGINE, "got an Engine: open one: with Session(engine) as session: versioning.{f}("),
        (
            AsyncSession(),
            "got an AsyncSession: with an AsyncSession, call await "
            "versioning.asyncio.{f}(session, ...)",
        ),
        (sessionmaker(ENGINE), "got a sessionmaker: call the factory"),
        (None, "got a NoneType: e.g. with Session(engine) as session"),
        ("session", "got a str: e.g. with Session(engine) as session"),
    ],
    ids=["engine", "async-session", "sessionmaker", "none", "str"],
)
def test_the_sync_functions_take_a_session(function: str, given: Any, advice: str) -> None:
    with pytest.raises(ArgumentError) as raised:
        SYNC[function](given)
    message = str(raised.value)
    assert message.startswith(f"versioning.{function}() takes a sqlalchemy.orm.Session, ")
    assert advice.format(f=function) in message


def test_a_scoped_session_reads_with_its_current_session() -> None:
    """``scoped_session`` (Flask-SQLAlchemy's ``db.session``) and ``async_scoped_session`` are
    resolved to their current session: the call gets past the checks to the (unbound) query."""
    scoped = scoped_session(sessionmaker())
    for call in SYNC.values():
        with pytest.raises(sa.exc.UnboundExecutionError):
            call(scoped)
    scoped.remove()
    async_scoped = async_scoped_session(async_sessionmaker(), scopefunc=lambda: "one")
    for call in ASYNC.values():
        with pytest.raises(sa.exc.UnboundExecutionError):
            call(async_scoped)


def test_a_connection_is_not_a_session() -> None:
    with ENGINE.connect() as connection:
        for function, call in SYNC.items():
            with pytest.raises(ArgumentError, match=r"Session\(bind=connection\)"):
                call(connection)
            assert not connection.in_transaction(), function


@pytest.mark.parametrize("function", list(ASYNC))
@pytest.mark.parametrize(
    ("given", "advice"),
    [
        (Session(), "got a Session: with a sync Session, call versioning.{f}(session, ...)"),
        (
            create_async_engine("sqlite+aiosqlite://"),
            "got an AsyncEngine: open one: async with AsyncSession(async_engine) as session",
        ),
        (async_sessionmaker(), "got an async_sessionmaker: call the factory"),
        (ENGINE, "got an Engine: e.g. async with AsyncSession(async_engine) as session"),
    ],
    ids=["session", "async-engine", "async-sessionmaker", "engine"],
)
def test_the_async_functions_take_an_async_session(function: str, given: Any, advice: str) -> None:
    with pytest.raises(ArgumentError) as raised:
        ASYNC[function](given)
    message = str(raised.value)
    assert message.startswith(f"versioning.asyncio.{function}() takes an AsyncSession, ")
    assert advice.format(f=function) in message


AT_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "as_of": lambda at: as_of(Session(), Order, 1, at),
    "version_at": lambda at: version_at(Session(), Order, 1, at),
    "restore": lambda at: restore(Session(), Order, 1, at=at),
}
NAIVE = dt.datetime(2024, 1, 2, 3, 4, 5)


@pytest.mark.parametrize("function", list(AT_FUNCTIONS))
@pytest.mark.parametrize(
    ("at", "message"),
    [
        (
            NAIVE,
            "versioning.{f}() needs a timezone-aware datetime, got the naive "
            "datetime.datetime(2024, 1, 2, 3, 4, 5); e.g. datetime.now(timezone.utc)",
        ),
        (
            "2024-01-02",
            "versioning.{f}(): at must be a timezone-aware datetime or a transaction id (an "
            "int), got '2024-01-02' (str)",
        ),
        (
            dt.date(2024, 1, 2),
            "versioning.{f}(): at must be a timezone-aware datetime or a transaction id (an "
            "int), got datetime.date(2024, 1, 2) (date)",
        ),
        (
            1.5,
            "versioning.{f}(): at must be a timezone-aware datetime or a transaction id (an "
            "int), got 1.5 (float)",
        ),
        (
            True,
            "versioning.{f}(): at must be a timezone-aware datetime or a transaction id (an "
            "int), got True (bool)",
        ),
        (
            2**63,
            "versioning.{f}(): the transaction id 9223372036854775808 is outside "
            "-9223372036854775808 to 9223372036854775807; for the latest state, pass "
            "datetime.now(timezone.utc)",
        ),
        (
            dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "versioning.{f}(): datetime.datetime(1, 1, 1, 0, 0, tzinfo=datetime.timezone("
            "datetime.timedelta(seconds=3600))) is outside the years 1 to 9999 in UTC",
        ),
    ],
    ids=["naive", "str", "date", "float", "bool", "too-big", "overflow"],
)
def test_a_bad_at_is_refused_before_any_query(function: str, at: Any, message: str) -> None:
    with pytest.raises(ArgumentError) as raised:
        AT_FUNCTIONS[function](at)
    assert str(raised.value) == message.format(f=function)


def test_none_for_at() -> None:
    with pytest.raises(ArgumentError, match=r"at must be a timezone-aware datetime"):
        as_of(Session(), Order, 1, None)  # type: ignore[call-overload]
    with pytest.raises(ArgumentError, match=r"restore\(session, Model, pk, at=\.\.\.\)"):
        restore(Session(), Order, 1)  # type: ignore[call-overload]


def test_the_shape_of_the_call() -> None:
    """Which of the record's forms each function takes, and what it says otherwise."""
    order = Order(id=1, status="new")
    with pytest.raises(ArgumentError, match=r"history\(session, Order, pk\)"):
        history(Session(), Order)
    with pytest.raises(ArgumentError, match=r"takes no primary key.*history\(session, Order, pk"):
        history(Session(), order, 1)
    with pytest.raises(ArgumentError, match=r"takes a model instance.*got 'Order'"):
        history(Session(), "Order", 1)
    with pytest.raises(ArgumentError, match=r"no primary key yet \(flush it first\)"):
        history(Session(), Order(status="new"))
    with pytest.raises(ArgumentError, match=r"got 'abc' \(str\)"):
        history(Session(), Order(id="abc", status="new"))
    with pytest.raises(ArgumentError, match=r"pass a key value, got an Order instance"):
        history(Session(), Order, order)
    with pytest.raises(
        ArgumentError, match=r"as_of\(\) takes a model class, got an Order inst.*type\(obj"
    ):
        as_of(Session(), order, 1, 1)
    with pytest.raises(ArgumentError, match=r"version_at\(\) takes a model class, got 'Order'"):
        version_at(Session(), "Order", 1, 1)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match=r"restore\(session, version\) or.*an Order instance"):
        restore(Session(), order, at=1)  # type: ignore[call-overload]
    with pytest.raises(versioning.ConfigurationError, match="is not a mapped class"):
        history(Session(), Color, 1)  # a class, but not a model: as for history_table()


# -- every backend ---------------------------------------------------------------------------------


def _counts(engine: sa.Engine) -> tuple[int, ...]:
    tables = [*Base.metadata.sorted_tables]
    with engine.connect() as connection:
        return tuple(
            connection.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in tables
        )


def _fill(session: Session) -> int:
    """One record of each model; returns the id of the transaction that made them."""
    for model, _, values in VALID:
        if session.get(model, tuple(values.values())) is None:
            session.add(model(**values, status="new"))
    session.commit()
    [created] = history(session, Order, 1)
    for model, _, values in VALID:
        record = session.get(model, tuple(values.values()))
        assert record is not None
        record.status = "done"
    session.commit()
    return created.transaction_id


#: Every bad key, with the message every backend gives (the issue's own cases among them).
REFUSED = BAD_KEYS


def _refused_calls_write_nothing(
    engine: sa.Engine, session: Session, call: Callable[[Session, type[Any], Any], Any]
) -> None:
    """Each refused call raises its message and writes nothing, not even the history noted so
    far in the session's transaction (a reader writes that first; a refused one must not)."""
    before = _counts(engine)
    history_table = versioning.history_table(Order)
    session.add(Order(id=2, status="pending"))
    session.flush()
    rows = session.execute(sa.select(sa.func.count()).select_from(history_table)).scalar_one()
    for model, key, message in REFUSED:
        with pytest.raises(ArgumentError) as raised:
            call(session, model, key)
        assert str(raised.value) == message
        again = session.execute(sa.select(sa.func.count()).select_from(history_table))
        assert again.scalar_one() == rows, "a refused call wrote history"
    session.rollback()
    assert _counts(engine) == before


def test_history_on_every_backend(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    _fill(session)
    for model, key, values in VALID:
        versions = history(session, model, key)
        assert [v.operation for v in versions] == [Operation.INSERT, Operation.UPDATE], key
        assert [v.state["status"] for v in versions] == ["new", "done"]
        assert versions[0].primary_key == tuple(values.values())
    assert history(session, Order, 3) == []
    # A key is compared as the database compares it: MariaDB's default collation ignores case
    # and trailing spaces, so there "ANN " is the record "ann" (as session.get finds it too).
    same = history(session, Tag, "ANN ") == history(session, Tag, "ann")
    assert same if engine.dialect.name == "mariadb" else history(session, Tag, "ANN ") == []
    assert history(session, Doc, uuid.uuid4()) == []
    # A UUID MariaDB would not store (version 8, NCS variant) is no error there either.
    assert history(session, Ref, "87654321-4321-8765-4321-876543218765") == []
    session.rollback()
    with pytest.raises(ArgumentError, match=r"takes a sqlalchemy.orm.Session, got an Engine"):
        history(engine, Order, 1)  # type: ignore[arg-type]
    _refused_calls_write_nothing(engine, session, history)


def test_as_of_and_version_at_on_every_backend(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    created = _fill(session)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    for model, key, values in VALID:
        old = as_of(session, model, key, created)
        assert old is not None and old.status == "new", key
        assert {k: getattr(old, k) for k in values} == values
        new = as_of(session, model, key, later)
        assert new is not None and new.status == "done"
        assert as_of(session, model, key, created - 1) is None
        version = version_at(session, model, key, later)
        assert version is not None and version.operation is Operation.UPDATE
    # The earliest and latest moments a datetime can hold are valid everywhere.
    first = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
    last = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    assert as_of(session, Order, 1, first) is None
    assert as_of(session, Order, 1, last).status == "done"  # type: ignore[union-attr]
    session.rollback()
    for function in (as_of, version_at):
        _refused_calls_write_nothing(engine, session, lambda s, m, k, f=function: f(s, m, k, later))
        with pytest.raises(ArgumentError, match="naive"):
            function(session, Order, 1, later.replace(tzinfo=None))


def test_restore_on_every_backend(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    created = _fill(session)
    for model, key, _values in VALID:
        live = restore(session, model, key, at=created)
        assert live.status == "new", key
        session.commit()
        live.status = "done"
        session.commit()
    _refused_calls_write_nothing(engine, session, lambda s, m, k: restore(s, m, k, at=created))
    before = _counts(engine)
    with pytest.raises(ArgumentError, match=r"takes no primary key and no `at`"):
        restore(session, history(session, Order, 1)[0], at=created)  # type: ignore[call-overload]
    session.rollback()
    assert _counts(engine) == before


def _async_url(engine: sa.Engine) -> sa.URL:
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
    return engine.url.set(drivername=driver.get(engine.dialect.name, "mariadb+aiomysql"))


def test_the_async_forms_on_every_backend(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    created = _fill(sessions())
    before = _counts(engine)

    async def main() -> None:
        async_engine = create_async_engine(_async_url(engine))
        try:
            async with AsyncSession(async_engine) as session:
                for model, key, _values in VALID:
                    versions = await versioning.asyncio.history(session, model, key)
                    assert len(versions) == 2, key
                    old = await versioning.asyncio.as_of(session, model, key, created)
                    assert old is not None and old.status == "new"
                for model, key, message in REFUSED:
                    for call in (
                        versioning.asyncio.history(session, model, key),
                        versioning.asyncio.as_of(session, model, key, created),
                        versioning.asyncio.version_at(session, model, key, created),
                        versioning.asyncio.restore(session, model, key, at=created),
                    ):
                        with pytest.raises(ArgumentError) as raised:
                            await call
                        assert str(raised.value) == message
                with pytest.raises(ArgumentError, match="got an AsyncEngine"):
                    await versioning.asyncio.history(async_engine, Order, 1)  # type: ignore[arg-type]
                await session.rollback()
        finally:
            await async_engine.dispose()

    run(main())
    assert _counts(engine) == before
