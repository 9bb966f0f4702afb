"""Masks for sensitive columns.

A mask is any callable ``str -> str`` named in ``__versioned__["mask"]``. A masked column's change
is still recorded as a change, but the stored old and new values (and the snapshot) are the mask's
output, never the real value. ``None`` is never passed to a mask: a missing value stays ``None``.

Where the database writes history itself (see :mod:`versioning.history_sql`), a mask needs an SQL
form too: the same output computed by SQL. The built-in masks have one; give a mask of your own
one with :func:`sql_form` (or set its ``sql`` attribute): a callable ``(expr, dialect) ->
expression`` that computes, for a non-NULL string ``expr``, exactly what the mask returns in
Python (characters counted as Python counts them, not bytes)::

    @versioning.masks.sql_form(lambda expr, dialect: sa.func.upper(expr))
    def shout(value: str) -> str:
        return value.upper()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

__all__ = ["REDACTED", "Mask", "MaskSQL", "last4", "redact", "sql_form"]

Mask = Callable[[str], str]

#: A mask's SQL form: ``(expr, dialect) -> expression`` for a non-NULL string ``expr``.
MaskSQL = Callable[[sa.ColumnElement[Any], Dialect], sa.ColumnElement[Any]]

REDACTED = "[REDACTED]"

_M = TypeVar("_M", bound=Callable[..., Any])


def sql_form(sql: MaskSQL) -> Callable[[_M], _M]:
    """Decorate a mask with its SQL form (stored as the mask's ``sql`` attribute)."""

    def attach(mask: _M) -> _M:
        mask.sql = sql  # type: ignore[attr-defined]
        return mask

    return attach


def _redact_sql(expr: sa.ColumnElement[Any], dialect: Dialect) -> sa.ColumnElement[Any]:
    return sa.literal(REDACTED, sa.Text())


def _stars(count: sa.ColumnElement[Any], dialect: Dialect) -> sa.ColumnElement[Any]:
    """``count`` asterisks (SQLite has no ``repeat()``: the hex of ``count`` zero bytes)."""
    if dialect.name == "sqlite":
        return sa.func.replace(sa.func.hex(sa.func.zeroblob(count)), "00", "*")
    return sa.func.repeat(sa.literal("*", sa.Text()), count)


def _last4_sql(expr: sa.ColumnElement[Any], dialect: Dialect) -> sa.ColumnElement[Any]:
    # Characters, not bytes: SQLite's length() and substr() count characters of text.
    length = sa.func.length(expr) if dialect.name == "sqlite" else sa.func.char_length(expr)
    tail = sa.func.substr(expr, length - 3)
    hidden: sa.ColumnElement[Any]
    if dialect.name == "sqlite":
        hidden = _stars(length - 4, dialect).op("||")(tail)
    else:
        hidden = sa.func.concat(_stars(length - 4, dialect), tail)
    return sa.case((length <= 4, _stars(length, dialect)), else_=hidden)


@sql_form(_redact_sql)
def redact(value: str) -> str:
    """Replace the whole value: history shows only that the field changed."""
    return REDACTED


@sql_form(_last4_sql)
def last4(value: str) -> str:
    """Keep the last four characters and hide the rest, e.g. ``************1111``.

    Values of four characters or fewer are hidden entirely, since keeping them would keep all of it.
    """
    if len(value) <= 4:
        return "*" * len(value)
    return "*" * (len(value) - 4) + value[-4:]
