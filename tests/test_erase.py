"""``versioning.erase``: personal values leave every version of a record, on every backend, and
what remains keeps each history row's digest (its committed view) as it was."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from test_asyncio import async_engine, run  # noqa: F401 - the async engine fixture

import versioning
import versioning.asyncio
from versioning import (
    ArgumentError,
    ErasureError,
    Operation,
    RestoreError,
    Versioned,
    VersioningError,
    audit_context,
    history,
    masks,
)
from versioning.personal import PERSONAL, committed_view
from versioning.schema import CHANGES

from helpers import tamper

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]


class Base(DeclarativeBase):
    pass


class Customer(Versioned, Base):
    __tablename__ = "erase_customers"
    __versioned__ = {"personal": ["email", "phone", "born"], "mask": {"phone": masks.last4}}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    email: Mapped[str | None] = mapped_column(sa.String(100))
    phone: Mapped[str | None] = mapped_column(sa.String(30))
    born: Mapped[dt.date | None] = mapped_column(sa.Date)


class Patient(Versioned, Base):
    """A personal column that is NOT NULL without a default: an undelete cannot fill it."""

    __tablename__ = "erase_patients"
    __versioned__ = {"personal": ["ssn"]}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    ssn: Mapped[str] = mapped_column(sa.String(20))


class Note(Versioned, Base):
    __tablename__ = "erase_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(50))


class Party(Versioned, Base):
    """Joined inheritance: the subclass's personal column lives in the shared history table."""

    __tablename__ = "erase_parties"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(20))
    label: Mapped[str] = mapped_column(sa.String(50))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "party"}


class Member(Party):
    __tablename__ = "erase_members"
    __versioned__ = {"personal": ["email"]}
    id: Mapped[int] = mapped_column(sa.ForeignKey("erase_parties.id"), primary_key=True)
    email: Mapped[str | None] = mapped_column(sa.String(100))
    __mapper_args__ = {"polymorphic_identity": "member"}


EMAILS = ("ann@example.com", "ann@new.example")
PHONE = "+44 20 7946 0321"
BORN = dt.date(1990, 4, 1)
# Whole values only: a short run of digits could occur in a commitment's hex by chance.
SECRETS = (*EMAILS, PHONE, masks.last4(PHONE), BORN.isoformat())


def ann_lifecycle(session: Session) -> None:
    """Customer 7: inserted, email changed, name changed, phone changed, deleted. Customer 8
    (another record, same email) stays."""
    session.add(Customer(id=7, name="Ann", email=EMAILS[0], phone=None, born=BORN))
    session.add(Customer(id=8, name="Bob", email=EMAILS[0], phone=PHONE))
    session.commit()
    ann = session.get(Customer, 7)
    assert ann is not None
    ann.email = EMAILS[1]
    session.commit()
    ann.name = "Anne"
    session.commit()
    ann.phone = PHONE
    session.commit()
    session.delete(ann)
    session.commit()


def raw_rows(engine: sa.Engine, table: sa.Table) -> list[dict[str, Any]]:
    """Every row of ``table`` as the database holds it, JSON columns decoded, by id."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(table).order_by(table.c[table.primary_key.columns.keys()[0]])
        )
        return [dict(row._mapping) for row in rows]


def row_text(row: dict[str, Any]) -> str:
    return json.dumps(row, default=str)


def views(engine: sa.Engine, table: sa.Table) -> list[str]:
    """Each history row's committed view (what its digest covers), serialized."""
    return [
        json.dumps(committed_view(table, row), sort_keys=True, default=str)
        for row in raw_rows(engine, table)
    ]


def assert_verifies(sessions: Sessions, *saved: versioning.Digest) -> None:
    """Seal what is not sealed yet, then verify everything (against the saved digests too)."""
    with sessions() as session:
        versioning.seal(session, metadata=Base.metadata)
        session.commit()
        report = versioning.verify(session, list(saved), metadata=Base.metadata)
    assert report.ok, report.problems
    assert report.unsealed == 0 and report.versions_checked > 0


def test_erase_removes_the_values_from_every_version(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    table = versioning.history_table(Customer)
    with sessions() as session:
        ann_lifecycle(session)
        versioning.seal(session, metadata=Base.metadata)  # the erased versions are sealed
        session.commit()
        saved = versioning.digest(session, metadata=Base.metadata)
        assert saved is not None
        before = views(engine, table)
        with audit_context(actor="dpo@example.com", request_id="r-113", channel="gdpr"):
            erased = versioning.erase(
                session,
                Customer,
                7,
                columns=["email", "phone", "born"],
                reason="GDPR request 2026-113",
            )
            session.commit()
    assert erased == 5
    rows = raw_rows(engine, table)
    ann = [r for r in rows if r["id"] == 7]
    bob = [r for r in rows if r["id"] == 8]
    assert len(ann) == 5 and len(bob) == 1
    for row in ann:
        text = row_text(row)
        for value in SECRETS:
            assert value not in text, (value, text)
        assert row["email"] is None and row["phone"] is None and row["born"] is None
        assert set(row[PERSONAL]) == {"email", "phone", "born"}
        assert all(entry["erased"] is True for entry in row[PERSONAL].values())
    # Another record's values stay.
    assert bob[0]["email"] == EMAILS[0] and bob[0]["phone"] == masks.last4(PHONE)
    # Every row's digest covers the same as before: history still verifies, sealed and not.
    assert views(engine, table) == before
    assert_verifies(sessions, saved)
    # The erasure's transaction row: who, why, which columns; never a value.
    transactions = raw_rows(engine, Base.metadata.tables[versioning.TRANSACTION_TABLE])
    last = transactions[-1]
    assert (last["actor"], last["request_id"], last["reason"]) == (
        "dpo@example.com",
        "r-113",
        "GDPR request 2026-113",
    )
    extra = last["extra"]
    assert extra["channel"] == "gdpr"
    assert extra["erasure"] == {
        "table": table.fullname,
        "model": "Customer",
        "key": [7],
        "columns": ["email", "phone", "born"],
        "versions": 5,
    }
    for value in SECRETS:
        assert value not in row_text(last)
    assert len([r for r in rows if r["versioning_transaction_id"] == last["id"]]) == 0


def test_readers_show_erased_values_as_none(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        ann_lifecycle(session)
        versioning.erase(session, Customer, 7, columns=["email"], reason="GDPR")
        session.commit()
        versions = history(session, Customer, 7)
        assert [v.operation for v in versions] == [
            Operation.INSERT,
            Operation.UPDATE,
            Operation.UPDATE,
            Operation.UPDATE,
            Operation.DELETE,
        ]
        assert all(v.erased == {"email"} for v in versions)
        assert all(v.state["email"] is None for v in versions)
        assert versions[1].changes == {"email": (None, None)}  # it changed; the values are gone
        assert versions[3].changes == {"phone": (None, masks.last4(PHONE))}  # not erased
        assert versions[3].state["phone"] == masks.last4(PHONE)
        old = versioning.as_of(session, Customer, 7, versions[2].transaction_id)
        assert (old.name, old.email) == ("Anne", None)
        # Other records are not flagged.
        assert history(session, Customer, 8)[0].erased == frozenset()
    assert engine is not None


def test_restore_keeps_or_defaults_an_erased_column(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Customer(id=1, name="Ann", email=EMAILS[0], phone=PHONE))
        session.commit()
        ann = session.get(Customer, 1)
        assert ann is not None
        ann.name, ann.email = "Anne", None  # the live record's personal data goes first
        session.commit()
        versioning.erase(session, Customer, 1, columns=["email", "phone"], reason="GDPR")
        session.commit()
        first = history(session, Customer, 1)[0]
        assert first.erased == {"email", "phone"}
        # An update: the erased columns keep their live values.
        live = versioning.restore(session, first)
        session.commit()
        assert (live.name, live.email, live.phone) == ("Ann", None, PHONE)
        restored = history(session, Customer, 1)[-1]
        assert restored.changes == {"name": ("Anne", "Ann")}
        # An undelete: they take their default (NULL).
        session.delete(live)
        session.commit()
        again = versioning.restore(session, first)
        session.commit()
        assert (again.name, again.email) == ("Ann", None)


def test_restore_refuses_an_erased_not_null_column_without_default(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    table = versioning.history_table(Patient)
    with sessions() as session:
        session.add(Patient(id=1, ssn="078-05-1120"))
        session.commit()
        session.delete(session.get(Patient, 1))
        session.commit()
        versioning.erase(session, Patient, 1, columns=["ssn"], reason="GDPR")
        session.commit()
        before = raw_rows(engine, table)
        deleted = history(session, Patient, 1)[-1]
        with pytest.raises(RestoreError, match="'ssn' was erased") as error:
            versioning.restore(session, deleted)
        assert "default" in str(error.value)
        session.rollback()
    assert raw_rows(engine, table) == before
    assert raw_rows(engine, Patient.__table__) == []  # type: ignore[arg-type]


def test_erase_in_a_joined_hierarchy(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    table = versioning.history_table(Party)
    with sessions() as session:
        session.add_all([Member(id=1, label="m", email=EMAILS[0]), Party(id=2, label="p")])
        session.commit()
        member = session.get(Member, 1)
        assert member is not None
        member.email = EMAILS[1]
        session.commit()
        before = views(engine, table)
        assert versioning.erase(session, Member, 1, columns=["email"], reason="GDPR") == 2
        session.commit()
        assert [v.erased for v in history(session, Member, 1)] == [{"email"}, {"email"}]
    for row in raw_rows(engine, table):
        for value in EMAILS:
            assert value not in row_text(row)
    assert views(engine, table) == before
    assert_verifies(sessions)


def test_erasing_twice_changes_nothing_more(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    table = versioning.history_table(Customer)
    with sessions() as session:
        ann_lifecycle(session)
        versioning.erase(session, Customer, 7, columns=["email"], reason="first")
        session.commit()
        rows = raw_rows(engine, table)
        assert versioning.erase(session, Customer, 7, columns=["email"], reason="again") == 0
        session.commit()
        assert raw_rows(engine, table) == rows
        # A record without history: nothing to erase, and the request is still on record.
        assert versioning.erase(session, Customer, 99, columns=["email"], reason="none") == 0
        session.commit()
    transactions = raw_rows(engine, Base.metadata.tables[versioning.TRANSACTION_TABLE])
    assert [t["reason"] for t in transactions[-3:]] == ["first", "again", "none"]
    assert_verifies(sessions)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"columns": ["name"]}, ["Customer.name", "not declared personal", "'email'"]),
        ({"columns": ["nope"]}, ["Customer.nope", "not a recorded column"]),
        ({"columns": "email"}, ["list of column names"]),
        ({"columns": []}, ["columns is empty"]),
        ({"reason": ""}, ["needs a reason"]),
        ({"reason": None}, ["needs a reason"]),
        ({"pk": "7"}, ["Customer.id", "an int"]),
    ],
)
def test_arguments_are_checked_before_anything_is_written(
    create_tables: Tables, sessions: Sessions, kwargs: dict[str, Any], words: list[str]
) -> None:
    engine = create_tables(Base.metadata)
    table = versioning.history_table(Customer)
    with sessions() as session:
        ann_lifecycle(session)
        rows = raw_rows(engine, table)
        call = {"columns": ["email"], "reason": "GDPR", "pk": 7} | kwargs
        pk = call.pop("pk")
        with pytest.raises(ArgumentError) as error:
            versioning.erase(session, Customer, pk, **call)
        for word in words:
            assert word in str(error.value), (word, str(error.value))
        session.commit()
    assert raw_rows(engine, table) == rows


def test_a_model_without_personal_columns(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    names = {c["name"] for c in sa.inspect(engine).get_columns("erase_notes_history")}
    assert PERSONAL not in names and "text" in names
    assert PERSONAL in {
        c["name"] for c in sa.inspect(engine).get_columns("erase_customers_history")
    }
    with sessions() as session:
        session.add(Note(id=1, text="hello"))
        session.commit()
        with pytest.raises(ArgumentError, match="Note declares none"):
            versioning.erase(session, Note, 1, columns=["text"], reason="GDPR")


def test_erasure_is_a_transaction_of_its_own(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    table = versioning.history_table(Customer)
    with sessions() as session:
        ann_lifecycle(session)
        rows = raw_rows(engine, table)
        # After a change in the same transaction: refused, nothing erased.
        session.add(Customer(id=9, name="Cy", email="cy@example.com"))
        with pytest.raises(VersioningError, match="transaction of its own"):
            versioning.erase(session, Customer, 7, columns=["email"], reason="GDPR")
        session.rollback()
        # A change after it in the same transaction: refused too.
        versioning.erase(session, Customer, 7, columns=["email"], reason="GDPR")
        session.add(Customer(id=9, name="Cy", email="cy@example.com"))
        with pytest.raises(VersioningError, match="transaction of its own"):
            session.flush()
        session.rollback()
        # A bulk statement has run when it is refused: the transaction cannot commit.
        versioning.erase(session, Customer, 7, columns=["email"], reason="GDPR")
        statement = sa.update(Customer).where(Customer.id == 8).values(name="Robert")
        with pytest.raises(VersioningError, match="transaction of its own"):
            session.execute(statement)
        with pytest.raises(VersioningError, match="cannot commit"):
            session.commit()
        session.rollback()
    assert raw_rows(engine, table) == rows


def test_versions_without_salt_are_refused(create_tables: Tables, sessions: Sessions) -> None:
    """Recorded before the column was declared personal: their digest covers the value."""
    engine = create_tables(Base.metadata)
    table = versioning.history_table(Customer)
    with sessions() as session:
        ann_lifecycle(session)
        first_two = [v.transaction_id for v in history(session, Customer, 7)][:2]
    with engine.begin() as connection, tamper(connection):  # as if written before "personal"
        connection.execute(
            table.update()
            .where(table.c.id == 7, table.c.versioning_transaction_id.in_(first_two))
            .values({PERSONAL: None})
        )
    rows = raw_rows(engine, table)
    old = [r["versioning_id"] for r in rows if r["id"] == 7 and r[PERSONAL] is None]
    assert len(old) == 2
    with sessions() as session:
        with pytest.raises(ErasureError) as error:
            versioning.erase(session, Customer, 7, columns=["email", "phone"], reason="GDPR")
        message = str(error.value)
        assert f"'email' in version(s) {old}" in message and "Customer 7" in message
        assert "'phone'" not in message  # no phone value in those versions: nothing to refuse
        for value in SECRETS:
            assert value not in message
        session.rollback()
    assert raw_rows(engine, table) == rows


def test_async_erase(create_tables: Tables, async_engine: Any) -> None:  # noqa: F811
    from sqlalchemy.ext.asyncio import AsyncSession

    engine = create_tables(Base.metadata)
    with Session(engine) as session:
        ann_lifecycle(session)

    async def main() -> None:
        async with AsyncSession(async_engine) as session:
            count = await versioning.asyncio.erase(
                session, Customer, 7, columns=["email"], reason="GDPR"
            )
            await session.commit()
            assert count == 5
            versions = await versioning.asyncio.history(session, Customer, 7)
            assert all(v.erased == {"email"} and v.state["email"] is None for v in versions)
            with pytest.raises(ArgumentError, match="takes an AsyncSession"):
                await versioning.asyncio.erase(
                    Session(),
                    Customer,
                    7,
                    columns=["email"],
                    reason="x",  # type: ignore[arg-type]
                )

    run(async_engine, main)


def test_the_view_of_a_row_as_written_is_the_view_as_read_back(
    create_tables: Tables, sessions: Sessions
) -> None:
    """The digest is computed at commit from the rows in memory, and verified from the rows
    read back: their committed views must agree, salts included, on every backend."""
    engine = create_tables(Base.metadata)
    table = versioning.history_table(Customer)
    written: list[dict[str, Any]] = []

    def capture(conn: Any, clauseelement: Any, multiparams: Any, params: Any, options: Any) -> None:
        if isinstance(clauseelement, sa.Insert) and clauseelement.table.fullname == table.fullname:
            for row in multiparams or [params]:
                as_written = dict(row)
                if isinstance(as_written.get(CHANGES), str):  # sent as its JSON text
                    as_written[CHANGES] = json.loads(as_written[CHANGES])
                written.append(as_written)

    sa.event.listen(engine, "before_execute", capture)
    try:
        with sessions() as session:
            ann_lifecycle(session)
    finally:
        sa.event.remove(engine, "before_execute", capture)
    ids = [r["versioning_id"] for r in raw_rows(engine, table)]
    read = raw_rows(engine, table)
    assert len(written) == len(read) == 6
    for id_, as_written, as_read in zip(ids, written, read, strict=True):
        as_written["versioning_id"] = id_
        assert as_written[PERSONAL] == as_read[PERSONAL]
        assert len(set(as_written[PERSONAL].values())) == 3  # a salt per column
        view_written = json.dumps(committed_view(table, as_written), sort_keys=True, default=str)
        view_read = json.dumps(committed_view(table, as_read), sort_keys=True, default=str)
        assert view_written == view_read
