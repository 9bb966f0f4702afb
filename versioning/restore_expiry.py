"""Keeping the session consistent after a restore: what it changed, expired.

A restore writes foreign keys and many-to-many links directly: a child put back under its parent
of the moment leaves the collection of the parent it had, if the session loaded it, still holding
it. After the restore's flush, the loaded relationship attributes the restore made wrong are
expired — the collections of the parents each written record left or joined, the relationships of
the written records themselves, and the other side of the links it changed — and nothing else:
the session's other instances and attributes keep what they hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper, RelationshipProperty, Session
from sqlalchemy.orm.attributes import instance_dict
from sqlalchemy.orm.interfaces import ONETOMANY

__all__ = ["expire_links", "expire_moved", "snapshot"]


def snapshot(obj: Any) -> dict[str, Any]:
    """The column values ``obj`` holds (before the restore writes it)."""
    mapper = sa.inspect(obj).mapper
    values = instance_dict(obj)
    return {p.key: values[p.key] for p in mapper.column_attrs if p.key in values}


def _pointing_at(mapper: Mapper[Any]) -> list[RelationshipProperty[Any]]:
    """The one-to-many relationships (of any class) whose collections may hold ``mapper``'s
    records."""
    return [
        prop
        for other in mapper.registry.mappers
        for prop in other.relationships
        if prop.direction is ONETOMANY and mapper.isa(prop.mapper)
    ]


def _child_keys(prop: RelationshipProperty[Any]) -> set[str]:
    """The attributes of ``prop``'s records that decide which collections hold them, and in what
    order: the columns of its join condition and ordering on their side."""
    columns = [
        c
        for c in [*sa.sql.visitors.iterate(prop.primaryjoin), *(prop.order_by or ())]
        if isinstance(c, sa.sql.expression.ColumnClause)
    ]
    keys = set()
    for column in columns:
        try:
            keys.add(prop.mapper.get_property_by_column(column).key)
        except sa.orm.exc.UnmappedColumnError:
            continue  # the parent's side
    return keys


def _expire(session: Session, obj: Any, key: str) -> None:
    if key in instance_dict(obj):
        session.expire(obj, [key])


def _holders(
    session: Session, prop: RelationshipProperty[Any], values: Mapping[str, Any]
) -> list[Any]:
    """The instances in the session whose ``prop`` holds the record of ``values`` (its columns)."""
    child = prop.mapper
    parent = prop.parent
    wanted: dict[str, Any] = {}
    for local, remote in prop.local_remote_pairs:
        key = child.get_property_by_column(remote).key
        if values.get(key) is None:
            return []
        wanted[parent.get_property_by_column(local).key] = values[key]
    pk_keys = [parent.get_property_by_column(c).key for c in parent.primary_key]
    if set(wanted) == set(pk_keys):
        found = session.identity_map.get(
            parent.identity_key_from_primary_key(tuple(wanted[k] for k in pk_keys))
        )
        candidates = [] if found is None else [found]
    else:
        candidates = [o for o in session.identity_map.values() if isinstance(o, parent.class_)]
    return [
        o
        for o in candidates
        if isinstance(o, parent.class_)
        and all(instance_dict(o).get(k) == v for k, v in wanted.items())
    ]


def expire_moved(session: Session, moved: Iterable[tuple[Any, Mapping[str, Any] | None]]) -> None:
    """Expire, for each record written (its instance and its column values before, ``None`` for
    one re-created), its own relationships, and the loaded collections that held it before or
    hold it now."""
    pointing: dict[Mapper[Any], list[tuple[RelationshipProperty[Any], set[str]]]] = {}
    for obj, before in moved:
        state = sa.inspect(obj)
        mapper = state.mapper
        if mapper not in pointing:
            pointing[mapper] = [(p, _child_keys(p)) for p in _pointing_at(mapper)]
        after = None if state.deleted or state.detached else snapshot(obj)
        changed = (
            None
            if before is None or after is None
            else {k for k, v in after.items() if k not in before or before[k] != v}
        )
        for prop, keys in pointing[mapper]:
            if changed is not None and not changed & keys:
                continue  # still in the same collections, in the same place
            for values in (before, after):
                if values is not None:
                    for holder in _holders(session, prop, values):
                        _expire(session, holder, prop.key)
        if after is not None:
            for prop in mapper.relationships:
                _expire(session, obj, prop.key)


def expire_links(session: Session, prop: RelationshipProperty[Any], targets: Iterable[Any]) -> None:
    """Expire, on the targets whose links through ``prop`` the restore changed, the loaded
    relationships through the same association table (the other side)."""
    for obj in targets:
        for other in sa.inspect(obj).mapper.relationships:
            if other.secondary is prop.secondary and other is not prop:
                _expire(session, obj, other.key)
