"""Checking an archive's documents with no database: row hashes, digests, seals, the manifest.

:class:`Checker` is fed the documents of an archive in order (see
:mod:`versioning.archive_format`) and adds to a :class:`~versioning.Report` what does not
match: a history row changed (``altered``, with its table and version id), removed
(``missing``) or added (``added``); a transaction row changed or removed; a seal entry or seal
changed, removed or out of line (``chain``); a manifest that does not describe the data
(``altered``, table ``None``). The writer (:func:`versioning.archive`) feeds it what it writes,
:func:`versioning.verify_archive` what it reads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from versioning.archive_format import TableDescription, row_hash
from versioning.canonical import (
    event_hash,
    listed_prefixes,
    row_prefix,
    segment_digest,
    transaction_bytes,
)
from versioning.integrity import Kind, Problem, Report, seal_hash

__all__ = ["Checker"]


@dataclass
class _Transaction:
    document: Mapping[str, Any]
    segments: list[Mapping[str, Any]] = field(default_factory=list)
    #: Per history table: (version id, row hash) in file order.
    rows: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)


@dataclass
class Totals:
    """What the documents held, to compare with the manifest."""

    transactions: int = 0
    versions: int = 0
    events: int = 0
    digests: int = 0
    entries: int = 0
    seals: int = 0
    first_transaction_id: int | None = None
    last_transaction_id: int | None = None
    first_seal_id: int | None = None
    last_seal_id: int | None = None
    previous_hash: str | None = None
    first_seal_hash: str | None = None
    last_seal_hash: str | None = None
    latest: tuple[dt.datetime, int] | None = None
    tables: dict[str, int] = field(default_factory=dict)
    #: Every seal: id -> (previous hash, hash, count, last transaction id).
    seals_seen: dict[int, tuple[str | None, str, int, int]] = field(default_factory=dict)


class Checker:
    """Checks an archive's documents as they come (bounded memory: one seal at a time)."""

    def __init__(self, report: Report, source: str, collect: bool = False) -> None:
        self.report = report
        self.source = source
        #: With ``collect``: the id of every transaction in the file (for a prune).
        self.collect = collect
        #: With ``collect``: only the ids from this one up (those a database may still hold).
        self.collect_from = 0
        self.ids: set[int] = set()
        #: Seal entries the database still holds of archived seals: ``(transaction id,
        #: segment) -> (seal id, digest)``; each found in the file is checked and taken out.
        self.expected: dict[tuple[int, int], tuple[int, str]] = {}
        self.totals = Totals()
        self.tables: dict[str, TableDescription] = {}
        self.tx_name = "versioning_transaction"
        self.digest_name = "versioning_digest"
        self.seal_name = "versioning_seal"
        self.entry_name = "versioning_seal_entry"
        self.event_name = "versioning_event"
        self._tx: _Transaction | None = None
        #: This seal's transactions: (transaction id, segment) -> digest recomputed (``None``:
        #: the transaction did not verify, already reported).
        self._computed: dict[tuple[int, int], str | None] = {}
        self._entries: list[Mapping[str, Any]] = []
        self._previous_seal: tuple[int, str] | None = None

    def problem(
        self, kind: Kind, table: str | None, tx: int | None, version: int | None, detail: str
    ) -> None:
        self.report.problems.append(
            Problem(kind, table, tx, version, f"archive {self.source}: {detail}")
        )

    # --- documents ------------------------------------------------------------------------

    def header(self, document: Mapping[str, Any]) -> None:
        names = document.get("names") or {}
        self.tx_name = str(names.get("transaction", self.tx_name))
        self.digest_name = str(names.get("digest", self.digest_name))
        self.seal_name = str(names.get("seal", self.seal_name))
        self.entry_name = str(names.get("seal_entry", self.entry_name))
        self.event_name = str(names.get("event", self.event_name))
        for table in document.get("tables", []):
            description = TableDescription.from_json(table)
            self.tables[description.name] = description

    def feed(self, document: Mapping[str, Any]) -> None:
        kind = document.get("t")
        if kind == "version":
            self._version(document)
        elif kind == "event":
            self._event(document)
        elif kind == "transaction":
            self._end_transaction()
            self._tx = _Transaction(document)
        elif kind == "digest":
            tx = self._tx
            if tx is None or tx.document.get("id") != document.get("transaction_id"):
                self.problem(
                    "added",
                    self.digest_name,
                    _int(document.get("transaction_id")),
                    None,
                    "a digest row without its transaction row (the transaction row was "
                    "removed, or the digest row moved)",
                )
                return
            tx.segments.append(document)
        elif kind == "entry":
            self._end_transaction()
            self._entries.append(document)
        elif kind == "seal":
            self._end_transaction()
            self._seal(document)
        else:
            self.problem("added", None, None, None, f"a line of unknown type {kind!r}")

    def _version(self, document: Mapping[str, Any]) -> None:
        name = str(document.get("table"))
        version_id = _int(document.get("id"))
        tx = self._tx
        tx_id = _int(document.get("transaction_id"))
        if tx is None or tx.document.get("id") != tx_id:
            self.problem(
                "added",
                name,
                tx_id,
                version_id,
                f"history row {version_id} of {name} is not with its transaction {tx_id} "
                f"(its transaction row was removed, or the row moved)",
            )
            return
        table = self.tables.get(name)
        self.totals.versions += 1
        self.totals.tables[name] = self.totals.tables.get(name, 0) + 1
        if table is None:
            self.problem(
                "added", name, tx_id, version_id, f"{name} is not a table the header describes"
            )
            return
        try:
            value = row_hash(
                table,
                str(document["operation"]),
                document["values"],
                document.get("changes"),
                document.get("personal"),
            )
        except (KeyError, ValueError, TypeError, AttributeError):
            value = b""
        tx.rows.setdefault(name, []).append((version_id or 0, value))

    def _event(self, document: Mapping[str, Any]) -> None:
        """An event row (:mod:`versioning.event_log`): hashed as the database's verify does,
        under the event table's name, so that its transaction's digest covers it."""
        name = self.event_name
        event_id = _int(document.get("id"))
        tx = self._tx
        tx_id = _int(document.get("transaction_id"))
        if tx is None or tx.document.get("id") != tx_id:
            self.problem(
                "added",
                name,
                tx_id,
                event_id,
                f"event row {event_id} of {name} is not with its transaction {tx_id} "
                f"(its transaction row was removed, or the row moved)",
            )
            return
        self.totals.events += 1
        try:
            value = event_hash(document)
        except (ValueError, TypeError, AttributeError):
            value = b""
        tx.rows.setdefault(name, []).append((event_id or 0, value))

    # --- a transaction's digest -------------------------------------------------------------

    def _end_transaction(self) -> None:
        tx, self._tx = self._tx, None
        if tx is None:
            return
        document = tx.document
        tx_id = _int(document.get("id")) or 0
        totals = self.totals
        totals.transactions += 1
        if self.collect and tx_id >= self.collect_from:
            self.ids.add(tx_id)
        totals.digests += len(tx.segments)
        if totals.first_transaction_id is None:
            totals.first_transaction_id = tx_id
        totals.first_transaction_id = min(totals.first_transaction_id, tx_id)
        totals.last_transaction_id = max(totals.last_transaction_id or tx_id, tx_id)
        try:
            issued_at = dt.datetime.fromisoformat(str(document["issued_at"]))
            values = {**document, "issued_at": issued_at}
            tx_hash = hashlib.sha256(transaction_bytes(values)).digest()
        except (KeyError, ValueError, TypeError):
            issued_at, tx_hash = None, b""
        if issued_at is not None and (totals.latest is None or (issued_at, tx_id) > totals.latest):
            totals.latest = (issued_at, tx_id)
        numbers = [_int(s.get("segment")) or 0 for s in tx.segments]
        if not tx.segments:
            self.problem(
                "missing",
                self.digest_name,
                tx_id,
                None,
                f"the digest row of transaction {tx_id} was removed",
            )
        digests = self._chain(tx_hash, tx)
        hexes = None if digests is None else [d.hex() for d in digests]
        if tx.segments and hexes != [s.get("digest") for s in tx.segments]:
            self._locate(tx_id, tx, tx_hash)  # reported: not compared with the seal again
            hexes = None
        for index, number in enumerate(numbers):
            self._computed[(tx_id, number)] = None if hexes is None else hexes[index]

    def _chain(self, tx_hash: bytes, tx: _Transaction) -> list[bytes] | None:
        """The digests of the segments, recomputed from the rows split by the listed counts;
        ``None`` if the rows do not split so."""
        if not tx.segments or tx.segments[0].get("segment") != 1:
            return None
        cut: dict[str, int] = {}
        previous = tx_hash
        out: list[bytes] = []
        for segment in tx.segments:
            listed = dict(segment.get("rows") or {})
            if segment.get("segment") == 1:
                listed.pop(self.tx_name, None)
            tables = []
            for name in sorted(listed):
                count = len(listed_prefixes(listed[name]))
                start = cut.get(name, 0)
                hashes = [h for _, h in tx.rows.get(name, [])[start : start + count]]
                if len(hashes) != count:
                    return None
                cut[name] = start + count
                tables.append((name, hashes))
            note = segment.get("note")
            previous = segment_digest(previous, tables, None if note is None else str(note))
            out.append(previous)
        if any(cut.get(name, 0) != len(rows) for name, rows in tx.rows.items()):
            return None
        return out

    def _locate(self, tx_id: int, tx: _Transaction, tx_hash: bytes) -> None:
        """Name what differs from the row hashes the digest rows list (their prefixes)."""
        found = len(self.report.problems)
        listed: dict[str, list[str]] = {}
        for segment in tx.segments:
            for name, prefixes in dict(segment.get("rows") or {}).items():
                listed.setdefault(name, []).extend(listed_prefixes(prefixes))
        tx_listed = listed.pop(self.tx_name, None)
        if tx.segments and tx_listed != [row_prefix(tx_hash)]:
            self.problem(
                "altered",
                self.tx_name,
                tx_id,
                None,
                f"the transaction row of transaction {tx_id} (who, when, why) was changed",
            )
        for name in sorted(set(listed) | set(tx.rows)):
            row = "event row" if name == self.event_name else "history row"
            expected = listed.get(name, [])
            actual = tx.rows.get(name, [])
            for (version_id, value), prefix in zip(actual, expected, strict=False):
                if row_prefix(value) != prefix:
                    self.problem(
                        "altered",
                        name,
                        tx_id,
                        version_id,
                        f"{row} {version_id} of {name} (transaction {tx_id}) was changed",
                    )
            if len(actual) < len(expected):
                self.problem(
                    "missing",
                    name,
                    tx_id,
                    None,
                    f"{len(expected) - len(actual)} {row}(s) of {name} written by "
                    f"transaction {tx_id} were removed",
                )
            for version_id, _ in actual[len(expected) :]:
                self.problem(
                    "added",
                    name,
                    tx_id,
                    version_id,
                    f"{row} {version_id} of {name} was added to transaction {tx_id}",
                )
        if len(self.report.problems) == found and tx.segments:
            self.problem(
                "altered",
                self.digest_name,
                tx_id,
                None,
                f"the digest row of transaction {tx_id} does not match its rows (its note, or "
                f"the hashes it lists, were changed)",
            )

    # --- seals ------------------------------------------------------------------------------

    def _seal(self, document: Mapping[str, Any]) -> None:
        totals = self.totals
        seal_id = _int(document.get("id")) or 0
        previous = document.get("previous_hash")
        value = str(document.get("hash"))
        entries, self._entries = self._entries, []
        computed, self._computed = self._computed, {}
        links: list[tuple[int, int, str]] = []
        for entry in entries:
            key = (_int(entry.get("transaction_id")) or 0, _int(entry.get("segment")) or 0)
            digest = str(entry.get("digest"))
            links.append((key[0], key[1], digest))
            if key in self.expected and self.expected.pop(key) != (seal_id, digest):
                self.problem(
                    "altered",
                    self.entry_name,
                    key[0],
                    None,
                    f"the database's seal entry of transaction {key[0]} (kept by a prune) "
                    f"differs from the archive's: the database's was changed",
                )
            if entry.get("seal_id") != seal_id:
                self.problem(
                    "chain",
                    self.entry_name,
                    key[0],
                    None,
                    f"the seal entry of transaction {key[0]} is not with its seal {seal_id}",
                )
            if key not in computed:
                self.problem(
                    "missing",
                    self.tx_name,
                    key[0],
                    None,
                    f"transaction {key[0]}, sealed in seal {seal_id}, was removed (its "
                    f"transaction row, digest and history rows are not in the file)",
                )
                continue
            mine = computed.pop(key)
            if mine is not None and mine != digest:
                self.problem(
                    "altered",
                    self.entry_name,
                    key[0],
                    None,
                    f"the rows of transaction {key[0]} do not give the digest seal {seal_id} "
                    f"holds for it: they, or the seal entry, were changed",
                )
        for tx_id, _ in sorted(computed):
            self.problem(
                "added",
                self.tx_name,
                tx_id,
                None,
                f"transaction {tx_id} is in the file but no seal links it",
            )
        totals.entries += len(entries)
        totals.seals += 1
        count = _int(document.get("count"))
        try:
            recomputed = seal_hash(None if previous is None else str(previous), seal_id, links)
        except (ValueError, TypeError):
            recomputed = ""
        if recomputed != value or count != len(entries):
            self.problem(
                "chain",
                self.seal_name,
                None,
                None,
                f"seal {seal_id} does not match the entries it links (the seal or its entries "
                f"were changed or removed)",
            )
        if self._previous_seal is not None:
            before_id, before_hash = self._previous_seal
            if seal_id != before_id + 1:
                self.problem(
                    "chain",
                    self.seal_name,
                    None,
                    None,
                    f"seal(s) {before_id + 1}..{seal_id - 1} are missing before seal {seal_id}",
                )
            elif previous != before_hash:
                self.problem(
                    "chain",
                    self.seal_name,
                    None,
                    None,
                    f"seal {seal_id} does not link to seal {before_id}",
                )
        else:
            totals.first_seal_id = seal_id
            totals.previous_hash = None if previous is None else str(previous)
            totals.first_seal_hash = value
        self._previous_seal = (seal_id, value)
        totals.last_seal_id = seal_id
        totals.last_seal_hash = value
        last = _int(document.get("last_transaction_id"))
        totals.seals_seen[seal_id] = (
            None if previous is None else str(previous),
            value,
            count or 0,
            last or 0,
        )
        if links and last != max(t for t, _, _ in links):
            self.problem(
                "chain",
                self.seal_name,
                None,
                None,
                f"seal {seal_id} names a last transaction that is not the last it links",
            )

    def end(self) -> None:
        """Check the end of the data: nothing left outside a seal."""
        if self._tx is not None or self._entries:
            self._end_transaction()
            self.problem(
                "missing",
                self.seal_name,
                None,
                None,
                "the file ends with transactions or entries after the last seal: the seal "
                "that linked them was removed",
            )

    def finish(self, manifest: Mapping[str, Any] | None, data_sha256: str) -> None:
        """Check the end, and the manifest against the data."""
        self.end()
        if manifest is None:
            self.problem(
                "missing",
                None,
                None,
                None,
                "the file has no manifest (its last line): it was cut short",
            )
            return
        totals = self.totals
        expected: dict[str, Any] = {
            "transactions": totals.transactions,
            "versions": totals.versions,
            "events": totals.events,
            "digests": totals.digests,
            "entries": totals.entries,
            "seals": totals.seals,
            "first_transaction_id": totals.first_transaction_id,
            "last_transaction_id": totals.last_transaction_id,
            "first_seal_id": totals.first_seal_id,
            "last_seal_id": totals.last_seal_id,
            "previous_hash": totals.previous_hash,
            "first_seal_hash": totals.first_seal_hash,
            "last_seal_hash": totals.last_seal_hash,
            "latest_transaction_id": None if totals.latest is None else totals.latest[1],
            "latest_issued_at": None if totals.latest is None else totals.latest[0].isoformat(),
            "tables": totals.tables,
            "data_sha256": data_sha256,
        }
        for key, value in expected.items():
            if manifest.get(key) != value:
                self.problem(
                    "altered",
                    None,
                    None,
                    None,
                    f"the manifest says {key} = {manifest.get(key)!r}, the data gives {value!r}: "
                    f"the manifest or the data was changed",
                )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
