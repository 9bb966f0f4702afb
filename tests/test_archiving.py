"""Retention by verifiable archives: archive, verify offline, prune, horizon, archives + database.

Every database test runs on SQLite, PostgreSQL and MariaDB. Ids are read back (counters go on
from earlier tests).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import versioning
import versioning.archiving
from versioning import ArchivedError, ArchiveError, Versioned, audit_context
from versioning.archive_format import decode, describe, line, row_hash, value_kind
from versioning.canonical import canonical_value
from versioning.canonical import row_hash as db_row_hash
from versioning.exporting import export
from versioning.personal import committed_view, salts
from versioning.schema import TRANSACTION_TABLE

from helpers import tamper

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]


class Base(DeclarativeBase):
    pass


order_tags = sa.Table(
    "arch_order_tags",
    Base.metadata,
    sa.Column("order_id", sa.ForeignKey("arch_orders.id"), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("arch_tags.id"), primary_key=True),
)


class Tag(Versioned, Base):
    __tablename__ = "arch_tags"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))


class Order(Versioned, Base):
    __tablename__ = "arch_orders"
    __versioned__ = {"personal": ["email"]}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(sa.String(20))
    amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
    email: Mapped[str | None] = mapped_column(sa.String(100))
    placed: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    doc: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    tags: Mapped[list[Tag]] = relationship(secondary=order_tags)


def _ids(engine: sa.Engine) -> list[int]:
    with engine.connect() as connection:
        return list(
            connection.exec_driver_sql(f"SELECT id FROM {TRANSACTION_TABLE} ORDER BY id").scalars()
        )


def _seal(sessions: Sessions) -> None:
    with sessions() as session:
        versioning.seal(session)
        session.commit()


@pytest.fixture
def story(create_tables: Tables, sessions: Sessions) -> sa.Engine:
    """Seven transactions, sealed in two seals (1-4, 5-7), then two more, unsealed:

    1. orders 1, 2 (tags a, b on 1), tag a, b   2. order 1 paid, tag b off   3. order 2 deleted
    4. order 3 new                              5. order 1 shipped           6. order 4 new
    7. order 3 deleted                          8. order 1 closed (unsealed) 9. order 5 new
    """
    engine = create_tables(Base.metadata)
    placed = dt.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC)
    with sessions() as session:
        with audit_context(actor="alice", reason="opening"):
            a, b = Tag(id=1, name="a"), Tag(id=2, name="b")
            session.add_all(
                [
                    Order(
                        id=1,
                        status="new",
                        amount=Decimal("10.50"),
                        email="ann@example.com",
                        placed=placed,
                        doc={"b": [1, 2.5], "a": "é"},
                        tags=[a, b],
                    ),
                    Order(id=2, status="new", amount=Decimal("3")),
                ]
            )
            session.commit()
        first = session.get_one(Order, 1)
        first.status = "paid"
        first.tags = [a]
        session.commit()
        session.delete(session.get_one(Order, 2))
        session.commit()
        session.add(Order(id=3, status="new"))
        session.commit()
        versioning.seal(session)
        session.commit()
        session.get_one(Order, 1).status = "shipped"
        session.commit()
        session.add(Order(id=4, status="new"))
        session.commit()
        session.delete(session.get_one(Order, 3))
        session.commit()
        versioning.seal(session)
        session.commit()
        session.get_one(Order, 1).status = "closed"
        session.commit()
        session.add(Order(id=5, status="new"))
        session.commit()
    return engine


def _answers(session: Session, moments: list[Any]) -> list[Any]:
    """What the readers say at each moment, in plain values."""
    out = []
    for at in moments:
        states = []
        for pk in (1, 2, 3, 4, 5):
            obj = versioning.as_of(session, Order, pk, at)
            states.append(None if obj is None else (obj.status, obj.amount, obj.email))
        rows = [(o.id, o.status) for o in versioning.all_as_of(session, Order, at)]
        links = versioning.links_as_of(session, Order.tags, [1], at)
        version = versioning.version_at(session, Order, 1, at)
        out.append((states, rows, links, None if version is None else version.version_id))
    return out


def _archive(engine: sa.Engine, tmp_path: Path, name: str, before: Any) -> Path:
    path = tmp_path / name
    versioning.archive(engine, before=before, output=path)
    return path


def _issued(engine: sa.Engine, tx_id: int) -> dt.datetime:
    with Session(engine) as session:
        table = versioning.transaction_table(Base.metadata)
        value = session.execute(
            sa.select(versioning.schema.issued_at_utc(table)).where(table.c.id == tx_id)
        ).scalar_one()
    assert isinstance(value, dt.datetime)
    return value


def test_archive_verify_prune_verify(story: sa.Engine, sessions: Sessions, tmp_path: Path) -> None:
    engine = story
    ids = _ids(engine)
    assert len(ids) == 9
    # Seal 2 links transactions 5-7: archiving before transaction 8 rounds down to it.
    before = _issued(engine, ids[7])
    later = [ids[6], ids[7], ids[8], before, dt.datetime.now(dt.UTC)]
    with sessions() as session:
        expected = _answers(session, later)
        history_after = versioning.history(session, Order, 1, since=ids[6])
    path = tmp_path / "history-1.jsonl.gz"
    manifest = versioning.archive(engine, before=before, output=path)
    assert (manifest.first_transaction_id, manifest.last_transaction_id) == (ids[0], ids[6])
    assert (manifest.first_seal_id, manifest.last_seal_id, manifest.seals) == (1, 2, 2)
    assert manifest.transactions == 7 and manifest.previous_hash is None
    assert manifest.versions == sum(manifest.tables.values()) == 13
    assert manifest.tables["arch_order_tags_history"] == 3
    assert manifest.latest_transaction_id == ids[6]

    report = versioning.verify_archive(path)  # no database
    assert report.ok, report.problems
    assert (report.transactions_checked, report.versions_checked) == (7, 13)

    archived = list(versioning.read_archive(path))
    assert len(archived) == 13
    first = next(v for v in archived if v.table == "arch_orders" and v.key == (1,))
    assert first.operation is versioning.Operation.INSERT
    assert first.state["amount"] == Decimal("10.5") and first.state["email"] == "ann@example.com"
    assert first.state["doc"] == {"a": "é", "b": [1, 2.5]}
    assert first.transaction.actor == "alice" and first.transaction.id == ids[0]
    paid = next(v for v in archived if v.transaction_id == ids[1] and v.table == "arch_orders")
    assert paid.changes == {"status": ("new", "paid")}
    unlinked = [v for v in archived if v.table == "arch_order_tags"]
    assert [(v.operation.value, v.key) for v in unlinked] == [
        ("insert", (1, 1)),
        ("insert", (1, 2)),
        ("delete", (1, 2)),
    ]

    horizon = versioning.prune(engine, archive=path)
    assert horizon.transaction_id == ids[6] and horizon.seal_id == 2
    assert horizon.archive == path.name and horizon.archive_sha256 == manifest.data_sha256
    with sessions() as session:
        assert versioning.pruned_horizon(session) == horizon
        report = versioning.verify(session)
        assert report.ok, report.problems
        report = versioning.verify(session, archives=[path])
        assert report.ok, report.problems
        # At and after the horizon: the same answers as before the prune.
        assert _answers(session, later) == expected
        assert versioning.history(session, Order, 1, since=ids[6]) == history_after
        assert versioning.history(session, Order, 5) != []  # created after the horizon
        # The prune is a transaction of its own, in the chain.
        table = versioning.transaction_table(Base.metadata)
        row = session.execute(sa.select(table).where(table.c.id == horizon.prune_transaction_id))
        recorded = row.one()
        assert recorded.reason.startswith("prune: history up to transaction")
        assert recorded.extra["prune"]["archive_sha256"] == manifest.data_sha256
    # Deleted: what only the archive needs. Kept: the newest version of each record by then.
    with engine.connect() as connection:
        left = set(
            connection.exec_driver_sql(
                f"SELECT id FROM {TRANSACTION_TABLE} WHERE id <= {ids[6]}"
            ).scalars()
        )
    # 1 (tags a, b as they are now; link 1-a), 2 (link 1-b taken off, counted with 1), 3
    # (order 2 deleted), 5 (order 1 shipped), 6 (order 4), 7 (order 3 deleted); not 4.
    assert left == {ids[0], ids[1], ids[2], ids[4], ids[5], ids[6]}
    _seal(sessions)
    with sessions() as session:
        report = versioning.verify(session, archives=[path])
        assert report.ok and report.unsealed == 0, report.problems


def test_the_database_and_its_archives_count_each_transaction_once(
    story: sa.Engine, sessions: Sessions, tmp_path: Path
) -> None:
    """An archive made before any prune holds transactions the database still holds (and a
    prune keeps some): the chain is the same, so verify counts each transaction and version
    once, whether archived, held, or both."""
    engine = story
    ids = _ids(engine)
    path = _archive(engine, tmp_path, "not-pruned.jsonl.gz", _issued(engine, ids[7]))
    with sessions() as session:
        alone = versioning.verify(session)
        both = versioning.verify(session, archives=[path])
    assert alone.ok and both.ok, both.problems
    assert (alone.transactions_checked, alone.versions_checked) == (9, 15)
    assert (both.transactions_checked, both.versions_checked) == (9, 15)
    versioning.prune(engine, archive=path)
    with sessions() as session:
        pruned = versioning.verify(session)
        after = versioning.verify(session, archives=[path])
    assert after.ok, after.problems
    assert pruned.transactions_checked < 10  # what the prune deleted is in the archive only
    # The nine transactions and their versions, once each, and the prune's own transaction.
    assert (after.transactions_checked, after.versions_checked) == (10, 15), (pruned, after)


def test_before_the_horizon_raises(story: sa.Engine, sessions: Sessions, tmp_path: Path) -> None:
    engine = story
    ids = _ids(engine)
    early = _issued(engine, ids[2])
    path = _archive(engine, tmp_path, "a.jsonl.gz", _issued(engine, ids[7]))
    versioning.prune(engine, archive=path)
    with sessions() as session:
        for at in (ids[0], ids[5], early):
            with pytest.raises(ArchivedError, match=r"horizon \(transaction \d+") as caught:
                versioning.as_of(session, Order, 1, at)
            assert caught.value.horizon_transaction_id == ids[6]
            assert caught.value.archive == "a.jsonl.gz"
            with pytest.raises(ArchivedError):
                versioning.version_at(session, Order, 4, at)
            with pytest.raises(ArchivedError):
                list(versioning.all_as_of(session, Order, at))
            with pytest.raises(ArchivedError):
                versioning.links_as_of(session, Order.tags, [1], at)
            with pytest.raises(ArchivedError):
                versioning.restore(session, Order, 1, at=at)
        # Never a silent None: a record deleted before the horizon, and one never there.
        with pytest.raises(ArchivedError):
            versioning.as_of(session, Order, 2, ids[0])
        assert versioning.as_of(session, Order, 2, ids[6]) is None
        # Never a shortened list: records with versions before the horizon.
        for pk in (1, 2, 3):
            with pytest.raises(ArchivedError, match="history of Order"):
                versioning.history(session, Order, pk)
        with pytest.raises(ArchivedError):
            versioning.history(session, Order, 1, since=ids[5])
        assert [v.state["status"] for v in versioning.history(session, Order, 1, since=ids[7])] == [
            "closed"
        ]
        restored = versioning.restore(session, Order, 1, at=ids[6])
        assert restored.status == "shipped"
        session.rollback()
        # A search of the horizon's own transaction is refused, and the message says where one
        # may start (a moment may be the horizon itself; a search starts after it).
        with pytest.raises(ArchivedError) as refused:
            versioning.search(session, transaction_id=ids[6])
        assert f"transaction id >= {ids[6]}" in str(refused.value)
        assert f"search from a transaction id > {ids[6]}" in str(refused.value)
        assert versioning.search(session, transaction_id=ids[7])


def _rewrite(path: Path, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Path:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        documents = [json.loads(line) for line in file]
    changed = path.with_name(f"changed-{uuid.uuid4().hex[:6]}.jsonl.gz")
    with gzip.open(changed, "wt", encoding="utf-8") as file:
        for document in change(documents):
            file.write(
                json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                + "\n"
            )
    return changed


def _found(report: versioning.Report) -> set[tuple[str, str | None, int | None, int | None]]:
    return {(p.kind, p.table, p.transaction_id, p.version_id) for p in report.problems}


def test_tampered_archive_is_caught_and_not_pruned(
    story: sa.Engine, sessions: Sessions, tmp_path: Path
) -> None:
    engine = story
    ids = _ids(engine)
    path = _archive(engine, tmp_path, "a.jsonl.gz", _issued(engine, ids[7]))

    def versions(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [d for d in documents if d["t"] == "version"]

    def amount(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        row = next(d for d in versions(documents) if d["table"] == "arch_orders_history")
        row["values"][2] = "99.5"
        return documents

    def dropped(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        row = versions(documents)[-1]
        return [d for d in documents if d is not row]

    def manifest(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        documents[-1]["versions"] += 1
        return documents

    with gzip.open(path, "rt", encoding="utf-8") as file:
        original = versions([json.loads(line) for line in file])
    first_order = next(d for d in original if d["table"] == "arch_orders_history")
    report = versioning.verify_archive(_rewrite(path, amount))
    assert ("altered", "arch_orders_history", ids[0], first_order["id"]) in _found(report)
    last = original[-1]
    report = versioning.verify_archive(_rewrite(path, dropped))
    assert ("missing", last["table"], last["transaction_id"], None) in _found(report)
    report = versioning.verify_archive(_rewrite(path, manifest))
    assert [(p.kind, p.table) for p in report.problems] == [("altered", None)]
    assert "manifest says versions = 14" in report.problems[0].detail
    for bad in (_rewrite(path, amount), _rewrite(path, dropped), _rewrite(path, manifest)):
        with pytest.raises(ArchiveError, match=r"does not verify.*nothing was deleted"):
            versioning.prune(engine, archive=bad)
    assert len(_ids(engine)) == 9  # nothing deleted
    with sessions() as session:
        report = versioning.verify(session, archives=[_rewrite(path, amount)])
        assert ("altered", "arch_orders_history", ids[0], first_order["id"]) in _found(report)


Documents = list[dict[str, Any]]


def _first(documents: Documents, kind: str, nth: int = 0) -> dict[str, Any]:
    return [d for d in documents if d["t"] == kind][nth]


def _without(documents: Documents, *gone: dict[str, Any]) -> Documents:
    return [d for d in documents if all(d is not g for g in gone)]


def _moved_version(documents: Documents) -> Documents:
    """A history row moved into another transaction (placed after that one's row)."""
    row = _first(documents, "version")
    rest = _without(documents, row)
    target = _first(rest, "transaction", 2)
    at = rest.index(target) + 1
    return [*rest[:at], row, *rest[at:]]


def _unknown_table(documents: Documents) -> Documents:
    _first(documents, "version")["table"] = "nosuch_history"
    return documents


def _added_version(documents: Documents) -> Documents:
    row = _first(documents, "version")
    copy = {**row, "id": row["id"] + 100_000}
    at = documents.index(row) + 1
    return [*documents[:at], copy, *documents[at:]]


def _last_seal_line(documents: Documents) -> Documents:
    seal = [d for d in documents if d["t"] == "seal"][-1]
    return _without(documents, seal)


def _second_seal_relinked(documents: Documents) -> Documents:
    _first(documents, "seal", 1)["previous_hash"] = "0" * 64
    return documents


def _entry_dropped(documents: Documents) -> Documents:
    return _without(documents, _first(documents, "entry"))


def _seal_last_id(documents: Documents) -> Documents:
    _first(documents, "seal")["last_transaction_id"] -= 1
    return documents


TAMPERING = {
    # name: (change, kind of a problem it must give, words of its detail)
    "a transaction row removed": (
        lambda documents: _without(documents, _first(documents, "transaction")),
        "added",
        "is not with its transaction",
    ),
    "a digest row removed": (
        lambda documents: _without(documents, _first(documents, "digest")),
        "missing",
        "",
    ),
    "a history row moved to another transaction": (_moved_version, "added", ""),
    "a history row of an unknown table": (
        _unknown_table,
        "added",
        "is not a table the header describes",
    ),
    "a history row added": (_added_version, "added", "was added to transaction"),
    "the last seal removed": (_last_seal_line, "missing", "the seal that linked them"),
    "a seal relinked": (_second_seal_relinked, "chain", "does not link to seal"),
    "a seal entry removed": (_entry_dropped, "chain", "does not match the entries it links"),
    "a seal's last transaction changed": (_seal_last_id, "chain", "names a last transaction"),
    "the manifest cut off": (lambda documents: documents[:-1], "missing", "no manifest"),
    "a line of unknown type": (
        lambda documents: [*documents[:2], {"t": "comment"}, *documents[2:]],
        "added",
        "unknown type 'comment'",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_each_way_of_tampering_with_an_archive_is_caught(
    story: sa.Engine, tmp_path: Path, case: str
) -> None:
    change, kind, words = TAMPERING[case]
    engine = story
    ids = _ids(engine)
    path = _archive(engine, tmp_path, "a.jsonl.gz", _issued(engine, ids[7]))
    changed = _rewrite(path, change)
    report = versioning.verify_archive(changed)
    assert any(p.kind == kind and words in p.detail for p in report.problems), report.problems
    with pytest.raises(ArchiveError, match=r"does not verify.*nothing was deleted"):
        versioning.prune(engine, archive=changed)
    assert len(_ids(engine)) == 9


def test_files_that_are_no_archive_are_refused(story: sa.Engine, tmp_path: Path) -> None:
    engine = story
    ids = _ids(engine)
    path = _archive(engine, tmp_path, "a.jsonl.gz", _issued(engine, ids[7]))
    plain_text = tmp_path / "notes.txt"
    plain_text.write_text("not gzip\n", encoding="utf-8")
    with pytest.raises(ArchiveError, match=r"notes\.txt is not a readable archive"):
        versioning.verify_archive(plain_text)
    empty = tmp_path / "empty.jsonl.gz"
    with gzip.open(empty, "wb"):
        pass
    with pytest.raises(ArchiveError, match=r"empty\.jsonl\.gz is empty: not a versioning archive"):
        versioning.verify_archive(empty)
    other = tmp_path / "other.jsonl.gz"
    with gzip.open(other, "wt", encoding="utf-8") as file:
        file.write('{"t": "header", "format": "something-else"}\n')
    with pytest.raises(ArchiveError, match="is not a versioning archive"):
        versioning.verify_archive(other)
    newer = _rewrite(path, lambda documents: [{**documents[0], "version": 99}, *documents[1:]])
    with pytest.raises(ArchiveError, match="format version 99"):
        versioning.verify_archive(newer)
    with pytest.raises(ArchiveError, match="no such archive file"):
        versioning.verify_archive(tmp_path / "missing.jsonl.gz")
    # Cut short inside the compressed data: damaged past a point, said as a problem.
    data = path.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    report = versioning.verify_archive(cut)
    assert any("damaged and cannot be read past a point" in p.detail for p in report.problems)
    with pytest.raises(ArchiveError):
        versioning.prune(engine, archive=cut)
    with pytest.raises(ArchiveError, match="no manifest"):
        versioning.archiving.read_manifest(_rewrite(path, lambda documents: documents[:-1]))
    assert versioning.archiving.read_manifest(path).transactions == 7


def test_prune_refuses_an_archive_that_does_not_fit(
    story: sa.Engine, sessions: Sessions, tmp_path: Path
) -> None:
    engine = story
    ids = _ids(engine)
    path = _archive(engine, tmp_path, "a.jsonl.gz", _issued(engine, ids[7]))
    # The database's seal is not the archive's: refused, nothing deleted.
    with engine.begin() as connection, tamper(connection):
        connection.exec_driver_sql(
            "UPDATE versioning_seal SET hash = '" + "0" * 64 + "' WHERE id = 2"
        )
    with pytest.raises(ArchiveError, match=r"seal 2 of a\.jsonl\.gz is not the database's"):
        versioning.prune(engine, archive=path)
    assert len(_ids(engine)) == 9
    with sessions() as session:
        assert not versioning.verify(session, archives=[path]).ok


def test_prune_twice_and_two_archives_as_one_chain(
    story: sa.Engine, sessions: Sessions, tmp_path: Path
) -> None:
    engine = story
    ids = _ids(engine)
    first = tmp_path / "first.jsonl.gz"
    manifest = versioning.archive(engine, before=_issued(engine, ids[4]), output=first)
    assert (manifest.last_seal_id, manifest.last_transaction_id) == (1, ids[3])
    versioning.prune(engine, archive=first)
    with pytest.raises(ArchiveError, match="prune archives in order"):
        versioning.prune(engine, archive=first)
    _seal(sessions)  # seals 3: transactions 8, 9 and the prune
    with sessions() as session:
        prune_id = versioning.pruned_horizon(session).prune_transaction_id  # type: ignore[union-attr]
        session.get_one(Order, 4).status = "paid"
        session.commit()
    second = tmp_path / "second.jsonl.gz"
    manifest = versioning.archive(engine, before=_issued(engine, prune_id + 1), output=second)
    assert (manifest.first_seal_id, manifest.last_seal_id) == (2, 3)
    assert manifest.last_transaction_id == prune_id
    versioning.prune(engine, archive=second)
    with sessions() as session:
        assert versioning.verify(session).ok
        report = versioning.verify(session, archives=[second, first])
        assert report.ok, report.problems
        assert [v.state["status"] for v in versioning.history(session, Order, 4, since=prune_id)]
        report = versioning.verify(session, archives=[second])
        assert [p.kind for p in report.problems] == ["chain"]
        assert "seals 1..1 are in none of the archives" in report.problems[0].detail
        obj = versioning.as_of(session, Order, 1, prune_id)
        assert obj is not None and obj.status == "closed"


def test_archives_given_twice_or_too_few_are_named(
    story: sa.Engine, sessions: Sessions, tmp_path: Path
) -> None:
    ids = _ids(story)
    first = _archive(story, tmp_path, "first.jsonl.gz", _issued(story, ids[4]))
    both = _archive(story, tmp_path, "both.jsonl.gz", _issued(story, ids[7]))  # seals 1 and 2
    with sessions() as session:
        report = versioning.verify(session, archives=[first, both])
    assert [p.kind for p in report.problems] == ["chain"]
    assert "archive both.jsonl.gz overlaps archive first.jsonl.gz (seals 1..1)" in (
        report.problems[0].detail
    )
    versioning.prune(story, archive=both)
    with sessions() as session:
        report = versioning.verify(session, archives=[first])
    assert [p.kind for p in report.problems] == ["chain"]
    assert "pruned up to seal 2 (archive both.jsonl.gz), but the archives given end at seal 1" in (
        report.problems[0].detail
    )


def test_deleting_kept_history_after_a_prune_is_caught(
    story: sa.Engine, sessions: Sessions, tmp_path: Path
) -> None:
    engine = story
    ids = _ids(engine)
    path = _archive(engine, tmp_path, "a.jsonl.gz", _issued(engine, ids[7]))
    versioning.prune(engine, archive=path)
    # Someone deletes a kept transaction whole, as if it had been pruned.
    kept = ids[4]
    with engine.begin() as connection, tamper(connection):
        for table in ("arch_orders_history", "arch_order_tags_history", "arch_tags_history"):
            connection.exec_driver_sql(
                f"DELETE FROM {table} WHERE versioning_transaction_id = {kept}"
            )
        connection.exec_driver_sql(f"DELETE FROM versioning_digest WHERE transaction_id = {kept}")
        connection.exec_driver_sql(
            f"DELETE FROM versioning_seal_entry WHERE transaction_id = {kept}"
        )
        connection.exec_driver_sql(f"DELETE FROM {TRANSACTION_TABLE} WHERE id = {kept}")
    with sessions() as session:
        report = versioning.verify(session)
        assert [(p.kind, p.table) for p in report.problems] == [
            ("missing", "versioning_seal_entry")
        ]
        report = versioning.verify(session, archives=[path])
        assert ("missing", "versioning_seal_entry", None, None) in _found(report)


def test_nothing_to_archive(story: sa.Engine, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="nothing to archive before"):
        versioning.archive(
            story, before=dt.datetime(2000, 1, 1, tzinfo=dt.UTC), output=tmp_path / "x.gz"
        )
    assert not (tmp_path / "x.gz").exists()
    with pytest.raises(versioning.ArgumentError, match="timezone-aware"):
        versioning.archive(story, before=dt.datetime(2000, 1, 1), output=tmp_path / "x.gz")
    with pytest.raises(ArchiveError, match="no such archive"):
        versioning.prune(story, archive=tmp_path / "missing.jsonl.gz")


def test_archive_arguments_are_refused_before_anything_is_written(
    story: sa.Engine, tmp_path: Path
) -> None:
    out = tmp_path / "a.jsonl.gz"
    for before, words in (
        (-dt.timedelta(days=1), "takes a positive age"),
        ("2026-01-01", "takes a datetime or a timedelta"),
    ):
        with pytest.raises(versioning.ArgumentError, match=words):
            versioning.archive(story, before=before, output=out)  # type: ignore[arg-type]
    with pytest.raises(versioning.ArgumentError, match="takes a Session, an Engine or a Conn"):
        versioning.archive("sqlite://", before=dt.timedelta(0), output=out)
    with story.connect() as connection:
        catalog = versioning.catalog.load(connection)
    with pytest.raises(versioning.ArgumentError, match="pass metadata= or catalog=, not both"):
        versioning.archive(
            story, before=dt.timedelta(0), output=out, catalog=catalog, metadata=Base.metadata
        )
    assert not out.exists()


def test_history_that_does_not_verify_is_not_archived(story: sa.Engine, tmp_path: Path) -> None:
    """The file is checked as it is written: a changed history row stops the archive, and no
    file (not even a partial one) is left."""
    history = versioning.history_table(Order)
    with story.begin() as connection, tamper(connection):
        connection.execute(history.update().where(history.c.id == 1).values(status="forged"))
    out = tmp_path / "a.jsonl.gz"
    with pytest.raises(ArchiveError, match=r"the history to archive does not verify.*verify\(\)"):
        versioning.archive(story, before=dt.timedelta(0), output=out)
    assert list(tmp_path.iterdir()) == []


def test_a_saved_digest_that_the_archive_does_not_match(
    story: sa.Engine, sessions: Sessions, tmp_path: Path
) -> None:
    ids = _ids(story)
    path = _archive(story, tmp_path, "a.jsonl.gz", _issued(story, ids[7]))
    with sessions() as session:
        saved = versioning.digest(session)
    assert saved is not None and saved.seal_id == 2
    assert versioning.verify_archive(path, [saved]).ok
    other = versioning.Digest(saved.seal_id, saved.last_transaction_id, "0" * 64, saved.sealed_at)
    report = versioning.verify_archive(path, [other])
    assert [(p.kind, p.detail) for p in report.problems] == [
        (
            "digest",
            "archive a.jsonl.gz: seal 2 differs from the saved digest: the archive was rewritten",
        )
    ]
    with pytest.raises(versioning.ArgumentError, match=r"digests=\[Digest, \.\.\.\]"):
        versioning.verify_archive(path, ["not a digest"])  # type: ignore[list-item]


# --- pure logic: the archive's form, no database ----------------------------------------------


def test_each_kind_of_value_reads_back_from_an_archive() -> None:
    """The kind an archive records for each column type, and the value it reads back for each
    kind (as stored when it does not read as its kind: never an error)."""

    class Wrapped(sa.types.TypeDecorator[dt.time]):
        impl = sa.Time
        cache_ok = True

    class Opaque(sa.types.UserDefinedType[Any]):
        cache_ok = True

    kinds = [
        value_kind(t)
        for t in (sa.Interval(), Wrapped(), sa.Time(), sa.ARRAY(sa.Numeric()), Opaque())
    ]
    assert kinds == ["interval", "time", "time", "array:decimal", "other"]
    assert decode("interval", "90000000") == dt.timedelta(seconds=90)
    assert decode("time", "13:45:30.250000") == dt.time(13, 45, 30, 250000)
    assert decode("float", "2.5") == 2.5 and decode("boolean", 1) is True
    assert decode("array:decimal", [["1.5"], "2"]) == [[Decimal("1.5")], Decimal("2")]
    assert decode("array:decimal", "3") == Decimal("3")
    assert decode("date", "not a date") == "not a date"  # as stored
    assert line({"t": "x", "value": float("nan")}) == b'{"t":"x","value":NaN}\n'


def test_archived_values_hash_as_the_database_rows() -> None:
    metadata = sa.MetaData()
    table = sa.Table(
        "t_history",
        metadata,
        sa.Column("versioning_id", sa.Integer, primary_key=True),
        sa.Column("versioning_transaction_id", sa.Integer),
        sa.Column("versioning_operation", sa.String(6)),
        sa.Column("id", sa.Integer),
        sa.Column("price", sa.Numeric(10, 3)),
        sa.Column("ratio", sa.Float),
        sa.Column("at", sa.DateTime(timezone=True)),
        sa.Column("day", sa.Date),
        sa.Column("span", sa.Interval),
        sa.Column("key", sa.Uuid),
        sa.Column("blob", sa.LargeBinary),
        sa.Column("doc", sa.JSON),
        sa.Column("flag", sa.Boolean),
        sa.Column("mail", sa.String(50)),
        sa.Column("versioning_changes", sa.JSON),
        sa.Column("versioning_personal", sa.JSON),
        info={"versioning": "history", "versioning_personal": {"mail": "mail"}},
    )
    row = {
        "versioning_operation": "update",
        "id": 7,
        "price": Decimal("12.300"),
        "ratio": 0.1,
        "at": dt.datetime(2026, 3, 4, 5, 6, 7, 8, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "day": dt.date(2026, 3, 4),
        "span": dt.timedelta(days=1, microseconds=5),
        "key": uuid.UUID(int=5),
        "blob": b"\x00\xff",
        "doc": {"z": [1, 2.5, None], "a": "ü"},
        "flag": True,
        "mail": "ann@example.com",
        "versioning_changes": {"mail": ["a@b", "ann@example.com"], "price": ["1", "12.300"]},
        "versioning_personal": salts(["mail"]),
    }
    description = describe(table)
    assert description.kinds == (
        "integer",
        "decimal",
        "float",
        "datetime",
        "date",
        "interval",
        "uuid",
        "bytes",
        "json",
        "boolean",
        "string",
    )
    values = [canonical_value(table.c[name], row[name]) for name in description.columns]
    stored = json.loads(json.dumps(values))  # as the file gives them back
    offline = row_hash(
        description,
        "update",
        stored,
        row["versioning_changes"],
        row["versioning_personal"],
    )
    assert offline == db_row_hash(table, committed_view(table, row))
    decoded = [decode(kind, v) for kind, v in zip(description.kinds, stored, strict=True)]
    assert decoded[1] == Decimal("12.3") and decoded[5] == dt.timedelta(days=1, microseconds=5)
    assert decoded[3] == dt.datetime(2026, 3, 4, 3, 6, 7, 8, tzinfo=dt.UTC)
    assert decoded[6] == uuid.UUID(int=5) and decoded[7] == b"\x00\xff"
    changed = list(stored)
    changed[1] = "12.4"
    assert row_hash(description, "update", changed, row["versioning_changes"], None) != offline
    assert value_kind(sa.Enum("a", "b")) == "enum" and value_kind(sa.ARRAY(sa.Integer)) == (
        "array:integer"
    )
    assert decode("decimal", "not a number") == "not a number"


# --- events, no models, search and export at the horizon --------------------------------------


@pytest.fixture
def eventful(create_tables: Tables, sessions: Sessions) -> sa.Engine:
    """Sealed: 1. order 1 new  2. an event (login denied)  3. order 1 paid; then, sealed too:
    4. order 1 shipped  5. an event (export denied)."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Order(id=1, status="new"))
        session.commit()
    with audit_context(actor="mallory", source_ip="203.0.113.7"):
        versioning.record_event(
            engine,
            "login",
            outcome="denied",
            target="account 7",
            details={"attempts": 3, "why": "bad password"},
            metadata=Base.metadata,
        )
    with sessions() as session:
        session.get_one(Order, 1).status = "paid"
        session.commit()
        versioning.seal(session)
        session.commit()
        session.get_one(Order, 1).status = "shipped"
        session.commit()
    versioning.record_event(engine, "export", outcome="denied", metadata=Base.metadata)
    _seal(sessions)
    return engine


def _event_rows(engine: sa.Engine) -> list[tuple[int, str]]:
    with engine.connect() as connection:
        return [
            (int(row[0]), str(row[1]))
            for row in connection.exec_driver_sql(
                "SELECT transaction_id, action FROM versioning_event ORDER BY transaction_id"
            )
        ]


def test_events_are_archived_with_their_transaction_and_pruned(
    eventful: sa.Engine, sessions: Sessions, tmp_path: Path
) -> None:
    engine = eventful
    ids = _ids(engine)
    assert len(ids) == 5
    path = tmp_path / "events.jsonl.gz"
    manifest = versioning.archive(engine, before=_issued(engine, ids[3]), output=path)
    assert (manifest.first_transaction_id, manifest.last_transaction_id) == (ids[0], ids[2])
    assert (manifest.transactions, manifest.versions, manifest.events) == (3, 2, 1)

    report = versioning.verify_archive(path)  # recomputes the event's hash and the digests
    assert report.ok, report.problems
    assert [v.transaction_id for v in versioning.read_archive(path)] == [ids[0], ids[2]]
    (event,) = versioning.read_archive_events(path)
    assert (event.transaction_id, event.action, event.outcome, event.target) == (
        ids[1],
        "login",
        "denied",
        "account 7",
    )
    assert event.details == {"attempts": 3, "why": "bad password"}
    assert (event.transaction.actor, event.transaction.source_ip) == ("mallory", "203.0.113.7")

    horizon = versioning.prune(engine, archive=path)
    assert horizon.transaction_id == ids[2]
    # The event's transaction is deleted with its event row; the later event stays.
    assert _event_rows(engine) == [(ids[4], "export")]
    assert ids[1] not in _ids(engine)
    with sessions() as session:
        report = versioning.verify(session)
        assert report.ok and report.events_checked == 1, report.problems
        report = versioning.verify(session, archives=[path])
        assert report.ok, report.problems
        # Events before the horizon are in the archive: a list from the beginning is refused.
        with pytest.raises(ArchivedError, match=r"versioning\.events"):
            versioning.events(session, metadata=Base.metadata)
        after = horizon.issued_at + dt.timedelta(microseconds=1)
        recent = versioning.events(session, since=after, metadata=Base.metadata)
        assert [(e.transaction_id, e.action) for e in recent] == [(ids[4], "export")]


def test_a_changed_event_in_an_archive_is_caught(eventful: sa.Engine, tmp_path: Path) -> None:
    engine = eventful
    ids = _ids(engine)
    path = _archive(engine, tmp_path, "e.jsonl.gz", _issued(engine, ids[3]))

    def allowed(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for document in documents:
            if document["t"] == "event":
                document["outcome"] = "allowed"
        return documents

    def dropped(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [d for d in documents if d["t"] != "event"]

    changed = versioning.verify_archive(_rewrite(path, allowed))
    assert ("altered", "versioning_event", ids[1], None) in {
        (p.kind, p.table, p.transaction_id, None) for p in changed.problems
    }
    assert any("event row" in p.detail for p in changed.problems)
    removed = versioning.verify_archive(_rewrite(path, dropped))
    assert ("missing", "versioning_event", ids[1], None) in _found(removed)
    with pytest.raises(ArchiveError, match="does not verify"):
        versioning.prune(engine, archive=_rewrite(path, allowed))
    assert len(_event_rows(engine)) == 2  # nothing deleted


def test_archive_and_prune_with_no_model_imported(
    eventful: sa.Engine, sessions: Sessions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = eventful
    ids = _ids(engine)
    before = _issued(engine, ids[3])
    with sessions() as session:
        expected = versioning.as_of(session, Order, 1, before)
        assert expected is not None
        status = expected.status
    with monkeypatch.context() as no_models:
        # As the versioning CLI runs: no versioned model imported, tables from the registry.
        no_models.setattr("versioning.catalog.all_specs", lambda: [])
        path = tmp_path / "bare.jsonl.gz"
        manifest = versioning.archive(engine, before=before, output=path)
        assert (manifest.transactions, manifest.versions, manifest.events) == (3, 2, 1)
        assert set(manifest.tables) == {"arch_orders_history"}
        with engine.begin() as connection:
            horizon = versioning.prune(connection, archive=path)
        with engine.connect() as connection:
            report = versioning.verify(connection, archives=[path])
            assert report.ok, report.problems
        with Session(engine) as session, pytest.raises(ArchiveError, match="reaches no"):
            versioning.archive(session, before=before, output=tmp_path / "none.jsonl.gz")
    assert horizon.transaction_id == ids[2]
    with sessions() as session:
        # The prune's own transaction, written without a model, is in the chain.
        report = versioning.verify(session, archives=[path])
        assert report.ok, report.problems
        table = versioning.transaction_table(Base.metadata)
        recorded = session.execute(
            sa.select(table).where(table.c.id == horizon.prune_transaction_id)
        ).one()
        assert recorded.reason.startswith("prune: history up to transaction")
        assert recorded.extra["prune"]["deleted_transactions"] == 2
        assert versioning.pruned_horizon(session) == horizon
        again = versioning.as_of(session, Order, 1, before)
        assert again is not None and again.status == status


def test_archive_and_prune_given_a_loaded_catalog(
    eventful: sa.Engine, sessions: Sessions, tmp_path: Path
) -> None:
    engine = eventful
    ids = _ids(engine)
    path = tmp_path / "catalog.jsonl.gz"
    with engine.connect() as connection:
        catalog = versioning.catalog.load(connection)
        manifest = versioning.archive(
            connection, before=_issued(engine, ids[3]), output=path, catalog=catalog
        )
    assert manifest.last_transaction_id == ids[2]
    with engine.begin() as connection:
        versioning.prune(connection, archive=path, catalog=versioning.catalog.load(connection))
    with sessions() as session:
        assert versioning.verify(session, archives=[path]).ok
    with pytest.raises(versioning.ArgumentError, match="catalog="):
        versioning.archive(engine, before=dt.timedelta(0), output=path, catalog="registry")  # type: ignore[arg-type]


def test_search_and_export_refuse_a_range_before_the_horizon(
    eventful: sa.Engine, sessions: Sessions, tmp_path: Path
) -> None:
    engine = eventful
    ids = _ids(engine)
    before = _issued(engine, ids[3])
    path = _archive(engine, tmp_path, "s.jsonl.gz", before)
    with sessions() as session:
        everything = versioning.search(session, newest_first=False)
    assert [v.transaction_id for v in everything] == [ids[0], ids[2], ids[3]]
    horizon = versioning.prune(engine, archive=path)
    after = horizon.issued_at + dt.timedelta(microseconds=1)
    with sessions() as session:
        for filters in (
            {},
            {"since": horizon.issued_at},
            {"since": before - dt.timedelta(days=1), "until": before},
            {"transaction_id": ids[0]},
            {"transaction_id": horizon.transaction_id},
            {"model": Order, "pk": 1},
        ):
            with pytest.raises(ArchivedError, match=r"archived to 's\.jsonl\.gz'") as raised:
                versioning.search(session, **filters)  # type: ignore[arg-type]
            assert raised.value.horizon_transaction_id == horizon.transaction_id
        with pytest.raises(ArchivedError):
            next(versioning.iter_search(session))
        with pytest.raises(ArchivedError):  # events only: refused as well
            versioning.search(session, include_events=True, action="login")
        found = versioning.search(session, since=after, newest_first=False)
        assert [v.transaction_id for v in found] == [ids[3]]
        assert [v.transaction_id for v in versioning.search(session, transaction_id=ids[3])] == [
            ids[3]
        ]
    output = tmp_path / "export.csv"
    with pytest.raises(ArchivedError):
        export(engine, output, format="csv")
    assert not output.exists()  # refused before the file is opened
    # After the horizon: the version of transaction 4 and the event of transaction 5.
    assert export(engine, output, format="csv", since=after) == 2


def test_an_archive_without_models_is_the_archive_with_them(
    story: sa.Engine, sessions: Sessions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = story
    ids = _ids(engine)
    before = _issued(engine, ids[7])
    with_models = versioning.archive(engine, before=before, output=tmp_path / "models.jsonl.gz")
    with monkeypatch.context() as no_models:
        no_models.setattr("versioning.catalog.all_specs", lambda: [])
        path = tmp_path / "registry.jsonl.gz"
        bare = versioning.archive(engine, before=before, output=path)
        # The same lines (link history described as links, records by their keys).
        assert bare.data_sha256 == with_models.data_sha256
        versioning.prune(engine, archive=path)
    with engine.connect() as connection:
        left = set(
            connection.exec_driver_sql(
                f"SELECT id FROM {TRANSACTION_TABLE} WHERE id <= {ids[6]}"
            ).scalars()
        )
    assert left == {ids[0], ids[1], ids[2], ids[4], ids[5], ids[6]}  # as with the models
    with sessions() as session:
        assert versioning.verify(session, archives=[path]).ok


def test_catalog_needs_an_engine_or_a_connection(story: sa.Engine, tmp_path: Path) -> None:
    with story.connect() as connection:
        catalog = versioning.catalog.load(connection)
    with Session(story) as session, pytest.raises(versioning.ArgumentError, match="Engine or a"):
        versioning.archive(
            session, before=dt.timedelta(0), output=tmp_path / "none.jsonl.gz", catalog=catalog
        )
