"""Reading history back: ``history()``, ``Version`` and ``Transaction``, and ``as_of()``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
from versioning import Operation, Versioned, as_of, audit_context, history

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

US = dt.timedelta(microseconds=1)


class Base(DeclarativeBase):
    pass


class Account(Versioned, Base):
    __tablename__ = "reading_accounts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    balance: Mapped[int] = mapped_column(default=0)


class Membership(Versioned, Base):
    __tablename__ = "reading_memberships"
    org_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    user_id: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(20))


def pause() -> None:
    """Keep consecutive transactions' issued_at apart by well over a microsecond."""
    time.sleep(0.005)


def add(session: Session, obj: Any) -> Any:
    session.add(obj)
    session.commit()
    pause()
    return obj


def rename(session: Session, account_id: int, name: str) -> None:
    account = session.get(Account, account_id)
    assert account is not None
    account.name = name
    session.commit()
    pause()


def remove(session: Session, model: type[Any], pk: Any) -> None:
    session.delete(session.get(model, pk))
    session.commit()
    pause()


def issued_at(version: versioning.Version) -> dt.datetime:
    assert version.transaction is not None
    return version.transaction.issued_at


def name_as_of(session: Session, at: dt.datetime | int, pk: int = 1) -> str | None:
    account = as_of(session, Account, pk, at)
    return None if account is None else account.name


# -- history() -------------------------------------------------------------------------------------


def test_history_oldest_first_by_instance_and_by_key(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    account = add(session, Account(id=1, name="one", balance=10))
    add(session, Account(id=2, name="other"))
    rename(session, 1, "two")
    account.balance = 20
    session.commit()
    by_instance = history(session, account)
    by_key = history(session, Account, 1)
    session.rollback()
    assert by_instance == by_key
    assert [v.operation for v in by_key] == [Operation.INSERT, Operation.UPDATE, Operation.UPDATE]
    assert [v.state["name"] for v in by_key] == ["one", "two", "two"]
    assert [v.state["balance"] for v in by_key] == [10, 10, 20]
    assert [v.changes for v in by_key[1:]] == [{"name": ("one", "two")}, {"balance": (10, 20)}]
    ids = [v.transaction_id for v in by_key]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [v.version_id for v in by_key] == sorted(v.version_id for v in by_key)
    assert all(v.primary_key == (1,) for v in by_key), "another record's versions leaked in"


def test_history_of_a_deleted_record(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    account = add(session, Account(id=1, name="one", balance=5))
    rename(session, 1, "two")
    remove(session, Account, 1)
    assert session.get(Account, 1) is None
    versions = history(session, Account, 1)
    assert history(session, account) == versions  # the detached instance still has its key
    session.rollback()
    assert [v.operation for v in versions] == [Operation.INSERT, Operation.UPDATE, Operation.DELETE]
    delete = versions[-1]
    assert delete.state == {"id": 1, "name": "two", "balance": 5}
    assert delete.changes == {"id": (1, None), "name": ("two", None), "balance": (5, None)}


def test_history_of_a_re_created_record_keeps_both_lives(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    add(session, Account(id=1, name="first life"))
    remove(session, Account, 1)
    add(session, Account(id=1, name="second life"))
    versions = history(session, Account, 1)
    session.rollback()
    assert [(v.operation, v.state["name"]) for v in versions] == [
        (Operation.INSERT, "first life"),
        (Operation.DELETE, "first life"),
        (Operation.INSERT, "second life"),
    ]


def test_history_of_an_unknown_key_is_empty(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    add(session, Account(id=1, name="one"))
    assert history(session, Account, 2) == []
    assert history(session, Membership, (1, "nobody")) == []
    session.rollback()


# -- Version and Transaction -----------------------------------------------------------------------


def test_version_and_transaction_fields(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    before = dt.datetime.now(dt.UTC)
    with audit_context(
        actor=42, source_ip="2001:DB8::1", request_id="req-1", reason="signup", plan="gold"
    ):
        session.add(Account(id=1, name="one"))
        session.commit()
    after = dt.datetime.now(dt.UTC)
    [version] = history(session, Account, 1)
    row = session.execute(sa.select(Base.metadata.tables[versioning.TRANSACTION_TABLE])).one()
    session.rollback()

    assert version.model is Account
    assert version.operation is Operation.INSERT
    assert version.state == {"id": 1, "name": "one", "balance": 0}
    assert version.changes == {"id": (None, 1), "name": (None, "one"), "balance": (None, 0)}
    assert isinstance(version.version_id, int)
    assert version.primary_key == (1,)

    tx = version.transaction
    assert isinstance(tx, versioning.Transaction)
    assert tx.id == version.transaction_id == row.id
    assert tx.actor == "42"
    assert tx.source_ip == "2001:db8::1"
    assert tx.request_id == "req-1"
    assert tx.reason == "signup"
    assert dict(tx.extra) == {"plan": "gold"}
    assert tx.issued_at.tzinfo is not None and tx.issued_at.utcoffset() == dt.timedelta(0)
    assert before <= tx.issued_at <= after

    with pytest.raises(dataclasses.FrozenInstanceError):
        version.state = {}  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        tx.actor = "mallory"  # type: ignore[misc]


def test_transaction_without_context(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    add(session, Account(id=1, name="one"))
    [version] = history(session, Account, 1)
    session.rollback()
    tx = version.transaction
    assert tx is not None
    assert (tx.actor, tx.source_ip, tx.request_id, tx.reason) == (None, None, None, None)
    assert dict(tx.extra) == {}


def test_versions_of_one_transaction_share_it(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    with audit_context(actor="alice"):
        session.add_all([Account(id=1, name="one"), Account(id=2, name="two")])
        session.flush()
        session.get(Account, 1).name = "uno"  # type: ignore[union-attr]
        session.commit()
    one, two = history(session, Account, 1), history(session, Account, 2)
    session.rollback()
    assert [v.operation for v in one] == [Operation.INSERT, Operation.UPDATE]
    assert len({v.transaction_id for v in one + two}) == 1
    assert one[0].transaction == one[1].transaction == two[0].transaction
    assert one[0].version_id < one[1].version_id


def test_to_instance_is_transient_with_the_state(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    add(session, Account(id=1, name="one", balance=3))
    rename(session, 1, "two")
    remove(session, Account, 1)
    versions = history(session, Account, 1)
    session.rollback()
    for version in versions:
        instance = version.to_instance()
        assert type(instance) is Account
        assert sa.inspect(instance).transient
        assert instance not in session
        assert {k: getattr(instance, k) for k in version.state} == dict(version.state)
    assert versions[-1].to_instance().name == "two"  # a delete: the state before it
    first = versions[0].to_instance()
    first.name = "changed"
    assert versions[0].state["name"] == "one"


# -- as_of() ---------------------------------------------------------------------------------------


def test_as_of_around_a_transaction(create_tables: Tables, sessions: Sessions) -> None:
    """Exactly at issued_at, the transaction is in; a microsecond before, it is not."""
    create_tables(Base.metadata)
    session = sessions()
    add(session, Account(id=1, name="v1"))
    rename(session, 1, "v2")
    rename(session, 1, "v3")
    v1, v2, v3 = history(session, Account, 1)
    t1, t2, t3 = issued_at(v1), issued_at(v2), issued_at(v3)
    assert t1 < t2 < t3

    assert name_as_of(session, t1 - US) is None  # before creation
    assert name_as_of(session, t1) == "v1"
    assert name_as_of(session, t1 + US) == "v1"
    assert name_as_of(session, t2 - US) == "v1"
    assert name_as_of(session, t2) == "v2"
    assert name_as_of(session, t2 + US) == "v2"
    assert name_as_of(session, t3 - US) == "v2"
    assert name_as_of(session, t3) == "v3"
    assert name_as_of(session, dt.datetime.now(dt.UTC) + dt.timedelta(days=1)) == "v3"
    assert name_as_of(session, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)) is None
    session.rollback()


def test_as_of_accepts_any_time_zone(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    add(session, Account(id=1, name="v1"))
    rename(session, 1, "v2")
    v2 = history(session, Account, 1)[1]
    elsewhere = dt.timezone(dt.timedelta(hours=-7))
    assert name_as_of(session, issued_at(v2).astimezone(elsewhere)) == "v2"
    assert name_as_of(session, (issued_at(v2) - US).astimezone(elsewhere)) == "v1"
    session.rollback()


def test_as_of_transaction_id(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    add(session, Account(id=9, name="someone else"))
    add(session, Account(id=1, name="v1"))
    add(session, Account(id=2, name="other"))  # a transaction that does not touch record 1
    rename(session, 1, "v2")
    v1, v2 = history(session, Account, 1)
    [other] = history(session, Account, 2)
    [before] = history(session, Account, 9)
    assert name_as_of(session, before.transaction_id) is None
    assert name_as_of(session, v1.transaction_id - 1) is None
    assert name_as_of(session, v1.transaction_id) == "v1"
    assert name_as_of(session, other.transaction_id) == "v1"
    assert name_as_of(session, v2.transaction_id) == "v2"
    assert name_as_of(session, v2.transaction_id + 1000) == "v2"
    result = as_of(session, Account, 1, v1.transaction_id)
    assert isinstance(result, Account) and sa.inspect(result).transient
    assert (result.id, result.name, result.balance) == (1, "v1", 0)
    session.rollback()


def test_as_of_after_deletion_and_re_creation(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    add(session, Account(id=1, name="first"))
    remove(session, Account, 1)
    add(session, Account(id=1, name="second"))
    created, deleted, recreated = history(session, Account, 1)
    assert name_as_of(session, created.transaction_id) == "first"
    assert name_as_of(session, deleted.transaction_id) is None
    assert name_as_of(session, issued_at(deleted)) is None
    assert name_as_of(session, issued_at(recreated) - US) is None
    assert name_as_of(session, recreated.transaction_id) == "second"
    assert name_as_of(session, issued_at(recreated)) == "second"
    assert name_as_of(session, 10**9) == "second"
    session.rollback()


def test_as_of_rejects_a_naive_datetime(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    add(session, Account(id=1, name="one"))
    naive = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with pytest.raises(ValueError, match=r"naive|timezone"):
        as_of(session, Account, 1, naive)
    session.rollback()


def test_composite_keys(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    add(session, Membership(org_id=1, user_id="ann", role="member"))
    add(session, Membership(org_id=1, user_id="bob", role="owner"))
    add(session, Membership(org_id=2, user_id="ann", role="guest"))
    membership = session.get(Membership, (1, "ann"))
    assert membership is not None
    membership.role = "admin"
    session.commit()

    versions = history(session, Membership, (1, "ann"))
    assert history(session, membership) == versions
    assert [v.state["role"] for v in versions] == ["member", "admin"]
    assert all(v.primary_key == (1, "ann") for v in versions)
    assert versions[1].changes == {"role": ("member", "admin")}
    assert [v.state["role"] for v in history(session, Membership, (2, "ann"))] == ["guest"]

    old = as_of(session, Membership, (1, "ann"), versions[0].transaction_id)
    assert old is not None and (old.org_id, old.user_id, old.role) == (1, "ann", "member")
    new = as_of(session, Membership, (1, "ann"), issued_at(versions[1]))
    assert new is not None and new.role == "admin"
    assert as_of(session, Membership, (1, "ann"), issued_at(versions[0]) - US) is None
    assert as_of(session, Membership, (2, "bob"), 10**9) is None

    for wrong in ((1,), (1, "ann", 3), 1):
        with pytest.raises(versioning.VersioningError):
            history(session, Membership, wrong)
        with pytest.raises(versioning.VersioningError):
            as_of(session, Membership, wrong, 10**9)
    with pytest.raises(versioning.VersioningError):
        history(session, Account, (1, 2))
    session.rollback()


@contextmanager
def count_statements(engine: sa.Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_as_of_is_one_query_whatever_the_history_length(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    add(session, Account(id=1, name="v0"))
    add(session, Account(id=2, name="w0"))
    for n in range(1, 40):
        session.get(Account, 1).name = f"v{n}"  # type: ignore[union-attr]
        session.commit()
    versions = history(session, Account, 1)
    middle = versions[20]
    session.connection()  # begin first: on SQLite, BEGIN is a statement too
    # MariaDB turns a datetime into a transaction id with a first (indexed) query, since it
    # cannot probe an index with a subquery's value; the other backends need one query.
    by_time = 2 if engine.dialect.name in ("mysql", "mariadb") else 1
    for at, expected, queries in (
        (middle.transaction_id, "v20", 1),
        (issued_at(middle), "v20", by_time),
        (versions[-1].transaction_id, "v39", 1),
    ):
        with count_statements(engine) as statements:
            result = as_of(session, Account, 1, at)
        assert result is not None and result.name == expected
        assert len(statements) == queries, statements
    with count_statements(engine) as statements:
        assert as_of(session, Account, 2, issued_at(middle)) is not None
        assert as_of(session, Account, 3, issued_at(middle)) is None
    assert len(statements) == 2 * by_time, statements
    session.rollback()


@pytest.mark.parametrize(
    ("model", "key_columns"),
    [(Account, ["id"]), (Membership, ["org_id", "user_id"])],
    ids=["single", "composite"],
)
def test_as_of_has_a_record_index(
    create_tables: Tables, model: type[Any], key_columns: list[str]
) -> None:
    """An index leads with the key columns then the transaction id: an as_of lookup seeks."""
    engine = create_tables(Base.metadata)
    leading = [*key_columns, "versioning_transaction_id"]
    table = versioning.history_table(model)
    declared = [
        index
        for index in table.indexes
        if [c.name for c in index.columns][: len(leading)] == leading
    ]
    assert declared, [[c.name for c in i.columns] for i in table.indexes]
    in_database = [
        index
        for index in sa.inspect(engine).get_indexes(table.name)
        if list(index["column_names"])[: len(leading)] == leading
    ]
    assert in_database, sa.inspect(engine).get_indexes(table.name)


def test_reading_history_first_in_a_process_needs_no_configured_mappers() -> None:
    """as_of / to_instance may be the first ORM use of a process (e.g. an audit script)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import datetime as dt
        import sqlalchemy as sa
        from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
        from versioning import Versioned, as_of, history_table, transaction_table

        class Base(DeclarativeBase):
            pass

        class Note(Versioned, Base):
            __tablename__ = "notes"
            id: Mapped[int] = mapped_column(primary_key=True)
            text: Mapped[str] = mapped_column(sa.String(20))

        engine = sa.create_engine("sqlite://")
        Base.metadata.create_all(engine)
        with engine.begin() as connection:  # history written without any ORM use
            connection.execute(
                transaction_table(Base.metadata).insert().values(
                    id=1, issued_at=dt.datetime.now(dt.UTC)
                )
            )
            connection.execute(
                history_table(Note).insert().values(
                    versioning_transaction_id=1, versioning_operation="insert", id=1, text="x"
                )
            )
        assert not sa.inspect(Note).configured
        with Session(engine) as session:
            print(as_of(session, Note, 1, 1).text)
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "x"


@pytest.mark.parametrize("takes_arrays", [True, False], ids=["one-call", "one-by-one"])
def test_history_parses_the_changes_documents_with_the_engines_deserializer(
    create_tables: Tables, takes_arrays: bool
) -> None:
    """The ``changes`` documents of one history() call are parsed in one call of the engine's
    JSON deserializer (one array); a deserializer that refuses an array is called per document.
    Either way every version reads back the same."""
    import json

    calls: list[str] = []

    def deserialize(text: str) -> Any:
        calls.append(text)
        if text.startswith("[") and not takes_arrays:
            raise ValueError("documents only")
        return json.loads(text)

    engine = create_tables(Base.metadata)
    mine = sa.create_engine(engine.url, json_deserializer=deserialize)
    try:
        with Session(mine) as session:
            add(session, Account(id=1, name="a", balance=0))
            for n in range(1, 4):
                account = session.get_one(Account, 1)
                account.name, account.balance = f"a{n}", n
                session.commit()
            session.delete(session.get_one(Account, 1))
            session.commit()
            calls.clear()
            versions = history(session, Account, 1)
        assert [v.operation for v in versions] == [
            Operation.INSERT,
            Operation.UPDATE,
            Operation.UPDATE,
            Operation.UPDATE,
            Operation.DELETE,
        ]
        assert [v.changes for v in versions[1:4]] == [
            {"name": (f"a{n - 1}" if n > 1 else "a", f"a{n}"), "balance": (n - 1, n)}
            for n in range(1, 4)
        ]
        documents = [text for text in calls if not text.startswith("[")]
        assert len(documents) == (0 if takes_arrays else 3)
    finally:
        mine.dispose()
