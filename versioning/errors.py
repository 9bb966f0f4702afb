"""The exceptions :mod:`versioning` raises. All derive from :class:`VersioningError`."""

from __future__ import annotations

from typing import Any


class VersioningError(Exception):
    """Base class of every error raised by :mod:`versioning`."""


class ConfigurationError(VersioningError):
    """A versioned model is declared in a way the library cannot honour.

    Raised while the class is being declared, so that a mistake never reaches a running system.
    """


class ArgumentError(VersioningError, ValueError, TypeError):
    """A function of the library was called with an argument it cannot use.

    Also a ``ValueError`` and a ``TypeError``, so code catching either keeps working.
    """


class ContextError(VersioningError, ValueError):
    """A value given to :func:`versioning.audit_context` (or ``set_actor``) is not acceptable."""


class EncodingError(VersioningError, TypeError):
    """A column value cannot be recorded in the history's ``changes`` document."""


class RestoreError(VersioningError):
    """A version cannot be restored; the message says which record and why."""


class RestoreConflictError(RestoreError):
    """Restoring a version would violate a database constraint.

    The flush that attempted it was rolled back: neither data nor history changed.
    """


class UncapturedWriteError(VersioningError):
    """A Core statement would change a versioned table without being recorded.

    Raised by a :func:`versioning.guard_writes` guard before the statement runs.
    """


class UncapturedWriteWarning(UserWarning):
    """A Core statement changed a versioned table without being recorded.

    Emitted by a :func:`versioning.guard_writes` guard with ``action="warn"``.
    """


class ConcurrentInsertError(VersioningError):
    """An upsert met a row another transaction committed after versioning read the table.

    Its old values cannot be known, so the statement was rolled back (to a SAVEPOINT): nothing
    was written. Retry the statement (or the transaction).
    """


class ErasureError(VersioningError):
    """Recorded values cannot be erased without breaking the history's proof.

    Raised by :func:`versioning.erase` before anything is written.
    """


class AppendOnlyError(VersioningError):
    """The database refused to UPDATE, DELETE or TRUNCATE rows of an append-only table.

    History, transaction and integrity tables are append-only: their triggers refuse to change
    rows outside the library's own maintenance (:func:`versioning.append_only.maintenance`).
    ``table`` is the refused table's name, ``operation`` ``"UPDATE"``, ``"DELETE"`` or
    ``"TRUNCATE"``.
    """

    def __init__(self, table: str, operation: str) -> None:
        self.table = table
        self.operation = operation
        super().__init__(
            f"cannot {operation} rows of {table!r}: versioning keeps history append-only, and "
            f"the database's triggers refused the statement. Record a change of the live record "
            f"instead; the library's own maintenance (erasure) runs inside "
            f"versioning.append_only.maintenance(connection)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.table, self.operation))


class CommitOrderError(VersioningError):
    """MariaDB, database capture: a statement was refused because its history would break commit
    order.

    MariaDB's triggers fire at each write, not at commit, so a transaction's row (and id) is
    written at its first write. If another transaction changed the same record and committed
    after that, recording this change would show it before the one that committed first. The
    transaction is refused instead — an application's at ``session.commit()``, before the
    ``COMMIT``; another client's statement by the trigger — nothing of it committed; roll back
    and retry the transaction. ``table`` is the table whose record it was.
    """

    def __init__(self, table: str) -> None:
        self.table = table
        super().__init__(
            f"{table!r}: another transaction changed a record this transaction changes and "
            f"committed after this transaction had written its first history row; its history "
            f"would be out of commit order, so it was refused before its COMMIT. Roll back and "
            f"retry the transaction (keep transactions that change busy records short)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.table,))


class RelationshipHistoryError(VersioningError):
    """A relationship of a record read as of a moment cannot be given as it was then.

    Raised when the relationship is read (or named in ``load=``), before anything is loaded: its
    target is not versioned (it has no history, and today's rows would be wrong), it is a
    many-to-many relationship through a table without link history, its join cannot be
    evaluated on the recorded columns, or the
    instance has no session to load through. The message names ``Model.relationship`` and what
    to do.
    """


class SealConflictError(VersioningError):
    """Another sealer sealed at the same moment and this transaction cannot see its seal.

    Nothing was sealed by this call: roll back and call :func:`versioning.seal` again.
    """


class CatalogError(VersioningError):
    """The registry of history tables (``versioning_catalog``) cannot answer.

    It is missing (the database was created before it, or without the library's helpers), it does
    not name the table asked for, or a row of it cannot be read. The message says what to run.
    """


class EventError(VersioningError):
    """An event cannot be recorded now: nothing was written.

    Raised by :func:`versioning.record_event` when the database has no event table (create it:
    ``metadata.create_all()`` or a migration), or when, on SQLite, the bind's own transaction is
    still open (SQLite lets one connection write at a time: the event's connection would wait
    for yours). The message says which and what to do.
    """


class ArchivedError(VersioningError):
    """History before the horizon of a prune was archived and is no longer in the database.

    Raised by the readers (``as_of``, ``version_at``, ``history``, ``all_as_of``,
    ``links_as_of``, ``restore``) for a moment before the horizon, and by the searches
    (``search``, ``iter_search``, ``events``, exports) for a range that reaches before it: never
    a silent ``None`` or a shortened list. ``horizon_transaction_id`` and ``horizon_issued_at``
    name the horizon, ``archive`` the file that holds what came before it (read it with
    :func:`versioning.read_archive`).
    """

    def __init__(
        self,
        what: str,
        horizon_transaction_id: int,
        horizon_issued_at: Any,
        archive: str,
        archive_sha256: str,
    ) -> None:
        self.what = what
        self.horizon_transaction_id = horizon_transaction_id
        self.horizon_issued_at = horizon_issued_at
        self.archive = archive
        self.archive_sha256 = archive_sha256
        super().__init__(
            f"{what}: history up to the horizon (transaction {horizon_transaction_id}, issued at "
            f"{horizon_issued_at.isoformat()}) was archived to {archive!r} (data SHA-256 "
            f"{archive_sha256[:16]}...) and pruned from the database. Ask for a moment at or after "
            f"the horizon (a transaction id >= {horizon_transaction_id}, or a time after "
            f"{horizon_issued_at.isoformat()}), search from a transaction id > "
            f"{horizon_transaction_id} or a time after it, or read the archive with "
            f"versioning.read_archive(path)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (
                self.what,
                self.horizon_transaction_id,
                self.horizon_issued_at,
                self.archive,
                self.archive_sha256,
            ),
        )


class ArchiveError(VersioningError):
    """An archive cannot be written, read or pruned: the message says which file and why.

    ``archive()`` raises it before writing a file it cannot vouch for (the history it would
    hold does not verify); ``prune()`` before deleting anything, when the archive does not
    verify or does not match the database.
    """
