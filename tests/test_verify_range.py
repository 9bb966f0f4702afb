"""Verifying a range: ``versioning.verify(session, since=..., until=...)``, its async form and
``versioning verify --since/--until`` check the transactions of the range against their digest
rows and the seals linking them, find tampering inside the range, and read nothing outside it.
On every backend.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from test_archiving import Base as ArchivedBase
from test_archiving import story as archiving_story  # noqa: F401 - the fixture, used below
from test_asyncio import _async_url

import versioning
import versioning.asyncio
from versioning.schema import SEAL_ENTRY_TABLE, TRANSACTION_TABLE

from helpers import tamper

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]


class Base(DeclarativeBase):
    pass


class Note(versioning.Versioned, Base):
    __tablename__ = "range_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(40))


HISTORY = "range_notes_history"


def _five(engine: sa.Engine, sessions: Sessions) -> list[int]:
    """Five transactions (one version each, note 1 then notes 2..5); seal 1 links the first
    two, seal 2 the next two, the fifth is not sealed. Their ids, in order."""
    with sessions() as session:
        for number in range(1, 6):
            session.add(Note(id=number, text=f"note {number}"))
            session.commit()
            if number in (2, 4):
                assert versioning.seal(session, metadata=Base.metadata) is not None
                session.commit()
    with engine.connect() as connection:
        return list(
            connection.exec_driver_sql(f"SELECT id FROM {TRANSACTION_TABLE} ORDER BY id").scalars()
        )


def _verify(sessions: Sessions, **given: object) -> versioning.Report:
    with sessions() as session:
        return versioning.verify(session, metadata=Base.metadata, **given)  # type: ignore[arg-type]


def _tamper(engine: sa.Engine, statement: str) -> None:
    with engine.begin() as connection, tamper(connection):
        connection.exec_driver_sql(statement)


def test_a_range_checks_its_transactions_only(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    ids = _five(engine, sessions)
    whole = _verify(sessions)
    assert whole.ok and not whole.partial and whole.transaction_range is None
    assert (whole.transactions_checked, whole.versions_checked, whole.unsealed) == (5, 5, 1)

    middle = _verify(sessions, since=ids[1], until=ids[3])  # until excludes its transaction
    assert middle.ok and middle.partial, middle.problems
    assert middle.transaction_range == (ids[1], ids[2])
    assert (middle.transactions_checked, middle.versions_checked, middle.unsealed) == (2, 2, 0)
    tail = _verify(sessions, since=ids[3])
    assert (tail.transactions_checked, tail.unsealed, tail.transaction_range) == (
        2,
        1,
        (ids[3], ids[4]),
    )
    nothing = _verify(sessions, since=ids[4] + 100)
    assert nothing.ok and nothing.transaction_range is None and nothing.transactions_checked == 0

    # Moments: the transactions issued from since (inclusive) until until (exclusive).
    with sessions() as session:
        issued = [v.transaction.issued_at for v in versioning.search(session, newest_first=False)]  # type: ignore[union-attr]
    later = issued[4] + dt.timedelta(days=1)
    by_time = _verify(sessions, since=issued[0] - dt.timedelta(days=1), until=later)
    assert by_time.transaction_range == (ids[0], ids[4]) and by_time.transactions_checked == 5
    assert _verify(sessions, since=later).transaction_range is None


def test_tampering_inside_the_range_is_found_and_outside_is_not_read(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    ids = _five(engine, sessions)
    _tamper(engine, f"UPDATE {HISTORY} SET text = 'forged' WHERE id = 1")
    found = _verify(sessions, until=ids[1])
    assert [(p.kind, p.table, p.transaction_id) for p in found.problems] == [
        ("altered", HISTORY, ids[0])
    ]
    assert _verify(sessions, since=ids[1]).ok  # the first transaction is not read
    assert not _verify(sessions).ok

    # A seal's entry changed: seal 2 (transactions 3 and 4) no longer matches.
    _tamper(
        engine,
        f"UPDATE {SEAL_ENTRY_TABLE} SET digest = '{'0' * 64}' WHERE transaction_id = {ids[3]}",
    )
    chain = _verify(sessions, since=ids[2], until=ids[3])  # transaction 3: linked by seal 2
    assert [(p.kind, p.table) for p in chain.problems] == [("chain", "versioning_seal")]
    assert "seal 2 does not match" in chain.problems[0].detail
    inside = _verify(sessions, since=ids[3], until=ids[4])
    assert {p.kind for p in inside.problems} == {"altered", "chain"}  # the digest row's copy too
    assert _verify(sessions, since=ids[1], until=ids[2]).ok  # seal 1 is sound
    assert _verify(sessions, since=ids[4]).ok  # the unsealed fifth: no seal read


def test_saved_digests_and_seal_links_in_a_range(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    ids = _five(engine, sessions)
    with sessions() as session:
        saved = versioning.digest(session, metadata=Base.metadata)
    assert saved is not None and saved.seal_id == 2
    assert _verify(sessions, digests=[saved], since=ids[0], until=ids[1]).ok
    # Seal 2 made again after a change to seal 1: each link holds, the saved digest does not.
    _tamper(engine, f"UPDATE versioning_seal SET previous_hash = '{'a' * 64}' WHERE id = 2")
    linked = _verify(sessions, since=ids[2], until=ids[3])
    assert linked.problems[0].detail.startswith("seal 2 does not link to seal 1")
    assert _verify(sessions, since=ids[0], until=ids[1]).ok  # seal 1 alone: not read
    cut = _verify(sessions, digests=[saved], since=ids[0], until=ids[1])
    assert not cut.ok  # seal 1 is proven by the saved digest of seal 2 only through seal 2


def test_wrong_ranges_are_refused(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        for wrong in ("3", 2.5, True, dt.datetime(2026, 1, 1)):
            with pytest.raises(versioning.ArgumentError, match="verify"):
                versioning.verify(session, metadata=Base.metadata, since=wrong)  # type: ignore[arg-type]
        with pytest.raises(versioning.ArgumentError, match="archives="):
            versioning.verify(session, metadata=Base.metadata, since=1, archives=["a.jsonl"])


def test_the_async_form_and_the_command_line_take_a_range(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    ids = _five(engine, sessions)
    _tamper(engine, f"UPDATE {HISTORY} SET text = 'forged' WHERE id = 1")
    url = engine.url.render_as_string(hide_password=False)

    async def check() -> versioning.Report:
        made = create_async_engine(_async_url(engine))
        try:
            async with AsyncSession(made) as session:
                return await versioning.asyncio.verify(
                    session, metadata=Base.metadata, since=ids[1]
                )
        finally:
            await made.dispose()

    report = asyncio.run(check())
    assert report.ok and report.transaction_range == (ids[1], ids[4])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "versioning", "--url", url, "verify", "--format", "json"]
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=120, check=False
        )

    clean = cli("--since", str(ids[1]))
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["transactions_checked"] == 4
    found = cli("--until", str(ids[1]))
    assert found.returncode == 1 and json.loads(found.stdout)["problems"][0]["kind"] == "altered"
    assert cli("--since", "2000-01-01T00:00:00", "--until", str(ids[1])).returncode == 1
    wrong = cli("--since", "soon")
    assert wrong.returncode == 2 and "--since" in wrong.stderr


@pytest.fixture
def archived(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[sa.Engine, list[int]]:
    """The archiving tests' nine transactions, the first seven (seals 1, 2) archived and
    pruned."""
    engine: sa.Engine = request.getfixturevalue("archiving_story")
    with engine.connect() as connection:
        ids = list(
            connection.exec_driver_sql(f"SELECT id FROM {TRANSACTION_TABLE} ORDER BY id").scalars()
        )
    path = tmp_path / "first.jsonl"
    before = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    versioning.archive(engine, before=before, output=path, metadata=ArchivedBase.metadata)
    versioning.prune(engine, archive=path, metadata=ArchivedBase.metadata)
    return engine, ids


def test_after_a_prune_a_range_after_the_horizon_verifies(
    archived: tuple[sa.Engine, list[int]], sessions: Sessions
) -> None:
    engine, ids = archived  # transactions 1-7 (seals 1, 2) archived and pruned
    with sessions() as session:
        saved = versioning.digest(session, metadata=ArchivedBase.metadata)
        assert saved is not None and saved.seal_id == 2
        with pytest.raises(versioning.ArchivedError, match=rf"since={ids[6] + 1}\)"):
            versioning.verify(session, metadata=ArchivedBase.metadata, since=ids[2])
        assert versioning.seal(session, metadata=ArchivedBase.metadata) is not None  # seal 3
        session.commit()
        kept = versioning.verify(session, metadata=ArchivedBase.metadata, since=ids[7])
        assert kept.ok and kept.transactions_checked == 3, kept.problems  # 8, 9, the prune's
        assert versioning.verify(
            session, [saved], metadata=ArchivedBase.metadata, since=ids[8] + 100
        ).ok
    _tamper(engine, "UPDATE versioning_seal SET hash = '" + "b" * 64 + "' WHERE id = 2")
    with sessions() as session:
        linked = versioning.verify(session, metadata=ArchivedBase.metadata, since=ids[7])
        assert [p.detail[:31] for p in linked.problems] == ["seal 3 does not link to seal 2:"]
        checked = versioning.verify(
            session, [saved], metadata=ArchivedBase.metadata, since=ids[8] + 100
        )
        assert {p.kind for p in checked.problems} == {"chain", "digest"}
        assert any("the last one archived" in p.detail for p in checked.problems)
