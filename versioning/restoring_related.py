"""Restoring a record with its relationships: ``restore(..., relationships=["lines", ...])``.

Each named relationship (dotted paths go deeper: ``"lines.notes"``) is brought back to the moment
of the version. The related records as they were then are read as of that moment
(:mod:`versioning.related`, one query per level); then, for each of them, its version then and
its live row. The whole plan is gathered and checked before anything is written:

* a record related then (one-to-many, one-to-one, many-to-one) is restored as
  :func:`versioning.restore` restores one record: changed since → put back, deleted since →
  re-created, re-parented since → its foreign key put back;
* a record related now through a one-to-many (or one-to-one) relationship but not then is removed
  from it: deleted if the relationship cascades deletes (``delete`` or ``delete-orphan``), else
  its foreign key is cleared if nullable, else :class:`~versioning.errors.RestoreError` (also
  when the deletion's cascade would take a record the restore puts back); these are flushed
  first, so that a record put back may take a unique value one removed held;
* a many-to-many collection is set to the records linked then; those are not changed (they are
  shared), but each must exist now or be re-created by this restore, else ``RestoreError``.

Then it is applied through the ORM and flushed once, as one restore: the capture records every
change and link, and the transaction's reason names the record, the relationships and what
happened to each related record.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import RelationshipProperty, Session
from sqlalchemy.orm.attributes import instance_dict
from sqlalchemy.orm.interfaces import MANYTOMANY, MANYTOONE

from versioning.concealed import masked_unloaded
from versioning.declaration import ModelSpec, require_spec, versioned_spec
from versioning.errors import ArgumentError, RestoreError
from versioning.instances import Group
from versioning.reading import Version, version_at
from versioning.related import Moment, check_paths
from versioning.restoring import (
    Step,
    _label,
    _live,
    check_loadable,
    describe_step,
    flush_restore,
    plan_step,
    write_step,
)

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


def _key_of(spec: ModelSpec, obj: Any) -> tuple[Any, tuple[Any, ...]]:
    values = instance_dict(obj)
    return spec.root.history, tuple(values[k] for k in spec.pk_keys)


class _Plan:
    def __init__(self, session: Session, at: dt.datetime | int, root: Step) -> None:
        self.session = session
        self.at = at
        self.root = root
        self.steps: dict[tuple[Any, tuple[Any, ...]], Step] = {
            (root.spec.root.history, root.version.primary_key): root
        }
        self.existing: dict[tuple[Any, tuple[Any, ...]], _Existing | None] = {}
        self.candidates: dict[tuple[Any, tuple[Any, ...]], tuple[RelationshipProperty[Any], Any]]
        self.candidates = {}
        self.links: list[_Links] = []

    def restored(self, then: Any) -> Step:
        """The step restoring the record of ``then`` (an instance as of the moment)."""
        spec = require_spec(type(then))
        key = _key_of(spec, then)
        step = self.steps.get(key)
        if step is None:
            version: Version | None = version_at(self.session, type(then), key[1], self.at)
            assert version is not None  # it existed then: it was read as of the moment
            check_loadable(self.session, version)
            step = self.steps[key] = plan_step(self.session, version)
        return step

    def linked(self, then: Any) -> Step | _Existing | None:
        """The live record of ``then`` (linked through a many-to-many relationship)."""
        spec = require_spec(type(then))
        key = _key_of(spec, then)
        if key in self.steps:
            return self.steps[key]
        if key not in self.existing:
            live = _live(self.session, spec, key[1])
            self.existing[key] = None if live is None else _Existing(live)
        return self.existing[key]

    def now_related(self, prop: RelationshipProperty[Any], then_parent: Any) -> list[Any]:
        """The live records related now to the record of ``then_parent`` through ``prop``."""
        target = prop.mapper
        spec = versioned_spec(target)
        masks = spec.masks if spec is not None else {}
        statement = (
            sa.select(target.class_)
            .options(*masked_unloaded(masks, target.class_))
            .where(sa.orm.with_parent(then_parent, prop.class_attribute))
            .with_for_update(of=target.local_table)
            .execution_options(populate_existing=True)
        )
        return list(self.session.execute(statement).scalars())

    def follow(self, then_parent: Any, handle: Step | _Existing, key: str) -> list[Any]:
        """Plan relationship ``key`` of one record; return (then, handle) pairs one level down."""
        mapper = sa.inspect(then_parent).mapper
        prop = mapper.relationships.get(key)
        if prop is None:
            return []  # a class of the hierarchy without it
        value: Any = instance_dict(then_parent).get(key)
        items = [v for v in (value if prop.uselist else [value]) if v is not None]
        if prop.direction is MANYTOMANY:
            self.links.append(
                _Links(
                    handle,
                    prop,
                    [(require_spec(type(i)), _key_of(require_spec(type(i)), i)[1]) for i in items],
                )
            )
            return [(i, h) for i in items if (h := self.linked(i)) is not None]
        pairs = [(i, self.restored(i)) for i in items]
        if prop.direction is not MANYTOONE:
            then_keys = {_key_of(require_spec(type(i)), i) for i in items}
            for live in self.now_related(prop, then_parent):
                found = _key_of(require_spec(type(live)), live)
                if found not in then_keys:
                    self.candidates.setdefault(found, (prop, live))
        return pairs


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


def restore_related(
    session: Session, version: Version, at: dt.datetime | int, paths: tuple[str, ...]
) -> Any:
    """Restore the record of ``version`` and its relationships ``paths`` as of ``at`` (the
    version's moment); the caller commits. Returns the live instance."""
    check_loadable(session, version)
    # The caller's pending changes go first, as their own change.
    session.flush()
    root = plan_step(session, version)
    plan = _Plan(session, at, root)
    moment = Moment(session, at)
    then_root = moment.instance(version, Group())
    moment.load_paths([then_root], paths)
    levels: dict[str, list[Any]] = {"": [(then_root, root)]}
    prefixes = sorted(
        {".".join(p.split(".")[: i + 1]) for p in paths for i in range(len(p.split(".")))},
        key=lambda p: p.count("."),
    )
    for prefix in prefixes:
        parent, _, key = prefix.rpartition(".")
        pairs: list[Any] = []
        for then, handle in levels[parent]:
            pairs += plan.follow(then, handle, key)
        levels[prefix] = pairs
    # Related now and not then, unless restored under another parent of that moment.
    removals = [
        (live, _removal(prop, live))
        for key, (prop, live) in plan.candidates.items()
        if key not in plan.steps
    ]
    for live, clear in removals:
        if clear is None:
            _check_cascade(plan, live)
    links: list[tuple[_Links, list[Any]]] = []
    for link in plan.links:
        name = f"{link.prop.parent.class_.__name__}.{link.prop.key}"
        targets = []
        for spec, pk in link.targets:
            found = plan.steps.get((spec.root.history, pk)) or plan.existing.get(
                (spec.root.history, pk)
            )
            if found is None:
                label = _label(spec, pk)
                raise RestoreError(
                    f"cannot restore {name}: {label} was linked then and does not exist now. "
                    f"Nothing was written: restore {label} first (versioning.restore(session, "
                    f"{spec.model.__name__}, {pk[0] if len(pk) == 1 else pk!r}, at=...)), "
                    f"then this record"
                )
            targets.append(found)
        links.append((link, targets))
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
            setattr(link.parent.live, link.prop.key, [t.live for t in targets])

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
    # Relationship collections the session held may predate the restore: read them again.
    for step in plan.steps.values():
        relations = [r.key for r in sa.inspect(step.live).mapper.relationships]
        if relations:
            session.expire(step.live, relations)
    return root.live
