"""The review page without a browser: building the app, the query's checks, each page's content
and headers, keyset pages, exports, authorisation and restore — on the Starlette app (Starlette's
TestClient) and the Flask blueprint (Flask's test client), on every backend.

The same pages in a real browser: tests/test_review_page.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from html import unescape
from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio
import pytest
import sqlalchemy as sa
from flask import Flask
from review_models import XSS_ATTRIBUTE, XSS_SCRIPT, Customer, Order, ReviewBase, Story, tell
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount
from starlette.testclient import TestClient

import versioning
from versioning.errors import ConfigurationError
from versioning.integrations.flask import review_blueprint
from versioning.integrations.review import csrf, review_app
from versioning.integrations.review.query import (
    MAX_PAGE_SIZE,
    BadParameter,
    Cursor,
    parse_filters,
)

from helpers import tamper

Tables = Callable[[sa.MetaData], sa.Engine]
SECRET = "a-test-secret-of-32-characters!!"


def allow(request: Any, action: str) -> bool:
    return True


def reviewer(request: Any) -> str:
    return "reviewer-ann"


def client(engine: sa.Engine, **options: Any) -> TestClient:
    """The review app mounted at /audit in a Starlette app, as a test client."""
    options.setdefault("authorize", allow)
    app = Starlette(routes=[Mount("/audit", review_app(sessionmaker(engine), **options))])
    return TestClient(app)


@pytest.fixture
def story(create_tables: Tables) -> Story:
    engine = create_tables(ReviewBase.metadata)
    return tell(engine)


# --- building the app -------------------------------------------------------------------------


def test_the_app_is_not_built_without_authorize() -> None:
    maker = sessionmaker()
    with pytest.raises(ConfigurationError, match=r"authorize=.*'view', 'export' or 'restore'"):
        review_app(maker)
    with pytest.raises(ConfigurationError, match="authorize="):
        review_blueprint(maker)
    with pytest.raises(TypeError, match="secret="):
        review_app(maker, authorize=allow, allow_restore=True, actor=reviewer)
    with pytest.raises(TypeError, match="at least 16 bytes"):
        review_app(maker, authorize=allow, allow_restore=True, actor=reviewer, secret="short")
    with pytest.raises(ConfigurationError, match="actor="):
        review_blueprint(maker, authorize=allow, allow_restore=True, secret=SECRET)

    async def asynchronous(request: Any, action: str) -> bool:
        return True

    with pytest.raises(ConfigurationError, match="plain function in Flask"):
        review_blueprint(maker, authorize=asynchronous)
    with pytest.raises(TypeError, match="page_size"):
        review_app(maker, authorize=allow, page_size=10_000)


# --- the query's checks -----------------------------------------------------------------------


def test_filters_are_parsed_and_kept_in_the_url() -> None:
    filters = parse_filters(
        {
            "actor": " bob ",
            "table": "orders",
            "key": "7",
            "operation": "update",
            "since": "2026-03-03",
            "until": "2026-03-03",
            "source_ip": "203.0.113.7",
            "size": "20",
            "after": "v.12.3.orders_history",
        }
    )
    assert filters.actor == "bob"
    assert filters.operation is versioning.Operation.UPDATE
    assert filters.since is not None and filters.since.isoformat() == "2026-03-03T00:00:00+00:00"
    assert filters.until is not None and filters.until.isoformat() == "2026-03-04T00:00:00+00:00"
    assert filters.size == 20
    assert filters.after == Cursor(12, "orders_history", version_id=3)
    again = parse_filters(dict(parse_qsl(filters.query())))
    assert again.actor == "bob" and again.key == "7"
    assert parse_filters({}, page_size=30).size == 30
    assert parse_filters({"after": "e.9.4"}).after == Cursor(9, event_id=4)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"since": "2026-03-04", "until": "2026-03-02"}, "until"),
        ({"operation": "drop"}, "operation"),
        ({"source_ip": "300.1.1.1"}, "source_ip"),
        ({"size": "0"}, "size"),
        ({"size": str(MAX_PAGE_SIZE + 1)}, "size"),
        ({"size": "ten"}, "size"),
        ({"key": "7"}, "key"),
        ({"table": "orders", "outcome": "denied"}, "outcome"),
        ({"after": "v.1.2"}, "after"),
        ({"after": "x" * 30}, "after"),
        ({"actor": "a" * 300}, "actor"),
        ({"actor": "bob\x00"}, "actor"),
    ],
)
def test_a_bad_parameter_names_its_field(params: dict[str, str], field: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_filters(params)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}=")


# --- pages ------------------------------------------------------------------------------------


def _text(html: str) -> str:
    """The page's text, roughly: tags out, entities decoded."""
    return unescape(re.sub(r"<[^>]+>", " ", html))


def test_every_response_has_the_security_headers(story: Story, engine: sa.Engine) -> None:
    with client(engine) as http:
        for url in ["/audit/", "/audit/?since=bad", "/audit/static/review.css", "/audit/export"]:
            response = http.get(url)
            csp = response.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src" not in csp
            assert "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "same-origin"


def test_activity_groups_by_transaction_and_filters(story: Story, engine: sa.Engine) -> None:
    with client(engine) as http:
        page = http.get("/audit/")
        assert page.status_code == 200
        html = page.text
        # Newest first: the denied login (an event), mallory's, bob's, alice's transaction.
        ids = [int(n) for n in re.findall(r'class="tx-id" href="/audit/transaction/(\d+)"', html)]
        assert ids == sorted(ids, reverse=True) and len(ids) == 4
        assert story.xss in ids and story.shipped in ids and story.created in ids
        assert "denied" in _text(html)
        # Stored payloads are text: nothing of them is markup.
        assert "<script>window" not in html and 'onmouseover="window' not in html
        assert XSS_SCRIPT in _text(html) and XSS_ATTRIBUTE in _text(html)
        # The masked column shows its mask's output only.
        assert "ada@example.com" not in html and "[REDACTED]" in html

        bob = http.get("/audit/?" + urlencode({"actor": "bob"})).text
        assert re.findall(r"/audit/transaction/(\d+)", bob) == [str(story.shipped)]
        assert "new" in _text(bob) and "shipped" in _text(bob)
        assert 'value="bob"' in bob  # the form shows the filter back

        updates = http.get("/audit/?operation=update&table=review_orders&key=3").text
        assert re.findall(r"/audit/transaction/(\d+)", updates) == [str(story.shipped)]
        denied = http.get("/audit/?outcome=denied").text
        assert "login" in _text(denied) and "review_orders" not in _text(denied).split("Export")[1]
        assert http.get("/audit/?source_ip=198.51.100.9").text.count('class="item event"') == 1
        assert "Nothing matches" in http.get("/audit/?request_id=nope").text


def test_keyset_pages_show_every_item_once(story: Story, engine: sa.Engine) -> None:
    with client(engine) as http:
        url: str | None = "/audit/?size=1"
        seen: list[str] = []
        while url is not None:
            html = http.get(url).text
            items = re.findall(
                r'<a class="record" href="[^"]*">([^<]*)</a>|class="action">(\w+)', html
            )
            seen.extend(unescape(a or b) for a, b in items)
            found = re.search(r'rel="next" class="next" href="([^"]+)"', html)
            url = unescape(found.group(1)) if found else None
        # 3 inserts + 2 updates by alice and bob, an insert and an update by mallory, 1 event.
        assert len(seen) == 8
        assert seen[0] == "login"
        assert seen.count("review_orders 1") == 3 and seen.count("review_orders 3") == 2
        whole = http.get("/audit/?size=200").text
        assert whole.count('class="item ') == 8 and 'rel="next"' not in whole


@pytest.mark.parametrize("newest_first", [True, False])
def test_activity_pages_by_a_plain_keyset(
    story: Story, engine: sa.Engine, newest_first: bool
) -> None:
    """``versioning.activity.activity(after=...)`` takes the last item of a page or its keyset
    (what the page keeps in its "next" link): the pages cover every item once, in order."""
    from versioning.activity import activity
    from versioning.catalog import from_metadata
    from versioning.searching import Entry

    catalog = from_metadata(ReviewBase.metadata)

    def keyset(item: Entry | versioning.Event) -> tuple[int, str, int] | tuple[int, int]:
        if isinstance(item, Entry):
            return (item.transaction_id, item.history, item.version_id)
        return (item.transaction_id, item.id)

    with engine.connect() as connection:
        whole = list(activity(connection, catalog, newest_first=newest_first))
        assert len(whole) == 8 and any(isinstance(i, versioning.Event) for i in whole)
        for size in (1, 3):
            seen: list[Entry | versioning.Event] = []
            after: Any = None
            while True:
                page = list(
                    activity(
                        connection,
                        catalog,
                        newest_first=newest_first,
                        limit=size,
                        chunk=size,
                        after=after,
                    )
                )
                seen.extend(page)
                if len(page) < size:
                    break
                after = keyset(page[-1]) if size == 1 else page[-1]  # a keyset or the item
            assert seen == whole
        bob = list(activity(connection, catalog, actor="bob", after=keyset(whole[0])))
        assert all(item.transaction.actor == "bob" for item in bob)
        with pytest.raises(versioning.ArgumentError, match=r"after must be .*keyset"):
            list(activity(connection, catalog, after=(1, 2, 3, 4)))  # type: ignore[arg-type]
        with pytest.raises(versioning.ArgumentError, match=r"after must be .*keyset"):
            list(activity(connection, catalog, after=("1", "orders", 2)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=bad", "since"),
        ("table=nope", "table"),
        ("size=500", "size"),
        ("table=review_orders&key=abc", "key"),
        ("after=v.x.1.t", "after"),
    ],
)
def test_a_bad_filter_is_a_400_page_naming_it(
    story: Story, engine: sa.Engine, query: str, field: str
) -> None:
    with client(engine) as http:
        response = http.get(f"/audit/?{query}")
        assert response.status_code == 400
        assert f"The field {field} cannot be used" in response.text
        if field == "table":
            assert "review_customers, review_orders" in response.text


def test_transaction_page(story: Story, engine: sa.Engine) -> None:
    with client(engine) as http:
        html = http.get(f"/audit/transaction/{story.shipped}").text
        text = _text(html)
        assert "bob" in text and "req-ship-1" in text and "picked up" in text
        assert html.count('class="item version"') == 2
        assert http.get("/audit/transaction/999999").status_code == 404
        assert http.get("/audit/transaction/abc").status_code == 400


def test_record_timeline_and_as_it_was(create_tables: Tables, engine: sa.Engine) -> None:
    story = tell(create_tables(ReviewBase.metadata), pause=1.1)
    with client(engine) as http:
        html = http.get("/audit/record?table=review_orders&key=1").text
        timeline = html.split("Timeline")[1]
        assert timeline.count('class="version"') == 3
        assert re.search(
            r'class="old">new</td>\s*<td class="arrow">→</td>\s*<td class="new">shipped', html
        )
        at = story.before_shipping.strftime("%Y-%m-%dT%H:%M:%S")
        then = http.get(f"/audit/record?table=review_orders&key=1&at={at}").text
        section = then.split('class="then"')[1].split("Timeline")[0]
        assert "<td>new</td>" in section
        # The related customer as of the same moment, linked to its own record page.
        assert "Customer 1" in section and "table=review_customers&amp;key=1" in section
        before = http.get("/audit/record?table=review_orders&key=1&at=2000-01-01").text
        assert "did not exist" in before
        customer = http.get(f"/audit/record?table=review_customers&key=1&at={at}").text
        assert "ada@example.com" not in customer and "[REDACTED]" in customer
        assert "review_orders 1" not in customer.split("Timeline")[0] or "Order 1" in customer
        assert http.get("/audit/record?table=review_orders&key=42").status_code == 404
        assert http.get("/audit/record?table=review_orders").status_code == 400
        assert http.get("/audit/record?table=review_orders&key=1&at=soon").status_code == 400


def test_exports_of_the_current_filter(story: Story, engine: sa.Engine) -> None:
    with client(engine) as http:
        response = http.get("/audit/export?actor=bob&format=csv")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert {row["actor"] for row in rows} == {"bob"}
        assert {(row["record"], row["old"], row["new"]) for row in rows} == {
            ("1", "new", "shipped"),
            ("3", "draft", "paid"),
        }
        lines = http.get("/audit/export?format=jsonl").text.splitlines()
        documents = [json.loads(line) for line in lines]
        assert len(documents) == 8 and documents[-1]["kind"] == "event"
        assert "ada@example.com" not in "".join(lines)
        assert http.get("/audit/export?format=xml").status_code == 400
        assert http.get("/audit/export?since=never").status_code == 400


def test_a_client_gone_mid_export_releases_its_session_at_once(
    story: Story, engine: sa.Engine
) -> None:
    """The client disconnects after the first chunk of a long export: the stream stops and its
    session is closed before the app returns (not when the garbage collector runs)."""
    with Session(engine) as session:
        session.add_all(Order(id=100 + n, customer_id=1, status="x" * 190) for n in range(1500))
        session.commit()
    closed: list[Session] = []

    class Tracked(Session):
        def close(self) -> None:
            closed.append(self)
            super().close()

    app = review_app(sessionmaker(engine, class_=Tracked), authorize=allow)
    bodies: list[bytes] = []

    async def scenario() -> None:
        first = anyio.Event()

        async def receive() -> dict[str, Any]:
            await first.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                bodies.append(message["body"])
                first.set()
                await anyio.sleep(0.2)  # a slow client: the disconnect arrives meanwhile

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/export",
            "raw_path": b"/export",
            "root_path": "",
            "query_string": b"format=jsonl",
            "headers": [],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80),
        }
        await app(scope, receive, send)  # type: ignore[arg-type]
        assert closed  # released before the app returned

    anyio.run(scenario)
    assert 1 <= len(bodies) < 5  # the export (over 300 kB in 64 kB chunks) was cut short

    # Flask: the WSGI server closes the response when the client goes; so does this one.
    flask = Flask(__name__)
    blueprint = review_blueprint(sessionmaker(engine, class_=Tracked), authorize=allow)
    flask.register_blueprint(blueprint, url_prefix="/audit")
    closed.clear()
    response = flask.test_client().get("/audit/export?format=jsonl", buffered=False)
    assert next(iter(response.response))  # the first chunk, then the client is gone
    assert not closed
    response.close()
    assert closed
    with client(engine) as http:  # the whole export, for comparison
        assert len(http.get("/audit/export?format=jsonl").content) > 300_000


def test_integrity_page(story: Story, engine: sa.Engine) -> None:
    with client(engine) as http:
        unsealed = http.get("/audit/integrity").text
        assert "Nothing has been sealed yet" in unsealed
        assert re.search(r"not sealed yet: <strong>4</strong>", unsealed)  # 3 and the event
        assert http.get("/audit/integrity/digest.json").status_code == 404
        with Session(engine) as session:
            sealed = versioning.seal(session)
            session.commit()
        assert sealed is not None
        html = http.get("/audit/integrity").text
        assert sealed.hash in html
        assert re.search(r"not sealed yet: <strong>0</strong>", html)
        assert f"counted from transaction {story.created}," in html
        with Session(engine) as session:
            session.get_one(Order, 2).status = "later"
            session.commit()
        html = http.get("/audit/integrity").text
        assert re.search(r"not sealed yet: <strong>1</strong>", html)
        download = http.get("/audit/integrity/digest.json")
        assert versioning.Digest.from_json(download.text).hash == sealed.hash
        assert "Verified: nothing was changed." in http.get("/audit/integrity?verify=1").text


def test_integrity_page_verifies_a_range(story: Story, engine: sa.Engine) -> None:
    with Session(engine) as session:
        versioning.seal(session)
        session.commit()
    history = versioning.history_table(Order)
    with engine.begin() as connection, tamper(connection):
        connection.execute(
            history.update()
            .where(history.c.versioning_transaction_id == story.created)
            .values(status="forged")
        )
    with client(engine) as http:
        page = http.get("/audit/integrity")
        assert 'name="since"' in page.text and 'name="until"' in page.text
        later = _text(http.get(f"/audit/integrity?verify=1&since={story.shipped}").text)
        assert f"Transactions {story.shipped} to " in later
        assert "Verified: nothing was changed." in later
        assert "4 versions" in later  # bob's two, mallory's two: alice's are not read
        first = http.get(f"/audit/integrity?verify=1&until={story.shipped}")
        text = _text(first.text)
        assert f"Transactions {story.created} to {story.created}" in text
        assert "2 problem(s) found." in text and "was changed after it was written" in text
        assert f'value="{story.shipped}"' in first.text  # the form shows the range back
        by_date = _text(
            http.get("/audit/integrity?verify=1&since=2000-01-01&until=2000-01-02").text
        )
        assert "No transaction in this range." in by_date
        wrong = http.get("/audit/integrity?verify=1&since=soon")
        assert wrong.status_code == 400 and "The field since cannot be used" in wrong.text
        everything = _text(http.get("/audit/integrity?verify=1").text)
        assert (
            "2 problem(s) found." in everything and " and the seals linking them" not in everything
        )


def test_refusals_are_403_pages(story: Story, engine: sa.Engine) -> None:
    asked: list[str] = []

    async def only_view(request: Request, action: str) -> bool:  # async is awaited
        asked.append(action)
        return action == "view"

    with client(engine, authorize=only_view) as http:
        assert http.get("/audit/").status_code == 200
        refused = http.get("/audit/export?format=csv")
        assert refused.status_code == 403 and "not allowed to export" in refused.text
        assert asked == ["view", "export"]
    with client(engine, authorize=lambda request, action: "yes") as http:  # only True allows
        assert http.get("/audit/").status_code == 403


def _restore_form(html: str, version: int) -> dict[str, str]:
    form = html.split(f'id="v{version}"')[1].split("</form>")[0]
    return {unescape(n): unescape(v) for n, v in re.findall(r'name="(\w+)" value="([^"]*)"', form)}


def test_restore_needs_the_csrf_token_and_a_reason(story: Story, engine: sa.Engine) -> None:
    options = {"allow_restore": True, "secret": SECRET, "actor": reviewer}
    with client(engine, **options) as http:
        page = http.get("/audit/record?table=review_orders&key=3")
        assert csrf.COOKIE in page.cookies
        with Session(engine) as session:
            draft = versioning.history(session, Order, 3)[0]
        form = _restore_form(page.text, draft.version_id)
        assert form["csrf"] == csrf.token(SECRET.encode(), page.cookies[csrf.COOKIE])

        forged = http.post("/audit/restore", data={**form, "csrf": "0" * 64, "reason": "x"})
        assert forged.status_code == 403 and "security token" in forged.text
        no_reason = http.post("/audit/restore", data={**form, "reason": " "})
        assert no_reason.status_code == 400 and "reason" in no_reason.text
        with Session(engine) as session:
            assert len(versioning.history(session, Order, 3)) == 2

        done = http.post(
            "/audit/restore", data={**form, "reason": "paid by mistake"}, follow_redirects=False
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/audit/record?table=review_orders&key=3"
    with client(engine, **options) as other:  # another browser: its own cookie
        stolen = other.post("/audit/restore", data={**form, "reason": "x"})
        assert stolen.status_code == 403
    with Session(engine) as session:
        versions = versioning.history(session, Order, 3)
        assert len(versions) == 3
        assert versions[-1].state["status"] == "draft"
        assert versions[-1].transaction is not None
        assert versions[-1].transaction.actor == "reviewer-ann"
        assert "paid by mistake" in (versions[-1].transaction.reason or "")


def test_a_restore_failing_outside_the_library_is_an_error_page(
    story: Story, engine: sa.Engine, create_tables: Tables, caplog: pytest.LogCaptureFixture
) -> None:
    """The application's own commit hook writes a row the database refuses (a real
    IntegrityError at commit), or its actor callable fails: a 409 or 500 page with the review
    headers, nothing changed, and the log names the error's class, never its message."""
    extra = sa.MetaData()
    tickets = sa.Table("review_tickets", extra, sa.Column("id", sa.Integer, primary_key=True))
    create_tables(extra)
    with engine.begin() as connection:
        connection.execute(tickets.insert().values(id=1))
    maker = sessionmaker(engine)

    @sa.event.listens_for(maker, "before_commit")
    def audit_ticket(session: Session) -> None:  # the application's hook: a duplicate key
        session.execute(tickets.insert().values(id=1))

    def failing_actor(request: Any) -> str:
        raise RuntimeError("the directory is down")

    options: dict[str, Any] = {"allow_restore": True, "secret": SECRET, "actor": reviewer}
    app = Starlette(routes=[Mount("/audit", review_app(maker, authorize=allow, **options))])
    with TestClient(app) as http:
        page = http.get("/audit/record?table=review_orders&key=3")
        with Session(engine) as session:
            draft = versioning.history(session, Order, 3)[0]
        form = _restore_form(page.text, draft.version_id)
        refused = http.post("/audit/restore", data={**form, "reason": "undo"})
        assert refused.status_code == 409
        assert "The record could not be restored" in refused.text
        assert "constraint" in refused.text and "Nothing was changed" in refused.text
        assert "default-src 'none'" in refused.headers["content-security-policy"]
    assert "IntegrityError" in caplog.text and "review_orders 3" in caplog.text
    options["actor"] = failing_actor
    with client(engine, **options) as http:
        page = http.get("/audit/record?table=review_orders&key=3")
        form = _restore_form(page.text, draft.version_id)
        failed = http.post("/audit/restore", data={**form, "reason": "undo"})
        assert failed.status_code == 500 and "it was logged" in failed.text
        assert "default-src 'none'" in failed.headers["content-security-policy"]
    assert "RuntimeError" in caplog.text and "the directory is down" not in caplog.text
    with Session(engine) as session:
        assert len(versioning.history(session, Order, 3)) == 2  # nothing was restored


def test_a_page_failing_outside_the_library_is_an_error_page(
    story: Story, engine: sa.Engine
) -> None:
    maker = sessionmaker(engine)

    @sa.event.listens_for(maker, "after_begin")
    def broken(session: Session, transaction: Any, connection: sa.Connection) -> None:
        raise RuntimeError("the application's hook failed")

    app = Starlette(routes=[Mount("/audit", review_app(maker, authorize=allow))])
    with TestClient(app) as http:
        for url in ["/audit/record?table=review_orders&key=3", "/audit/export?format=csv"]:
            page = http.get(url)
            assert page.status_code == 500 and "Something went wrong" in page.text
            assert "default-src 'none'" in page.headers["content-security-policy"]


def test_without_allow_restore_there_is_no_restore(story: Story, engine: sa.Engine) -> None:
    with client(engine) as http:
        page = http.get("/audit/record?table=review_orders&key=3")
        assert "Restore this version" not in page.text and csrf.COOKIE not in page.cookies
        assert http.post("/audit/restore", data={"reason": "x"}).status_code in (404, 405)


# --- Flask ------------------------------------------------------------------------------------


def test_the_flask_blueprint_renders_the_same_pages(story: Story, engine: sa.Engine) -> None:
    def authorize(request: Any, action: str) -> bool:
        return request.headers.get("Authorization") == "Bearer good"

    app = Flask(__name__)
    blueprint = review_blueprint(
        sessionmaker(engine),
        authorize=authorize,
        allow_restore=True,
        secret=SECRET,
        actor=reviewer,
        title="Audit",
    )
    app.register_blueprint(blueprint, url_prefix="/audit")
    http = app.test_client()
    assert http.get("/audit/").status_code == 403
    headers = {"Authorization": "Bearer good"}
    page = http.get("/audit/?actor=bob", headers=headers)
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert re.findall(r"/audit/transaction/(\d+)", page.text) == [str(story.shipped)]
    assert "<title>Activity · Audit</title>" in page.text
    assert "<script>window" not in http.get("/audit/", headers=headers).text
    assert http.get("/audit/?since=x", headers=headers).status_code == 400
    assert http.get("/audit/static/review.css", headers=headers).content_type == "text/css"
    exported = http.get("/audit/export?actor=bob&format=csv", headers=headers)
    assert {row["actor"] for row in csv.DictReader(io.StringIO(exported.text))} == {"bob"}

    record = http.get("/audit/record?table=review_orders&key=3", headers=headers)
    with Session(engine) as session:
        draft = versioning.history(session, Order, 3)[0]
    form = _restore_form(record.text, draft.version_id)
    forged = http.post(
        "/audit/restore", data={**form, "csrf": "bad", "reason": "x"}, headers=headers
    )
    assert forged.status_code == 403
    done = http.post("/audit/restore", data={**form, "reason": "undo"}, headers=headers)
    assert done.status_code == 303 and done.headers["Location"].startswith("/audit/record?")
    with Session(engine) as session:
        last = versioning.history(session, Order, 3)[-1]
        assert last.transaction is not None and last.transaction.actor == "reviewer-ann"
    assert Customer.__tablename__ in http.get("/audit/", headers=headers).text
    missing = http.get("/audit/nowhere/at/all", headers=headers)
    assert missing.status_code == 404 and "There is no such page." in missing.text
    assert "default-src 'none'" in missing.headers["Content-Security-Policy"]


def test_erased_values_stay_erased(story: Story, engine: sa.Engine) -> None:
    with Session(engine) as session:
        versioning.erase(session, Customer, 1, columns=["phone"], reason="GDPR request 12")
        session.commit()
    with client(engine) as http:
        record = http.get("/audit/record?table=review_customers&key=1&at=2100-01-01").text
        assert "+44 20 7946 0000" not in record
        assert record.count("[erased]") == 2  # in the insert's diff and as it was at
        exported = http.get("/audit/export?table=review_customers&format=csv").text
        assert "+44 20 7946 0000" not in exported and "[erased]" in exported


def test_unknown_paths_are_404_pages_with_the_headers(story: Story, engine: sa.Engine) -> None:
    with client(engine, allow_restore=True, secret=SECRET, actor=reviewer) as http:
        missing = http.get("/audit/nowhere")
        assert missing.status_code == 404 and "There is no such page." in missing.text
        assert "default-src 'none'" in missing.headers["content-security-policy"]
        assert http.get("/audit/restore").status_code == 405


def test_from_the_registry_alone_a_record_shows_its_snapshot(
    create_tables: Tables, engine: sa.Engine
) -> None:
    """Without the models (a catalog read from the database's registry), "as it was at" shows
    the recorded snapshot row, and no restore is offered."""
    from versioning.catalog import load
    from versioning.integrations.review.pages import Review

    story = tell(create_tables(ReviewBase.metadata), pause=1.1)
    review = Review(
        sessionmaker(engine), authorize=allow, allow_restore=True, secret=SECRET, actor=reviewer
    )
    with engine.connect() as connection:
        review._catalog = load(connection)
    assert all(entry.model is None for entry in review._catalog.tables)
    at = story.before_shipping.isoformat()
    page = review.record({"table": "review_orders", "key": "1", "at": at}, "/audit", "cookie")
    assert page.status == 200
    section = page.body.split('class="then"')[1].split("Timeline")[0]
    assert "<td>new</td>" in section and "without related records" in section
    assert "Restore this version" not in page.body
    gone = review.record({"table": "review_orders", "key": "1", "at": "2000-01-01"}, "", None)
    assert "did not exist" in gone.body
    activity = review.activity({"actor": "bob"}, "/audit")
    assert activity.status == 200 and "shipped" in activity.body


def test_record_keys_are_read_as_the_page_writes_them() -> None:
    from versioning.integrations.review.query import parse_key

    assert parse_key("7", ("id",), (int,)) == (7,)
    assert parse_key("A-7", ("code",), (str,)) == ("A-7",)
    assert parse_key('[3, "x"]', ("id", "code"), (int, str)) == (3, "x")
    assert parse_key('["3", "x"]', ("id", "code"), (int, None)) == (3, "x")
    for text, types in [("[3]", (int, str)), ("3, x", (int, str)), ('["a", "x"]', (int, str))]:
        with pytest.raises(BadParameter, match=r"^key="):
            parse_key(text, ("id", "code"), types)
