"""Benchmark of the digests' Python work alone: hashing history rows, no database.

Run from the repository root::

    python tests/benchmarks/row_hash.py

Prints microseconds per row of ``versioning.canonical.row_hashes`` for a batch of 500 history
rows of the benchmark's model (``worker.py``'s ``Item``) as an insert and as an update writes
them (the update's rows carry a ``changes`` document of two columns), and of ``row_bytes`` one
row at a time for comparison. Each figure is the least of many interleaved runs: another
process taking the CPU only ever adds time, so the least is what the code costs on a quiet
machine (the workloads' own figures come from ``run.py``).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import sqlalchemy as sa
import worker

from versioning import Operation
from versioning.canonical import row_bytes, row_hashes

BATCH = 500
ROUNDS = 200


def rows(update: bool) -> list[dict[str, Any]]:
    out = []
    for i in range(1, BATCH + 1):
        values = worker.values(i)
        changes = None
        if update:
            name = values["name"]
            changes = {"name": [name, f"{name} updated"], "quantity": [i % 1000, i % 1000 + 1]}
        out.append(
            {
                "versioning_id": None,
                "versioning_transaction_id": 7,
                "versioning_operation": Operation.UPDATE if update else Operation.INSERT,
                "id": i,
                **values,
                "versioning_changes": changes,
            }
        )
    return out


def main() -> int:
    library = worker.Library()
    sa.orm.configure_mappers()
    history = library.history_table
    batches = {"insert": rows(False), "update": rows(True)}

    def batch(kind: str) -> Callable[[], object]:
        return lambda: row_hashes(history, batches[kind])

    def one_by_one(kind: str) -> Callable[[], object]:
        return lambda: [hashlib.sha256(row_bytes(history, row)).digest() for row in batches[kind]]

    cases = {
        f"{kind} rows, {how}": make(kind)
        for kind in batches
        for how, make in (("row_hashes (a batch)", batch), ("row_bytes one by one", one_by_one))
    }
    least = dict.fromkeys(cases, float("inf"))
    for _ in range(ROUNDS):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            least[name] = min(least[name], time.perf_counter() - start)
    for name, seconds in least.items():
        print(f"{name:<40} {seconds / BATCH * 1e6:6.2f} µs per row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
