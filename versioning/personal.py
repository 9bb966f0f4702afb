"""Personal columns: what a history row's digest covers for values that may be erased.

Placeholder seam (filled by the erasure work): :func:`committed_view` returns the row as the
digest sees it. A history table of a model without personal columns has no
:data:`PERSONAL` column and its rows are hashed as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

__all__ = ["PERSONAL", "committed_view"]

#: The history-table column holding, per personal column, its salt (or, once erased, the
#: commitments that replace the erased values in the digest).
PERSONAL = "versioning_personal"


def committed_view(history: sa.Table, row: Mapping[str, Any]) -> Mapping[str, Any]:
    """``row`` (keyed by history column name) with personal values replaced by commitments."""
    return row
