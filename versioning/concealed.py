"""Reading masked columns without letting their values into SQLAlchemy's log.

With ``create_engine(..., echo="debug")`` (or the ``sqlalchemy.engine`` logger at ``DEBUG``)
SQLAlchemy logs every row a statement returns. The library reads live rows, masked columns
included, to record their masked history; those are values the application may never have
loaded, and they must not reach a log through the library's own queries. So such a column is
selected through :class:`ConcealedType`: the value arrives wrapped in :class:`Concealed`, whose
``repr`` (what the log shows) is a marker, and the library unwraps it with :func:`reveal`. The
column's own type still converts the value, so a mask sees what the application would see.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapper

__all__ = ["MARKER", "Concealed", "ConcealedType", "conceal", "masked_unloaded", "reveal"]

#: What the log shows in place of a masked value.
MARKER = "<masked by versioning>"


class Concealed:
    """A value read from a masked column; ``repr`` and ``str`` never show it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(MARKER)

    __str__ = __repr__


class ConcealedType(sa.types.TypeDecorator[Any]):
    """``wrapped``'s result conversion, with the result wrapped in :class:`Concealed`."""

    impl = sa.types.NullType
    cache_ok = True

    def __init__(self, wrapped: sa.types.TypeEngine[Any]) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.impl = wrapped  # type: ignore[assignment]  # the instance's own type, not a class

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else Concealed(value)


def conceal(column: Any) -> Any:
    """``column`` to select, its values arriving as :class:`Concealed`."""
    return sa.type_coerce(column, ConcealedType(column.type)).label(None)


def reveal(value: Any) -> Any:
    return value.value if isinstance(value, Concealed) else value


def masked_unloaded(masks: Iterable[str], model: type[Any]) -> list[Any]:
    """Loader options that leave ``model``'s masked columns unloaded (``defer``).

    For the library's own ORM loads (restore): their rows are logged too, and the library needs
    only the other columns; the capture reads the masked ones through :func:`conceal`.
    """
    mapper: Mapper[Any] = sa.inspect(model)
    return [sa.orm.defer(getattr(model, key)) for key in masks if key in mapper.column_attrs]
