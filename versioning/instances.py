"""Transient instances made from history rows, many at a time: what a
:class:`versioning.related.Moment` builds for ``as_of``, ``all_as_of`` and relationship loads.

Making an instance is the hot path of ``all_as_of`` (10,000 records, 10,000 instances), so the
work that does not depend on the row is done once per model and row layout, in a :class:`Plan`:
the positions of the model's attributes and key in the row, the class's instance factory and the
keys of its relationships. Per row, what is left is: read the key, look it up in the moment's
:class:`Identity`, make the instance (``ClassManager.new_instance()``: no ``__init__``, no
attribute events) and put the row's values in its ``__dict__`` as the ORM does when it loads a row,
values in the Python types the result's processors gave them (nothing is decoded twice).

The relationship loaders of an instance are the ones its :class:`Group` holds, made once per group
and shared by its instances (a copy of one ``dict`` per instance), not a closure per relationship
per instance.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import instance_state

from versioning import _compat
from versioning.declaration import ModelSpec, versioned_spec
from versioning.schema import META_COLUMNS

__all__ = [
    "Group",
    "Identity",
    "Key",
    "Plan",
    "plan_for",
    "plan_of",
    "plan_of_rows",
    "snapshot_names",
]

#: A record of a moment: its hierarchy's history table and its primary key.
Key = tuple[sa.Table, tuple[Any, ...]]


class Group(list[Any]):
    """Instances made together (by one call, one batch of ``all_as_of`` or one relationship load):
    reading a relationship on one of them loads it for all of them, in one query.

    ``loaders`` holds, per mapper, the relationship loaders its instances share (see
    :meth:`versioning.related.Moment.callables`).
    """

    __slots__ = ("loaders",)

    def __init__(self) -> None:
        super().__init__()
        self.loaders: dict[Mapper[Any], dict[str, Any]] = {}


class Identity:
    """The instances of one moment by :data:`Key`, held weakly: a stream of records read as of a
    moment keeps only what its caller keeps.

    A plain ``weakref.ref`` per instance (no callback) rather than a ``WeakValueDictionary``, whose
    pure-Python keyed reference costs more than making the instance; entries whose instance is gone
    are dropped whenever the table has doubled since the last sweep (amortized constant time).
    """

    __slots__ = ("_refs", "_sweep_at")

    def __init__(self) -> None:
        self._refs: dict[Key, weakref.ref[Any]] = {}
        self._sweep_at = 1024

    def get(self, key: Key) -> Any:
        ref = self._refs.get(key)
        return None if ref is None else ref()

    def add(self, key: Key, obj: Any) -> None:
        refs = self._refs
        refs[key] = weakref.ref(obj)
        if len(refs) > self._sweep_at:
            self._refs = {k: r for k, r in refs.items() if r() is not None}
            self._sweep_at = max(1024, 2 * len(self._refs))

    def __len__(self) -> int:
        return len(self._refs)


class Plan:
    """How to make an instance of one model from a row of one layout (see :func:`plan_of_rows`)."""

    __slots__ = ("key_of", "keys", "mapper", "new", "relationships", "root", "values")

    def __init__(self, spec: ModelSpec, names: Sequence[str]) -> None:
        position = {name: i for i, name in enumerate(names)}
        self.mapper = spec.mapper
        self.root: sa.Table = spec.root.history
        #: The attribute keys, in the order :attr:`values` returns them.
        self.keys: tuple[str, ...] = spec.attrs
        self.values = _getter([position[spec.history_names[k]] for k in spec.attrs])
        #: The record's primary key (a tuple) in a row.
        self.key_of = _getter([position[spec.history_names[k]] for k in spec.pk_keys])
        mapper = spec.mapper
        if not mapper.configured:
            sa.orm.configure_mappers()  # the first ORM use of a process may be reading history
        #: The keys of the class's relationships: each gets the group's loader.
        self.relationships = tuple(prop.key for prop in mapper.relationships)
        self.new: Callable[[], Any] = mapper.class_manager.new_instance

    def make_unlinked(self, row: Sequence[Any], group: object = None) -> Any:
        """A new instance of a row, for a class without relationships (:meth:`make` without
        loaders; ``group`` is ignored: nothing loads through it)."""
        obj = self.new()
        vars(obj).update(zip(self.keys, self.values(row)))  # noqa: B905 - see make()
        return obj

    def make(self, values: Any, loaders: dict[str, Any] | None) -> Any:
        """A new transient instance holding ``values`` (in :attr:`keys` order), as loaded: no
        change events, no attribute history; ``loaders`` its relationships' loaders."""
        obj = self.new()
        # As many values as keys, by construction; strict=True would cost 10 % of all_as_of.
        vars(obj).update(zip(self.keys, values))  # noqa: B905
        if loaders is not None:
            _compat.set_loaders(instance_state(obj), loaders)
        return obj


def _getter(positions: list[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A function returning the items of a row at ``positions``, as a tuple (also for one)."""
    if len(positions) == 1:
        (only,) = positions
        return lambda row: (row[only],)
    return itemgetter(*positions)


def snapshot_names(history: sa.Table) -> tuple[str, ...]:
    """The names of the columns :func:`versioning.snapshots.latest` selects, in its order."""
    return tuple(c.name for c in history.c if c.name not in META_COLUMNS)


def plan_for(spec: ModelSpec, names: tuple[str, ...]) -> Plan:
    """The plan of ``spec``'s own class, for rows whose columns are ``names`` (made once, kept in
    ``spec.read_cache``)."""
    found: Plan | None = spec.read_cache.get((Plan, names))
    if found is None:
        found = spec.read_cache[(Plan, names)] = Plan(spec, names)
    return found


def plan_of(spec: ModelSpec) -> Plan:
    """The plan of ``spec``'s class, for values in :attr:`Plan.keys` order."""
    return plan_for(spec, snapshot_names(spec.history))


def plan_of_rows(spec: ModelSpec, names: tuple[str, ...]) -> Callable[[Sequence[Any]], Plan]:
    """For rows of ``spec``'s history whose columns are ``names``: a function giving the plan of
    each row's class (in an inheritance hierarchy, the class its discriminator names, if it is
    ``spec``'s or a versioned subclass; otherwise ``spec``'s)."""
    own = plan_for(spec, names)
    if spec.discriminator is None:
        return lambda row: own
    position = names.index(spec.history_names[spec.discriminator])
    by_identity: dict[Any, Plan] = {}

    def plan(row: Sequence[Any]) -> Plan:
        identity = row[position]
        found = by_identity.get(identity)
        if found is None:
            mapper = spec.mapper.polymorphic_map.get(identity)
            sub = versioned_spec(mapper) if mapper is not None else None
            found = by_identity[identity] = own if sub is None else plan_for(sub, names)
        return found

    return plan
