"""Canonical bytes of history: the same for a value as written and as read back from any backend.

A digest (see :mod:`versioning.integrity`) is computed at commit from the rows in memory and
recomputed later from the rows read back, so both must serialize to the same bytes. Each value is
first turned into a canonical JSON value by its column's type (:func:`canonical_value`):

* integers stay integers; ``Numeric`` with ``Decimal`` values is compared numerically
  (``12.30``, ``12.3`` and a backend's ``12.300`` are the same ``"12.3"``); floats become their
  ``repr`` (the shortest string that reads back as the same float);
* ``datetime`` becomes ISO 8601 — aware ones in UTC (a backend may return another offset);
  ``date`` and ``time`` ISO 8601; ``timedelta`` whole microseconds;
* ``UUID`` its canonical string, bytes base64, an ``Enum`` the string the database stores
  (the member's name unless the type says otherwise);
* JSON documents keep their structure with ``str`` keys (serialized with sorted keys), ``ARRAY``
  items are canonical by the item type, and a ``TypeDecorator`` value that is not plain is
  canonical as what the decorator stores (a ``Choice`` as its code);
* ``None`` (SQL ``NULL``, or JSON ``null``) is ``None``.

A row is then one JSON array (:func:`row_bytes`) and its hash the SHA-256 of that
(:func:`row_hash`). History values are already what the live database stored (see
:mod:`versioning.stored`), and each history column has its live column's type (masked: text).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import hashlib
import json
import math
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import default

from versioning import _compat
from versioning.schema import CHANGES, OPERATION, TRANSACTION_ID, VERSION_ID

__all__ = [
    "PREFIX_CHARS",
    "JSONText",
    "SortedJSONText",
    "canonical_value",
    "converter",
    "dumps",
    "event_hash",
    "listed_prefixes",
    "prefixes",
    "row_bytes",
    "row_hash",
    "row_hashes",
    "row_prefix",
    "rows_bytes",
    "segment_bytes",
    "segment_digest",
    "stored_text",
    "transaction_bytes",
]

#: A ``TypeDecorator``'s bind processing is dialect-independent for the plain values it is asked
#: about here (a ``Choice`` gives its code on every dialect).
_DIALECT = default.DefaultDialect()

#: Columns of a history row that are never hashed (unknown when the row is written).
_UNHASHED = frozenset({VERSION_ID, TRANSACTION_ID})


def _plain(value: Any) -> Any:
    """The canonical JSON form of a value by its Python type alone."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, dt.datetime):
        return _datetime(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _decimal(value: Decimal) -> str:
    if not value.is_finite():
        return str(value)
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _datetime(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.isoformat()


def _json(value: Any) -> Any:
    """A JSON document: its structure with ``str`` keys; floats kept as floats (JSON's own)."""
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return _plain(value)


def converter(type_: sqltypes.TypeEngine[Any]) -> Callable[[Any], Any]:
    """The function giving the canonical form of a (non-None) value of a column of ``type_``."""
    if isinstance(type_, sqltypes.TypeDecorator):
        inner = converter(type_.impl_instance)
        if type(type_).process_bind_param is sqltypes.TypeDecorator.process_bind_param:
            return inner

        def decorated(value: Any) -> Any:
            # What the decorator stores (a normalised e-mail address, a Choice's code).
            try:
                stored = type_.process_bind_param(value, _DIALECT)
            except Exception:  # a value it no longer takes (history outlives the model)
                return _plain(value)
            return None if stored is None else inner(stored)

        return decorated
    if isinstance(type_, sqltypes.ARRAY):
        item = converter(type_.item_type)

        def array(value: Any) -> Any:
            if isinstance(value, list | tuple):
                return [None if v is None else array(v) for v in value]
            return item(value)

        return array
    if isinstance(type_, sqltypes.JSON):
        return _json
    if isinstance(type_, sqltypes.Enum):
        lookup = _compat.enum_stored_values(type_)

        def member(value: Any) -> Any:
            stored = lookup.get(value) if isinstance(value, str | enum.Enum) else None
            if isinstance(stored, str):
                return stored
            return value.name if isinstance(value, enum.Enum) else _plain(value)

        return member
    if isinstance(type_, sqltypes.Boolean):
        return lambda value: bool(value) if isinstance(value, int) else _plain(value)
    if isinstance(type_, sqltypes.Integer):
        return _as_int
    if isinstance(type_, sqltypes.String):  # Text, Unicode, CHAR... (Enum was matched above)
        return _as_str
    if isinstance(type_, sqltypes.Numeric):
        if type_.asdecimal:
            return _as_decimal
        return _as_float
    if isinstance(type_, sqltypes.DateTime):
        return _as_datetime
    return _plain


def _as_int(value: Any) -> Any:
    if type(value) is int:
        return value
    return int(value) if isinstance(value, int | Decimal) else _plain(value)


def _as_str(value: Any) -> Any:
    return value if type(value) is str else _plain(value)


def _as_datetime(value: Any) -> Any:
    if type(value) is dt.datetime and value.tzinfo is None:
        return value.isoformat()
    return _datetime(value) if isinstance(value, dt.datetime) else _plain(value)


def _as_decimal(value: Any) -> Any:
    if type(value) is Decimal and value.is_finite():
        return format(value.normalize(), "f") if value else "0"
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _decimal(Decimal(str(value)))
    return _plain(value)


def _as_float(value: Any) -> Any:
    if isinstance(value, float | int | Decimal) and not isinstance(value, bool):
        return repr(float(value))
    return _plain(value)


def canonical_value(column: sa.Column[Any], value: Any) -> Any:
    """The canonical JSON form of one snapshot value of ``column`` (a history column).

    The same for the value as written and as read back from any backend.
    """
    if value is None:
        return None
    return converter(column.type)(value)


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def dumps(value: Any) -> bytes:
    """The canonical bytes of a canonical JSON value (sorted keys, no spaces, UTF-8)."""
    return _encode_json(value).encode()


def _c_encoder(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """The JSON text ``encoder`` writes for a value, by its C encoder, made once.

    ``JSONEncoder.encode`` makes that encoder anew at each call, which costs as much as the
    encoding of a history row; it is private to :mod:`json`, so it is used only if it gives
    ``encoder.encode``'s text (that itself otherwise).
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    try:
        encode = make(
            None,
            encoder.default,
            json.encoder.encode_basestring,
            None,
            ":",
            ",",
            encoder.sort_keys,
            False,
            False,
        )

        def fast(value: Any) -> str:
            return "".join(encode(value, 0))

        sample = ["a", 1, -2, True, None, 1.5, 'é\n"', {"b": [1, None], "a": {"c": "d"}}, []]
        if fast(sample) != encoder.encode(sample) or fast("é") != encoder.encode("é"):
            return encoder.encode
        fast([math.nan])  # must refuse NaN as the encoder does
    except ValueError:
        return fast
    except Exception:  # another Python's private signature
        return encoder.encode
    return encoder.encode


_encode_json = _c_encoder(_ENCODER)

#: A ``changes`` document as it is stored: compact, keys in the document's own order.
_encode_stored = _c_encoder(
    json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
)


#: A JSON string literal, as the encoder writes it (``ensure_ascii=False``).
_string: Callable[[str], str] = json.encoder.encode_basestring


def _text(value: Any) -> str:
    """The JSON text of a canonical JSON value, as :func:`dumps` writes it."""
    kind = type(value)
    if kind is str:
        return _string(value)
    if kind is int:
        return f"{value}"
    if value is None:
        return "null"
    return _encode_json(value)


# One column of a batch of rows: ``prefix + value`` per row (``""`` for NULL), where the prefix is
# the column's name in the array (``,"name",``) and the value its canonical JSON text. The common
# exact types take a direct path that gives the converter's text; all else goes through it.
_Pieces = Callable[[str, Callable[[Any], Any], Sequence[Any]], list[str]]


def _piece(prefix: str, convert: Callable[[Any], Any], value: Any) -> str:
    return "" if value is None else prefix + _text(convert(value))


def _pieces(prefix: str, convert: Callable[[Any], Any], values: Sequence[Any]) -> list[str]:
    return [_piece(prefix, convert, v) for v in values]


def _str_pieces(prefix: str, convert: Callable[[Any], Any], values: Sequence[Any]) -> list[str]:
    string = _string
    return [
        f"{prefix}{string(v)}" if type(v) is str else _piece(prefix, convert, v) for v in values
    ]


def _int_pieces(prefix: str, convert: Callable[[Any], Any], values: Sequence[Any]) -> list[str]:
    return [f"{prefix}{v}" if type(v) is int else _piece(prefix, convert, v) for v in values]


def _datetime_pieces(
    prefix: str, convert: Callable[[Any], Any], values: Sequence[Any]
) -> list[str]:
    naive = dt.datetime
    return [
        f'{prefix}"{v.isoformat()}"'
        if type(v) is naive and v.tzinfo is None
        else _piece(prefix, convert, v)
        for v in values
    ]


def _decimal_pieces(prefix: str, convert: Callable[[Any], Any], values: Sequence[Any]) -> list[str]:
    """``str(value)`` where it is already ``format(value.normalize(), "f")``: plain notation
    (no exponent), no trailing zero after the point, not zero, and no more digits than the
    context's precision (``normalize`` would round them). Non-finite values are ``str`` too."""
    precision = decimal.getcontext().prec
    out = []
    for v in values:
        if type(v) is Decimal:
            s = str(v)
            if "E" not in s and len(s) <= precision:
                if "." in s:
                    if s[-1] != "0":
                        out.append(f'{prefix}"{s}"')
                        continue
                elif s != "0" and s != "-0":
                    out.append(f'{prefix}"{s}"')
                    continue
        out.append(_piece(prefix, convert, v))
    return out


#: Converters whose exact-type values have a direct path (see :data:`_Pieces`).
_DIRECT: dict[Callable[[Any], Any], _Pieces] = {
    _as_str: _str_pieces,
    _as_int: _int_pieces,
    _as_datetime: _datetime_pieces,
    _as_decimal: _decimal_pieces,
}

#: Per history table, each hashed snapshot column in table order: its name, its prefix in the
#: array, its converter and how a batch of its values is written.
_Plan = list[tuple[str, str, Callable[[Any], Any], _Pieces]]
_PLANS: weakref.WeakKeyDictionary[sa.Table, _Plan] = weakref.WeakKeyDictionary()


def _plan(history: sa.Table) -> _Plan:
    plan = _PLANS.get(history)
    if plan is None:
        plan = []
        for column in history.columns:
            if column.name in _UNHASHED or column.name in (OPERATION, CHANGES):
                continue
            convert = converter(column.type)
            prefix = f",{_string(column.name)},"
            plan.append((column.name, prefix, convert, _DIRECT.get(convert, _pieces)))
        _PLANS[history] = plan
    return plan


def _operation(value: Any) -> str:
    if isinstance(value, str):  # an Operation is a str: its value
        return "[" + _string(value)
    if isinstance(value, enum.Enum):
        value = value.value
    return "[" + _text(value)


class JSONText(str):
    """A ``changes`` document's JSON text, made by :func:`stored_text`: the history INSERT
    sends it as it is, instead of the driver serializing the document (see
    ``versioning.recording``)."""

    __slots__ = ()


class SortedJSONText(JSONText):
    """A :class:`JSONText` that is also the document's canonical text (:func:`dumps`): its keys
    were in sorted order already. The row's hash takes it as it is, instead of encoding the
    document a second time."""

    __slots__ = ()


def stored_text(value: Any) -> JSONText | None:
    """The JSON text a ``changes`` document is stored as (compact; keys in the document's order,
    nested ones too, as the driver would keep them), or ``None`` if it is not plain JSON (it then
    goes to the driver as a document). A :class:`SortedJSONText` when that is also its canonical
    text."""
    try:
        text = _encode_stored(value)
    except (TypeError, ValueError):
        return None
    # Sorted already if no object is nested in it (no other brace, one inside a string too:
    # that one only costs the second encoding) and its own keys are in order.
    if type(value) is dict and text.find("{", 1) == -1:
        keys = list(value)
        try:
            if keys == sorted(keys):
                return SortedJSONText(text)
        except TypeError:  # keys of mixed types: the canonical encoding refuses them too
            pass
    return JSONText(text)


def _changes(value: Any) -> str:
    # The changes document is plain JSON already (see versioning.encoding), as written and as
    # read back; _json only if it is not. A SortedJSONText is its canonical text already.
    if value is None:
        return ",null]"
    if type(value) is SortedJSONText:
        return f",{value}]"
    try:
        return f",{_encode_json(value)}]"
    except (TypeError, ValueError):
        return f",{_encode_json(_json(value))}]"


def rows_bytes(history: sa.Table, rows: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The canonical bytes of each history row (each keyed by history column name).

    A row's bytes are ``[operation, column, value, column, value, ..., changes]``: the
    operation's stored value, each column of the row that the history table has and that is not
    ``NULL`` (in table order, version and transaction ids left out), and the ``changes``
    document, as one JSON array (:func:`dumps`). ``NULL`` columns are left out, so a column
    added to the history table later (``NULL`` in older rows) leaves their hashes as they were.
    A row is what :func:`versioning.personal.committed_view` returned: a column it leaves out is
    not covered. The rows are encoded column by column, which costs less per row than one by one.
    """
    if not rows:
        return []
    columns = [[_operation(row.get(OPERATION)) for row in rows]]
    for name, prefix, convert, pieces in _plan(history):
        columns.append(pieces(prefix, convert, [row.get(name) for row in rows]))
    columns.append([_changes(row.get(CHANGES)) for row in rows])
    return ["".join(parts).encode() for parts in zip(*columns, strict=True)]


def row_hashes(history: sa.Table, rows: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The 32-byte SHA-256 of each row's :func:`rows_bytes`."""
    sha256 = hashlib.sha256
    return [sha256(data).digest() for data in rows_bytes(history, rows)]


def row_bytes(history: sa.Table, row: Mapping[str, Any]) -> bytes:
    """The canonical bytes of one history row (see :func:`rows_bytes`)."""
    return rows_bytes(history, [row])[0]


def row_hash(history: sa.Table, row: Mapping[str, Any]) -> bytes:
    """The 32-byte SHA-256 of :func:`row_bytes`."""
    return hashlib.sha256(row_bytes(history, row)).digest()


def transaction_bytes(values: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a transaction row: id, issued_at (UTC), actor, source_ip,
    request_id, reason and extra (a JSON document)."""
    issued_at = values["issued_at"]
    extra = values.get("extra")
    return dumps(
        [
            int(values["id"]),
            None if issued_at is None else _datetime(issued_at),
            values.get("actor"),
            values.get("source_ip"),
            values.get("request_id"),
            values.get("reason"),
            _json(extra) if extra else None,
        ]
    )


#: Characters of a row hash's prefix as a digest row lists it: its first 6 bytes in base64.
PREFIX_CHARS = 8


def row_prefix(hash_: bytes) -> str:
    """What a digest row lists of one row hash, to locate a changed row: its first 6 bytes in
    base64 (8 characters; a changed row whose prefix stays the same is still caught by the
    segment's digest, only not named)."""
    return base64.b64encode(hash_[:6]).decode()


def prefixes(hashes: Sequence[bytes]) -> str:
    """The :func:`row_prefix` of each hash, one after the other, as one string per table.

    Six bytes are a whole number of base64 digits, so this is one encoding of all the
    prefixes. Short on purpose: a digest row of 500 rows holds 4,000 characters, which InnoDB
    keeps in the row and PostgreSQL in a page of its own less often than twice that (hex)."""
    return base64.b64encode(b"".join([h[:6] for h in hashes])).decode()


def listed_prefixes(value: Any) -> list[str]:
    """The prefixes :func:`prefixes` wrote, one per row; nothing for anything else (a digest row
    changed by hand)."""
    if isinstance(value, str):
        return [value[i : i + PREFIX_CHARS] for i in range(0, len(value), PREFIX_CHARS)]
    return []


def segment_bytes(tables: Sequence[tuple[str, Sequence[bytes]]]) -> bytes:
    """What a digest segment covers of its history rows: per table (sorted by name), its name,
    row count and the full row hashes in write order."""
    parts: list[bytes] = []
    for name, hashes in tables:
        encoded = name.encode()
        parts.append(len(encoded).to_bytes(4, "big") + encoded)
        parts.append(len(hashes).to_bytes(8, "big"))
        parts.extend(hashes)
    return b"".join(parts)


def segment_digest(
    previous: bytes, tables: Sequence[tuple[str, Sequence[bytes]]], note: str | None
) -> bytes:
    """The 32-byte digest of a segment: SHA-256 over the previous segment's digest (segment 1:
    the SHA-256 of the transaction row's :func:`transaction_bytes`), the rows' hashes
    (:func:`segment_bytes`) and the note."""
    digest = hashlib.sha256(previous)
    digest.update(segment_bytes(tables))
    digest.update(dumps(note))
    return digest.digest()


def event_hash(values: Mapping[str, Any]) -> bytes:
    """The 32-byte SHA-256 of an event row's canonical bytes: ``[action, outcome, target,
    details]`` as one JSON array (the row's id and transaction id are left out, as a history
    row's are: the digest row of the transaction ties them)."""
    details = values.get("details")
    return hashlib.sha256(
        dumps(
            [
                values.get("action"),
                values.get("outcome"),
                values.get("target"),
                None if details is None else _json(details),
            ]
        )
    ).digest()
