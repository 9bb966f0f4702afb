"""Which written values a database may store differently from what the session sent.

``Numeric(10, 2)`` rounds ``Decimal("1.005")`` to ``1.01``; MariaDB's ``DATETIME`` drops the
microseconds it has no room for; PostgreSQL's ``CHAR(5)`` pads; SQLite and MariaDB keep no time
zone. History must hold what was stored, so the capture reads such values back after the flush.

Each column type is judged once per dialect: either every value of it is stored exactly as sent
(integers, strings, ``Text``, ``Boolean``, ``Date``, ``JSON``, ``Uuid``, ``LargeBinary``...), or
a check tells, value by value and without I/O, whether this value is known to be stored as sent
(``Decimal("12.30")`` in a ``Numeric(10, 2)`` is; ``Decimal("1.005")`` is not). Only rows holding a
value that fails its check are read back, so common models never cost an extra query. Types the
library does not know are always read back: the rule is never to record a value the database did
not store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect

from versioning import _compat
from versioning.declaration import ModelSpec

__all__ = ["Check", "checks", "exactness", "is_stored_as_sent"]

#: True when a (non-None) value is known to be stored exactly as sent; or the one Python type
#: whose values are (checked inline by the capture: it is on every write's path).
Check = Callable[[Any], bool] | type

_KNOWN_DIALECTS = frozenset({"sqlite", "postgresql", "mysql", "mariadb"})

#: Types whose every value is stored as sent on the backends above.
_EXACT = (
    sqltypes.Integer,
    sqltypes.Boolean,
    sqltypes.Enum,
    sqltypes.Date,
    sqltypes.JSON,
    sqltypes.Uuid,
    sqltypes.LargeBinary,
    sqltypes.VARBINARY,
    postgresql.BYTEA,
    postgresql.INTERVAL,
)

#: Double precision on MariaDB (``FLOAT`` there is single precision).
_DOUBLES = (sqltypes.Double, postgresql.DOUBLE_PRECISION, mysql.DOUBLE)


def _never(value: Any) -> bool:
    return False


def _declared(type_: sqltypes.TypeEngine[Any], dialect: Dialect) -> sqltypes.TypeEngine[Any]:
    """The type a column has on ``dialect``: its ``with_variant()`` one, if it has one."""
    return _compat.variant_mapping(type_).get(dialect.name, type_)


def _is_mariadb(dialect: Dialect) -> bool:
    return dialect.name in ("mysql", "mariadb")


def _fractional(fsp: int | None) -> Check:
    """Datetimes/times without time zone whose microseconds fit in ``fsp`` digits."""
    step = 10 ** (6 - min(max(fsp or 0, 0), 6))

    def check(value: Any) -> bool:
        return (
            isinstance(value, dt.datetime | dt.time)
            and value.tzinfo is None
            and value.microsecond % step == 0
        )

    return check


def _aware(timezone: bool) -> Check:
    def check(value: Any) -> bool:
        return isinstance(value, dt.datetime | dt.time) and (value.tzinfo is not None) is timezone

    return check


def _decimal(precision: int, scale: int) -> Check:
    """Decimals written with exactly ``scale`` digits after the point, within ``precision``."""

    def check(value: Any) -> bool:
        if not isinstance(value, Decimal) or not value.is_finite():
            return False
        _, digits, exponent = value.as_tuple()
        return exponent == -scale and len(digits) <= precision

    return check


def _numeric(declared: sqltypes.Numeric[Any], dialect: Dialect) -> Check | None:
    if not declared.asdecimal:
        return _never
    precision, scale = declared.precision, declared.scale
    if dialect.name == "postgresql":
        if precision is None and scale is None:
            return None  # unconstrained NUMERIC keeps any decimal as written
        return _decimal(precision or 1000, scale or 0)
    if _is_mariadb(dialect):
        return _decimal(precision or 10, scale or 0)
    # SQLite keeps a float (15 significant digits) and gives back a Decimal of the column's scale.
    return _decimal(15, scale if scale is not None else 10)


def _float(declared: sqltypes.Float[Any], dialect: Dialect) -> Check | None:
    if declared.asdecimal:
        return _never
    if dialect.name == "sqlite":
        return None  # REAL is always 8 bytes
    double = isinstance(declared, _DOUBLES) or (declared.precision or 0) > 24
    if dialect.name == "postgresql" and not isinstance(declared, sqltypes.REAL):
        double = double or declared.precision is None  # FLOAT is double precision there
    return None if double else _never


def _datetime(declared: sqltypes.DateTime, dialect: Dialect) -> Check | None:
    if _is_mariadb(dialect):
        return _fractional(getattr(declared, "fsp", None))  # no time zone, whatever it says
    if dialect.name == "postgresql":
        precision = getattr(declared, "precision", None)
        if precision is not None and precision < 6:
            fractional = _fractional(precision)
            aware = _aware(declared.timezone)
            return lambda value: aware(value) and fractional(value.replace(tzinfo=None))
        return _aware(declared.timezone)
    return _aware(False)  # SQLite keeps the wall-clock time and no time zone


def _char(length: int | None, dialect: Dialect) -> Check | None:
    if dialect.name == "postgresql":
        size = length or 1
        return lambda value: isinstance(value, str) and len(value) == size  # padded to size
    if _is_mariadb(dialect):
        return lambda value: isinstance(value, str) and not value.endswith(" ")  # stripped
    return None


def _of_type(declared: sqltypes.TypeEngine[Any]) -> type | None:
    """Values of the type's own Python type (not a subclass: ``True`` in an ``Integer`` column
    is stored as ``1``, a ``datetime`` in a ``Date`` column as a date, ``"5"`` as ``5``)."""
    if isinstance(declared, sqltypes.JSON):
        return None
    try:
        python_type: type = declared.python_type
    except NotImplementedError:
        return None
    return python_type


def exactness(type_: sqltypes.TypeEngine[Any], dialect: Dialect) -> Check | None:
    """``None`` if every value of ``type_`` is stored as sent on ``dialect``, else a check.

    A type whose every value of its own Python type is stored as sent gets a check of the
    value's type: a value of another type is converted on the way in.
    """
    return _exactness(type_, dialect, typed=True)


def _exactness(type_: sqltypes.TypeEngine[Any], dialect: Dialect, typed: bool) -> Check | None:
    """``typed=False`` trusts the value's type (a TypeDecorator's bind output, an array item)."""
    declared = _declared(type_, dialect)
    if isinstance(declared, sqltypes.Interval):
        if declared.native and dialect.name == "postgresql":
            return None
        if _is_mariadb(dialect):  # an epoch-based DATETIME without fractional seconds
            return lambda value: isinstance(value, dt.timedelta) and value.microseconds == 0
        return None
    if isinstance(declared, sqltypes.TypeDecorator):
        inner = _exactness(declared.load_dialect_impl(dialect), dialect, typed=False)
        if inner is None or not _binds(declared):
            return inner
        decorator = declared

        def processed(value: Any) -> bool:
            stored = decorator.process_bind_param(value, dialect)
            return stored is None or inner(stored)

        return processed
    if dialect.name not in _KNOWN_DIALECTS:
        return None if isinstance(declared, _EXACT) else _never
    if isinstance(declared, sqltypes.ARRAY):
        item = _exactness(declared.item_type, dialect, typed=False)
        return None if item is None else _never
    if isinstance(declared, sqltypes.CHAR | sqltypes.NCHAR):
        return _char(declared.length, dialect)
    if isinstance(declared, sqltypes.BINARY):
        if _is_mariadb(dialect):  # right-padded with zero bytes
            size = declared.length or 1
            return lambda value: isinstance(value, bytes) and len(value) == size
        return None
    if isinstance(declared, (*_EXACT, sqltypes.String)):
        return _of_type(declared) if typed else None
    if isinstance(declared, sqltypes.Float):
        return _float(declared, dialect)
    if isinstance(declared, sqltypes.Numeric):
        return _numeric(declared, dialect)
    if isinstance(declared, sqltypes.DateTime):
        return _datetime(declared, dialect)
    if isinstance(declared, sqltypes.Time):
        if _is_mariadb(dialect):
            return _fractional(getattr(declared, "fsp", None))
        return _aware(bool(declared.timezone) and dialect.name == "postgresql")
    return _never


def _binds(type_: sqltypes.TypeDecorator[Any]) -> bool:
    return type(type_).process_bind_param is not sqltypes.TypeDecorator.process_bind_param


def checks(spec: ModelSpec, dialect: Dialect) -> dict[str, Check]:
    """The versioned columns of ``spec`` whose stored value may differ on ``dialect``.

    Computed once per model and dialect; empty for models of integers, strings and the like.
    """
    found = spec.stored_checks.get(dialect.name)
    if found is None:
        found = {}
        for key in spec.attrs:
            check = exactness(spec.type_of(key), dialect)
            if check is not None:
                found[key] = check
        spec.stored_checks[dialect.name] = found
    return found


def is_stored_as_sent(check: Check, value: Any) -> bool:
    """Whether ``value`` is known to come back from the database unchanged."""
    if value is None:
        return True
    if isinstance(check, type):
        return value.__class__ is check
    try:
        return check(value)
    except Exception:  # a TypeDecorator refusing the value: the flush says so itself
        return False
