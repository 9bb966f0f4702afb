"""Reading and restoring history from asyncio code, on a SQLAlchemy ``AsyncSession``.

Writes need nothing from this module: the capture hooks listen on every ``Session``, including the
one inside each ``AsyncSession``, and the audit context (a ``ContextVar``) follows the task that
flushes. Reads and restores do: the functions of :mod:`versioning` take a sync ``Session`` and do
I/O, which raises ``MissingGreenlet`` when called from a coroutine. The functions here are their
async forms, with the same arguments, results and errors::

    import versioning.asyncio

    versions = await versioning.asyncio.history(async_session, Order, 1)
    old = await versioning.asyncio.as_of(async_session, Order, 1, transaction_id)
    live = await versioning.asyncio.restore(async_session, Order, 1, at=moment)
    await async_session.commit()
    await versioning.asyncio.erase(async_session, Customer, 7, columns=["email"], reason="...")
    await async_session.commit()
    report = await versioning.asyncio.verify(async_session)
    await versioning.asyncio.record_event(async_session, "login", outcome="denied")
    denied = await versioning.asyncio.events(async_session, outcome="denied")

Each one runs its sync form through ``AsyncSession.run_sync``, so it uses the session's
connection and transaction. What they return is safe to use in async code without further I/O:
:class:`~versioning.Version` and :class:`~versioning.Transaction` are plain frozen dataclasses,
``as_of`` returns a transient instance holding the recorded state, and ``restore`` returns the live
instance with all its column attributes loaded. Relationships of that instance load lazily, as
ever in SQLAlchemy: use ``AsyncAttrs.awaitable_attrs`` or an eager loader to read them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
)
from sqlalchemy.orm import Session, scoped_session

from versioning import erasing, integrity, reading, related, restoring, searching, table_at
from versioning.errors import ArgumentError
from versioning.event_log import (
    Event,
    checked,
    has_event_table,
    no_event_table,
    refuse_if_sqlite_waits,
    transaction_table,
    write_event,
)
from versioning.event_log import events as _sync_events
from versioning.event_log import record_event as _sync_record_event
from versioning.integrity import Digest, Report, Seal
from versioning.reading import _MISSING, Version

__all__ = [
    "all_as_of",
    "as_of",
    "digest",
    "erase",
    "events",
    "history",
    "iter_search",
    "record_event",
    "restore",
    "seal",
    "search",
    "transaction_changes",
    "verify",
    "version_at",
]

T = TypeVar("T")

# The sync functions, each taking every argument its overloads allow.
_history: Callable[..., list[Version]] = reading.history
_restore: Callable[..., Any] = restoring.restore


def _check(session: object, name: str) -> AsyncSession:
    """The ``AsyncSession`` to use: ``session``, or the current one of an
    ``async_scoped_session``; anything else is refused with what to pass instead."""
    if isinstance(session, AsyncSession):
        return session
    if isinstance(session, async_scoped_session):
        current: AsyncSession = session()
        return current
    kind = type(session).__name__
    if isinstance(session, Session | scoped_session):
        advice = f"with a sync {kind}, call versioning.{name}(session, ...)"
    elif isinstance(session, AsyncEngine | AsyncConnection):
        bind = "async_engine" if isinstance(session, AsyncEngine) else "connection"
        advice = f"open one: async with AsyncSession({bind}) as session"
    elif isinstance(session, async_sessionmaker):
        advice = "call the factory: async with factory() as session"
    else:
        advice = "e.g. async with AsyncSession(async_engine) as session"
    raise ArgumentError(
        f"versioning.asyncio.{name}() takes an AsyncSession, got "
        f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}: {advice}"
    )


async def history(
    session: AsyncSession,
    target: Any,
    pk: Any = _MISSING,
    *,
    since: dt.datetime | int | None = None,
) -> list[Version]:
    """Every version of a record, oldest first: the async form of :func:`versioning.history`.

    Call as ``await history(session, obj)`` or ``await history(session, Model, pk)``. Each
    version's ``transaction`` is filled in; ``[]`` for a key that never existed. ``since`` as
    for :func:`versioning.history`.
    """
    return await _check(session, "history").run_sync(_history, target, pk, since=since)


async def version_at(
    session: AsyncSession, model: type[Any], pk: Any, at: dt.datetime | int
) -> Version | None:
    """The latest version of a record at ``at`` (a delete included), or ``None``.

    The async form of ``versioning.reading.version_at``. ``at`` is a transaction id or a
    timezone-aware ``datetime``; the version's ``transaction`` is not filled in.
    """
    return await _check(session, "version_at").run_sync(reading.version_at, model, pk, at)


#: Why an instance read by the async forms loads nothing on access.
_NO_LAZY = (
    "it was read by versioning.asyncio, which cannot load on attribute access; name it in "
    "load=[...] (e.g. load=['lines', 'lines.notes'])"
)


def _as_of_loaded(session: Session, model: Any, pk: Any, at: Any, load: Any) -> Any:
    obj, moment = related.read_as_of(session, model, pk, at, load)
    if moment is not None:
        moment.detach(_NO_LAZY)
    return obj


@overload
async def as_of(
    session: AsyncSession, model: type[T], pk: Any, at: dt.datetime | int, *, load: Any = None
) -> T | None: ...
@overload
async def as_of(
    session: AsyncSession, model: Any, pk: Any, at: dt.datetime | int, *, load: Any = None
) -> Any: ...
async def as_of(
    session: AsyncSession, model: Any, pk: Any, at: dt.datetime | int, *, load: Any = None
) -> Any:
    """The record as it was at ``at``, or ``None``: the async form of :func:`versioning.as_of`.

    ``at`` is a timezone-aware ``datetime`` or a transaction id. The result is a new transient
    instance, not in the session, holding the recorded state (masked columns hold the mask's
    output, excluded columns are unset); reading its attributes does no I/O. Relationships as of
    the same moment are loaded for the dotted paths in ``load``; reading another one raises
    :class:`~versioning.RelationshipHistoryError`.
    """
    return await _check(session, "as_of").run_sync(_as_of_loaded, model, pk, at, load)


def _all_as_of_loaded(
    session: Session, model: Any, at: Any, criteria: tuple[Any, ...], load: Any
) -> list[Any]:
    found, moment = table_at.read_all_as_of(session, model, at, criteria, load)
    objs = list(found)
    moment.detach(_NO_LAZY)
    return objs


async def all_as_of(
    session: AsyncSession, model: type[T], at: dt.datetime | int, *criteria: Any, load: Any = None
) -> list[T]:
    """Every record of ``model`` that existed at ``at`` and matched ``criteria`` then: the async
    form of :func:`versioning.all_as_of`, as a list (read in one go), with the relationships
    named in ``load`` loaded."""
    return await _check(session, "all_as_of").run_sync(_all_as_of_loaded, model, at, criteria, load)


def _restore_loaded(
    session: Session, target: Any, pk: Any, at: dt.datetime | int | None, relationships: Any
) -> Any:
    """Restore, then load every column attribute the flush left unloaded (server values)."""
    live = _restore(session, target, pk, at=at, relationships=relationships)
    state = sa.inspect(live)
    unloaded = state.unloaded
    missing = [prop.key for prop in state.mapper.column_attrs if prop.key in unloaded]
    if missing:
        session.refresh(live, attribute_names=missing)
    return live


@overload
async def restore(session: AsyncSession, target: Version, *, relationships: Any = None) -> Any: ...
@overload
async def restore(
    session: AsyncSession,
    target: type[Any],
    pk: Any,
    *,
    at: dt.datetime | int,
    relationships: Any = None,
) -> Any: ...
async def restore(
    session: AsyncSession,
    target: Any,
    pk: Any = _MISSING,
    *,
    at: dt.datetime | int | None = None,
    relationships: Any = None,
) -> Any:
    """Put a record back to a version: the async form of :func:`versioning.restore`.

    ``await restore(session, version)`` or ``await restore(session, Model, pk, at=...)``. The
    restore is flushed at once and the live instance is returned with all its column attributes
    loaded (defaults and server-side values included); the caller commits. A constraint the
    restore would violate raises :class:`~versioning.RestoreConflictError` here, with data and
    history unchanged: call ``await session.rollback()`` before going on. ``relationships``
    restores relationships with the record, as in :func:`versioning.restore`.
    """
    return await _check(session, "restore").run_sync(_restore_loaded, target, pk, at, relationships)


def _erase(session: Session, model: type[Any], pk: Any, columns: list[str], reason: str) -> int:
    return erasing.erase(session, model, pk, columns=columns, reason=reason)


async def erase(
    session: AsyncSession, model: type[Any], pk: Any, *, columns: Any, reason: str
) -> int:
    """Erase personal values from a record's history: the async form of
    :func:`versioning.erase`, with the same arguments, result and errors; the caller commits."""
    return await _check(session, "erase").run_sync(_erase, model, pk, columns, reason)


async def seal(session: AsyncSession, *, metadata: sa.MetaData | None = None) -> Seal | None:
    """Seal every digest not sealed yet: the async form of :func:`versioning.seal`. The
    caller commits."""
    return await _check(session, "seal").run_sync(
        lambda sync: integrity.seal(sync, metadata=metadata)
    )


async def verify(
    session: AsyncSession,
    digests: list[Digest] | tuple[Digest, ...] = (),
    *,
    archives: list[Any] | tuple[Any, ...] = (),
    metadata: sa.MetaData | None = None,
    since: dt.datetime | int | None = None,
    until: dt.datetime | int | None = None,
) -> Report:
    """Check every row, digest and seal (and ``archives``), or the range ``since``/``until``:
    the async form of :func:`versioning.verify`."""
    return await _check(session, "verify").run_sync(
        lambda sync: integrity.verify(
            sync, digests, archives=archives, metadata=metadata, since=since, until=until
        )
    )


async def digest(session: AsyncSession, *, metadata: sa.MetaData | None = None) -> Digest | None:
    """The newest seal's digest: the async form of :func:`versioning.digest`."""
    return await _check(session, "digest").run_sync(
        lambda sync: integrity.digest(sync, metadata=metadata)
    )


async def search(session: AsyncSession, **filters: Any) -> list[Version]:
    """A page of versions matching every filter given: the async form of
    :func:`versioning.search`, with the same keyword arguments, result and errors."""
    return await _check(session, "search").run_sync(lambda sync: searching.search(sync, **filters))


def _page(session: Session, filters: dict[str, Any], after: Version | None, size: int) -> Any:
    return searching.search(session, limit=size, after=after, **filters)


async def iter_search(
    session: AsyncSession, *, chunk: int = searching.CHUNK, **filters: Any
) -> AsyncIterator[Version]:
    """Every version :func:`versioning.search` would find, streamed: the async form of
    :func:`versioning.iter_search` (``async for version in iter_search(session, ...)``).

    It reads pages of ``chunk`` versions, each the page after the last one (keyset pagination),
    so memory stays bounded and the session is free between pages. ``limit`` counts them all.
    """
    own = _check(session, "iter_search")
    limit = filters.pop("limit", None)
    searching.check_limit(limit, "iter_search")
    after = filters.pop("after", None)
    left = limit
    while left is None or left > 0:
        size = chunk if left is None else min(chunk, left)
        page = await own.run_sync(_page, filters, after, size)
        for version in page:
            yield version
        if len(page) < size:
            return
        after = page[-1]
        if left is not None:
            left -= len(page)


async def transaction_changes(
    session: AsyncSession, transaction_id: int, *, metadata: sa.MetaData | None = None
) -> list[Version]:
    """Every version a transaction wrote, across models: the async form of
    :func:`versioning.transaction_changes`."""
    return await _check(session, "transaction_changes").run_sync(
        lambda sync: searching.transaction_changes(sync, transaction_id, metadata=metadata)
    )


async def record_event(
    bind: AsyncSession | AsyncEngine | AsyncConnection,
    action: str,
    *,
    outcome: str,
    target: str | None = None,
    details: Any = None,
    metadata: sa.MetaData | None = None,
) -> Event:
    """Record an event in a transaction of its own: the async form of
    :func:`versioning.record_event`. ``bind`` is an ``AsyncSession`` (or
    ``async_scoped_session``), an ``AsyncEngine`` or an ``AsyncConnection``."""
    values = checked("record_event", action, outcome, target, details)
    if isinstance(bind, async_scoped_session):
        bind = bind()
    if isinstance(bind, AsyncSession):
        # The sync form finds the engine and writes on a connection of its own; in the
        # session's greenlet, its sync engine's connections work.
        return await bind.run_sync(
            lambda sync: _sync_record_event(
                sync,
                values.action,
                outcome=values.outcome,
                target=values.target,
                details=values.details,
                metadata=metadata,
            )
        )
    if isinstance(bind, AsyncConnection):
        if bind.sync_connection is not None:
            refuse_if_sqlite_waits(bind.sync_engine, [bind.sync_connection], "connection's")
        bind = bind.engine
    if not isinstance(bind, AsyncEngine):
        raise ArgumentError(
            f"versioning.asyncio.record_event() takes an AsyncSession, AsyncEngine or "
            f"AsyncConnection, got {type(bind).__name__}: with a sync bind, call "
            f"versioning.record_event(bind, ...)"
        )
    transactions, _ = transaction_table(metadata, "record_event")
    try:
        async with bind.begin() as connection:
            return await connection.run_sync(write_event, transactions, values)
    except sa.exc.DBAPIError:
        async with bind.connect() as connection:
            exists = await connection.run_sync(has_event_table, transactions)
        if not exists:
            raise no_event_table(repr(bind.sync_engine), transactions) from None
        raise


async def events(session: AsyncSession, **filters: Any) -> list[Event]:
    """The recorded events matching every filter: the async form of :func:`versioning.events`,
    with the same filters."""
    found: list[Event] = await _check(session, "events").run_sync(
        lambda sync: _sync_events(sync, **filters)
    )
    return found
