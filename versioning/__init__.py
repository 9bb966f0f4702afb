"""sqlalchemy-versioning: complete, trustworthy history for SQLAlchemy 2.x models.

Mix :class:`Versioned` into a mapped class and every insert, update and delete of it is recorded —
who, when, from where, each field's old and new value and a full snapshot — in a history table
beside it, committed atomically with the data. Read it back with :func:`history`, reconstruct a
record at any moment with :func:`as_of` (its :class:`Version` with :func:`version_at`), and put it
back with :func:`restore`. Prove it untouched with :func:`seal`, :func:`verify` and
:func:`digest`, and erase a person's values without breaking that proof with :func:`erase`
(docs/integrity.md). A model captured by the database has triggers recording every write;
:func:`check_triggers` names those missing or stale (docs/database-capture.md). Failed and
denied actions go on record with :func:`record_event` (and, opted in with
:func:`record_failed_commits`, commits that failed), read with :func:`events`.
"""

import sqlalchemy as _sa

from versioning import append_only as _append_only  # noqa: F401 - installs the triggers' hooks
from versioning import capture as _capture  # noqa: F401 - installs the session hooks
from versioning import catalog as catalog  # writes the registry at create_all
from versioning import link_tables as _link_tables  # noqa: F401 - declares link history
from versioning import masks
from versioning import statements as _statements  # noqa: F401 - installs the statement hook
from versioning import triggers as _triggers  # noqa: F401 - installs database capture at create_all
from versioning.archiving import (
    ArchivedVersion,
    ArchiveManifest,
    archive,
    read_archive,
    read_archive_events,
    verify_archive,
)
from versioning.context import AuditContext, audit_context, current_context, set_actor
from versioning.declaration import Versioned, VersionedOptions, history_table
from versioning.diffing import ERASED, diff
from versioning.erasing import erase
from versioning.errors import (
    AppendOnlyError,
    ArchivedError,
    ArchiveError,
    ArgumentError,
    CatalogError,
    CommitOrderError,
    ConcurrentInsertError,
    ConfigurationError,
    ContextError,
    EncodingError,
    ErasureError,
    EventError,
    RelationshipHistoryError,
    RestoreConflictError,
    RestoreError,
    SealConflictError,
    UncapturedWriteError,
    UncapturedWriteWarning,
    VersioningError,
)
from versioning.event_log import Event, events, record_event
from versioning.failed_commits import record_failed_commits
from versioning.guard import guard_writes
from versioning.horizon import Horizon, pruned_horizon
from versioning.integrity import AutoSealer, Digest, Problem, Report, Seal, digest, seal, verify
from versioning.links import link_history_table, links_as_of
from versioning.operation import Operation
from versioning.pruning import prune
from versioning.reading import Transaction, Version, as_of, history, version_at
from versioning.restoring import restore
from versioning.schema import TRANSACTION_TABLE, transaction_table_for
from versioning.searching import iter_search, search, transaction_changes
from versioning.table_at import all_as_of
from versioning.triggers import TriggerProblem, check_triggers

__all__ = [
    "ERASED",
    "TRANSACTION_TABLE",
    "AppendOnlyError",
    "ArchiveError",
    "ArchiveManifest",
    "ArchivedError",
    "ArchivedVersion",
    "ArgumentError",
    "AuditContext",
    "AutoSealer",
    "CatalogError",
    "CommitOrderError",
    "ConcurrentInsertError",
    "ConfigurationError",
    "ContextError",
    "Digest",
    "EncodingError",
    "ErasureError",
    "Event",
    "EventError",
    "Horizon",
    "Operation",
    "Problem",
    "RelationshipHistoryError",
    "Report",
    "RestoreConflictError",
    "RestoreError",
    "Seal",
    "SealConflictError",
    "Transaction",
    "TriggerProblem",
    "UncapturedWriteError",
    "UncapturedWriteWarning",
    "Version",
    "Versioned",
    "VersionedOptions",
    "VersioningError",
    "all_as_of",
    "archive",
    "as_of",
    "audit_context",
    "catalog",
    "check_triggers",
    "current_context",
    "diff",
    "digest",
    "erase",
    "events",
    "guard_writes",
    "history",
    "history_table",
    "iter_search",
    "link_history_table",
    "links_as_of",
    "masks",
    "prune",
    "pruned_horizon",
    "read_archive",
    "read_archive_events",
    "record_event",
    "record_failed_commits",
    "restore",
    "seal",
    "search",
    "set_actor",
    "transaction_changes",
    "transaction_table",
    "verify",
    "verify_archive",
    "version_at",
]

__version__ = "0.1.0.dev0"


def transaction_table(metadata: _sa.MetaData) -> _sa.Table:
    """The ``versioning_transaction`` table of a ``MetaData`` (created on first use)."""
    if not isinstance(metadata, _sa.MetaData):
        raise ArgumentError(f"transaction_table() takes a MetaData, got {metadata!r}")
    return transaction_table_for(metadata)
