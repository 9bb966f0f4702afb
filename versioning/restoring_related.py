"""Restoring a record with its relationships: ``restore(..., relationships=["lines", ...])``.

Each named relationship (dotted paths go deeper: ``"lines.notes"``) is brought back to the moment
of the version. It is planned level by level, and each level costs a fixed number of queries,
whatever the number of records: the related records as they were then come with the moment's read
of the level (:mod:`versioning.related`, which keeps the version each was made of); their live
rows, with the records related to the level's parents now, in one locked read
(:func:`versioning.restoring.live_rows`). The whole plan is gathered and checked before anything
is written:

* a record related then (one-to-many, one-to-one, many-to-one) is restored as
  :func:`versioning.restore` restores one record: changed since → put back, deleted since →
  re-created, re-parented since → its foreign key put back;
* a record related now through a one-to-many (or one-to-one) relationship but not then is removed
  from it: deleted if the relationship cascades deletes (``delete`` or ``delete-orphan``), else
  its foreign key is cleared if nullable, else :class:`~versioning.errors.RestoreError` (also
  when the deletion's cascade would take a record the restore puts back); these are flushed
  first, so that a record put back may take a unique value one removed held;
* a many-to-many collection is set to the records linked then. If the relationship cascades
  deletes, those records are its own and are restored as children are; else they are shared and
  not changed, and each must be there to link: existing now and not deleted since, or restored by
  this restore, or — deleted since — the record now under its key as it was then (else it is
  another record, added since): otherwise ``RestoreError``.

Then it is applied through the ORM and flushed once, as one restore: the capture records every
change and link, and the transaction's reason names the record, the relationships and what
happened to each related record. Afterwards the loaded relationships the restore made wrong in
the session are expired (:mod:`versioning.restore_expiry`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import RelationshipProperty, Session
from sqlalchemy.orm.attributes import instance_dict
from sqlalchemy.orm.interfaces import MANYTOMANY, MANYTOONE

from versioning.declaration import ModelSpec, require_spec, versioned_spec
from versioning.errors import ArgumentError, RestoreError
from versioning.instances import Group
from versioning.operation import Operation
from versioning.preloading import load_for_delete, load_relationships
from versioning.reading import Version
from versioning.related import Moment, _join, check_paths
from versioning.restore_expiry import expire_links, expire_moved, snapshot
from versioning.restoring import (
    Step,
    _label,
    check_loadable,
    describe_step,
    flush_restore,
    live_rows,
    next_versions,
    plan_step,
    write_step,
)
from versioning.schema import OPERATION, TRANSACTION_ID

__all__ = ["check_relationships", "restore_related"]


def check_relationships(model: type[Any], relationships: Any) -> tuple[str, ...]:
    """The relationship paths of ``restore(relationships=...)``, checked before anything is read
    or written: known names, relationships a restore can write."""
    paths = check_paths(model, relationships, "restore", argument="relationships")
    for path in paths:
        mappers = [sa.inspect(model)]
        for key in path.split("."):
            props = [
                m.relationships[key]
                for base in mappers
                for m in base.self_and_descendants
                if key in m.relationships
            ]
            for prop in props:
                name = f"{prop.parent.class_.__name__}.{prop.key}"
                if prop.viewonly:
                    raise ArgumentError(
                        f"versioning.restore(relationships=[{path!r}]): {name} is viewonly, so "
                        f"the ORM does not write it; name the writable relationship it mirrors"
                    )
                if prop.lazy in ("dynamic", "write_only"):
                    raise ArgumentError(
                        f"versioning.restore(relationships=[{path!r}]): {name} is a {prop.lazy} "
                        f"relationship, which cannot be read as of a moment; declare a plain "
                        f"relationship to restore through"
                    )
            mappers = [p.mapper for p in props]
    return paths


@dataclass
class _Existing:
    """A record linked through a many-to-many relationship that the restore does not change."""

    live: Any


@dataclass
class _Links:
    parent: Step | _Existing
    prop: RelationshipProperty[Any]
    targets: list[tuple[ModelSpec, tuple[Any, ...]]]


Key = tuple[Any, tuple[Any, ...]]


def _key_of(spec: ModelSpec, obj: Any) -> Key:
    values = instance_dict(obj)
    return spec.root.history, tuple(values[k] for k in spec.pk_keys)


def _key(obj: Any) -> Key:
    return _key_of(require_spec(type(obj)), obj)


def _items(then: Any, prop: RelationshipProperty[Any]) -> list[Any]:
    """The records related to ``then`` (an instance as of the moment) through ``prop`` then."""
    value: Any = instance_dict(then).get(prop.key)
    return [v for v in (value if prop.uselist else [value]) if v is not None]


class _Plan:
    """The restore planned level by level: each relationship level costs a fixed number of
    queries (the records then come with the moment's level load, their live rows in one locked
    read), whatever the number of records."""

    def __init__(self, session: Session, moment: Moment, root: Step) -> None:
        self.session = session
        self.moment = moment
        self.root = root
        self.steps: dict[Key, Step] = {(root.spec.root.history, root.version.primary_key): root}
        self.existing: dict[Key, _Existing | None] = {}
        #: Records linked then (many-to-many), deleted since: the moment's version of each.
        self.deleted_since: dict[Key, Version] = {}
        self.candidates: dict[Key, tuple[RelationshipProperty[Any], Any]] = {}
        self.links: list[_Links] = []

    def level(self, pairs: list[tuple[Any, Step | _Existing]], key: str) -> list[Any]:
        """Plan relationship ``key`` of the records of one level (pairs of the record then and
        its handle); return the pairs one level down."""
        groups: dict[RelationshipProperty[Any], list[tuple[Any, Step | _Existing]]] = {}
        for then, handle in pairs:
            prop = sa.inspect(then).mapper.relationships.get(key)
            if prop is not None:  # a class of the hierarchy without it has none
                groups.setdefault(prop, []).append((then, handle))
        out: list[Any] = []
        for prop, group in groups.items():
            if prop.direction is MANYTOMANY:
                out += self._links(prop, group)
            else:
                out += self._children(prop, group)
        return out

    def _restore(
        self, prop: RelationshipProperty[Any], thens: list[Any], parents: list[Any] | None
    ) -> None:
        """Plan the restore of the records of ``thens`` (instances as of the moment) reached
        through ``prop``: one locked read of their live rows — and, given the ``parents`` then,
        of the records related to them now (removal candidates)."""
        spec = versioned_spec(prop.mapper)
        assert spec is not None  # the moment read it: it is versioned
        new = {_key(o): o for o in thens if _key(o) not in self.steps}
        versions = [self.moment.version_of(o) for o in new.values()]
        for version in versions:
            check_loadable(self.session, version)
        also = None if parents is None else _related_now(prop, spec, parents)
        live = live_rows(self.session, spec, [v.primary_key for v in versions], also)
        created: dict[type[Any], list[Step]] = {}
        for version in versions:
            step = plan_step(self.session, version, live.get(version.primary_key))
            self.steps[(spec.root.history, version.primary_key)] = step
            if step.created:
                created.setdefault(version.model, []).append(step)
        for model, steps in created.items():
            fresh = next_versions(
                self.session, require_spec(model), [s.version.primary_key for s in steps]
            )
            for step in steps:
                step.fresh = fresh.get(step.version.primary_key, step.fresh)
        if parents is not None:
            then_keys = {_key(o) for o in thens}
            for pk, obj in live.items():
                key = (spec.root.history, pk)
                if key not in then_keys:
                    self.candidates.setdefault(key, (prop, obj))

    def _children(
        self, prop: RelationshipProperty[Any], group: list[tuple[Any, Step | _Existing]]
    ) -> list[Any]:
        thens = list({_key(i): i for then, _ in group for i in _items(then, prop)}.values())
        parents = None if prop.direction is MANYTOONE else [then for then, _ in group]
        self._restore(prop, thens, parents)
        return [(i, self.steps[_key(i)]) for i in thens]

    def _links(
        self, prop: RelationshipProperty[Any], group: list[tuple[Any, Step | _Existing]]
    ) -> list[Any]:
        """A many-to-many level: the links then, and the records they link — restored with the
        record if the relationship cascades deletes to them (they are its own), else shared and
        left as they are, read (one locked read) to check they are there to link."""
        thens: dict[Key, Any] = {}
        for then, handle in group:
            items = _items(then, prop)
            self.links.append(
                _Links(handle, prop, [(require_spec(type(i)), _key(i)[1]) for i in items])
            )
            thens.update((_key(i), i) for i in items)
        # The live collections, to compare and assign: loaded for the whole level at once.
        parents = [h.live for _, h in group if h.live is not None]
        load_relationships(self.session, parents, [prop.key], refresh=True)
        if prop.cascade.delete:
            self._restore(prop, list(thens.values()), None)
            return [(i, self.steps[k]) for k, i in thens.items()]
        spec = versioned_spec(prop.mapper)
        assert spec is not None
        wanted = {k: i for k, i in thens.items() if k not in self.steps and k not in self.existing}
        live = live_rows(self.session, spec, [k[1] for k in wanted])
        for key in wanted:
            found = live.get(key[1])
            self.existing[key] = None if found is None else _Existing(found)
        gone = _deleted_since(self.session, spec, [k[1] for k in wanted], self.moment)
        for key, then in wanted.items():
            if key[1] in gone:
                self.deleted_since[key] = self.moment.version_of(then)
        return [(i, h) for k, i in thens.items() if (h := self.linked(k)) is not None]

    def linked(self, key: Key) -> Step | _Existing | None:
        """What a link to the record of ``key`` points at: the record restored, or the live
        record, or ``None`` if there is none."""
        return self.steps.get(key) or self.existing.get(key)


def _related_now(
    prop: RelationshipProperty[Any], spec: ModelSpec, parents: list[Any]
) -> sa.ColumnElement[bool] | None:
    """The condition on ``prop``'s target's live rows: related now to one of ``parents`` (as of
    the moment: their join columns had the same values then and now, or they are the key)."""
    join = _join(prop)
    values = {tuple(instance_dict(p).get(k) for k in join.local) for p in parents}
    wanted = sorted((v for v in values if None not in v), key=lambda v: tuple(map(str, v)))
    if not wanted:
        return None
    # The relationship's own columns (a table's, never a polymorphic union's), for the root.
    remote: list[Any] = [column for _, column in prop.local_remote_pairs]
    if prop.mapper is not spec.root.mapper:
        remote = [getattr(prop.mapper.class_, k) for k in join.remote]
    match = (
        remote[0].in_([w[0] for w in wanted])
        if len(remote) == 1
        else sa.tuple_(*remote).in_(wanted)
    )
    if prop.mapper is spec.root.mapper:
        return sa.and_(match, *join.extra)
    # Records of a subclass: the root's key among those the subclass's query finds.
    root = spec.root
    model = prop.mapper.class_
    keys = [root.live_columns[k] for k in spec.pk_keys]
    inner = sa.select(*(getattr(model, k) for k in spec.pk_keys)).where(match, *join.extra)
    target = keys[0] if len(keys) == 1 else sa.tuple_(*keys)
    return target.in_(inner)


def _deleted_since(
    session: Session, spec: ModelSpec, keys: list[tuple[Any, ...]], moment: Moment
) -> set[tuple[Any, ...]]:
    """The keys among ``keys`` whose record was deleted after ``moment`` (one indexed query)."""
    if not keys:
        return set()
    connection = session.connection(bind_arguments={"mapper": spec.mapper})
    bound = moment.bound(connection, spec)
    if bound is None:
        return set()
    history = spec.history
    columns = [history.c[spec.history_names[k]] for k in spec.pk_keys]
    match = (
        columns[0].in_([k[0] for k in keys]) if len(columns) == 1 else sa.tuple_(*columns).in_(keys)
    )
    statement = (
        sa.select(*columns)
        .where(match, history.c[TRANSACTION_ID] > bound, history.c[OPERATION] == Operation.DELETE)
        .distinct()
    )
    return {tuple(row) for row in connection.execute(statement)}


def _removal(prop: RelationshipProperty[Any], live: Any) -> list[str] | None:
    """How a record related now but not then leaves the relationship: ``None`` to delete it, or
    the foreign key attributes to clear; refused if neither is allowed."""
    if prop.cascade.delete or prop.cascade.delete_orphan:
        return None
    name = f"{prop.parent.class_.__name__}.{prop.key}"
    spec = require_spec(type(live))
    label = _label(spec, _key_of(spec, live)[1])
    keys = []
    for _, remote in prop.local_remote_pairs:
        column_key = prop.mapper.get_property_by_column(remote).key
        if not getattr(remote, "nullable", False):
            raise RestoreError(
                f"cannot restore {name}: {label} was added to it since, and removing it would "
                f"need deleting it (the relationship does not cascade deletes) or clearing "
                f"{spec.model.__name__}.{column_key} (NOT NULL). Nothing was written: give "
                f"{name} cascade='all, delete-orphan', or delete or move {label} first"
            )
        keys.append(column_key)
    return keys


def _check_cascade(plan: _Plan, live: Any) -> None:
    """Refuse a deletion whose cascade would take a record the restore puts back with it (one
    moved under the deleted record since): it would not be there to put back."""
    state = sa.inspect(live)
    for obj, _, _, _ in state.mapper.cascade_iterator("delete", state):
        spec = versioned_spec(sa.inspect(obj).mapper)
        if spec is None:
            continue
        key = _key_of(spec, obj)
        step = plan.steps.get(key)
        if step is not None:
            own = require_spec(type(live))
            label = _label(own, _key_of(own, live)[1])
            taken = _label(step.spec, key[1])
            raise RestoreError(
                f"cannot restore: {label} was added since and is deleted by the restore, and "
                f"its delete cascade would delete {taken} with it, which the restore puts back "
                f"(it was moved under {label} since). Nothing was written: move {taken} back "
                f"first, or restore it by hand"
            )


def _relinks(link: _Links, targets: list[Any]) -> bool:
    """Whether the live collection differs from the records linked then (read now: one query)."""
    if any(t.live is None for t in targets):
        return True  # a record re-created by this restore
    now = getattr(link.parent.live, link.prop.key)
    return sorted(map(id, now)) != sorted(id(t.live) for t in targets)


def _link_created(plan: _Plan) -> None:
    """Give the ORM the order of rows of one table (a self-referential relationship): a record
    written whose foreign key points at a record of its own hierarchy that the restore re-creates
    gets that record through the relationship too. The ORM orders one table's rows only by
    relationships, and emits a table's UPDATEs before its INSERTs: from the foreign key alone, a
    record would point at one not inserted yet."""
    created = {
        (step.spec.root.history, step.version.primary_key): step.live
        for step in plan.steps.values()
        if step.created
    }
    if not created:
        return
    for step in plan.steps.values():
        if not step.changes:
            continue
        mapper = sa.inspect(step.live).mapper
        for prop in mapper.relationships:
            target = versioned_spec(prop.mapper)
            if (
                prop.direction is not MANYTOONE
                or prop.viewonly
                or target is None
                or prop.mapper.base_mapper is not mapper.base_mapper
            ):
                continue
            values = {
                prop.mapper.get_property_by_column(remote).key: step.version.state.get(
                    mapper.get_property_by_column(local).key
                )
                for local, remote in prop.local_remote_pairs
            }
            pk = tuple(values.get(k) for k in target.pk_keys)
            parent = created.get((target.root.history, pk))
            if parent is not None and parent is not step.live:
                setattr(step.live, prop.key, parent)


def _link_targets(plan: _Plan, link: _Links) -> list[Any]:
    """What the records linked then through ``link`` are now; refused if one is not there to
    link, or is not the record that was linked then."""
    name = f"{link.prop.parent.class_.__name__}.{link.prop.key}"
    targets = []
    for spec, pk in link.targets:
        key = (spec.root.history, pk)
        found = plan.linked(key)
        label = _label(spec, pk)
        shown = pk[0] if len(pk) == 1 else pk
        call = f"versioning.restore(session, {spec.model.__name__}, {shown!r}, at=...)"
        if found is None:
            raise RestoreError(
                f"cannot restore {name}: {label} was linked then and does not exist now. "
                f"Nothing was written: restore {label} first ({call}), then this record"
            )
        then = plan.deleted_since.get(key)
        if isinstance(found, _Existing) and then is not None:
            # Deleted since, and a record is there under its key: the one linked then only if
            # it was brought back as it was then.
            differs = plan_step(plan.session, then, found.live).differs
            if differs:
                raise RestoreError(
                    f"cannot restore {name}: {label} was linked then, was deleted since, and the "
                    f"{label} there now is not the record linked then ({', '.join(differs)} "
                    f"differ): linking it would link another record. Nothing was written: if it "
                    f"is the same record, restore it as it was then first ({call}), then this "
                    f"record; else leave {name} out of relationships= and link by hand"
                )
        targets.append(found)
    return targets


def restore_related(
    session: Session, version: Version, at: dt.datetime | int, paths: tuple[str, ...]
) -> Any:
    """Restore the record of ``version`` and its relationships ``paths`` as of ``at`` (the
    version's moment); the caller commits. Returns the live instance."""
    check_loadable(session, version)
    # The caller's pending changes go first, as their own change.
    session.flush()
    root = plan_step(session, version)
    moment = Moment(session, at, versions=True)
    plan = _Plan(session, moment, root)
    then_root = moment.instance(version, Group())
    moment.load_paths([then_root], paths)
    levels: dict[str, list[Any]] = {"": [(then_root, root)]}
    prefixes = sorted(
        {".".join(p.split(".")[: i + 1]) for p in paths for i in range(len(p.split(".")))},
        key=lambda p: p.count("."),
    )
    for prefix in prefixes:
        parent, _, key = prefix.rpartition(".")
        levels[prefix] = plan.level(levels[parent], key)
    # Related now and not then, unless restored under another parent of that moment.
    removals = [
        (live, _removal(prop, live))
        for key, (prop, live) in plan.candidates.items()
        if key not in plan.steps
    ]
    deleted = [live for live, clear in removals if clear is None]
    # What deleting them makes the ORM load (their cascades), loaded for all of them at once.
    load_for_delete(session, deleted)
    for live in deleted:
        _check_cascade(plan, live)
    links = [(link, _link_targets(plan, link)) for link in plan.links]
    relinked = [
        (link, targets)
        for link, targets in links
        if (targets if link.parent.live is None else _relinks(link, targets))
    ]
    changed = [step for step in plan.steps.values() if step.changes]
    if not changed and not removals and not relinked:
        return root.live  # already as then: nothing to write, nothing to record
    # Everything is checked: the writes. What leaves a relationship goes first (see
    # flush_restore), then the records put back and the links.
    parts = []
    for step in plan.steps.values():
        if step is not root and step.changes:
            label = _label(step.spec, step.version.primary_key)
            parts.append(f"{label} {'re-created' if step.created else 'restored'}")
    for live, clear in removals:
        spec = require_spec(type(live))
        label = _label(spec, _key_of(spec, live)[1])
        how = "deleted" if clear is None else f"detached ({', '.join(clear)} cleared)"
        parts.append(f"{label} {how}")
    for link, _ in relinked:
        holder = link.parent
        if isinstance(holder, Step):
            owner = _label(holder.spec, holder.version.primary_key)
        else:
            spec = require_spec(type(holder.live))
            owner = _label(spec, _key_of(spec, holder.live)[1])
        parts.append(f"{owner} {link.prop.key} relinked")
    what = f"{describe_step(session, root)}, with {', '.join(paths)} as then"
    if parts:
        what += f": {'; '.join(parts)}"
    # The column values of what the restore writes, before: to expire afterwards what held it.
    before = [(step, snapshot(step.live)) for step in changed if step.live is not None]
    before_removed = [(live, snapshot(live)) for live, _ in removals]
    unlinked: list[tuple[_Links, list[Any]]] = []

    def remove() -> None:
        for live, clear in removals:
            if clear is None:
                session.delete(live)
            else:
                for column_key in clear:
                    setattr(live, column_key, None)

    def write() -> None:
        for step in plan.steps.values():
            write_step(session, step)
        _link_created(plan)
        for link, targets in relinked:
            holder = link.parent.live
            old = list(getattr(holder, link.prop.key)) if sa.inspect(holder).persistent else []
            new = [t.live for t in targets]
            setattr(holder, link.prop.key, new)
            kept = {id(o) for o in old} & {id(o) for o in new}
            unlinked.append((link, [o for o in [*old, *new] if id(o) not in kept]))

    others = [require_spec(type(live)) for live, _ in removals]
    others += [require_spec(link.prop.parent.class_) for link, _ in relinked]
    flush_restore(
        session,
        list(plan.steps.values()),
        what,
        others,
        removals=remove if removals else None,
        writes=write,
    )
    # The session's loaded relationships that the restore made wrong: expired (and only those).
    moved: list[tuple[Any, Any]] = [(step.live, values) for step, values in before]
    moved += [(step.live, None) for step in changed if step.created]
    moved += before_removed
    expire_moved(session, moved)
    for link, targets in unlinked:
        expire_links(session, link.prop, targets)
    return root.live
