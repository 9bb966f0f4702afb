"""The review page's query parameters, checked: what a URL may ask for, as typed filters.

Framework-free: :func:`parse_filters` takes the query string's values (a ``Mapping[str, str]``)
and gives :class:`Filters`, or raises :class:`BadParameter` naming the field, the value and what
to type instead (shown as a 400 page). Nothing here reaches the database: the values are passed
to the library's searches, which send them as bound parameters only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlencode

from versioning.operation import Operation

__all__ = ["MAX_PAGE_SIZE", "BadParameter", "Cursor", "Filters", "parse_filters", "parse_moment"]

#: The largest page a URL may ask for (``size=``), whatever the app's default.
MAX_PAGE_SIZE = 200
#: Longest text accepted in a text filter (the transaction table's columns are shorter).
MAX_TEXT = 255


class BadParameter(ValueError):
    """A query parameter the page cannot use: ``field``, the ``value`` given and the fix."""

    def __init__(self, field: str, value: str, fix: str) -> None:
        shown = value if len(value) <= 80 else value[:80] + "..."
        super().__init__(f"{field}={shown!r}: {fix}")
        self.field = field
        self.value = shown
        self.fix = fix


@dataclass(frozen=True)
class Cursor:
    """Where the next activity page starts: after a version ``(transaction, history table,
    version id)`` or after an event ``(transaction, event id)``."""

    transaction_id: int
    history: str | None = None
    version_id: int = 0
    event_id: int = 0

    def key(self) -> tuple[int, str, int] | tuple[int, int]:
        """The keyset :func:`versioning.activity.activity` takes as ``after=``."""
        if self.history is not None:
            return (self.transaction_id, self.history, self.version_id)
        return (self.transaction_id, self.event_id)

    def text(self) -> str:
        if self.history is not None:
            return f"v.{self.transaction_id}.{self.version_id}.{self.history}"
        return f"e.{self.transaction_id}.{self.event_id}"


def parse_cursor(text: str) -> Cursor:
    fix = "follow the page's own 'next page' link (its after= value is made by the page)"
    parts = text.split(".", 3)
    try:
        if parts[0] == "v" and len(parts) == 4 and parts[3]:
            return Cursor(_positive(parts[1]), parts[3], version_id=_positive(parts[2]))
        if parts[0] == "e" and len(parts) == 3:
            return Cursor(_positive(parts[1]), event_id=_positive(parts[2]))
    except ValueError:
        pass
    raise BadParameter("after", text, fix)


def _positive(text: str) -> int:
    if not text.isdigit() or len(text) > 19:
        raise ValueError(text)
    return int(text)


def parse_moment(field: str, text: str, *, end: bool = False) -> dt.datetime:
    """A moment typed in a form: ``2026-03-03``, ``2026-03-03T14:05`` (UTC, as the page shows
    times) or ISO 8601 with an offset. A date alone is its start (``end``: the next day's
    start, so that ``until=2026-03-03`` includes that day)."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return moment + dt.timedelta(days=1) if end else moment
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadParameter(
            field,
            text,
            "type a date (2026-03-03) or a date and time in UTC (2026-03-03T14:05), or ISO 8601 "
            "with an offset (2026-03-03T14:05:00+01:00)",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment


@dataclass(frozen=True)
class Filters:
    """The activity filters of one URL, checked (``None``: not filtered)."""

    actor: str | None = None
    table: str | None = None
    key: str | None = None
    operation: Operation | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    source_ip: str | None = None
    request_id: str | None = None
    outcome: str | None = None
    size: int = 50
    after: Cursor | None = None

    def query(self, **override: Any) -> str:
        """These filters as a query string (``override`` replaces some, ``None`` drops them)."""
        values: dict[str, Any] = {}
        for item in fields(self):
            values[item.name] = getattr(self, item.name)
        values.update(override)
        out: list[tuple[str, str]] = []
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(value, Operation):
                value = value.value
            elif isinstance(value, dt.datetime):
                value = value.isoformat()
            elif isinstance(value, Cursor):
                value = value.text()
            out.append((name, str(value)))
        return urlencode(out)

    def search(self) -> dict[str, Any]:
        """The keyword arguments of :func:`versioning.activity.activity` (the exports)."""
        given = {
            "actor": self.actor,
            "operation": self.operation,
            "since": self.since,
            "until": self.until,
            "source_ip": self.source_ip,
            "request_id": self.request_id,
            "outcome": self.outcome,
        }
        return {name: value for name, value in given.items() if value is not None}

    def form(self) -> dict[str, str]:
        """The values to show back in the filter form (as typed, times in UTC)."""
        out: dict[str, str] = {}
        for name in ("actor", "table", "key", "source_ip", "request_id", "outcome"):
            value = getattr(self, name)
            out[name] = "" if value is None else value
        out["operation"] = "" if self.operation is None else self.operation.value
        for name in ("since", "until"):
            moment: dt.datetime | None = getattr(self, name)
            out[name] = (
                "" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M")
            )
        return out


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
        raise BadParameter(
            name, value, f"type at most {MAX_TEXT} characters, without control characters"
        )
    return value.strip()


def parse_filters(params: Mapping[str, str], *, page_size: int = 50) -> Filters:
    """The checked filters of a query string; :class:`BadParameter` for the first bad one."""
    operation: Operation | None = None
    text = _text(params, "operation")
    if text is not None:
        try:
            operation = Operation(text)
        except ValueError:
            raise BadParameter(
                "operation", text, "choose insert, update or delete (or leave it empty)"
            ) from None
    since = until = None
    text = _text(params, "since")
    if text is not None:
        since = parse_moment("since", text)
    text = _text(params, "until")
    if text is not None:
        until = parse_moment("until", text, end=True)
    if since is not None and until is not None and until <= since:
        raise BadParameter("until", params["until"], "pick a moment after since=")
    source_ip = _text(params, "source_ip")
    if source_ip is not None:
        try:
            source_ip = str(ipaddress.ip_address(source_ip))
        except ValueError:
            raise BadParameter(
                "source_ip", source_ip, "type an IPv4 or IPv6 address, e.g. 203.0.113.7"
            ) from None
    table = _text(params, "table")
    key = _text(params, "key")
    if key is not None and table is None:
        raise BadParameter("key", key, "a record key needs table= (the record's table) too")
    outcome = _text(params, "outcome")
    if outcome is not None and (table is not None or operation is not None):
        raise BadParameter(
            "outcome",
            outcome,
            "events have no table or operation: leave table and operation empty to see events",
        )
    size = page_size
    text = _text(params, "size")
    if text is not None:
        if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_SIZE:
            raise BadParameter("size", text, f"type a page size from 1 to {MAX_PAGE_SIZE}")
        size = int(text)
    text = _text(params, "after")
    after = None if text is None else parse_cursor(text)
    return Filters(
        actor=_text(params, "actor"),
        table=table,
        key=key,
        operation=operation,
        since=since,
        until=until,
        source_ip=source_ip,
        request_id=_text(params, "request_id"),
        outcome=outcome,
        size=size,
        after=after,
    )


def parse_key(
    text: str, columns: tuple[str, ...], types: tuple[type | None, ...]
) -> tuple[Any, ...]:
    """A record key as the page writes it (see :func:`versioning.exporting.record_text`): the
    value of a one-column key, a JSON array of a composite one's values; each converted to its
    column's Python type where that is an ``int`` (text stays text)."""
    if len(columns) == 1:
        raw: list[Any] = [text]
    else:
        try:
            loaded = json.loads(text)
        except ValueError:
            loaded = None
        if not isinstance(loaded, list) or len(loaded) != len(columns):
            raise BadParameter(
                "key",
                text,
                f"this table's key has the columns ({', '.join(columns)}): type their values as "
                f'a JSON array, e.g. [1, "a"]',
            )
        raw = loaded
    out: list[Any] = []
    for column, kind, value in zip(columns, types, raw, strict=True):
        if kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                out.append(value)
                continue
            text_value = str(value).strip()
            if not text_value.lstrip("-").isdigit() or len(text_value) > 20:
                raise BadParameter("key", text, f"column {column} holds whole numbers: type one")
            out.append(int(text_value))
        else:
            out.append(value if isinstance(value, str) else json.dumps(value))
    return tuple(out)
