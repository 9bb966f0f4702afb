"""The ``versioning`` command line, end to end in a subprocess against each database (issue 12).

It works from a URL alone: the database's registry says what to read (see test_catalog.py, whose
models these tests record with). Output is parsed back (``--format json``), exit codes are checked,
and stderr must stay empty when it is not a terminal (no progress bar there).
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import importlib.util
import io
import json
import os
import pty
import subprocess
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from test_catalog import Base, _seed

import versioning
from versioning import catalog, cli
from versioning.schema import TRANSACTION_ID, VERSION_ID

from helpers import tamper

ROOT = Path(__file__).resolve().parent.parent
Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]


def _env(url: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONWARNINGS": "error"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("VERSIONING_DATABASE_URL", None)
    if url is not None:
        env["VERSIONING_DATABASE_URL"] = url
    return env


def run(
    *args: str, url: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m versioning ARGS`` with stdin, stdout and stderr not terminals."""
    return subprocess.run(
        [sys.executable, "-m", "versioning", *args],
        env=_env(url),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


def url_of(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def test_verify_seal_and_digest_from_a_url_alone(
    create_tables: Tables, sessions: Sessions, tmp_path: Path
) -> None:
    engine = create_tables(Base.metadata)
    _seed(sessions)
    url = url_of(engine)

    clean = run("--url", url, "verify", "--format", "json")
    assert (clean.returncode, clean.stderr) == (0, "")  # no progress bar: stderr is no terminal
    report = as_json(clean)
    assert report["ok"] is True and report["problems"] == []
    assert (report["versions_checked"], report["unsealed"]) == (6, report["transactions_checked"])

    sealed = run("seal", "--format", "json", url=url)  # the URL from the environment
    assert (sealed.returncode, sealed.stderr) == (0, "")
    saved = as_json(sealed)
    assert set(saved) == {"seal_id", "last_transaction_id", "hash", "sealed_at"}
    again = run("seal", "--format", "json", url=url)
    assert (again.returncode, as_json(again)) == (0, None)
    newest = run("digest", url=url)
    assert newest.returncode == 0 and json.loads(newest.stdout) == saved
    digests = tmp_path / "digests.jsonl"
    digests.write_text(newest.stdout, encoding="utf-8")
    with_digest = run("verify", "--digest", str(digests), url=url)
    assert with_digest.returncode == 0, with_digest.stderr
    assert with_digest.stdout.startswith("ok: ")
    assert ", 0 not sealed yet" in with_digest.stdout

    history = catalog.from_metadata(Base.metadata).entry("cat_accounts").history
    with engine.begin() as connection:
        version = connection.execute(
            sa.select(history.c[VERSION_ID]).where(history.c.vat == "DE2")
        ).scalar_one()
        with tamper(connection):
            connection.execute(
                history.update().where(history.c[VERSION_ID] == version).values(vat="X")
            )
    broken = run("--url", url, "verify", "--format", "json")
    assert (broken.returncode, broken.stderr) == (1, "")
    [problem] = as_json(broken)["problems"]
    assert (problem["kind"], problem["table"], problem["version_id"]) == (
        "altered",
        "cat_accounts_history",
        version,
    )
    text = run("--url", url, "verify")
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert lines[0].startswith("1 problem(s): ")
    assert lines[1].startswith("altered: cat_accounts_history, transaction ")
    assert f", version {version}: history row {version} of cat_accounts_history" in lines[1]


def _one_line(result: subprocess.CompletedProcess[str], code: int = 3) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("versioning: ")
    return lines[0]


def test_a_database_without_the_registry_or_unreachable_says_what_to_do(
    engine: sa.Engine,
) -> None:
    # This database has none of versioning's tables.
    missing = _one_line(run("--url", url_of(engine), "verify"))
    assert "registry" in missing and "create_all" in missing and "write_catalog" in missing
    if engine.dialect.name != "sqlite":
        unreachable = engine.url.set(port=1).render_as_string(hide_password=False)
        line = _one_line(run("--url", unreachable, "verify"))
        assert "cannot connect" in line and "running" in line


def test_errors_of_the_arguments_are_one_line_saying_what_to_do(tmp_path: Path) -> None:
    assert "--url" in _one_line(run("verify"))
    assert "database URL" in _one_line(run("--url", "nosuch://x", "seal"))
    gone = tmp_path / "typo.sqlite"
    assert "no SQLite database at" in _one_line(run("--url", f"sqlite:///{gone}", "verify"))
    models = _one_line(run("check-triggers", "--models", "no_such_models", cwd=tmp_path), 2)
    assert "--models" in models and "no module 'no_such_models'" in models
    assert not gone.exists()  # not created by looking
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n", encoding="utf-8")
    assert "not a versioning digest" in _one_line(run("verify", "--digest", str(bad)))
    result = run("verify", "--format", "xml", cwd=tmp_path)
    assert result.returncode == 2 and "Usage: versioning verify" in result.stderr


def test_nothing_sealed_yet_is_an_error_of_digest(create_tables: Tables) -> None:
    engine = create_tables(Base.metadata)
    assert "versioning seal" in _one_line(run("--url", url_of(engine), "digest"))


def test_a_progress_bar_on_a_terminal_only(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    _seed(sessions)
    primary, secondary = pty.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "versioning", "--url", url_of(engine), "verify"],
            env={**_env(), "COLUMNS": "100", "TERM": "xterm"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=secondary,
            timeout=120,
            check=False,
        )
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the other end closed (Linux: EIO)
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
    assert process.returncode == 0
    assert process.stdout.decode().startswith("ok: ")
    assert b"verifying" in seen


def test_without_the_cli_extra_it_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['click'] = None; "
        "from versioning.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "verify"],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "pip install 'sqlalchemy-versioning[cli]'" in _one_line(result)
    demo = subprocess.run(
        [sys.executable, "-c", code, "demo", "demo.sqlite"],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr
    assert "== history of Invoice 1" in demo.stdout


# --- the commands that call other parts of the library ------------------------------------------

#: Command -> the module whose function it calls (archives, search and export).
PARTS = {
    ("log",): "versioning.searching",
    ("show", "1"): "versioning.searching",
    ("record", "cat_accounts", "1"): "versioning.searching",
    ("export", "--format", "csv", "--output", "-"): "versioning.exporting",
    ("archive", "--before", "90d", "--output", "a.jsonl.gz"): "versioning.archiving",
}


def test_a_command_whose_part_of_the_library_is_missing_says_to_upgrade(
    create_tables: Tables, tmp_path: Path
) -> None:
    engine = create_tables(Base.metadata)
    missing = [args for args, module in PARTS.items() if importlib.util.find_spec(module) is None]
    for args in missing:
        line = _one_line(run("--url", url_of(engine), *args, cwd=tmp_path))
        assert "upgrade" in line, line
    assert list(tmp_path.iterdir()) == []


def test_moments_ages_and_keys_as_the_command_line_takes_them() -> None:
    utc = dt.UTC
    assert cli.moment("2025-03-04", "--since") == dt.datetime(2025, 3, 4, tzinfo=utc)
    zoned = cli.moment("2025-03-04T10:00:00+01:00", "--since")
    assert zoned == dt.datetime(2025, 3, 4, 9, tzinfo=utc) and zoned.utcoffset() is not None
    assert cli.moment_or_age("90d", "--before") == dt.timedelta(days=90)
    assert cli.moment_or_age("7y", "--before") == dt.timedelta(days=7 * 365)
    with pytest.raises(click.BadParameter, match="ISO 8601"):
        cli.moment("last tuesday", "--since")
    accounts = catalog.from_metadata(Base.metadata).entry("cat_accounts")
    assert cli.key_values(accounts, ["12"]) == (12,)
    with pytest.raises(click.BadParameter, match=r"'twelve' is not a value of cat_accounts\.id"):
        cli.key_values(accounts, ["twelve"])
    with pytest.raises(click.BadParameter, match=r"has the key \(id\): give 1 value"):
        cli.key_values(accounts, ["1", "2"])


def test_values_as_printed() -> None:
    assert cli.cell("=SUM(A1)") == "'=SUM(A1)" and cli.cell("-5") == "'-5"
    assert cli.cell("plain") == "plain" and cli.cell(None) == ""
    assert cli.plain(
        {"d": Decimal("1.50"), "u": uuid.UUID(int=1), "b": b"\x00", "t": dt.date(2025, 1, 2)}
    ) == {
        "d": "1.50",
        "u": "00000000-0000-0000-0000-000000000001",
        "b": "AA==",
        "t": "2025-01-02",
    }
    assert cli.shown("a b") == "'a b'" and cli.shown(None) == "∅"


# --- log, show, record and export, end to end -----------------------------------------------------


def _seed_with_event(engine: sa.Engine, sessions: Sessions) -> int:
    """The catalog models' history, then one denied login (its transaction id)."""
    _seed(sessions)
    with versioning.audit_context(actor="mallory", source_ip="203.0.113.7"):
        event = versioning.record_event(
            engine, "login", outcome="denied", target="=admin", details={"tries": 3}
        )
    return event.transaction_id


def _company_update(engine: sa.Engine) -> int:
    """The transaction id of the update of company 2 (vat DE1 -> DE2)."""
    history = catalog.from_metadata(Base.metadata).entry("cat_accounts").history
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(history.c[TRANSACTION_ID]).where(history.c.vat == "DE2")
            ).scalar_one()
        )


def test_log_lists_versions_and_events_newest_first_with_filters(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    denied = _seed_with_event(engine, sessions)
    update = _company_update(engine)
    url = url_of(engine)

    everything = run("log", "--format", "json", url=url)
    assert (everything.returncode, everything.stderr) == (0, "")
    documents = as_json(everything)
    assert [d["kind"] for d in documents] == ["event"] + ["version"] * 6
    event = documents[0]
    assert (event["action"], event["outcome"], event["target"]) == ("login", "denied", "=admin")
    assert event["details"] == {"tries": 3} and event["transaction_id"] == denied
    assert (event["transaction"]["actor"], event["transaction"]["source_ip"]) == (
        "mallory",
        "203.0.113.7",
    )
    assert documents[1]["transaction_id"] == update
    assert documents[1]["changes"] == {"vat": ["DE1", "DE2"]}
    ids = [d["transaction_id"] for d in documents]
    assert ids == sorted(ids, reverse=True)

    oldest = as_json(run("log", "--format", "json", "--oldest-first", "--limit", "2", url=url))
    assert [(d["kind"], d["operation"]) for d in oldest] == [("version", "insert")] * 2
    updates = as_json(run("log", "--format", "json", "--operation", "update", url=url))
    assert [(d["table"], d["key"]) for d in updates] == [("cat_accounts", [2])]  # no event
    notes = as_json(run("log", "--format", "json", "--table", "cat_notes_history", url=url))
    assert [(d["table"], d["key"]) for d in notes] == [("cat_notes", [1])]
    by_actor = as_json(run("log", "--format", "json", "--actor", "mallory", url=url))
    assert [d["kind"] for d in by_actor] == ["event"]
    denials = as_json(run("log", "--format", "json", "--outcome", "denied", url=url))
    assert [d["event_id"] for d in denials] == [event["event_id"]]
    assert as_json(run("log", "--format", "json", "--action", "logout", url=url)) == []
    one = as_json(run("log", "--format", "json", "--transaction", str(update), url=url))
    assert [d["operation"] for d in one] == ["update"]
    assert as_json(run("log", "--format", "json", "--since", "2999-01-01", url=url)) == []
    assert len(as_json(run("log", "--format", "json", "--until", "2999-01-01", url=url))) == 7

    text = run("log", url=url)
    assert (text.returncode, text.stderr) == (0, "")  # no terminal: plain lines, no table
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"transaction {denied} ")
    assert lines[0].endswith("by mallory from 203.0.113.7  event login on =admin: denied")
    assert lines[1].endswith("update cat_accounts [2]")

    rows = list(csv.reader(io.StringIO(run("log", "--format", "csv", url=url).stdout)))
    assert rows[0][:3] == ["transaction_id", "issued_at", "actor"]
    assert rows[1][6:] == ["versioning_event", "'=admin", "event", "login: denied"]
    assert rows[2][6:] == ["cat_accounts", "2", "update", "vat"]
    assert len(rows) == 8


def test_show_and_record_from_a_url_alone(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    denied = _seed_with_event(engine, sessions)
    update = _company_update(engine)
    url = url_of(engine)

    shown_update = run("show", str(update), url=url)
    assert (shown_update.returncode, shown_update.stderr) == (0, "")
    assert shown_update.stdout.splitlines()[1:] == [
        "update cat_accounts [2]",
        "    vat: 'DE1' → 'DE2'",
    ]
    document = as_json(run("show", str(update), "--format", "json", url=url))
    assert document["transaction"]["id"] == update and document["events"] == []
    assert [c["changes"] for c in document["changes"]] == [{"vat": ["DE1", "DE2"]}]
    event = as_json(run("show", str(denied), "--format", "json", url=url))
    assert event["changes"] == [] and [e["outcome"] for e in event["events"]] == ["denied"]
    assert "event login on =admin: denied" in run("show", str(denied), url=url).stdout
    missing = _one_line(run("show", str(denied + 1000), url=url))
    assert "no change and no event" in missing

    timeline = run("record", "cat_accounts", "2", url=url)
    assert (timeline.returncode, timeline.stderr) == (0, "")
    lines = timeline.stdout.splitlines()
    assert lines[0].endswith("insert cat_accounts [2]")
    assert "    card: ∅ → '************0004'" in lines  # masked as recorded
    assert lines[-2].endswith("update cat_accounts [2]") and lines[-1] == "    vat: 'DE1' → 'DE2'"
    versions = as_json(run("record", "cat_accounts_history", "2", "--format", "json", url=url))
    assert [v["operation"] for v in versions] == ["insert", "update"]
    pair = as_json(run("record", "cat_note_labels", "1", "1", "--format", "json", url=url))
    assert [v["key"] for v in pair] == [[1, 1]]
    assert "no history of cat_accounts [99]" in run("record", "cat_accounts", "99", url=url).stdout


def test_export_csv_and_jsonl_to_files_read_back(
    create_tables: Tables, sessions: Sessions, tmp_path: Path
) -> None:
    engine = create_tables(Base.metadata)
    denied = _seed_with_event(engine, sessions)
    url = url_of(engine)

    done = run("export", "--format", "csv", "--output", str(tmp_path / "all.csv"), url=url)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"7 version(s) and event(s) written to {tmp_path / 'all.csv'}\n"
    with (tmp_path / "all.csv").open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert rows[-1] == {
        "transaction_id": str(denied),
        "issued_at": rows[-1]["issued_at"],
        "actor": "mallory",
        "source_ip": "203.0.113.7",
        "request_id": "",
        "reason": "",
        "table": "versioning_event",
        "record": "'=admin",  # would run as a formula: neutralised
        "operation": "event",
        "field": "login",
        "old": "",
        "new": "denied",
    }
    assert dt.datetime.fromisoformat(rows[-1]["issued_at"]).utcoffset() == dt.timedelta(0)
    vat = [r for r in rows if r["field"] == "vat" and r["operation"] == "update"]
    assert [(r["old"], r["new"]) for r in vat] == [("DE1", "DE2")]

    packed = tmp_path / "accounts.jsonl.gz"
    gz = run("export", "--format", "jsonl", "--output", str(packed), "--table", "cat_accounts")
    assert gz.returncode == 3  # no URL
    gz = run(
        "export", "--format", "jsonl", "--output", str(packed), "--table", "cat_accounts", url=url
    )
    assert (gz.returncode, gz.stderr) == (0, "")
    with gzip.open(packed, "rt", encoding="utf-8") as stream:
        lines = [json.loads(line) for line in stream]
    assert {line["kind"] for line in lines} == {"version"}  # a table filter leaves events out
    assert sorted((line["operation"], line["record"]) for line in lines) == [
        ("insert", [1]),
        ("insert", [2]),
        ("update", [2]),
    ]
    assert lines[-1]["operation"] == "update"
    assert lines[-1]["changes"] == {"vat": ["DE1", "DE2"]}

    events_only = run("export", "--format", "jsonl", "--output", "-", "--action", "login", url=url)
    [line] = [json.loads(text) for text in events_only.stdout.splitlines()]
    assert (line["kind"], line["details"], line["target"]) == ("event", {"tries": 3}, "=admin")


def test_errors_of_log_and_export_are_one_line(
    create_tables: Tables, sessions: Sessions, tmp_path: Path
) -> None:
    engine = create_tables(Base.metadata)
    url = url_of(engine)
    unknown = _one_line(run("log", "--table", "nosuch", url=url))
    assert "'nosuch'" in unknown and "cat_accounts" in unknown
    assert "cat_notes" in _one_line(run("record", "nosuch", "1", url=url))
    bad_date = _one_line(run("log", "--since", "last tuesday", url=url), code=2)
    assert "--since" in bad_date and "ISO 8601" in bad_date
    bad_key = _one_line(run("record", "cat_accounts", "x", url=url), code=2)
    assert "'x' is not a value of cat_accounts.id" in bad_key
    nowhere = tmp_path / "no" / "such" / "dir" / "out.csv"
    line = _one_line(run("export", "--format", "csv", "--output", str(nowhere), url=url))
    assert "cannot write" in line


# --- archive, verify --archive, prune ---------------------------------------------------------


def test_archive_then_verify_offline_and_with_the_database(
    create_tables: Tables, sessions: Sessions, tmp_path: Path
) -> None:
    engine = create_tables(Base.metadata)
    _seed(sessions)
    url = url_of(engine)
    assert run("seal", url=url).returncode == 0
    path = tmp_path / "2025.jsonl.gz"

    made = run("archive", "--before", "2999-01-01", "--output", str(path), url=url)
    assert (made.returncode, made.stderr) == (0, "")  # no progress bar: stderr is no terminal
    manifest = as_json(made)
    assert (manifest["transactions"], manifest["versions"]) == (2, 6)
    assert manifest["horizon"]["archived_up_to"] == manifest["last_transaction_id"]
    assert path.is_file()

    offline = run("verify", "--archive", str(path), "--format", "json")  # no URL, no database
    assert (offline.returncode, offline.stderr) == (0, "")
    report = as_json(offline)
    assert report["ok"] and (report["transactions_checked"], report["versions_checked"]) == (2, 6)

    pruned = run("prune", "--archive", str(path), url=url)  # from the URL alone, no model
    assert (pruned.returncode, pruned.stderr) == (0, "")
    assert as_json(pruned)["archive"] == path.name
    assert as_json(pruned)["horizon"]["archive"] == path.name
    after = run("verify", "--format", "json", url=url)
    assert (after.returncode, after.stderr) == (0, "")
    assert as_json(after)["ok"] is True
    chain = run("verify", "--archive", str(path), "--format", "json", url=url)
    assert (chain.returncode, chain.stderr) == (0, "")
    assert as_json(chain)["ok"] is True
    assert as_json(chain)["versions_checked"] >= 6

    broken = tmp_path / "broken.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as source:
        lines = source.read().splitlines()
    lines = [line.replace('"DE1"', '"DE9"') for line in lines]
    with gzip.open(broken, "wt", encoding="utf-8") as target:
        target.write("\n".join(lines) + "\n")
    tampered = run("verify", "--archive", str(broken), "--format", "json")
    assert tampered.returncode == 1
    assert as_json(tampered)["problems"]
    nothing = _one_line(run("archive", "--before", "1990-01-01", "--output", str(broken), url=url))
    assert "nothing to archive" in nothing


def test_verify_with_an_archive_not_pruned_yet_counts_each_once(
    create_tables: Tables, sessions: Sessions, tmp_path: Path
) -> None:
    engine = create_tables(Base.metadata)
    _seed(sessions)
    url = url_of(engine)
    assert run("seal", url=url).returncode == 0
    path = tmp_path / "kept.jsonl.gz"
    assert run("archive", "--before", "2999-01-01", "--output", str(path), url=url).returncode == 0
    alone = as_json(run("verify", "--format", "json", url=url))
    both = run("verify", "--archive", str(path), "--format", "json", url=url)
    assert (both.returncode, both.stderr) == (0, "")
    counted = as_json(both)
    assert (counted["transactions_checked"], counted["versions_checked"]) == (2, 6)
    assert (alone["transactions_checked"], alone["versions_checked"]) == (2, 6)
    text = run("verify", "--archive", str(path), url=url)
    assert text.stdout.startswith("ok: 2 transaction(s), 6 version(s) checked")


def test_the_horizon_in_one_line_after_a_prune(
    create_tables: Tables, sessions: Sessions, tmp_path: Path
) -> None:
    engine = create_tables(Base.metadata)
    _seed(sessions)
    url = url_of(engine)
    assert run("seal", url=url).returncode == 0
    before = as_json(run("verify", "--format", "json", url=url))
    assert before["horizon"] is None  # never pruned: no horizon line
    assert "horizon" not in run("verify", url=url).stdout
    path = tmp_path / "old.jsonl.gz"

    made = run(
        "archive", "--before", "2999-01-01", "--output", str(path), "--format", "text", url=url
    )
    assert (made.returncode, made.stderr) == (0, "")
    summary, once = made.stdout.splitlines()
    assert summary.startswith("archived 2 transaction(s), 6 version(s) and 0 event(s)")
    assert once.startswith(f"horizon once pruned (versioning prune --archive {path}): ")
    assert "the database holds no transaction after it yet" in once  # nothing after it, yet

    pruned = run("prune", "--archive", str(path), "--format", "text", url=url)
    assert (pruned.returncode, pruned.stderr) == (0, "")
    done, line = pruned.stdout.splitlines()
    assert done.startswith(f"pruned what {path.name} holds: transactions up to ")
    horizon = as_json(run("verify", "--format", "json", url=url))["horizon"]
    first, last = horizon["first_transaction_id"], horizon["archived_up_to"]
    assert first > last and horizon["archive"] == path.name
    assert line == (
        f"horizon: the database holds history from transaction {first} (issued "
        f"{horizon['first_issued_at']}) on; up to transaction {last} (issued "
        f"{horizon['archived_issued_at']}) it is in archive {path.name}"
    )
    assert run("verify", url=url).stdout.splitlines()[1] == line  # the same line
    # A search reaching before the horizon is refused, in one line with the horizon.
    for command in (("log",), ("export", "--format", "csv", "--output", str(tmp_path / "x"))):
        refused = _one_line(run(*command, url=url))
        assert line in refused and "--since after" in refused, refused
        assert f"--transaction {first} or later" in refused
    assert not (tmp_path / "x").exists()
    after = run("log", "--since", horizon["first_issued_at"], "--format", "json", url=url)
    assert (after.returncode, after.stderr) == (0, "")
    again = _one_line(run("prune", "--archive", str(path), url=url))
    assert "in order" in again


# --- what a user gets wrong: one line saying what to do, and the exit status -------------------


def test_files_and_values_given_wrong_without_a_database(tmp_path: Path) -> None:
    missing = _one_line(run("verify", "--digest", str(tmp_path / "nosuch.jsonl")))
    assert "cannot read the digest file" in missing and "versioning digest" in missing
    notes = tmp_path / "notes.txt"
    notes.write_text("not an archive\n", encoding="utf-8")
    line = _one_line(run("verify", "--archive", str(notes)))
    assert f"{notes}: " in line and "is not a readable archive" in line
    empty = tmp_path / "empty.jsonl.gz"
    with gzip.open(empty, "wb"):
        pass
    assert "is empty: not a versioning archive" in _one_line(run("verify", "--archive", str(empty)))
    url = _one_line(run("--url", "::not a url::", "verify"))
    assert "cannot use the URL given as a database URL" in url and "sqlite:///" in url
    age = _one_line(run("archive", "--before", "someday", "--output", "x"), code=2)
    assert "--before" in age and "ISO 8601" in age
    assert not (tmp_path / "x").exists()


def test_errors_of_archive_prune_and_verify_are_one_line(
    create_tables: Tables, sessions: Sessions, tmp_path: Path
) -> None:
    engine = create_tables(Base.metadata)
    _seed(sessions)
    url = url_of(engine)
    nowhere = tmp_path / "no" / "such" / "dir" / "a.jsonl.gz"
    assert "nothing to archive" in _one_line(
        run("archive", "--before", "2999-01-01", "--output", str(nowhere), url=url)
    )  # nothing sealed yet
    assert run("seal", url=url).returncode == 0
    line = _one_line(run("archive", "--before", "2999-01-01", "--output", str(nowhere), url=url))
    assert "cannot write" in line and str(nowhere) in line
    path = tmp_path / "a.jsonl.gz"
    assert run("archive", "--before", "2999-01-01", "--output", str(path), url=url).returncode == 0
    with gzip.open(path, "rt", encoding="utf-8") as source:
        lines = source.read().splitlines()
    tampered = tmp_path / "tampered.jsonl.gz"
    with gzip.open(tampered, "wt", encoding="utf-8") as target:
        target.write("\n".join(line.replace('"DE1"', '"DE9"') for line in lines) + "\n")
    refused = _one_line(run("prune", "--archive", str(tampered), url=url))
    assert "does not verify" in refused and "nothing was deleted" in refused
    notes = tmp_path / "notes.txt"
    notes.write_text("not an archive\n", encoding="utf-8")
    line = _one_line(run("verify", "--archive", str(notes), url=url))
    assert "is not a readable archive" in line
    broken = run("verify", "--archive", str(tampered), url=url)
    assert broken.returncode == 1 and broken.stdout.split(":")[0].endswith("problem(s)")
    after = as_json(run("verify", "--format", "json", url=url))
    assert after["ok"] and after["horizon"] is None  # nothing was pruned


def test_errors_of_filters_and_lookups_are_one_line(
    create_tables: Tables, sessions: Sessions, tmp_path: Path
) -> None:
    engine = create_tables(Base.metadata)
    _seed(sessions)
    url = url_of(engine)
    address = _one_line(run("log", "--source-ip", "nope", url=url))
    assert "source_ip must be an IPv4 or IPv6 address" in address and "'nope'" in address
    out = tmp_path / "out.csv"
    line = _one_line(
        run("export", "--format", "csv", "--source-ip", "nope", "--output", str(out), url=url)
    )
    assert "source_ip must be an IPv4 or IPv6 address" in line
    assert not out.exists()  # refused before anything was written
    unknown = _one_line(
        run("export", "--format", "csv", "--table", "nosuch", "--output", "-", url=url)
    )
    assert "'nosuch'" in unknown and "cat_accounts" in unknown
    gone = _one_line(run("show", "999999", url=url))
    assert "transaction 999999 recorded no change and no event" in gone
    keys = _one_line(run("record", "cat_accounts", "1", "2", url=url), code=2)
    assert "cat_accounts has the key (id): give 1 value(s), got 2" in keys


def test_log_on_a_terminal_is_a_table(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    _seed_with_event(engine, sessions)
    primary, secondary = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "versioning", "--url", url_of(engine), "log"],
            env={**_env(), "COLUMNS": "160", "TERM": "xterm"},
            stdin=subprocess.DEVNULL,
            stdout=secondary,
            stderr=subprocess.PIPE,
        )
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the other end closed (Linux: EIO)
                break
            if not chunk:
                break
            seen += chunk
        _, errors = process.communicate(timeout=120)  # closes the stderr pipe
        assert (process.returncode, errors) == (0, b"")
    finally:
        os.close(primary)
    text = seen.decode()
    for heading in ("transaction", "issued at", "actor", "table", "record", "operation"):
        assert heading in text
    assert "cat_accounts" in text and "login" in text and "denied" in text


def test_keys_of_each_type_as_the_command_line_takes_them() -> None:
    from test_types import Base as TypesBase

    items = catalog.from_metadata(TypesBase.metadata).entry("types_items")
    typed = cli._typed
    assert typed(items, "flag", "TRUE") is True and typed(items, "flag", "0") is False
    assert typed(items, "uid", "12345678-1234-5678-1234-567812345678") == uuid.UUID(
        "12345678-1234-5678-1234-567812345678"
    )
    assert typed(items, "day", "2025-03-04") == dt.date(2025, 3, 4)
    assert typed(items, "created", "2025-03-04T10:00:00") == dt.datetime(2025, 3, 4, 10)
    assert typed(items, "amount", "12.30") == Decimal("12.30")
    assert typed(items, "ratio", "2.5") == 2.5
    assert typed(items, "title", "x") == "x" and typed(items, "color", "RED") == "RED"
    for name, text in (("flag", "maybe"), ("uid", "nope"), ("amount", "1,5"), ("day", "3/4")):
        with pytest.raises(click.BadParameter, match=f"is not a value of types_items.{name}"):
            typed(items, name, text)


# --- check-triggers: the triggers of tables captured by the database -----------------------------

#: A module of models as an application has it, imported by `check-triggers --models gadgets`;
#: {extra}: the column a migration adds.
GADGETS = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from versioning import Versioned, masks


class Base(DeclarativeBase):
    pass


class Gadget(Versioned, Base):
    __tablename__ = "cli_gadgets"
    __versioned__ = {{"capture": "database", "mask": {{"card": masks.last4}}}}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    card: Mapped[str | None] = mapped_column(sa.String(20))
{extra}"""


def _gadgets(folder: Path, name: str, extra: str = "") -> Any:
    """The module ``name`` written in ``folder`` (where the command runs), imported here too."""
    path = folder / f"{name}.py"
    path.write_text(GADGETS.format(extra=extra), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"{folder.name}_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_check_triggers_names_missing_and_stale_capture_triggers(
    create_tables: Tables, tmp_path: Path
) -> None:
    from versioning.declaration import versioned_spec
    from versioning.triggers import drop, install

    gadgets = _gadgets(tmp_path, "gadgets")
    engine = create_tables(gadgets.Base.metadata)
    spec = versioned_spec(sa.inspect(gadgets.Gadget))
    assert spec is not None
    url = url_of(engine)
    checked = "1 table(s) captured by the database checked"

    # Models of another database too: their table is not here (said, not checked).
    (tmp_path / "elsewhere.py").write_text(
        GADGETS.replace("cli_gadgets", "cli_elsewhere").format(extra=""), encoding="utf-8"
    )
    current = run(
        "check-triggers", "--models", "gadgets", "--models", "elsewhere", url=url, cwd=tmp_path
    )
    assert (current.returncode, current.stderr) == (0, "")
    assert current.stdout.splitlines() == [
        f"all capture triggers are current: {checked}",
        "not in this database, left out: cli_elsewhere (the models given declare them captured "
        "by the database)",
    ]
    # The registry alone finds a trigger there, but cannot tell it current: it says so.
    alone = run("check-triggers", url=url)
    assert (alone.returncode, alone.stderr) == (0, "")
    assert alone.stdout.splitlines() == [
        f"no capture trigger is missing: {checked}",
        "not checked whether current (that needs the models): cli_gadgets; pass --models "
        "MODULE, the module declaring them",
    ]

    # A trigger dropped (on SQLite and MariaDB, one of a table's three): its writes would go
    # unrecorded.
    one_of_three = engine.dialect.name in ("sqlite", "mariadb")
    with engine.begin() as connection:
        if one_of_three:
            connection.exec_driver_sql("DROP TRIGGER cli_gadgets_versioning_capture_update")
        else:
            drop(connection, spec)
    missing = run("check-triggers", "--format", "json", url=url)
    assert (missing.returncode, missing.stderr) == (1, "")
    [problem] = as_json(missing)
    assert (problem["table"], problem["kind"]) == ("cli_gadgets", "missing")
    lacking = (
        "cli_gadgets has no capture trigger for update: those writes are not recorded"
        if one_of_three
        else "cli_gadgets has no capture trigger: its writes are not recorded"
    )
    assert problem["detail"] == (
        f"{lacking}; install it (versioning.migrations.install_capture_triggers in a migration)"
    )

    # Installed again, then a migration adds a column to the table and the model: stale.
    with engine.begin() as connection:
        install(connection, spec)
        for table in ("cli_gadgets", "cli_gadgets_history"):
            connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN colour VARCHAR(20)")
    (tmp_path / "migrated.py").write_text(
        GADGETS.format(extra="    colour: Mapped[str | None] = mapped_column(sa.String(20))\n"),
        encoding="utf-8",
    )
    stale = run("check-triggers", "--models", "migrated", url=url, cwd=tmp_path)
    assert (stale.returncode, stale.stderr) == (1, "")
    assert stale.stdout.splitlines() == [
        f"1 problem(s): {checked}",
        "stale: cli_gadgets: the capture trigger of cli_gadgets was installed for other columns "
        "than Gadget has now: refresh it (versioning.migrations.install_capture_triggers in a "
        "migration)",
    ]
