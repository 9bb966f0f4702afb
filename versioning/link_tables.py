"""Declaring link history: the history table of an association table between versioned models.

A relationship with ``secondary=`` between two versioned models writes the rows of that
association table (its *links*) itself, outside any mapped class. The table gets a history of its
own, ``<name>_history``, laid out like a model's (see :func:`versioning.schema.history_table_for`):
version id, transaction id, operation (``insert`` or ``delete``: the ORM never updates a link),
a snapshot of every column of the link (its foreign keys and any extra column) and ``changes``
always NULL. Besides the index by link and transaction, each side of the link has an index of its
own (its columns, then the transaction), so that the links of a set of records at a moment are
one indexed query from either side (see :mod:`versioning.links`).

The table is added as soon as both tables the association table references are versioned
(whichever class is declared last), so that ``metadata.create_all()`` and Alembic autogenerate see
it without configuring the mappers. A ``secondary`` given by name or lambda is tried again at each
versioned class declared after it; one known only when configuring (a lambda of a table declared
after every model, or a table without foreign keys joined by ``primaryjoin``/``secondaryjoin``)
gets its history when the mappers are configured (``configure_mappers()`` before ``create_all()``
then).

Not link history:

* a secondary between a versioned and a non-versioned model: links to records without history;
  its rows are written as before, unrecorded;
* a table mapped by a versioned class (the association object pattern): that class is an
  ordinary versioned model; a relationship writing it as its ``secondary`` is refused (see
  :mod:`versioning.declaration`).

A foreign key of a link table with ``ondelete="CASCADE"`` (to a primary key) is followed: the
links the database deletes with their record are recorded (see :mod:`versioning.link_cascades`).
Other database-side actions (``SET NULL``, ``onupdate``) would change links, which are only ever
inserted or deleted, and are refused when the mappers are configured.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Mapper, RelationshipProperty

from versioning import _compat
from versioning.declaration import Versioned, secondary_table, versioned_spec
from versioning.errors import ConfigurationError
from versioning.guard import register_link_table
from versioning.schema import (
    LIVE_TABLE_INFO,
    META_COLUMNS,
    _index_name,
    history_table_for,
    snapshot_column,
    transaction_table_for,
)

__all__ = ["LINKS_INFO", "LinkSpec", "link_spec"]

#: ``Table.info`` key of an association table with link history: the history table's name.
LINKS_INFO = "versioning_links"
#: ``MetaData.info`` key: relationships of versioned classes whose secondary is not decided yet.
_CANDIDATES = "versioning_link_candidates"


@dataclass(frozen=True, eq=False)
class LinkSpec:
    """An association table with link history."""

    table: sa.Table
    history: sa.Table
    transactions: sa.Table
    #: The columns of a link (all of the table's), snapshot in history under the same names.
    columns: tuple[sa.Column[Any], ...]
    #: The columns that identify a link: its foreign keys (or the columns it is joined on).
    keys: tuple[sa.Column[Any], ...]
    #: Per dialect name: the columns whose stored value may differ from the one sent (see
    #: :func:`versioning.stored.exactness`), filled on first use.
    stored_checks: dict[str, dict[str, Any]] = field(default_factory=dict)


#: The link history of each association table that has one. ``Table.info`` only names it (a
#: string, as for versioned tables): Alembic writes a table's ``info`` into its migration.
_SPECS: weakref.WeakKeyDictionary[sa.Table, LinkSpec] = weakref.WeakKeyDictionary()


def link_spec(table: Any) -> LinkSpec | None:
    """The link history of ``table``, if it has one (fast: a dict lookup)."""
    info = getattr(table, "info", None)
    if info is None or LINKS_INFO not in info:
        return None
    return _SPECS.get(table)


def _versioned_table(table: sa.Table) -> bool:
    return LIVE_TABLE_INFO in table.info


def _referenced(table: sa.Table) -> list[sa.Table] | None:
    """The tables ``table``'s foreign keys reference, ``None`` while one is not declared."""
    found: list[sa.Table] = []
    for constraint in table.foreign_key_constraints:
        try:
            found.append(constraint.referred_table)
        except sa.exc.NoReferencedTableError:
            return None
    return found


def _action(raw: Any) -> str | None:
    action = None if raw is None else " ".join(str(raw).upper().split())
    return None if action in (None, "NO ACTION", "RESTRICT") else action


def _refusal(table: sa.Table) -> str | None:
    """Why a link table cannot have exact history: a foreign key the database acts on, other than
    an ``ondelete="CASCADE"`` to the primary key of a table whose rows only the ORM deletes."""
    for constraint in table.foreign_key_constraints:
        columns = ", ".join(c.name for c in constraint.columns)
        what = f"the foreign key ({columns}) of link table {table.fullname!r}"
        for which in ("ondelete", "onupdate"):
            raw = getattr(constraint, which)
            action = _action(raw)
            if action is None or (which, action) == ("ondelete", "CASCADE"):
                continue
            return (
                f"{what} has {which}={raw!r}: the database would change links behind the ORM, "
                f"and a link is inserted or deleted, never changed. Remove {which} from the "
                f"foreign key (ondelete='CASCADE' is recorded)"
            )
        if _action(constraint.ondelete) is None:
            continue
        try:
            referenced = constraint.referred_table
        except sa.exc.NoReferencedTableError:
            continue  # decided once it is declared
        targets = {element.column for element in constraint.elements}
        if targets != set(referenced.primary_key.columns):
            return (
                f"{what} has ondelete='CASCADE' to columns of {referenced.fullname!r} other than "
                f"its primary key; versioning records links the database deletes by their "
                f"record's key only. Point the foreign key at the primary key, or remove "
                f"ondelete and let the ORM delete the links"
            )
        for other in referenced.foreign_key_constraints:
            if _action(other.ondelete) is not None:
                return (
                    f"{what} has ondelete='CASCADE' to {referenced.fullname!r}, whose rows the "
                    f"database itself may delete or change (its foreign key "
                    f"({', '.join(c.name for c in other.columns)}) has ondelete="
                    f"{other.ondelete!r}); the links it would delete with them cannot be "
                    f"recorded. Remove ondelete from the link table's foreign key and let the "
                    f"ORM delete the links"
                )
    return None


def _declare_links(table: sa.Table, joined: list[sa.Column[Any]] | None = None) -> LinkSpec:
    """Give ``table`` its link history (once).

    The columns of its foreign keys identify a link (and are indexed); a table without foreign
    keys is identified by the ``joined`` columns the relationship joins it on.
    """
    existing = link_spec(table)
    if existing is not None:
        return existing
    name = f"{table.name}_history"
    key = name if table.schema is None else f"{table.schema}.{name}"
    if key in table.metadata.tables:
        raise ConfigurationError(
            f"cannot create the link history {key!r} of association table {table.fullname!r}: "
            f"the MetaData already has a table of that name; rename one of them"
        )
    clashes = sorted({c.name for c in table.columns} & META_COLUMNS)
    if clashes:
        raise ConfigurationError(
            f"association table {table.fullname!r} has column(s) {clashes}, names versioning "
            f"reserves for its own history columns; rename the column(s)"
        )
    keyed = {c for c in table.columns if c.foreign_keys} or set(joined or ())
    fk_columns = [c for c in table.columns if c in keyed]
    others = [c for c in table.columns if c not in keyed]
    history = history_table_for(
        f"association table {table.fullname!r}",
        name,
        table,
        transaction_table_for(table.metadata),
        [snapshot_column(c.name, c, False) for c in fk_columns],
        [snapshot_column(c.name, c, False) for c in others],
    )
    # One index per side: the links of given records are found from either end.
    sides = [tuple(c.columns) for c in table.foreign_key_constraints] or [(c,) for c in fk_columns]
    for position, side in enumerate(sorted(sides, key=lambda cs: tuple(c.key for c in cs))):
        names = [c.name for c in side]
        if names == [c.name for c in fk_columns[: len(names)]]:
            continue  # a prefix of the (link, transaction) index already
        sa.Index(_index_name(name, f"side{position}"), *names, history.c.versioning_transaction_id)
    history.info["link_table"] = table.fullname
    spec = LinkSpec(
        table,
        history,
        transaction_table_for(table.metadata),
        tuple(table.columns),
        tuple(fk_columns),
    )
    _SPECS[table] = spec
    table.info[LINKS_INFO] = history.name
    register_link_table(table, history)
    # The capture of link writes builds on this module.
    from versioning import link_capture, link_cascades

    link_capture.install()
    for constraint in table.foreign_key_constraints:
        if _action(constraint.ondelete) == "CASCADE":
            referenced = constraint.referred_table
            by_target = {element.column: element.parent for element in constraint.elements}
            columns = tuple(by_target[c].name for c in referenced.primary_key.columns)
            link_cascades.add_edge(referenced, spec, columns)
    return spec


def _eligible(table: sa.Table) -> bool:
    """Whether the table links versioned tables only, by its foreign keys, and is itself not one."""
    if _versioned_table(table) or link_spec(table) is not None:
        return False
    referenced = _referenced(table)
    return (
        bool(referenced)
        and all(_versioned_table(t) for t in referenced or ())
        and _refusal(table) is None
    )


def _after_constructed(mapper: Mapper[Any], cls: type[Any]) -> None:
    """Note the secondaries of a new versioned class; declare those now linking versioned tables."""
    if versioned_spec(mapper) is None:
        return
    # Relationships whose secondary is not known yet (a name or lambda of a table declared
    # later) are tried again at each versioned class declared after them.
    pending: list[tuple[RelationshipProperty[Any], Mapper[Any]]] = (
        mapper.registry.metadata.info.setdefault(_CANDIDATES, [])
    )
    pending.extend(
        (prop, mapper)
        for prop in _compat.mapper_properties(mapper)
        if isinstance(prop, RelationshipProperty) and not prop.viewonly
    )
    for entry in list(pending):
        table = secondary_table(*entry)
        if table is None:
            continue
        if _eligible(table):
            _declare_links(table)
        if link_spec(table) is not None or _referenced(table) is not None:
            pending.remove(entry)  # decided: it has link history, or never will before configure


def _before_configured(mapper: Mapper[Any], cls: type[Any]) -> None:
    """Before the mapper is usable: a secondary linking versioned tables gets its link history,
    or is refused (an error here leaves the mapper unconfigured, so every use fails the same way).
    """
    if versioned_spec(mapper) is None:
        return
    for prop in _compat.mapper_properties(mapper):
        if not isinstance(prop, RelationshipProperty) or prop.viewonly or prop.parent is not mapper:
            continue
        table = secondary_table(prop, mapper)
        if table is None or _versioned_table(table) or link_spec(table) is not None:
            continue
        referenced = _referenced(table)
        if not referenced or not all(_versioned_table(t) for t in referenced):
            continue
        refusal = _refusal(table)
        if refusal is not None:
            raise ConfigurationError(f"{cls.__name__}.{prop.key}: {refusal}")
        _declare_links(table)


def _configured(mapper: Mapper[Any], cls: type[Any]) -> None:
    """A secondary without foreign keys (joined by ``primaryjoin``/``secondaryjoin``) between two
    versioned models: its link history, now that SQLAlchemy has resolved both ends."""
    if versioned_spec(mapper) is None:
        return
    for prop in mapper.relationships:
        table = prop.secondary
        if (
            prop.parent is not mapper
            or prop.viewonly
            or not isinstance(table, sa.Table)
            or _versioned_table(table)
            or link_spec(table) is not None
            or versioned_spec(prop.mapper) is None
        ):
            continue
        refusal = _refusal(table)
        if refusal is not None:  # pragma: no cover - a foreign key makes it known before
            raise ConfigurationError(f"{cls.__name__}.{prop.key}: {refusal}")
        pairs = [*prop.synchronize_pairs, *(prop.secondary_synchronize_pairs or ())]
        joined = [c for _, c in pairs if isinstance(c, sa.Column) and c.table is table]
        _declare_links(table, joined)


event.listen(Versioned, "after_mapper_constructed", _after_constructed, propagate=True)
event.listen(Versioned, "before_mapper_configured", _before_configured, propagate=True)
event.listen(Versioned, "mapper_configured", _configured, propagate=True)
