"""Side-by-side benchmark: plain SQLAlchemy, a hand-written lower bound, this library and its peers.

Run it from the repository root, with the ``benchmark`` extra installed::

    pip install -e '.[benchmark]'
    python tests/benchmarks/run.py --backends sqlite,postgresql,mariadb --repeat 3 \\
        --markdown /tmp/benchmark.md

Every (contender, group of workloads) runs in a fresh process of ``worker.py`` on the same database,
``--repeat`` times, in a rotating contender order (the peers, ten to thirty times slower, once
unless ``--peer-runs`` says more; the memory group once unless ``--memory-runs`` says more). The
tables show the median of every sample of every run, and in parentheses the ratio to plain
SQLAlchemy (reads: to the hand-written lower bound), taken run by run and then the median, so that
the machine's drift between runs cancels out. A contender that fails a workload gets
``error: ...`` in its cell; the run goes on. ``docs/performance.md`` explains every row.

PostgreSQL and MariaDB are reached at ``--postgresql-url`` / ``--mariadb-url`` (server URLs
without a database; defaults below, or ``VERSIONING_BENCH_POSTGRESQL_URL`` and
``VERSIONING_MARIADB_URL``); a database ``versioning_bench_<pid>`` is created for the run and
dropped after it. SQLite uses a file in a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WORKER = HERE / "worker.py"

BACKENDS = ("sqlite", "postgresql", "mariadb")
CONTENDERS = (
    "plain",
    "handwritten",
    "correctfloor",
    "versioning",
    "undigested",
    "dbcapture",
    "continuum",
    "history",
)
GROUPS = ("write", "session", "bulk", "reads", "memory", "integrity", "digests")
#: Contenders the reads group is run for (the peers have no ``as_of``).
READERS = ("handwritten", "versioning")
PEERS = ("continuum", "history")
#: The groups the library without its digests runs (what the digests cost on the write path).
UNDIGESTED_GROUPS = ("write", "session")
#: The groups the correct floor runs: it differs from the naive floor only where a flush updates
#: or deletes rows (its reads and bulk update are the naive floor's).
CORRECT_FLOOR_GROUPS = ("write", "session")
#: Database-side capture (a preview on PostgreSQL): the write workloads there.
DATABASE_CAPTURE_GROUPS = ("write", "session", "bulk")
DATABASE_CAPTURE_BACKENDS = ("postgresql", "mariadb", "sqlite")

POSTGRESQL_URL = os.environ.get(
    "VERSIONING_BENCH_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432"
)
MARIADB_URL = os.environ.get("VERSIONING_MARIADB_URL", "mariadb+pymysql://root@127.0.0.1:3306")

BACKEND_TITLES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mariadb": "MariaDB"}


def _dist(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


TITLES = {
    "plain": "plain SQLAlchemy",
    "handwritten": "hand-written lower bound (naive floor)",
    "correctfloor": "correct floor (+ locked read)",
    "versioning": "sqlalchemy-versioning",
    "undigested": "sqlalchemy-versioning, digests off",
    "dbcapture": "sqlalchemy-versioning, database capture",
    "continuum": f"SQLAlchemy-Continuum {_dist('sqlalchemy-continuum')}",
    "history": f"sqlalchemy-history {_dist('sqlalchemy-history')}",
}


@dataclass(frozen=True)
class Row:
    metric: str
    group: str
    label: str
    #: Contender the ratio in parentheses is taken to (None: no ratio, the value is one).
    base: str | None


TABLE_ROWS = (
    Row("inserts_s", "write", "inserts: 5,000 rows, commits of 500 (s)", "plain"),
    Row("updates_s", "write", "updates: 2 columns of 5,000 rows, commits of 500 (s)", "plain"),
    Row("updates_rr_s", "write", "└ the same under REPEATABLE READ (PostgreSQL) (s)", "plain"),
    Row("commit_small_ms", "session", "single-row commit, 200 objects in session (ms)", "plain"),
    Row("commit_big_ms", "session", "single-row commit, 20,000 objects in session (ms)", "plain"),
    Row("commit_ratio", "session", "└ 20,000 ÷ 200 objects", None),
    Row("bulk_update_s", "bulk", "bulk `update(Item).where(...)`, 5,000 rows (s)", "plain"),
    Row("as_of_2_ms", "reads", "`as_of`, 10^2 versions (ms)", "handwritten"),
    Row("as_of_4_ms", "reads", "`as_of`, 10^4 versions (ms)", "handwritten"),
    Row("as_of_5_ms", "reads", "`as_of`, 10^5 versions (ms)", "handwritten"),
    Row("as_of_ratio", "reads", "└ 10^5 ÷ 10^2 versions", None),
    Row("as_of_5_dt_ms", "reads", "`as_of`, 10^5 versions, `at` a datetime (ms)", "handwritten"),
    Row("history_ms", "reads", "`history()`, 200 versions (ms)", "handwritten"),
    Row("history_least_ms", "reads", "└ least of 50 calls (ms)", "handwritten"),
    Row("history_cpu_ms", "reads", "└ process CPU, least of 50 calls (ms)", "handwritten"),
    Row("insert_peak_mib", "memory", "inserts: peak memory, tracemalloc (MiB)", "plain"),
    Row("seal_100k_s", "integrity", "`seal()` of 100,000 transactions (s)", None),
    Row("verify_kversions_s", "integrity", "`verify()`: thousand versions per second", None),
    Row("verify_peak_mib", "integrity", "`verify()`: peak memory, tracemalloc (MiB)", None),
    Row("digest_inserts_ratio", "digests", "digests on ÷ off: inserts, commits of 500", None),
    Row("digest_updates_ratio", "digests", "digests on ÷ off: updates, commits of 500", None),
    Row("digest_commit_ratio", "digests", "digests on ÷ off: single-row commit", None),
    Row("digest_inserts_cpu_ratio", "digests", "digests on ÷ off, client CPU: inserts", None),
    Row("digest_updates_cpu_ratio", "digests", "digests on ÷ off, client CPU: updates", None),
    Row("digest_commit_cpu_ratio", "digests", "digests on ÷ off, client CPU: single-row", None),
    Row("digest_inserts_share", "digests", "digest code ÷ commit without digests: inserts", None),
    Row("digest_updates_share", "digests", "digest code ÷ commit without digests: updates", None),
    Row("digest_commit_share", "digests", "digest code ÷ commit without digests: single-row", None),
    Row("digest_inserts_code_ms", "digests", "digest code per commit: inserts (ms)", None),
    Row("digest_updates_code_ms", "digests", "digest code per commit: updates (ms)", None),
    Row("digest_commit_code_ms", "digests", "digest code per commit: single-row (ms)", None),
    Row("archive_kversions_s", "integrity", "`archive()`: thousand versions per second", None),
)


@dataclass
class Cell:
    #: run number -> samples of that run
    by_run: dict[int, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)

    @property
    def values(self) -> list[float]:
        return [value for samples in self.by_run.values() for value in samples]

    def median(self) -> float | None:
        """The median of every sample of every run."""
        values = self.values
        return statistics.median(values) if values else None

    def ratio_to(self, base: Cell) -> float | None:
        """The median over runs of (this cell's median ÷ the base's median in the same run).

        Pairing by run cancels the machine's drift from one run to the next.
        """
        ratios = [
            statistics.median(samples) / statistics.median(base.by_run[number])
            for number, samples in self.by_run.items()
            if samples and base.by_run.get(number) and statistics.median(base.by_run[number])
        ]
        return statistics.median(ratios) if ratios else None


@dataclass
class BackendRun:
    backend: str
    server: str = ""
    #: (contender, metric) -> cell
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    runs: int = 0
    peer_runs: int = 0
    seconds: float = 0.0
    unavailable: str | None = None

    def cell(self, contender: str, metric: str) -> Cell:
        return self.cells.setdefault((contender, metric), Cell())


# --------------------------------------------------------------------------------------------
# Databases


@contextlib.contextmanager
def database(backend: str, args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """A fresh database for the run: (URL for the workers, server version)."""
    name = f"versioning_bench_{os.getpid()}"
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="versioning-bench-") as directory:
            url = f"sqlite:///{Path(directory) / 'bench.sqlite'}"
            import sqlite3

            yield url, f"SQLite {sqlite3.sqlite_version}"
        return
    if backend == "postgresql":
        server = sa.create_engine(f"{args.postgresql_url}/postgres", isolation_level="AUTOCOMMIT")
        create = f'CREATE DATABASE "{name}"'
        drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
        url = f"{args.postgresql_url}/{name}"
        version_sql = "SHOW server_version"
        title = "PostgreSQL"
    else:
        server = sa.create_engine(args.mariadb_url, isolation_level="AUTOCOMMIT")
        create = f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
        drop = f"DROP DATABASE IF EXISTS `{name}`"
        url = f"{args.mariadb_url}/{name}?charset=utf8mb4"
        version_sql = "SELECT VERSION()"
        title = "MariaDB"
    try:
        with server.connect() as connection:
            version = str(connection.exec_driver_sql(version_sql).scalar())
            connection.exec_driver_sql(drop)
            connection.exec_driver_sql(create)
        yield url, f"{title} {version}"
    finally:
        with contextlib.suppress(Exception), server.connect() as connection:
            connection.exec_driver_sql(drop)
        server.dispose()


# --------------------------------------------------------------------------------------------
# Running the workers


def worker_environment() -> dict[str, str]:
    """The environment of a worker: this checkout first on ``PYTHONPATH``, so that the worker
    measures the ``versioning`` beside it, not another one installed (an editable install of
    another checkout, a worktree's main tree)."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def run_worker(url: str, contender: str, group: str, timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(WORKER), url, contender, group]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=worker_environment(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"errors": {"group": f"timeout after {timeout:.0f} s"}}
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return {"errors": {"group": f"worker crashed: {tail[0]}"}}
    if result.get("errors"):
        sys.stderr.write(done.stderr[-4000:])
    return result


def run_backend(backend: str, args: argparse.Namespace) -> BackendRun:
    out = BackendRun(backend)
    started = time.perf_counter()
    try:
        with database(backend, args) as (url, server):
            out.server = server
            for repeat in range(args.repeat):
                shift = repeat % len(args.contenders)
                order = args.contenders[shift:] + args.contenders[:shift]
                for group in args.groups:
                    if group == "memory" and repeat >= args.memory_runs:
                        continue
                    for contender in order:
                        if group == "reads" and contender not in READERS:
                            continue
                        if group in ("integrity", "digests") and contender != "versioning":
                            continue
                        if contender == "undigested" and group not in UNDIGESTED_GROUPS:
                            continue
                        if contender == "correctfloor" and group not in CORRECT_FLOOR_GROUPS:
                            continue
                        if contender == "dbcapture" and (
                            group not in DATABASE_CAPTURE_GROUPS
                            or backend not in DATABASE_CAPTURE_BACKENDS
                        ):
                            continue
                        if contender in PEERS and repeat >= args.peer_runs:
                            continue
                        t0 = time.perf_counter()
                        result = run_worker(url, contender, group, args.timeout)
                        record(out, repeat, contender, group, result)
                        print(
                            f"[{backend} run {repeat + 1}/{args.repeat}] {group:<7} "
                            f"{contender:<11} {time.perf_counter() - t0:6.1f} s"
                            + (f"  errors: {result['errors']}" if result.get("errors") else ""),
                            file=sys.stderr,
                            flush=True,
                        )
                out.runs += 1
                if any(contender in PEERS for contender in args.contenders):
                    out.peer_runs = min(out.runs, args.peer_runs)
    except sa.exc.OperationalError as error:
        out.unavailable = " ".join(str(error.orig).split())[:200]
        print(f"[{backend}] unavailable: {out.unavailable}", file=sys.stderr)
    out.seconds = time.perf_counter() - started
    return out


def record(
    out: BackendRun, repeat: int, contender: str, group: str, result: dict[str, Any]
) -> None:
    for metric, samples in result.get("metrics", {}).items():
        values = out.cell(contender, metric).by_run.setdefault(repeat, [])
        values.extend(float(value) for value in samples)
    for metric, note in result.get("notes", {}).items():
        out.cell(contender, metric).notes.add(note)
    errors = result.get("errors", {})
    for row in TABLE_ROWS:
        if row.group != group:
            continue
        message = errors.get(row.metric) or errors.get("group") or errors.get("setup")
        if message is None and row.base is None and errors:
            message = next(iter(errors.values()))  # a ratio of a failed measurement
        if message:
            out.cell(contender, row.metric).errors.append(message)


# --------------------------------------------------------------------------------------------
# Tables


def number(value: float) -> str:
    """Three significant digits (at least), trailing zeros kept."""
    if value >= 99.95:
        return f"{value:.0f}"
    return f"{value:#.3g}"


TIMES = "\u00d7"  # the multiplication sign


def ratio(value: float) -> str:
    return f"{value:.1f}{TIMES}" if value >= 10 else f"{value:.2f}{TIMES}"


def overhead(cell: Cell) -> str:
    """A paired on ÷ off ratio as a percentage: the median of every pair, and each run's."""
    value = cell.median()
    assert value is not None
    runs = [statistics.median(samples) for samples in cell.by_run.values() if samples]
    each = ", ".join(f"{(r - 1) * 100:+.1f}" for r in runs)
    return f"{(value - 1) * 100:+.1f} % (runs: {each})"


def share(cell: Cell) -> str:
    """A share of a commit's time as a percentage: the median of the runs, and each run's."""
    value = cell.median()
    assert value is not None
    runs = [statistics.median(samples) for samples in cell.by_run.values() if samples]
    each = ", ".join(f"{r * 100:.1f}" for r in runs)
    return f"{value * 100:.1f} % (runs: {each})"


def render_cell(run: BackendRun, contender: str, row: Row) -> str:
    cell = run.cells.get((contender, row.metric))
    if cell is None:
        return "n/a"
    if cell.errors:
        message = cell.errors[0].replace("|", "/")
        return f"error: {message[:70]}{'…' if len(message) > 70 else ''}"
    value = cell.median()
    if value is None:
        if "not measured" in cell.notes:
            return "n/a"
        return "—"
    if row.group == "digests" and row.metric.endswith("_ratio"):
        return overhead(cell)
    if row.group == "digests" and row.metric.endswith("_share"):
        return share(cell)
    if row.group == "digests":
        return number(value)
    text = ratio(value) if row.base is None else number(value)
    if row.base is not None and contender != row.base:
        base = run.cells.get((row.base, row.metric))
        paired = cell.ratio_to(base) if base is not None and not base.errors else None
        if paired is not None:
            text += f" ({ratio(paired)})"
    if "no history" in cell.notes:
        text += ", no history"
    return text


def versus_lower_bound(run: BackendRun, row: Row, floor_name: str = "handwritten") -> str:
    """This library over a floor (``handwritten``: naive; ``correctfloor``), paired by run."""
    if row.base is None:
        return ""
    ours = run.cells.get(("versioning", row.metric))
    floor = run.cells.get((floor_name, row.metric))
    if ours is None or floor is None or ours.errors or floor.errors:
        return ""
    paired = ours.ratio_to(floor)
    if paired is None:
        return ""
    return ratio(paired) + (" (floor records nothing)" if "no history" in floor.notes else "")


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def table(run: BackendRun, contenders: list[str]) -> str:
    title = BACKEND_TITLES[run.backend]
    if run.unavailable is not None:
        return f"### {title}\n\nnot run: {run.unavailable}\n"
    correct = "correctfloor" in contenders
    lines = [
        f"### {title} ({run.server}; {_runs(run.runs)}"
        + (f", peers {_runs(run.peer_runs)}" if run.peer_runs else "")
        + f"; {run.seconds:.0f} s)",
        "",
        "| workload | "
        + " | ".join(TITLES[c] for c in contenders)
        + " | sqlalchemy-versioning ÷ lower bound |"
        + (" sqlalchemy-versioning ÷ correct floor |" if correct else ""),
        "|---|" + "---:|" * len(contenders) + "---:|" * (2 if correct else 1),
    ]
    for row in TABLE_ROWS:
        if not any((c, row.metric) in run.cells for c in contenders):
            continue
        cells = [render_cell(run, c, row) for c in contenders]
        lines.append(
            f"| {row.label} | "
            + " | ".join(cells)
            + f" | {versus_lower_bound(run, row)} |"
            + (f" {versus_lower_bound(run, row, 'correctfloor')} |" if correct else "")
        )
    return "\n".join(lines) + "\n"


def machine() -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; RAM {ram}; {platform.platform()}",
        f"- Python {platform.python_version()}, SQLAlchemy {sa.__version__}, "
        f"psycopg {_dist('psycopg')}, PyMySQL {_dist('pymysql')}, "
        f"SQLAlchemy-Continuum {_dist('sqlalchemy-continuum')}, "
        f"sqlalchemy-history {_dist('sqlalchemy-history')}",
    ]


def report(runs: list[BackendRun], args: argparse.Namespace) -> str:
    servers = ", ".join(run.server for run in runs if run.server)
    parts = [
        *machine(),
        f"- Databases: {servers}",
        f"- Command: `{' '.join(['python tests/benchmarks/run.py', *args.argv])}`",
        "",
    ]
    for run in runs:
        parts.append(table(run, args.contenders))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------


def _names(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {unknown or value!r}; choose from {','.join(allowed)}"
        )
    return names


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        type=lambda v: _names(v, BACKENDS, "backend"),
        help="comma-separated (default: all three)",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        type=lambda v: _names(v, CONTENDERS, "contender"),
        help="comma-separated (default: all)",
    )
    parser.add_argument(
        "--groups",
        default=",".join(GROUPS),
        type=lambda v: _names(v, GROUPS, "group"),
        help="workload groups, comma-separated (default: all)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (default 3)")
    parser.add_argument(
        "--memory-runs",
        type=int,
        default=1,
        help="runs of the memory group (tracemalloc is slow and its peak barely varies; default 1)",
    )
    parser.add_argument(
        "--peer-runs",
        type=int,
        default=1,
        help="runs of SQLAlchemy-Continuum and sqlalchemy-history (10-30 times slower, they "
        "take most of the time; their run-to-run spread changes none of their ratios; default 1)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--json", type=Path, help="write every measured value to this file")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per worker process")
    parser.add_argument("--postgresql-url", default=POSTGRESQL_URL)
    parser.add_argument("--mariadb-url", default=MARIADB_URL)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    runs = [run_backend(backend, args) for backend in args.backends]
    text = report(runs, args)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text, encoding="utf-8")
    if args.json is not None:
        raw = {
            run.backend: {
                "server": run.server,
                "unavailable": run.unavailable,
                "cells": {
                    f"{contender}/{metric}": {
                        "values_by_run": cell.by_run,
                        "median": cell.median(),
                        "errors": cell.errors,
                        "notes": sorted(cell.notes),
                    }
                    for (contender, metric), cell in run.cells.items()
                },
            }
            for run in runs
        }
        args.json.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
