"""The bytes an export writes are stable: CSV and JSON Lines of a mixed-type history (every column
type of the type matrix, masked, erased and composite-key records, formulas, non-ASCII text) are
compared byte for byte with the files the export wrote before its fast paths (issue 12), on
every backend, read through a session (the models) and from the database's registry alone.

The reference files are in ``tests/data/export_bytes/``; only what differs from one run to the
next is replaced before comparing: transaction ids, ``issued_at`` times and version ids. Write
them again (after a deliberate change of the documented format only) with
``VERSIONING_WRITE_EXPORT_BYTES=1``.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from test_exporting import PAID, TOKEN, Allocation, Payment
from test_exporting import Base as PaymentsBase
from test_types import EMPTY, FALSY, FIRST, SECOND, Item, write
from test_types import Base as TypesBase

import versioning
from versioning import audit_context
from versioning.exporting import export

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

REFERENCE = Path(__file__).resolve().parent / "data" / "export_bytes"
WRITE = os.environ.get("VERSIONING_WRITE_EXPORT_BYTES") == "1"


def _types(create_tables: Tables, sessions: Sessions) -> tuple[sa.Engine, Session]:
    engine = create_tables(TypesBase.metadata)
    session = sessions()
    with audit_context(actor="=cmd|' /C calc'!A0", source_ip="2001:db8::1", reason="types"):
        for values in (FIRST, SECOND, FALSY, EMPTY, FIRST):
            write(session, values)
    session.delete(session.get(Item, 1))
    session.commit()
    return engine, session


def _payments(create_tables: Tables, sessions: Sessions) -> tuple[sa.Engine, Session]:
    engine = create_tables(PaymentsBase.metadata)
    session = sessions()
    payment = Payment(
        id=1,  # counters go on from earlier tests
        payer="Ann",
        amount=Decimal("12.50"),
        note='=HYPERLINK("http://evil")',
        card="4111111111111111",
        paid_at=PAID,
        blob=b"\x00\xff",
        token=TOKEN,
    )
    with audit_context(actor="alice", source_ip="203.0.113.7", request_id="r-1", reason="@import"):
        session.add_all([payment, Allocation(payment_id=1, account="+cash", share=100)])
        session.commit()
    with audit_context(actor="bob", reason='tab\tand "quotes", commas\r\nlines'):
        payment.note = '-2 refunded, Ünïcode, "quoted"\nnext line'
        payment.amount = Decimal("-2.00")
        payment.card = "5500000000000004"
        session.commit()
    session.delete(session.get(Allocation, (1, "+cash")))
    session.commit()
    versioning.erase(session, Payment, payment.id, columns=["payer"], reason="GDPR")
    session.commit()
    return engine, session


DATASETS = {"types": _types, "payments": _payments}

_JSONL_TX = re.compile(r'"transaction":\{"id":\d+,"issued_at":"[^"]*"')
_JSONL_VERSION = re.compile(r'"version_id":\d+')
_CSV_HEAD = re.compile(r"^\d+,[^,]*,", re.MULTILINE)


def normalised(text: str, format: str) -> str:
    """``text`` with what differs between runs (ids given by the database, times) replaced."""
    if format == "jsonl":
        text = _JSONL_TX.sub('"transaction":{"id":0,"issued_at":"T"', text)
        return _JSONL_VERSION.sub('"version_id":0', text)
    return _CSV_HEAD.sub("0,T,", text)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("format", ["csv", "jsonl"])
def test_export_bytes_are_the_reference_files(
    create_tables: Tables, sessions: Sessions, dataset: str, format: str
) -> None:
    engine, session = DATASETS[dataset](create_tables, sessions)
    through_models = io.StringIO(newline="")
    export(session, through_models, format=format)  # type: ignore[arg-type]
    session.rollback()
    from_registry = io.StringIO(newline="")
    export(engine, from_registry, format=format)  # type: ignore[arg-type]
    text = through_models.getvalue()
    assert from_registry.getvalue() == text
    got = normalised(text, format)
    path = REFERENCE / f"{dataset}-{engine.dialect.name}.{format}"
    if WRITE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(got.encode("utf-8"))
    assert got.encode("utf-8") == path.read_bytes()
