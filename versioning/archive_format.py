"""The archive file: one JSON document per line, gzip-compressed, readable without the database.

Line 1 is the header: the format, and per history table its name, live table, kind (``model``
or ``link``), key columns, snapshot columns with the kind of value each holds, and its personal
columns. Then, seal by seal, each transaction the seal links (its transaction row, its digest
segments, its history rows) followed by the seal's entries and the seal itself. The last line is
the manifest: counts, first and last transaction and seal, the seal hashes at both ends, and the
SHA-256 of every line before it (``data_sha256``).

A history row's snapshot values are stored in their canonical form (:mod:`versioning.canonical`),
so :func:`row_hash` recomputes the row hash its digest covers with no database and no model;
:func:`decode` turns a canonical value back into a Python value by the column's kind.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import types as sqltypes

from versioning.canonical import dumps
from versioning.schema import (
    CHANGES,
    META_COLUMNS,
    OPERATION,
    PERSONAL,
    RECORD_KEY_INFO,
    TRANSACTION_ID,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "TableDescription",
    "decode",
    "describe",
    "line",
    "row_hash",
    "value_kind",
]

FORMAT = "versioning-archive"
VERSION = 1

_SNAPSHOT = b"snapshot\x00"
_CHANGES = b"changes\x00"


def line(document: Mapping[str, Any]) -> bytes:
    """One line of the file: the document as compact JSON (keys sorted), UTF-8, ``\\n``."""
    try:
        return dumps(document) + b"\n"
    except ValueError:  # a NaN in a JSON document: JSON's own (non-standard) form
        return (
            json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
        ).encode()


def value_kind(type_: sqltypes.TypeEngine[Any]) -> str:
    """The kind of canonical value a column of ``type_`` holds, as :func:`decode` reads it."""
    if isinstance(type_, sqltypes.Interval):
        return "interval"
    if isinstance(type_, sqltypes.TypeDecorator):
        return value_kind(type_.impl_instance)
    if isinstance(type_, sqltypes.ARRAY):
        return f"array:{value_kind(type_.item_type)}"
    if isinstance(type_, sqltypes.JSON):
        return "json"
    if isinstance(type_, sqltypes.Enum):
        return "enum"
    if isinstance(type_, sqltypes.Boolean):
        return "boolean"
    if isinstance(type_, sqltypes.Integer):
        return "integer"
    if isinstance(type_, sqltypes.String):
        return "string"
    if isinstance(type_, sqltypes.Numeric):
        return "decimal" if type_.asdecimal else "float"
    if isinstance(type_, sqltypes.DateTime):
        return "datetime"
    if isinstance(type_, sqltypes.Date):
        return "date"
    if isinstance(type_, sqltypes.Time):
        return "time"
    if isinstance(type_, sqltypes.Uuid):
        return "uuid"
    if isinstance(type_, sqltypes.LargeBinary | sqltypes.BINARY | sqltypes.VARBINARY):
        return "bytes"
    try:
        python_type = type_.python_type
    except NotImplementedError:
        return "other"
    return _BY_PYTHON_TYPE.get(python_type, "other")


_BY_PYTHON_TYPE: dict[type[Any], str] = {
    dt.timedelta: "interval",
    dt.datetime: "datetime",
    dt.date: "date",
    dt.time: "time",
    Decimal: "decimal",
    float: "float",
    bytes: "bytes",
    uuid.UUID: "uuid",
}


def decode(kind: str, value: Any) -> Any:
    """The Python value of a canonical (or ``changes``-encoded) value of a column of ``kind``.

    A value that does not read as its kind is given as stored."""
    if value is None:
        return None
    try:
        return _decode(kind, value)
    except (ValueError, TypeError, ArithmeticError):
        return value


def _decode(kind: str, value: Any) -> Any:
    if kind.startswith("array:"):
        item = kind[6:]
        if isinstance(value, list):
            return [decode(kind if isinstance(v, list) else item, v) for v in value]
        return decode(item, value)
    if kind == "decimal":
        return Decimal(str(value))
    if kind == "float":
        return float(value)
    if kind == "datetime":
        return dt.datetime.fromisoformat(value)
    if kind == "date":
        return dt.date.fromisoformat(value)
    if kind == "time":
        return dt.time.fromisoformat(value)
    if kind == "interval":
        return dt.timedelta(microseconds=int(value))
    if kind == "uuid":
        return uuid.UUID(str(value))
    if kind == "bytes":
        return base64.b64decode(value)
    if kind == "boolean":
        return bool(value)
    return value


@dataclass(frozen=True)
class TableDescription:
    """What the archive says of one history table (its header entry)."""

    name: str
    live: str
    kind: str
    key: tuple[str, ...]
    #: The snapshot columns in table order, and the kind of each.
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    #: Personal attribute key -> snapshot column name; ``None``: no personal column.
    personal: Mapping[str, str] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "live": self.live,
            "kind": self.kind,
            "key": list(self.key),
            "columns": [[c, k] for c, k in zip(self.columns, self.kinds, strict=True)],
            "personal": None if self.personal is None else dict(self.personal),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TableDescription:
        columns = [tuple(c) for c in data["columns"]]
        personal = data.get("personal")
        return cls(
            name=str(data["name"]),
            live=str(data["live"]),
            kind=str(data["kind"]),
            key=tuple(str(k) for k in data["key"]),
            columns=tuple(str(c[0]) for c in columns),
            kinds=tuple(str(c[1]) for c in columns),
            personal=None if personal is None else {str(k): str(v) for k, v in personal.items()},
        )


def key_columns(history: sa.Table) -> tuple[str, ...]:
    """The columns of ``history`` that name a record (a link, for link history): the model's
    primary key (a link's foreign keys) when its model is declared in this process, else
    those of its ``(key, transaction id)`` index."""
    from versioning.declaration import all_specs
    from versioning.link_tables import link_spec

    for spec in all_specs():
        if spec.history is history:
            root = spec.root
            return tuple(root.history_names[k] for k in root.pk_keys)
    loaded = history.info.get(RECORD_KEY_INFO)
    if loaded is not None:  # loaded from the registry (versioning.catalog.load)
        return tuple(loaded)
    live = history.metadata.tables.get(str(history.info.get("link_table")))
    links = link_spec(live) if live is not None else None
    if links is not None:
        return tuple(c.name for c in links.keys)
    for index in history.indexes:
        names = [c.name for c in index.columns]
        if names and names[-1] == TRANSACTION_ID and index.name and "_record" in index.name:
            return tuple(names[:-1])
    return tuple(c.name for c in history.primary_key.columns)


def describe(history: sa.Table) -> TableDescription:
    """The header entry of ``history``."""
    snapshot = [c for c in history.columns if c.name not in META_COLUMNS]
    names: Mapping[str, str] = history.info.get(PERSONAL, {})
    return TableDescription(
        name=history.fullname,
        live=str(history.info.get("link_table") or history.info.get("live_table") or ""),
        kind="link" if "link_table" in history.info else "model",
        key=key_columns(history),
        columns=tuple(c.name for c in snapshot),
        kinds=tuple(value_kind(c.type) for c in snapshot),
        personal=dict(names) if PERSONAL in history.c else None,
    )


def _dumps(value: Any) -> bytes:
    # As versioning.personal hashes a commitment's data.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _commit(salt: str, label: bytes, data: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + label + data).hexdigest()


def row_hash(
    table: TableDescription,
    operation: str,
    values: Sequence[Any],
    changes: Any,
    personal: Mapping[str, Any] | None,
) -> bytes:
    """The row hash of an archived history row, as :func:`versioning.canonical.row_hash` of its
    :func:`versioning.personal.committed_view` gives it for the row in the database.

    ``values`` are the canonical snapshot values, in the order of ``table.columns``.
    """
    view = dict(zip(table.columns, values, strict=True))
    if table.personal is not None and personal:
        new_changes = dict(changes) if changes else changes
        for key, entry in personal.items():
            name = table.personal.get(key, key)
            if isinstance(entry, Mapping) and entry.get("erased") is True:
                snapshot, in_changes = entry["snapshot"], entry.get("changes")
            else:
                snapshot = _commit(entry, _SNAPSHOT, _dumps(view.get(name)))
                in_changes = (
                    _commit(entry, _CHANGES, _dumps(changes[key]))
                    if changes and key in changes
                    else None
                )
            view[name] = snapshot
            if in_changes is not None:
                new_changes[key] = in_changes
        changes = new_changes
    parts: list[Any] = [operation]
    for name in table.columns:
        value = view.get(name)
        if value is not None:
            parts.append(name)
            parts.append(value)
    parts.append(changes)
    return hashlib.sha256(dumps(parts)).digest()


#: The history row keys an archived version line holds besides its values.
ROW_META = (OPERATION, CHANGES, PERSONAL)
