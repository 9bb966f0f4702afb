"""The shortest path through the library: declare, change, read back, restore."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from versioning import Operation, Versioned, as_of, audit_context, history, restore


class Base(DeclarativeBase):
    pass


class Note(Versioned, Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(100))


def test_round_trip(
    create_tables: Callable[[sa.MetaData], sa.Engine], sessions: Callable[[], Session]
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    with audit_context(actor="alice"):
        session.add(Note(id=1, text="first"))
        session.commit()
    with audit_context(actor="bob"):
        note = session.get(Note, 1)
        assert note is not None
        note.text = "second"
        session.commit()
    versions = history(session, Note, 1)
    assert [v.operation for v in versions] == [Operation.INSERT, Operation.UPDATE]
    assert [v.transaction.actor for v in versions if v.transaction] == ["alice", "bob"]
    assert versions[1].changes == {"text": ("first", "second")}
    old = as_of(session, Note, 1, versions[0].transaction_id)
    assert old is not None and old.text == "first"
    restored = restore(session, versions[0])
    session.commit()
    assert restored.text == "first"
    assert history(session, Note, 1)[-1].changes == {"text": ("second", "first")}
