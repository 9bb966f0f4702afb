"""``python -m versioning demo``: the command the README tells a new user to run first."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONWARNINGS": "error"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "versioning", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


def _lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines()]


def test_demo_writes_the_database_and_prints_the_story(tmp_path: Path) -> None:
    path = tmp_path / "out" / "demo.sqlite"
    path.parent.mkdir()
    result = _run("demo", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = _lines(result.stdout)
    out = result.stdout
    arrow = "→"

    # The history with per-field diffs, under both actors, with the context recorded.
    assert any(
        line.startswith("insert  transaction 1") and line.endswith("by alice from 203.0.113.7")
        for line in lines
    )
    assert any(
        line.startswith("update  transaction 2") and line.endswith("by bob from 2001:db8::5")
        for line in lines
    )
    assert "reason: discount agreed by phone" in lines
    assert "amount       120.00 → 99.50" in lines
    assert "status       draft → sent" in lines
    assert "card_number  '************1111' → '************0004'" in lines
    assert "4111111111111111" not in out.split("== history of Invoice 1")[1]
    assert "view_count=3; versions recorded so far: 1" in lines

    # as_of an earlier moment, then delete, undelete and the history afterwards.
    assert any(
        line.startswith("as of then: customer='ACME Corp', amount=120.00, status=draft")
        for line in lines
    )
    assert "live: no such record" in lines
    assert "as_of now: no such record" in lines
    assert "reason: sent to the wrong customer" in lines
    # The undelete says what it did: back to the version before the deletion (transaction 2),
    # not "to transaction 3", the deletion itself.
    undelete = "reason: undelete Invoice 1 as of transaction 2, the version before its deletion"
    assert undelete in lines
    after = _lines(out.split("== history of Invoice 1, afterwards")[1])
    operations = [line.split()[0] for line in after if re.match(r"^\w+ +transaction \d+ ", line)]
    assert operations == ["insert", "update", "delete", "insert"]
    # The history is sealed and verifies against the digest the demo printed.
    assert any(line.startswith("seal 1: ") and "digests linked" in line for line in lines)
    assert any(line.startswith('digest to keep elsewhere: {"') for line in lines)
    assert any(line.startswith("verify: ok (") and " 0 unsealed)" in line for line in lines)
    # An insert and a delete print the state they created or deleted; only an update has diffs.
    assert after[after.index("reason: sent to the wrong customer") + 1] == (
        "deleted: customer='ACME Corp', amount=99.50, status=sent, card_number='************0004'"
    )
    assert "created: customer='ACME Corp', amount=120.00, status=draft, " in out
    assert "card_number='************1111'" in out
    assert f"{arrow} None" not in out and f"None {arrow}" not in out
    # A record is named one way everywhere: "Invoice 1", never "invoice 1", "(1,)" or "id=1".
    assert "(1,)" not in out and "id=1" not in out
    assert "Invoice 1" in out and not re.search(r"\binvoice \d", out)

    # What was printed is what the file holds.
    assert path.is_file()
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            tables = set(sa.inspect(connection).get_table_names())
            assert {"invoices", "invoices_history", "versioning_transaction"} <= tables
            operations_stored = connection.execute(
                sa.text("SELECT versioning_operation FROM invoices_history ORDER BY versioning_id")
            ).scalars()
            assert list(operations_stored) == ["insert", "update", "delete", "insert"]
            actors = connection.execute(
                sa.text("SELECT actor FROM versioning_transaction ORDER BY id")
            ).scalars()
            assert list(actors) == ["alice", "bob", "bob", "alice"]
            amount = connection.execute(sa.text("SELECT amount FROM invoices")).scalar_one()
            assert str(amount) in {"99.5", "99.50"}
    finally:
        engine.dispose()


def test_demo_defaults_to_a_file_in_the_current_directory_and_replaces_it(
    tmp_path: Path,
) -> None:
    default = tmp_path / "versioning-demo.sqlite"
    default.write_bytes(b"not a database")
    first = _run("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert default.is_file()
    second = _run("demo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    # Replaced, not appended to: the second run starts again from transaction 1.
    assert "insert  transaction 1" in second.stdout
    assert "transaction 5" not in second.stdout


def test_no_or_unknown_command_prints_usage_and_exits_2(tmp_path: Path) -> None:
    for args in [(), ("frobnicate",)]:
        result = _run(*args, cwd=tmp_path)
        assert result.returncode == 2
        assert "Usage: versioning" in result.stderr
        assert "demo" in result.stderr or "COMMAND" in result.stderr
    assert list(tmp_path.iterdir()) == []
