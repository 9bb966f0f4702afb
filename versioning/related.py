"""The relationships of records read as of a moment, as they were at that moment.

Every instance that :func:`versioning.as_of`, ``Version.to_instance(session)`` or
:func:`versioning.all_as_of` returns belongs to a :class:`Moment`: the session to read through,
the moment, and the instances reconstructed so far (the same record reached twice is the same
object). Each relationship attribute of such an instance gets a loader, one per relationship
shared by the instances of its *group* (:class:`versioning.instances.Group`: the instances one
call, one batch of ``all_as_of`` or one relationship load produced): reading it loads that
relationship for every instance of the group in one query on the target's history table — like
``selectinload``, one query per relationship level; the statement is built once per relationship
and run with the values looked for as parameters — and the related records come back as new
transient instances of the same moment, whose own relationships load the same way. Live rows
are never read.

A relationship is translated onto the history tables through its ``local_remote_pairs``: the
related records are those whose state at the moment has the remote columns equal to the local
columns' values of the instance's state then. Other conditions of a custom ``primaryjoin`` are
evaluated on the related records' state then, if they use only their columns; anything else is
refused with :class:`~versioning.errors.RelationshipHistoryError`, as is a relationship to a
model that is not versioned (it has no history: today's rows would be presented as then's). A
many-to-many relationship reads its links then from the association table's link history, then
the linked records (:func:`many_to_many`: two queries per level).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper, RelationshipProperty, Session
from sqlalchemy.orm.attributes import instance_dict, set_committed_value
from sqlalchemy.orm.base import PASSIVE_NO_RESULT, PassiveFlag

from versioning import _compat, arguments
from versioning.declaration import ModelSpec, require_spec, versioned_spec
from versioning.errors import ArgumentError, RelationshipHistoryError
from versioning.instances import (
    Group,
    Identity,
    Key,
    Plan,
    plan_for,
    plan_of,
    plan_of_rows,
    snapshot_names,
)
from versioning.link_tables import link_spec
from versioning.links import links_as_of
from versioning.operation import Operation
from versioning.reading import (
    AT,
    Version,
    _autoflush,
    _fetch,
    _row_version,
    _version_row,
    bound_parameter,
    bound_parameters,
)
from versioning.recording import write_pending
from versioning.schema import OPERATION
from versioning.snapshots import bound_for, latest, on_history

__all__ = ["Moment", "check_paths", "many_to_many", "read_as_of"]


def many_to_many(
    prop: RelationshipProperty[Any], sources: Sequence[Any], moment: Moment
) -> dict[int, list[Any]]:
    """Load a many-to-many relationship of ``sources`` as of the moment: the links then, from
    the association table's link history (:func:`versioning.links.links_as_of`, one query), then
    the linked records as they were then (one query). By ``id()`` of each source."""
    name = _name(prop)
    if link_spec(prop.secondary) is None:
        raise RelationshipHistoryError(
            f"{name} goes through {getattr(prop.secondary, 'name', prop.secondary)!s}, which has "
            f"no link history (only an association table between two versioned models has one), "
            f"so its links then are not known; version both models"
        )
    target = versioned_spec(prop.mapper)
    source = require_spec(prop.parent.class_)
    assert target is not None  # a table with link history joins two versioned models
    session = moment.session
    if session is None:
        raise RelationshipHistoryError(f"{name} is not loaded and cannot be: {moment.without}")
    local = [
        _recorded(prop, prop.parent, source, column, "the instance's")
        for column, _ in prop.synchronize_pairs
    ]
    remote = [
        _recorded(prop, prop.mapper, target, column, "the related records'")
        for column, _ in prop.secondary_synchronize_pairs or ()
    ]
    keys = {id(o): tuple(instance_dict(o).get(k) for k in local) for o in sources}
    wanted = [k for k in dict.fromkeys(keys.values()) if None not in k]
    links = links_as_of(session, prop, wanted, moment.at) if wanted else {}
    children = sorted({child for linked in links.values() for child in linked}, key=str)
    targets = _Targets(prop, target, remote)
    found = moment.query(targets, children) if children else {}
    rank = {key: i for i, key in enumerate(found)}
    out: dict[int, list[Any]] = {}
    for obj in sources:
        linked = [c for c in links.get(keys[id(obj)], []) if c in found]
        out[id(obj)] = [found[c][0] for c in sorted(linked, key=rank.__getitem__)]
    return out


class _Targets:
    """The related side of a many-to-many relationship, queried by the linked records' keys."""

    def __init__(self, prop: RelationshipProperty[Any], target: ModelSpec, remote: list[str]):
        self.prop = prop
        self.target = target
        self.remote = remote
        self.extra: list[Any] = []
        self.order_by = list(prop.order_by or ())
        for column in self.order_by:
            on_history(target, column, target.history, f"{_name(prop)}'s order_by")
        self.by_key = set(remote) == set(target.pk_keys) and len(remote) == len(target.pk_keys)


def _recorded(
    prop: RelationshipProperty[Any], mapper: Mapper[Any], spec: ModelSpec, column: Any, side: str
) -> str:
    """The attribute key of ``column`` (a relationship's join column) on ``mapper``; refused if
    it is not recorded as it was (excluded, masked) or not mapped."""
    name = _name(prop)
    try:
        key: str = mapper.get_property_by_column(column).key
    except Exception:
        raise RelationshipHistoryError(
            f"{name} joins on {column}, which is not a mapped column of "
            f"{mapper.class_.__name__}; it cannot be evaluated on history"
        ) from None
    if key not in spec.attr_set or key in spec.masks:
        why = "excluded from" if key not in spec.attr_set else "masked in"
        raise RelationshipHistoryError(
            f"{name} joins on {spec.model.__name__}.{key}, which is {why} history, so "
            f"{side} values then are not known"
        )
    return key


def _as_of_refusal(prop: RelationshipProperty[Any]) -> Callable[[Any], BaseException | None]:
    """For a dynamic or write-only relationship: the error to raise when an instance made as of a
    moment (one with this module's loader for it) reads it; ``None`` for other instances."""

    def refusal(state: Any) -> BaseException | None:
        loader = vars(state).get("callables", {}).get(prop.key)
        if not getattr(loader, "versioning_as_of", False):
            return None
        return RelationshipHistoryError(
            f"{_name(prop)} is a {prop.lazy} relationship, which queries today's rows; on an "
            f"instance as of a moment it cannot give them as they were then: declare a plain "
            f"relationship (viewonly=True) beside it to read it as of a moment"
        )

    return refusal


def _name(prop: RelationshipProperty[Any]) -> str:
    return f"{prop.parent.class_.__name__}.{prop.key}"


def _same(a: Any, b: Any) -> bool:
    return a is b or (
        isinstance(a, sa.Column | sa.sql.expression.ColumnClause)
        and isinstance(b, sa.Column | sa.sql.expression.ColumnClause)
        and getattr(a, "table", None) is getattr(b, "table", None)
        and a.name == b.name
    )


class _Join:
    """A relationship translated onto the history tables."""

    def __init__(self, prop: RelationshipProperty[Any]) -> None:
        self.prop = prop
        name = _name(prop)
        if prop.lazy in ("dynamic", "write_only"):
            raise RelationshipHistoryError(
                f"{name} is a {prop.lazy} relationship, which queries the database each time; it "
                f"cannot be read as of a moment: declare a plain relationship (viewonly=True) to "
                f"read it then"
            )
        target = versioned_spec(prop.mapper)
        if target is None:
            raise RelationshipHistoryError(
                f"{name} points to {prop.mapper.class_.__name__}, which is not versioned: it has "
                f"no history, so what it held then is not known (today's rows would be wrong); "
                f"version {prop.mapper.class_.__name__} (mix in versioning.Versioned), or query "
                f"today's rows yourself"
            )
        self.target: ModelSpec = target
        source = require_spec(prop.parent.class_)
        self.local: list[str] = []
        self.remote: list[str] = []
        for local, remote in prop.local_remote_pairs:
            local_key = self._key(prop.parent, source, local, "the instance's")
            remote_key = self._key(prop.mapper, target, remote, "the related records'")
            self.local.append(local_key)
            self.remote.append(remote_key)
        self.extra: list[sa.ColumnElement[bool]] = []
        clauses = (
            list(prop.primaryjoin.clauses)
            if isinstance(prop.primaryjoin, sa.sql.expression.BooleanClauseList)
            and prop.primaryjoin.operator is sa.sql.operators.and_
            else [prop.primaryjoin]
        )
        for clause in clauses:
            if self._is_pair(clause):
                continue
            columns = [
                c
                for c in sa.sql.visitors.iterate(clause)
                if isinstance(c, sa.sql.expression.ColumnClause)
                and getattr(c, "table", None) is not None
            ]
            if not all(_compat.is_remote(c) for c in columns):
                raise RelationshipHistoryError(
                    f"{name}: its primaryjoin condition {clause} uses a column of the instance's "
                    f"side other than in an equality with the related records' columns, which "
                    f"cannot be evaluated on history; declare the condition on the related "
                    f"model's columns, or read the related records' history directly"
                )
            on_history(target, clause, target.history, f"{name}'s primaryjoin")  # refuse early
            self.extra.append(clause)
        self.order_by = list(prop.order_by or ())
        for column in self.order_by:
            on_history(target, column, target.history, f"{name}'s order_by")
        pk = set(target.pk_keys)
        self.by_key = set(self.remote) == pk and len(self.remote) == len(pk)

    def _key(self, mapper: Mapper[Any], spec: ModelSpec, column: Any, side: str) -> str:
        return _recorded(self.prop, mapper, spec, column, side)

    def _is_pair(self, clause: Any) -> bool:
        if not isinstance(clause, sa.sql.expression.BinaryExpression):
            return False
        if clause.operator is not sa.sql.operators.eq:
            return False
        for local, remote in self.prop.local_remote_pairs:
            if (_same(clause.left, local) and _same(clause.right, remote)) or (
                _same(clause.left, remote) and _same(clause.right, local)
            ):
                return True
        return False


#: Where a relationship keeps its :class:`_Join` (built once; it lives and goes with the
#: relationship, which it refers to).
_JOIN_KEY = "versioning.related.join"


def _join(prop: RelationshipProperty[Any]) -> _Join:
    join: _Join | None = prop.info.get(_JOIN_KEY)
    if join is None:
        join = prop.info[_JOIN_KEY] = _Join(prop)
    return join


#: The parameter of a relationship's statement holding the values looked for.
_KEYS = "versioning_keys"


def _statement(
    join: _Join | _Targets,
    names: tuple[str, ...],
    tolerant: bool,
    by_datetime: bool,
    whole: bool = False,
) -> tuple[sa.Select[Any], list[str]]:
    """The statement loading ``join``'s related records as of a moment, whose rows have the
    columns ``names``: built once (per relationship, and per way of reading values and of giving
    the moment), run with the values looked for (parameter :data:`_KEYS`) and the moment
    (:func:`versioning.reading.bound_parameters`). Kept in the target's ``read_cache``."""
    spec = join.target
    cache_key = (_statement, join.prop, type(join), names, tolerant, by_datetime, whole)
    found: tuple[sa.Select[Any], list[str]] | None = spec.read_cache.get(cache_key)
    if found is not None:
        return found
    history = spec.history
    # One parameter per place the values are used (SQLAlchemy 2.0.30 cannot expand one tuple
    # parameter used twice); the caller gives each the values (their names: the second item).
    key_names: list[str] = []

    def keys() -> Any:
        key_names.append(f"{_KEYS}_{len(key_names)}")
        return sa.bindparam(key_names[-1], expanding=True)

    columns = [history.c[spec.history_names[k]] for k in join.remote]
    target: Any = columns[0] if len(columns) == 1 else sa.tuple_(*columns)
    match = target.in_(keys())
    name = _name(join.prop)

    def conditions(inner: Any) -> list[Any]:
        on_inner = [inner.c[spec.history_names[k]] for k in join.remote]
        inner_target: Any = on_inner[0] if len(on_inner) == 1 else sa.tuple_(*on_inner)
        extra = [on_history(spec, c, inner, f"{name}'s primaryjoin") for c in join.extra]
        return [inner_target.in_(keys()), *extra]

    statement, inner = latest(
        spec,
        bound_parameter(spec, by_datetime),
        tolerant,
        narrow=[match] if join.by_key else (),
        candidates=() if join.by_key else [match],
        translate=conditions,
        whole=whole,
    )
    order = [on_history(spec, c, inner, f"{name}'s order_by") for c in join.order_by]
    order += [inner.c[spec.history_names[k]] for k in spec.pk_keys]
    found = spec.read_cache[cache_key] = (statement.order_by(*order), key_names)
    return found


class Moment:
    """The instances read as of one moment through one session: their identity and loading."""

    def __init__(
        self,
        session: Session | None,
        at: dt.datetime | int,
        without: str = "",
        versions: bool = False,
    ) -> None:
        self.session = session
        self.at = at
        #: With ``versions`` (a restore's moment): the :class:`Version` each instance was made of,
        #: read with it (by history table and key), see :meth:`version_of`.
        self.versions: dict[tuple[sa.Table, tuple[Any, ...]], Version] | None = (
            {} if versions else None
        )
        #: Why there is no session to load through (when ``session`` is ``None``).
        self.without = without
        self.identity = Identity()
        self._bounds: dict[sa.Table, Any] = {}

    def detach(self, why: str) -> None:
        """No more loading: reading an unloaded relationship raises, saying ``why``."""
        self.session = None
        self.without = why

    def instance(self, version: Version, group: Group) -> Any:
        """The instance of ``version``'s record in this moment: the one already made, or a new
        one (added to ``group``)."""
        spec = require_spec(version.model)
        if self.versions is not None:
            self.versions.setdefault((spec.root.history, version.primary_key), version)
        plan = plan_of(spec)
        state = version.state
        key = (plan.root, tuple(state[k] for k in spec.pk_keys))
        found = self.identity.get(key)
        if found is not None:
            return found
        return self._add(key, plan, tuple(state[k] for k in plan.keys), group)

    def version_of(self, obj: Any) -> Version:
        """The version ``obj`` (an instance of this moment) was made of; the moment must keep
        them (``versions=True``)."""
        assert self.versions is not None
        spec = require_spec(type(obj))
        values = instance_dict(obj)
        return self.versions[(spec.root.history, tuple(values[k] for k in spec.pk_keys))]

    def maker(
        self, spec: ModelSpec, names: tuple[str, ...], distinct: bool = False
    ) -> Callable[[Any, Group], Any]:
        """For rows of ``spec``'s history whose columns are ``names`` (those
        :func:`versioning.snapshots.latest` selects): a function giving the instance of a row's
        record in this moment (the one already made, or a new one added to the group given),
        without decoding anything.

        ``distinct``: the rows are of distinct records, the first of this moment. If no class of
        ``spec``'s hierarchy has a relationship, nothing else can reach a record of this moment,
        so the instances skip the identity map (nothing would look them up).
        """
        plan_of = plan_of_rows(spec, names)
        identity = self.identity
        if distinct and not any(m.relationships for m in spec.mapper.self_and_descendants):
            if spec.discriminator is None:
                return plan_for(spec, names).make_unlinked

            def isolated(row: Any, group: Group) -> Any:
                return plan_of(row).make_unlinked(row)

            return isolated

        def make(row: Any, group: Group) -> Any:
            plan = plan_of(row)
            key = (plan.root, plan.key_of(row))
            found = identity.get(key)
            if found is not None:
                return found
            return self._add(key, plan, plan.values(row), group)

        return make

    def _add(self, key: Key, plan: Plan, values: Any, group: Group) -> Any:
        obj = plan.make(values, self._loaders(group, plan) if plan.relationships else None)
        self.identity.add(key, obj)
        group.append(obj)
        return obj

    def _loaders(self, group: Group, plan: Plan) -> dict[str, Any]:
        """The relationship loaders the instances of ``plan``'s class in ``group`` share."""
        loaders = group.loaders.get(plan.mapper)
        if loaders is None:
            loaders = group.loaders[plan.mapper] = {}
            for prop in plan.mapper.relationships:
                if prop.lazy in ("dynamic", "write_only"):
                    # They build a query of today's rows from the instance, never asking a loader.
                    manager = plan.mapper.class_manager
                    _compat.refuse_collection(manager, prop.key, _as_of_refusal(prop))
                loaders[prop.key] = self._loader(group, prop.key)
        return loaders

    def _loader(self, group: Group, key: str) -> Any:
        def load(state: Any, passive: PassiveFlag) -> Any:
            if not passive & PassiveFlag.SQL_OK:
                return PASSIVE_NO_RESULT
            requester = state.obj()
            pending = [o for o in group if key not in instance_dict(o) or o is requester]
            return self.load(pending, key, requester)

        load.versioning_as_of = True  # type: ignore[attr-defined]
        return load

    def load(self, objs: Sequence[Any], key: str, requester: Any = None) -> Any:
        """Load relationship ``key`` of ``objs`` (those that have it) in one query; return the
        value for ``requester`` (which is left for SQLAlchemy to set)."""
        mapper: Mapper[Any] = sa.inspect(requester if requester is not None else objs[0]).mapper
        prop = mapper.relationships[key]
        sources = [o for o in objs if sa.inspect(o).mapper.relationships.get(key) is prop]
        if prop.secondary is not None:
            related_of = many_to_many(prop, sources, self)
        else:
            related_of = self._related(prop, sources)
        result = None
        for obj in sources:
            related = related_of[id(obj)]
            value: Any = list(related) if prop.uselist else (related[0] if related else None)
            if obj is requester:
                result = value
            else:
                set_committed_value(obj, key, value)
        return result

    def _related(
        self, prop: RelationshipProperty[Any], sources: Sequence[Any]
    ) -> dict[int, list[Any]]:
        join = _join(prop)
        if self.session is None:
            raise RelationshipHistoryError(
                f"{_name(prop)} is not loaded and cannot be: {self.without}"
            )
        values = {id(o): tuple(instance_dict(o).get(k) for k in join.local) for o in sources}
        wanted = sorted(
            {v for v in values.values() if None not in v}, key=lambda v: tuple(map(str, v))
        )
        found = self._known(join, wanted)
        if found is None:
            found = self.query(join, wanted) if wanted else {}
        return {
            id(o): found.get(values[id(o)], []) if None not in values[id(o)] else []
            for o in sources
        }

    def _known(
        self, join: _Join, wanted: list[tuple[Any, ...]]
    ) -> dict[tuple[Any, ...], list[Any]] | None:
        """For a many-to-one whose every target is already an instance of this moment (a child's
        parent, reached from the parent): those, without a query; else ``None``."""
        if not join.by_key or join.extra or not wanted:
            return None
        spec = join.target
        order = [join.remote.index(k) for k in spec.pk_keys]
        found = {}
        for remote in wanted:
            obj = self.identity.get((spec.root.history, tuple(remote[i] for i in order)))
            if obj is None or not isinstance(obj, spec.model):
                return None
            found[remote] = [obj]
        return found

    def query(
        self, join: _Join | _Targets, wanted: list[tuple[Any, ...]]
    ) -> dict[tuple[Any, ...], list[Any]]:
        """The records of ``join``'s target as of this moment whose ``join.remote`` values are
        one of ``wanted``, by those values, in one query."""
        spec = join.target
        session = self.session
        assert session is not None
        _autoflush(session)
        write_pending(session)
        connection = session.connection(bind_arguments={"mapper": spec.mapper})
        bound = self.bound(connection, spec)
        if bound is None:
            return {}
        # A moment that keeps versions reads the bookkeeping columns too (to make them).
        whole = self.versions is not None
        names = tuple(c.name for c in spec.history.c) if whole else snapshot_names(spec.history)
        parameters = bound_parameters(bound, self.at)
        looked_for = [w[0] for w in wanted] if len(join.remote) == 1 else wanted
        by_datetime = AT in parameters

        def build(tolerant: bool) -> sa.Select[Any]:
            statement, key_names = _statement(join, names, tolerant, by_datetime, whole)
            parameters.update((name, looked_for) for name in key_names)
            return statement

        make = self.maker(spec, names)
        group = Group()
        found: dict[tuple[Any, ...], list[Any]] = {}
        for row in _fetch(connection, build, mapped=False, parameters=parameters):
            obj = make(row, group)
            if self.versions is not None:
                state = dict(zip(names, row, strict=True))
                version = _row_version(spec, state, connection.dialect, None)
                self.versions.setdefault((spec.root.history, version.primary_key), version)
            values = instance_dict(obj)
            found.setdefault(tuple(values[k] for k in join.remote), []).append(obj)
        return found

    def bound(self, connection: sa.Connection, spec: ModelSpec) -> Any:
        """The highest transaction id visible at the moment (see
        :func:`versioning.snapshots.bound_for`), read once per transaction table."""
        transactions = spec.transactions
        if transactions not in self._bounds:
            self._bounds[transactions] = bound_for(connection, spec, self.at)
        return self._bounds[transactions]

    def load_paths(self, objs: Sequence[Any], paths: Iterable[str]) -> None:
        """Load each dotted relationship path from ``objs`` now (``load=[...]``)."""
        for path in paths:
            level = [o for o in objs if o is not None]
            for key in path.split("."):
                holders = [o for o in level if key in sa.inspect(o).mapper.relationships]
                pending = [o for o in holders if key not in sa.inspect(o).dict]
                by_prop: dict[Any, list[Any]] = {}
                for o in pending:
                    by_prop.setdefault(sa.inspect(o).mapper.relationships[key], []).append(o)
                for group in by_prop.values():
                    self.load(group, key)
                following: dict[int, Any] = {}
                for o in holders:
                    value = sa.inspect(o).dict.get(key)
                    for item in value if isinstance(value, Iterable) else [value]:
                        if item is not None:
                            following[id(item)] = item
                level = list(following.values())


def check_paths(model: type[Any], load: Any, name: str, argument: str = "load") -> tuple[str, ...]:
    """``load`` checked: dotted relationship paths from ``model``; an unknown name is refused
    before anything is read. ``argument`` is the name the caller gave the paths."""
    if load is None:
        return ()
    if isinstance(load, str) or not isinstance(load, Iterable):
        raise ArgumentError(
            f"versioning.{name}({argument}=...) takes a list of relationship paths such as "
            f"['lines', 'lines.notes'], got {load!r}"
        )
    paths = tuple(load)
    for path in paths:
        if not isinstance(path, str) or not path:
            raise ArgumentError(
                f"versioning.{name}({argument}=...): each path is a str such as 'lines.notes', got "
                f"{path!r}"
            )
        mappers: list[Mapper[Any]] = [sa.inspect(model)]
        for key in path.split("."):
            props = [
                m.relationships[key]
                for base in mappers
                for m in base.self_and_descendants
                if key in m.relationships
            ]
            if not props:
                names = sorted({r.key for base in mappers for r in base.relationships})
                raise ArgumentError(
                    f"versioning.{name}({argument}=[{path!r}]): "
                    f"{'/'.join(sorted({m.class_.__name__ for m in mappers}))} has no "
                    f"relationship {key!r}; its relationships are {names}"
                )
            mappers = [p.mapper for p in props]
    return paths


def read_as_of(
    session: Session, model: Any, pk: Any, at: dt.datetime | int, load: Any
) -> tuple[Any, Moment | None]:
    """:func:`versioning.as_of`, and the moment its instance belongs to."""
    session = arguments.session(session, "as_of")
    arguments.model(model, "as_of")
    at = arguments.moment(at, "as_of")
    paths = check_paths(model, load, "as_of")
    spec, row, _ = _version_row(session, model, pk, at, "as_of", False)
    names = tuple(column.name for column in spec.history.c)
    if row is None or row[names.index(OPERATION)] == Operation.DELETE:
        return None, None
    moment = Moment(session, at)
    obj = moment.maker(spec, names)(row, Group())
    moment.load_paths([obj], paths)
    return obj, moment
