"""Personal columns: values that may be erased from history without breaking its proof.

A model's ``__versioned__["personal"]`` columns are recorded like the others, and its history
table has one more column, :data:`PERSONAL` (JSON), holding for each history row a random salt
per personal column (:func:`salts`, written with the row). A history row's digest does not cover
a personal column's values themselves but *commitments* to them (:func:`committed_view`)::

    sha256(salt || b"snapshot\\0" || canonical JSON of the snapshot value)
    sha256(salt || b"changes\\0"  || canonical JSON of its [old, new] entry in ``changes``)

(the second only when the column changed in that version). Erasing (:func:`erase_values`, run by
:func:`versioning.erase`) sets the snapshot value to NULL, the ``changes`` entry to ``null``,
and replaces the salt by the two commitments, marked ``"erased": true``: the row's view, so its
digest, stays the same, while what remains — two SHA-256 values of salted inputs whose salt is
gone — reveals nothing of the values, however few they could be.

A history table of a model without personal columns has no :data:`PERSONAL` column, and its
rows are hashed as they are.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from versioning.schema import CHANGES, PERSONAL

__all__ = [
    "PERSONAL",
    "committed_view",
    "erase_values",
    "erased_keys",
    "has_personal",
    "salts",
    "unsalted",
]

_SALT_BYTES = 16
_SNAPSHOT = b"snapshot\x00"
_CHANGES = b"changes\x00"


def salts(keys: Iterable[str]) -> dict[str, str]:
    """A fresh random salt (hex) per personal attribute key, for one history row."""
    return {key: secrets.token_hex(_SALT_BYTES) for key in keys}


def _column_names(history: sa.Table) -> Mapping[str, str]:
    """Personal attribute key -> history column name (declared on the table, see declaration)."""
    names: Mapping[str, str] = history.info.get(PERSONAL, {})
    return names


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _commit(salt: str, label: bytes, data: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + label + data).hexdigest()


def _snapshot_bytes(column: sa.Column[Any] | None, value: Any) -> bytes:
    # Imported here: the canonical form belongs to the digest's module, which builds on this one.
    from versioning.canonical import canonical_value

    return _dumps(value if column is None else canonical_value(column, value))


def _commitments(
    history: sa.Table, key: str, salt: str, row: Mapping[str, Any]
) -> tuple[str, str | None]:
    """The snapshot and ``changes`` commitments of personal attribute ``key`` in ``row``."""
    name = _column_names(history).get(key, key)
    snapshot = _commit(salt, _SNAPSHOT, _snapshot_bytes(history.c.get(name), row.get(name)))
    changes = row.get(CHANGES)
    if not changes or key not in changes:
        return snapshot, None
    return snapshot, _commit(salt, _CHANGES, _dumps(changes[key]))


def _erased(entry: Any) -> bool:
    return isinstance(entry, Mapping) and entry.get("erased") is True


#: Per history table: whether it has the :data:`PERSONAL` column (asked for every row hashed).
_HAS_PERSONAL: weakref.WeakKeyDictionary[sa.Table, bool] = weakref.WeakKeyDictionary()


def has_personal(history: sa.Table) -> bool:
    """Whether ``history`` has the :data:`PERSONAL` column (its rows' :func:`committed_view`
    is then not the row itself)."""
    found = _HAS_PERSONAL.get(history)
    if found is None:
        found = _HAS_PERSONAL[history] = PERSONAL in history.c
    return found


def committed_view(history: sa.Table, row: Mapping[str, Any]) -> Mapping[str, Any]:
    """``row`` (keyed by history column name) as its digest covers it.

    For a table with the :data:`PERSONAL` column: without that column, and with each personal
    column's snapshot value and its entry in ``changes`` replaced by their commitments (the
    stored ones once erased). The same before and after an erasure. Other tables: ``row``.
    """
    if not has_personal(history):
        return row
    view = {name: value for name, value in row.items() if name != PERSONAL}
    personal = row.get(PERSONAL)
    if not personal:
        return view
    names = _column_names(history)
    changes = view.get(CHANGES)
    new_changes = dict(changes) if changes else changes
    for key, entry in personal.items():
        if _erased(entry):
            snapshot, in_changes = entry["snapshot"], entry.get("changes")
        else:
            snapshot, in_changes = _commitments(history, key, entry, row)
        view[names.get(key, key)] = snapshot
        if in_changes is not None:
            assert new_changes is not None
            new_changes[key] = in_changes
    if CHANGES in row:
        view[CHANGES] = new_changes
    return view


def erased_keys(personal: Any) -> frozenset[str]:
    """The attribute keys erased in a row, from its :data:`PERSONAL` value."""
    if not personal:
        return frozenset()
    return frozenset(key for key, entry in personal.items() if _erased(entry))


def _holds(history: sa.Table, key: str, row: Mapping[str, Any]) -> bool:
    """Whether ``row`` holds a value of ``key`` (its snapshot, or an entry in ``changes``)."""
    name = _column_names(history).get(key, key)
    changes = row.get(CHANGES)
    return row.get(name) is not None or bool(changes and changes.get(key) is not None)


def unsalted(history: sa.Table, row: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """The ``keys`` that ``row`` holds a value of but has no salt for.

    A row written before the column was declared personal (or before the :data:`PERSONAL`
    column was added) has none: its digest covers the value itself, which then cannot be
    erased without the row failing verification.
    """
    personal = row.get(PERSONAL) or {}
    return [key for key in keys if key not in personal and _holds(history, key, row)]


def erase_values(
    history: sa.Table, row: Mapping[str, Any], keys: Iterable[str]
) -> tuple[Any, dict[str, Any]] | None:
    """The ``(changes, personal)`` values of ``row`` with ``keys`` erased, or ``None`` if it
    holds nothing of them to erase. The snapshot columns of ``keys`` become NULL.

    ``row`` must hold a salt for each key it has a value of (see :func:`unsalted`).
    """
    personal: dict[str, Any] = dict(row.get(PERSONAL) or {})
    changes = row.get(CHANGES)
    new_changes = dict(changes) if changes else changes
    done = False
    for key in keys:
        entry = personal.get(key)
        if entry is None or _erased(entry):
            continue  # nothing recorded with a salt (see unsalted), or already erased
        snapshot, in_changes = _commitments(history, key, entry, row)
        personal[key] = {"erased": True, "snapshot": snapshot, "changes": in_changes}
        if in_changes is not None:
            assert new_changes is not None
            new_changes[key] = None
        done = True
    if not done:
        return None
    return new_changes, personal
