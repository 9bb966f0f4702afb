"""What differs between two versions of one record, or a version and the live record: diff().

Fields are the versioned columns (excluded ones are not recorded, so never in a diff). A masked
field holds the mask's output in history, so it is compared as such: a live value is masked
first, and a diff shows mask outputs only. A field erased (:func:`versioning.erase`) from either
version has an unknown value there: it is in the diff, with :data:`ERASED` on that side, whatever
the other side holds — whether it changed cannot be told, and a diff never claims it did not.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import InstanceState

from versioning.declaration import ModelSpec, require_spec
from versioning.errors import ArgumentError
from versioning.reading import Version

__all__ = ["ERASED", "diff"]


class _Erased:
    """The value of an erased field in a diff."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "versioning.ERASED"

    def __reduce__(self) -> str:
        return "ERASED"


#: A field's value erased from history: its value in that version is not known.
ERASED: Any = _Erased()


def _side(value: Any, label: str) -> tuple[ModelSpec, tuple[Any, ...], dict[str, Any], str]:
    """A side of a diff: its spec, record key, values of the recorded fields, and a name."""
    if isinstance(value, Version):
        spec = require_spec(value.model)
        values = {
            key: ERASED if key in value.erased else value.state.get(key) for key in spec.attrs
        }
        key = value.primary_key
        return (
            spec,
            key,
            values,
            f"{spec.model.__name__} {_shown(key)} (version {value.version_id})",
        )
    state = sa.inspect(value, raiseerr=False)
    if not isinstance(state, InstanceState):
        raise ArgumentError(
            f"versioning.diff() compares Versions (from history(), version_at()) or a Version "
            f"and a live model instance; the {label} argument is {value!r}"
        )
    spec = require_spec(type(value))
    live: dict[str, Any] = {}
    for field in spec.attrs:
        current = getattr(value, field)
        mask = spec.masks.get(field)
        live[field] = mask(current) if mask is not None and current is not None else current
    if state.key is not None:
        record = tuple(state.key[1])
    else:
        record = tuple(state.dict.get(k) for k in spec.pk_keys)
    return spec, record, live, f"{spec.model.__name__} {_shown(record)} (live)"


def _shown(key: tuple[Any, ...]) -> str:
    return repr(key[0]) if len(key) == 1 else repr(key)


def diff(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """``{field: (value in a, value in b)}`` for every recorded field that differs.

    ``a`` and ``b`` are two versions of one record (any two, in either order), or a version and
    the live instance of the same record (either order). Values are in their Python types;
    masked fields compare (and show) mask outputs; excluded fields are absent; an erased field is
    present with :data:`ERASED` on its erased side. Versions of different records raise
    :class:`~versioning.ArgumentError` naming both.
    """
    spec_a, key_a, values_a, name_a = _side(a, "first")
    spec_b, key_b, values_b, name_b = _side(b, "second")
    if not isinstance(a, Version) and not isinstance(b, Version):
        raise ArgumentError(
            f"versioning.diff() compares versions, or a version and a live instance; got two live "
            f"instances ({name_a}, {name_b}): compare a live instance with "
            f"versioning.version_at(...) or history(...)[-1]"
        )
    if spec_a.root.history is not spec_b.root.history or key_a != key_b:
        raise ArgumentError(
            f"versioning.diff() compares versions of one record, got {name_a} and {name_b}: "
            f"pass two versions of the same record"
        )
    out: dict[str, tuple[Any, Any]] = {}
    for key in dict.fromkeys([*spec_a.attrs, *spec_b.attrs]):
        old, new = values_a.get(key), values_b.get(key)
        if old is ERASED or new is ERASED:
            out[key] = (old, new)
            continue
        if old is new:
            continue
        spec = spec_a if key in spec_a.live_columns else spec_b
        if old is None or new is None or not spec.type_of(key).compare_values(old, new):
            out[key] = (old, new)
    return out
