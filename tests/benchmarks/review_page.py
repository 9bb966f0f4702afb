"""Benchmark of the review page (docs/review-page.md) on PostgreSQL with a long history: how long
the activity page (the first page, and page 50 reached by keyset "next page" links) and a
record page take to render, through the ASGI app in process (Starlette's TestClient: routing,
authorisation, the queries and the templates; no network).

Run from the repository root (a database ``versioning_bench_review_<pid>`` is created for the
run and dropped after it)::

    python tests/benchmarks/review_page.py --versions 1000000

The history is written straight into the tables as the export benchmark writes it (one
``INSERT ... SELECT generate_series`` each: five versions per transaction). Printed: the median
and the slowest of ``--repeat`` renders of each page, in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from html import unescape
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from export import POSTGRESQL_URL, Base, fill  # the same history as the export benchmark

from versioning.integrations.review import review_app


def timed(client: TestClient, url: str, repeat: int) -> tuple[float, float, str]:
    times = []
    text = ""
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code, response.text[:500])
        text = response.text
    return statistics.median(times), max(times), text


def next_link(html: str) -> str:
    found = re.search(r'rel="next" class="next" href="([^"]+)"', html)
    assert found is not None, "no next page"
    return unescape(found.group(1))


def run(engine: sa.Engine, versions: int, repeat: int) -> None:
    start = time.perf_counter()
    fill(engine, versions)
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")
    print(f"<!-- filled {versions:,} versions in {time.perf_counter() - start:.0f} s -->")
    app = review_app(
        sessionmaker(engine), authorize=lambda request, action: True, metadata=Base.metadata
    )
    with TestClient(app) as client:
        client.get("/")  # the catalog is read once, by the first request
        rows = []
        median, worst, html = timed(client, "/", repeat)
        rows.append(("activity, page 1", median, worst))
        url = "/"
        for _ in range(49):
            url = next_link(client.get(url).text)
        median, worst, _ = timed(client, url, repeat)
        rows.append(("activity, page 50 (keyset)", median, worst))
        median, worst, _ = timed(client, "/?actor=user-7", repeat)
        rows.append(("activity filtered by actor, page 1", median, worst))
        record = versions // 10
        median, worst, html = timed(
            client, f"/record?table=bench_export_payments&key={record % (versions // 5)}", repeat
        )
        assert html.count('class="version"') == 5
        rows.append(("record page (5 versions)", median, worst))
    print("| page | median | slowest |")
    print("|---|---|---|")
    for name, median, worst in rows:
        print(f"| {name} | {median:.0f} ms | {worst:.0f} ms |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    database = f"versioning_bench_review_{os.getpid()}"
    print(f"<!-- load average before: {os.getloadavg()[0]:.1f} -->")
    admin = sa.create_engine(POSTGRESQL_URL + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {database}")
    engine = sa.create_engine(f"{POSTGRESQL_URL}/{database}")
    try:
        run(engine, args.versions, args.repeat)
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE {database}")
        admin.dispose()


if __name__ == "__main__":
    main()
