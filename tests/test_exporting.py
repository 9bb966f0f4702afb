"""``versioning.exporting.export``: CSV and JSON Lines read back, formulas neutralised, masked and
erased values kept so, gzip, filters, on every backend."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
import versioning.exporting
from versioning import Versioned, audit_context, masks
from versioning.exporting import CSV_COLUMNS, export, plain, record_text

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]


class Base(DeclarativeBase):
    pass


class Payment(Versioned, Base):
    __tablename__ = "export_payments"
    __versioned__ = {"mask": {"card": masks.last4}, "personal": ["payer"]}
    id: Mapped[int] = mapped_column(primary_key=True)
    payer: Mapped[str | None] = mapped_column(sa.String(80))
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))
    note: Mapped[str | None] = mapped_column(sa.String(80))
    card: Mapped[str | None] = mapped_column(sa.String(40))
    paid_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    blob: Mapped[bytes | None] = mapped_column(sa.LargeBinary(16))
    token: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid())


class Allocation(Versioned, Base):
    __tablename__ = "export_allocations"
    payment_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    account: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    share: Mapped[int]


PAID = dt.datetime(2026, 3, 3, 12, 30, 15, tzinfo=dt.UTC)  # MariaDB: no microseconds
PAID_TEXT = ("2026-03-03T12:30:15+00:00", "2026-03-03T12:30:15")
TOKEN = uuid.UUID("12345678-1234-5678-1234-567812345678")


@pytest.fixture
def written(create_tables: Tables, sessions: Sessions) -> dict[str, Any]:
    engine = create_tables(Base.metadata)
    session = sessions()
    payment = Payment(
        payer="Ann",
        amount=Decimal("12.50"),
        note='=HYPERLINK("http://evil")',
        card="4111111111111111",
        paid_at=PAID,
        blob=b"\x00\xff",
        token=TOKEN,
    )
    with audit_context(actor="alice", source_ip="203.0.113.7", request_id="r-1", reason="import"):
        session.add_all([payment, Allocation(payment_id=1, account="+cash", share=100)])
        session.commit()
    with audit_context(actor="bob"):
        payment.note = '-2 refunded, Ünïcode, "quoted"\nnext line'
        payment.amount = Decimal("-2.00")
        session.commit()
    session.delete(session.get(Allocation, (1, "+cash")))
    session.commit()
    return {"engine": engine, "session": session, "payment": payment.id}


def read_csv(text: str) -> list[dict[str, str]]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    return [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]


def test_csv_one_row_per_changed_field(written: dict[str, Any]) -> None:
    out = io.StringIO(newline="")
    count = export(written["session"], out, format="csv")
    assert count == 4
    rows = read_csv(out.getvalue())
    inserted = [r for r in rows if r["table"] == "export_payments" and r["operation"] == "insert"]
    by_field = {r["field"]: r for r in inserted}
    assert set(by_field) == {"id", "payer", "amount", "note", "card", "paid_at", "blob", "token"}
    assert all(r["old"] == "" for r in inserted)  # inserts: old empty
    assert by_field["amount"]["new"] == "12.50"
    assert by_field["note"]["new"] == '\'=HYPERLINK("http://evil")'  # a formula, neutralised
    assert by_field["card"]["new"] == "************1111"  # masked stays masked
    # As the database gives it back: in UTC with its offset where the column keeps one.
    assert by_field["paid_at"]["new"] in PAID_TEXT
    assert by_field["blob"]["new"] == "AP8="
    assert by_field["token"]["new"] == str(TOKEN)
    first = inserted[0]
    assert first["actor"] == "alice" and first["source_ip"] == "203.0.113.7"
    assert first["request_id"] == "r-1" and first["reason"] == "import"
    assert first["record"] == str(written["payment"])
    issued = dt.datetime.fromisoformat(first["issued_at"])
    assert issued.utcoffset() == dt.timedelta(0)
    updated = {r["field"]: r for r in rows if r["operation"] == "update"}
    assert set(updated) == {"note", "amount"}
    assert updated["amount"]["old"] == "12.50" and updated["amount"]["new"] == "'-2.00"
    assert updated["note"]["new"] == '\'-2 refunded, Ünïcode, "quoted"\nnext line'
    assert updated["note"]["actor"] == "bob"
    allocation = [r for r in rows if r["table"] == "export_allocations"]
    assert [(r["operation"], r["field"]) for r in allocation] == [
        ("insert", "payment_id"),
        ("insert", "account"),
        ("insert", "share"),
        ("delete", "payment_id"),
        ("delete", "account"),
        ("delete", "share"),
    ]
    # A composite key as a JSON array, neutralised as any cell.
    assert allocation[0]["record"] == '[1,"+cash"]'
    assert allocation[1]["new"] == "'+cash"
    assert all(r["new"] == "" for r in allocation[3:])  # deletes: new empty
    assert [r["old"] for r in allocation[3:]] == ["1", "'+cash", "100"]


def test_jsonl_one_version_per_line(written: dict[str, Any]) -> None:
    out = io.StringIO()
    assert export(written["session"], out, format="jsonl") == 4
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["table"], d["operation"]) for d in lines] == [
        ("export_allocations", "insert"),
        ("export_payments", "insert"),
        ("export_payments", "update"),
        ("export_allocations", "delete"),
    ]
    allocation, payment, update, _ = lines
    assert allocation["kind"] == "version" and allocation["record"] == [1, "+cash"]
    assert payment["transaction"]["actor"] == "alice"
    assert payment["transaction"]["reason"] == "import"
    assert payment["record"] == [written["payment"]]
    assert payment["state"]["amount"] == "12.50"
    assert payment["state"]["card"] == "************1111"
    assert payment["state"]["paid_at"] in PAID_TEXT
    assert payment["state"]["blob"] == "AP8=" and payment["state"]["token"] == str(TOKEN)
    assert payment["changes"]["payer"] == [None, "Ann"]
    assert update["changes"] == {
        "amount": ["12.50", "-2.00"],
        "note": ['=HYPERLINK("http://evil")', '-2 refunded, Ünïcode, "quoted"\nnext line'],
    }
    assert update["version_id"] > payment["version_id"]
    assert payment["erased"] == []


def test_erased_values_stay_erased(written: dict[str, Any]) -> None:
    session = written["session"]
    versioning.erase(session, Payment, written["payment"], columns=["payer"], reason="GDPR")
    session.commit()
    out = io.StringIO(newline="")
    export(session, out, format="csv", table="export_payments")
    rows = read_csv(out.getvalue())
    payer = [r for r in rows if r["field"] == "payer"]
    assert [(r["operation"], r["old"], r["new"]) for r in payer] == [("insert", "", "[erased]")]
    assert "Ann" not in out.getvalue()
    out = io.StringIO()
    export(session, out, format="jsonl", table="export_payments")
    first = json.loads(out.getvalue().splitlines()[0])
    assert first["erased"] == ["payer"] and first["state"]["payer"] is None
    assert "Ann" not in out.getvalue()


def test_filters_and_paths(written: dict[str, Any], tmp_path: Path) -> None:
    """From an engine or a connection, the tables come from the registry (no model needed)."""
    engine = written["engine"]
    path = tmp_path / "bob.csv"
    assert export(engine, path, format="csv", actor="bob") == 1
    rows = read_csv(path.read_text(encoding="utf-8"))
    assert {r["actor"] for r in rows} == {"bob"}
    gz = tmp_path / "all.jsonl.gz"
    assert export(engine, gz, format="jsonl", newest_first=True) == 4
    with gzip.open(gz, "rt", encoding="utf-8") as stream:
        lines = [json.loads(line) for line in stream]
    assert [d["operation"] for d in lines] == ["delete", "update", "insert", "insert"]
    with engine.connect() as connection:
        out = io.StringIO()
        assert (
            export(connection, out, format="jsonl", table="export_allocations", key=(1, "+cash"))
            == 2
        )
        assert export(connection, io.StringIO(), format="jsonl", operation="delete") == 1


def test_refused_before_anything_is_written(written: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    with pytest.raises(versioning.ArgumentError, match="format must be 'csv' or 'jsonl'"):
        export(written["session"], path, format="xlsx")  # type: ignore[arg-type]
    with pytest.raises(versioning.ArgumentError, match="timezone-aware"):
        export(written["session"], path, since=dt.datetime(2026, 1, 1))
    with pytest.raises(versioning.ArgumentError, match="no history is recorded for a table"):
        export(written["session"], path, table="nope")
    assert not path.exists()


def test_plain_values() -> None:
    """The stable encoding of values, without a database."""
    assert plain(Decimal("1.10")) == "1.10"
    assert plain(dt.datetime(2026, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))) == (
        "2026-01-01T00:00:00+00:00"
    )
    assert plain(dt.datetime(2026, 1, 1, 1)) == "2026-01-01T01:00:00"
    assert plain(dt.date(2026, 1, 2)) == "2026-01-02"
    assert plain(dt.timedelta(days=1, microseconds=5)) == "86400.000005"
    assert plain(b"\x00") == "AA=="
    assert plain(float("nan")) == "NaN" and plain(float("-inf")) == "-Infinity"
    assert plain({"a": [Decimal("1"), None]}) == {"a": ["1", None]}
    assert plain(versioning.Operation.INSERT) == "INSERT"
    assert record_text((7,)) == "7"
    assert record_text(("x",)) == "x"
    assert record_text((1, "a")) == '[1,"a"]'


def test_events_among_the_versions_and_their_filters(
    written: dict[str, Any], tmp_path: Path
) -> None:
    engine = written["engine"]
    written["session"].rollback()
    with audit_context(actor="bob", source_ip="203.0.113.9"):
        event = versioning.record_event(
            engine, "refund", outcome="denied", target="+payment 1", metadata=Base.metadata
        )
    out = io.StringIO(newline="")
    assert export(engine, out, format="csv") == 5
    rows = read_csv(out.getvalue())
    assert rows[-1] == {
        "transaction_id": str(event.transaction_id),
        "issued_at": rows[-1]["issued_at"],
        "actor": "bob",
        "source_ip": "203.0.113.9",
        "request_id": "",
        "reason": "",
        "table": "versioning_event",
        "record": "'+payment 1",
        "operation": "event",
        "field": "refund",
        "old": "",
        "new": "denied",
    }
    lines = io.StringIO()
    assert export(engine, lines, format="jsonl", actor="bob", newest_first=True) == 2
    kinds = [json.loads(line)["kind"] for line in lines.getvalue().splitlines()]
    assert kinds == ["event", "version"]
    assert export(engine, io.StringIO(), format="jsonl", actor="bob", events=False) == 1
    assert export(engine, io.StringIO(), format="jsonl", operation="update") == 1
    assert export(engine, io.StringIO(), format="jsonl", outcome=["denied", "x"]) == 1
    assert export(engine, io.StringIO(), format="jsonl", action="login") == 0
    path = tmp_path / "refused.csv"
    with pytest.raises(versioning.ArgumentError, match="action must be a str or a list"):
        export(engine, path, action=5)
    with pytest.raises(versioning.ArgumentError, match="unknown filter"):
        export(engine, path, colour="red")
    assert not path.exists()


def test_refused_arguments_name_what_to_pass(written: dict[str, Any], tmp_path: Path) -> None:
    engine, session = written["engine"], written["session"]
    with pytest.raises(versioning.ArgumentError, match="output must be a file path or a text"):
        export(session, 42)  # type: ignore[arg-type]
    with pytest.raises(versioning.ArgumentError, match="takes a Session, an Engine or a Connec"):
        export("sqlite://", io.StringIO())  # type: ignore[arg-type]
    with pytest.raises(versioning.ArgumentError, match=r"catalog= a versioning\.catalog\.Catalog"):
        export(engine, io.StringIO(), catalog="mine")  # type: ignore[arg-type]
    with pytest.raises(versioning.ArgumentError, match=r"unknown filter.*colour; the filters are"):
        export(engine, io.StringIO(), colour="red")
    with pytest.raises(versioning.ArgumentError, match="events must be True or False"):
        export(engine, io.StringIO(), events="yes")  # type: ignore[arg-type]
    with pytest.raises(versioning.ArgumentError, match="limit must be a positive int"):
        export(engine, io.StringIO(), limit=0)
    with pytest.raises(versioning.ArgumentError, match="source_ip must be an IPv4 or IPv6"):
        export(engine, tmp_path / "x.csv", source_ip="nope")
    assert not (tmp_path / "x.csv").exists()


def test_erased_values_stay_erased_in_updates_and_deletes(written: dict[str, Any]) -> None:
    session = written["session"]
    payment = session.get(Payment, written["payment"])
    payment.payer = "Bea"
    session.commit()
    session.delete(payment)
    session.commit()
    versioning.erase(session, Payment, written["payment"], columns=["payer"], reason="GDPR")
    session.commit()
    out = io.StringIO(newline="")
    export(session, out, format="csv", table="export_payments")
    rows = read_csv(out.getvalue())
    assert [(r["operation"], r["old"], r["new"]) for r in rows if r["field"] == "payer"] == [
        ("insert", "", "[erased]"),
        ("update", "[erased]", "[erased]"),
        ("delete", "[erased]", ""),
    ]
    assert "Ann" not in out.getvalue() and "Bea" not in out.getvalue()


def test_values_of_every_kind_as_cells_and_keys() -> None:
    class Subclassed(Decimal):
        pass

    class Day(dt.date):
        pass

    assert plain(Subclassed("1.5")) == "1.5" and plain(Day(2026, 1, 2)) == "2026-01-02"
    assert plain(dt.time(1, 2, 3)) == "01:02:03" and plain(float("inf")) == "Infinity"
    assert plain(2.5) == 2.5 and plain(True) is True and plain({1, 2}) in ([1, 2], [2, 1])
    assert plain(bytearray(b"\x01")) == "AQ==" and plain(object).startswith("<class")
    assert record_text((uuid.UUID(int=1),)) == "00000000-0000-0000-0000-000000000001"
    assert record_text((True,)) == "true" and record_text((2.5,)) == "2.5"
    assert record_text((Decimal("1.0"),)) == "1.0"
    cells = [versioning.exporting._cell(v) for v in (None, 5, -5, Decimal("-1"), True, [1], "")]
    assert cells == ["", "5", "'-5", "'-1", "true", "[1]", ""]


def test_the_engines_json_deserializer_decodes_the_changes(written: dict[str, Any]) -> None:
    """The changes are read as their stored text and decoded as the column's type would: with
    the engine's ``json_deserializer`` when it has one."""
    engine = written["engine"]
    decoded: list[str] = []

    def loads(text: str) -> Any:
        decoded.append(text)
        return json.loads(text)

    own = sa.create_engine(engine.url, json_deserializer=loads)
    try:
        out = io.StringIO()
        export(own, out, format="jsonl", table="export_payments")
    finally:
        own.dispose()
    note = ['=HYPERLINK("http://evil")', '-2 refunded, Ünïcode, "quoted"\nnext line']
    changes = {"amount": ["12.50", "-2.00"], "note": note}
    assert changes in [json.loads(text) for text in decoded]  # (the personal column's too)
    reference = io.StringIO()
    export(engine, reference, format="jsonl", table="export_payments")
    assert out.getvalue() == reference.getvalue()
