"""ORM ``update().where()`` / ``delete().where()`` with history rows made inside the database.

:mod:`versioning.bulk_sql`: once a connection has its staging tables (made at the commit of the
first such statement on it, which takes the Python path), the statement's history rows are
computed by SQL and moved into the history table at commit. The history must be the Python
path's: the same rows, values, operations, version order, transaction row and digests that
verify; savepoints and rollbacks take staged rows back; a model the SQL cannot represent stays on
the Python path.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import delete, event, update
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
from versioning import Versioned, bulk_sql, history, history_table, transaction_table
from versioning.masks import redact

from helpers import backend_id, waited_for_lock

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[..., Session]

TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb")


class Base(DeclarativeBase):
    pass


def _columns() -> dict[str, Any]:
    return {
        "id": mapped_column(sa.Integer, primary_key=True, autoincrement=False),
        "name": mapped_column(sa.String(50)),
        "qty": mapped_column(sa.Integer, default=0),
        "price": mapped_column(sa.Numeric(12, 2), nullable=True),
        "ratio": mapped_column(sa.Float, nullable=True),
        "flag": mapped_column(sa.Boolean, nullable=True),
        "at": mapped_column(TIMESTAMP, nullable=True),
        "day": mapped_column(sa.Date, nullable=True),
        "uid": mapped_column(sa.Uuid, nullable=True),
        "blob": mapped_column(sa.LargeBinary, nullable=True),
        "doc": mapped_column(sa.JSON, nullable=True),
        "note": mapped_column(sa.Text, nullable=True),
    }


class Fast(Versioned, Base):
    """The type matrix of the bulk path (server-side once the connection has its stages)."""

    __tablename__ = "bs_fast"
    locals().update(_columns())


class Slow(Versioned, Base):
    """The same columns, on the Python path (see ``python_path``)."""

    __tablename__ = "bs_slow"
    locals().update(_columns())


def shout(value: str) -> str:
    return value.upper()


class Masked(Versioned, Base):
    """A built-in mask (has an SQL form) and a personal column."""

    __tablename__ = "bs_masked"
    __versioned__ = {"mask": {"card": redact}, "personal": ["email"]}

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    card: Mapped[str | None] = mapped_column(sa.String(30))
    email: Mapped[str | None] = mapped_column(sa.String(80))
    n: Mapped[int] = mapped_column(default=0)


class Custom(Versioned, Base):
    """A custom mask without an SQL form: the Python path, silently."""

    __tablename__ = "bs_custom"
    __versioned__ = {"mask": {"secret": shout}}

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    secret: Mapped[str | None] = mapped_column(sa.String(30))
    n: Mapped[int] = mapped_column(default=0)


@pytest.fixture
def sessions(engine: sa.Engine) -> Iterator[Callable[..., Session]]:
    """Sessions with the database path switched on (it is off by default)."""
    opted = engine.execution_options(versioning_bulk_sql=True)
    made: list[Session] = []

    def make(**kwargs: Any) -> Session:
        session = Session(opted, **kwargs)
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


@pytest.fixture
def python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Slow`` takes the Python path (its plan is refused, as for a model SQL cannot record)."""
    original = bulk_sql.plan_for

    def plan_for(spec: Any, dialect: Any) -> Any:
        return None if spec.model is Slow else original(spec, dialect)

    monkeypatch.setattr(bulk_sql, "plan_for", plan_for)


@pytest.fixture
def seen(engine: sa.Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def collect(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", collect)
    yield statements
    event.remove(engine, "before_cursor_execute", collect)


def _staged(statements: list[str]) -> bool:
    return any("INSERT INTO versioning_rows_" in s or "versioning_old_" in s for s in statements)


def _values(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "name": f"n{i} Grüße ✓",
        "qty": i,
        "price": Decimal(f"{i}.50"),
        "ratio": i / 3,
        "flag": i % 2 == 0,
        "at": dt.datetime(2024, 2, 29, 13, 45, 30, i),
        "day": dt.date(2024, 1, i % 28 + 1),
        "uid": uuid.UUID(int=i),
        "blob": bytes([i % 256, 0, 255]),
        "doc": {"z": [1, {"b": None, "a": i}], "a": "x"},
        "note": None if i % 3 else "note",
    }


def _warm(sessions: Sessions, *models: type[Any]) -> None:
    """Give the pooled connection its stages (the first statement takes the Python path)."""
    for model in models:
        with sessions() as session:
            column = model.qty if hasattr(model, "qty") else model.n
            session.execute(update(model).where(model.id < 0).values({column: column}))
            session.commit()


def _history(sessions: Sessions, model: type[Any]) -> list[tuple[Any, ...]]:
    """Every history row of ``model``: (version order, operation, record id, state, changes)."""
    table = history_table(model)
    with sessions() as session:
        ordered = session.execute(
            sa.select(table.c.versioning_id, table.c.id).order_by(table.c.versioning_id)
        ).all()
        out = []
        ids = [row.id for row in ordered]
        for record in sorted(set(ids)):
            for version in history(session, model, record):
                state = {k: v for k, v in version.state.items()}
                out.append((version.operation, record, state, dict(version.changes)))
    order = {v: i for i, v in enumerate(ids)}
    return sorted(out, key=lambda row: (row[1], order.get(row[1], 0)))


def _verify_ok(sessions: Sessions) -> None:
    with sessions() as session:
        report = versioning.verify(session, [], metadata=Base.metadata)
    assert report.ok, report.problems


def _seed(sessions: Sessions, model: type[Any], n: int) -> None:
    with sessions() as session:
        session.add_all([model(**_values(i)) for i in range(1, n + 1)])
        session.commit()


def test_type_matrix_through_a_bulk_update_and_delete_is_the_python_history(
    create_tables: Tables, sessions: Sessions, seen: list[str], python_path: None
) -> None:
    create_tables(Base.metadata)
    _warm(sessions, Fast, Slow)
    for model in (Fast, Slow):
        _seed(sessions, model, 12)
        seen.clear()
        with sessions() as session:
            session.execute(
                update(model)
                .where(model.id > 2)
                .values(
                    name=model.name + "!",
                    qty=model.qty + 1,
                    price=Decimal("9.99"),
                    ratio=None,
                    flag=sa.true(),
                    at=dt.datetime(2025, 1, 1, 0, 0, 0, 1),
                    day=None,
                    uid=uuid.UUID(int=7),
                    blob=b"",
                    doc={"k": [1.5, "é"], "a": None},
                    note="x",
                )
            )
            session.execute(delete(model).where(model.id > 9))  # every row read is deleted
            session.execute(delete(model).where(model.id.in_([1, 5, 99])))
            session.commit()
        assert _staged(seen) is (model is Fast)
    fast, slow = _history(sessions, Fast), _history(sessions, Slow)
    assert len(fast) == 12 + 10 + 3 + 2
    assert fast == slow
    _verify_ok(sessions)


def test_update_that_changes_nothing_records_nothing(
    create_tables: Tables, sessions: Sessions, seen: list[str]
) -> None:
    engine = create_tables(Base.metadata)
    _warm(sessions, Fast)
    _seed(sessions, Fast, 3)
    seen.clear()
    with sessions() as session:
        session.execute(update(Fast).where(Fast.id == 2).values(qty=2))
        session.commit()
    assert _staged(seen)
    with engine.connect() as connection:
        txs = connection.execute(sa.select(sa.func.count()).select_from(_tx())).scalar_one()
    assert txs == 1  # the seed's


def _tx() -> sa.Table:
    return transaction_table(Base.metadata)


def test_savepoint_rollback_drops_what_it_staged(
    create_tables: Tables, sessions: Sessions, seen: list[str]
) -> None:
    create_tables(Base.metadata)
    _warm(sessions, Fast)
    _seed(sessions, Fast, 4)
    seen.clear()
    with sessions() as session:
        with session.begin_nested() as savepoint:
            session.execute(update(Fast).where(Fast.id <= 2).values(qty=100))
            savepoint.rollback()
        session.execute(update(Fast).where(Fast.id == 3).values(qty=300))
        session.commit()
    assert _staged(seen)
    rows = [r for r in _history(sessions, Fast) if r[0] is versioning.Operation.UPDATE]
    assert [(r[1], r[3]) for r in rows] == [(3, {"qty": (3, 300)})]
    _verify_ok(sessions)


def test_rolled_back_transaction_leaves_nothing_in_the_stages(
    create_tables: Tables, sessions: Sessions, seen: list[str]
) -> None:
    create_tables(Base.metadata)
    _warm(sessions, Fast)
    _seed(sessions, Fast, 4)
    plan = bulk_sql.plan_for(versioning.declaration.require_spec(Fast), sessions().bind.dialect)  # type: ignore[union-attr]
    assert plan is not None
    with sessions() as session:
        session.execute(update(Fast).values(qty=0))
        session.rollback()
        connection = session.connection()
        assert plan.ready(connection)
        for stage in (plan.old, plan.rows):
            assert connection.execute(sa.select(sa.func.count()).select_from(stage)).scalar() == 0
        session.execute(update(Fast).where(Fast.id == 1).values(qty=9))
        session.commit()
        connection = session.connection()
        for stage in (plan.old, plan.rows):
            assert connection.execute(sa.select(sa.func.count()).select_from(stage)).scalar() == 0
        session.rollback()
    updates = [r for r in _history(sessions, Fast) if r[0] is versioning.Operation.UPDATE]
    assert [(r[1], r[3]) for r in updates] == [(1, {"qty": (1, 9)})]
    _verify_ok(sessions)


def test_flushes_and_bulk_statements_keep_their_order(
    create_tables: Tables, sessions: Sessions, seen: list[str]
) -> None:
    create_tables(Base.metadata)
    _warm(sessions, Fast)
    _seed(sessions, Fast, 3)
    seen.clear()
    with sessions() as session:
        obj = session.get(Fast, 1)
        assert obj is not None
        obj.qty = 10
        session.flush()
        session.execute(update(Fast).where(Fast.id == 1).values(qty=Fast.qty + 1))
        session.expire_all()
        obj = session.get(Fast, 1)
        assert obj is not None
        obj.qty = 20
        session.flush()
        session.execute(
            update(Fast).where(Fast.id == 1).values(qty=Fast.qty + 1),
            execution_options={"synchronize_session": False},
        )
        session.commit()
    assert _staged(seen)
    with sessions() as session:
        changes = [v.changes["qty"] for v in history(session, Fast, 1)[1:]]
    assert changes == [(1, 10), (10, 11), (11, 20), (20, 21)]
    _verify_ok(sessions)


def test_masks_and_personal_columns(
    create_tables: Tables, sessions: Sessions, seen: list[str]
) -> None:
    create_tables(Base.metadata)
    _warm(sessions, Masked)
    with sessions() as session:
        session.add_all(
            [Masked(id=i, card=f"4111-{i}", email=f"p{i}@example.com") for i in (1, 2, 3)]
        )
        session.commit()
    seen.clear()
    with sessions() as session:
        session.execute(update(Masked).where(Masked.id < 3).values(card="5500-0", n=1))
        session.execute(update(Masked).where(Masked.id == 3).values(email="q@example.com"))
        session.commit()
    assert _staged(seen)
    with sessions() as session:
        first = history(session, Masked, 1)[-1]
        third = history(session, Masked, 3)[-1]
    assert first.state["card"] == redact("x")
    assert first.changes == {"card": (redact("x"), redact("x")), "n": (0, 1)}
    assert third.changes == {"email": ("p3@example.com", "q@example.com")}
    _verify_ok(sessions)
    with sessions() as session:
        versioning.erase(session, Masked, 3, columns=["email"], reason="gdpr")
        session.commit()
    _verify_ok(sessions)


def test_a_mask_without_sql_form_takes_the_python_path(
    create_tables: Tables, sessions: Sessions, seen: list[str]
) -> None:
    create_tables(Base.metadata)
    _warm(sessions, Custom)
    with sessions() as session:
        session.add_all([Custom(id=1, secret="abc"), Custom(id=2, secret="def")])
        session.commit()
    seen.clear()
    with sessions() as session:
        session.execute(update(Custom).values(secret=Custom.secret + "x", n=5))
        session.commit()
    assert not _staged(seen)
    with sessions() as session:
        assert history(session, Custom, 1)[-1].changes == {
            "secret": ("ABC", "ABCX"),
            "n": (0, 5),
        }
    _verify_ok(sessions)


@pytest.mark.backends("postgresql", "mariadb")
def test_a_bulk_update_waiting_for_a_lock_records_what_the_other_committed(
    create_tables: Tables, sessions: Sessions, engine: sa.Engine, seen: list[str]
) -> None:
    """The copy of the old rows is the locked read: it waits, then copies the committed rows."""
    create_tables(Base.metadata)
    _seed(sessions, Fast, 2)
    with sessions() as a, sessions() as b:  # both pooled connections get their stages
        for record, session in ((1, a), (2, b)):  # rows of their own: no lock to wait for
            session.execute(update(Fast).where(Fast.id == record).values(qty=Fast.qty))
        a.commit()
        b.commit()
    seen.clear()
    errors: list[BaseException] = []
    with sessions() as a, sessions() as b:
        a.execute(update(Fast).where(Fast.id == 1).values(qty=Fast.qty + 10))
        waiting = backend_id(b)

        def run() -> None:
            try:
                b.execute(update(Fast).where(Fast.id <= 2).values(qty=Fast.qty + 1))
                b.commit()
            except BaseException as error:  # reported below
                errors.append(error)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert waited_for_lock(engine, waiting, thread)
        a.commit()
        thread.join(30)
    assert not errors
    assert _staged(seen)
    with sessions() as session:
        changes = [v.changes for v in history(session, Fast, 1)[1:]]
    assert changes == [{"qty": (1, 11)}, {"qty": (11, 12)}]
    _verify_ok(sessions)


def test_the_option_switches_it_off(
    create_tables: Tables, sessions: Sessions, engine: sa.Engine, seen: list[str]
) -> None:
    create_tables(Base.metadata)
    _warm(sessions, Fast)
    _seed(sessions, Fast, 2)
    seen.clear()
    with sessions() as session:
        session.execute(
            update(Fast).values(qty=Fast.qty + 1),
            execution_options={"versioning_bulk_sql": False},
        )
        session.commit()
    with Session(engine.execution_options(versioning_bulk_sql=False)) as session:
        session.execute(delete(Fast).where(Fast.id == 1))
        session.commit()
    with Session(engine) as session:  # off by default
        session.execute(update(Fast).where(Fast.id == 2).values(qty=Fast.qty + 1))
        session.execute(update(Fast).where(Fast.id == 2).values(qty=Fast.qty + 1))
        session.commit()
    assert not _staged(seen)
    with sessions() as session:
        assert [v.changes for v in history(session, Fast, 2)[1:]] == [
            {"qty": (2, 3)},
            {"qty": (3, 4)},
            {"qty": (4, 5)},
        ]
        assert len(history(session, Fast, 1)) == 3
    _verify_ok(sessions)
