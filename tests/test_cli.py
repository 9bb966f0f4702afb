"""The ``versioning`` command line, end to end in a subprocess against each database (issue 12).

It works from a URL alone: the database's registry says what to read (see test_catalog.py, whose
models these tests record with). Output is parsed back (``--format json``), exit codes are checked,
and stderr must stay empty when it is not a terminal (no progress bar there).
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from test_catalog import Base, _seed

from versioning import catalog
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
