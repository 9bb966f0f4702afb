"""Restoring a record with its relationships: children changed, deleted and added since, by
cascade and foreign key; nested paths; many-to-many links; one reason; errors before any write."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from test_asyncio import _async_url, run

import versioning
import versioning.asyncio as vasync
from versioning import (
    ArgumentError,
    Operation,
    RestoreConflictError,
    RestoreError,
    Versioned,
    history,
    restore,
)

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]


class Base(DeclarativeBase):
    pass


order_labels = sa.Table(
    "rr_order_labels",
    Base.metadata,
    sa.Column("order_id", sa.ForeignKey("rr_orders.id"), primary_key=True),
    sa.Column("label_id", sa.ForeignKey("rr_labels.id"), primary_key=True),
)


class Label(Versioned, Base):
    __tablename__ = "rr_labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))


class Order(Versioned, Base):
    __tablename__ = "rr_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(10))
    lines: Mapped[list[Line]] = relationship(
        back_populates="order", cascade="all, delete-orphan", order_by="Line.id"
    )
    # No delete cascade, nullable foreign key: a comment added since is detached.
    comments: Mapped[list[Comment]] = relationship(order_by="Comment.id")
    # No delete cascade, NOT NULL foreign key: a stamp added since cannot be removed.
    stamps: Mapped[list[Stamp]] = relationship(order_by="Stamp.id")
    labels: Mapped[list[Label]] = relationship(secondary=order_labels, order_by="Label.id")
    open_lines: Mapped[list[Line]] = relationship(viewonly=True, order_by="Line.id")
    parts: Mapped[list[Part]] = relationship(cascade="all, delete-orphan", order_by="Part.id")


class Line(Versioned, Base):
    __tablename__ = "rr_lines"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("rr_orders.id"))
    qty: Mapped[int]
    order: Mapped[Order] = relationship(back_populates="lines")
    notes: Mapped[list[Note]] = relationship(cascade="all, delete-orphan", order_by="Note.id")


class Note(Versioned, Base):
    __tablename__ = "rr_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(sa.ForeignKey("rr_lines.id"))
    text: Mapped[str] = mapped_column(sa.String(20), unique=True)


class Comment(Versioned, Base):
    __tablename__ = "rr_comments"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("rr_orders.id"))
    text: Mapped[str] = mapped_column(sa.String(20))


class Part(Versioned, Base):
    """Optimistic locking: a re-created part's counter follows the last one it had."""

    __tablename__ = "rr_parts"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("rr_orders.id"))
    name: Mapped[str] = mapped_column(sa.String(20))
    revision: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": revision}


class Stamp(Versioned, Base):
    __tablename__ = "rr_stamps"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("rr_orders.id"))


def _last_transaction(session: Session) -> int:
    table = versioning.transaction_table(Base.metadata)
    return int(session.execute(sa.select(sa.func.max(table.c.id))).scalar_one())


def _rows(session: Session) -> dict[str, int]:
    """Rows of every table, live and history: what a refused restore must leave as it was."""
    out = {}
    for table in [*Base.metadata.sorted_tables, versioning.transaction_table(Base.metadata)]:
        out[table.name] = session.execute(sa.select(sa.func.count()).select_from(table)).scalar()
    for model in (Order, Line, Note, Comment, Stamp, Label, Part):
        hist = versioning.history_table(model)
        out[hist.name] = session.execute(sa.select(sa.func.count()).select_from(hist)).scalar()
    return out


@pytest.fixture
def graph(create_tables: Tables, sessions: Sessions) -> dict[str, int]:
    """An order with two lines (one with a note) and a label, committed: its ids and moment."""
    create_tables(Base.metadata)
    with sessions() as s:
        red = Label(name="red")
        order = Order(status="open", labels=[red])
        order.lines = [Line(qty=1, notes=[Note(text="fragile")]), Line(qty=2)]
        s.add(order)
        s.commit()
        return {
            "order": order.id,
            "line1": order.lines[0].id,
            "line2": order.lines[1].id,
            "note": order.lines[0].notes[0].id,
            "red": red.id,
            "then": _last_transaction(s),
        }


def test_changed_deleted_and_added_children_and_their_notes_come_back(
    graph: dict[str, int], sessions: Sessions
) -> None:
    with sessions() as s:
        order = s.get_one(Order, graph["order"])
        order.status = "closed"
        line1, line2 = order.lines
        line1.qty = 10
        line1.notes[0].text = "sturdy"
        line1.notes.append(Note(text="late"))
        order.lines.remove(line2)  # delete-orphan: deleted
        order.lines.append(Line(qty=3))
        s.commit()
        added_line = order.lines[-1].id
        added_note = line1.notes[-1].id
    with sessions() as s:
        live = restore(
            s, Order, graph["order"], at=graph["then"], relationships=["lines", "lines.notes"]
        )
        s.commit()
        restoring = _last_transaction(s)
        assert live.status == "open"
    with sessions() as s:
        order = s.get_one(Order, graph["order"])
        assert [(line.id, line.qty) for line in order.lines] == [
            (graph["line1"], 1),
            (graph["line2"], 2),
        ]
        assert [(n.id, n.text) for n in order.lines[0].notes] == [(graph["note"], "fragile")]
        assert s.get(Line, added_line) is None and s.get(Note, added_note) is None
        # History: one transaction, each change as the database did it.
        last = {
            (model.__name__, pk): history(s, model, pk)[-1]
            for model, pk in [
                (Order, graph["order"]),
                (Line, graph["line1"]),
                (Line, graph["line2"]),
                (Line, added_line),
                (Note, graph["note"]),
                (Note, added_note),
            ]
        }
        assert {k: (v.operation, v.transaction_id) for k, v in last.items()} == {
            ("Order", graph["order"]): (Operation.UPDATE, restoring),
            ("Line", graph["line1"]): (Operation.UPDATE, restoring),
            ("Line", graph["line2"]): (Operation.INSERT, restoring),
            ("Line", added_line): (Operation.DELETE, restoring),
            ("Note", graph["note"]): (Operation.UPDATE, restoring),
            ("Note", added_note): (Operation.DELETE, restoring),
        }
        reason = last["Order", graph["order"]].transaction.reason  # type: ignore[union-attr]
        assert reason is not None
        assert f"restore Order {graph['order']} to transaction {graph['then']}" in reason
        assert "lines, lines.notes" in reason
        assert f"Line {graph['line2']} re-created" in reason
        assert f"Line {added_line} deleted" in reason
        assert f"Note {added_note} deleted" in reason


def test_a_version_restores_with_children_and_a_delete_version_brings_them_back(
    graph: dict[str, int], sessions: Sessions
) -> None:
    with sessions() as s:
        s.delete(s.get_one(Order, graph["order"]))  # its lines, their notes, its links go too
        s.commit()
    with sessions() as s:
        deleted = history(s, Order, graph["order"])[-1]
        assert deleted.operation is Operation.DELETE
        restore(s, deleted, relationships=["lines.notes", "labels"])
        s.commit()
    with sessions() as s:
        order = s.get_one(Order, graph["order"])
        assert [line.id for line in order.lines] == [graph["line1"], graph["line2"]]
        assert [n.text for n in order.lines[0].notes] == ["fragile"]
        assert [label.id for label in order.labels] == [graph["red"]]
        # Idempotent: restoring again writes nothing.
        before = _rows(s)
        restore(s, deleted, relationships=["lines.notes", "labels"])
        s.commit()
        assert _rows(s) == before


def test_a_child_added_since_without_delete_cascade_is_detached(
    graph: dict[str, int], sessions: Sessions
) -> None:
    with sessions() as s:
        comment = Comment(text="hi", order_id=graph["order"])
        s.add(comment)
        s.commit()
        comment_id = comment.id
    with sessions() as s:
        restore(s, Order, graph["order"], at=graph["then"], relationships=["comments"])
        s.commit()
        kept = s.get_one(Comment, comment_id)
        assert (kept.order_id, kept.text) == (None, "hi")
        last = history(s, Comment, comment_id)[-1]
        assert last.operation is Operation.UPDATE
        assert last.changes == {"order_id": (graph["order"], None)}


def test_refusals_come_before_any_write(graph: dict[str, int], sessions: Sessions) -> None:
    with sessions() as s:
        order = s.get_one(Order, graph["order"])
        order.status = "closed"
        order.lines[0].qty = 7
        s.add(Stamp(order_id=graph["order"]))
        blue = Label(name="blue")
        order.labels = [blue]
        s.delete(s.get_one(Label, graph["red"]))
        s.commit()
    with sessions() as s:
        before = _rows(s)
        with pytest.raises(RestoreError, match=r"Stamp \d+ was added to it since.*NOT NULL"):
            restore(s, Order, graph["order"], at=graph["then"], relationships=["lines", "stamps"])
        with pytest.raises(RestoreError, match=rf"Label {graph['red']} was linked then"):
            restore(s, Order, graph["order"], at=graph["then"], relationships=["labels"])
        with pytest.raises(ArgumentError, match=r"Order has no relationship 'line'"):
            restore(s, Order, graph["order"], at=graph["then"], relationships=["line"])
        with pytest.raises(ArgumentError, match=r"Line has no relationship 'note'"):
            restore(s, Order, graph["order"], at=graph["then"], relationships=["lines.note"])
        with pytest.raises(ArgumentError, match=r"Order.open_lines is viewonly"):
            restore(s, Order, graph["order"], at=graph["then"], relationships=["open_lines"])
        with pytest.raises(ArgumentError, match=r"list of relationship paths"):
            restore(s, Order, graph["order"], at=graph["then"], relationships="lines")
        s.commit()
        assert _rows(s) == before
        order = s.get_one(Order, graph["order"])
        assert (order.status, order.lines[0].qty) == ("closed", 7)


def test_many_to_many_links_come_back(graph: dict[str, int], sessions: Sessions) -> None:
    with sessions() as s:
        order = s.get_one(Order, graph["order"])
        blue = Label(name="blue")
        order.labels = [blue]
        s.commit()
        blue_id = blue.id
    with sessions() as s:
        restore(s, Order, graph["order"], at=graph["then"], relationships=["labels"])
        s.commit()
        now = _last_transaction(s)
        assert [label.id for label in s.get_one(Order, graph["order"]).labels] == [graph["red"]]
        assert versioning.links_as_of(s, Order.labels, [graph["order"]], now) == {
            (graph["order"],): [(graph["red"],)]
        }
        assert s.get_one(Label, blue_id).name == "blue"  # unlinked, not deleted
        assert versioning.history(s, Order, graph["order"])[-1].transaction_id < now


def test_a_child_moved_to_another_order_comes_back(
    graph: dict[str, int], sessions: Sessions
) -> None:
    with sessions() as s:
        other = Order(status="new")
        s.add(other)
        s.flush()
        s.get_one(Line, graph["line2"]).order_id = other.id
        s.commit()
        other_id = other.id
    with sessions() as s:
        restore(s, Order, graph["order"], at=graph["then"], relationships=["lines"])
        s.commit()
        assert [line.id for line in s.get_one(Order, graph["order"]).lines] == [
            graph["line1"],
            graph["line2"],
        ]
        assert s.get_one(Order, other_id).lines == []


def test_a_many_to_one_relationship_restores_the_parent(
    graph: dict[str, int], sessions: Sessions
) -> None:
    with sessions() as s:
        s.get_one(Order, graph["order"]).status = "closed"
        s.get_one(Line, graph["line1"]).qty = 4
        s.commit()
    with sessions() as s:
        version = versioning.version_at(s, Line, graph["line1"], graph["then"])
        assert version is not None
        restore(s, version, relationships=["order"])
        s.commit()
        assert s.get_one(Line, graph["line1"]).qty == 1
        assert s.get_one(Order, graph["order"]).status == "open"
        assert [line.id for line in s.get_one(Order, graph["order"]).lines] == [
            graph["line1"],
            graph["line2"],
        ]  # a many-to-one restores its target, and never removes its other children


def test_re_created_children_get_version_counters_after_every_one_they_had(
    graph: dict[str, int], sessions: Sessions
) -> None:
    with sessions() as s:
        order = s.get_one(Order, graph["order"])
        order.parts = [Part(name="bolt"), Part(name="nut")]
        s.commit()
        parts = [p.id for p in order.parts]
        then = _last_transaction(s)
        order.parts[0].name = "screw"
        s.commit()  # revision 2
        s.delete(order)
        s.commit()
    with sessions() as s:
        restore(s, Order, graph["order"], at=then, relationships=["parts"])
        s.commit()
        found = [(p.id, p.name, p.revision) for p in s.get_one(Order, graph["order"]).parts]
        assert found == [(parts[0], "bolt", 3), (parts[1], "nut", 2)]
        assert [v.state["revision"] for v in history(s, Part, parts[0])] == [1, 2, 2, 3]


def test_a_record_removed_frees_its_unique_value_for_one_put_back(
    graph: dict[str, int], sessions: Sessions
) -> None:
    with sessions() as s:
        order = s.get_one(Order, graph["order"])
        order.lines.remove(order.lines[0])  # its note "fragile" goes with it
        s.flush()
        order.lines[0].notes.append(Note(text="fragile"))  # the same unique text, a new note
        s.commit()
    with sessions() as s:
        restore(s, Order, graph["order"], at=graph["then"], relationships=["lines.notes"])
        s.commit()
        order = s.get_one(Order, graph["order"])
        notes = [(n.id, n.text) for line in order.lines for n in line.notes]
        assert notes == [(graph["note"], "fragile")]


def test_a_conflict_leaves_data_and_history_as_they_were(
    graph: dict[str, int], sessions: Sessions
) -> None:
    with sessions() as s:
        order = s.get_one(Order, graph["order"])
        order.lines.remove(order.lines[0])  # its note "fragile" goes with it
        order.lines[0].notes.append(Note(text="late"))  # removed by the restore, first
        s.add(Order(status="new", lines=[Line(qty=1, notes=[Note(text="fragile")])]))
        s.commit()
    with sessions() as s:
        before = _rows(s)
        with pytest.raises(RestoreConflictError, match=r"restore Order \d+ to transaction"):
            restore(s, Order, graph["order"], at=graph["then"], relationships=["lines.notes"])
        s.rollback()
        assert _rows(s) == before
        assert [n.text for n in s.get_one(Line, graph["line2"]).notes] == ["late"]


def test_a_deletion_whose_cascade_takes_a_record_put_back_is_refused(
    graph: dict[str, int], sessions: Sessions
) -> None:
    with sessions() as s:
        order = s.get_one(Order, graph["order"])
        order.lines.append(Line(qty=9))
        s.flush()
        s.get_one(Note, graph["note"]).line_id = order.lines[-1].id  # moved under the new line
        s.commit()
    with sessions() as s:
        before = _rows(s)
        with pytest.raises(RestoreError, match=rf"would delete Note {graph['note']} with it"):
            restore(s, Order, graph["order"], at=graph["then"], relationships=["lines.notes"])
        s.commit()
        assert _rows(s) == before


@pytest.fixture
def async_engine(engine: sa.Engine) -> AsyncEngine:
    return create_async_engine(_async_url(engine))


def test_the_async_form(
    graph: dict[str, int], sessions: Sessions, async_engine: AsyncEngine
) -> None:
    with sessions() as s:
        s.get_one(Line, graph["line1"]).qty = 9
        s.commit()

    async def main() -> None:
        async with AsyncSession(async_engine) as session:
            live = await vasync.restore(
                session, Order, graph["order"], at=graph["then"], relationships=["lines"]
            )
            assert (live.id, live.status) == (graph["order"], "open")
            await session.commit()

    run(async_engine, main)
    with sessions() as s:
        assert s.get_one(Line, graph["line1"]).qty == 1
