"""A column type as plain JSON, and the SQLAlchemy type rebuilt from it, without the application.

The registry (:mod:`versioning.catalog`) keeps, for each history column, a description of its type
as the database the registry is written on uses it (a ``with_variant()`` resolved for that
dialect). :func:`rebuild` gives back a type that reads the stored values as the model's type does:

* SQLAlchemy's own types (integers, ``Numeric``/``Float`` with their precision, scale and
  ``asdecimal``, strings, ``Boolean``, date and time types with their time zone, ``Interval``,
  ``Uuid``, binary types, ``JSON``, ``ARRAY`` of any of these) are rebuilt as they were: the same
  Python values, of the same types;
* an ``Enum`` is rebuilt over the strings it stores: an application's ``enum.Enum`` class is not
  imported, so its values read as the stored ``str`` (the member's name unless the type stores
  values);
* a few well-known ``TypeDecorator`` classes of other libraries (:data:`_KNOWN`) are rebuilt as
  themselves when their library is installed (a fixed list: nothing the database says is ever
  imported or evaluated);
* any other ``TypeDecorator`` reads as what it stores (its type on this dialect), and any other
  type as the driver's value.

A description also says whether the rebuilt type gives the same canonical form
(:func:`versioning.canonical.converter`) as the original for every stored value: ``"exact":
false`` marks the few where it may not (a decorator whose storage depends on the dialect, or
that converts values on reading only, or a type of unknown kind whose values the dialect
converts). Integrity checks from the registry refuse such a column rather than guess.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from versioning import _compat

__all__ = ["Description", "describe", "is_exact", "rebuild"]

#: A type's description: a JSON object with a ``"kind"`` and the kind's parameters.
Description = dict[str, Any]


def _overrides(type_: sqltypes.TypeDecorator[Any], method: str) -> bool:
    return getattr(type(type_), method) is not getattr(sqltypes.TypeDecorator, method)


def _class_path(type_: object) -> str:
    cls = type(type_)
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolved(type_: sqltypes.TypeEngine[Any], dialect: Dialect) -> sqltypes.TypeEngine[Any]:
    """``type_`` as used on ``dialect``: its ``with_variant()`` for that dialect, if any."""
    variants = _compat.variant_mapping(type_)
    return variants.get(dialect.name, type_)


def describe(type_: sqltypes.TypeEngine[Any], dialect: Dialect) -> Description:
    """The description of ``type_`` as it stores values on ``dialect``."""
    type_ = _resolved(type_, dialect)
    if isinstance(type_, sqltypes.Interval):  # (a TypeDecorator over DateTime on most backends)
        return {"kind": "interval", "native": bool(type_.native)}
    if isinstance(type_, sqltypes.TypeDecorator):
        return _describe_decorator(type_, dialect)
    if isinstance(type_, sqltypes.Enum):  # (a String: matched first)
        return {
            "kind": "enum",
            "values": [str(value) for value in type_.enums],
            "native": bool(type_.native_enum),
            "name": type_.name,
            "length": type_.length,
        }
    if isinstance(type_, sqltypes.ARRAY):
        return {
            "kind": "array",
            "item": describe(type_.item_type, dialect),
            "dimensions": type_.dimensions,
        }
    if isinstance(type_, sqltypes.JSON):
        return {"kind": "jsonb" if isinstance(type_, postgresql.JSONB) else "json"}
    if isinstance(type_, sqltypes.Boolean):
        return {"kind": "boolean"}
    if isinstance(type_, sqltypes.Integer):
        if isinstance(type_, sqltypes.BigInteger):
            return {"kind": "big_integer"}
        if isinstance(type_, sqltypes.SmallInteger):
            return {"kind": "small_integer"}
        return {"kind": "integer"}
    if isinstance(type_, sqltypes.Float):
        return {
            "kind": "float",
            "precision": type_.precision,
            "asdecimal": bool(type_.asdecimal),
            "decimal_return_scale": type_.decimal_return_scale,
        }
    if isinstance(type_, sqltypes.Numeric):
        return {
            "kind": "numeric",
            "precision": type_.precision,
            "scale": type_.scale,
            "asdecimal": bool(type_.asdecimal),
            "decimal_return_scale": type_.decimal_return_scale,
        }
    if isinstance(type_, sqltypes.String):
        if isinstance(type_, sqltypes.Text):
            kind = "text"
        elif isinstance(type_, sqltypes.CHAR):
            kind = "char"
        else:
            kind = "string"
        return {"kind": kind, "length": type_.length}
    if isinstance(type_, sqltypes.DateTime):
        return {"kind": "datetime", "timezone": bool(type_.timezone)}
    if isinstance(type_, sqltypes.Date):
        return {"kind": "date"}
    if isinstance(type_, sqltypes.Time):
        return {"kind": "time", "timezone": bool(type_.timezone)}
    if isinstance(type_, sqltypes.Uuid):
        return {
            "kind": "uuid",
            "as_uuid": bool(type_.as_uuid),
            "native": bool(type_.native_uuid),
        }
    if _compat.is_binary(type_):
        return {"kind": "binary", "length": getattr(type_, "length", None)}
    return _describe_other(type_, dialect)


def _describe_other(type_: sqltypes.TypeEngine[Any], dialect: Dialect) -> Description:
    """A type of no kind above: read as the driver gives its values."""
    from versioning.canonical import converter

    try:
        sql = type_.compile(dialect=dialect)
    except Exception:  # a type this dialect cannot render: only informative anyway
        sql = None
    impl = type_.dialect_impl(dialect)
    try:
        processes = impl.result_processor(dialect, None) is not None
    except Exception:  # a processor that needs the driver's column type code
        processes = True
    # Exact if the driver's value is the value, and the canonical form is by Python type.
    exact = not processes and converter(type_) is converter(sqltypes.NullType())
    return {"kind": "other", "class": _class_path(type_), "sql": sql, "exact": exact}


def _describe_decorator(type_: sqltypes.TypeDecorator[Any], dialect: Dialect) -> Description:
    path = _class_path(type_)
    stored = describe(type_.load_dialect_impl(dialect), dialect)
    known = _KNOWN.get(path)
    if known is not None:
        arguments = known.arguments(type_, dialect)
        if arguments is not None:
            return {"kind": "decorator", "class": path, "arguments": arguments, "stored": stored}
    # Read as stored: the canonical form of a decorator is what it stores (see canonical), the
    # same from the stored value if the storage does not depend on the dialect, and if it does
    # not convert on reading only.
    exact = not _overrides(type_, "load_dialect_impl") and (
        _overrides(type_, "process_bind_param") or not _overrides(type_, "process_result_value")
    )
    return {"kind": "decorator", "class": path, "stored": stored, "exact": exact}


def is_exact(description: Description) -> bool:
    """Whether the type rebuilt from ``description`` gives the original's canonical form."""
    kind = description.get("kind")
    if kind == "array":
        return is_exact(description["item"])
    if kind == "decorator":
        if "arguments" in description and _known_class(description) is not None:
            return True
        return bool(description.get("exact")) and is_exact(description["stored"])
    if kind == "other":
        return bool(description.get("exact"))
    return kind in _BUILDERS


def rebuild(description: Mapping[str, Any]) -> sqltypes.TypeEngine[Any]:
    """A SQLAlchemy type that reads stored values as the described type did (see the module)."""
    kind = description.get("kind")
    if kind == "decorator":
        known_class = _known_class(description)
        if known_class is not None:
            made = _KNOWN[str(description["class"])].build(known_class, description["arguments"])
            if made is not None:
                return made
        return rebuild(description["stored"])
    if kind == "array":
        item = rebuild(description["item"])
        return postgresql.ARRAY(item, dimensions=description.get("dimensions"))
    builder = _BUILDERS.get(str(kind))
    if builder is None:
        return sqltypes.NullType()
    return builder(description)


def _enum(d: Mapping[str, Any]) -> sqltypes.TypeEngine[Any]:
    return sa.Enum(
        *d["values"],
        native_enum=bool(d.get("native")),
        name=d.get("name"),
        length=d.get("length"),
        create_constraint=False,
        validate_strings=False,
    )


def _float(d: Mapping[str, Any]) -> sqltypes.TypeEngine[Any]:
    precision, scale = d.get("precision"), d.get("decimal_return_scale")
    if d.get("asdecimal"):
        return sa.Float(precision=precision, asdecimal=True, decimal_return_scale=scale)
    return sa.Float(precision=precision, asdecimal=False, decimal_return_scale=scale)


def _numeric(d: Mapping[str, Any]) -> sqltypes.TypeEngine[Any]:
    precision, scale, rscale = d.get("precision"), d.get("scale"), d.get("decimal_return_scale")
    if d.get("asdecimal", True):
        return sa.Numeric(precision, scale, decimal_return_scale=rscale, asdecimal=True)
    return sa.Numeric(precision, scale, decimal_return_scale=rscale, asdecimal=False)


def _uuid(d: Mapping[str, Any]) -> sqltypes.TypeEngine[Any]:
    native = bool(d.get("native", True))
    if d.get("as_uuid", True):
        return sa.Uuid(as_uuid=True, native_uuid=native)
    return sa.Uuid(as_uuid=False, native_uuid=native)


_BUILDERS: dict[str, Callable[[Mapping[str, Any]], sqltypes.TypeEngine[Any]]] = {
    "interval": lambda d: sa.Interval(native=bool(d.get("native", True))),
    "enum": _enum,
    "json": lambda d: sa.JSON(),
    "jsonb": lambda d: postgresql.JSONB(),
    "boolean": lambda d: sa.Boolean(),
    "big_integer": lambda d: sa.BigInteger(),
    "small_integer": lambda d: sa.SmallInteger(),
    "integer": lambda d: sa.Integer(),
    "float": lambda d: _float(d),
    "numeric": lambda d: _numeric(d),
    "text": lambda d: sa.Text(length=d.get("length")),
    "char": lambda d: sa.CHAR(length=d.get("length")),
    "string": lambda d: sa.String(length=d.get("length")),
    "datetime": lambda d: sa.DateTime(timezone=bool(d.get("timezone"))),
    "date": lambda d: sa.Date(),
    "time": lambda d: sa.Time(timezone=bool(d.get("timezone"))),
    "uuid": lambda d: _uuid(d),
    "binary": lambda d: sa.LargeBinary(length=d.get("length")),
}


# --- well-known decorators of other libraries ----------------------------------------------------


class _Known:
    """A decorator class rebuilt as itself: where it is, what to keep of it, how to make it."""

    def __init__(
        self,
        module: str,
        name: str,
        arguments: Callable[[Any, Dialect], dict[str, Any] | None],
        build: Callable[[Any, dict[str, Any]], sqltypes.TypeEngine[Any] | None],
    ) -> None:
        self.module = module
        self.name = name
        self.arguments = arguments
        self.build = build


def _known_class(description: Mapping[str, Any]) -> Any:
    """The class of a well-known decorator, if its library is installed (else ``None``)."""
    known = _KNOWN.get(str(description.get("class")))
    if known is None:
        return None
    try:
        return getattr(importlib.import_module(known.module), known.name)
    except (ImportError, AttributeError):
        return None


def _plain_pairs(choices: Any) -> list[list[Any]] | None:
    if not isinstance(choices, list | tuple):
        return None
    pairs: list[list[Any]] = []
    for pair in choices:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            return None
        if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in pair):
            return None
        pairs.append(list(pair))
    return pairs


def _choice_arguments(type_: Any, dialect: Dialect) -> dict[str, Any] | None:
    pairs = _plain_pairs(type_.choices)
    if pairs is None:
        return None  # an enum.Enum class of the application: read as stored
    return {"choices": pairs, "impl": describe(type_.impl_instance, dialect)}


def _choice(cls: Any, arguments: dict[str, Any]) -> sqltypes.TypeEngine[Any]:
    choices = [tuple(pair) for pair in arguments["choices"]]
    made: sqltypes.TypeEngine[Any] = cls(choices, impl=rebuild(arguments["impl"]))
    return made


_KNOWN: dict[str, _Known] = {
    "sqlalchemy_utils.types.uuid.UUIDType": _Known(
        "sqlalchemy_utils",
        "UUIDType",
        lambda t, d: {"binary": bool(t.binary), "native": bool(t.native)},
        lambda cls, a: cls(binary=bool(a["binary"]), native=bool(a["native"])),
    ),
    "sqlalchemy_utils.types.email.EmailType": _Known(
        "sqlalchemy_utils",
        "EmailType",
        lambda t, d: {"length": t.impl_instance.length},
        lambda cls, a: cls(length=a["length"]),
    ),
    "sqlalchemy_utils.types.choice.ChoiceType": _Known(
        "sqlalchemy_utils", "ChoiceType", _choice_arguments, _choice
    ),
}
