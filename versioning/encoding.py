"""Turning column values into JSON for the ``changes`` document, and back.

Values are encoded by their Python type into plain JSON (strings, numbers, booleans, lists, objects)
so the stored document is readable and canonically serializable; they are decoded by the *column's*
type, so a ``Decimal`` column gives back a ``Decimal``, a ``DateTime`` column a ``datetime``, and so
on. Values of a ``TypeDecorator`` that are not plain are encoded through the decorator's own bind
processing and decoded through its result processing; the items of an ``ARRAY`` by its item type.
A value the column's type no longer accepts (the model changed since it was recorded) is returned as
it is in the document.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import types as sqltypes
from sqlalchemy.engine import Dialect

from versioning.errors import EncodingError

__all__ = ["decode", "decoder", "encode"]


def _encode_plain(value: Any) -> Any:
    """JSON form of a plain value, or raise ``TypeError`` if it has none."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {str(k): _encode_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode_plain(v) for v in value]
    raise TypeError(type(value).__name__)


def _overrides(type_: sqltypes.TypeDecorator[Any], method: str) -> bool:
    return getattr(type(type_), method) is not getattr(sqltypes.TypeDecorator, method)


def encode(type_: sqltypes.TypeEngine[Any], value: Any, dialect: Dialect, where: str) -> Any:
    """Encode ``value`` of a column of type ``type_``; ``where`` names the column for errors.

    A ``TypeDecorator`` that converts values on the way in encodes what it would store (so the
    recorded value is the stored one, e.g. a normalised e-mail address).
    """
    if (
        value is not None
        and isinstance(type_, sqltypes.TypeDecorator)
        and _overrides(type_, "process_bind_param")
    ):
        processed = type_.process_bind_param(value, dialect)
        return encode(type_.load_dialect_impl(dialect), processed, dialect, where)
    if isinstance(type_, sqltypes.ARRAY) and isinstance(value, list | tuple):
        item_type = type_.item_type
        return [
            encode(type_ if isinstance(item, list | tuple) else item_type, item, dialect, where)
            for item in value
        ]
    try:
        return _encode_plain(value)
    except TypeError:
        pass
    raise EncodingError(
        f"cannot record the value {value!r} of {where} ({type(value).__name__}) in the history's "
        f"changes; use a column type whose Python values are plain (str, numbers, Decimal, "
        f"date/time, UUID, bytes, Enum, JSON) or a TypeDecorator that converts it, or exclude "
        f"the column"
    )


def _python_type(type_: sqltypes.TypeEngine[Any]) -> type | None:
    try:
        return type_.python_type
    except NotImplementedError:
        return None


def _decode_plain(python_type: type | None, type_: sqltypes.TypeEngine[Any], data: Any) -> Any:
    if isinstance(type_, sqltypes.Enum) and type_.enum_class is not None:
        return type_.enum_class[data]
    if python_type is None or isinstance(data, python_type):
        if python_type is float and isinstance(data, int) and not isinstance(data, bool):
            return float(data)
        return data
    if python_type is Decimal:
        return Decimal(str(data))
    if python_type is float:
        return float(data)
    if python_type is dt.datetime:
        return dt.datetime.fromisoformat(data)
    if python_type is dt.date:
        return dt.date.fromisoformat(data)
    if python_type is dt.time:
        return dt.time.fromisoformat(data)
    if python_type is dt.timedelta:
        return dt.timedelta(microseconds=data)
    if python_type is uuid.UUID:
        return uuid.UUID(data)
    if python_type is bytes:
        return base64.b64decode(data)
    if issubclass(python_type, enum.Enum):
        return python_type[data]
    return data


def decode(type_: sqltypes.TypeEngine[Any], data: Any, dialect: Dialect) -> Any:
    """Decode a JSON value written by :func:`encode` for a column of type ``type_``.

    History outlives the model: a value the column's type no longer accepts (an ``Enum`` member
    since removed, a column whose type changed) comes back as it was stored in the document —
    a ``str``, number, ``bool``, list or dict — rather than making the version unreadable.
    """
    try:
        return _decode(type_, data, dialect)
    except (LookupError, ValueError, TypeError, ArithmeticError):
        return data


def _decode(type_: sqltypes.TypeEngine[Any], data: Any, dialect: Dialect) -> Any:
    if data is None:
        return None
    if isinstance(type_, sqltypes.ARRAY) and isinstance(data, list):
        item_type = type_.item_type
        return [
            _decode(type_ if isinstance(item, list) else item_type, item, dialect) for item in data
        ]
    if isinstance(type_, sqltypes.TypeDecorator):
        if _overrides(type_, "process_bind_param"):
            stored = _decode(type_.load_dialect_impl(dialect), data, dialect)
            if _overrides(type_, "process_result_value"):
                return type_.process_result_value(stored, dialect)
            return stored
        if _overrides(type_, "process_result_value"):
            return type_.process_result_value(data, dialect)
    return _decode_plain(_python_type(type_), type_, data)


#: What a converter raises on a value it does not accept (``decode`` then returns the value).
_REFUSED = (LookupError, ValueError, TypeError, ArithmeticError)

#: The conversion ``_decode_plain`` applies to a value that is not yet of the column's Python type.
_CONVERTERS: dict[type, Callable[[Any], Any]] = {
    Decimal: lambda data: Decimal(str(data)),
    float: float,
    dt.datetime: dt.datetime.fromisoformat,
    dt.date: dt.date.fromisoformat,
    dt.time: dt.time.fromisoformat,
    dt.timedelta: lambda data: dt.timedelta(microseconds=data),
    uuid.UUID: uuid.UUID,
    bytes: base64.b64decode,
}


def _unchanged(data: Any) -> Any:
    return data


def decoder(type_: sqltypes.TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any]:
    """``decode`` for one column type and dialect, worked out once: call it per value.

    It gives exactly what ``decode(type_, data, dialect)`` gives. A plain type gets a function
    that checks the value's type and converts it if needed; an ``ARRAY``, a ``TypeDecorator``
    and an ``Enum`` with its class go through ``decode`` itself.
    """
    if isinstance(type_, sqltypes.ARRAY | sqltypes.TypeDecorator) or (
        isinstance(type_, sqltypes.Enum) and type_.enum_class is not None
    ):
        return lambda data: decode(type_, data, dialect)
    python_type = _python_type(type_)
    if python_type is None:
        return _unchanged
    convert = _CONVERTERS.get(python_type)
    if convert is None:
        if not issubclass(python_type, enum.Enum):
            return _unchanged  # str, int, bool, dict, list...: returned as they are
        convert = python_type.__getitem__
    kind: type = python_type

    def decode_one(data: Any) -> Any:
        if data is None or isinstance(data, kind):
            return data
        try:
            return convert(data)
        except _REFUSED:
            return data

    return decode_one
