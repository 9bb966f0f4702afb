"""The statements a single-row versioned commit sends, counted on every backend.

A web request's commit of one changed row is the most common write there is: every statement
it sends is a round trip. These tests pin what it sends, kind by kind, so that a statement added
to that path shows up here (raise the count only with a reason).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from models import Base, Note
from sqlalchemy import event
from sqlalchemy.orm import Session

from versioning import Operation, history

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[..., Session]


@contextmanager
def sent(engine: sa.Engine) -> Iterator[list[str]]:
    """The statements sent to the database meanwhile, each as its first word(s) and table."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(_kind(statement))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _kind(statement: str) -> str:
    """``SELECT shared_notes FOR UPDATE``, ``UPDATE shared_notes``, ``INSERT versioning_...``."""
    words = statement.replace('"', "").replace("`", "").split()
    verb = words[0].upper()
    if verb == "INSERT":
        return f"INSERT {words[2]}"  # INSERT INTO <table>
    if verb == "UPDATE":
        return f"UPDATE {words[1]}"
    if verb == "DELETE":
        return f"DELETE {words[2]}"
    if verb == "SELECT":
        table = words[words.index("FROM") + 1] if "FROM" in words else "?"
        return f"SELECT {table}" + (" FOR UPDATE" if "FOR UPDATE" in statement.upper() else "")
    return verb


def _locked_read(engine: sa.Engine) -> str:
    # SQLite has no FOR UPDATE: its writers are serialized by the database lock.
    if engine.dialect.name == "sqlite":
        return "SELECT shared_notes"
    return "SELECT shared_notes FOR UPDATE"


def _begin(engine: sa.Engine) -> list[str]:
    # The test engine's SQLite connections start their transaction with an explicit BEGIN.
    return ["BEGIN"] if engine.dialect.name == "sqlite" else []


WRITES = [
    "INSERT versioning_transaction",
    "INSERT shared_notes_history",
    "INSERT versioning_digest",
]


def test_a_single_row_update_commit_sends_one_locked_read_the_update_and_three_inserts(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions(expire_on_commit=False)
    note = Note(id=1, title="first")
    session.add(note)
    session.commit()
    for n in range(3):  # the first commits compile and cache what later ones reuse
        note.title = f"title {n}"
        with sent(engine) as statements:
            session.commit()
    assert statements == [
        *_begin(engine),
        _locked_read(engine),
        "UPDATE shared_notes",
        *WRITES,
    ]
    versions = history(session, Note, 1)
    assert [v.operation for v in versions] == [Operation.INSERT] + [Operation.UPDATE] * 3
    assert versions[-1].changes == {"title": ("title 1", "title 2")}
    session.rollback()


def test_a_single_row_insert_commit_reads_nothing(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add(Note(id=1, title="warm-up"))
    session.commit()
    session.add(Note(id=2, title="second"))
    with sent(engine) as statements:
        session.commit()
    assert statements == [*_begin(engine), "INSERT shared_notes", *WRITES]


def test_a_single_row_delete_commit_sends_one_locked_read_the_delete_and_three_inserts(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions(expire_on_commit=False)
    notes = [Note(id=i, title=f"note {i}") for i in (1, 2)]
    session.add_all(notes)
    session.commit()
    session.delete(notes[0])
    session.commit()
    session.delete(notes[1])
    with sent(engine) as statements:
        session.commit()
    assert statements == [
        *_begin(engine),
        _locked_read(engine),
        "DELETE shared_notes",
        *WRITES,
    ]
    assert [v.operation for v in history(session, Note, 2)] == [
        Operation.INSERT,
        Operation.DELETE,
    ]
    session.rollback()


@pytest.mark.parametrize("rows", [1, 3])
def test_one_transaction_row_and_one_digest_row_whatever_the_number_of_rows(
    create_tables: Tables, sessions: Sessions, rows: int
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add(Note(id=100, title="warm-up"))
    session.commit()
    session.add_all([Note(id=i, title=f"note {i}") for i in range(1, rows + 1)])
    with sent(engine) as statements:
        session.commit()
    assert statements.count("INSERT versioning_transaction") == 1
    assert statements.count("INSERT versioning_digest") == 1
    assert statements.count("INSERT shared_notes_history") == 1
