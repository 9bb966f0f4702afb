"""``python -m versioning demo``: the library at work on a small SQLite database.

Declares a versioned ``Invoice``, changes it under two actors, then prints its history with the
per-field diffs, reads it back as it was at an earlier moment, deletes it, undeletes it and
prints the history again. Everything it writes stays in the database file for inspection afterwards.
"""

from __future__ import annotations

import datetime as dt
import enum
import sys
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from versioning import (
    Operation,
    Version,
    Versioned,
    as_of,
    audit_context,
    digest,
    history,
    masks,
    restore,
    seal,
    verify,
)

__all__ = ["Invoice", "InvoiceStatus", "run"]


class InvoiceStatus(enum.Enum):
    DRAFT = "draft"
    SENT = "sent"
    PAID = "paid"


class _Base(DeclarativeBase):
    pass


class Invoice(Versioned, _Base):
    """An invoice whose every change is recorded; the card number only ever masked."""

    __tablename__ = "invoices"
    __versioned__ = {"exclude": ["view_count"], "mask": {"card_number": masks.last4}}

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(sa.String(100))
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))
    status: Mapped[InvoiceStatus] = mapped_column(
        sa.Enum(InvoiceStatus, native_enum=False, length=10), default=InvoiceStatus.DRAFT
    )
    card_number: Mapped[str | None] = mapped_column(sa.String(19))
    view_count: Mapped[int] = mapped_column(default=0)


_FIELDS = ("customer", "amount", "status", "card_number", "view_count")


class _Printer:
    """Plain-text output; the arrow falls back to ASCII where the terminal cannot show it."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        encoding = getattr(out, "encoding", None) or "ascii"
        try:
            "→".encode(encoding)
            self.arrow = "→"
        except (UnicodeEncodeError, LookupError):
            self.arrow = "->"

    def line(self, text: str = "") -> None:
        print(text, file=self.out)

    def heading(self, text: str) -> None:
        self.line()
        self.line(f"== {text}")


def _show(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _stamp(moment: dt.datetime) -> str:
    return moment.isoformat(sep=" ", timespec="milliseconds")


def _label(key: tuple[Any, ...]) -> str:
    """``Invoice 1``: a record named as restore() names it, in headings and reasons alike."""
    return f"Invoice {key[0] if len(key) == 1 else key!r}"


def _fields(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={_show(values[key])}" for key in _FIELDS if key in values)


def _print_history(p: _Printer, versions: list[Version]) -> None:
    for version in versions:
        tx = version.transaction
        assert tx is not None  # history() always fills it
        p.line(
            f"  {version.operation.value:<6}  transaction {version.transaction_id}  "
            f"{_stamp(tx.issued_at)}  by {tx.actor or '-'} from {tx.source_ip or '-'}"
        )
        p.line(f"          reason: {tx.reason or '-'}")
        if version.operation is Operation.UPDATE:
            for field, (old, new) in version.changes.items():
                p.line(f"          {field:<12} {_show(old)} {p.arrow} {_show(new)}")
        elif version.operation is Operation.INSERT:
            p.line(f"          created: {_fields(version.state)}")
        else:  # a delete version holds the state that was deleted
            p.line(f"          deleted: {_fields(version.state)}")


def _print_record(p: _Printer, label: str, values: Mapping[str, Any] | None) -> None:
    if values is None:
        p.line(f"  {label}: no such record")
        return
    p.line(f"  {label}: {_fields(values)}")


def _values(invoice: Invoice | None) -> dict[str, Any] | None:
    if invoice is None:
        return None
    return {key: getattr(invoice, key) for key in _FIELDS}


def run(path: Path, out: TextIO = sys.stdout) -> None:
    """Write the demo database to ``path`` (replacing it) and print what happens to ``out``."""
    p = _Printer(out)
    path.unlink(missing_ok=True)
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        _Base.metadata.create_all(engine)
        with Session(engine) as session:
            _story(p, session, path)
    finally:
        engine.dispose()


def _story(p: _Printer, session: Session, path: Path) -> None:
    p.line(f"versioning demo: SQLite database {path.resolve()}")
    p.line("model: Invoice  (amount is a Decimal, status an Enum, card_number masked with")
    p.line("       versioning.masks.last4, view_count excluded from history)")
    p.line("tables: " + ", ".join(sorted(_Base.metadata.tables)))
    name = _label((1,))

    p.heading(f"alice creates {name}")
    with audit_context(actor="alice", source_ip="203.0.113.7", reason="new order #1001"):
        session.add(
            Invoice(
                id=1,
                customer="ACME Corp",
                amount=Decimal("120.00"),
                card_number="4111111111111111",
            )
        )
        session.commit()
    invoice = session.get(Invoice, 1)
    assert invoice is not None
    _print_record(p, "live", _values(invoice))
    before_bob = dt.datetime.now(dt.UTC)

    p.heading("alice views it three times (view_count is excluded: nothing is recorded)")
    with audit_context(actor="alice", source_ip="203.0.113.7"):
        for _ in range(3):
            invoice.view_count += 1
            session.commit()
    p.line(
        f"  view_count={invoice.view_count}; versions recorded so far: "
        f"{len(history(session, Invoice, 1))}"
    )

    p.heading("bob applies a discount, sends it, and the customer changes card")
    with audit_context(actor="bob", source_ip="2001:db8::5", reason="discount agreed by phone"):
        invoice.amount = Decimal("99.50")
        invoice.status = InvoiceStatus.SENT
        invoice.card_number = "5500000000000004"
        session.commit()
    _print_record(p, "live", _values(invoice))

    p.heading(f"history of {name}")
    versions = history(session, Invoice, 1)
    _print_history(p, versions)

    p.heading(f"as_of {_stamp(before_bob)} (after alice's change, before bob's)")
    old = as_of(session, Invoice, 1, before_bob)
    _print_record(p, "as of then", _values(old))
    p.line("  (a transient Invoice: card_number holds the mask's output, and view_count is")
    p.line("   not recorded, so it is None)")

    p.heading(f"bob deletes {name}")
    with audit_context(actor="bob", source_ip="2001:db8::5", reason="sent to the wrong customer"):
        session.delete(invoice)
        session.commit()
    _print_record(p, "live", _values(session.get(Invoice, 1)))
    _print_record(p, "as_of now", _values(as_of(session, Invoice, 1, dt.datetime.now(dt.UTC))))

    # A delete version holds the state just before the deletion, that is the state of the
    # version before it: restoring it re-creates the record as it was then.
    *_, before, deleted = history(session, Invoice, 1)
    assert deleted.operation is Operation.DELETE
    p.heading(f"alice undeletes {name} as of transaction {before.transaction_id}")
    # restore() records why by itself: "undelete Invoice 1 as of transaction N, the version before
    # its deletion".
    with audit_context(actor="alice", source_ip="203.0.113.7"):
        restored: Invoice = restore(session, deleted)
        session.commit()
    _print_record(p, "live", _values(restored))
    p.line("  (card_number is masked in history, so it cannot be given back: it gets its")
    p.line("   default, None; view_count gets its default, 0)")

    p.heading(f"history of {name}, afterwards")
    _print_history(p, history(session, Invoice, 1))

    p.heading("seal the history, keep the digest outside the database, verify")
    made = seal(session)
    session.commit()
    assert made is not None
    kept = digest(session)
    assert kept is not None
    p.line(f"  seal {made.id}: {made.count} transaction digests linked, hash {made.hash[:16]}...")
    p.line(f"  digest to keep elsewhere: {kept.to_json()}")
    report = verify(session, [kept])
    p.line(
        f"  verify: {'ok' if report.ok else 'PROBLEMS'} ({report.transactions_checked} "
        f"transactions, {report.versions_checked} versions checked, {report.unsealed} unsealed)"
    )
    p.line()
    p.line(f"done: inspect {path} with any SQLite client (tables invoices_history and")
    p.line("versioning_transaction).")
