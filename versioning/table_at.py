"""A whole table at a moment: :func:`all_as_of`.

One query (on MariaDB, a moment given as a ``datetime`` is first turned into a transaction id:
two) picks the latest version of each record at the moment (see :mod:`versioning.snapshots`),
keeps the records that existed then and match the criteria on their state then, in primary key
order. Rows are fetched in batches (on MariaDB the driver buffers them) and instances made 500 at
a time, each batch a group whose relationships load together (:mod:`versioning.related`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy.orm import Session

from versioning import arguments
from versioning.errors import ArgumentError
from versioning.instances import Group, snapshot_names
from versioning.reading import _autoflush
from versioning.recording import write_pending
from versioning.related import Moment, check_paths
from versioning.snapshots import batches, bound_for, latest, on_history

__all__ = ["all_as_of", "read_all_as_of"]

T = TypeVar("T")

#: Instances made (and relationships loaded) per batch.
BATCH = 500


@overload
def all_as_of(
    session: Session, model: type[T], at: dt.datetime | int, *criteria: Any, load: Any = None
) -> Iterator[T]: ...
@overload
def all_as_of(
    session: Session, model: Any, at: dt.datetime | int, *criteria: Any, load: Any = None
) -> Iterator[Any]: ...
def all_as_of(
    session: Session, model: Any, at: dt.datetime | int, *criteria: Any, load: Any = None
) -> Iterator[Any]:
    """Every record of ``model`` that existed at ``at`` and matched ``criteria`` then, as
    transient instances in primary key order: an iterator, reading as it goes.

    ``criteria`` are conditions on ``model``'s own columns (``Order.status == "open"``,
    ``and_``/``or_``, ``in_``, comparisons), evaluated on each record's state at ``at``. For a
    class of an inheritance hierarchy, only records of that class (and its subclasses). The
    arguments are checked, and the query run, when it is called; iterate while the session's
    transaction is open. ``load`` names relationship paths to load for each batch at once.
    """
    return read_all_as_of(session, model, at, criteria, load)[0]


def read_all_as_of(
    session: Session, model: Any, at: dt.datetime | int, criteria: tuple[Any, ...], load: Any
) -> tuple[Iterator[Any], Moment]:
    """:func:`all_as_of`, and the moment its instances belong to."""
    session = arguments.session(session, "all_as_of")
    spec = arguments.model(model, "all_as_of")
    at = arguments.moment(at, "all_as_of")
    paths = check_paths(model, load, "all_as_of")
    what = f"versioning.all_as_of({spec.model.__name__}, ...)"
    for criterion in criteria:
        if not isinstance(criterion, sa.sql.ClauseElement):
            raise ArgumentError(
                f"{what}: criteria are SQL conditions such as {spec.model.__name__}.id > 1, got "
                f"{criterion!r}"
            )
        on_history(spec, criterion, spec.history, what)  # refused before anything is read
    _autoflush(session)
    write_pending(session)
    connection = session.connection(bind_arguments={"mapper": spec.mapper})
    bound = bound_for(connection, spec, at)
    moment = Moment(session, at)
    if bound is None:
        return iter(()), moment
    statement, inner = latest(
        spec,
        bound,
        True,
        translate=lambda inner: [on_history(spec, c, inner, what) for c in criteria],
    )
    statement = statement.order_by(*(inner.c[spec.history_names[k]] for k in spec.pk_keys))
    make = moment.maker(spec, snapshot_names(spec.history), distinct=True)
    return _stream(moment, make, batches(connection, statement, BATCH), paths), moment


def _stream(
    moment: Moment, make: Callable[[Any, Group], Any], found: Iterator[Any], paths: Any
) -> Iterator[Any]:
    for rows in found:
        group = Group()
        # A record reached through a relationship already is in another group (not this one).
        batch = [make(row, group) for row in rows]
        moment.load_paths(batch, paths)
        yield from batch
