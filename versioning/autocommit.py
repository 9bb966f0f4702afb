"""Writes of versioned models need a database transaction: refused in autocommit mode.

In autocommit mode (``isolation_level="AUTOCOMMIT"`` on an engine, a connection or a session's
bind, or a driver connection switched to it) each statement commits on its own. The session path
writes a transaction's history at ``session.commit()``: a flushed change would be committed at
once and its history later, or never (a session closed without ``commit()``), and the rows it
reads first would not stay locked. Database capture hands the application's context over in
the transaction. So a flush or an ORM statement that writes a versioned model there is refused
before anything is written, naming the model and what to do.

Autocommit is told from what the driver says of its connection (``autocommit``,
``get_autocommit()``; sqlite3 and aiosqlite: no isolation level and no transaction begun); a
driver that says nothing is taken at its word that it has a transaction.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from versioning.errors import VersioningError

__all__ = ["autocommitting", "refuse_autocommit"]


def autocommitting(connection: Connection) -> bool:
    """Whether ``connection`` runs each statement in a transaction of its own."""
    if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return True
    pooled = connection.connection
    dbapi = pooled.dbapi_connection
    get = getattr(dbapi, "get_autocommit", None)
    if callable(get):  # PyMySQL, mysqlclient, aiomysql
        return bool(get())
    if connection.dialect.name == "sqlite":
        driver = pooled.driver_connection  # sqlite3's or aiosqlite's own connection
        if getattr(driver, "autocommit", None) is True:  # sqlite3 on Python 3.12+
            return True
        if getattr(driver, "isolation_level", "") is None:
            # No implicit BEGIN: autocommit, unless one was sent (SQLAlchemy's SAVEPOINT recipe).
            return not getattr(driver, "in_transaction", False)
        return False
    flag = getattr(dbapi, "autocommit", None)
    return flag is True  # psycopg, asyncpg


def refuse_autocommit(connection: Connection, model: str) -> None:
    """Raise :class:`versioning.VersioningError` if ``connection`` autocommits."""
    if autocommitting(connection):
        raise VersioningError(
            f"{model}: the session's connection is in autocommit mode "
            f"(isolation_level='AUTOCOMMIT'), where each statement commits on its own, so a "
            f"change and its history cannot be committed together; nothing was written. Write "
            f"versioned models in a transaction: leave this engine's isolation level at its "
            f"default, or use another engine (engine.execution_options(isolation_level=...)) "
            f"for the autocommit work"
        )
