"""The capture behaviours, in both capture modes: the same writes record the same history.

Each behaviour a user relies on is written once, as a *scenario*: writes through a ``Session`` on
one family of models. It runs on a family captured by the session path (``SessionBase``; once
with ORM bulk statements' history built in Python, once built by the database with the
``versioning_bulk_sql`` option) and on an identical family captured by the database
(``DatabaseBase``, whose ``MetaData`` makes ``"capture": "database"`` the default). The history
it leaves — every version of every record of every model (operation, ``changes``, ``state``,
each record's in write order, with the transaction it belongs to) and every transaction row
(actor, source IP, request id, reason, extra) — must equal the scenario's expected history,
written out, values and their types: the same in both modes, and right. A scenario that
database capture gets wrong on a backend says so (``database_bugs``): it is expected to fail
there until the triggers are fixed.

Left out, as the modes differ there by design (see ``docs/database-capture.md``): raw SQL through
a session and writes of another client (the session path does not see them; the triggers record
them, with what the database knows of another client), an ORM ``update()`` that changes a primary
key (the session path refuses it: it cannot follow the record to its new key), how many
statements the session path sends, and the order of different records' versions within one
transaction (the session path writes them at commit, one ``INSERT`` per history table, in no order
it promises; the triggers as the rows are written).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
import sqlalchemy as sa
import test_types as types
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.orm.attributes import flag_modified

import versioning
from versioning import Operation, audit_context, history, history_table
from versioning.declaration import require_spec
from versioning.triggers import check_triggers

pytestmark = pytest.mark.backends("postgresql", "sqlite", "mariadb")

CreateTables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[..., Session]
INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE


# --- two families of the same models --------------------------------------------------------------


class SessionBase(DeclarativeBase):
    """Models captured by the session path (the default)."""


class DatabaseBase(DeclarativeBase):
    """The same models, captured by the database: its ``MetaData`` makes that the default."""

    metadata = sa.MetaData(info={"versioning_capture": "database"})


def _stamp(context: Any) -> str:
    """A Python ``onupdate``: the new value, upper-cased (deterministic in both modes)."""
    return str(context.get_current_parameters()["value"]).upper()


class _ItemColumns:
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    qty: Mapped[int] = mapped_column(default=7)
    status: Mapped[str] = mapped_column(sa.String(20), server_default="new")
    priority: Mapped[int] = mapped_column(server_default=sa.text("5"))
    code: Mapped[str | None] = mapped_column(sa.String(20), unique=True)
    note: Mapped[str | None] = mapped_column(sa.String(100))
    data: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    body: Mapped[str | None] = mapped_column(sa.Text, deferred=True)


class _StampedColumns:
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    value: Mapped[str] = mapped_column(sa.String(50))
    stamp: Mapped[str] = mapped_column(sa.String(50), default="new", onupdate=_stamp)
    edits: Mapped[int] = mapped_column(default=0, onupdate=sa.literal_column("edits") + 1)


class _PairColumns:
    a: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    b: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(50))


class _AccountColumns:
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(sa.String(50))
    view_count: Mapped[int] = mapped_column(default=0)
    card_number: Mapped[str | None] = mapped_column(sa.String(32))
    secret: Mapped[str | None] = mapped_column(sa.String(50))


class _PlainColumns:
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))


ACCOUNT_OPTIONS: versioning.VersionedOptions = {
    "exclude": ["view_count"],
    "mask": {"card_number": versioning.masks.last4, "secret": versioning.masks.redact},
}


class SessionItem(_ItemColumns, versioning.Versioned, SessionBase):
    __tablename__ = "modes_s_items"


class SessionStamped(_StampedColumns, versioning.Versioned, SessionBase):
    __tablename__ = "modes_s_stamped"


class SessionPair(_PairColumns, versioning.Versioned, SessionBase):
    __tablename__ = "modes_s_pairs"


class SessionAccount(_AccountColumns, versioning.Versioned, SessionBase):
    __tablename__ = "modes_s_accounts"
    __versioned__ = ACCOUNT_OPTIONS


class SessionChild(versioning.Versioned, SessionBase):
    __tablename__ = "modes_s_children"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("modes_s_parents.id"))
    label: Mapped[str] = mapped_column(sa.String(50))


class SessionParent(versioning.Versioned, SessionBase):
    __tablename__ = "modes_s_parents"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    children: Mapped[list[SessionChild]] = relationship(
        cascade="all, delete-orphan", order_by=SessionChild.id
    )


class SessionPlain(_PlainColumns, SessionBase):
    """Not versioned."""

    __tablename__ = "modes_s_plain"


class SessionTyped(types.ItemColumns, versioning.Versioned, SessionBase):
    __tablename__ = "modes_s_types"


class DatabaseItem(_ItemColumns, versioning.Versioned, DatabaseBase):
    __tablename__ = "modes_d_items"


class DatabaseStamped(_StampedColumns, versioning.Versioned, DatabaseBase):
    __tablename__ = "modes_d_stamped"


class DatabasePair(_PairColumns, versioning.Versioned, DatabaseBase):
    __tablename__ = "modes_d_pairs"


class DatabaseAccount(_AccountColumns, versioning.Versioned, DatabaseBase):
    __tablename__ = "modes_d_accounts"
    __versioned__ = ACCOUNT_OPTIONS


class DatabaseChild(versioning.Versioned, DatabaseBase):
    __tablename__ = "modes_d_children"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("modes_d_parents.id"))
    label: Mapped[str] = mapped_column(sa.String(50))


class DatabaseParent(versioning.Versioned, DatabaseBase):
    __tablename__ = "modes_d_parents"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    children: Mapped[list[DatabaseChild]] = relationship(
        cascade="all, delete-orphan", order_by=DatabaseChild.id
    )


class DatabasePlain(_PlainColumns, DatabaseBase):
    """Not versioned."""

    __tablename__ = "modes_d_plain"


class DatabaseTyped(types.ItemColumns, versioning.Versioned, DatabaseBase):
    __tablename__ = "modes_d_types"


@dataclasses.dataclass(frozen=True)
class Family:
    """One mode's models, by the names the scenarios use."""

    mode: str
    metadata: sa.MetaData
    Item: Any
    Stamped: Any
    Pair: Any
    Account: Any
    Parent: Any
    Child: Any
    Plain: Any
    Typed: Any

    def versioned(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in ("Item", "Stamped", "Pair", "Account", "Parent", "Child")
        }


FAMILIES = {
    "session": Family(
        "session",
        SessionBase.metadata,
        SessionItem,
        SessionStamped,
        SessionPair,
        SessionAccount,
        SessionParent,
        SessionChild,
        SessionPlain,
        SessionTyped,
    ),
    "database": Family(
        "database",
        DatabaseBase.metadata,
        DatabaseItem,
        DatabaseStamped,
        DatabasePair,
        DatabaseAccount,
        DatabaseParent,
        DatabaseChild,
        DatabasePlain,
        DatabaseTyped,
    ),
}


# --- what a scenario recorded ---------------------------------------------------------------------


class V(NamedTuple):
    """One version: the record's key, what happened, and the transaction it belongs to (by its
    rank among the transaction rows written in the scenario: 0 for the first)."""

    key: tuple[Any, ...]
    operation: Operation
    changes: dict[str, tuple[Any, Any]]
    state: dict[str, Any]
    tx: int


class Tx(NamedTuple):
    """A transaction row, as ``history()`` reads it back (in a restore's reason, the model by
    the name the scenarios use, and transaction ids by rank: ``transaction #0``)."""

    actor: str | None = None
    source_ip: str | None = None
    request_id: str | None = None
    reason: str | None = None
    extra: dict[str, Any] = {}  # a NamedTuple default, never mutated


@dataclasses.dataclass
class Recorded:
    """Every version of every versioned model (by model name; by transaction, then by key, then
    in write order) and every transaction row (in id order)."""

    versions: dict[str, list[V]]
    transactions: list[Tx]


def recorded(engine: sa.Engine, family: Family) -> Recorded:
    with Session(engine) as session:
        transactions = family.metadata.tables[versioning.TRANSACTION_TABLE]
        ids = session.scalars(sa.select(transactions.c.id).order_by(transactions.c.id)).all()
        rank = {tx_id: i for i, tx_id in enumerate(ids)}
        rows: dict[int, Tx] = {}
        versions: dict[str, list[V]] = {}
        for name, model in family.versioned().items():
            table = history_table(model)
            keys = [c.name for c in sa.inspect(model).primary_key]
            found = session.execute(sa.select(*(table.c[k] for k in keys)).distinct()).all()
            # Each record's versions in write order; the records changed in one transaction
            # by key (the session path writes a transaction's history at commit, in no order
            # between records that it promises).
            read = sorted(
                (v for key in found for v in history(session, model, tuple(key))),
                key=lambda v: (rank[v.transaction_id], v.primary_key, v.version_id),
            )
            if read:
                versions[name] = [
                    V(
                        v.primary_key,
                        v.operation,
                        dict(v.changes),
                        dict(v.state),
                        rank[v.transaction_id],
                    )
                    for v in read
                ]
            for v in read:
                t = v.transaction
                assert t is not None
                reason = t.reason
                if reason is not None:  # a restore's: names the model and transaction ids
                    reason = re.sub(
                        r"\btransaction (\d+)",
                        lambda found: f"transaction #{rank[int(found[1])]}",
                        reason.replace(model.__name__, name),
                    )
                rows[t.id] = Tx(t.actor, t.source_ip, t.request_id, reason, dict(t.extra))
        # A transaction row no version belongs to would be a row too many.
        assert sorted(rows) == list(ids), (
            f"transaction rows without versions: {set(ids) - set(rows)}"
        )
        return Recorded(versions, [rows[tx_id] for tx_id in ids])


def typed(value: Any) -> Any:
    """``value`` with the type of every value in it: ``7`` and ``7.0``, ``1`` and ``True``,
    compare equal in Python, but a history that reads back one for the other is wrong."""
    if isinstance(value, Recorded):
        return typed((value.versions, value.transactions))
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value).__name__, [typed(item) for item in value]
    return type(value).__name__, value


def inserted(state: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """An insert's ``changes``: every column that is not ``None``, from ``None``."""
    return {key: (None, value) for key, value in state.items() if value is not None}


def deleted(state: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """A delete's ``changes``: every column that was not ``None``, to ``None``."""
    return {key: (value, None) for key, value in state.items() if value is not None}


def item(id: int = 1, name: str = "a", **values: Any) -> dict[str, Any]:
    """An item's snapshot: the defaults, and ``values``."""
    state: dict[str, Any] = {
        "id": id,
        "name": name,
        "qty": 7,
        "status": "new",
        "priority": 5,
        "code": None,
        "note": None,
        "data": None,
        "body": None,
    }
    assert set(values) <= set(state)
    return state | values


def added(key: Any, state: dict[str, Any], tx: int) -> V:
    return V(key if isinstance(key, tuple) else (key,), INSERT, inserted(state), state, tx)


def removed(key: Any, state: dict[str, Any], tx: int) -> V:
    return V(key if isinstance(key, tuple) else (key,), DELETE, deleted(state), state, tx)


def changed(key: Any, changes: dict[str, tuple[Any, Any]], state: dict[str, Any], tx: int) -> V:
    return V(key if isinstance(key, tuple) else (key,), UPDATE, changes, state, tx)


NO_CONTEXT = Tx()


# --- the scenarios -------------------------------------------------------------------------------

Run = Callable[[Sessions, Family], None]


@dataclasses.dataclass(frozen=True)
class Scenario:
    run: Run
    expected: Recorded
    #: backend -> why database capture records something else there (a bug to fix in triggers.py).
    database_bugs: dict[str, str]


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    versions: dict[str, list[V]],
    transactions: list[Tx],
    database_bugs: dict[str, str] | None = None,
) -> Callable[[Run], Run]:
    def register(run: Run) -> Run:
        SCENARIOS[run.__name__] = Scenario(
            run, Recorded(versions, transactions), database_bugs or {}
        )
        return run

    return register


def add_item(sessions: Sessions, family: Family, **values: Any) -> None:
    with sessions() as session:
        session.add(family.Item(**{"id": 1, "name": "a", **values}))
        session.commit()


def get(session: Session, model: Any, key: Any) -> Any:
    found = session.get(model, key)
    assert found is not None
    return found


# inserts


@scenario({"Item": [added(1, item(body="long text"), 0)]}, [NO_CONTEXT])
def insert_with_client_and_server_defaults(s: Sessions, m: Family) -> None:
    with s() as session:
        session.add(m.Item(id=1, name="a", body="long text"))
        session.commit()


@scenario(
    {"Item": [added(1, item(qty=3, status="open", priority=9, code="C1", data={"k": [1, 2]}), 0)]},
    [NO_CONTEXT],
)
def insert_with_explicit_values_over_defaults(s: Sessions, m: Family) -> None:
    add_item(s, m, qty=3, status="open", priority=9, code="C1", data={"k": [1, 2]})


# updates


@scenario(
    {
        "Item": [
            added(1, item(note="n1", code="C1"), 0),
            changed(1, {"name": ("a", "b"), "note": ("n1", None)}, item(name="b", code="C1"), 1),
        ]
    },
    [NO_CONTEXT] * 2,
)
def update_records_only_changed_columns(s: Sessions, m: Family) -> None:
    add_item(s, m, note="n1", code="C1")
    with s() as session:
        it = get(session, m.Item, 1)
        it.name = "b"
        it.note = None
        it.qty = 7  # the value it already has
        session.commit()


@scenario({"Item": [added(1, item(data={"x": 1}), 0)]}, [NO_CONTEXT])
def setting_current_values_records_nothing(s: Sessions, m: Family) -> None:
    add_item(s, m, data={"x": 1})
    with s() as session:
        it = get(session, m.Item, 1)
        it.name, it.qty, it.data = "a", 7, {"x": 1}
        session.commit()
    with s() as session:  # on an expired instance
        it = get(session, m.Item, 1)
        session.expire(it)
        it.name, it.status = "a", "new"
        session.commit()
    with s() as session:  # changed and changed back before the flush
        it = get(session, m.Item, 1)
        it.name = "zzz"
        it.name = "a"
        session.commit()
    with s() as session:  # a bulk statement that changes nothing
        session.execute(sa.update(m.Item).where(m.Item.id == 1).values(name="a", qty=7))
        session.execute(sa.update(m.Item).where(m.Item.id == 99).values(name="nobody"))
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(), 0),
            changed(1, {"name": ("a", "b")}, item(name="b"), 1),
            changed(1, {"qty": (7, 8)}, item(name="b", qty=8), 1),
            changed(
                1, {"name": ("b", "c"), "note": (None, "x")}, item(name="c", qty=8, note="x"), 1
            ),
            changed(1, {"qty": (8, 9)}, item(name="c", qty=9, note="x"), 2),
        ]
    },
    [NO_CONTEXT] * 3,
)
def successive_updates_record_their_old_values(s: Sessions, m: Family) -> None:
    add_item(s, m)
    with s() as session:
        it = get(session, m.Item, 1)
        it.name = "b"
        session.flush()
        it.qty = 8
        session.flush()
        it.name, it.note = "c", "x"
        session.commit()
        it.qty = 9  # expired by the commit
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(name="a", note="n"), 0),
            changed(1, {"name": ("a", "by-other")}, item(name="by-other", note="n"), 1),
            changed(1, {"name": ("by-other", "b")}, item(name="b", note="n"), 2),
            changed(1, {"note": ("n", "m")}, item(name="b", note="m"), 3),
        ]
    },
    [NO_CONTEXT] * 4,
)
def updates_of_expired_attributes_record_what_the_database_held(s: Sessions, m: Family) -> None:
    with s() as session:
        it = m.Item(id=1, name="a", note="n")
        session.add(it)
        session.commit()
        with s() as other:
            get(other, m.Item, 1).name = "by-other"
            other.commit()
        it.name = "b"  # expired: the old value is what the database holds now
        session.commit()
        session.expire(it, ["note"])
        it.note = "m"
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(qty=3), 0),
            changed(1, {"qty": (3, 4)}, item(qty=4), 1),
            changed(1, {"qty": (4, 8)}, item(qty=8), 2),
        ]
    },
    [NO_CONTEXT] * 3,
)
def update_with_a_sql_expression_records_the_stored_value(s: Sessions, m: Family) -> None:
    add_item(s, m, qty=3)
    with s() as session:
        get(session, m.Item, 1).qty = m.Item.qty + 1
        session.commit()
        session.execute(sa.update(m.Item).where(m.Item.id == 1).values(qty=m.Item.qty * 2))
        session.commit()


@scenario(
    {
        "Stamped": [
            added(1, {"id": 1, "value": "a", "stamp": "new", "edits": 0}, 0),
            changed(
                1,
                {"value": ("a", "b"), "stamp": ("new", "B"), "edits": (0, 1)},
                {"id": 1, "value": "b", "stamp": "B", "edits": 1},
                1,
            ),
            changed(
                1,
                {"value": ("b", "c"), "stamp": ("B", "C"), "edits": (1, 2)},
                {"id": 1, "value": "c", "stamp": "C", "edits": 2},
                2,
            ),
        ]
    },
    [NO_CONTEXT] * 3,
)
def onupdate_columns_record_their_new_values(s: Sessions, m: Family) -> None:
    with s() as session:
        stamped = m.Stamped(id=1, value="a")
        session.add(stamped)
        session.commit()
        stamped.value = "b"  # expired by the commit
        session.commit()
        stamped.value = "c"
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(body="long text"), 0),
            changed(1, {"name": ("a", "b")}, item(name="b", body="long text"), 1),
            changed(1, {"body": ("long text", "new text")}, item(name="b", body="new text"), 2),
        ]
    },
    [NO_CONTEXT] * 3,
)
def a_deferred_column_is_in_the_snapshot_unloaded(s: Sessions, m: Family) -> None:
    add_item(s, m, body="long text")
    with s() as session:
        get(session, m.Item, 1).name = "b"
        session.commit()
    with s() as session:
        get(session, m.Item, 1).body = "new text"  # never loaded
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(data={"a": 1, "tags": ["x"]}), 0),
            changed(
                1,
                {"data": ({"a": 1, "tags": ["x"]}, {"a": 2, "tags": ["x", "y"]})},
                item(data={"a": 2, "tags": ["x", "y"]}),
                1,
            ),
            changed(
                1,
                {"data": ({"a": 2, "tags": ["x", "y"]}, {"a": 2, "tags": ["x", "y"], "b": True})},
                item(data={"a": 2, "tags": ["x", "y"], "b": True}),
                2,
            ),
        ]
    },
    [NO_CONTEXT] * 3,
)
def json_mutated_in_place_with_flag_modified(s: Sessions, m: Family) -> None:
    add_item(s, m, data={"a": 1, "tags": ["x"]})
    with s() as session:
        it = get(session, m.Item, 1)
        it.data["a"] = 2
        it.data["tags"].append("y")
        flag_modified(it, "data")
        session.commit()
        it.data["b"] = True  # reloaded after the commit
        flag_modified(it, "data")
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(data={"x": 1}), 0),
            changed(1, {"data": ({"x": 1}, None)}, item(), 1),
            changed(1, {"data": (None, {"y": [None]})}, item(data={"y": [None]}), 2),
            changed(1, {"data": ({"y": [None]}, None)}, item(), 3),
        ]
    },
    [NO_CONTEXT] * 4,
)
def json_set_to_none_and_to_sql_null(s: Sessions, m: Family) -> None:
    add_item(s, m, data={"x": 1})
    with s() as session:
        it = get(session, m.Item, 1)
        it.data = None  # JSON's null: the column is not none_as_null
        session.commit()
        it.data = {"y": [None]}
        session.commit()
        session.execute(sa.update(m.Item).values(data=sa.null()))  # SQL NULL
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(), 0),
            changed(1, {"name": ("a", "b")}, item(name="b"), 1),
            changed(1, {"name": ("b", "a")}, item(), 1),
            changed(1, {"name": ("a", "by-other")}, item(name="by-other"), 2),
            changed(1, {"name": ("by-other", "c")}, item(name="c"), 3),
        ]
    },
    [NO_CONTEXT] * 4,
)
def a_value_changed_back_in_another_flush_and_a_stale_instance(s: Sessions, m: Family) -> None:
    add_item(s, m)
    with s(expire_on_commit=False) as session:
        it = get(session, m.Item, 1)
        it.name = "b"
        session.flush()
        it.name = "a"  # back, in a flush of its own: two changes
        session.commit()
        with s() as other:
            get(other, m.Item, 1).name = "by-other"
            other.commit()
        it.name = "c"  # the instance still says "a": the database holds "by-other"
        session.commit()


# deletes


@scenario(
    {
        "Item": [
            added(1, item(note="n", body="text", data={"k": 1}), 0),
            changed(
                1, {"name": ("a", "b")}, item(name="b", note="n", body="text", data={"k": 1}), 1
            ),
            removed(1, item(name="b", note="n", body="text", data={"k": 1}), 2),
        ]
    },
    [NO_CONTEXT] * 3,
)
def delete_records_the_state_before_deletion(s: Sessions, m: Family) -> None:
    add_item(s, m, note="n", body="text", data={"k": 1})
    with s() as session:
        get(session, m.Item, 1).name = "b"
        session.commit()
        session.delete(get(session, m.Item, 1))
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(note="n", body="text"), 0),
            removed(1, item(note="n", body="text"), 1),
            added(2, item(id=2, name="b"), 2),
            removed(2, item(id=2, name="b"), 3),
        ]
    },
    [NO_CONTEXT] * 4,
)
def delete_of_an_expired_instance(s: Sessions, m: Family) -> None:
    with s() as session:
        it = m.Item(id=1, name="a", note="n", body="text")
        session.add(it)
        session.commit()  # expired
        session.delete(it)
        session.commit()
    with s() as session:
        session.add(m.Item(id=2, name="b"))
        session.commit()
        it = get(session, m.Item, 2)
        session.expire(it)
        session.delete(it)
        session.commit()


@scenario({"Item": [added(1, item(), 0), removed(1, item(), 1)]}, [NO_CONTEXT] * 2)
def delete_of_a_modified_instance_records_the_stored_state(s: Sessions, m: Family) -> None:
    add_item(s, m)
    with s() as session:
        it = get(session, m.Item, 1)
        it.name = "never stored"
        session.delete(it)
        session.commit()


def _parent(name: str = "p") -> dict[str, Any]:
    return {"id": 1, "name": name}


def _child(id: int, label: str) -> dict[str, Any]:
    return {"id": id, "parent_id": 1, "label": label}


@scenario(
    {
        "Parent": [added(1, _parent(), 0), removed(1, _parent(), 2)],
        "Child": [
            added(10, _child(10, "x"), 0),
            added(11, _child(11, "y"), 0),
            added(12, _child(12, "z"), 0),
            removed(10, _child(10, "x"), 1),
            removed(11, _child(11, "y"), 2),
            removed(12, _child(12, "z"), 2),
        ],
    },
    [NO_CONTEXT] * 3,
)
def orphans_and_cascaded_deletes_are_recorded(s: Sessions, m: Family) -> None:
    with s() as session:
        parent = m.Parent(
            id=1,
            name="p",
            children=[m.Child(id=i, label=t) for i, t in ((10, "x"), (11, "y"), (12, "z"))],
        )
        session.add(parent)
        session.commit()
        del parent.children[0]  # an orphan
        session.commit()
        session.delete(parent)
        session.commit()


# keys


def _pair(b: str, value: str) -> dict[str, Any]:
    return {"a": 1, "b": b, "value": value}


@scenario(
    {
        "Pair": [
            added((1, "x"), _pair("x", "v1"), 0),
            added((1, "y"), _pair("y", "w1"), 0),
            changed((1, "x"), {"value": ("v1", "v2")}, _pair("x", "v2"), 1),
            changed((1, "y"), {"value": ("w1", "w2")}, _pair("y", "w2"), 1),
            changed((1, "x"), {"value": ("v2", "v3")}, _pair("x", "v3"), 2),
            removed((1, "x"), _pair("x", "v3"), 3),
        ]
    },
    [NO_CONTEXT] * 4,
)
def composite_primary_key(s: Sessions, m: Family) -> None:
    with s() as session:
        session.add_all([m.Pair(a=1, b="x", value="v1"), m.Pair(a=1, b="y", value="w1")])
        session.commit()
    with s() as session:
        pairs = session.scalars(sa.select(m.Pair).order_by(m.Pair.b)).all()
        for pair in pairs:
            pair.value = pair.value.replace("1", "2")
        session.commit()
        pairs[0].value = "v3"  # expired: found by its composite key
        session.commit()
        session.delete(pairs[0])
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(), 0),
            removed(1, item(), 1),
            changed(2, {"id": (1, 2), "name": ("a", "moved")}, item(id=2, name="moved"), 1),
        ]
    },
    [NO_CONTEXT] * 2,
)
def a_key_change_ends_the_old_keys_history(s: Sessions, m: Family) -> None:
    add_item(s, m)
    with s() as session:
        it = get(session, m.Item, 1)
        it.id, it.name = 2, "moved"
        session.commit()


# excluded and masked columns


def _account(**values: Any) -> dict[str, Any]:
    return {"id": 1, "owner": "o", "card_number": None, "secret": None} | values


@scenario(
    {
        "Account": [
            added(1, _account(), 0),
            changed(1, {"owner": ("o", "p")}, _account(owner="p"), 1),
        ]
    },
    [NO_CONTEXT] * 2,
)
def excluded_columns_are_left_out_and_their_changes_record_nothing(s: Sessions, m: Family) -> None:
    with s() as session:
        session.add(m.Account(id=1, owner="o", view_count=5))
        session.commit()
    with s() as session:
        account = get(session, m.Account, 1)
        account.view_count = 6
        session.commit()
        account.view_count = 7  # expired, still only an excluded column
        session.commit()
        session.execute(sa.update(m.Account).values(view_count=m.Account.view_count + 1))
        session.commit()
        account.view_count, account.owner = 8, "p"
        session.commit()


CARD_1111, CARD_0004, CARD_0002 = "************1111", "************0004", "************0002"


@scenario(
    {
        "Account": [
            added(1, _account(card_number=CARD_1111, secret="[REDACTED]"), 0),
            changed(
                1,
                {"card_number": (CARD_1111, CARD_0004), "secret": ("[REDACTED]", "[REDACTED]")},
                _account(card_number=CARD_0004, secret="[REDACTED]"),
                1,
            ),
            changed(1, {"card_number": (CARD_0004, None)}, _account(secret="[REDACTED]"), 2),
            changed(
                1,
                {"card_number": (None, CARD_0002), "secret": ("[REDACTED]", None)},
                _account(card_number=CARD_0002),
                3,
            ),
        ]
    },
    [NO_CONTEXT] * 4,
)
def masked_columns_record_the_masks_output(s: Sessions, m: Family) -> None:
    with s() as session:
        session.add(m.Account(id=1, owner="o", card_number="4111111111111111", secret="hunter2"))
        session.commit()
    with s() as session:
        account = get(session, m.Account, 1)
        account.card_number = "5500000000000004"
        account.secret = "swordfish"  # masks to the same text: still a recorded change
        session.commit()
        account.card_number = None  # expired
        session.commit()
        account.card_number, account.secret = "4000000000000002", None
        session.commit()
        account.card_number = "4000000000000002"  # the value it has: nothing
        session.commit()


@scenario(
    {
        "Account": [
            added(1, _account(card_number="", secret="[REDACTED]"), 0),
            changed(
                1, {"card_number": ("", "**")}, _account(card_number="**", secret="[REDACTED]"), 1
            ),
            changed(
                1,
                {"card_number": ("**", "****")},
                _account(card_number="****", secret="[REDACTED]"),
                2,
            ),
            # Another value of four characters masks to the same text: still a change.
            changed(
                1,
                {"card_number": ("****", "****")},
                _account(card_number="****", secret="[REDACTED]"),
                3,
            ),
            changed(
                1,
                {"card_number": ("****", "*****2345")},
                _account(card_number="*****2345", secret="[REDACTED]"),
                4,
            ),
            changed(
                1,
                {"card_number": ("*****2345", "****𝄞123")},
                _account(card_number="****𝄞123", secret="[REDACTED]"),
                5,
            ),
        ]
    },
    [NO_CONTEXT] * 6,
)
def masks_of_empty_short_and_unicode_values(s: Sessions, m: Family) -> None:
    with s() as session:
        session.add(m.Account(id=1, owner="o", card_number="", secret=""))
        session.commit()
        for value in ("12", "1234", "5678", "ab€üx2345", "üé€ß𝄞123"):
            session.execute(sa.update(m.Account).values(card_number=value))
            session.commit()


# transactions: flushes, savepoints, rollbacks, failures


@scenario(
    {
        "Item": [
            added(1, item(), 0),
            changed(1, {"name": ("a", "b")}, item(name="b"), 0),
            removed(1, item(name="b"), 0),
            added(2, item(id=2, name="c"), 0),
        ]
    },
    [NO_CONTEXT],
)
def several_flushes_share_one_transaction_row(s: Sessions, m: Family) -> None:
    with s() as session:
        session.add(m.Item(id=1, name="a"))
        session.flush()
        it = get(session, m.Item, 1)
        it.name = "b"
        session.flush()
        session.add(m.Item(id=2, name="c"))
        session.flush()
        session.delete(it)
        session.commit()


@scenario({"Item": [added(1, item(), 0), added(2, item(id=2, name="b"), 1)]}, [NO_CONTEXT] * 2)
def each_database_transaction_gets_its_own_row_and_none_without_versioned_changes(
    s: Sessions, m: Family
) -> None:
    with s() as session:
        session.add(m.Plain(id=1, name="x"))
        session.commit()
        get(session, m.Plain, 1).name = "y"
        session.commit()
    with s() as session:
        session.add(m.Item(id=1, name="a"))
        session.commit()
        session.flush()  # nothing pending
        session.commit()
        get(session, m.Item, 1).name = "a"
        session.commit()
    with s() as session:  # the second, and nothing from the transaction rolled back
        session.add(m.Item(id=2, name="b"))
        session.commit()
        session.delete(get(session, m.Item, 2))
        session.flush()
        session.rollback()


@scenario(
    {
        "Item": [
            added(1, item(), 0),
            changed(1, {"note": (None, "after")}, item(note="after"), 0),
        ]
    },
    [NO_CONTEXT],
)
def a_rolled_back_savepoint_discards_its_versions(s: Sessions, m: Family) -> None:
    with s() as session:
        session.add(m.Item(id=1, name="a"))
        session.flush()
        savepoint = session.begin_nested()
        it = get(session, m.Item, 1)
        it.name = "in savepoint"
        session.add(m.Item(id=2, name="discarded"))
        session.flush()
        savepoint.rollback()
        it.note = "after"
        session.commit()


@scenario(
    {"Item": [added(1, item(), 0), added(2, item(id=2, name="b"), 0)]},
    [NO_CONTEXT],
)
def committed_savepoints_keep_their_versions(s: Sessions, m: Family) -> None:
    with s() as session:
        with session.begin_nested():
            session.add(m.Item(id=1, name="a"))
        with session.begin_nested():
            session.add(m.Item(id=2, name="b"))
        session.commit()


@scenario(
    {"Item": [added(1, item(name="outer"), 0), added(3, item(id=3, name="top"), 0)]},
    [NO_CONTEXT],
)
def nested_savepoints_with_the_inner_one_rolled_back(s: Sessions, m: Family) -> None:
    with s() as session:
        outer = session.begin_nested()
        session.add(m.Item(id=1, name="outer"))
        session.flush()
        inner = session.begin_nested()
        session.add(m.Item(id=2, name="inner"))
        session.flush()
        inner.rollback()
        outer.commit()
        session.add(m.Item(id=3, name="top"))
        session.commit()


@scenario(
    {"Item": [added(2, item(id=2, name="kept"), 0), added(3, item(id=3, name="kept too"), 0)]},
    [Tx(actor="alice")],
)
def a_transaction_row_first_written_in_a_rolled_back_savepoint_is_written_again(
    s: Sessions, m: Family
) -> None:
    with s() as session, audit_context(actor="alice"):
        savepoint = session.begin_nested()
        session.add(m.Item(id=1, name="discarded"))
        session.flush()
        savepoint.rollback()
        session.add(m.Item(id=2, name="kept"))
        session.flush()
        session.add(m.Item(id=3, name="kept too"))
        session.commit()


@scenario(
    {"Item": [added(1, item(), 0), changed(1, {"name": ("a", "c")}, item(name="c"), 1)]},
    [NO_CONTEXT] * 2,
)
def a_rolled_back_transaction_leaves_nothing(s: Sessions, m: Family) -> None:
    with s() as session:
        session.add(m.Item(id=1, name="gone"))
        session.flush()
        session.rollback()
    add_item(s, m)
    with s() as session:
        it = get(session, m.Item, 1)
        it.name = "b"
        session.flush()
        session.delete(it)
        session.flush()
        session.rollback()
        # The session is reusable and its next transaction gets a row of its own.
        get(session, m.Item, 1).name = "c"
        session.commit()


@scenario({"Item": [added(3, item(id=3, name="c"), 0)]}, [NO_CONTEXT])
def a_rolled_back_transaction_discards_its_released_savepoints(s: Sessions, m: Family) -> None:
    with s() as session:
        with session.begin_nested():
            session.add(m.Item(id=1, name="a"))
        with session.begin_nested():
            get(session, m.Item, 1).name = "b"
            session.add(m.Item(id=2, name="b"))
        session.rollback()
        session.add(m.Item(id=3, name="c"))
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(code="X"), 0),
            added(2, item(id=2, name="kept", code="Y"), 1),
            added(6, item(id=6, name="after", code="Z"), 1),
        ]
    },
    [NO_CONTEXT] * 2,
)
def a_failed_flush_leaves_nothing(s: Sessions, m: Family) -> None:
    add_item(s, m, code="X")
    with s() as session:
        session.add(m.Item(id=4, name="flushed", code="Y"))
        session.flush()
        get(session, m.Item, 1).name = "renamed"
        session.add(m.Item(id=3, name="dup", code="X"))
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()
    with s() as session:
        session.add(m.Item(id=2, name="kept", code="Y"))
        session.flush()
        savepoint = session.begin_nested()
        it = get(session, m.Item, 2)
        it.name = "lost"
        session.add(m.Item(id=5, name="dup", code="X"))
        with pytest.raises(IntegrityError):
            session.flush()
        savepoint.rollback()
        assert it.name == "kept"
        session.add(m.Item(id=6, name="after", code="Z"))
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(note="old", code="C1"), 0),
            removed(1, item(note="old", code="C1"), 1),
            # A "row switch": SQLAlchemy sends one UPDATE, which leaves the columns the new
            # object does not set as they were (the history holds what is stored).
            added(1, item(name="reborn", qty=1, note="old", code="C1"), 1),
        ]
    },
    [NO_CONTEXT] * 2,
    database_bugs={
        backend: "the row switch is one UPDATE: the triggers record it as an update of the old "
        "record, where the session path records the delete and the insert the session made"
        for backend in ("postgresql", "sqlite", "mariadb")
    },
)
def delete_and_reinsert_in_one_flush(s: Sessions, m: Family) -> None:
    add_item(s, m, note="old", code="C1")
    with s() as session:
        session.delete(get(session, m.Item, 1))
        session.add(m.Item(id=1, name="reborn", qty=1))
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(note="old", code="C1"), 0),
            removed(1, item(note="old", code="C1"), 1),
            added(1, item(name="reborn", code="C1"), 1),
        ]
    },
    [NO_CONTEXT] * 2,
)
def delete_and_reinsert_in_two_flushes(s: Sessions, m: Family) -> None:
    add_item(s, m, note="old", code="C1")
    with s() as session:
        session.delete(get(session, m.Item, 1))
        session.flush()
        session.add(m.Item(id=1, name="reborn", code="C1"))
        session.commit()


# ORM bulk statements


@scenario(
    {
        "Item": [
            added(1, item(code="C1"), 0),
            added(2, item(id=2, name="b"), 0),
            added(3, item(id=3, name="c", qty=1, status="open"), 0),
        ]
    },
    [Tx(actor="importer")],
)
def orm_bulk_inserts(s: Sessions, m: Family) -> None:
    with audit_context(actor="importer"), s() as session:
        session.execute(sa.insert(m.Item).values(id=1, name="a", code="C1"))
        session.execute(
            sa.insert(m.Item),
            [{"id": 2, "name": "b"}, {"id": 3, "name": "c", "qty": 1, "status": "open"}],
        )
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(), 0),
            added(2, item(id=2, name="b", qty=1), 0),
            added(3, item(id=3, name="c"), 0),
            changed(
                2,
                {"qty": (1, 2), "note": (None, "bulk")},
                item(id=2, name="b", qty=2, note="bulk"),
                1,
            ),
            changed(
                3,
                {"qty": (7, 8), "note": (None, "bulk")},
                item(id=3, name="c", qty=8, note="bulk"),
                1,
            ),
            changed(1, {"name": ("a", "by key")}, item(name="by key"), 2),
            changed(3, {"name": ("c", "by key")}, item(id=3, name="by key", qty=8, note="bulk"), 2),
        ]
    },
    [NO_CONTEXT] * 3,
)
def orm_bulk_updates(s: Sessions, m: Family) -> None:
    with s() as session:
        session.add_all(
            [m.Item(id=1, name="a"), m.Item(id=2, name="b", qty=1), m.Item(id=3, name="c")]
        )
        session.commit()
        session.execute(
            sa.update(m.Item).where(m.Item.id >= 2).values(note="bulk", qty=m.Item.qty + 1)
        )
        session.commit()
        session.execute(
            sa.update(m.Item), [{"id": 1, "name": "by key"}, {"id": 3, "name": "by key"}]
        )
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(), 0),
            added(2, item(id=2, name="b"), 0),
            added(3, item(id=3, name="c"), 0),
            removed(2, item(id=2, name="b"), 1),
            removed(3, item(id=3, name="c"), 1),
            removed(1, item(), 2),
            added(1, item(name="again"), 2),
        ]
    },
    [NO_CONTEXT] * 3,
)
def orm_bulk_deletes(s: Sessions, m: Family) -> None:
    with s() as session:
        session.add_all([m.Item(id=i, name=n) for i, n in ((1, "a"), (2, "b"), (3, "c"))])
        session.commit()
        session.execute(sa.delete(m.Item).where(m.Item.id >= 2))
        session.execute(sa.delete(m.Item).where(m.Item.id == 99))
        session.commit()
        session.execute(sa.delete(m.Item).where(m.Item.id == 1))
        session.execute(sa.insert(m.Item).values(id=1, name="again"))
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(), 0),
            changed(1, {"name": ("a", "upserted")}, item(name="upserted"), 1),
            added(2, item(id=2, name="new"), 1),
            added(3, item(id=3, name="third"), 2),
        ]
    },
    [NO_CONTEXT] * 3,
)
def an_upsert_records_an_update_or_an_insert(s: Sessions, m: Family) -> None:
    add_item(s, m)
    with s() as session:
        dialect = session.get_bind().dialect.name
        upsert: Any
        ignore: Any
        if dialect == "mariadb":
            merge = mysql.insert(m.Item)
            upsert = merge.on_duplicate_key_update(name=merge.inserted.name)
            ignore = mysql.insert(m.Item).prefix_with("IGNORE")
        else:
            insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(m.Item)
            upsert = insert.on_conflict_do_update(
                index_elements=[m.Item.id], set_={"name": insert.excluded.name}
            )
            ignore = insert.on_conflict_do_nothing(index_elements=[m.Item.id])
        session.execute(upsert, [{"id": 1, "name": "upserted"}, {"id": 2, "name": "new"}])
        session.commit()
        session.execute(ignore, [{"id": 1, "name": "ignored"}, {"id": 3, "name": "third"}])
        session.commit()


# the audit context


@scenario(
    {
        "Item": [
            added(1, item(), 0),
            changed(1, {"name": ("a", "b")}, item(name="b"), 1),
            added(2, item(id=2, name="bulk"), 1),
            removed(1, item(name="b"), 2),
        ]
    },
    [
        Tx(
            "alice",
            "203.0.113.7",
            "req-1",
            "import",
            {"ticket": 42, "tags": ["ü", None, {"n": 1.5}]},
        ),
        Tx("bob", "198.51.100.2", "req-2", None, {}),
        NO_CONTEXT,
    ],
)
def the_audit_context_goes_on_the_transaction_row(s: Sessions, m: Family) -> None:
    with audit_context(
        actor="alice",
        source_ip="203.0.113.7",
        request_id="req-1",
        reason="import",
        ticket=42,
        tags=["ü", None, {"n": 1.5}],
    ):
        add_item(s, m)
    with audit_context(actor="bob", source_ip="198.51.100.2", request_id="req-2"), s() as session:
        get(session, m.Item, 1).name = "b"
        session.execute(sa.insert(m.Item).values(id=2, name="bulk"))
        session.commit()
    with s() as session:
        session.delete(get(session, m.Item, 1))
        session.commit()


@scenario(
    {
        "Item": [
            added(1, item(), 0),
            changed(1, {"name": ("a", "a2")}, item(name="a2"), 0),
            added(2, item(id=2, name="b"), 0),
        ]
    },
    [Tx("alice", "10.0.0.1", "r1", "one", {"a": 1})],
)
def the_context_of_the_first_write_wins(s: Sessions, m: Family) -> None:
    with s() as session:
        with audit_context(actor="alice", source_ip="10.0.0.1", request_id="r1", reason="one", a=1):
            session.add(m.Item(id=1, name="a"))
            session.flush()
        with audit_context(actor="bob", source_ip="10.0.0.2", request_id="r2", reason="two", b=2):
            session.add(m.Item(id=2, name="b"))
            get(session, m.Item, 1).name = "a2"
            session.flush()
        session.commit()


@scenario(
    {"Item": [added(1, item(), 0), changed(1, {"name": ("a", "b")}, item(name="b"), 0)]},
    [NO_CONTEXT],
)
def a_context_opened_after_the_writes_does_not_count(s: Sessions, m: Family) -> None:
    with s() as session:
        session.add(m.Item(id=1, name="a"))
        session.flush()
        get(session, m.Item, 1).name = "b"
        session.flush()
        with audit_context(actor="mallory", reason="not mine"):
            session.commit()


# restores


@scenario(
    {
        "Item": [
            added(1, item(note="n"), 0),
            changed(1, {"name": ("a", "b"), "note": ("n", None)}, item(name="b"), 1),
            removed(1, item(name="b"), 2),
            added(1, item(name="b"), 3),
            changed(1, {"name": ("b", "a"), "note": (None, "n")}, item(note="n"), 4),
        ]
    },
    [
        *[NO_CONTEXT] * 3,
        Tx("carol", reason="undelete Item 1 as of transaction #1, the version before its deletion"),
        Tx("carol", reason="restore Item 1 to transaction #0"),
    ],
)
def restores_are_recorded_with_their_reason(s: Sessions, m: Family) -> None:
    add_item(s, m, note="n")
    with s() as session:
        it = get(session, m.Item, 1)
        it.name, it.note = "b", None
        session.commit()
        session.delete(it)
        session.commit()
    with audit_context(actor="carol"), s() as session:
        first, _, deletion = history(session, m.Item, 1)
        versioning.restore(session, deletion)  # an undelete
        session.commit()
        versioning.restore(session, m.Item, 1, at=first.transaction_id)
        session.commit()


# --- the test ------------------------------------------------------------------------------------

MODES = ("session", "database")
#: Each way of capturing: the family of models, and the engine's execution options. The session
#: path's bulk statements get their history rows built in Python, or by the database
#: (``versioning_bulk_sql``, see docs/statements.md).
WAYS: dict[str, tuple[str, dict[str, Any]]] = {
    "session": ("session", {}),
    "session_bulk_sql": ("session", {"versioning_bulk_sql": True}),
    "database": ("database", {}),
}


@pytest.mark.parametrize(("way", "name"), [(way, name) for way in WAYS for name in SCENARIOS])
def test_the_same_history_in_both_modes(
    way: str,
    name: str,
    backend: str,
    create_tables: CreateTables,
    request: pytest.FixtureRequest,
) -> None:
    case = SCENARIOS[name]
    mode, options = WAYS[way]
    bug = case.database_bugs.get(backend) if mode == "database" else None
    if bug is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"database capture: {bug}"))
    family = FAMILIES[mode]
    engine = create_tables(family.metadata)
    bound = engine.execution_options(**options)
    with contextlib.ExitStack() as made:

        def sessions(**kwargs: Any) -> Session:
            return made.enter_context(Session(bound, **kwargs))

        case.run(sessions, family)
    got = recorded(engine, family)
    assert got == case.expected
    assert typed(got) == typed(case.expected)


def test_the_families_differ_only_in_how_they_are_captured(
    backend: str, create_tables: CreateTables
) -> None:
    """The premise: the same tables, columns and options; one family's writes recorded by the
    session, the other's by installed, current triggers."""
    session_family, database_family = FAMILIES["session"], FAMILIES["database"]
    for name in [*session_family.versioned(), "Typed"]:
        model, twin = getattr(session_family, name), getattr(database_family, name)
        spec, twin_spec = require_spec(model), require_spec(twin)
        assert (spec.capture, twin_spec.capture) == ("session", "database")
        assert (spec.attrs, spec.pk_keys, spec.excluded, spec.masks, spec.personal) == (
            twin_spec.attrs,
            twin_spec.pk_keys,
            twin_spec.excluded,
            twin_spec.masks,
            twin_spec.personal,
        )
        for table, other in (
            (model.__table__, twin.__table__),
            (history_table(model), history_table(twin)),
        ):
            assert [(c.name, repr(c.type), c.nullable, c.primary_key) for c in table.columns] == [
                (c.name, repr(c.type), c.nullable, c.primary_key) for c in other.columns
            ]
    engine = create_tables(database_family.metadata)
    assert check_triggers(engine, database_family.metadata) == []
    assert sorted(SCENARIOS) and len(set(SCENARIOS)) == len(SCENARIOS)


@pytest.mark.parametrize(
    ("mode", "first"),
    [(mode, first) for mode in MODES for first in (types.FIRST, types.FALSY, types.EMPTY)],
    ids=[f"{mode}-{kind}" for mode in MODES for kind in ("values", "falsy", "nulls")],
)
def test_the_type_matrix_reads_back_the_same_in_both_modes(
    mode: str, first: dict[str, Any], create_tables: CreateTables, sessions: Sessions
) -> None:
    """Every column type (test_types' matrix), written by the ORM and recorded in either mode,
    reads back with the column's own Python type and value: an insert, an update of every
    column, a delete."""
    family = FAMILIES[mode]
    create_tables(family.metadata)
    second = types.data(types.SECOND)
    with sessions() as session:
        session.add(family.Typed(**first))
        session.commit()
        typed = get(session, family.Typed, 1)
        for key, value in second.items():
            setattr(typed, key, value)
        session.commit()
        session.delete(typed)
        session.commit()
    with sessions() as session:
        insert, update, delete = history(session, family.Typed, 1)
    assert [insert.operation, update.operation, delete.operation] == [INSERT, UPDATE, DELETE]
    set_first = {k: v for k, v in first.items() if v is not None}
    assert set(insert.changes) == set(set_first)
    types.assert_values(types.news(insert), set_first, "insert new")
    types.assert_values(insert.state, types.full(first), "insert state")
    changed_keys = {k for k in second if first.get(k) != types.SECOND[k]}
    assert set(update.changes) == changed_keys
    types.assert_values(types.olds(update), {k: first.get(k) for k in changed_keys}, "old")
    types.assert_values(types.news(update), {k: types.SECOND[k] for k in changed_keys}, "new")
    types.assert_values(update.state, types.SECOND, "update state")
    types.assert_values(delete.state, types.SECOND, "delete state")
    assert set(delete.changes) == set(types.SECOND)
    types.assert_values(types.olds(delete), types.SECOND, "delete old")
