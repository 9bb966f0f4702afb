"""Design probe for database-side capture (issue #14): hand-written trigger prototypes, their
correctness checks and their cost, on PostgreSQL, MariaDB and SQLite.

Run from the repository root::

    PYTHONPATH=$PWD /tmp/venv/bin/python tests/benchmarks/capture_designs.py \\
        --backends sqlite,postgresql,mariadb [--runs 5] [--rows 5000] \\
        [--mariadb-binlog-url mariadb://root@127.0.0.1:3307]

This is a probe, not library code: one table ``item(id, name, qty, price)``, its history table
and the transaction table (with the library's indexes), written by hand in each backend's SQL,
reached through the plain DB-API drivers (psycopg, PyMySQL, sqlite3) for the checks and the raw
timings, and through plain SQLAlchemy ORM for the ``orm_*`` timings (the issue's targets are
ratios to plain SQLAlchemy). A scratch database ``capdesign_<pid>`` (SQLite: a file in a
temporary directory) is created and dropped.

``--mariadb-binlog-url`` runs the MariaDB checks once more on a server with the binary log on
(no timings). A throwaway one, as used for the figures in the report::

    mariadb-install-db --no-defaults --datadir=/tmp/binlogdb \\
        --auth-root-authentication-method=normal
    mariadbd --no-defaults --user=root --datadir=/tmp/binlogdb --port=3307 \\
        --bind-address=127.0.0.1 --socket=/tmp/binlogdb.sock --log-bin=/tmp/binlogdb/binlog \\
        --server-id=1 &

What it settles, per backend:

1. **One transaction row per database transaction**, made by the trigger at the first write and
   reused by later statements, gone with the transaction or savepoint that made it:

   * PostgreSQL: a transaction-local setting (``set_config('versioning.txn', id, true)``), which
     PostgreSQL itself reverts when the transaction or savepoint that set it rolls back.
   * MariaDB: user variables (``@versioning_txn``) survive commit and rollback, and the server
     exposes no cheap transaction id (``information_schema.innodb_trx`` is a cache refreshed at
     most every 0.1 s: stale; ``SESSION_STATUS`` costs ~0.4 ms a read). The key of "this
     transaction" is ``@@last_gtid`` when the binary log is on (it changes at every commit of the
     session), else the statement's start time ``NOW(6)`` (one row per *statement* for clients
     that do not hand over a context); the application resets ``@versioning_txn`` when it hands
     its context over, and clears both after its transaction ends. A point lookup of the
     remembered transaction row, once per statement, detects a rollback.
   * SQLite: a main-schema trigger cannot read a TEMP table (``cannot reference objects in
     database temp``), and nothing in SQL names a transaction. A one-row main table
     ``versioning_session`` carries the application's context and the open transaction row; the
     application deletes it after its last flush, before ``COMMIT`` (in-process, microseconds).
     Other clients are keyed by statement: the statement clock (``julianday('now')`` is fixed for
     one ``sqlite3_step``) and the connection's change counter (``total_changes()``).

2. **The audit context** is handed over once per transaction before the first write
   (PostgreSQL: ``set_config('versioning.context', json, true)``; MariaDB: ``SET
   @versioning_ctx = json, @versioning_txn = NULL, @versioning_ctx_gtid = @@last_gtid``;
   SQLite: ``INSERT OR REPLACE INTO versioning_session``). Without it the row carries what the
   database knows (PostgreSQL: user, application name, client address, backend pid; MariaDB:
   ``USER()`` with the client host, ``CONNECTION_ID()``; SQLite: nothing).

3. **Commit order** under concurrency, with a two-connection test (threads): ``direct`` takes the
   id at the first write (and shows the problem); ``refuse`` raises SQLSTATE 40001 when the
   record's history already has a larger id (PostgreSQL: a plain read, READ COMMITTED sees the
   latest commit; MariaDB: ``LOCK IN SHARE MODE``, whose next-key locks are shown to block
   inserts); ``staged`` (PostgreSQL) keeps the rows in TEMP tables and moves them into history at
   commit with an id allocated by a DEFERRED constraint trigger (``staged-oncommit``: the same,
   emptied by ``ON COMMIT DELETE ROWS``); ``snapshot`` (MariaDB) is ``direct`` with
   ``innodb_snapshot_isolation=ON`` and a consistent read at the first write. SQLite has one
   writer at a time: ids taken at the first write already follow commit order.

4. **Cost**: median of ``--runs`` runs, each variant against plain (no triggers) within a run,
   workload by workload (PostgreSQL also ``direct-nofk``: no foreign key from history to the
   transaction table, and ``row``: row-level triggers instead of statement-level ones).

Prints PASS/FAIL per check and a table of timings and ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

PG_URL = os.environ.get("CAPDESIGN_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432")
MARIADB_URL = os.environ.get("CAPDESIGN_MARIADB_URL", "mariadb://root@127.0.0.1:3306")

CONTEXT = {
    "actor": "alice",
    "source_ip": "203.0.113.7",
    "request_id": "req-1",
    "reason": "probe",
    "extra": {"ticket": 42},
}
CONTEXT_JSON = json.dumps(CONTEXT)


def row(i: int) -> tuple[int, str, int, Decimal]:
    return (i, f"item {i:06d}", i % 1000, Decimal(f"{i % 10000}.{i % 100:02d}"))


# ----------------------------------------------------------------------------------------------
# Results


@dataclass
class Report:
    backend: str
    checks: list[tuple[str, str, bool, str]] = field(default_factory=list)
    #: (variant, workload) -> samples in seconds; ratios per run against plain
    times: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    ratios: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def check(self, variant: str, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((variant, name, ok, detail))
        mark = "PASS" if ok else "FAIL"
        print(f"  [{self.backend}/{variant}] {mark} {name}" + (f" — {detail}" if detail else ""))
        sys.stdout.flush()


# ----------------------------------------------------------------------------------------------
# PostgreSQL


PG_TABLES = """
CREATE TABLE versioning_transaction (
    id bigserial PRIMARY KEY, issued_at timestamptz NOT NULL, actor varchar(255),
    source_ip varchar(45), request_id varchar(128), reason text, extra json);
CREATE TABLE item (id int PRIMARY KEY, name varchar(100), qty int, price numeric(10,2));
CREATE TABLE item_history (
    versioning_id bigserial PRIMARY KEY,
    versioning_transaction_id bigint NOT NULL REFERENCES versioning_transaction (id),
    versioning_operation varchar(6) NOT NULL,
    id int, name varchar(100), qty int, price numeric(10,2), versioning_changes json);
CREATE INDEX ix_item_history_record ON item_history (id, versioning_transaction_id);
CREATE INDEX ix_item_history_transaction ON item_history (versioning_transaction_id);
-- the library's transaction table has these too (time order, search)
CREATE INDEX ix_vt_issued_at ON versioning_transaction (issued_at, id);
CREATE INDEX ix_vt_actor ON versioning_transaction (actor, id);
CREATE INDEX ix_vt_request_id ON versioning_transaction (request_id, id);
CREATE INDEX ix_vt_source_ip ON versioning_transaction (source_ip, id);
"""

# The transaction row: the application's context if it handed one over in this transaction,
# else what the database knows of the client. Shared by every variant.
PG_NEW_TRANSACTION = """
CREATE FUNCTION versioning_new_transaction() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    ctx json := nullif(current_setting('versioning.context', true), '')::json;
    tid bigint;
BEGIN
    INSERT INTO versioning_transaction (issued_at, actor, source_ip, request_id, reason, extra)
    VALUES (clock_timestamp(),
            CASE WHEN ctx IS NULL THEN session_user::text ELSE ctx->>'actor' END,
            CASE WHEN ctx IS NULL THEN host(inet_client_addr()) ELSE ctx->>'source_ip' END,
            ctx->>'request_id', ctx->>'reason',
            CASE WHEN ctx IS NULL THEN json_build_object(
                     'database_user', session_user,
                     'application_name', current_setting('application_name'),
                     'client_addr', host(inet_client_addr()),
                     'backend_pid', pg_backend_pid())
                 ELSE ctx->'extra' END)
    RETURNING id INTO tid;
    RETURN tid;
END $$;

-- One row per transaction: the id lives in a transaction-local setting, which PostgreSQL
-- reverts when the transaction, or the savepoint that set it, rolls back.
CREATE FUNCTION versioning_txn() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v text := current_setting('versioning.txn', true);
    tid bigint;
BEGIN
    IF v IS NOT NULL AND v <> '' THEN
        RETURN v::bigint;
    END IF;
    tid := versioning_new_transaction();
    PERFORM set_config('versioning.txn', tid::text, true);
    RETURN tid;
END $$;
"""

# Only the changed columns, in column order. Built as text and cast once: json_strip_nulls()
# over json_build_object() parses the document again and costs ~10% more on a bulk UPDATE.
PG_CHANGES = """('{' || concat_ws(',',
    CASE WHEN o.name IS DISTINCT FROM n.name
         THEN '"name":' || json_build_array(o.name, n.name) END,
    CASE WHEN o.qty IS DISTINCT FROM n.qty
         THEN '"qty":' || json_build_array(o.qty, n.qty) END,
    CASE WHEN o.price IS DISTINCT FROM n.price
         THEN '"price":' || json_build_array(o.price, n.price) END
) || '}')::json"""
PG_CHANGED = "(o.name, o.qty, o.price) IS DISTINCT FROM (n.name, n.qty, n.price)"

# Statement-level triggers with transition tables: one set-based INSERT ... SELECT per statement.
# The transaction id is an InitPlan, ``(SELECT versioning_txn())``, evaluated only when the first
# row is produced: a statement that changes nothing makes no transaction row. plpgsql caches one
# generic plan per statement, planned with the transition table's size at its first run (one row:
# a nested loop, quadratic on 5,000 rows), hence the two copies, for few and for many rows.
# {target}: the history table (direct, refuse) or the TEMP stage (staged); {begin}: the staged
# variant's set-up; {check}: the refuse variant's test, after the statement holds every row lock.
PG_CAPTURE = """
CREATE FUNCTION item_capture_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE tid bigint; rc bigint;
BEGIN
    {begin}
    INSERT INTO {target} ({txn_column} versioning_operation, id, name, qty, price)
    SELECT {txn_value} 'insert', n.id, n.name, n.qty, n.price FROM new_rows n;
    {check_new}
    RETURN NULL;
END $$;

CREATE FUNCTION item_capture_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE tid bigint; rc bigint;
BEGIN
    {begin}
    IF (SELECT count(*) FROM new_rows) > 64 THEN
        INSERT INTO {target} ({txn_column} versioning_operation, id, name, qty, price,
                              versioning_changes)
        SELECT /* many */ {txn_value} 'update', n.id, n.name, n.qty, n.price, {changes}
        FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE {changed};
    ELSE
        INSERT INTO {target} ({txn_column} versioning_operation, id, name, qty, price,
                              versioning_changes)
        SELECT /* few */ {txn_value} 'update', n.id, n.name, n.qty, n.price, {changes}
        FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE {changed};
    END IF;
    {check_new}
    RETURN NULL;
END $$;

CREATE FUNCTION item_capture_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE tid bigint; rc bigint;
BEGIN
    {begin}
    INSERT INTO {target} ({txn_column} versioning_operation, id, name, qty, price)
    SELECT {txn_value} 'delete', o.id, o.name, o.qty, o.price FROM old_rows o;
    {check_old}
    RETURN NULL;
END $$;

CREATE TRIGGER item_capture_insert AFTER INSERT ON item REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION item_capture_insert();
CREATE TRIGGER item_capture_update AFTER UPDATE ON item
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION item_capture_update();
CREATE TRIGGER item_capture_delete AFTER DELETE ON item REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION item_capture_delete();
"""

# Row-level alternative ("row"): no transition tables; one INSERT ... VALUES a row. Cheaper for
# single-row statements, dearer for one statement over many rows.
PG_ROW = """
CREATE FUNCTION item_capture_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tid bigint := coalesce(nullif(current_setting('versioning.txn', true), '')::bigint,
                           versioning_txn());
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO item_history (versioning_transaction_id, versioning_operation, id, name, qty,
                                  price, versioning_changes)
        VALUES (tid, 'update', NEW.id, NEW.name, NEW.qty, NEW.price, {changes});
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO item_history (versioning_transaction_id, versioning_operation, id, name, qty,
                                  price)
        VALUES (tid, 'insert', NEW.id, NEW.name, NEW.qty, NEW.price);
    ELSE
        INSERT INTO item_history (versioning_transaction_id, versioning_operation, id, name, qty,
                                  price)
        VALUES (tid, 'delete', OLD.id, OLD.name, OLD.qty, OLD.price);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER item_capture_row AFTER INSERT OR DELETE ON item
    FOR EACH ROW EXECUTE FUNCTION item_capture_row();
CREATE TRIGGER item_capture_row_update AFTER UPDATE ON item
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION item_capture_row();
"""

PG_REFUSE = """GET DIAGNOSTICS rc = ROW_COUNT;
    IF rc > 0 THEN tid := versioning_txn(); END IF;
    IF rc > 0 AND EXISTS (SELECT FROM {rows} r JOIN item_history h ON h.id = r.id
                          WHERE h.versioning_transaction_id > tid) THEN
        RAISE EXCEPTION
            'versioning: item changed by a transaction committed after % began writing', tid
            USING ERRCODE = 'serialization_failure', HINT = 'roll back and retry';
    END IF;"""

# Staged: rows wait in TEMP tables (per session, created on first use, emptied at commit); the
# first write of a transaction inserts a row in a TEMP hook table whose DEFERRED constraint
# trigger runs at COMMIT, after every lock is held: it allocates the transaction row then, and
# moves the staged rows into history.
PG_STAGED = """
CREATE FUNCTION versioning_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE tid bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_temp.versioning_stage_item) THEN RETURN NULL; END IF;
    tid := versioning_new_transaction();
    INSERT INTO item_history (versioning_transaction_id, versioning_operation, id, name, qty,
                              price, versioning_changes)
    SELECT tid, versioning_operation, id, name, qty, price, versioning_changes
    FROM pg_temp.versioning_stage_item ORDER BY seq;
    {cleanup}
    RETURN NULL;
END $$;

CREATE FUNCTION versioning_stage_begin() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('versioning.staging', true) = '1' THEN RETURN; END IF;
    IF to_regclass('pg_temp.versioning_hook') IS NULL THEN
        CREATE TEMP TABLE versioning_hook (x int) {oncommit};
        CREATE TEMP TABLE versioning_stage_item (
            seq bigint GENERATED ALWAYS AS IDENTITY, versioning_operation varchar(6),
            id int, name varchar(100), qty int, price numeric(10,2), versioning_changes json
        ) {oncommit};
        CREATE CONSTRAINT TRIGGER versioning_at_commit AFTER INSERT ON pg_temp.versioning_hook
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION versioning_at_commit();
    END IF;
    INSERT INTO pg_temp.versioning_hook VALUES (1);
    PERFORM set_config('versioning.staging', '1', true);
END $$;
"""


def pg_ddl(variant: str) -> str:
    if variant == "plain":
        return PG_TABLES
    if variant == "row":
        changes = PG_CHANGES.replace("o.", "OLD.").replace("n.", "NEW.")
        return PG_TABLES + PG_NEW_TRANSACTION + PG_ROW.replace("{changes}", changes)
    if variant == "direct-nofk":  # what the history table's foreign key costs (a query a row)
        return pg_ddl("direct").replace(
            "NOT NULL REFERENCES versioning_transaction (id)", "NOT NULL"
        )
    staged = variant.startswith("staged")
    check = variant == "refuse"
    # staged empties its TEMP tables with DELETE at commit; staged-oncommit lets PostgreSQL
    # truncate them (ON COMMIT DELETE ROWS)
    oncommit = variant == "staged-oncommit"
    stage = PG_STAGED.replace("{oncommit}", "ON COMMIT DELETE ROWS" if oncommit else "").replace(
        "{cleanup}",
        ""
        if oncommit
        else "DELETE FROM pg_temp.versioning_stage_item; DELETE FROM pg_temp.versioning_hook;",
    )
    capture = PG_CAPTURE.format(
        target="pg_temp.versioning_stage_item" if staged else "item_history",
        begin="PERFORM versioning_stage_begin();" if staged else "",
        txn_column="" if staged else "versioning_transaction_id,",
        txn_value="" if staged else "(SELECT versioning_txn()),",
        check_new=PG_REFUSE.format(rows="new_rows") if check else "",
        check_old=PG_REFUSE.format(rows="old_rows") if check else "",
        changed=PG_CHANGED,
        changes=PG_CHANGES,
    )
    return PG_TABLES + PG_NEW_TRANSACTION + (stage if staged else "") + capture


# ----------------------------------------------------------------------------------------------
# MariaDB


MARIA_TABLES = [
    """CREATE TABLE versioning_transaction (
        id bigint AUTO_INCREMENT PRIMARY KEY, issued_at datetime(6) NOT NULL,
        actor varchar(255), source_ip varchar(45), request_id varchar(128), reason text,
        extra longtext, KEY ix_vt_issued_at (issued_at, id), KEY ix_vt_actor (actor, id),
        KEY ix_vt_request_id (request_id, id), KEY ix_vt_source_ip (source_ip, id)
        ) ENGINE=InnoDB""",
    """CREATE TABLE item (id int PRIMARY KEY, name varchar(100), qty int,
        price decimal(10,2)) ENGINE=InnoDB""",
    """CREATE TABLE item_history (
        versioning_id bigint AUTO_INCREMENT PRIMARY KEY,
        versioning_transaction_id bigint NOT NULL,
        versioning_operation varchar(6) NOT NULL,
        id int, name varchar(100), qty int, price decimal(10,2), versioning_changes longtext,
        KEY ix_item_history_record (id, versioning_transaction_id),
        CONSTRAINT fk_item_history_transaction FOREIGN KEY (versioning_transaction_id)
            REFERENCES versioning_transaction (id)) ENGINE=InnoDB""",
]

# The key of "the transaction this row belongs to": with the binary log on, @@last_gtid (the
# GTID of the session's last commit, so it changes at every commit); without it, the
# application's hand-off (which resets @versioning_txn) or, for other clients, the statement's
# start time. A rolled-back transaction row is caught by the point lookup.
MARIA_OPEN = """
  -- fast path: a later row of the statement that checked (NOW(6) is the statement's start time;
  -- no rollback can happen inside one statement). A subquery in a trigger costs ~50 us a row.
  IF NOT (@versioning_stmt <=> NOW(6)) OR @versioning_txn IS NULL THEN
    SET vbin = @@log_bin AND @@sql_log_bin;
    -- with the binary log, a context handed over in an earlier (committed) transaction is stale
    SET vctx = IF(vbin AND NOT (@versioning_ctx_gtid <=> @@last_gtid), NULL, @versioning_ctx);
    SET vkey = CONCAT(IF(vctx IS NULL, 'o:', 'a:'),
                      IF(vbin, @@last_gtid, IF(vctx IS NULL, NOW(6), '')));
    IF @versioning_txn IS NULL OR NOT (@versioning_key <=> vkey)
       OR NOT EXISTS (SELECT 1 FROM versioning_transaction WHERE id = @versioning_txn) THEN
        INSERT INTO versioning_transaction (issued_at, actor, source_ip, request_id, reason, extra)
        VALUES (UTC_TIMESTAMP(6),
                IF(vctx IS NULL, USER(), JSON_VALUE(vctx, '$.actor')),
                JSON_VALUE(vctx, '$.source_ip'),
                JSON_VALUE(vctx, '$.request_id'),
                JSON_VALUE(vctx, '$.reason'),
                IF(vctx IS NULL,
                   JSON_OBJECT('database_user', USER(), 'connection_id', CONNECTION_ID()),
                   JSON_EXTRACT(vctx, '$.extra')));
        SET @versioning_txn = LAST_INSERT_ID(), @versioning_key = vkey;
        {snapshot}
    END IF;
    SET @versioning_stmt = NOW(6);
  END IF;"""

# snapshot: a consistent read at the first write opens the transaction's read view then, so that
# innodb_snapshot_isolation=ON refuses (ER_CHECKREAD) to change a row committed after it.
MARIA_SNAPSHOT = (
    "SELECT COUNT(*) INTO newer FROM versioning_transaction WHERE id = @versioning_txn;"
)

# refuse: a locking read sees the latest committed history even under REPEATABLE READ.
MARIA_REFUSE = """
    SELECT COUNT(*) INTO newer FROM item_history
    WHERE id = {row}.id AND versioning_transaction_id > @versioning_txn LOCK IN SHARE MODE;
    IF newer > 0 THEN
        SIGNAL SQLSTATE '40001' SET MESSAGE_TEXT =
            'versioning: item changed by a transaction committed after this one began writing';
    END IF;"""

MARIA_CHANGES = """CONCAT('{', CONCAT_WS(',',
    IF(OLD.name <=> NEW.name, NULL, CONCAT('"name":', JSON_ARRAY(OLD.name, NEW.name))),
    IF(OLD.qty <=> NEW.qty, NULL, CONCAT('"qty":', JSON_ARRAY(OLD.qty, NEW.qty))),
    IF(OLD.price <=> NEW.price, NULL, CONCAT('"price":', JSON_ARRAY(OLD.price, NEW.price)))
), '}')"""


def maria_ddl(variant: str) -> list[str]:
    if variant == "plain":
        return list(MARIA_TABLES)
    check = variant == "refuse"
    head = (
        "BEGIN DECLARE vkey VARCHAR(80); DECLARE vbin INT; DECLARE vctx LONGTEXT; "
        "DECLARE newer INT DEFAULT 0;"
    )
    opening = MARIA_OPEN.replace("{snapshot}", MARIA_SNAPSHOT if variant == "snapshot" else "")
    ins = f"""CREATE TRIGGER item_ai AFTER INSERT ON item FOR EACH ROW {head}
        {opening} {MARIA_REFUSE.format(row="NEW") if check else ""}
        INSERT INTO item_history (versioning_transaction_id, versioning_operation, id, name,
                                  qty, price)
        VALUES (@versioning_txn, 'insert', NEW.id, NEW.name, NEW.qty, NEW.price);
    END"""
    upd = f"""CREATE TRIGGER item_au AFTER UPDATE ON item FOR EACH ROW {head}
        IF NOT (OLD.id <=> NEW.id AND OLD.name <=> NEW.name AND OLD.qty <=> NEW.qty
                AND OLD.price <=> NEW.price) THEN
            {opening} {MARIA_REFUSE.format(row="NEW") if check else ""}
            INSERT INTO item_history (versioning_transaction_id, versioning_operation, id, name,
                                      qty, price, versioning_changes)
            VALUES (@versioning_txn, 'update', NEW.id, NEW.name, NEW.qty, NEW.price,
                    {MARIA_CHANGES});
        END IF;
    END"""
    dele = f"""CREATE TRIGGER item_ad AFTER DELETE ON item FOR EACH ROW {head}
        {opening} {MARIA_REFUSE.format(row="OLD") if check else ""}
        INSERT INTO item_history (versioning_transaction_id, versioning_operation, id, name,
                                  qty, price)
        VALUES (@versioning_txn, 'delete', OLD.id, OLD.name, OLD.qty, OLD.price);
    END"""
    return [*MARIA_TABLES, ins, upd, dele]


# ----------------------------------------------------------------------------------------------
# SQLite


SQLITE_TABLES = [
    """CREATE TABLE versioning_transaction (
        id INTEGER PRIMARY KEY AUTOINCREMENT, issued_at DATETIME NOT NULL, actor VARCHAR(255),
        source_ip VARCHAR(45), request_id VARCHAR(128), reason TEXT, extra JSON)""",
    "CREATE TABLE item (id INTEGER PRIMARY KEY, name VARCHAR(100), qty INTEGER, "
    "price NUMERIC(10,2))",
    """CREATE TABLE item_history (
        versioning_id INTEGER PRIMARY KEY AUTOINCREMENT,
        versioning_transaction_id INTEGER NOT NULL REFERENCES versioning_transaction (id),
        versioning_operation VARCHAR(6) NOT NULL,
        id INTEGER, name VARCHAR(100), qty INTEGER, price NUMERIC(10,2),
        versioning_changes JSON)""",
    "CREATE INDEX ix_item_history_record ON item_history (id, versioning_transaction_id)",
    "CREATE INDEX ix_item_history_transaction ON item_history (versioning_transaction_id)",
    "CREATE INDEX ix_vt_issued_at ON versioning_transaction (issued_at, id)",
    "CREATE INDEX ix_vt_actor ON versioning_transaction (actor, id)",
    "CREATE INDEX ix_vt_request_id ON versioning_transaction (request_id, id)",
    "CREATE INDEX ix_vt_source_ip ON versioning_transaction (source_ip, id)",
    # One row at most: the application's context (app = 1, until it deletes the row before
    # COMMIT) and the open transaction row; for other clients the statement key (clock, tc).
    """CREATE TABLE versioning_session (
        id INTEGER PRIMARY KEY CHECK (id = 1), txn INTEGER, app INTEGER NOT NULL DEFAULT 0,
        clock REAL, tc INTEGER, actor VARCHAR(255), source_ip VARCHAR(45),
        request_id VARCHAR(128), reason TEXT, extra JSON)""",
]

SQLITE_OPEN = """
    INSERT INTO versioning_transaction (issued_at, actor, source_ip, request_id, reason, extra)
    SELECT strftime('%Y-%m-%d %H:%M:%f', 'now'),
           CASE WHEN s.app = 1 THEN s.actor ELSE 'sqlite' END,
           s.source_ip, s.request_id, s.reason,
           CASE WHEN s.app = 1 THEN s.extra ELSE json_object('client', 'other connection') END
    FROM (SELECT 1) AS one LEFT JOIN versioning_session AS s ON s.id = 1
    WHERE s.txn IS NULL
       OR NOT (s.app = 1 OR (s.clock = julianday('now') AND s.tc = total_changes()));
    INSERT INTO versioning_session (id, txn, app, clock, tc)
    SELECT 1, last_insert_rowid(), 0, julianday('now'), 0 WHERE changes() = 1
    ON CONFLICT (id) DO UPDATE SET txn = excluded.txn, clock = excluded.clock;"""

# Last statement of a row's trigger: the statement key for the next row of the same statement
# (total_changes() counts this UPDATE too, hence + 1; the statement's own rows are counted only
# when it ends, so the next statement sees a larger count).
SQLITE_CLOSE = "UPDATE versioning_session SET tc = total_changes() + 1 WHERE id = 1 AND app = 0;"
SQLITE_TXN = "(SELECT txn FROM versioning_session WHERE id = 1)"
SQLITE_CHANGES = """(SELECT json_group_object(k, json(v)) FROM (
        SELECT 'name' AS k, json_array(OLD.name, NEW.name) AS v WHERE OLD.name IS NOT NEW.name
        UNION ALL SELECT 'qty', json_array(OLD.qty, NEW.qty) WHERE OLD.qty IS NOT NEW.qty
        UNION ALL SELECT 'price', json_array(OLD.price, NEW.price)
                  WHERE OLD.price IS NOT NEW.price))"""


def sqlite_ddl(variant: str) -> list[str]:
    if variant == "plain":
        return list(SQLITE_TABLES)
    ins = f"""CREATE TRIGGER item_ai AFTER INSERT ON item BEGIN {SQLITE_OPEN}
        INSERT INTO item_history (versioning_transaction_id, versioning_operation, id, name, qty,
                                  price)
        VALUES ({SQLITE_TXN}, 'insert', NEW.id, NEW.name, NEW.qty, NEW.price);
        {SQLITE_CLOSE} END"""
    upd = f"""CREATE TRIGGER item_au AFTER UPDATE ON item
        WHEN OLD.id IS NOT NEW.id OR OLD.name IS NOT NEW.name OR OLD.qty IS NOT NEW.qty
             OR OLD.price IS NOT NEW.price
        BEGIN {SQLITE_OPEN}
        INSERT INTO item_history (versioning_transaction_id, versioning_operation, id, name, qty,
                                  price, versioning_changes)
        VALUES ({SQLITE_TXN}, 'update', NEW.id, NEW.name, NEW.qty, NEW.price, {SQLITE_CHANGES});
        {SQLITE_CLOSE} END"""
    dele = f"""CREATE TRIGGER item_ad AFTER DELETE ON item BEGIN {SQLITE_OPEN}
        INSERT INTO item_history (versioning_transaction_id, versioning_operation, id, name, qty,
                                  price)
        VALUES ({SQLITE_TXN}, 'delete', OLD.id, OLD.name, OLD.qty, OLD.price);
        {SQLITE_CLOSE} END"""
    return [*SQLITE_TABLES, ins, upd, dele]


# ----------------------------------------------------------------------------------------------
# Backends: the DB-API connection, the scratch database and the application's side of the
# protocol (hand-off, and on SQLite the clean-up before COMMIT).


class Backend:
    name = ""
    ph = "%s"
    variants: tuple[str, ...] = ()
    order_variants: tuple[str, ...] = ()
    grouping_variants: tuple[str, ...] = ("direct",)
    orm_variants: tuple[str, ...] = ("plain", "direct")

    def create(self) -> None: ...
    def drop(self) -> None: ...
    def reset(self, variant: str) -> None: ...
    def connect(self, *, autocommit: bool = False, **options: Any) -> Any: ...

    def begin(self, conn: Any) -> None:
        """Drivers here open a transaction at the first statement (SQLite: explicitly)."""

    def handoff(self, conn: Any) -> None: ...

    def app_commit(self, conn: Any) -> None:
        conn.commit()

    def commit(self, conn: Any) -> None:
        conn.commit()

    def rollback(self, conn: Any) -> None:
        conn.rollback()

    def database_identity(self) -> str: ...

    def is_serialization_failure(self, error: BaseException) -> bool: ...

    def run(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur = conn.cursor()
        cur.execute(sql.replace("?", self.ph), params) if params else cur.execute(sql)
        rows = cur.fetchall() if cur.description else []
        cur.close()
        return list(rows)

    def many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        cur = conn.cursor()
        cur.executemany(sql.replace("?", self.ph), rows)
        cur.close()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        conn = self.connect(autocommit=True)
        try:
            return self.run(conn, sql, params)[0][0]
        finally:
            conn.close()


class Postgres(Backend):
    name = "postgresql"
    variants = ("plain", "direct", "direct-nofk", "row", "refuse", "staged", "staged-oncommit")
    order_variants = ("direct", "refuse", "staged")
    grouping_variants = ("direct", "row", "staged")
    orm_variants = ("plain", "direct", "row", "staged")

    def __init__(self, url: str) -> None:
        import psycopg

        self.psycopg = psycopg
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 5432
        self.user = parts.username or "postgres"
        self.db = f"capdesign_{os.getpid()}"

    def _admin(self) -> Any:
        return self.psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        )

    def create(self) -> None:
        with self._admin() as conn:
            conn.execute(f"CREATE DATABASE {self.db}")

    def drop(self) -> None:
        with self._admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")

    def connect(self, *, autocommit: bool = False, **options: Any) -> Any:
        return self.psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=self.db,
            autocommit=autocommit,
            **options,
        )

    def reset(self, variant: str) -> None:
        with self.connect(autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
            conn.execute(pg_ddl(variant))  # type: ignore[arg-type]

    def handoff(self, conn: Any) -> None:
        conn.execute("SELECT set_config('versioning.context', %s, true)", (CONTEXT_JSON,))

    def database_identity(self) -> str:
        return self.user

    def is_serialization_failure(self, error: BaseException) -> bool:
        return getattr(error, "sqlstate", None) in ("40001", "40P01")


class MariaDB(Backend):
    name = "mariadb"
    variants = ("plain", "direct", "refuse")
    order_variants = ("direct", "refuse", "snapshot")

    def __init__(self, url: str, label: str = "mariadb") -> None:
        import pymysql

        self.pymysql = pymysql
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 3306
        self.user = parts.username or "root"
        self.password = parts.password or ""
        self.db = f"capdesign_{os.getpid()}"
        self.name = label
        self.snapshot = False
        self.binlog = False

    def _raw(self, db: str | None, autocommit: bool) -> Any:
        return self.pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=db,
            autocommit=autocommit,
        )

    def create(self) -> None:
        conn = self._raw(None, True)
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE {self.db}")
        cur.execute("SELECT @@log_bin")
        self.binlog = bool(cur.fetchone()[0])
        conn.close()

    def drop(self) -> None:
        conn = self._raw(None, True)
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {self.db}")
        conn.close()

    def connect(self, *, autocommit: bool = False, **options: Any) -> Any:
        conn = self._raw(self.db, autocommit)
        if self.snapshot:
            conn.cursor().execute("SET SESSION innodb_snapshot_isolation = ON")
            if self.binlog:
                # statement-format logging turns the trigger's read into a locking read, which
                # opens no read view; row format keeps it a consistent read
                conn.cursor().execute("SET SESSION binlog_format = 'ROW'")
        if "lock_wait_timeout" in options:
            conn.cursor().execute(
                f"SET SESSION innodb_lock_wait_timeout = {int(options['lock_wait_timeout'])}"
            )
        return conn

    def reset(self, variant: str) -> None:
        self.snapshot = variant == "snapshot"
        conn = self._raw(None, True)
        cur = conn.cursor()
        cur.execute(f"DROP DATABASE IF EXISTS {self.db}")
        cur.execute(f"CREATE DATABASE {self.db}")
        cur.execute(f"USE {self.db}")
        for statement in maria_ddl(variant):
            cur.execute(statement)
        conn.close()

    def handoff(self, conn: Any) -> None:
        conn.cursor().execute(
            "SET @versioning_ctx = %s, @versioning_txn = NULL, @versioning_ctx_gtid = @@last_gtid",
            (CONTEXT_JSON,),
        )

    def app_commit(self, conn: Any) -> None:
        conn.commit()
        if not self.binlog:  # nothing tells the trigger the transaction ended: the app does
            conn.cursor().execute("SET @versioning_ctx = NULL, @versioning_txn = NULL")

    def database_identity(self) -> str:
        return f"{self.user}@"

    def is_serialization_failure(self, error: BaseException) -> bool:
        code = error.args[0] if error.args else None
        # 1644: SIGNAL SQLSTATE '40001'; 1020: innodb_snapshot_isolation; 1213: deadlock
        return code in (1644, 1020, 1213)


class SQLite(Backend):
    name = "sqlite"
    ph = "?"
    variants = ("plain", "direct")
    order_variants = ("direct",)

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="capdesign_")
        self.path = os.path.join(self.dir, "probe.db")

    def create(self) -> None:
        pass

    def drop(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def connect(self, *, autocommit: bool = False, **options: Any) -> Any:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            timeout=options.get("timeout", 10.0),
            check_same_thread=False,
        )
        return _SQLiteConnection(conn, autocommit)

    def reset(self, variant: str) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path + suffix)
        conn = sqlite3.connect(self.path, isolation_level=None)
        for statement in sqlite_ddl(variant):
            conn.execute(statement)
        conn.close()

    def handoff(self, conn: Any) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO versioning_session (id, txn, app, actor, source_ip, "
            "request_id, reason, extra) VALUES (1, NULL, 1, ?, ?, ?, ?, ?)",
            (
                CONTEXT["actor"],
                CONTEXT["source_ip"],
                CONTEXT["request_id"],
                CONTEXT["reason"],
                json.dumps(CONTEXT["extra"]),
            ),
        )

    def app_commit(self, conn: Any) -> None:
        conn.execute("DELETE FROM versioning_session")
        conn.commit()

    def database_identity(self) -> str:
        return "sqlite"

    def is_serialization_failure(self, error: BaseException) -> bool:
        return False


class _SQLiteConnection:
    """sqlite3 in manual mode, with the DB-API shape the other drivers have: a transaction
    opens at the first statement, ``commit``/``rollback`` end it."""

    def __init__(self, conn: sqlite3.Connection, autocommit: bool) -> None:
        self.conn = conn
        self.autocommit = autocommit

    def _open(self) -> None:
        if not self.autocommit and not self.conn.in_transaction:
            self.conn.execute("BEGIN")

    def cursor(self) -> Any:
        self._open()
        return self.conn.cursor()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self._open()
        return self.conn.execute(sql, params)

    def commit(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


# ----------------------------------------------------------------------------------------------
# Correctness checks


@dataclass
class Delta:
    """What a piece of work left: new transaction rows and new history rows."""

    transactions: list[tuple[Any, ...]]
    history: list[tuple[Any, ...]]

    @property
    def txn_ids(self) -> set[Any]:
        return {h[0] for h in self.history}


def _marks(be: Backend) -> tuple[int, int]:
    conn = be.connect(autocommit=True)
    try:
        t = be.run(conn, "SELECT COALESCE(MAX(id), 0) FROM versioning_transaction")[0][0]
        h = be.run(conn, "SELECT COALESCE(MAX(versioning_id), 0) FROM item_history")[0][0]
        return int(t), int(h)
    finally:
        conn.close()


@contextlib.contextmanager
def delta(be: Backend) -> Iterator[Delta]:
    t0, h0 = _marks(be)
    out = Delta([], [])
    yield out
    conn = be.connect(autocommit=True)
    try:
        out.transactions = be.run(
            conn,
            "SELECT id, actor, request_id, extra FROM versioning_transaction WHERE id > ? "
            "ORDER BY id",
            (t0,),
        )
        out.history = be.run(
            conn,
            "SELECT versioning_transaction_id, versioning_operation, id, versioning_changes "
            "FROM item_history WHERE versioning_id > ? ORDER BY versioning_id",
            (h0,),
        )
    finally:
        conn.close()


def seed(be: Backend, count: int = 20) -> None:
    conn = be.connect()
    be.begin(conn)
    be.many(
        conn,
        "INSERT INTO item (id, name, qty, price) VALUES (?, ?, ?, ?)",
        [row(i) for i in range(1, count + 1)],
    )
    be.commit(conn)
    conn.close()


def upd(be: Backend, conn: Any, pk: int) -> None:
    be.run(conn, "UPDATE item SET qty = qty + 1 WHERE id = ?", (pk,))


def check_grouping(be: Backend, rep: Report, v: str) -> None:
    """Transaction rows and context."""
    be.reset(v)
    seed(be)
    app = be.connect()

    with delta(be) as d:
        be.begin(app)
        be.handoff(app)
        be.run(
            app,
            "INSERT INTO item (id, name, qty, price) "
            "VALUES (101, 'a', 1, 1.00), (102, 'b', 2, 2.00)",
        )
        upd(be, app, 1)
        be.run(app, "DELETE FROM item WHERE id = 2")
        be.app_commit(app)
    ops = [h[1] for h in d.history]
    rep.check(
        v,
        "app: 3 statements, 4 rows in one transaction -> one transaction row, the app's context",
        len(d.transactions) == 1
        and len(d.txn_ids) == 1
        and ops == ["insert", "insert", "update", "delete"]
        and d.transactions[0][1] == "alice"
        and d.transactions[0][2] == "req-1",
        f"{len(d.transactions)} transaction row(s), ops {ops}, "
        f"actor {d.transactions[0][1] if d.transactions else None}",
    )

    with delta(be) as d:
        be.begin(app)
        be.handoff(app)
        upd(be, app, 3)
        be.rollback(app)
    rep.check(
        v, "rollback leaves no transaction row and no history", not d.transactions and not d.history
    )

    with delta(be) as d:
        be.begin(app)
        be.handoff(app)
        upd(be, app, 3)
        be.run(app, "SAVEPOINT s1")
        upd(be, app, 4)
        be.run(app, "ROLLBACK TO SAVEPOINT s1")
        upd(be, app, 5)
        be.app_commit(app)
    rep.check(
        v,
        "savepoint rolled back after the first write: its rows go, the transaction row stays",
        len(d.transactions) == 1 and [h[2] for h in d.history] == [3, 5] and len(d.txn_ids) == 1,
        f"{len(d.transactions)} transaction row(s), history of {[h[2] for h in d.history]}",
    )

    with delta(be) as d:
        be.begin(app)
        be.handoff(app)
        be.run(app, "SAVEPOINT s1")
        upd(be, app, 6)
        be.run(app, "ROLLBACK TO SAVEPOINT s1")
        upd(be, app, 7)
        be.app_commit(app)
    rep.check(
        v,
        "first write inside a rolled-back savepoint: its transaction row goes too, one row remains",
        len(d.transactions) == 1
        and [h[2] for h in d.history] == [7]
        and d.transactions[0][1] == "alice"
        and d.txn_ids == {d.transactions[0][0]},
        f"{len(d.transactions)} transaction row(s), history of {[h[2] for h in d.history]}, actor "
        f"{d.transactions[0][1] if d.transactions else None}",
    )

    with delta(be) as d:
        be.begin(app)
        be.handoff(app)
        be.run(app, "UPDATE item SET name = name WHERE id = 8")
        be.app_commit(app)
    rep.check(
        v, "an update that changes nothing records nothing", not d.transactions and not d.history
    )

    with delta(be) as d:
        be.begin(app)
        be.handoff(app)
        upd(be, app, 3)
        be.app_commit(app)
        be.begin(app)
        upd(be, app, 4)
        be.commit(app)
    actors = [t[1] for t in d.transactions]
    rep.check(
        v,
        "same connection: a later transaction without hand-off gets its own row, not the app's",
        len(d.transactions) == 2 and len(d.txn_ids) == 2 and actors[1] != "alice",
        f"transaction rows {len(d.transactions)}, actors {actors}",
    )
    app.close()

    other = be.connect()
    with delta(be) as d:
        be.begin(other)
        be.run(other, "UPDATE item SET qty = qty + 1 WHERE id IN (3, 4, 5)")
        be.commit(other)
    ident = d.transactions[0] if d.transactions else None
    rep.check(
        v,
        "other client, one statement of 3 rows -> one transaction row with the database's identity",
        len(d.transactions) == 1
        and len(d.history) == 3
        and ident is not None
        and str(ident[1]).startswith(be.database_identity()),
        f"{len(d.transactions)} row(s); actor {ident[1] if ident else None}; "
        f"extra {ident[3] if ident else None}",
    )

    with delta(be) as d:
        be.begin(other)
        upd(be, other, 3)
        upd(be, other, 4)
        be.commit(other)
    rep.check(
        v,
        "other client, 2 statements in one transaction -> one transaction row",
        len(d.transactions) == 1 and len(d.txn_ids) == 1,
        f"{len(d.transactions)} transaction row(s)",
    )

    with delta(be) as d:
        be.begin(other)
        upd(be, other, 3)
        be.run(other, "SAVEPOINT s1")
        upd(be, other, 4)
        be.run(other, "ROLLBACK TO SAVEPOINT s1")
        be.commit(other)
    rep.check(
        v,
        "other client, savepoint rollback: the rolled-back row is gone, the rest recorded",
        len(d.transactions) == 1 and [h[2] for h in d.history] == [3],
        f"{len(d.transactions)} transaction row(s), history of {[h[2] for h in d.history]}",
    )
    other.close()

    auto = be.connect(autocommit=True)
    with delta(be) as d:
        upd(be, auto, 3)
        upd(be, auto, 4)
    rep.check(
        v,
        "other client, 2 autocommit statements -> two transaction rows",
        len(d.transactions) == 2 and len(d.txn_ids) == 2,
        f"{len(d.transactions)} transaction row(s)",
    )
    auto.close()

    if be.name != "sqlite":  # SQLite: one writer at a time, the two cannot interleave
        app, other = be.connect(), be.connect()
        with delta(be) as d:
            be.begin(app)
            be.handoff(app)
            upd(be, app, 10)
            be.begin(other)
            upd(be, other, 11)
            be.commit(other)
            upd(be, app, 12)
            be.app_commit(app)
        by_txn = {t[0]: t[1] for t in d.transactions}
        actors = {h[2]: by_txn.get(h[0]) for h in d.history}
        rep.check(
            v,
            "app and other client interleaved on two connections: each its own row and identity",
            len(d.transactions) == 2
            and actors.get(10) == actors.get(12) == "alice"
            and actors.get(11) not in (None, "alice"),
            f"{actors}",
        )
        app.close()
        other.close()

    if be.name == "postgresql":
        assert isinstance(be, Postgres)
        with delta(be) as d:
            result = subprocess.run(
                [
                    "psql",
                    "-h",
                    be.host,
                    "-p",
                    str(be.port),
                    "-U",
                    be.user,
                    "-d",
                    be.db,
                    "-qc",
                    "UPDATE item SET qty = qty + 1 WHERE id = 9",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
        extra = d.transactions[0][3] if d.transactions else {}
        rep.check(
            v,
            "psql in a subprocess -> a transaction row naming the database user and 'psql'",
            result.returncode == 0
            and len(d.transactions) == 1
            and (extra or {}).get("application_name") == "psql",
            f"actor {d.transactions[0][1] if d.transactions else None}, extra {extra}",
        )


def check_order(be: Backend, rep: Report, variant: str) -> None:
    """T2 writes Y first, T1 then changes X and commits while T2 waits on X's lock; T2 then
    changes X. X's history must list T1 before T2 (transaction ids in commit order)."""
    be.reset(variant)
    seed(be, 3)
    x, y = 1, 2
    _, h0 = _marks(be)
    c1, c2 = be.connect(), be.connect()
    outcome: dict[str, Any] = {}
    if be.name == "sqlite":
        # One writer at a time: T1's first write waits for T2's COMMIT.
        be.begin(c2)
        be.handoff(c2)
        upd(be, c2, y)

        def t1() -> None:
            be.begin(c1)
            be.handoff(c1)
            upd(be, c1, x)
            be.app_commit(c1)

        thread = threading.Thread(target=t1)
        thread.start()
        time.sleep(0.3)
        outcome["t1 waited for T2"] = thread.is_alive()
        upd(be, c2, x)
        be.app_commit(c2)
        thread.join()
        outcome["t2"] = "committed"
    else:
        be.begin(c2)
        be.handoff(c2)
        upd(be, c2, y)  # T2 takes its id here (direct, refuse)
        be.begin(c1)
        be.handoff(c1)
        upd(be, c1, x)  # T1, a larger id; holds X's lock

        def t2() -> None:
            try:
                upd(be, c2, x)  # waits for T1
                be.app_commit(c2)
                outcome["t2"] = "committed"
            except Exception as error:
                outcome["t2"] = (
                    f"refused ({type(error).__name__}: {str(error).splitlines()[0][:90]})"
                )
                outcome["serialization"] = be.is_serialization_failure(error)
                be.rollback(c2)

        thread = threading.Thread(target=t2)
        thread.start()
        time.sleep(0.5)
        outcome["t2 waited for T1"] = thread.is_alive()
        be.app_commit(c1)
        thread.join(30)
        if outcome.get("t2", "").startswith("refused"):
            be.begin(c2)  # the application retries the whole transaction
            be.handoff(c2)
            upd(be, c2, y)
            upd(be, c2, x)
            be.app_commit(c2)
            outcome["retry"] = "committed"
    c1.close()
    c2.close()
    conn = be.connect(autocommit=True)
    ids = [
        r[0]
        for r in be.run(
            conn,
            "SELECT versioning_transaction_id FROM item_history WHERE id = ? AND versioning_id > ? "
            "ORDER BY versioning_id",
            (x, h0),
        )
    ]
    conn.close()
    ok = len(ids) == 2 and ids[0] < ids[1]
    if "serialization" in outcome:
        ok = ok and outcome["serialization"]
    rep.check(
        variant,
        "commit order: X's history ids follow commit order when T2 (first write earlier) changes "
        "X after T1 committed it",
        ok,
        f"X's ids in history order {ids}; {outcome}",
    )


def check_refuse_blocking(be: MariaDB, rep: Report) -> None:
    """The locking read of the refuse variant takes next-key locks on the history index: does a
    concurrent insert of a new record (the next key) wait for the reader's commit?"""
    be.reset("refuse")
    seed(be, 3)
    c1, c2 = be.connect(), be.connect(lock_wait_timeout=1)
    be.begin(c1)
    be.handoff(c1)
    upd(be, c1, 3)  # the largest key: its locking read locks the gap up to the supremum
    started = time.perf_counter()
    try:
        be.run(c2, "INSERT INTO item (id, name, qty, price) VALUES (4, 'new', 1, 1.00)")
        be.commit(c2)
        waited, detail = False, "the insert went through"
    except Exception as error:
        waited, detail = True, f"{type(error).__name__}: {error}"
        be.rollback(c2)
    be.rollback(c1)
    c1.close()
    c2.close()
    rep.check(
        "refuse",
        "a concurrent insert of a new record is not blocked by the refuse check's locking read",
        not waited,
        f"{detail} after {time.perf_counter() - started:.1f}s",
    )


# ----------------------------------------------------------------------------------------------
# Timings

WORKLOADS = (
    ("inserts_executemany", "s", "5,000 single-row INSERTs in one executemany, one commit"),
    ("inserts_values", "s", "5,000 rows as 10 INSERTs of 500 VALUES rows, one commit"),
    ("updates_executemany", "s", "5,000 single-row UPDATEs in one executemany, one commit"),
    ("commit_app_ms", "ms", "one UPDATE + COMMIT, by the application (with its hand-off)"),
    ("commit_other_ms", "ms", "one UPDATE + COMMIT, by another client (no hand-off)"),
    ("bulk_update", "s", "one UPDATE ... WHERE touching all 5,000 rows, one commit"),
)
COMMITS = 200
WARM_UP = 5
#: measure() checks that each workload recorded every change (off for bare-trigger experiments)
VERIFY = True


def _timed(function: Callable[[], None]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _history_count(be: Backend) -> int:
    conn = be.connect(autocommit=True)
    try:
        return int(be.run(conn, "SELECT COUNT(*) FROM item_history")[0][0])
    finally:
        conn.close()


def measure(be: Backend, variant: str, workload: str, rows: int) -> float:
    """One sample of ``workload`` for ``variant`` on a fresh schema and a warmed-up connection
    (the first call of each statement compiles and plans it, as a pooled connection already
    has); ``plain`` does no hand-off."""
    capture = variant != "plain"
    data = [row(i) for i in range(1, rows + 1)]
    spare = [row(i) for i in range(rows + 1, rows + 21)]  # warm-up rows, outside the timed range
    insert = "INSERT INTO item (id, name, qty, price) VALUES (?, ?, ?, ?)"
    be.reset(variant)
    conn = be.connect()

    def txn(work: Callable[[Any], None], app: bool = True) -> None:
        be.begin(conn)
        if app and capture:
            be.handoff(conn)
        work(conn)
        if app and capture:
            be.app_commit(conn)
        else:
            be.commit(conn)

    def values(chunks: list[tuple[Any, ...]], size: int) -> Callable[[Any], None]:
        def work(c: Any) -> None:
            for start in range(0, len(chunks), size):
                chunk = chunks[start : start + size]
                marks = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
                be.run(
                    c,
                    f"INSERT INTO item (id, name, qty, price) VALUES {marks}",
                    [v for r in chunk for v in r],
                )

        return work

    update = "UPDATE item SET name = ?, qty = qty + 1 WHERE id = ?"
    bulk = "UPDATE item SET qty = qty + 1 WHERE id <= ?"
    try:
        if workload == "inserts_executemany":
            txn(lambda c: be.many(c, insert, spare))
            return _timed(lambda: txn(lambda c: be.many(c, insert, data)))
        if workload == "inserts_values":
            txn(values(spare, 10))
            return _timed(lambda: txn(values(data, 500)))
        txn(lambda c: be.many(c, insert, data + spare), app=False)  # the rows to change
        before = _history_count(be) if capture else 0
        if workload == "updates_executemany":
            txn(lambda c: be.many(c, update, [(f"{r[1]} w", r[0]) for r in spare]))
            elapsed = _timed(
                lambda: txn(lambda c: be.many(c, update, [(f"{r[1]} updated", r[0]) for r in data]))
            )
            expected = rows + len(spare)
        elif workload in ("commit_app_ms", "commit_other_ms"):
            app = workload == "commit_app_ms"
            samples = []
            for i in range(COMMITS + WARM_UP):
                pk = 1 + (i * 7) % rows
                start = time.perf_counter()
                txn(lambda c, pk=pk: upd(be, c, pk), app=app)
                if i >= WARM_UP:
                    samples.append(time.perf_counter() - start)
            elapsed = statistics.median(samples) * 1000  # the median commit: IO stalls of
            expected = COMMITS + WARM_UP  # other processes on the machine hit few commits
        else:  # bulk_update
            txn(lambda c: be.run(c, bulk, (100,)))  # plans the statement for many rows
            elapsed = _timed(lambda: txn(lambda c: be.run(c, bulk, (rows,))))
            expected = 100 + rows
        if capture and VERIFY and _history_count(be) - before != expected:
            raise AssertionError(f"{be.name}/{variant}/{workload}: history rows missing")
        return elapsed
    finally:
        conn.close()


def bench(be: Backend, rep: Report, runs: int, rows: int) -> None:
    """Workload by workload, every variant in turn (rotating the order run by run), so that the
    machine's drift hits plain and the captures alike; ratios are taken within a run."""
    for number in range(runs):
        for key, _unit, _label in WORKLOADS:
            order = list(be.variants)
            shift = number % len(order)
            order = order[shift:] + order[:shift]
            results = {variant: measure(be, variant, key, rows) for variant in order}
            for variant, value in results.items():
                rep.times.setdefault((variant, key), []).append(value)
                rep.ratios.setdefault((variant, key), []).append(value / results["plain"])
        print(f"  [{be.name}] timing run {number + 1}/{runs} done (load {load_average():.2f})")
        sys.stdout.flush()


# ----------------------------------------------------------------------------------------------
# The same, through plain SQLAlchemy ORM (the targets are ratios to plain SQLAlchemy, as in
# tests/benchmarks/worker.py): the triggers are installed by the DDL above, the session hands its
# context over in ``after_begin`` and, on SQLite, deletes the session row after its last flush.

ORM_WORKLOADS = (
    ("orm_inserts", "s", "ORM: 5,000 objects added, a commit every 500"),
    ("orm_updates", "s", "ORM: 5,000 objects loaded and changed, a commit every 500"),
    ("orm_commit_ms", "ms", "ORM: one changed object + commit (session holding 200)"),
    ("orm_bulk_update", "s", "ORM: update(Item).where(id <= 5,000), one commit"),
)
BATCH = 500


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(100))
    qty: Mapped[int]
    price: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))


def orm_engine(be: Backend) -> Any:
    if isinstance(be, Postgres):
        url = f"postgresql+psycopg://{be.user}@{be.host}:{be.port}/{be.db}"
    elif isinstance(be, MariaDB):
        url = f"mariadb+pymysql://{be.user}:{be.password}@{be.host}:{be.port}/{be.db}"
    else:
        assert isinstance(be, SQLite)
        url = f"sqlite:///{be.path}"
    return sa.create_engine(url)


def orm_measure(be: Backend, variant: str, workload: str, rows: int) -> float:
    be.reset(variant)
    engine = orm_engine(be)
    capture = variant != "plain"
    if capture:

        @event.listens_for(Session, "after_begin")
        def handoff(session: Session, transaction: Any, connection: Any) -> None:
            be.handoff(connection.connection.dbapi_connection)

        listeners: list[tuple[Any, str, Any]] = [(Session, "after_begin", handoff)]
        if isinstance(be, SQLite):

            @event.listens_for(Session, "before_commit")
            def close(session: Session) -> None:
                session.flush()
                session.connection().exec_driver_sql("DELETE FROM versioning_session")

            listeners.append((Session, "before_commit", close))
        if isinstance(be, MariaDB) and not be.binlog:

            @event.listens_for(engine, "reset")
            def forget(dbapi_connection: Any, record: Any, state: Any) -> None:
                dbapi_connection.cursor().execute(
                    "SET @versioning_ctx = NULL, @versioning_txn = NULL"
                )

            listeners.append((engine, "reset", forget))

    def add(first: int, last: int) -> None:
        with Session(engine) as session:
            for start in range(first, last + 1, BATCH):
                stop = min(start + BATCH, last + 1)
                session.add_all(
                    [
                        Item(
                            id=i,
                            name=f"item {i:06d}",
                            qty=i % 1000,
                            price=Decimal(f"{i % 10000}.{i % 100:02d}"),
                        )
                        for i in range(start, stop)
                    ]
                )
                session.commit()

    def change(first: int, last: int) -> None:
        with Session(engine) as session:
            for start in range(first, last + 1, BATCH):
                stop = min(start + BATCH - 1, last)
                for obj in session.scalars(
                    sa.select(Item).where(Item.id.between(start, stop)).order_by(Item.id)
                ):
                    obj.name = f"{obj.name} updated"
                    obj.qty = obj.qty + 1
                session.commit()

    def bulk(last: int) -> None:
        with Session(engine) as session:
            session.execute(sa.update(Item).where(Item.id <= last).values(qty=Item.qty + 1))
            session.commit()

    try:
        if workload == "orm_inserts":
            add(rows + 1, rows + 20)  # warm-up
            return _timed(lambda: add(1, rows))
        add(1, rows + 20)
        if workload == "orm_updates":
            change(rows + 1, rows + 20)
            return _timed(lambda: change(1, rows))
        if workload == "orm_commit_ms":
            with Session(engine, expire_on_commit=False) as session:
                held = session.scalars(sa.select(Item).where(Item.id <= 200)).all()
                samples = []
                for i in range(COMMITS + WARM_UP):
                    start = time.perf_counter()
                    held[i % len(held)].qty += 1
                    session.commit()
                    if i >= WARM_UP:
                        samples.append(time.perf_counter() - start)
            return statistics.median(samples) * 1000
        bulk(100)
        return _timed(lambda: bulk(rows))
    finally:
        if capture:  # the workload was recorded, under the session's context
            conn = be.connect(autocommit=True)
            history = be.run(conn, "SELECT COUNT(*) FROM item_history")[0][0]
            actor = be.run(conn, "SELECT actor FROM versioning_transaction ORDER BY id DESC")[0][0]
            conn.close()
            if history < rows or actor != "alice":
                raise AssertionError(f"{be.name}/{variant}/{workload}: {history} rows, {actor}")
        if capture:
            for target, name, fn in listeners:
                event.remove(target, name, fn)
        engine.dispose()


def orm_bench(be: Backend, rep: Report, runs: int, rows: int) -> None:
    for number in range(runs):
        for key, _unit, _label in ORM_WORKLOADS:
            order = list(be.orm_variants)
            shift = number % len(order)
            order = order[shift:] + order[:shift]
            results = {variant: orm_measure(be, variant, key, rows) for variant in order}
            for variant, value in results.items():
                rep.times.setdefault((variant, key), []).append(value)
                rep.ratios.setdefault((variant, key), []).append(value / results["plain"])
        print(f"  [{be.name}] ORM run {number + 1}/{runs} done (load {load_average():.2f})")
        sys.stdout.flush()


# ----------------------------------------------------------------------------------------------
# Main


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def print_tables(reports: list[Report]) -> None:
    print("\n== Checks ==")
    for rep in reports:
        passed = sum(ok for *_, ok, _ in rep.checks)
        print(f"{rep.backend}: {passed}/{len(rep.checks)} PASS")
        for variant, name, ok, _detail in rep.checks:
            print(f"  {'PASS' if ok else 'FAIL'}  [{variant}] {name}")
    print("\n== Timings: median, and (median of per-run ratios to plain) ==")
    for rep in reports:
        if not rep.times:
            continue
        variants = list(dict.fromkeys(v for v, _ in rep.times))
        print(f"\n{rep.backend}")
        header = f"| {'workload':<22} | " + " | ".join(f"{v:>18}" for v in variants) + " |"
        print(header)
        print("|" + "-" * 24 + "|" + "|".join("-" * 20 for _ in variants) + "|")
        for key, unit, _label in WORKLOADS + ORM_WORKLOADS:
            if not any((v, key) in rep.times for v in variants):
                continue
            cells = []
            for variant in variants:
                samples = rep.times.get((variant, key))
                if not samples:
                    cells.append(f"{'-':>18}")
                    continue
                value = statistics.median(samples)
                ratio = statistics.median(rep.ratios[(variant, key)])
                shown = f"{value:.3f}{unit}" if unit == "s" else f"{value:.3f}ms"
                cells.append(f"{shown + (f' ({ratio:.2f}x)' if variant != 'plain' else ''):>18}")
            print(f"| {key:<22} | " + " | ".join(cells) + " |")
    print()
    for key, _unit, label in WORKLOADS + ORM_WORKLOADS:
        print(f"  {key}: {label}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mariadb")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=5_000)
    parser.add_argument("--no-timings", action="store_true")
    parser.add_argument("--no-orm", action="store_true", help="skip the SQLAlchemy ORM timings")
    parser.add_argument("--no-checks", action="store_true")
    parser.add_argument("--postgresql-url", default=PG_URL)
    parser.add_argument("--mariadb-url", default=MARIADB_URL)
    parser.add_argument(
        "--mariadb-binlog-url",
        default=os.environ.get("CAPDESIGN_MARIADB_BINLOG_URL"),
        help="a second MariaDB server with the binary log on (checks only)",
    )
    args = parser.parse_args(argv)
    sqlite3.register_adapter(Decimal, str)
    print(f"load average at start: {load_average():.2f}")
    reports: list[Report] = []
    for name in args.backends.split(","):
        backends: list[tuple[Backend, bool]] = []
        if name == "postgresql":
            backends.append((Postgres(args.postgresql_url), True))
        elif name == "mariadb":
            backends.append((MariaDB(args.mariadb_url), True))
            if args.mariadb_binlog_url:
                backends.append((MariaDB(args.mariadb_binlog_url, "mariadb+binlog"), False))
        elif name == "sqlite":
            backends.append((SQLite(), True))
        else:
            parser.error(f"unknown backend {name!r}")
        for be, timings in backends:
            rep = Report(be.name)
            reports.append(rep)
            print(f"\n== {be.name} ==")
            be.create()
            try:
                if not args.no_checks:
                    for variant in be.grouping_variants:
                        check_grouping(be, rep, variant)
                    for variant in be.order_variants:
                        check_order(be, rep, variant)
                    if isinstance(be, MariaDB):
                        check_refuse_blocking(be, rep)
                if timings and not args.no_timings:
                    print(f"  load average before timings: {load_average():.2f}")
                    bench(be, rep, args.runs, args.rows)
                    if not args.no_orm:
                        orm_bench(be, rep, args.runs, args.rows)
            finally:
                be.drop()
    print_tables(reports)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
