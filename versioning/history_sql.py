"""The SQL that turns old and new rows into history rows, for the database to run.

:func:`versioning.history_rows.history_row` builds a history row in Python from values the
session read. Writing history inside the database (triggers, and an ``INSERT ... SELECT`` for a
bulk ``update().where()``) needs the same row computed by SQL from the stored values, and it must
be indistinguishable: the same snapshot, and a ``changes`` document that
:func:`versioning.encoding.decode` reads back to the same Python values on every backend. This
module builds those expressions with SQLAlchemy Core; it never runs them:

* :func:`value_json` — the JSON text of one column value, as :func:`versioning.encoding.encode`
  would write it (``Decimal`` a string, ``datetime`` an ISO string, ``timedelta`` integer
  microseconds, bytes base64, ``Enum`` its member's name, JSON as stored...);
* :func:`changes_json` — the ``changes`` document of an update from an old and a new row source:
  the changed columns only, in column order, each ``[old, new]``, or SQL ``NULL`` when nothing
  changed (such an update records nothing);
* :func:`snapshot_columns` — the snapshot of a row source, masked columns through their mask's
  SQL form (:func:`mask_sql`).
* :func:`personal_json` — a model with personal columns: each row's fresh random salts.

Every value is turned into JSON *text* by the backend's own functions, and the document is one
text concatenation (PostgreSQL: cast to ``json``). One approach on every backend, it is cheap
(no JSON object is built and filtered) and gives the compact text Python stores, in column order;
a stored JSON value is embedded as stored, and a float may be written with more digits than
Python's shortest form (it reads back as the same float).

Whether a column changed follows Python's rule (``history_row``): NULL-safe, on the stored
values, compared as their Python values are — strings byte for byte whatever the collation
(MariaDB's default ones make ``'a' = 'A'``), numbers and timestamps by value, JSON documents by
their content (PostgreSQL ``jsonb``, MariaDB ``JSON_EQUALS``; SQLite compares their text). A
masked column compares its real values and records the masked pair.

Whatever a backend cannot encode in SQL is refused when the SQL is built, never when a row is
written: a :class:`~versioning.errors.ConfigurationError` names the model, column and type, and
what to do (keep that model on session capture, or exclude the column).

Assumptions, as for the session path: a ``TypeDecorator`` that converts values on the way in
stores what its ``process_bind_param`` gives for the value it reads back (history records that
stored form); values in SQLite are in SQLAlchemy's storage formats (``DateTime`` text
``YYYY-MM-DD HH:MM:SS[.ffffff]``, ``Uuid`` 32 hex digits...).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from versioning import _compat
from versioning.declaration import ModelSpec
from versioning.encoding import encode
from versioning.errors import ConfigurationError
from versioning.masks import Mask, redact

__all__ = [
    "changes_json",
    "distinct",
    "mask_sql",
    "personal_json",
    "snapshot_columns",
    "value_json",
]

Text = sa.ColumnElement[str]
Expr = sa.ColumnElement[Any]

_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _kind(dialect: Dialect) -> str:
    """``"postgresql"``, ``"mariadb"`` or ``"sqlite"``: the backends with an SQL form."""
    name = dialect.name
    if name == "mariadb" or (name == "mysql" and getattr(dialect, "is_mariadb", False)):
        return "mariadb"
    if name in ("postgresql", "sqlite"):
        return name
    raise ConfigurationError(
        f"versioning builds history in SQL for PostgreSQL, MariaDB and SQLite, not "
        f"{dialect.name!r} (MySQL's JSON functions differ from MariaDB's): keep session capture "
        f"on this database"
    )


def _lit(text: str) -> Text:
    """A string constant (a bound literal: ``literal_binds`` renders it for DDL)."""
    return sa.literal(text, sa.Text())


def _cat(dialect: Dialect, *parts: Expr) -> Text:
    """Text concatenation; no part is ever NULL here (callers make sure)."""
    if _kind(dialect) == "sqlite":  # no concat() before SQLite 3.44
        out: Any = parts[0]
        for part in parts[1:]:
            out = sa.type_coerce(out, sa.Text()) + sa.type_coerce(part, sa.Text())
        return sa.type_coerce(out, sa.Text())
    return sa.func.concat(*parts, type_=sa.Text())


def _as_text(expr: Expr, dialect: Dialect) -> Text:
    """``expr`` as text: on MariaDB in one character set, so values of columns with different
    collations concatenate (MariaDB refuses to mix them)."""
    kind = _kind(dialect)
    if kind == "mariadb":
        return sa.cast(expr, mysql.CHAR(charset="utf8mb4"))
    return sa.cast(expr, sa.Text())


def _quoted(text: Expr, dialect: Dialect) -> Text:
    """A JSON string literal of ``text`` (escaped by the database's JSON functions)."""
    kind = _kind(dialect)
    if kind == "postgresql":
        return sa.cast(sa.func.to_json(sa.cast(text, sa.Text())), sa.Text())
    if kind == "mariadb":
        return _as_text(sa.func.json_quote(text), dialect)
    return sa.func.json_quote(sa.cast(text, sa.Text()), type_=sa.Text())


def _in_quotes(text: Expr, dialect: Dialect) -> Text:
    """``"text"`` for a text known to need no escaping (ISO dates, base64, hex...)."""
    return _cat(dialect, _lit('"'), text, _lit('"'))


def _unsupported(where: str, type_: Any, dialect: Dialect, why: str) -> ConfigurationError:
    model = where.split(".", 1)[0] if "." in where else "the model"
    return ConfigurationError(
        f"{where} ({type_!r}) cannot be recorded by SQL on {dialect.name}: {why}. Keep {model} "
        f"on session capture, or exclude the column (__versioned__ = {{'exclude': [...]}})"
    )


def _declared(type_: sqltypes.TypeEngine[Any], dialect: Dialect) -> sqltypes.TypeEngine[Any]:
    """The type a column has on ``dialect``: its ``with_variant()`` one, if it has one."""
    return _compat.variant_mapping(type_).get(dialect.name, type_)


def _overrides(type_: sqltypes.TypeDecorator[Any], method: str) -> bool:
    return getattr(type(type_), method) is not getattr(sqltypes.TypeDecorator, method)


def _stored_type(
    type_: sqltypes.TypeEngine[Any], dialect: Dialect, where: str
) -> sqltypes.TypeEngine[Any]:
    """The type whose stored values :func:`value_json` encodes for a column of ``type_``.

    A ``TypeDecorator`` that converts on the way in is encoded (by ``encode``) as what it
    stores, so as its dialect implementation; one that only converts on the way out records a
    Python value SQL cannot compute, and is refused.
    """
    type_ = _declared(type_, dialect)
    while isinstance(type_, sqltypes.TypeDecorator) and not _compat.is_interval(type_):
        if not _overrides(type_, "process_bind_param") and any(
            _overrides(type_, m) for m in ("process_result_value", "result_processor")
        ):
            raise _unsupported(
                where,
                type_,
                dialect,
                "its TypeDecorator converts values read (process_result_value) but not values "
                "written, so history records a Python value the database never holds",
            )
        if _overrides(type_, "bind_processor"):
            raise _unsupported(
                where, type_, dialect, "its TypeDecorator converts values in bind_processor"
            )
        type_ = _declared(type_.load_dialect_impl(dialect), dialect)
    return type_


# --- one value ------------------------------------------------------------------------------------


def value_json(
    type_: sqltypes.TypeEngine[Any], expr: Expr, dialect: Dialect, where: str = "column"
) -> Text:
    """The JSON text of ``expr`` (a value of a column of type ``type_``) as
    :func:`versioning.encoding.encode` writes it; ``null`` for SQL NULL.

    ``where`` (``"Model.column"``) names the column in the error raised, when the SQL is built,
    for a type this backend cannot encode in SQL.
    """
    text = _value_text(_stored_type(type_, dialect, where), expr, dialect, where)
    return sa.case((expr.is_(None), _lit("null")), else_=text)


def _value_text(type_: sqltypes.TypeEngine[Any], x: Expr, dialect: Dialect, where: str) -> Text:
    """The JSON text of a non-NULL value ``x`` stored as ``type_``."""
    kind = _kind(dialect)
    if isinstance(type_, sqltypes.ARRAY):
        return _array(type_, x, dialect, where)
    if isinstance(type_, sqltypes.JSON):
        return _as_text(x, dialect)
    if isinstance(type_, sqltypes.Boolean):
        truth = x if kind == "postgresql" else sa.type_coerce(x, sa.Integer()) != 0
        return sa.case((truth, _lit("true")), else_=_lit("false"))
    if isinstance(type_, sqltypes.Enum):
        return _enum(type_, x, dialect)
    if isinstance(type_, sqltypes.Uuid):
        return _in_quotes(_uuid(type_, x, dialect), dialect)
    if isinstance(type_, sqltypes.String):
        if kind == "postgresql":  # the type's own output: CHAR(n) keeps its padding
            return sa.cast(sa.func.to_json(x), sa.Text())
        return _quoted(x, dialect)
    if _compat.is_interval(type_):
        return _as_text(_interval(x, dialect), dialect)
    if isinstance(type_, sqltypes.DateTime):
        return _in_quotes(_datetime(type_, x, dialect, where), dialect)
    if isinstance(type_, sqltypes.Date):
        return _in_quotes(_date(x, dialect), dialect)
    if isinstance(type_, sqltypes.Time):
        return _in_quotes(_time(type_, x, dialect, where), dialect)
    if isinstance(type_, sqltypes.Float):
        if type_.asdecimal:
            raise _unsupported(
                where, type_, dialect, "a Float read as Decimal is rounded by SQLAlchemy"
            )
        return _float(x, dialect)
    if isinstance(type_, sqltypes.Numeric):
        if not type_.asdecimal:
            return _float(x, dialect)
        return _in_quotes(_decimal(type_, x, dialect), dialect)
    if isinstance(type_, sqltypes.Integer):
        return _as_text(x, dialect)
    if _compat.is_binary(type_):
        return _in_quotes(_base64(x, dialect), dialect)
    raise _unsupported(
        where,
        type_,
        dialect,
        "versioning has no SQL form for this type (see versioning.history_sql for the ones it has)",
    )


def _enum(type_: sqltypes.Enum, x: Expr, dialect: Dialect) -> Text:
    """An ``Enum`` with a class is recorded by member name, whatever it stores."""
    stored = _as_text(x, dialect) if _kind(dialect) != "sqlite" else x
    members = type_.enum_class.__members__.values() if type_.enum_class is not None else ()
    lookup = _compat.enum_stored_values(type_)
    names = {lookup[m]: m.name for m in members if m in lookup}
    if all(key == name for key, name in names.items()):
        return _quoted(stored, dialect)
    if _kind(dialect) == "mariadb":  # byte for byte: the column's collation may ignore case
        stored = sa.cast(stored, sa.LargeBinary())
    return sa.case(
        *((stored == sa.literal(key), _lit(json.dumps(name))) for key, name in names.items()),
        else_=_quoted(x, dialect),  # a value the class no longer has: decoded as the string
    )


def _uuid(type_: sqltypes.Uuid[Any], x: Expr, dialect: Dialect) -> Text:
    """The canonical form ``str(uuid.UUID(...))`` of a stored UUID."""
    kind = _kind(dialect)
    if kind == "postgresql" and type_.native_uuid:
        return sa.cast(x, sa.Text())
    # CHAR(32) (SQLAlchemy's form), or text with hyphens: lower-case hex, hyphenated.
    hexed = sa.func.lower(sa.func.replace(_as_text(x, dialect), _lit("-"), _lit("")))
    parts = [(1, 8), (9, 4), (13, 4), (17, 4), (21, 12)]
    pieces: list[Expr] = []
    for start, length in parts:
        if pieces:
            pieces.append(_lit("-"))
        pieces.append(sa.func.substr(hexed, start, length))
    return _cat(dialect, *pieces)


def _date(x: Expr, dialect: Dialect) -> Text:
    kind = _kind(dialect)
    if kind == "postgresql":
        return sa.func.to_char(x, _lit("YYYY-MM-DD"))
    if kind == "mariadb":
        return _as_text(sa.func.date_format(x, _lit("%Y-%m-%d")), dialect)
    return sa.func.substr(x, 1, 10)


def _fraction(micro: Expr, dialect: Dialect) -> Text:
    """``.ffffff`` for six digits of microseconds, ``''`` when they are 0 (``isoformat``)."""
    return sa.case((micro == _lit("000000"), _lit("")), else_=_cat(dialect, _lit("."), micro))


def _sqlite_fraction(x: Expr, start: int, dialect: Dialect) -> Text:
    """The fraction of a SQLite time text whose ``.`` is at ``start`` (any digits, 0 to 6)."""
    digits = sa.func.substr(
        _cat(dialect, sa.func.substr(x, start + 1), _lit("000000")), 1, 6, type_=sa.Text()
    )
    has = sa.func.substr(x, start, 1) == _lit(".")
    return sa.case((has, _fraction(digits, dialect)), else_=_lit(""))


def _offset(seconds: Expr, dialect: Dialect) -> Text:
    """``+HH:MM`` (``:SS`` too when not 0) of a UTC offset in seconds, as ``isoformat``."""
    magnitude = sa.func.abs(sa.cast(seconds, sa.Integer()))
    hours = sa.func.lpad(sa.cast(magnitude // 3600, sa.Text()), 2, _lit("0"))
    minutes = sa.func.lpad(sa.cast((magnitude % 3600) // 60, sa.Text()), 2, _lit("0"))
    rest = magnitude % 60
    secs = sa.case(
        (rest == 0, _lit("")),
        else_=_cat(dialect, _lit(":"), sa.func.lpad(sa.cast(rest, sa.Text()), 2, _lit("0"))),
    )
    sign = sa.case((sa.cast(seconds, sa.Integer()) < 0, _lit("-")), else_=_lit("+"))
    return _cat(dialect, sign, hours, _lit(":"), minutes, secs)


def _datetime(type_: sqltypes.DateTime, x: Expr, dialect: Dialect, where: str) -> Text:
    kind = _kind(dialect)
    if kind == "postgresql":
        base = sa.func.to_char(x, _lit('YYYY-MM-DD"T"HH24:MI:SS'))
        text = _cat(dialect, base, _fraction(sa.func.to_char(x, _lit("US")), dialect))
        if type_.timezone:  # in the session's time zone, as the driver reads it
            return _cat(dialect, text, _offset(sa.func.extract("timezone", x), dialect))
        return text
    if kind == "mariadb":
        base = sa.func.date_format(x, _lit("%Y-%m-%dT%H:%i:%s"))
        micro = sa.func.date_format(x, _lit("%f"))
        return _as_text(_cat(dialect, base, _fraction(micro, dialect)), dialect)
    _sqlite_format(type_, dialect, where)
    return _cat(
        dialect,
        sa.func.substr(x, 1, 10),
        _lit("T"),
        sa.func.substr(x, 12, 8),
        _sqlite_fraction(x, 20, dialect),
    )


def _sqlite_format(type_: sqltypes.TypeEngine[Any], dialect: Dialect, where: str) -> None:
    """Refuse a SQLite date/time type stored in a format of the user's (``storage_format=``,
    ``regexp=``); SQLAlchemy's own, with or without microseconds, is read by the SQL here."""
    impl = type_.dialect_impl(dialect)
    stored, pattern = _compat.sqlite_storage(impl)
    default, _ = _compat.sqlite_storage(type(impl)())
    known = {default, default.split(".")[0]} if default is not None else {None}
    if stored not in known or pattern is not None:
        raise _unsupported(where, type_, dialect, "it has a storage_format of its own")


def _time(type_: sqltypes.Time, x: Expr, dialect: Dialect, where: str) -> Text:
    kind = _kind(dialect)
    if kind == "postgresql":
        plain = sa.cast(x, postgresql.TIME())
        text = _cat(
            dialect,
            sa.func.to_char(plain, _lit("HH24:MI:SS")),
            _fraction(sa.func.to_char(plain, _lit("US")), dialect),
        )
        if type_.timezone:
            return _cat(dialect, text, _offset(sa.func.extract("timezone", x), dialect))
        return text
    if kind == "mariadb":
        # A TIME may be negative or past 24 hours; the driver reads it as a timedelta, and
        # SQLAlchemy keeps its time of day (its seconds modulo a day).
        seconds = sa.func.time_to_sec(x)
        day = sa.func.sec_to_time(sa.func.mod(sa.func.mod(seconds, 86400) + 86400, 86400))
        base = sa.func.time_format(day, _lit("%H:%i:%s"))
        micro = sa.func.time_format(day, _lit("%f"))
        return _as_text(_cat(dialect, base, _fraction(micro, dialect)), dialect)
    _sqlite_format(type_, dialect, where)
    return _cat(dialect, sa.func.substr(x, 1, 8), _sqlite_fraction(x, 9, dialect))


def _interval(x: Expr, dialect: Dialect) -> Expr:
    """Integer microseconds of a ``timedelta``.

    PostgreSQL: as psycopg reads an interval (a month is 30 days, a year 365); elsewhere
    SQLAlchemy stores a ``timedelta`` as the datetime that far from the epoch.
    """
    kind = _kind(dialect)
    if kind == "postgresql":

        def part(name: str) -> Expr:
            return sa.cast(sa.func.extract(name, x), sa.BigInteger())

        days = part("year") * 365 + part("month") * 30 + part("day")
        seconds = days * 86400 + part("hour") * 3600 + part("minute") * 60
        return seconds * 1_000_000 + part("microseconds")
    if kind == "mariadb":
        return sa.func.timestampdiff(
            sa.literal_column("MICROSECOND"), sa.literal_column("'1970-01-01 00:00:00'"), x
        )
    # Whole seconds of the text without its fraction: strftime('%s') truncates towards zero.
    seconds = sa.cast(sa.func.strftime(_lit("%s"), sa.func.substr(x, 1, 19)), sa.Integer())
    fraction = sa.case(
        (
            sa.func.substr(x, 20, 1) == _lit("."),
            sa.cast(
                sa.func.substr(_cat(dialect, sa.func.substr(x, 21), _lit("000000")), 1, 6),
                sa.Integer(),
            ),
        ),
        else_=0,
    )
    return sa.cast(seconds * 1_000_000 + fraction, sa.Integer())


def _float(x: Expr, dialect: Dialect) -> Text:
    """A float's JSON number; ``encode`` writes the non-finite ones as ``repr`` strings."""
    kind = _kind(dialect)
    if kind == "postgresql":
        text = sa.cast(x, sa.Text())  # shortest exact form (extra_float_digits >= 1)
        return sa.case(
            (text.in_(["NaN"]), _lit('"nan"')),
            (text.in_(["Infinity"]), _lit('"inf"')),
            (text.in_(["-Infinity"]), _lit('"-inf"')),
            else_=text,
        )
    if kind == "mariadb":  # no NaN nor infinities
        return _as_text(x, dialect)
    real = sa.cast(x, sa.Float())
    return sa.case(
        (real == sa.literal_column("9e999"), _lit('"inf"')),
        (real == sa.literal_column("-9e999"), _lit('"-inf"')),
        # 17 significant digits (CAST AS TEXT keeps 15): the same double read back
        else_=sa.func.printf(_lit("%!.17g"), real, type_=sa.Text()),
    )


def _decimal(type_: sqltypes.Numeric[Any], x: Expr, dialect: Dialect) -> Text:
    """``str(Decimal)`` of the value as the driver reads it."""
    kind = _kind(dialect)
    if kind == "sqlite":
        # SQLite keeps a float; SQLAlchemy reads it as Decimal("%.<scale>f" % value).
        scale = _compat.decimal_return_scale(type_)
        return sa.func.printf(_lit(f"%.{scale}f"), x, type_=sa.Text())
    return _as_text(x, dialect)


def _base64(x: Expr, dialect: Dialect) -> Text:
    """Base64 without line breaks (``base64.b64encode``)."""
    kind = _kind(dialect)
    if kind == "postgresql":
        return sa.func.translate(sa.func.encode(x, _lit("base64")), _lit("\n"), _lit(""))
    if kind == "mariadb":
        return _as_text(
            sa.func.replace(sa.func.to_base64(x), sa.literal_column("'\\n'"), _lit("")), dialect
        )
    return _SQLiteBase64(x)


class _SQLiteBase64(FunctionElement[str]):
    """Base64 of a blob in SQLite, which has no such function (see :func:`_render_base64`)."""

    type = sa.Text()
    name = "versioning_base64"
    inherit_cache = True


class _SQLiteJSONContent(FunctionElement[str]):
    """A JSON document's content in SQLite as one text: each node's path, kind and value, in
    path order — equal for documents Python reads as equal (keys in any order, ``1`` and
    ``1.0``)."""

    type = sa.Text()
    name = "versioning_json_content"
    inherit_cache = True


@compiles(_SQLiteJSONContent, "sqlite")
def _render_json_content(element: _SQLiteJSONContent, compiler: SQLCompiler, **kw: Any) -> str:
    document = compiler.process(element.clauses, **kw)
    node = (
        "fullkey || char(31) || CASE WHEN type IN ('integer', 'real') THEN 'number' || "
        "char(31) || printf('%!.17g', CAST(atom AS REAL)) ELSE type || char(31) || "
        "coalesce(quote(atom), '') END"
    )
    return (
        f"(SELECT group_concat({node}, char(30)) FROM "
        f"(SELECT fullkey, type, atom FROM json_tree({document}) ORDER BY fullkey))"
    )


def _b64_group(at: str) -> str:
    """The 24 bits of the three bytes at hex digit ``at`` of ``h`` (0 past its end)."""
    return (
        "("
        + " + ".join(
            f"max(instr('0123456789ABCDEF', substr(h, {at} + {k}, 1)) - 1, 0) * {16 ** (5 - k)}"
            for k in range(6)
        )
        + ")"
    )


def _b64_char(shift: int) -> str:
    return f"substr('{_BASE64}', (g / {2**shift}) % 64 + 1, 1)"


@compiles(_SQLiteBase64, "sqlite")
def _render_base64(element: _SQLiteBase64, compiler: SQLCompiler, **kw: Any) -> str:
    """Three bytes (six hex digits) a step, in a recursive query over the value's hex, each
    step carrying the next group's bits; a scalar subquery, which SQLite accepts in a trigger
    too."""
    blob = compiler.process(element.clauses, **kw)
    return (
        f"(WITH RECURSIVE versioning_b64(i, h, g, out) AS ("
        f"SELECT 1, h, {_b64_group('1')}, '' FROM (SELECT hex({blob}) AS h) UNION ALL "
        f"SELECT i + 6, h, {_b64_group('i + 6')}, out || {_b64_char(18)} || {_b64_char(12)} "
        f"|| CASE WHEN length(h) - i < 2 THEN '=' ELSE {_b64_char(6)} END "
        f"|| CASE WHEN length(h) - i < 4 THEN '=' ELSE {_b64_char(0)} END "
        f"FROM versioning_b64 WHERE i <= length(h)) "
        f"SELECT out FROM versioning_b64 ORDER BY i DESC LIMIT 1)"
    )


def _array(type_: sqltypes.ARRAY[Any], x: Expr, dialect: Dialect, where: str) -> Text:
    """A one-dimensional PostgreSQL array, item by item (``encode`` encodes each by its type)."""
    if _kind(dialect) != "postgresql":
        raise _unsupported(where, type_, dialect, "ARRAY exists on PostgreSQL only")
    if type_.dimensions not in (None, 1):
        raise _unsupported(where, type_, dialect, "only one-dimensional arrays have an SQL form")
    items = sa.func.unnest(x).table_valued("item", with_ordinality="ord").render_derived()
    item = sa.type_coerce(items.c.item, type_.item_type)
    text = value_json(type_.item_type, item, dialect, where)
    joined = sa.func.string_agg(text, postgresql.aggregate_order_by(_lit(","), items.c.ord))
    inner = sa.select(sa.func.coalesce(joined, _lit(""))).scalar_subquery()
    return _cat(dialect, _lit("["), inner, _lit("]"))


# --- changed or not -------------------------------------------------------------------------------


def distinct(
    type_: sqltypes.TypeEngine[Any], old: Expr, new: Expr, dialect: Dialect, where: str = "column"
) -> sa.ColumnElement[bool]:
    """Whether ``old`` and ``new`` (values of a column of ``type_``) differ as ``history_row``
    decides: NULL-safe, strings byte for byte, numbers by value, JSON by content."""
    kind = _kind(dialect)
    stored = _stored_type(type_, dialect, where)
    if isinstance(stored, sqltypes.JSON):
        return _json_differs(old, new, dialect)
    textual = isinstance(stored, sqltypes.String | sqltypes.Uuid)
    if kind == "mariadb" and textual:  # its default collations make 'a' = 'A' and 'a' = 'a '
        return _differs(sa.cast(old, sa.LargeBinary()), sa.cast(new, sa.LargeBinary()), dialect)
    if kind == "sqlite" and textual:
        return _differs(sa.collate(sa.type_coerce(old, sa.String()), "BINARY"), new, dialect)
    if kind == "postgresql" and textual and not isinstance(stored, sqltypes.Enum | sqltypes.Uuid):
        # A nondeterministic collation could make different strings equal.
        return _differs(sa.collate(sa.type_coerce(old, sa.String()), "C"), new, dialect)
    return _differs(old, new, dialect)


def _json_differs(old: Expr, new: Expr, dialect: Dialect) -> sa.ColumnElement[bool]:
    """Whether two JSON documents differ in content (SQL NULL and JSON ``null`` alike, as
    Python reads both as ``None``): the same text first, which costs no parsing."""
    kind = _kind(dialect)

    def text(x: Expr) -> Expr:
        return sa.func.coalesce(sa.cast(x, sa.Text()), _lit("null"), type_=sa.Text())

    if kind == "postgresql":

        def doc(x: Expr) -> Expr:
            return sa.cast(text(x), postgresql.JSONB())

        content = _differs(doc(old), doc(new), dialect)
    elif kind == "mariadb":
        content = sa.func.coalesce(sa.func.json_equals(text(old), text(new)), 0) == 0
    else:  # keys in any order, 1 = 1.0
        content = _differs(_SQLiteJSONContent(text(old)), _SQLiteJSONContent(text(new)), dialect)
    same_text = sa.not_(_differs(_binary(text(old), dialect), _binary(text(new), dialect), dialect))
    return sa.case((same_text, sa.false()), else_=content)


def _binary(text: Expr, dialect: Dialect) -> Expr:
    """``text`` compared byte for byte."""
    kind = _kind(dialect)
    if kind == "mariadb":
        return sa.cast(text, sa.LargeBinary())
    return sa.collate(text, "C" if kind == "postgresql" else "BINARY")


def _differs(old: Expr, new: Expr, dialect: Dialect) -> sa.ColumnElement[bool]:
    """NULL-safe "not equal". Not ``is_distinct_from()``: SQLAlchemy's SQLite and MySQL forms of
    it leave bound parameters unrendered under ``literal_binds`` (a trigger's body needs them)."""
    kind = _kind(dialect)
    if kind == "postgresql":
        return old.is_distinct_from(new)
    operator = "<=>" if kind == "mariadb" else "IS NOT"
    compared: sa.ColumnElement[bool] = old.op(operator, is_comparison=True)(new)
    return sa.not_(compared) if kind == "mariadb" else compared


# --- masks ----------------------------------------------------------------------------------------


def mask_sql(mask: Mask, expr: Expr, dialect: Dialect, where: str = "column") -> Text:
    """The SQL form of ``mask`` applied to ``expr`` (NULL stays NULL, as in Python).

    A mask gives its SQL form as an attribute ``sql``: a callable ``(expr, dialect) ->
    expression`` computing, for a non-NULL string ``expr``, what the mask returns in Python
    (see :func:`versioning.masks.sql_form`). A mask without one cannot be used where the
    database writes history: :class:`~versioning.errors.ConfigurationError`.
    """
    form: Callable[[Expr, Dialect], Expr] | None = getattr(mask, "sql", None)
    if form is None:
        model = where.split(".", 1)[0]
        raise ConfigurationError(
            f"the mask {getattr(mask, '__name__', mask)!r} of {where} has no SQL form, and "
            f"history written by the database needs one: give it one "
            f"(mask.sql = lambda expr, dialect: ..., see versioning.masks.sql_form), use a "
            f"built-in mask (versioning.masks.redact, last4), or keep {model} on session capture"
        )
    _kind(dialect)
    return sa.case((expr.is_(None), sa.null()), else_=form(expr, dialect))


def _masked_json(
    spec: ModelSpec, key: str, mask: Mask, expr: Expr, dialect: Dialect, where: str
) -> Text:
    """The JSON text ``history_row`` records for a masked value: ``encode`` of the mask's
    output, through the column type's own conversion (a constant for ``redact``)."""
    type_ = spec.type_of(key)
    if mask is redact:
        constant = json.dumps(encode(type_, redact(""), dialect, where), ensure_ascii=False)
        return sa.case((expr.is_(None), _lit("null")), else_=_lit(constant))
    _check_masked(type_, dialect, where)
    declared = _declared(type_, dialect)
    if isinstance(declared, sqltypes.TypeDecorator) and _overrides(declared, "process_bind_param"):
        raise _unsupported(
            where,
            type_,
            dialect,
            "history records the mask's output as this TypeDecorator converts it, in Python "
            "(versioning.masks.redact, a constant, has an SQL form on any column)",
        )
    masked = mask_sql(mask, expr, dialect, where)
    return sa.case((expr.is_(None), _lit("null")), else_=_quoted(masked, dialect))


def _check_masked(type_: sqltypes.TypeEngine[Any], dialect: Dialect, where: str) -> None:
    """Refuse a mask's SQL form on a column whose Python value (what the mask is given) is
    not the stored one: a TypeDecorator that converts values read."""
    declared = _declared(type_, dialect)
    if isinstance(declared, sqltypes.TypeDecorator) and any(
        _overrides(declared, m) for m in ("process_result_value", "result_processor")
    ):
        raise _unsupported(
            where,
            type_,
            dialect,
            "its mask is given the value as this TypeDecorator converts it on reading, in Python",
        )


# --- rows -----------------------------------------------------------------------------------------


def _column(spec: ModelSpec, key: str, source: sa.FromClause) -> Expr:
    """``source``'s column of attribute ``key`` (an alias of the live table, or any row source
    whose columns have the live column names)."""
    live = spec.live_columns[key]
    found = source.corresponding_column(live)
    if found is None:
        found = source.c[live.name]
    return found


def _where(spec: ModelSpec, key: str) -> str:
    return f"{spec.model.__name__}.{key}"


def changes_json(
    spec: ModelSpec, old: sa.FromClause, new: sa.FromClause, dialect: Dialect
) -> sa.ColumnElement[Any]:
    """The ``changes`` document of an update from row ``old`` to row ``new``, or SQL NULL when
    no versioned column changed (the caller records no row then).

    ``old`` and ``new`` are row sources whose columns have the live column names: aliases of
    the live table, or ``sa.table(name, sa.column(...), ...)`` naming a trigger's transition
    tables (PostgreSQL) or its ``OLD`` and ``NEW`` rows (render the expression alone, with
    ``literal_binds``, in a row-level trigger's body).

    An object of the changed columns only, in :attr:`ModelSpec.attrs` order, each
    ``[old, new]`` as :func:`value_json` encodes them; a masked column is compared by its real
    values and recorded as the mask's outputs. On PostgreSQL the expression is ``json``, on
    MariaDB and SQLite the JSON text (what their JSON columns hold).
    """
    kind = _kind(dialect)
    pieces: list[Expr] = []
    for key in spec.attrs:
        where = _where(spec, key)
        type_ = spec.type_of(key)
        o, n = _column(spec, key, old), _column(spec, key, new)
        mask = spec.masks.get(key)
        if mask is None:
            pair = (value_json(type_, o, dialect, where), value_json(type_, n, dialect, where))
        else:
            pair = (
                _masked_json(spec, key, mask, o, dialect, where),
                _masked_json(spec, key, mask, n, dialect, where),
            )
        head = "," + json.dumps(key, ensure_ascii=False)
        piece = _cat(dialect, _lit(head + ":["), pair[0], _lit(","), pair[1], _lit("]"))
        pieces.append(sa.case((distinct(type_, o, n, dialect, where), piece), else_=_lit("")))
    if not pieces:
        return sa.null()
    body = pieces[0] if len(pieces) == 1 else _cat(dialect, *pieces)
    document = sa.func.nullif(
        _cat(dialect, _lit("{"), sa.func.substr(body, 2), _lit("}")), _lit("{}")
    )
    if kind == "postgresql":
        return sa.cast(document, postgresql.JSON())
    return sa.type_coerce(document, sa.Text())


def snapshot_columns(
    spec: ModelSpec, source: sa.FromClause, dialect: Dialect
) -> list[tuple[str, sa.ColumnElement[Any]]]:
    """(history column name, SQL expression) of each versioned column of the row ``source``:
    the snapshot ``history_row`` records, masked columns through their mask's SQL form.

    The library's own columns (operation, transaction, ``changes``, personal salts) are the
    caller's.
    """
    out: list[tuple[str, sa.ColumnElement[Any]]] = []
    for key in spec.attrs:
        expr = _column(spec, key, source)
        mask = spec.masks.get(key)
        if mask is not None:
            if mask is not redact:
                _check_masked(spec.type_of(key), dialect, _where(spec, key))
            expr = mask_sql(mask, expr, dialect, _where(spec, key))
        out.append((spec.history_names[key], expr))
    return out


def _salt(dialect: Dialect) -> Text:
    """32 random hex digits from the database's cryptographic generator, as
    :func:`versioning.personal.salts` draws with ``secrets``."""
    kind = _kind(dialect)
    if kind == "postgresql":  # 122 random bits: pg_strong_random
        return sa.func.replace(sa.cast(sa.func.gen_random_uuid(), sa.Text()), _lit("-"), _lit(""))
    if kind == "mariadb":  # RANDOM_BYTES (MariaDB 10.10): the TLS library's generator
        return _as_text(sa.func.lower(sa.func.hex(sa.func.random_bytes(16))), dialect)
    return sa.func.lower(sa.func.hex(sa.func.randomblob(16)), type_=sa.Text())


def personal_json(spec: ModelSpec, dialect: Dialect) -> sa.ColumnElement[Any] | None:
    """The value of a history row's :data:`~versioning.schema.PERSONAL` column: a fresh random
    salt per personal column (see :mod:`versioning.personal`), or ``None`` for a model without
    personal columns (its history table has no such column). ``json`` on PostgreSQL."""
    if not spec.personal:
        return None
    pieces: list[Expr] = []
    for key in sorted(spec.personal):
        head = ("{" if not pieces else ",") + json.dumps(key, ensure_ascii=False) + ':"'
        pieces += [_lit(head), _salt(dialect), _lit('"')]
    document = _cat(dialect, *pieces, _lit("}"))
    if _kind(dialect) == "postgresql":
        return sa.cast(document, postgresql.JSON())
    return document
