"""``versioning.search``, ``iter_search`` and ``transaction_changes``: history across models, by
every filter and their combinations, paged by keyset under concurrent writes, on every backend."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
from versioning import Operation, Version, Versioned, audit_context, masks

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]


class Base(DeclarativeBase):
    pass


class Invoice(Versioned, Base):
    __tablename__ = "search_invoices"
    __versioned__ = {"mask": {"card": masks.last4}, "personal": ["email"]}
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(20))
    card: Mapped[str | None] = mapped_column(sa.String(40))
    email: Mapped[str | None] = mapped_column(sa.String(80))


class Line(Versioned, Base):
    __tablename__ = "search_lines"
    invoice_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    amount: Mapped[int]


def key(version: Version) -> tuple[str, int, int]:
    return (version.model.__name__, version.transaction_id, version.version_id)


def keys(versions: list[Version]) -> list[tuple[str, int, int]]:
    return [key(v) for v in versions]


def write(session: Session, *objs: Any, **context: Any) -> int:
    """Commit ``objs`` (added) in one transaction under ``context``; its transaction id."""
    with audit_context(**context):
        session.add_all(objs)
        session.commit()
    time.sleep(0.002)  # keeps issued_at of consecutive transactions apart (MariaDB's clock)
    with Session(session.get_bind()) as other:
        latest = versioning.search(other, limit=1)
    return latest[0].transaction_id


@pytest.fixture
def story(create_tables: Tables, sessions: Sessions) -> dict[str, Any]:
    """Four transactions by two actors over two models, with an update and a delete."""
    create_tables(Base.metadata)
    session = sessions()
    invoice = Invoice(status="new", card="4111111111111111", email="a@example.com")
    t1 = write(
        session,
        invoice,
        Line(invoice_id=1, number=1, amount=10),
        actor="alice",
        source_ip="203.0.113.7",
        request_id="r-1",
    )
    invoice.status = "paid"
    t2 = write(session, Line(invoice_id=1, number=2, amount=20), actor="bob", request_id="r-2")
    session.delete(session.get(Line, (1, 1)))
    t3 = write(session, actor="alice", source_ip="2001:DB8::1", request_id="r-3")
    other = Invoice(status="new")
    t4 = write(session, other, actor="carol")
    return {"session": session, "invoice": invoice.id, "other": other.id, "tx": [t1, t2, t3, t4]}


def test_everything_newest_first_and_oldest_first(story: dict[str, Any]) -> None:
    session = story["session"]
    t1, t2, t3, t4 = story["tx"]
    found = versioning.search(session)
    assert [(v.model.__name__, v.transaction_id, v.operation) for v in found] == [
        ("Invoice", t4, Operation.INSERT),
        ("Line", t3, Operation.DELETE),
        ("Line", t2, Operation.INSERT),
        ("Invoice", t2, Operation.UPDATE),
        ("Line", t1, Operation.INSERT),
        ("Invoice", t1, Operation.INSERT),
    ]
    oldest = versioning.search(session, newest_first=False)
    assert keys(oldest) == keys(found)[::-1]
    assert all(v.transaction is not None for v in found)
    assert found[-1].transaction is not None and found[-1].transaction.actor == "alice"
    assert found[-1].transaction.source_ip == "203.0.113.7"


def test_each_filter(story: dict[str, Any]) -> None:
    session = story["session"]
    t1, t2, t3, t4 = story["tx"]

    def tx(**filters: Any) -> list[tuple[str, int]]:
        return [(v.model.__name__, v.transaction_id) for v in versioning.search(session, **filters)]

    assert tx(model=Line) == [("Line", t3), ("Line", t2), ("Line", t1)]
    assert tx(model=Line, pk=(1, 1)) == [("Line", t3), ("Line", t1)]
    assert tx(model=Invoice, pk=story["invoice"]) == [("Invoice", t2), ("Invoice", t1)]
    assert tx(table="search_invoices") == [("Invoice", t4), ("Invoice", t2), ("Invoice", t1)]
    assert tx(table="search_lines_history") == tx(model=Line)
    assert tx(actor="alice") == [("Line", t3), ("Line", t1), ("Invoice", t1)]
    assert tx(actor="nobody") == []
    assert tx(operation=Operation.DELETE) == [("Line", t3)]
    assert tx(operation="update") == [("Invoice", t2)]
    assert tx(transaction_id=t2) == [("Line", t2), ("Invoice", t2)]
    assert tx(request_id="r-2") == [("Line", t2), ("Invoice", t2)]
    assert tx(source_ip="203.0.113.7") == [("Line", t1), ("Invoice", t1)]
    # As the audit context stored it: normalised.
    assert tx(source_ip="2001:db8:0::1") == [("Line", t3)]
    moments = {v.transaction_id: v.transaction.issued_at for v in versioning.search(session)}  # type: ignore[union-attr]
    assert tx(since=moments[t3]) == [("Invoice", t4), ("Line", t3)]
    assert tx(until=moments[t2]) == [("Line", t1), ("Invoice", t1)]
    assert tx(since=moments[t2], until=moments[t4]) == [
        ("Line", t3),
        ("Line", t2),
        ("Invoice", t2),
    ]
    # Another time zone names the same moment.
    assert tx(since=moments[t3].astimezone(dt.timezone(dt.timedelta(hours=-5)))) == tx(
        since=moments[t3]
    )


def test_filters_combine(story: dict[str, Any]) -> None:
    session = story["session"]
    t1, t2, t3, _ = story["tx"]

    def tx(**filters: Any) -> list[tuple[str, int]]:
        return [(v.model.__name__, v.transaction_id) for v in versioning.search(session, **filters)]

    assert tx(actor="alice", model=Line) == [("Line", t3), ("Line", t1)]
    assert tx(actor="alice", operation="insert") == [("Line", t1), ("Invoice", t1)]
    assert tx(actor="alice", operation="insert", table="search_lines") == [("Line", t1)]
    assert tx(model=Line, pk=(1, 1), operation="delete", request_id="r-3") == [("Line", t3)]
    assert tx(model=Line, pk=(1, 1), operation="delete", request_id="r-2") == []
    assert tx(actor="bob", transaction_id=t2, model=Invoice) == [("Invoice", t2)]
    assert tx(actor="bob", transaction_id=t1) == []
    assert tx(source_ip="203.0.113.7", newest_first=False, limit=1) == [("Invoice", t1)]


def test_pages_follow_each_other(story: dict[str, Any]) -> None:
    session = story["session"]
    for newest_first in (True, False):
        every = keys(versioning.search(session, newest_first=newest_first))
        for size in (1, 2, 4):
            seen: list[tuple[str, int, int]] = []
            page = versioning.search(session, limit=size, newest_first=newest_first)
            while page:
                assert len(page) <= size
                seen += keys(page)
                page = versioning.search(
                    session, limit=size, newest_first=newest_first, after=page[-1]
                )
            assert seen == every
            assert list(map(key, versioning.iter_search(session, newest_first=newest_first))) == (
                every
            )


@pytest.mark.parametrize("newest_first", [True, False])
def test_pages_under_concurrent_inserts(
    create_tables: Tables, sessions: Sessions, newest_first: bool
) -> None:
    """Another connection commits between pages: no version is skipped or shown twice."""
    create_tables(Base.metadata)
    writer = sessions()
    for n in range(6):
        write(writer, Invoice(status=f"s{n}"), Line(invoice_id=n, number=1, amount=n))
    with sessions() as reader:
        before = keys(versioning.search(reader, limit=None))
    seen: list[tuple[str, int, int]] = []
    page: list[Version] = []
    n = 100
    while True:
        with sessions() as reader:  # a fresh snapshot per page, as a web request has
            page = versioning.search(
                reader, limit=3, newest_first=newest_first, after=page[-1] if page else None
            )
        if not page:
            break
        seen += keys(page)
        if n < 104:  # while the first pages are read (then oldest first can catch up)
            n += 1
            write(writer, Invoice(status=f"s{n}"), Line(invoice_id=n, number=1, amount=n))
    assert len(seen) == len(set(seen))
    if newest_first:
        assert seen == before  # what was there when paging began; the new ones come on top
    else:
        assert seen[: len(before)] == before[::-1]  # and the new ones, after them
        with sessions() as reader:
            assert (
                seen == keys(versioning.search(reader, limit=None, newest_first=False))[: len(seen)]
            )


def test_transaction_changes_across_models(story: dict[str, Any]) -> None:
    session = story["session"]
    t1, t2, _, _ = story["tx"]
    with audit_context(actor="dave"):
        for obj in (
            Line(invoice_id=9, number=3, amount=3),
            Invoice(status="x"),
            Line(invoice_id=9, number=1, amount=1),
            Invoice(status="y"),
            Line(invoice_id=9, number=2, amount=2),
        ):
            session.add(obj)
            session.flush()  # one at a time: this is the order they are written in
        session.commit()
    t5 = versioning.search(session, limit=1)[0].transaction_id
    changes = versioning.transaction_changes(session, t5)
    # By history table name, each table's versions in write order.
    assert [v.model.__name__ for v in changes] == ["Invoice", "Invoice", "Line", "Line", "Line"]
    assert [v.state["status"] for v in changes[:2]] == ["x", "y"]
    assert [v.state["number"] for v in changes[2:]] == [3, 1, 2]
    assert {v.transaction_id for v in changes} == {t5}
    assert [v.model.__name__ for v in versioning.transaction_changes(session, t2)] == [
        "Invoice",
        "Line",
    ]
    assert versioning.transaction_changes(session, t1 - 1000) == []


def test_masked_values_stay_masked_and_erased_values_are_flagged(story: dict[str, Any]) -> None:
    session = story["session"]
    found = versioning.search(session, model=Invoice, pk=story["invoice"], newest_first=False)
    assert found[0].state["card"] == "************1111"
    assert found[0].state["email"] == "a@example.com"
    versioning.erase(session, Invoice, story["invoice"], columns=["email"], reason="GDPR")
    session.commit()
    found = versioning.search(session, model=Invoice, pk=story["invoice"], newest_first=False)
    assert [v.erased for v in found] == [frozenset({"email"}), frozenset({"email"})]
    assert found[0].state["email"] is None and found[0].state["card"] == "************1111"


def test_changes_the_session_holds_are_found(story: dict[str, Any]) -> None:
    session = story["session"]
    session.add(Invoice(status="pending"))
    found = versioning.search(session, limit=1)
    assert found[0].state["status"] == "pending"
    session.rollback()
    assert versioning.search(session, limit=1)[0].state["status"] == "new"


def test_nothing_before_the_tables_exist(engine: sa.Engine) -> None:
    with Session(engine) as session:
        assert versioning.search(session) == []
        assert versioning.transaction_changes(session, 1) == []


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"since": dt.datetime(2026, 1, 1)}, "since must be a timezone-aware datetime"),
        ({"until": "2026-01-01"}, "until must be a timezone-aware datetime"),
        ({"pk": 1}, "pk= needs model="),
        ({"model": Line, "pk": 1}, "Line has the primary key (invoice_id, number)"),
        ({"operation": "create"}, "operation must be an Operation or one of"),
        ({"limit": 0}, "limit must be a positive int"),
        ({"transaction_id": "7"}, "transaction_id must be an int"),
        ({"source_ip": "203.0.113"}, "source_ip must be an IPv4 or IPv6 address"),
        ({"table": "nope"}, "no history is recorded for a table named 'nope'"),
        ({"table": Line}, "table must be a table's name"),
        ({"after": 7}, "after must be the last Version of the previous page"),
        ({"model": Line, "table": "search_invoices"}, "model Line is not recorded in the history"),
    ],
)
def test_arguments_refused(story: dict[str, Any], filters: dict[str, Any], message: str) -> None:
    with pytest.raises(versioning.ArgumentError) as raised:
        versioning.search(story["session"], **filters)
    assert message in str(raised.value)


def test_refused_before_anything_is_written(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    session = sessions()
    session.add(Invoice(status="pending"))
    with pytest.raises(versioning.ArgumentError):
        versioning.search(session, since=dt.datetime(2026, 1, 1))
    assert session.new  # not flushed


def test_refuses_an_engine() -> None:
    with pytest.raises(versioning.ArgumentError, match=r"takes a sqlalchemy\.orm\.Session"):
        versioning.search(sa.create_engine("sqlite://"))  # type: ignore[arg-type]


# -- indexes: a filter on the transaction does not scan all history ------------------------------


@pytest.mark.backends("postgresql")
def test_transaction_filters_use_their_index(create_tables: Tables, sessions: Sessions) -> None:
    """PostgreSQL's plan of the query search() sends, over 10,000 transactions, reads the
    transaction table's index for the filter, then the history table by its transaction index:
    neither is scanned whole."""
    engine = create_tables(Base.metadata)
    transactions = versioning.transaction_table(Base.metadata)
    history = versioning.history_table(Invoice)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with engine.begin() as connection:
        first = connection.scalar(sa.select(sa.func.coalesce(sa.func.max(transactions.c.id), 0)))
        connection.exec_driver_sql(
            f"INSERT INTO {transactions.name} (id, issued_at, actor, request_id, source_ip) "
            f"SELECT {first} + i, %(start)s + i * interval '1 second', 'user-' || (i %% 500), "
            f"'req-' || i, '10.0.' || (i %% 200) || '.' || (i %% 250) "
            f"FROM generate_series(1, 10000) AS i",
            {"start": start},
        )
        connection.exec_driver_sql(
            f"INSERT INTO {history.name} (versioning_transaction_id, versioning_operation, id, "
            f"status) SELECT {first} + i, 'insert', {first} + i, 'new' "
            f"FROM generate_series(1, 10000) AS i"
        )
        connection.exec_driver_sql(f"ANALYZE {transactions.name}")
        connection.exec_driver_sql(f"ANALYZE {history.name}")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"actor": "user-7"}, "ix_versioning_transaction_actor"),
        ({"request_id": "req-1234"}, "ix_versioning_transaction_request_id"),
        ({"source_ip": "10.0.7.7"}, "ix_versioning_transaction_source_ip"),
        (
            {
                "since": start + dt.timedelta(seconds=5_000),
                "until": start + dt.timedelta(seconds=5_020),
            },
            "ix_versioning_transaction_issued_at",
        ),
    ]
    sent: list[tuple[str, Any]] = []

    def note(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().startswith("SELECT") and history.name in statement:
            sent.append((statement, parameters))

    for filters, index in cases:
        sent.clear()
        with sessions() as session:
            sa.event.listen(engine, "before_cursor_execute", note)
            try:
                found = versioning.search(session, limit=10, **filters)
            finally:
                sa.event.remove(engine, "before_cursor_execute", note)
            assert found, filters
            [(statement, parameters)] = sent
            plan = "\n".join(
                session.connection().exec_driver_sql("EXPLAIN " + statement, parameters).scalars()
            )
        assert index in plan, plan
        # (The digest table, empty here, may be scanned: it holds one row per transaction.)
        assert f"Seq Scan on {history.name}" not in plan, plan
        assert f"Seq Scan on {transactions.name}" not in plan, plan


def test_include_events_merges_them_in_transaction_order_and_pages(
    story: dict[str, Any],
) -> None:
    session = story["session"]
    t1, t2, t3, t4 = story["tx"]
    session.rollback()  # SQLite: an event waits for no open transaction
    with audit_context(actor="mallory", source_ip="203.0.113.7"):
        denied = versioning.record_event(
            session, "login", outcome="denied", target="alice", metadata=Base.metadata
        )
    failed = versioning.record_event(session, "export", outcome="failed", metadata=Base.metadata)
    assert versioning.search(session) == versioning.search(session, include_events=False)
    assert all(isinstance(v, Version) for v in versioning.search(session))

    def shown(items: list[Version | versioning.Event]) -> list[tuple[str, int]]:
        return [
            (v.action if isinstance(v, versioning.Event) else v.model.__name__, v.transaction_id)
            for v in items
        ]

    everything = versioning.search(session, include_events=True)
    assert shown(everything) == [
        ("export", failed.transaction_id),
        ("login", denied.transaction_id),
        ("Invoice", t4),
        ("Line", t3),
        ("Line", t2),
        ("Invoice", t2),
        ("Line", t1),
        ("Invoice", t1),
    ]
    oldest = versioning.search(session, include_events=True, newest_first=False)
    assert shown(oldest) == shown(everything)[::-1]
    # Pages of 3, after a Version or after an Event: each item once, in order.
    for newest_first in (True, False):
        pages: list[Version | versioning.Event] = []
        last: Version | versioning.Event | None = None
        while True:
            page = versioning.search(
                session, include_events=True, newest_first=newest_first, limit=3, after=last
            )
            pages.extend(page)
            if len(page) < 3:
                break
            last = page[-1]
        assert shown(pages) == shown(everything if newest_first else oldest)
    by_actor = versioning.search(session, include_events=True, actor="mallory")
    assert [e.id for e in by_actor if isinstance(e, versioning.Event)] == [denied.id]
    assert len(by_actor) == 1
    assert shown(versioning.search(session, include_events=True, outcome="failed")) == [
        ("export", failed.transaction_id)
    ]
    assert shown(versioning.search(session, include_events=True, action=["login", "x"])) == [
        ("login", denied.transaction_id)
    ]
    # A filter only versions have leaves the events out.
    assert shown(versioning.search(session, include_events=True, model=Line, limit=1)) == [
        ("Line", t3)
    ]
    assert shown(versioning.search(session, include_events=True, operation="update")) == [
        ("Invoice", t2)
    ]
    with pytest.raises(versioning.ArgumentError, match="include_events=True"):
        versioning.search(session, outcome="denied")
    with pytest.raises(versioning.ArgumentError, match="after= is an Event"):
        versioning.search(session, after=denied)
