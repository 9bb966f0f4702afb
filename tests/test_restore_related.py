"""Restoring a record with its relationships: children changed, deleted and added since, by
cascade and foreign key; nested paths; many-to-many links; one reason; errors before any write."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from test_asyncio import _async_url, run
from test_reading import count_statements

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


order_tags = sa.Table(
    "rr_order_tags",
    Base.metadata,
    sa.Column("order_id", sa.ForeignKey("rr_orders.id"), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("rr_tags.id"), primary_key=True),
)


class Label(Versioned, Base):
    __tablename__ = "rr_labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))
    # The other side of Order.labels, without a backref: a restore's relinking must expire it.
    orders: Mapped[list[Order]] = relationship(
        secondary=order_labels, viewonly=True, order_by="Order.id"
    )


class Tag(Versioned, Base):
    """Owned by its order (Order.tags cascades deletes): restored with it."""

    __tablename__ = "rr_tags"
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
    tags: Mapped[list[Tag]] = relationship(secondary=order_tags, cascade="all", order_by="Tag.id")
    open_lines: Mapped[list[Line]] = relationship(viewonly=True, order_by="Line.id")
    parts: Mapped[list[Part]] = relationship(cascade="all, delete-orphan", order_by="Part.id")
    secrets: Mapped[list[Secret]] = relationship(cascade="all, delete-orphan", order_by="Secret.id")


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


class Secret(Versioned, Base):
    """A masked column: its values never reach the engine's log through a restore's reads."""

    __tablename__ = "rr_secrets"
    __versioned__ = {"mask": {"token": versioning.masks.redact}}
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("rr_orders.id"))
    name: Mapped[str] = mapped_column(sa.String(20))
    token: Mapped[str | None] = mapped_column(sa.String(40))
    marks: Mapped[list[Mark]] = relationship(cascade="all, delete-orphan", order_by="Mark.id")


class Mark(Versioned, Base):
    __tablename__ = "rr_marks"
    id: Mapped[int] = mapped_column(primary_key=True)
    secret_id: Mapped[int] = mapped_column(sa.ForeignKey("rr_secrets.id"))


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
    for model in (Order, Line, Note, Comment, Stamp, Label, Part, Tag, Secret, Mark):
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


# -- cost: a fixed number of statements per relationship level -------------------------------


def _changed_graph(sessions: Sessions, n: int) -> tuple[int, int, dict[int, tuple[int, str]]]:
    """An order with ``n`` lines, each with a note, and a label; then, in a later transaction,
    a third of its lines changed (and their notes), a third deleted (their notes with them), one
    moved to another order, a line with a note and a comment added, its label replaced. Returns
    the order's id, the moment before the changes, and each line's (qty, note text) then."""
    with sessions() as s:
        order = Order(status="open", labels=[Label(name="red")])
        order.lines = [Line(qty=i, notes=[Note(text=f"{n}-{i}")]) for i in range(n)]
        other = Order(status="other")
        s.add_all([order, other])
        s.commit()
        then = _last_transaction(s)
        lines = {line.id: (line.qty, line.notes[0].text) for line in order.lines}
        for i, line in enumerate(list(order.lines)):
            if i % 3 == 0:
                line.qty += 100
                line.notes[0].text += "!"
            elif i % 3 == 1:
                order.lines.remove(line)  # delete-orphan: deleted, its note too
        order.lines[1].order = other  # the third line then (unchanged): moved
        order.lines.append(Line(qty=999, notes=[Note(text=f"{n}-new")]))
        order.comments = [Comment(text="later")]
        order.labels = [Label(name="blue")]
        s.commit()
        return order.id, then, lines


def test_restore_with_children_costs_the_same_statements_for_5_or_50_children(
    create_tables: Tables, sessions: Sessions, engine: sa.Engine
) -> None:
    create_tables(Base.metadata)
    paths = ["lines", "lines.notes", "labels", "comments"]
    counts = []
    for n in (5, 50):
        order_id, then, lines = _changed_graph(sessions, n)
        with sessions() as s, count_statements(engine) as statements:
            restore(s, Order, order_id, at=then, relationships=paths)
            s.commit()
        counts.append(len(statements))
        with sessions() as s:
            restoring = _last_transaction(s)
            order = s.get_one(Order, order_id)
            assert {line.id: (line.qty, line.notes[0].text) for line in order.lines} == lines
            assert [label.name for label in order.labels] == ["red"]
            assert order.comments == []
            # Each line changed since is restored in the restore's transaction, as the database
            # did it; the others have no new version.
            ops = {
                pk: (v.operation, v.transaction_id)
                for pk in lines
                for v in history(s, Line, pk)[-1:]
            }
            ids = list(lines)
            expected = {pk: (Operation.UPDATE, restoring) for pk in ids[0::3]}
            expected |= {pk: (Operation.INSERT, restoring) for pk in ids[1::3]}
            expected[ids[2]] = (Operation.UPDATE, restoring)  # moved back
            assert {pk: op for pk, op in ops.items() if op[1] == restoring} == expected
    # Not one statement more for ten times the children.
    assert counts[0] == counts[1]


# -- many-to-many: what a restored link points at --------------------------------------------


def test_a_link_to_a_record_deleted_since_and_replaced_under_its_key_is_refused(
    graph: dict[str, int], sessions: Sessions
) -> None:
    with sessions() as s:
        order = s.get_one(Order, graph["order"])
        order.labels = []
        s.flush()
        s.delete(s.get_one(Label, graph["red"]))
        s.flush()
        s.add(Label(id=graph["red"], name="green"))  # another record, the same key
        s.commit()
    with sessions() as s:
        before = _rows(s)
        with pytest.raises(
            RestoreError,
            match=rf"Label {graph['red']} was linked then, was deleted since, and the Label "
            rf"{graph['red']} there now is not the record linked then \(name differ\).*"
            rf"versioning.restore\(session, Label, {graph['red']}, at=\.\.\.\)",
        ):
            restore(s, Order, graph["order"], at=graph["then"], relationships=["labels"])
        s.commit()
        assert _rows(s) == before
        # What the message says to do: bring the label back as it was then, then the order.
        restore(s, Label, graph["red"], at=graph["then"])
        s.commit()
        restore(s, Order, graph["order"], at=graph["then"], relationships=["labels"])
        s.commit()
        order = s.get_one(Order, graph["order"])
        assert [(label.id, label.name) for label in order.labels] == [(graph["red"], "red")]
        assert versioning.links_as_of(s, Order.labels, [graph["order"]], _last_transaction(s)) == {
            (graph["order"],): [(graph["red"],)]
        }


def test_a_shared_record_linked_then_is_relinked_as_it_is_now(
    graph: dict[str, int], sessions: Sessions
) -> None:
    with sessions() as s:
        order = s.get_one(Order, graph["order"])
        order.labels = []
        s.get_one(Label, graph["red"]).name = "crimson"  # changed, never deleted: the same label
        s.commit()
    with sessions() as s:
        restore(s, Order, graph["order"], at=graph["then"], relationships=["labels"])
        s.commit()
        order = s.get_one(Order, graph["order"])
        assert [(label.id, label.name) for label in order.labels] == [(graph["red"], "crimson")]
        assert [v.operation for v in history(s, Label, graph["red"])] == [
            Operation.INSERT,
            Operation.UPDATE,
        ]  # shared: not restored


def test_records_owned_through_a_many_to_many_come_back_with_it(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as s:
        order = Order(status="open", tags=[Tag(name="a"), Tag(name="b")])
        s.add(order)
        s.commit()
        then = _last_transaction(s)
        a, b = (tag.id for tag in order.tags)
        order.tags[0].name = "changed"
        gone = order.tags[1]
        order.tags.remove(gone)
        s.flush()
        s.delete(gone)
        order.tags.append(Tag(name="added"))
        s.commit()
        added = order.tags[-1].id
    with sessions() as s:
        restore(s, Order, order.id, at=then, relationships=["tags"])
        s.commit()
        restoring = _last_transaction(s)
        live = s.get_one(Order, order.id)
        assert [(tag.id, tag.name) for tag in live.tags] == [(a, "a"), (b, "b")]
        assert s.get_one(Tag, added).name == "added"  # unlinked, not deleted
        assert (history(s, Tag, a)[-1].operation, history(s, Tag, a)[-1].transaction_id) == (
            Operation.UPDATE,
            restoring,
        )
        assert (history(s, Tag, b)[-1].operation, history(s, Tag, b)[-1].transaction_id) == (
            Operation.INSERT,
            restoring,
        )
        assert versioning.links_as_of(s, Order.tags, [order.id], restoring) == {
            (order.id,): [(a,), (b,)]
        }
        reason = history(s, Tag, b)[-1].transaction
        assert reason is not None and reason.reason is not None
        assert f"Tag {b} re-created" in reason.reason and f"Tag {a} restored" in reason.reason


# -- the session after a restore ---------------------------------------------------------------


def test_the_session_shows_what_the_restore_moved_and_keeps_the_rest(
    graph: dict[str, int], sessions: Sessions
) -> None:
    with sessions() as s:
        other = Order(status="other")
        bystander = Order(status="bystander", lines=[Line(qty=5)])
        blue = Label(name="blue")
        s.add_all([other, bystander, blue])
        s.flush()
        s.get_one(Line, graph["line2"]).order_id = other.id
        s.get_one(Order, graph["order"]).labels = [blue]
        s.commit()
        ids = {"other": other.id, "bystander": bystander.id, "blue": blue.id}
    with sessions() as s:
        other = s.get_one(Order, ids["other"])
        bystander = s.get_one(Order, ids["bystander"])
        blue, red = s.get_one(Label, ids["blue"]), s.get_one(Label, graph["red"])
        # Loaded before the restore, in the same session.
        assert [line.id for line in other.lines] == [graph["line2"]]
        assert [line.qty for line in bystander.lines] == [5]
        assert [o.id for o in blue.orders] == [graph["order"]] and red.orders == []
        live = restore(
            s, Order, graph["order"], at=graph["then"], relationships=["lines", "labels"]
        )
        # Before any commit (which would expire everything): the session is consistent.
        assert other.lines == []
        assert [line.id for line in live.lines] == [graph["line1"], graph["line2"]]
        assert s.get_one(Line, graph["line2"]).order is live
        assert blue.orders == [] and [o.id for o in red.orders] == [graph["order"]]
        # Only what the restore changed was expired.
        assert "lines" in sa.inspect(bystander).dict
        assert "status" in sa.inspect(other).dict
        s.commit()


TOKEN = "tok-very-secret-7f3a"


def test_a_restore_with_children_keeps_masked_values_out_of_the_log(
    create_tables: Tables, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    create_tables(Base.metadata)
    with Session(engine) as s:
        order = Order(status="open", secrets=[Secret(name="kept", token=TOKEN + "1")])
        s.add(order)
        s.commit()
        then = _last_transaction(s)
        order.secrets[0].name = "renamed"
        order.secrets.append(Secret(name="added", token=TOKEN + "2", marks=[Mark()]))
        s.commit()
        order_id, kept, added = order.id, order.secrets[0].id, order.secrets[1].id
    engine.dispose()  # SQLite: no idle connection holds the file
    echoing = sa.create_engine(engine.url, echo="debug")
    try:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="sqlalchemy.engine"), Session(echoing) as s:
            restore(s, Order, order_id, at=then, relationships=["secrets"])
            s.commit()
    finally:
        echoing.dispose()
    messages = [record.getMessage() for record in caplog.records]
    rows = [m for m in messages if m.startswith("Row ")]
    assert any("'renamed'" in m for m in rows) and any("'added'" in m for m in rows)
    assert not [m for m in messages if TOKEN in m]
    with Session(engine) as s:
        secret = s.get_one(Secret, kept)
        assert (secret.name, secret.token) == ("kept", TOKEN + "1")
        assert s.get(Secret, added) is None
        assert history(s, Secret, added)[-1].operation is Operation.DELETE
