"""The exceptions :mod:`versioning` raises. All derive from :class:`VersioningError`."""

from __future__ import annotations


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


class SealConflictError(VersioningError):
    """Another sealer sealed at the same moment and this transaction cannot see its seal.

    Nothing was sealed by this call: roll back and call :func:`versioning.seal` again.
    """
