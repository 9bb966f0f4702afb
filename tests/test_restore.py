"""Restoring: to an earlier version, undelete, what is never written back, failing cleanly."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
from versioning import Operation, Versioned, audit_context, history, masks, restore

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

US = dt.timedelta(microseconds=1)


class Base(DeclarativeBase):
    pass


class Order(Versioned, Base):
    __tablename__ = "restore_orders"
    __versioned__ = {"exclude": ["view_count", "priority"], "mask": {"card": masks.last4}}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    number: Mapped[str] = mapped_column(sa.String(20), unique=True)
    status: Mapped[str] = mapped_column(sa.String(20))
    total: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))
    view_count: Mapped[int] = mapped_column(default=0)
    priority: Mapped[int] = mapped_column(server_default=sa.text("3"))
    card: Mapped[str | None] = mapped_column(sa.String(40))


class Ticket(Versioned, Base):
    """An excluded NOT NULL column without a default: history cannot re-create the row."""

    __tablename__ = "restore_tickets"
    __versioned__ = {"exclude": ["secret_code"]}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    secret_code: Mapped[str] = mapped_column(sa.String(50))


class Badge(Versioned, Base):
    """A masked NOT NULL column without a default: the same, for a mask."""

    __tablename__ = "restore_badges"
    __versioned__ = {"mask": {"pin": masks.redact}}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    pin: Mapped[str] = mapped_column(sa.String(10))


class Seat(Versioned, Base):
    __tablename__ = "restore_seats"
    row: Mapped[str] = mapped_column(sa.String(2), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    holder: Mapped[str | None] = mapped_column(sa.String(30))


CARD = "4111111111111111"
OTHER_CARD = "5555555555554444"


def pause() -> None:
    time.sleep(0.005)


def new_order(session: Session, **values: Any) -> Order:
    defaults: dict[str, Any] = {
        "id": 1,
        "number": "A-1",
        "status": "new",
        "total": Decimal("10.00"),
        "card": CARD,
    }
    order = Order(**(defaults | values))
    session.add(order)
    session.commit()
    pause()
    return order


def change(session: Session, model: type[Any], pk: Any, **values: Any) -> None:
    obj = session.get(model, pk)
    assert obj is not None
    for key, value in values.items():
        setattr(obj, key, value)
    session.commit()
    pause()


def remove(session: Session, model: type[Any], pk: Any) -> None:
    session.delete(session.get(model, pk))
    session.commit()
    pause()


def live(sessions: Sessions, model: type[Any], pk: Any) -> dict[str, Any] | None:
    """The live row as a fresh session loads it, or None."""
    with sessions() as session:
        obj = session.get(model, pk)
        values = (
            None
            if obj is None
            else {attr.key: getattr(obj, attr.key) for attr in sa.inspect(model).column_attrs}
        )
        session.rollback()
    return values


def counts(engine: sa.Engine) -> dict[str, int]:
    tables = [
        Base.metadata.tables[Order.__tablename__],
        versioning.history_table(Order),
        Base.metadata.tables[versioning.TRANSACTION_TABLE],
    ]
    with engine.connect() as connection:
        return {
            table.name: connection.execute(
                sa.select(sa.func.count()).select_from(table)
            ).scalar_one()
            for table in tables
        }


def reason_of(version: versioning.Version) -> str:
    assert version.transaction is not None
    assert version.transaction.reason is not None
    return version.transaction.reason


def names_restore(reason: str, model: str, key: str, transaction_id: int) -> bool:
    """The reason names the model, the key and the source transaction (as whole words)."""
    return all(
        re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", reason)
        for word in (model, key, str(transaction_id))
    )


# -- restoring an existing record ------------------------------------------------------------------


def test_restore_an_existing_record_to_an_earlier_version(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    new_order(session, id=41)
    change(session, Order, 41, status="paid", total=Decimal("12.50"))
    change(session, Order, 41, status="shipped")
    created = history(session, Order, 41)[0]

    restored: Order = restore(session, created)
    assert restored is session.get(Order, 41)
    assert sa.inspect(restored).persistent
    assert (restored.status, restored.total) == ("new", Decimal("10.00"))
    assert len(history(session, Order, 41)) == 4, "restore flushes at once"
    session.commit()

    assert live(sessions, Order, 41) == {
        "id": 41,
        "number": "A-1",
        "status": "new",
        "total": Decimal("10.00"),
        "view_count": 0,
        "priority": 3,
        "card": CARD,
    }
    last = history(session, Order, 41)[-1]
    session.rollback()
    assert last.operation is Operation.UPDATE
    assert last.changes == {
        "status": ("shipped", "new"),
        "total": (Decimal("12.50"), Decimal("10.00")),
    }
    assert last.state["status"] == "new"
    assert names_restore(reason_of(last), "Order", "41", created.transaction_id), reason_of(last)


def test_restore_by_key_at_a_transaction_or_a_moment(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    new_order(session)
    change(session, Order, 1, status="paid")
    change(session, Order, 1, status="shipped")
    created, paid, _ = history(session, Order, 1)
    assert paid.transaction is not None

    restore(session, Order, 1, at=created.transaction_id)
    session.commit()
    assert live(sessions, Order, 1)["status"] == "new"  # type: ignore[index]
    restore(session, Order, 1, at=paid.transaction.issued_at)
    session.commit()
    assert live(sessions, Order, 1)["status"] == "paid"  # type: ignore[index]
    restore(session, Order, 1, at=paid.transaction.issued_at - US)
    session.commit()
    assert live(sessions, Order, 1)["status"] == "new"  # type: ignore[index]
    versions = history(session, Order, 1)
    session.rollback()
    assert [v.changes for v in versions[3:]] == [
        {"status": ("shipped", "new")},
        {"status": ("new", "paid")},
        {"status": ("paid", "new")},
    ]
    assert names_restore(reason_of(versions[3]), "Order", "1", created.transaction_id)
    assert names_restore(reason_of(versions[4]), "Order", "1", paid.transaction_id)


def test_restore_to_the_current_state_records_nothing(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    new_order(session)
    change(session, Order, 1, status="paid")
    latest = history(session, Order, 1)[-1]
    restore(session, latest)
    session.commit()
    assert len(history(session, Order, 1)) == 2
    session.rollback()


# -- undelete ----------------------------------------------------------------------------------


def test_undelete_by_the_delete_version(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    new_order(session, id=7)
    change(session, Order, 7, status="paid")
    remove(session, Order, 7)
    delete = history(session, Order, 7)[-1]
    assert delete.operation is Operation.DELETE

    restored: Order = restore(session, delete)
    assert sa.inspect(restored).persistent
    assert restored is session.get(Order, 7)
    session.commit()

    values = live(sessions, Order, 7)
    assert values is not None
    assert (values["number"], values["status"], values["total"]) == (
        "A-1",
        "paid",
        Decimal("10.00"),
    )
    versions = history(session, Order, 7)
    session.rollback()
    assert [v.operation for v in versions] == [
        Operation.INSERT,
        Operation.UPDATE,
        Operation.DELETE,
        Operation.INSERT,
    ]
    assert versions[-1].state == dict(delete.state) | {"card": None}  # masked: not written back
    # An undelete names the version it brings back: the one before the deletion.
    assert names_restore(reason_of(versions[-1]), "Order", "7", versions[1].transaction_id)
    assert reason_of(versions[-1]).startswith("undelete Order 7 as of transaction ")


def test_undelete_by_key_at(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    new_order(session)
    change(session, Order, 1, status="paid")
    change(session, Order, 1, status="cancelled")
    remove(session, Order, 1)
    _, paid, cancelled, _ = history(session, Order, 1)
    assert cancelled.transaction is not None

    restore(session, Order, 1, at=cancelled.transaction.issued_at - US)
    session.commit()
    assert live(sessions, Order, 1)["status"] == "paid"  # type: ignore[index]
    remove(session, Order, 1)
    restore(session, Order, 1, at=cancelled.transaction_id)
    session.commit()
    assert live(sessions, Order, 1)["status"] == "cancelled"  # type: ignore[index]
    versions = history(session, Order, 1)
    session.rollback()
    assert names_restore(reason_of(versions[4]), "Order", "1", paid.transaction_id)


def test_undelete_composite_key(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    session.add(Seat(row="B", number=12, holder="ann"))
    session.commit()
    remove(session, Seat, ("B", 12))
    restore(session, history(session, Seat, ("B", 12))[-1])
    session.commit()
    assert live(sessions, Seat, ("B", 12)) == {"row": "B", "number": 12, "holder": "ann"}
    versions = history(session, Seat, ("B", 12))
    session.rollback()
    assert [v.operation for v in versions] == [
        Operation.INSERT,
        Operation.DELETE,
        Operation.INSERT,
    ]
    reason = reason_of(versions[-1])
    assert "Seat" in reason and "B" in reason and "12" in reason, reason


# -- excluded and masked columns -------------------------------------------------------------------


def test_excluded_and_masked_columns_keep_their_live_value(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    new_order(session, view_count=5, priority=1)
    change(session, Order, 1, status="paid", card=OTHER_CARD, view_count=9, priority=2)
    created = history(session, Order, 1)[0]
    assert created.state["card"] == "************1111"
    assert "view_count" not in created.state

    restore(session, created)
    session.commit()
    values = live(sessions, Order, 1)
    assert values is not None
    assert values["status"] == "new"
    assert values["card"] == OTHER_CARD, "a masked value was written back"
    assert (values["view_count"], values["priority"]) == (9, 2)
    last = history(session, Order, 1)[-1]
    session.rollback()
    assert last.changes == {"status": ("paid", "new")}


def test_undelete_gives_excluded_and_masked_columns_their_default(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    new_order(session, view_count=5, priority=1)
    remove(session, Order, 1)
    restore(session, history(session, Order, 1)[-1])
    session.commit()
    values = live(sessions, Order, 1)
    assert values is not None
    assert values["status"] == "new"
    assert values["view_count"] == 0  # its Python-side default
    assert values["priority"] == 3  # its server default
    assert values["card"] is None  # nullable, no default: never the mask's output
    session.rollback()


@pytest.mark.parametrize(
    ("model", "values", "column"),
    [
        (Ticket, {"title": "t", "secret_code": "s3cr3t"}, "secret_code"),
        (Badge, {"pin": "1234"}, "pin"),
    ],
    ids=["excluded", "masked"],
)
def test_undelete_without_a_value_for_a_not_null_column(
    create_tables: Tables,
    sessions: Sessions,
    model: type[Any],
    values: dict[str, Any],
    column: str,
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add(model(id=1, **values))
    session.commit()
    remove(session, model, 1)
    delete = history(session, model, 1)[-1]
    with pytest.raises(versioning.RestoreError, match=rf"\b{column}\b") as raised:
        restore(session, delete)
    assert isinstance(raised.value, versioning.VersioningError)
    session.rollback()
    assert live(sessions, model, 1) is None
    assert len(history(session, model, 1)) == 2
    session.rollback()
    with engine.connect() as connection:
        table = Base.metadata.tables[versioning.TRANSACTION_TABLE]
        assert connection.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 2


# -- the transaction's reason ----------------------------------------------------------------------


def test_reason_from_the_context_wins(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    new_order(session)
    change(session, Order, 1, status="paid")
    created = history(session, Order, 1)[0]
    with audit_context(actor="support", reason="customer asked for a refund"):
        restore(session, created)
        session.commit()
    last = history(session, Order, 1)[-1]
    session.rollback()
    assert last.transaction is not None
    assert last.transaction.reason == "customer asked for a refund"
    assert last.transaction.actor == "support"


def test_context_without_reason_keeps_the_restore_reason(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    new_order(session)
    change(session, Order, 1, status="paid")
    created = history(session, Order, 1)[0]
    with audit_context(actor="support"):
        restore(session, created)
        session.commit()
    last = history(session, Order, 1)[-1]
    session.rollback()
    assert last.transaction is not None and last.transaction.actor == "support"
    assert names_restore(reason_of(last), "Order", "1", created.transaction_id)


# -- failing cleanly -------------------------------------------------------------------------------


def test_restore_violating_a_unique_constraint(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    new_order(session, id=1, number="A-1")
    change(session, Order, 1, number="A-9")
    new_order(session, id=2, number="A-1")
    created = history(session, Order, 1)[0]
    before = counts(engine)

    with pytest.raises(versioning.RestoreConflictError) as raised:
        restore(session, created)
    assert isinstance(raised.value, versioning.RestoreError)
    assert isinstance(raised.value, versioning.VersioningError)
    session.rollback()

    assert counts(engine) == before
    assert live(sessions, Order, 1)["number"] == "A-9"  # type: ignore[index]
    assert live(sessions, Order, 2)["number"] == "A-1"  # type: ignore[index]
    assert len(history(session, Order, 1)) == 2
    session.rollback()


def test_undelete_violating_a_unique_constraint(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    new_order(session, id=1, number="A-1")
    remove(session, Order, 1)
    new_order(session, id=2, number="A-1")
    delete = history(session, Order, 1)[-1]
    before = counts(engine)

    with pytest.raises(versioning.RestoreConflictError):
        restore(session, delete)
    session.rollback()

    assert counts(engine) == before
    assert live(sessions, Order, 1) is None
    # The session is usable again and a later restore works once the conflict is gone.
    remove(session, Order, 2)
    restore(session, delete)
    session.commit()
    assert live(sessions, Order, 1)["number"] == "A-1"  # type: ignore[index]


def test_restore_at_a_moment_the_record_did_not_exist(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    new_order(session, id=2, number="B-1")
    new_order(session, id=1, number="A-1")
    remove(session, Order, 1)
    created, deleted = history(session, Order, 1)
    [other] = history(session, Order, 2)
    assert created.transaction is not None
    before = counts(engine)
    for pk, at in (
        (1, other.transaction_id),  # before it was created
        (1, created.transaction.issued_at - US),
        (1, deleted.transaction_id),  # after it was deleted
        (1, 10**9),
        (3, 10**9),  # never existed
    ):
        with pytest.raises(versioning.RestoreError) as raised:
            restore(session, Order, pk, at=at)
        assert isinstance(raised.value, versioning.VersioningError)
        assert "Order" in str(raised.value)
    session.rollback()
    assert counts(engine) == before


def test_restore_rejects_a_naive_datetime(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    new_order(session)
    with pytest.raises(ValueError, match=r"naive|timezone"):
        restore(session, Order, 1, at=dt.datetime.now(dt.UTC).replace(tzinfo=None))
    session.rollback()
