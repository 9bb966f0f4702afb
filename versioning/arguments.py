"""Checking the arguments of the readers and of ``restore``, before any query is sent.

A driver given a value of the wrong type answers differently on each backend: ``"1"`` for an
integer key matches on SQLite and is a ``ProgrammingError`` on PostgreSQL, a string for a UUID key
works on PostgreSQL only, ``None`` matches nothing anywhere. So every argument is checked here, in
Python, against what the model declares, and a value the key column cannot hold raises
:class:`~versioning.ArgumentError` with the same message on every backend. Nothing is coerced
that SQLAlchemy would not store as is: ``"1"`` is not an ``int``, ``"…"`` is not a ``UUID``.

What a key value must be, by the key column's type:

* ``Integer`` (and its subclasses): an ``int``, not a ``bool``, from -2**63 to 2**63 - 1 (any
  object with ``__index__``, such as a NumPy integer, is taken as its ``int``);
* ``String``/``Text``: a ``str`` without NUL and without lone surrogates (no backend stores both);
* ``Uuid``: a ``uuid.UUID``; with ``as_uuid=False`` (``str`` values) a ``str`` in any form
  ``uuid.UUID()`` reads, or a ``uuid.UUID``, turned into the canonical string;
* ``Enum``: a member of its enum class, or one of its names;
* ``Boolean``: a ``bool``; ``Numeric``: a ``Decimal`` or an ``int`` (a ``float`` too for a
  ``Float``), finite; ``Date``: a ``date`` that is not a ``datetime``; ``DateTime``: a ``datetime``;
* any other type: an instance of its ``python_type`` when the type declares one, else anything.

``None`` is never a key value.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import InstanceState, Session, scoped_session, sessionmaker

from versioning.declaration import ModelSpec, require_spec
from versioning.errors import ArgumentError

__all__ = ["model", "moment", "primary_key", "session", "shown", "value_of"]

#: The integers every backend's widest signed integer column holds.
INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)


def _a(name: str) -> str:
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def shown(value: object) -> str:
    """``value`` for an error message: its ``repr``, except a model instance, whose ``repr``
    (the application's) may show values a mask keeps out of history."""
    if isinstance(sa.inspect(value, raiseerr=False), InstanceState):
        return f"{_a(type(value).__name__)} instance"
    return repr(value)


def _session_advice(got: object, function: str) -> str:
    """What to pass instead of ``got`` to the sync ``function``."""
    name = type(got).__name__
    asyncio = sys.modules.get("sqlalchemy.ext.asyncio")  # not imported: got cannot be async
    if asyncio is not None and isinstance(
        got, asyncio.AsyncSession | asyncio.async_scoped_session | asyncio.async_sessionmaker
    ):
        return f"with an {name}, call await versioning.asyncio.{function}(session, ...)"
    if isinstance(got, sa.Engine):
        return f"open one: with Session(engine) as session: versioning.{function}(session, ...)"
    if isinstance(got, sa.Connection):
        return "open one on the connection: Session(bind=connection)"
    if isinstance(got, sessionmaker):
        return f"call the factory: with {name}() as session, or pass a Session it made"
    return "e.g. with Session(engine) as session"


def session(got: object, function: str) -> Session:
    """The ``Session`` to read or restore with: ``got`` itself, or the current session of a
    ``scoped_session``."""
    if isinstance(got, Session):
        return got
    if isinstance(got, scoped_session):
        current: Session = got()
        return current
    raise ArgumentError(
        f"versioning.{function}() takes a sqlalchemy.orm.Session, got {_a(type(got).__name__)}: "
        f"{_session_advice(got, function)}"
    )


def model(got: object, function: str) -> ModelSpec:
    """The spec of the model class ``got`` (``ConfigurationError`` if it is not versioned)."""
    if not isinstance(got, type):
        hint = (
            f"; for a model instance, call versioning.{function}(session, type(obj), key, ...)"
            if sa.inspect(got, raiseerr=False) is not None
            else ""
        )
        raise ArgumentError(f"versioning.{function}() takes a model class, got {shown(got)}{hint}")
    return require_spec(got)


def _shape(spec: ModelSpec) -> str:
    keys = spec.pk_keys
    if len(keys) == 1:
        return f"one {keys[0]} value (or a tuple or list holding it)"
    names = ", ".join(keys)
    example = ", ".join(f"{k!r}: ..." for k in keys)
    return (
        f"a tuple or list of {len(keys)} values in the order ({names}), or a dict by attribute "
        f"name {{{example}}}"
    )


def primary_key(spec: ModelSpec, pk: Any) -> tuple[Any, ...]:
    """``pk`` as a tuple in the mapper's key order, each value checked against its column type.

    ``pk`` is a scalar (one-column keys), a tuple or list in key order, or a dict by attribute
    name, as ``Session.get`` takes.
    """
    keys = spec.pk_keys
    name = spec.model.__name__
    if isinstance(pk, Mapping):
        if set(pk) != set(keys):
            raise ArgumentError(
                f"{name} has the primary key ({', '.join(keys)}): the dict must have exactly "
                f"these keys, got {sorted(map(str, pk))}; pass {_shape(spec)}"
            )
        values = tuple(pk[k] for k in keys)
    elif isinstance(pk, tuple | list):
        values = tuple(pk)
    else:
        values = (pk,)
    if len(values) != len(keys):
        raise ArgumentError(
            f"{name} has the primary key ({', '.join(keys)}): pass {_shape(spec)}, got {pk!r}"
        )
    return tuple(value_of(spec, key, value) for key, value in zip(keys, values, strict=True))


def _python_type(column_type: sa.types.TypeEngine[Any]) -> type | None:
    try:
        python_type = column_type.python_type
    except NotImplementedError:  # SQLAlchemy 2.0: a type that does not say
        return None
    return None if python_type is object else python_type


def value_of(spec: ModelSpec, key: str, value: Any) -> Any:
    """``value`` as a value of the key column ``key``, or :class:`ArgumentError` saying what to
    pass."""
    column_type = spec.type_of(key)

    def refuse(expected: str, why: str = "") -> ArgumentError:
        return ArgumentError(
            f"{spec.model.__name__}.{key} is a key column of type {column_type!r}: pass "
            f"{expected}, got {shown(value)} ({type(value).__name__}){why}"
        )

    if value is None:
        raise ArgumentError(
            f"{spec.model.__name__}.{key} is None in the key given: no record has a NULL primary "
            f"key; pass the key of the record"
        )
    if isinstance(value, spec.model):
        raise refuse("a key value", "; to name the record by an instance, pass it alone")
    if isinstance(column_type, sa.Enum):
        return _enum(column_type, value, refuse)
    if isinstance(column_type, sa.Boolean):
        if not isinstance(value, bool):
            raise refuse("a bool")
        return value
    if isinstance(column_type, sa.Integer):
        return _integer(column_type, value, refuse)
    if isinstance(column_type, sa.Uuid):
        return _uuid(column_type, value, refuse)
    if isinstance(column_type, sa.String):
        return _string(value, refuse)
    if isinstance(column_type, sa.Numeric):
        return _number(column_type, value, refuse)
    if isinstance(column_type, sa.Date):
        if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
            raise refuse("a datetime.date")
        return value
    python_type = _python_type(column_type)
    if python_type is not None and not isinstance(value, python_type):
        module = python_type.__module__
        name = python_type.__qualname__
        raise refuse(_a(name if module == "builtins" else f"{module}.{name}"))
    return value


def _integer(column_type: sa.Integer, value: Any, refuse: Callable[..., ArgumentError]) -> int:
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        hint = ""
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            hint = f" (convert it yourself: int({value!r}), and refuse what does not convert)"
        raise refuse("an int", hint)
    number = int(value.__index__())
    low, high = _UINT64 if getattr(column_type, "unsigned", False) else INT64
    if not low <= number <= high:
        raise refuse(f"an int from {low} to {high}", "; no database integer holds it")
    return number


def _string(value: Any, refuse: Callable[..., ArgumentError]) -> str:
    if not isinstance(value, str):
        raise refuse("a str")
    if "\x00" in value:
        raise refuse("a str without NUL", "; PostgreSQL cannot store a NUL in text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise refuse("a str without lone surrogates", "; it cannot be encoded as UTF-8") from None
    # A subclass (a StrEnum member, say) as the plain str it compares as: drivers adapt by type.
    return value if type(value) is str else str.__str__(value)


def _uuid(column_type: sa.Uuid[Any], value: Any, refuse: Callable[..., ArgumentError]) -> Any:
    if column_type.as_uuid:
        if isinstance(value, uuid.UUID):
            return value
        hint = ""
        if isinstance(value, str):
            try:
                uuid.UUID(value)
            except ValueError:
                pass
            else:
                hint = f" (convert it yourself: uuid.UUID({value!r}))"
        raise refuse("a uuid.UUID", hint)
    # ``as_uuid=False``: the attribute's values are strings; compare canonical forms.
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise refuse("a UUID string such as '12345678-1234-5678-1234-567812345678', or a uuid.UUID")


def _enum(column_type: sa.Enum, value: Any, refuse: Callable[..., ArgumentError]) -> Any:
    names = list(column_type.enums)
    enum_class = column_type.enum_class
    if enum_class is not None and isinstance(value, enum_class):
        return value
    if isinstance(value, str) and value in names:
        return value
    expected = f"one of {names}"
    if enum_class is not None:
        expected = f"a {enum_class.__name__} member or its name, {expected}"
    raise refuse(expected)


def _number(column_type: sa.Numeric[Any], value: Any, refuse: Callable[..., ArgumentError]) -> Any:
    floats = not column_type.asdecimal
    allowed: tuple[type, ...] = (float, int) if floats else (decimal.Decimal, int)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise refuse("a float or an int" if floats else "a decimal.Decimal or an int")
    if (isinstance(value, decimal.Decimal) and not value.is_finite()) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        raise refuse("a finite number")
    return value


def moment(at: Any, function: str) -> dt.datetime | int:
    """``at`` as a timezone-aware ``datetime`` or a transaction id (an ``int``)."""
    if isinstance(at, dt.datetime):
        if at.tzinfo is None or at.utcoffset() is None:
            raise ArgumentError(
                f"versioning.{function}() needs a timezone-aware datetime, got the naive {at!r}; "
                f"e.g. datetime.now(timezone.utc)"
            )
        try:
            at.astimezone(dt.UTC)
        except OverflowError:
            raise ArgumentError(
                f"versioning.{function}(): {at!r} is outside the years 1 to 9999 in UTC"
            ) from None
        return at
    if isinstance(at, bool) or not hasattr(type(at), "__index__"):
        raise ArgumentError(
            f"versioning.{function}(): at must be a timezone-aware datetime or a transaction id "
            f"(an int), got {at!r} ({type(at).__name__})"
        )
    number = int(at.__index__())
    low, high = INT64
    if not low <= number <= high:
        raise ArgumentError(
            f"versioning.{function}(): the transaction id {number} is outside {low} to {high}; "
            f"for the latest state, pass datetime.now(timezone.utc)"
        )
    return number
