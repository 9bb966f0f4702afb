"""Reading link history: which records a many-to-many relationship linked at a moment.

:func:`links_as_of` is the primitive relationship loading builds on: for a relationship through an
association table with link history (see :mod:`versioning.link_tables`), the links of many parent
records at once, in one indexed query on the link history (per 500 parents).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import RelationshipProperty, Session

from versioning import _compat, arguments, horizon
from versioning.errors import ArgumentError
from versioning.link_tables import LinkSpec, link_spec
from versioning.live_rows import Key
from versioning.operation import Operation
from versioning.recording import write_pending
from versioning.schema import OPERATION, TRANSACTION_ID, issued_at_utc

__all__ = ["link_history_table", "links_as_of"]

_CHUNK = 500


def _relationship(relationship: Any, function: str) -> tuple[RelationshipProperty[Any], LinkSpec]:
    prop = getattr(relationship, "property", relationship)
    if not isinstance(prop, RelationshipProperty):
        raise ArgumentError(
            f"{function}() takes a relationship attribute such as Post.tags, got {relationship!r}"
        )
    spec = link_spec(prop.secondary)
    if spec is None:
        raise ArgumentError(
            f"{prop.parent.class_.__name__}.{prop.key} has no link history: only a relationship "
            f"with secondary= between two versioned models has one"
        )
    return prop, spec


def link_history_table(relationship: Any) -> sa.Table:
    """The link history ``Table`` of a many-to-many relationship (``Post.tags``)."""
    return _relationship(relationship, "link_history_table")[1].history


def _key(value: Any, width: int, what: str) -> Key:
    key = value if isinstance(value, tuple) else (value,)
    if len(key) != width:
        raise ArgumentError(f"{what}: a key of {width} value(s) was expected, got {value!r}")
    return key


def links_as_of(
    session: Session, relationship: Any, parent_keys: Iterable[Any], at: dt.datetime | int
) -> dict[Key, list[Key]]:
    """The links of a many-to-many relationship at ``at``, for each of ``parent_keys``.

    ``relationship`` is the attribute (``Post.tags``); ``parent_keys`` are the values of the
    parent's columns the relationship joins on (its primary key, usually): scalars, or tuples
    for several columns. Returns, for each parent key given, as a tuple, the keys (tuples) of the
    records linked to it at ``at`` (the state after the last transaction issued at or before a
    ``datetime``, or after the transaction of that id), ordered; ``[]`` for none. A link the
    table held twice (a table without primary key) is listed twice.
    """
    session = arguments.session(session, "links_as_of")
    prop, spec = _relationship(relationship, "links_as_of")
    at = arguments.moment(at, "links_as_of")
    local = [secondary.name for _, secondary in prop.synchronize_pairs]
    remote = [secondary.name for _, secondary in prop.secondary_synchronize_pairs or ()]
    what = f"links_as_of({prop.parent.class_.__name__}.{prop.key})"
    keys = list(dict.fromkeys(_key(k, len(local), what) for k in parent_keys))
    result: dict[Key, list[Key]] = {key: [] for key in keys}
    if not keys:
        return result
    if isinstance(session, Session):
        _compat.autoflush(session)
    write_pending(session)
    connection = session.connection(bind_arguments={"mapper": prop.parent})
    history, transactions = spec.history, spec.transactions
    horizon.check_moment(connection, transactions, at, what)
    bound: Any = at
    if isinstance(at, dt.datetime):
        moment = (
            sa.select(transactions.c.id)
            .where(issued_at_utc(transactions) <= at)
            .order_by(transactions.c.issued_at.desc(), transactions.c.id.desc())
            .limit(1)
        )
        bound = horizon.resolve_bound(connection, transactions, at, moment.scalar_subquery(), what)
        if isinstance(bound, sa.ScalarSelect) and connection.dialect.name in ("mysql", "mariadb"):
            # As versioning.reading.version_at: MariaDB probes an index with a constant only.
            bound = connection.execute(moment).scalar()
        if bound is None:
            return result
    parents = [history.c[name] for name in local]
    children = [history.c[name] for name in remote]
    net = sa.func.sum(sa.case((history.c[OPERATION] == Operation.INSERT, 1), else_=-1))
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        where = (
            parents[0].in_([k[0] for k in chunk])
            if len(parents) == 1
            else sa.tuple_(*parents).in_(chunk)
        )
        query = (
            sa.select(*parents, *children, net.label("versioning_links"))
            .where(where, history.c[TRANSACTION_ID] <= bound)
            .group_by(*parents, *children)
            .having(net > 0)
            .order_by(*parents, *children)
        )
        for row in connection.execute(query):
            parent = tuple(row[: len(parents)])
            child = tuple(row[len(parents) : len(parents) + len(children)])
            result[parent].extend([child] * int(row[-1]))
    return result
