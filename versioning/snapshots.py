"""Records as they were at a moment, many at once: the query behind ``all_as_of`` and the
relationships of records read as of a moment (:mod:`versioning.related`).

The latest version of each record at or before the moment is its last version in its last
transaction by then: ``max(transaction id)`` per key over the history table's
``(key, transaction id)`` index, then ``max(version id)`` in that transaction; a record whose
latest version is a delete did not exist then.
Conditions on the state then (criteria, a relationship's join) apply to that latest version
only, never to older ones: a child re-parented since is found under its parent of that moment.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import visitors

from versioning import horizon
from versioning.declaration import ModelSpec
from versioning.errors import ArgumentError
from versioning.operation import Operation
from versioning.reading import _AsStored, _bound
from versioning.schema import META_COLUMNS, OPERATION, TRANSACTION_ID, VERSION_ID

__all__ = ["batches", "bound_for", "latest", "on_history"]


def bound_for(connection: sa.Connection, spec: ModelSpec, at: dt.datetime | int) -> Any:
    """The highest transaction id visible at ``at``: ``at`` itself for an id; for a ``datetime``,
    a scalar subquery, or on MariaDB (whose optimizer probes the index only with a constant) its
    value, ``None`` if no transaction was issued by then."""
    bound = horizon.resolve_bound(
        connection, spec.transactions, at, _bound(spec, at), f"reading {spec.model.__name__}"
    )
    if isinstance(bound, sa.ScalarSelect) and connection.dialect.name in ("mysql", "mariadb"):
        moment: sa.Select[Any] = bound.element  # type: ignore[assignment]
        return connection.execute(moment).scalar()
    return bound


def _key_columns(spec: ModelSpec, table: Any) -> list[Any]:
    return [table.c[spec.history_names[key]] for key in spec.pk_keys]


def latest(
    spec: ModelSpec,
    bound: Any,
    tolerant: bool,
    candidates: Sequence[sa.ColumnElement[bool]] = (),
    translate: Any = None,
    narrow: Sequence[sa.ColumnElement[bool]] = (),
    whole: bool = False,
    deleted: bool = False,
) -> tuple[sa.Select[Any], sa.Table]:
    """``SELECT`` of the latest version at ``bound`` of each record of ``spec`` that existed then,
    and the history table it reads the versions from (conditions and ordering go on its columns).

    ``bound`` ``None`` reads the latest version of all; ``whole`` selects the version's
    bookkeeping columns too (to make a :class:`~versioning.reading.Version` of it);
    ``deleted`` keeps a record whose latest version is its deletion.

    ``narrow`` (conditions on the history table that hold for every version of a record: on its
    key) narrow the rows read. ``candidates`` (conditions on the history table) narrow the
    records considered: a record is a candidate if any of its versions at or before ``bound``
    matches them; its latest version is then taken whatever it holds. ``translate(history)``
    returns conditions on the latest version.
    """
    history = spec.history
    keys = _key_columns(spec, history)
    where = [*_filters_of_class(spec), *narrow]
    if bound is not None:
        where.append(history.c[TRANSACTION_ID] <= bound)
    if candidates:
        alias = history.alias("versioning_candidate")
        adapt = sa.sql.util.ClauseAdapter(alias)
        candidate_keys = (
            sa.select(*_key_columns(spec, alias))
            .where(
                *([] if bound is None else [alias.c[TRANSACTION_ID] <= bound]),
                *(adapt.traverse(c) for c in candidates),
            )
            .distinct()
        )
        target = keys[0] if len(keys) == 1 else sa.tuple_(*keys)
        where.append(target.in_(candidate_keys))
    # The last transaction of each record by then (the (key, transaction) index), then the last
    # version in it (a record may change more than once in a transaction). Faster on every
    # backend than a window function over the same rows, and than a correlated max().
    last_transaction = (
        sa.select(*keys, sa.func.max(history.c[TRANSACTION_ID]).label("t"))
        .where(*where)
        .group_by(*keys)
        .subquery("versioning_last_transaction")
    )
    version = history.alias("versioning_last")
    version_keys = _key_columns(spec, version)
    last_version = (
        sa.select(sa.func.max(version.c[VERSION_ID]).label("v"))
        .join(
            last_transaction,
            sa.and_(
                *(v == last_transaction.c[k.name] for v, k in zip(version_keys, keys, strict=True)),
                version.c[TRANSACTION_ID] == last_transaction.c.t,
            ),
        )
        .group_by(*version_keys)
        .subquery("versioning_last_version")
    )
    conditions = [] if deleted else [history.c[OPERATION] != Operation.DELETE]
    if translate is not None:
        conditions += translate(history)
    statement = (
        sa.select(*_snapshot(history, tolerant, whole))
        .join(last_version, history.c[VERSION_ID] == last_version.c.v)
        .where(*conditions)
    )
    return statement, history


def _snapshot(history: sa.Table, tolerant: bool, whole: bool = False) -> list[Any]:
    """The key and snapshot columns of ``history`` (an instance needs nothing else; ``whole``:
    the bookkeeping columns too); ``tolerant`` reads them as :func:`versioning.reading._select`
    does."""
    return [
        column
        if not tolerant or column.name in META_COLUMNS
        else sa.type_coerce(column, _AsStored(column.type)).label(column.name)
        for column in history.c
        if whole or column.name not in META_COLUMNS  # whole or as instances.snapshot_names
    ]


def _filters_of_class(spec: ModelSpec) -> list[sa.ColumnElement[bool]]:
    """The condition that a history row is of ``spec``'s class (or a subclass) in a hierarchy."""
    if spec.discriminator is None or spec is spec.root:
        return []
    identities = [m.polymorphic_identity for m in spec.mapper.self_and_descendants]
    return [spec.history.c[spec.history_names[spec.discriminator]].in_(identities)]


def on_history(spec: ModelSpec, clause: Any, columns: Any, what: str) -> Any:
    """``clause``, written against the live columns of ``spec``'s model, rewritten onto
    ``columns`` (a history table or a subquery of it, whose columns bear the history names).

    Anything else — another table's column, a relationship, a subquery — is refused, as are
    excluded columns (not recorded) and masked ones (recorded as the mask's output, so a
    comparison would be against that, not the value)."""
    by_column: dict[tuple[Any, str], str] = {}
    for prop in spec.mapper.column_attrs:
        for column in prop.columns:
            if isinstance(column, sa.Column):
                by_column[(column.table, column.name)] = prop.key
    model = spec.model.__name__
    attrs = spec.attr_set

    def replace(element: Any, **kw: Any) -> Any:
        if isinstance(element, sa.sql.expression.ColumnClause):
            table = getattr(element, "table", None)
            key = by_column.get((table, element.name))
            if key is None:
                if table is None and element.is_literal:
                    return None  # literal SQL text, as written
                raise ArgumentError(
                    f"{what}: {element} is not a column of {model}; criteria are evaluated on "
                    f"{model}'s recorded state and may use only its own columns (for related "
                    f"records, read them through the relationships of the results)"
                )
            if key not in attrs:
                raise ArgumentError(
                    f"{what}: {model}.{key} is excluded from history, so its value then is not "
                    f"known; remove it from the criteria"
                )
            if key in spec.masks:
                raise ArgumentError(
                    f"{what}: {model}.{key} is masked in history (only the mask's output is "
                    f"recorded), so a condition on its value then cannot be evaluated; remove it "
                    f"from the criteria"
                )
            if key not in spec.history_names:
                raise ArgumentError(
                    f"{what}: {model}.{key} is not recorded in {model}'s history; remove it "
                    f"from the criteria"
                )
            return columns.c[spec.history_names[key]]
        if isinstance(element, sa.sql.expression.FromClause | sa.sql.expression.SelectBase):
            raise ArgumentError(
                f"{what}: criteria may not contain a subquery or another table ({element}); "
                f"they are evaluated on {model}'s recorded state and may use only its own columns"
            )
        return None

    translated: Any = visitors.replacement_traverse(clause, {}, replace)
    return translated


def batches(connection: sa.Connection, statement: sa.Select[Any], size: int) -> Iterator[Any]:
    """Run ``statement`` now; its rows (plain rows, by position) in lists of at most ``size``,
    fetched as they are asked for (on MariaDB, buffered by the driver)."""
    if connection.dialect.name in ("mysql", "mariadb"):
        # The driver's unbuffered cursor would forbid any other query on the connection until
        # the last row is read (relationships read while iterating): rows are buffered there.
        result = connection.execute(statement)
    else:
        result = connection.execute(statement.execution_options(yield_per=size))
    return result.partitions(size)
