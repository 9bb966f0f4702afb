"""The ``versioning`` command line, end to end in a subprocess against each database (issue 12).

It works from a URL alone: the database's registry says what to read (see test_catalog.py, whose
models these tests record with). Output is parsed back (``--format json``), exit codes are checked,
and stderr must stay empty when it is not a terminal (no progress bar there).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
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

from versioning import catalog, cli
from versioning.schema import VERSION_ID

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
