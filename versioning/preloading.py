"""Loading relationships of many live records at once, before a restore writes them.

The ORM loads a relationship it needs one record at a time (a lazy load per record): to compare
or assign a many-to-many collection, to cascade a deletion, to clear the foreign keys of the
children of a deleted record, to delete its links. A restore of many records loads them first,
one ``SELECT`` of the records and one per relationship (``selectinload``), whatever their number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper, RelationshipProperty, Session, selectinload
from sqlalchemy.orm.attributes import instance_dict
from sqlalchemy.orm.interfaces import MANYTOMANY, ONETOMANY

from versioning.concealed import masked_unloaded
from versioning.declaration import versioned_spec

__all__ = ["load_for_delete", "load_relationships"]


def _key_match(mapper: Mapper[Any], objs: Sequence[Any]) -> sa.ColumnElement[bool]:
    keys = [mapper.identity_key_from_instance(o)[1] for o in objs]
    columns = [
        getattr(mapper.class_, mapper.get_property_by_column(c).key) for c in mapper.primary_key
    ]
    if len(columns) == 1:
        return columns[0].in_([k[0] for k in keys])  # type: ignore[no-any-return]
    return sa.tuple_(*columns).in_(keys)


def _unmasked(mapper: Mapper[Any]) -> list[Any]:
    """Options leaving ``mapper``'s masked columns unloaded: the engine's debug log shows rows."""
    spec = versioned_spec(mapper)
    return [] if spec is None else masked_unloaded(spec.masks, mapper.class_)


def load_relationships(
    session: Session, objs: Iterable[Any], keys: Sequence[str], refresh: bool = False
) -> None:
    """Load relationships ``keys`` of the persistent ``objs`` (those that have them), in one query
    per class and relationship; ``refresh`` reads them again where already loaded."""
    by_mapper: dict[Mapper[Any], list[Any]] = {}
    for obj in objs:
        by_mapper.setdefault(sa.inspect(obj).mapper, []).append(obj)
    for mapper, group in by_mapper.items():
        props = [mapper.relationships[k] for k in keys if k in mapper.relationships]
        if not refresh:
            props = [p for p in props if any(p.key not in instance_dict(o) for o in group)]
        if not props:
            continue
        loads = [
            selectinload(getattr(mapper.class_, p.key)).options(*_unmasked(p.mapper)) for p in props
        ]
        statement = (
            sa.select(mapper.class_)
            .where(_key_match(mapper, group))
            .options(*_unmasked(mapper), *loads)
        )
        if refresh:
            statement = statement.execution_options(populate_existing=True)
        session.execute(statement).scalars().all()


def _loaded_on_delete(prop: RelationshipProperty[Any]) -> bool:
    """Whether deleting a record makes the ORM load this relationship of it: to cascade the
    deletion, clear the children's foreign keys, or delete the links."""
    return (
        not prop.viewonly
        and prop.direction in (ONETOMANY, MANYTOMANY)
        and prop.lazy not in ("dynamic", "write_only", "noload", "raise", "raise_on_sql")
        and not prop.passive_deletes
    )


def load_for_delete(session: Session, objs: Sequence[Any]) -> None:
    """Load what deleting ``objs`` makes the ORM load, down the delete cascades: one query per
    class and relationship at each level of the cascade, not one per record."""
    seen = {id(o) for o in objs}
    level = list(objs)
    while level:
        by_mapper: dict[Mapper[Any], list[Any]] = {}
        for obj in level:
            by_mapper.setdefault(sa.inspect(obj).mapper, []).append(obj)
        following: list[Any] = []
        for mapper, group in by_mapper.items():
            props = [p for p in mapper.relationships if _loaded_on_delete(p)]
            load_relationships(session, group, [p.key for p in props])
            for prop in props:
                if not prop.cascade.delete:
                    continue
                for obj in group:
                    value = instance_dict(obj).get(prop.key)
                    for item in value if prop.uselist and value is not None else [value]:
                        if item is not None and id(item) not in seen:
                            seen.add(id(item))
                            following.append(item)
        level = following
