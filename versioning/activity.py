"""Versions and events in one stream, in the order of the chain: what exports and ``versioning
log`` read.

:func:`activity` merges :func:`versioning.searching.entries` (the history rows) with the events of
:mod:`versioning.event_log` (failed and denied actions) by transaction id: an event is a
transaction of its own, so the two never share a transaction and the merged order is the
transactions' order. Both are read in chunks (keyset pages): memory stays flat.

Which filters keep events: those on the transaction (``actor``, ``since``, ``until``,
``transaction_id``, ``request_id``, ``source_ip``) apply to both; a filter only versions have
(``table``, ``key``, ``operation``) leaves the events out; ``action`` or ``outcome`` (only events
have them) leaves the versions out. ``events=False`` leaves the events out.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from itertools import islice
from operator import attrgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from versioning.catalog import Catalog
from versioning.errors import ArgumentError
from versioning.event_log import Event, event_of, event_query, has_event_table
from versioning.recording import write_pending
from versioning.searching import CHUNK, Entry, check_limit, entries, entry_key

__all__ = ["activity", "wants_events", "wants_versions"]

#: Filters that only versions have: given, no event matches.
VERSION_ONLY = ("table", "key", "operation")
#: Filters that only events have: given, no version matches.
EVENT_ONLY = ("action", "outcome")
#: Filters that both have (on the transaction).
SHARED = ("actor", "since", "until", "transaction_id", "request_id", "source_ip")


def wants_events(filters: dict[str, Any], events: bool = True) -> bool:
    return events and all(filters.get(name) is None for name in VERSION_ONLY)


def wants_versions(filters: dict[str, Any]) -> bool:
    return all(filters.get(name) is None for name in EVENT_ONLY)


def _connection(bind: Session | sa.Connection, catalog: Catalog) -> sa.Connection:
    if isinstance(bind, Session):
        write_pending(bind)
        models = [entry.model for entry in catalog.tables if entry.model is not None]
        return bind.connection(bind_arguments={"mapper": models[0]} if models else None)
    return bind


def iter_events(
    connection: sa.Connection,
    catalog: Catalog,
    *,
    newest_first: bool,
    chunk: int = CHUNK,
    function: str = "export",
    after: Event | tuple[int, int] | None = None,
    **filters: Any,
) -> Iterator[Event]:
    """Every event matching ``filters`` (those of :func:`versioning.events`), ``chunk`` at a
    time, after ``after`` (an Event or its ``(transaction id, event id)``); none when the
    database has no event table (created before events existed). The filters are checked at
    the call, reading starts at the first ``next()``."""
    transactions = catalog.transaction

    def query(after: Event | tuple[int, int] | None) -> sa.Select[Any]:
        return event_query(
            transactions,
            newest_first=newest_first,
            limit=chunk,
            after=after,
            function=function,
            **filters,
        )

    first = query(after)  # refuses a bad filter now, before the caller writes anything

    def read() -> Iterator[Event]:
        if not has_event_table(connection, transactions):
            return
        select = first
        while True:
            found = [event_of(row) for row in connection.execute(select).mappings()]
            yield from found
            if len(found) < chunk:
                return
            select = query(found[-1])

    return read()


#: An event id above every other: "after every event of this transaction".
_LAST = 2**63 - 1


def _keysets(
    after: object, newest_first: bool
) -> tuple[tuple[int, str, int] | None, tuple[int, int] | None]:
    """The keysets of ``after`` for the versions and for the events. No version shares an
    event's transaction: the versions after an event are those of the transactions after its
    own, and the events after a version those of the transactions after the version's."""
    if after is None:
        return None, None
    if isinstance(after, Entry) or (isinstance(after, tuple) and len(after) == 3):
        key = entry_key(after, "activity")
        return key, (key[0], 0 if newest_first else _LAST)
    if isinstance(after, Event):
        after = (after.transaction_id, after.id)
    if isinstance(after, tuple) and len(after) == 2 and isinstance(after[0], int):
        # The empty name sorts before every table's: every version of that transaction (none)
        # comes "after" it in newest-first order, and before it oldest first.
        return (after[0], "", 0), (after[0], after[1])
    raise ArgumentError(
        f"versioning.activity(): after must be the last Entry or Event of the previous page, or "
        f"its keyset ((transaction_id, history_table_name, version_id) or (transaction_id, "
        f"event_id)), got {after!r}"
    )


def activity(
    bind: Session | sa.Connection,
    catalog: Catalog,
    *,
    newest_first: bool = False,
    limit: int | None = None,
    events: bool = True,
    chunk: int = CHUNK,
    after: Entry | Event | tuple[int, str, int] | tuple[int, int] | None = None,
    **filters: Any,
) -> Iterator[Entry | Event]:
    """The history rows (:class:`~versioning.searching.Entry`) and events
    (:class:`~versioning.Event`) matching ``filters``, merged in transaction order (oldest first
    unless ``newest_first``), at most ``limit`` of them. See the module for which filters keep
    which.

    ``after`` starts after the last item of the previous page: that Entry or Event, or its
    keyset, ``(transaction id, history table name, version id)`` for a version and
    ``(transaction id, event id)`` for an event (what a web page keeps in its "next" link)."""
    limit = check_limit(limit, "export")
    version_after, event_after = _keysets(after, newest_first)
    if not isinstance(events, bool):
        raise ArgumentError(f"versioning export: events must be True or False, got {events!r}")
    shared = {name: filters[name] for name in SHARED if filters.get(name) is not None}
    unknown = set(filters) - {*VERSION_ONLY, *EVENT_ONLY, *SHARED}
    if unknown:
        raise ArgumentError(
            f"versioning export: unknown filter(s) {', '.join(sorted(unknown))}; the filters are "
            f"{', '.join((*SHARED, *VERSION_ONLY, *EVENT_ONLY))}"
        )
    streams: list[Iterator[Entry | Event]] = []
    connection = _connection(bind, catalog)
    if wants_versions(filters):
        versions = {n: filters[n] for n in (*SHARED, *VERSION_ONLY) if filters.get(n) is not None}
        versions["after"] = version_after  # where the page starts (None: at the first)
        found = entries(connection, catalog, newest_first=newest_first, chunk=chunk, **versions)
        streams.append(found)
    if wants_events(filters, events):
        kinds = {n: filters[n] for n in EVENT_ONLY if filters.get(n) is not None}
        kinds["after"] = event_after
        happened = iter_events(
            connection, catalog, newest_first=newest_first, chunk=chunk, **shared, **kinds
        )
        streams.append(happened)
    # Within one transaction only one stream has rows (an event's transaction is its own), and
    # heapq.merge keeps each stream's own order among equal keys: compare transaction ids only.
    merged: Iterator[Entry | Event] = heapq.merge(
        *streams, key=attrgetter("transaction_id"), reverse=newest_first
    )
    return islice(merged, limit) if limit is not None else merged
