"""The review page in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium,
never a downloaded one) against the app served on 127.0.0.1 — the ASGI app by uvicorn, the Flask
blueprint by werkzeug — with data on each backend.

One browser for the module, one pair of servers per backend. Without Chromium the module is
skipped with one line, unless ``CI=true`` (then it fails: ``.ci/run`` installs it).

``REVIEW_SCREENSHOTS=1`` also writes docs/images/review-*.png (390 and 1280 px wide) from the
PostgreSQL run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from review_models import XSS_ATTRIBUTE, XSS_SCRIPT, Order, ReviewBase, Story, tell
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.routing import Mount

import versioning
from versioning.integrations.flask import review_blueprint
from versioning.integrations.review import review_app

CHROMIUM = Path("/usr/bin/chromium")
REQUIRED = os.environ.get("CI", "").lower() == "true"
IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
SECRET = "browser-test-secret-0123456789abcdef"
AUTH = {"Authorization": "Bearer good"}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not REQUIRED,
    reason="no /usr/bin/chromium: apt-get install chromium (required under CI=true)",
)

sync_api = pytest.importorskip("playwright.sync_api")


def authorize(request: Any, action: str) -> bool:
    return bool(request.headers.get("Authorization") == "Bearer good")


def reviewer(request: Any) -> str:
    return "reviewer-ann"


OPTIONS: dict[str, Any] = {
    "authorize": authorize,
    "allow_restore": True,
    "secret": SECRET,
    "actor": reviewer,
    "title": "Shop history",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("CI=true requires /usr/bin/chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Served:
    urls: dict[str, str]
    story: Story
    engine: sa.Engine


@pytest.fixture(scope="module")
def served(engine: sa.Engine, backend: str) -> Iterator[Served]:
    """The story on ``backend``, the ASGI app (uvicorn) and the Flask blueprint (werkzeug)
    serving it at /audit on 127.0.0.1."""
    import uvicorn
    from conftest import _drop_kept
    from werkzeug.serving import make_server

    _drop_kept(engine)  # tables another module kept: ours are made here, for the module
    ReviewBase.metadata.drop_all(engine)
    ReviewBase.metadata.create_all(engine)
    story = tell(engine, pause=1.1)
    maker = sessionmaker(engine)

    asgi = Starlette(routes=[Mount("/audit", review_app(maker, **OPTIONS))])
    server = uvicorn.Server(
        uvicorn.Config(asgi, log_level="warning", lifespan="off", ws="none", http="h11")
    )
    sock = _free_socket()
    asgi_thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    asgi_thread.start()

    flask_app = Flask(__name__)
    flask_app.register_blueprint(review_blueprint(maker, **OPTIONS), url_prefix="/audit")
    wsgi = make_server("127.0.0.1", 0, flask_app, threaded=True)
    wsgi_thread = threading.Thread(target=wsgi.serve_forever, daemon=True)
    wsgi_thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    urls = {
        "asgi": f"http://127.0.0.1:{sock.getsockname()[1]}/audit",
        "flask": f"http://127.0.0.1:{wsgi.server_port}/audit",
    }
    try:
        yield Served(urls, story, engine)
    finally:
        server.should_exit = True
        wsgi.shutdown()
        asgi_thread.join(10)
        wsgi_thread.join(10)
        sock.close()
        ReviewBase.metadata.drop_all(engine)


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    made = browser.new_context(extra_http_headers=AUTH)
    yield made
    made.close()


KINDS = pytest.mark.parametrize("kind", ["asgi", "flask"])


def follow(page: Any, target: Any) -> None:
    """Click a link or a form's button and wait for the page it leads to."""
    with page.expect_navigation():
        target.click()


@KINDS
def test_filter_by_actor_through_the_form(served: Served, context: Any, kind: str) -> None:
    page = context.new_page()
    page.goto(served.urls[kind] + "/")
    page.get_by_label("Actor").fill("bob")
    follow(page, page.get_by_role("button", name="Filter"))
    page.wait_for_load_state()
    assert "actor=bob" in page.url
    links = page.locator("a.tx-id")
    assert links.count() == 1
    assert links.inner_text() == f"Transaction {served.story.shipped}"
    assert page.locator(".reason").inner_text() == "picked up"
    assert page.get_by_label("Actor").input_value() == "bob"  # kept in the URL and the form


@KINDS
def test_open_a_transaction_follow_a_record_read_its_diffs(
    served: Served, context: Any, kind: str
) -> None:
    page = context.new_page()
    page.goto(served.urls[kind] + "/")
    follow(page, page.get_by_role("link", name=f"Transaction {served.story.shipped}", exact=True))
    assert page.locator("h1").inner_text() == f"Transaction {served.story.shipped}"
    assert "req-ship-1" in page.locator(".tx-head").inner_text()
    follow(page, page.get_by_role("link", name="review_orders 1", exact=True))
    assert page.locator("h1").inner_text() == "review_orders 1"
    versions = page.locator("ol.timeline > li")
    assert versions.count() >= 3
    shipped = versions.nth(1).locator("table.changes tbody tr")
    assert shipped.locator("th").inner_text() == "status"
    assert shipped.locator("td.old").inner_text() == "new"
    assert shipped.locator("td.new").inner_text() == "shipped"
    assert versions.nth(1).locator(".actor").inner_text() == "bob"


@KINDS
def test_pick_an_as_it_was_at_moment(served: Served, context: Any, kind: str) -> None:
    page = context.new_page()
    page.goto(served.urls[kind] + "/record?table=review_orders&key=1")
    moment = served.story.before_shipping.strftime("%Y-%m-%dT%H:%M:%S")
    page.get_by_label("As it was at (UTC)").fill(moment)
    follow(page, page.get_by_role("button", name="Show"))
    then = page.locator("section.then")
    assert "As it was at" in then.locator("h2").inner_text()
    status = then.locator("table.state tr", has_text="status").locator("td")
    assert status.inner_text() == "new"
    follow(page, then.get_by_role("link", name="Customer 1"))  # related, as of the same moment
    assert page.locator("h1").inner_text() == "review_customers 1"
    email = page.locator("section.then table.state tr", has_text="email").locator("td")
    assert email.inner_text() == "[REDACTED]"  # masked values stay masked


@KINDS
def test_download_an_export_and_parse_it(served: Served, context: Any, kind: str) -> None:
    page = context.new_page()
    page.goto(served.urls[kind] + "/?actor=bob")
    with page.expect_download() as csv_download:
        page.get_by_role("link", name="CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(csv_download.value.path()).read_text("utf-8"))))
    assert {(row["actor"], row["record"], row["new"]) for row in rows} == {
        ("bob", "1", "shipped"),
        ("bob", "3", "paid"),
    }
    with page.expect_download() as jsonl_download:
        page.get_by_role("link", name="JSON Lines").click()
    lines = Path(jsonl_download.value.path()).read_text("utf-8").splitlines()
    documents = [json.loads(line) for line in lines]
    assert {d["transaction"]["actor"] for d in documents} == {"bob"}
    assert jsonl_download.value.suggested_filename == "history.jsonl"


@KINDS
def test_403_without_authorisation(served: Served, browser: Any, kind: str) -> None:
    stranger = browser.new_context()
    try:
        page = stranger.new_page()
        response = page.goto(served.urls[kind] + "/")
        assert response is not None and response.status == 403
        assert page.locator("h1").inner_text() == "Not allowed"
        assert "bob" not in page.content()
        response = page.goto(served.urls[kind] + "/export?format=csv")
        assert response is not None and response.status == 403
    finally:
        stranger.close()


@KINDS
def test_a_stored_xss_payload_fires_nothing(served: Served, browser: Any, kind: str) -> None:
    # With the CSP bypassed, escaping alone must keep the payloads inert.
    unsafe = browser.new_context(extra_http_headers=AUTH, bypass_csp=True)
    try:
        page = unsafe.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        for path in ["/", f"/transaction/{served.story.xss}", "/record?table=review_orders&key=2"]:
            response = page.goto(served.urls[kind] + path)
            assert response is not None
            csp = response.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src" not in csp
            for cell in page.get_by_text(XSS_ATTRIBUTE).all() + page.get_by_text(XSS_SCRIPT).all():
                cell.hover()
            assert page.evaluate("window.__x") is None
            assert page.locator("script").count() == 0
            assert page.locator("[onmouseover]").count() == 0
        page.goto(served.urls[kind] + "/")
        assert page.get_by_text(XSS_SCRIPT, exact=True).first.is_visible()  # shown as text
        assert page.get_by_text(f"mallory{XSS_ATTRIBUTE}", exact=True).is_visible()
        assert not errors
    finally:
        unsafe.close()


@KINDS
def test_the_page_works_with_javascript_disabled(served: Served, browser: Any, kind: str) -> None:
    plain = browser.new_context(extra_http_headers=AUTH, java_script_enabled=False)
    try:
        page = plain.new_page()
        page.goto(served.urls[kind] + "/")
        page.get_by_label("Table").select_option("review_orders")
        page.get_by_label("Operation").select_option("update")
        follow(page, page.get_by_role("button", name="Filter"))
        assert "operation=update" in page.url and "table=review_orders" in page.url
        assert page.locator(".op-update").count() == page.locator(".item").count() >= 3
        follow(page, page.get_by_role("link", name="review_orders 1", exact=True).first)
        assert page.locator("ol.timeline > li").count() >= 3
        follow(page, page.get_by_role("link", name="Integrity"))
        follow(page, page.get_by_role("button", name="Verify now"))
        assert "Verified: nothing was changed." in page.locator(".result").inner_text()
        # A range, through the form: the transactions from bob's on.
        page.get_by_label("From").fill(str(served.story.shipped))
        follow(page, page.get_by_role("button", name="Verify now"))
        result = page.locator(".result").inner_text()
        assert f"Transactions {served.story.shipped} to " in result
        assert "Verified: nothing was changed." in result
        assert page.get_by_label("From").input_value() == str(served.story.shipped)
    finally:
        plain.close()


def _shoot(page: Any, name: str, width: int) -> None:
    if os.environ.get("REVIEW_SCREENSHOTS") and page.url.startswith("http"):
        IMAGES.mkdir(exist_ok=True)
        page.screenshot(path=str(IMAGES / f"review-{name}-{width}.png"), full_page=True)


@pytest.mark.parametrize("width", [390, 1280])
def test_readable_at_phone_width(served: Served, browser: Any, backend: str, width: int) -> None:
    wide = browser.new_context(
        extra_http_headers=AUTH, viewport={"width": width, "height": 900}, device_scale_factor=1
    )
    shots = backend == "postgresql"
    try:
        page = wide.new_page()
        moment = served.story.before_shipping.strftime("%Y-%m-%dT%H:%M:%S")
        pages = {
            "activity": "/",
            "transaction": f"/transaction/{served.story.shipped}",
            "record": f"/record?table=review_orders&key=1&at={moment}",
            "integrity": "/integrity?verify=1",
        }
        for name, path in pages.items():
            page.goto(served.urls["asgi"] + path)
            # Nothing wider than the screen: no sideways scrolling.
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            if shots:
                _shoot(page, name, width)
    finally:
        wide.close()


@KINDS
def test_restore_flow_with_and_without_a_valid_csrf_token(
    served: Served, context: Any, kind: str
) -> None:
    page = context.new_page()
    page.goto(served.urls[kind] + "/record?table=review_orders&key=3")
    versions = page.locator("ol.timeline > li")
    count = versions.count()
    target = versions.nth(count - 2)  # the version before the current one
    wanted = target.locator("tr", has_text="status").locator("td.new").inner_text()

    # A forged token: refused, nothing written.
    target.get_by_label("Reason").fill("forged")
    target.locator("input[name=csrf]").evaluate("input => { input.value = 'f'.repeat(64) }")
    follow(page, target.get_by_role("button", name="Restore this version"))
    assert page.locator("h1").inner_text() == "The form has expired"
    with Session(served.engine) as session:
        assert len(versioning.history(session, Order, 3)) == count

    page.goto(served.urls[kind] + "/record?table=review_orders&key=3")
    target = page.locator("ol.timeline > li").nth(count - 2)
    target.get_by_label("Reason").fill(f"undo from {kind}")
    follow(page, target.get_by_role("button", name="Restore this version"))
    assert page.url.endswith("/record?table=review_orders&key=3")
    versions = page.locator("ol.timeline > li")
    assert versions.count() == count + 1
    last = versions.nth(count)
    assert last.locator(".actor").inner_text() == "reviewer-ann"
    assert f"undo from {kind}" in last.locator(".reason").inner_text()
    assert last.locator("tr", has_text="status").locator("td.new").inner_text() == wanted
