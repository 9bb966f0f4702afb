"""Flask: ``versioning.integrations.flask.VersioningAudit`` end to end, with Flask's test client.

Every request that writes goes through a real database (each backend) and the transaction row is
read back with ``versioning.history``: who (actor), from where (source_ip) and which request
(request_id, also echoed in the response).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flask
import pytest
import sqlalchemy as sa
from flask import Flask, g, request
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from werkzeug.test import TestResponse

from versioning import (
    AuditContext,
    ConfigurationError,
    ContextError,
    Transaction,
    Versioned,
    audit_context,
    current_context,
    history,
    set_actor,
)
from versioning.integrations.flask import VersioningAudit

Sessions = Callable[[], Session]
CreateTables = Callable[[sa.MetaData], sa.Engine]

GENERATED_ID = re.compile(r"[0-9a-f]{32}")


class Base(DeclarativeBase):
    pass


class Item(Versioned, Base):
    __tablename__ = "flask_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))


# --- helpers ------------------------------------------------------------------------------------


def write_item(sessions: Sessions, item_id: int, name: str = "x") -> None:
    """Insert an item in a session of its own (one short write transaction)."""
    with sessions() as session:
        session.add(Item(id=item_id, name=name))
        session.commit()


def transaction_of(sessions: Sessions, item_id: int) -> Transaction:
    """The transaction row of the item's latest version."""
    with sessions() as session:
        versions = history(session, Item, item_id)
    assert versions, f"item {item_id} has no history"
    transaction = versions[-1].transaction
    assert transaction is not None
    return transaction


def who(transaction: Transaction) -> tuple[str | None, str | None, str | None]:
    return (transaction.actor, transaction.source_ip, transaction.request_id)


def context_fields() -> dict[str, Any]:
    ctx = current_context()
    return {"actor": ctx.actor, "source_ip": ctx.source_ip, "request_id": ctx.request_id}


def header_actor(req: flask.Request) -> str | None:
    return req.headers.get("X-User")


def add_write_route(app: Flask, sessions: Sessions) -> None:
    """``POST /items/<id>?name=...&as=...``: ``as`` calls set_actor first; returns the context."""

    @app.post("/items/<int:item_id>")
    def create_item(item_id: int) -> dict[str, Any]:
        late = request.args.get("as")
        if late is not None:
            set_actor(late)
        write_item(sessions, item_id, request.args.get("name", "x"))
        return context_fields()


def make_app(sessions: Sessions, **audit_options: Any) -> tuple[Flask, VersioningAudit]:
    """An app writing items. The test client's peer is no proxy: these tests trust any inbound
    request id unless they say otherwise (the default, "proxies", has tests of its own)."""
    app = Flask(__name__)
    app.testing = True
    audit_options.setdefault("trust_request_id", "always")
    audit = VersioningAudit(app, **audit_options)
    add_write_route(app, sessions)
    return app, audit


def context_app(**audit_options: Any) -> Flask:
    """The extension alone, before a view that answers the audit context it sees."""
    app = Flask(__name__)
    app.testing = True
    audit_options.setdefault("trust_request_id", "always")
    VersioningAudit(app, **audit_options)

    @app.post("/context")
    def context() -> dict[str, Any]:
        return context_fields()

    return app


@pytest.fixture
def db(create_tables: CreateTables, sessions: Sessions) -> Sessions:
    create_tables(Base.metadata)
    return sessions


# --- installing the extension -------------------------------------------------------------------


def test_extension_records_actor_ip_and_request_id_of_a_write(db: Sessions) -> None:
    app, audit = make_app(db, actor=header_actor)
    assert app.extensions["versioning"] is audit
    response = app.test_client().post(
        "/items/1",
        headers={"X-User": "alice", "X-Request-ID": "req-42"},
        environ_base={"REMOTE_ADDR": "203.0.113.5"},
    )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "req-42"
    assert who(transaction_of(db, 1)) == ("alice", "203.0.113.5", "req-42")
    assert response.json == {"actor": "alice", "source_ip": "203.0.113.5", "request_id": "req-42"}


def test_init_app_form_serves_several_apps_with_one_extension(db: Sessions) -> None:
    audit = VersioningAudit(actor=header_actor, trusted_proxies=["10.0.0.0/8"])

    def create_app() -> Flask:
        app = Flask(__name__)
        app.testing = True
        audit.init_app(app)
        add_write_route(app, db)
        return app

    first, second = create_app(), create_app()
    assert first.extensions["versioning"] is audit
    assert second.extensions["versioning"] is audit
    first.test_client().post(
        "/items/1",
        headers={"X-User": "alice", "X-Request-ID": "one", "X-Forwarded-For": "198.51.100.1"},
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    )
    response = second.test_client().post(
        "/items/2",
        headers={"X-User": "bob", "X-Request-ID": "two"},
        environ_base={"REMOTE_ADDR": "192.0.2.9"},
    )
    # By default only a trusted proxy chooses the request id: the client's id is kept aside.
    rid = response.headers["X-Request-ID"]
    assert GENERATED_ID.fullmatch(rid)
    assert who(transaction_of(db, 1)) == ("alice", "198.51.100.1", "one")
    assert dict(transaction_of(db, 1).extra or {}) == {}
    assert who(transaction_of(db, 2)) == ("bob", "192.0.2.9", rid)
    assert dict(transaction_of(db, 2).extra or {}) == {"untrusted_request_id": "two"}


def test_without_actor_callable_the_write_is_anonymous_but_has_ip_and_request_id(
    db: Sessions,
) -> None:
    app, _ = make_app(db)
    response = app.test_client().post("/items/1", headers={"X-User": "alice"})
    rid = response.headers["X-Request-ID"]
    assert GENERATED_ID.fullmatch(rid)
    # The Flask test client's default peer address.
    assert who(transaction_of(db, 1)) == (None, "127.0.0.1", rid)


# --- the actor ----------------------------------------------------------------------------------


def test_actor_callable_receives_the_request_and_int_actors_are_stored_as_text(
    db: Sessions,
) -> None:
    seen: list[tuple[bool, str]] = []

    def actor(req: flask.Request) -> int:
        seen.append((isinstance(req, flask.Request), req.path))
        return 1234

    app, _ = make_app(db, actor=actor)
    app.test_client().post("/items/7")
    assert transaction_of(db, 7).actor == "1234"
    assert seen and all(entry == (True, "/items/7") for entry in seen)


def test_lazy_actor_sees_g_user_loaded_by_a_hook_registered_before_the_extension(
    db: Sessions,
) -> None:
    app = Flask(__name__)
    app.testing = True
    seen_in_hook: list[dict[str, Any]] = []

    @app.before_request
    def load_user() -> None:
        # Registered before the extension, yet the context is already open here.
        g.user = request.headers.get("X-User")
        seen_in_hook.append(context_fields())

    # g.user exists only once load_user has run: the actor must not be asked before.
    VersioningAudit(app, actor=lambda req: g.user, trust_request_id="always")
    add_write_route(app, db)
    client = app.test_client()
    response = client.post(
        "/items/1",
        headers={"X-User": "carol", "X-Request-ID": "hook-1"},
        environ_base={"REMOTE_ADDR": "192.0.2.1"},
    )
    assert response.status_code == 200
    assert who(transaction_of(db, 1)) == ("carol", "192.0.2.1", "hook-1")
    expected = {"actor": "carol", "source_ip": "192.0.2.1", "request_id": "hook-1"}
    assert response.json == expected
    assert seen_in_hook == [expected]
    anonymous = client.post("/items/2")
    assert anonymous.status_code == 200
    assert transaction_of(db, 2).actor is None


def test_actor_callable_is_not_called_by_requests_that_write_nothing(db: Sessions) -> None:
    calls: list[str] = []

    def actor(req: flask.Request) -> str:
        calls.append(req.path)  # e.g. a user lookup: it must cost nothing on read-only requests
        return "lazy"

    app, _ = make_app(db, actor=actor)

    @app.get("/read")
    def read() -> str:
        with db() as session:
            return str(session.get(Item, 1))

    client = app.test_client()
    assert client.get("/read").status_code == 200
    assert calls == []
    client.post("/items/1")
    assert calls and set(calls) == {"/items/1"}
    assert transaction_of(db, 1).actor == "lazy"


def test_actor_callable_returning_none_records_no_actor(db: Sessions) -> None:
    app, _ = make_app(db, actor=header_actor)
    app.test_client().post("/items/1")
    assert transaction_of(db, 1).actor is None


def test_set_actor_in_a_view_takes_precedence_over_the_actor_callable(db: Sessions) -> None:
    app, _ = make_app(db, actor=header_actor)
    client = app.test_client()
    client.post("/items/1?as=admin", headers={"X-User": "alice"})
    client.post("/items/2?as=42")
    assert transaction_of(db, 1).actor == "admin"
    assert transaction_of(db, 2).actor == "42"


def test_set_actor_in_a_view_without_actor_callable(db: Sessions) -> None:
    app, _ = make_app(db)
    response = app.test_client().post("/items/1?as=dave", environ_base={"REMOTE_ADDR": "::1"})
    assert who(transaction_of(db, 1)) == ("dave", "::1", response.headers["X-Request-ID"])


def test_audit_context_nested_in_a_view_adds_a_reason_and_keeps_the_request_fields(
    db: Sessions,
) -> None:
    app = Flask(__name__)
    app.testing = True
    VersioningAudit(app, actor=header_actor, trust_request_id="always")

    @app.post("/import")
    def bulk_import() -> str:
        with audit_context(reason="bulk import", batch=7):
            write_item(db, 1)
        return "ok"

    app.test_client().post(
        "/import",
        headers={"X-User": "erin", "X-Request-ID": "imp-1"},
        environ_base={"REMOTE_ADDR": "198.51.100.3"},
    )
    transaction = transaction_of(db, 1)
    assert who(transaction) == ("erin", "198.51.100.3", "imp-1")
    assert transaction.reason == "bulk import"
    assert dict(transaction.extra) == {"batch": 7}


def test_actor_callable_returning_a_bad_value_fails_the_write_and_only_that_request(
    db: Sessions,
) -> None:
    def actor(req: flask.Request) -> Any:
        return {"id": 1} if req.headers.get("X-Broken") else None

    app, _ = make_app(db, actor=actor)
    client = app.test_client()
    with pytest.raises(ContextError):
        client.post("/items/1", headers={"X-Broken": "1"})
    assert current_context() == AuditContext()
    with db() as session:
        assert session.get(Item, 1) is None
        assert history(session, Item, 1) == []
    # The failed request left nothing behind: the next anonymous request writes normally.
    response = client.post("/items/2")
    assert response.status_code == 200
    assert who(transaction_of(db, 2)) == (None, "127.0.0.1", response.headers["X-Request-ID"])


def authenticated_and_id(req: flask.Request) -> Any:
    """``current_user.is_authenticated and current_user.id``: ``False`` when anonymous."""
    user_id = req.headers.get("X-User-Id")
    return user_id is not None and int(user_id)


def authenticated_flag(req: flask.Request) -> Any:
    return req.headers.get("X-User-Id") is not None


def test_actor_callable_answering_zero_false_or_true(db: Sessions) -> None:
    app, _ = make_app(db, actor=authenticated_and_id)
    client = app.test_client()
    assert client.post("/items/1", headers={"X-User-Id": "0"}).status_code == 200
    assert client.post("/items/2").status_code == 200
    assert transaction_of(db, 1).actor == "0"  # user 0 is a user
    assert transaction_of(db, 2).actor is None  # False: anonymous
    flagged, _ = make_app(db, actor=authenticated_flag)
    with pytest.raises(ContextError, match=r"actor callable .*authenticated_flag returned True"):
        flagged.test_client().post("/items/3", headers={"X-User-Id": "1"})
    with db() as session:
        assert session.get(Item, 3) is None
        assert history(session, Item, 3) == []


# --- request id ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inbound", ["abc", "req-42", "a1b2.c3_d4:e5+f6/g7=h8", "0" * 64, "550e8400-e29b-41d4-a716"]
)
def test_valid_inbound_request_id_is_kept_and_echoed(inbound: str) -> None:
    """Through the extension alone; recorded on every backend by the end-to-end test below."""
    response = context_app().test_client().post("/context", headers={"X-Request-ID": inbound})
    assert response.headers["X-Request-ID"] == inbound
    assert response.json is not None and response.json["request_id"] == inbound


@pytest.mark.parametrize(
    "inbound",
    [
        "",
        "has space",
        "-leading-dash",
        ".leading-dot",
        "a;b",
        "<script>",
        "x" * 65,
        "caf\u00e9",
        "a,b",
        "'; DROP TABLE x; --",
    ],
)
def test_invalid_inbound_request_id_is_replaced_and_echoed(inbound: str) -> None:
    """Through the extension alone; recorded on every backend by the end-to-end test below."""
    response = context_app().test_client().post("/context", headers={"X-Request-ID": inbound})
    rid = response.headers["X-Request-ID"]
    assert rid != inbound
    assert GENERATED_ID.fullmatch(rid)
    assert response.json is not None and response.json["request_id"] == rid


@pytest.mark.parametrize(("inbound", "kept"), [("req-42", True), ("<script>", False)])
def test_inbound_request_id_end_to_end(db: Sessions, inbound: str, kept: bool) -> None:
    app, _ = make_app(db)
    response = app.test_client().post("/items/1", headers={"X-Request-ID": inbound})
    rid = response.headers["X-Request-ID"]
    assert (rid == inbound) is kept
    assert kept or GENERATED_ID.fullmatch(rid)
    assert transaction_of(db, 1).request_id == rid


def test_missing_request_id_is_generated_fresh_for_every_request(db: Sessions) -> None:
    app, _ = make_app(db)
    client = app.test_client()
    first = client.post("/items/1").headers["X-Request-ID"]
    second = client.post("/items/2").headers["X-Request-ID"]
    assert GENERATED_ID.fullmatch(first) and GENERATED_ID.fullmatch(second)
    assert first != second
    assert transaction_of(db, 1).request_id == first
    assert transaction_of(db, 2).request_id == second


def test_request_id_header_name_and_max_length_are_configurable(db: Sessions) -> None:
    app, _ = make_app(db, request_id_header="X-Correlation-ID", request_id_max_length=8)
    client = app.test_client()
    kept = client.post("/items/1", headers={"X-Correlation-ID": "abcdefgh", "X-Request-ID": "no"})
    assert kept.headers["X-Correlation-ID"] == "abcdefgh"
    assert "X-Request-ID" not in kept.headers
    replaced = client.post("/items/2", headers={"X-Correlation-ID": "abcdefghi"})
    assert GENERATED_ID.fullmatch(replaced.headers["X-Correlation-ID"])
    assert transaction_of(db, 1).request_id == "abcdefgh"
    assert transaction_of(db, 2).request_id == replaced.headers["X-Correlation-ID"]


def test_request_id_is_echoed_on_error_responses(db: Sessions) -> None:
    app, _ = make_app(db)
    client = app.test_client()
    missing = client.get("/nowhere", headers={"X-Request-ID": "lost-1"})
    assert missing.status_code == 404
    assert missing.headers["X-Request-ID"] == "lost-1"
    wrong_method = client.get("/items/1", headers={"X-Request-ID": "lost-2"})
    assert wrong_method.status_code == 405
    assert wrong_method.headers["X-Request-ID"] == "lost-2"


# --- lifecycle: where the context is visible, and that it always ends ---------------------------


def test_context_is_visible_in_hooks_view_and_teardown_and_cleared_after(db: Sessions) -> None:
    app = Flask(__name__)
    app.testing = True
    seen: dict[str, dict[str, Any]] = {}

    @app.before_request
    def early_hook() -> None:
        seen["before_request (registered first)"] = context_fields()

    VersioningAudit(app, actor=header_actor, trust_request_id="always")

    @app.before_request
    def late_hook() -> None:
        seen["before_request (registered last)"] = context_fields()

    @app.after_request
    def after(response: flask.Response) -> flask.Response:
        seen["after_request"] = context_fields()
        return response

    @app.teardown_request
    def teardown(exc: BaseException | None) -> None:
        seen["teardown_request"] = context_fields()
        write_item(db, 2, "written at teardown")

    @app.post("/items/<int:item_id>")
    def create_item(item_id: int) -> str:
        seen["view"] = context_fields()
        write_item(db, item_id)
        return "ok"

    response = app.test_client().post(
        "/items/1",
        headers={"X-User": "frank", "X-Request-ID": "life-1"},
        environ_base={"REMOTE_ADDR": "2001:db8::5"},
    )
    expected = {"actor": "frank", "source_ip": "2001:db8::5", "request_id": "life-1"}
    assert seen == {
        "before_request (registered first)": expected,
        "before_request (registered last)": expected,
        "view": expected,
        "after_request": expected,
        "teardown_request": expected,
    }
    assert response.headers["X-Request-ID"] == "life-1"
    assert who(transaction_of(db, 1)) == ("frank", "2001:db8::5", "life-1")
    assert who(transaction_of(db, 2)) == ("frank", "2001:db8::5", "life-1")
    assert current_context() == AuditContext()


def test_teardown_registered_before_the_extension_still_sees_the_context(db: Sessions) -> None:
    # The usual factory order: the app's own teardown (e.g. commit-on-teardown of a session
    # helper) is registered when the app is built, extensions are initialised afterwards.
    audit = VersioningAudit(actor=header_actor, trust_request_id="always")
    app = Flask(__name__)
    app.testing = True
    seen: list[dict[str, Any]] = []

    @app.teardown_request
    def commit_pending(exc: BaseException | None) -> None:
        seen.append(context_fields())
        write_item(db, 1, "written at teardown")

    @app.get("/")
    def index() -> str:
        return "ok"

    audit.init_app(app)
    response = app.test_client().get(
        "/",
        headers={"X-User": "gina", "X-Request-ID": "td-1"},
        environ_base={"REMOTE_ADDR": "192.0.2.77"},
    )
    assert response.status_code == 200
    expected = {"actor": "gina", "source_ip": "192.0.2.77", "request_id": "td-1"}
    assert seen == [expected]
    assert who(transaction_of(db, 1)) == ("gina", "192.0.2.77", "td-1")


def test_blueprint_hooks_and_views_see_the_context(db: Sessions) -> None:
    app = Flask(__name__)
    app.testing = True
    VersioningAudit(app, actor=header_actor, trust_request_id="always")
    blueprint = flask.Blueprint("admin", __name__, url_prefix="/admin")
    seen: dict[str, dict[str, Any]] = {}

    @blueprint.before_request
    def bp_before() -> None:
        seen["blueprint before_request"] = context_fields()

    @blueprint.teardown_request
    def bp_teardown(exc: BaseException | None) -> None:
        seen["blueprint teardown_request"] = context_fields()

    @blueprint.post("/items/<int:item_id>")
    def create_item(item_id: int) -> str:
        write_item(db, item_id)
        return "ok"

    app.register_blueprint(blueprint)
    app.test_client().post("/admin/items/1", headers={"X-User": "hal", "X-Request-ID": "bp-1"})
    expected = {"actor": "hal", "source_ip": "127.0.0.1", "request_id": "bp-1"}
    assert seen == {"blueprint before_request": expected, "blueprint teardown_request": expected}
    assert who(transaction_of(db, 1)) == ("hal", "127.0.0.1", "bp-1")


def test_consecutive_requests_on_one_thread_never_inherit_the_previous_actor(
    db: Sessions,
) -> None:
    app, _ = make_app(db, actor=header_actor)
    client = app.test_client()
    first = client.post(
        "/items/1?as=root", headers={"X-User": "alice"}, environ_base={"REMOTE_ADDR": "192.0.2.1"}
    )
    assert current_context() == AuditContext()
    second = client.post("/items/2", environ_base={"REMOTE_ADDR": "192.0.2.2"})
    assert current_context() == AuditContext()
    third = client.post("/items/3", headers={"X-User": "bob"})
    assert who(transaction_of(db, 1)) == ("root", "192.0.2.1", first.headers["X-Request-ID"])
    assert who(transaction_of(db, 2)) == (None, "192.0.2.2", second.headers["X-Request-ID"])
    assert who(transaction_of(db, 3)) == ("bob", "127.0.0.1", third.headers["X-Request-ID"])
    assert len({first.headers["X-Request-ID"], second.headers["X-Request-ID"]}) == 2


def test_request_inside_an_outer_context_restores_it_afterwards(db: Sessions) -> None:
    app, _ = make_app(db)
    with audit_context(actor="job:nightly", reason="nightly run"):
        response = app.test_client().post("/items/1")
        assert current_context().actor == "job:nightly"
        assert current_context().request_id is None
    transaction = transaction_of(db, 1)
    # The request's fields win; what the request leaves unset is inherited.
    assert who(transaction) == ("job:nightly", "127.0.0.1", response.headers["X-Request-ID"])
    assert transaction.reason == "nightly run"


class Boom(Exception):
    pass


def test_a_view_that_raises_still_closes_the_context(db: Sessions) -> None:
    app, _ = make_app(db, actor=header_actor)

    @app.post("/fail/<int:item_id>")
    def fail(item_id: int) -> str:
        set_actor("mallory")
        write_item(db, item_id)  # committed before the failure
        raise Boom

    client = app.test_client()
    with pytest.raises(Boom):
        client.post("/fail/1", headers={"X-User": "alice", "X-Request-ID": "fail-1"})
    assert current_context() == AuditContext()
    assert who(transaction_of(db, 1)) == ("mallory", "127.0.0.1", "fail-1")
    response = client.post("/items/2", environ_base={"REMOTE_ADDR": "192.0.2.8"})
    assert who(transaction_of(db, 2)) == (None, "192.0.2.8", response.headers["X-Request-ID"])


def test_a_view_that_raises_in_production_mode_returns_500_with_the_request_id(
    db: Sessions,
) -> None:
    app = Flask(__name__)  # testing off: the error becomes a 500 response
    VersioningAudit(app, actor=header_actor, trust_request_id="always")
    add_write_route(app, db)

    @app.get("/fail")
    def fail() -> str:
        set_actor("mallory")
        raise Boom

    client = app.test_client()
    response = client.get("/fail", headers={"X-Request-ID": "oops-1"})
    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "oops-1"
    assert current_context() == AuditContext()
    client.post("/items/1", headers={"X-User": "bob"})
    assert transaction_of(db, 1).actor == "bob"


def test_a_before_request_that_returns_early_still_closes_the_context(db: Sessions) -> None:
    app = Flask(__name__)
    app.testing = True
    VersioningAudit(app, actor=header_actor, trust_request_id="always")

    @app.before_request
    def gate() -> tuple[str, int] | None:
        if request.headers.get("X-Blocked"):
            write_item(db, 99, "denied")  # e.g. recording the refused attempt
            return "blocked", 403
        return None

    add_write_route(app, db)
    client = app.test_client()
    blocked = client.post(
        "/items/1",
        headers={"X-User": "ivan", "X-Blocked": "1", "X-Request-ID": "gate-1"},
        environ_base={"REMOTE_ADDR": "203.0.113.66"},
    )
    assert blocked.status_code == 403
    assert blocked.headers["X-Request-ID"] == "gate-1"
    assert current_context() == AuditContext()
    assert who(transaction_of(db, 99)) == ("ivan", "203.0.113.66", "gate-1")
    with db() as session:
        assert session.get(Item, 1) is None
    allowed = client.post("/items/2")
    assert who(transaction_of(db, 2)) == (None, "127.0.0.1", allowed.headers["X-Request-ID"])


def streaming_app(db: Sessions, events: list[tuple[str, dict[str, Any]]]) -> Flask:
    """``GET /export`` streams a body whose generator writes item 1 mid-stream (``?with_context``
    wraps it in ``stream_with_context``) and item 2 when the body is closed, finished or not."""
    app = Flask(__name__)
    app.testing = True
    VersioningAudit(app, actor=header_actor, trust_request_id="always")

    @app.get("/export")
    def export() -> flask.Response:
        def rows() -> Iterator[str]:
            try:
                yield "start\n"
                events.append(("mid-stream", context_fields()))
                write_item(db, 1, "streamed")
                yield "end\n"
            finally:  # runs when the server closes the body, even after a client went away
                events.append(("closed", context_fields()))
                write_item(db, 2, "on close")

        body = flask.stream_with_context(rows()) if "with_context" in request.args else rows()
        return flask.Response(body)

    return app


@pytest.mark.parametrize("with_context", [False, True], ids=["generator", "stream_with_context"])
def test_writes_while_a_streamed_body_is_generated_have_the_request_context(
    db: Sessions, with_context: bool
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    app = streaming_app(db, events)
    response = app.test_client().get(
        "/export" + ("?with_context=1" if with_context else ""),
        headers={"X-User": "judy", "X-Request-ID": "stream-1"},
        environ_base={"REMOTE_ADDR": "192.0.2.44"},
    )
    assert response.headers["X-Request-ID"] == "stream-1"
    assert current_context() == AuditContext()  # not in the caller's context, even mid-request
    assert response.get_data(as_text=True) == "start\nend\n"
    response.close()
    expected = {"actor": "judy", "source_ip": "192.0.2.44", "request_id": "stream-1"}
    assert events == [("mid-stream", expected), ("closed", expected)]
    assert who(transaction_of(db, 1)) == ("judy", "192.0.2.44", "stream-1")
    assert who(transaction_of(db, 2)) == ("judy", "192.0.2.44", "stream-1")
    assert current_context() == AuditContext()


def test_the_context_covers_real_wsgi_iteration_and_close_and_only_them(db: Sessions) -> None:
    """The WSGI protocol by hand, as a server runs it: call, iterate, close — the body abandoned
    after its first chunk (a client that went away). The caller's context never holds the
    request's values, before, between or after the chunks."""
    from werkzeug.test import EnvironBuilder

    events: list[tuple[str, dict[str, Any]]] = []
    app = streaming_app(db, events)
    environ = EnvironBuilder(
        path="/export", headers={"X-User": "kai", "X-Request-ID": "wsgi-1"}
    ).get_environ()
    environ["REMOTE_ADDR"] = "2001:db8::44"
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None

    with audit_context(actor="server", reason="outer"):
        body = app(environ, start_response)
        assert current_context().actor == "server"
        assert started[0][0] == "200 OK"
        assert ("X-Request-ID", "wsgi-1") in started[0][1]
        chunks = iter(body)
        assert next(chunks) == b"start\n"
        assert current_context().actor == "server"
        body.close()  # type: ignore[attr-defined]
        assert current_context().request_id is None
    expected = {"actor": "kai", "source_ip": "2001:db8::44", "request_id": "wsgi-1"}
    assert events == [("closed", expected)]  # the generator was closed before "mid-stream"
    transaction = transaction_of(db, 2)
    assert who(transaction) == ("kai", "2001:db8::44", "wsgi-1")
    assert transaction.reason == "outer"  # what the request leaves unset is inherited
    with db() as session:
        assert session.get(Item, 1) is None


def test_a_file_body_reaches_the_server_as_its_own_file_wrapper(tmp_path: Any) -> None:
    """A server uses sendfile() only for its own ``wsgi.file_wrapper``: it is passed through."""
    from werkzeug.wsgi import FileWrapper

    (tmp_path / "report.txt").write_text("report")
    app = Flask(__name__)
    VersioningAudit(app)

    @app.get("/report")
    def report() -> flask.Response:
        return flask.send_file(tmp_path / "report.txt")

    @app.get("/text")
    def text() -> str:
        return "text"

    environ = {"wsgi.file_wrapper": FileWrapper, "REMOTE_ADDR": "192.0.2.1"}
    seen: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append(dict(headers)["X-Request-ID"])
        return lambda data: None

    from werkzeug.test import EnvironBuilder

    for path, passed_through in (("/report", True), ("/text", False)):
        built = EnvironBuilder(path=path).get_environ()
        built.update(environ)
        body = app(built, start_response)
        assert isinstance(body, FileWrapper) is passed_through
        assert b"".join(body) in (b"report", b"text")
        body.close()  # type: ignore[attr-defined]
    assert len(seen) == 2 and all(GENERATED_ID.fullmatch(rid) for rid in seen)


class TeardownBoom(Exception):
    pass


def failing_teardown_app(db: Sessions) -> Flask:
    """An app whose own teardown_request function raises for requests sent with X-Fail."""
    app = Flask(__name__)
    VersioningAudit(app, actor=header_actor, trust_request_id="always")

    @app.teardown_request
    def fragile_cleanup(exc: BaseException | None) -> None:
        if request.headers.get("X-Fail"):
            raise TeardownBoom("cleanup failed")

    add_write_route(app, db)
    return app


def test_a_teardown_that_raises_cannot_leak_the_actor_into_the_next_request(
    db: Sessions,
) -> None:
    app = failing_teardown_app(db)
    client = app.test_client()
    with pytest.raises(TeardownBoom):
        client.post("/items/1?as=root", headers={"X-User": "alice", "X-Fail": "1"})
    assert current_context() == AuditContext()
    anonymous = client.post("/items/2", environ_base={"REMOTE_ADDR": "192.0.2.2"})
    assert anonymous.status_code == 200
    assert anonymous.json == {
        "actor": None,
        "source_ip": "192.0.2.2",
        "request_id": anonymous.headers["X-Request-ID"],
    }
    assert who(transaction_of(db, 1))[0] == "root"
    assert who(transaction_of(db, 2)) == (None, "192.0.2.2", anonymous.headers["X-Request-ID"])


def test_on_a_real_wsgi_server_thread_no_request_inherits_from_the_previous_one(
    db: Sessions,
) -> None:
    """Werkzeug's server, single-threaded: every request is served on the same thread, as on a
    sync worker. A teardown raising, then a streamed body abandoned mid-way, then the next
    requests: each is recorded with its own values only."""
    import http.client

    from werkzeug.serving import make_server

    app = failing_teardown_app(db)
    events: list[tuple[str, dict[str, Any]]] = []
    streamer = streaming_app(db, events)

    @app.get("/export")
    def export() -> flask.Response:
        return streamer.view_functions["export"]()  # type: ignore[no-any-return]

    server = make_server("127.0.0.1", 0, app, threaded=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def send(method: str, path: str, headers: dict[str, str]) -> tuple[int, str, str]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            return response.status, response.read().decode(), response.getheader("X-Request-ID")
        finally:
            connection.close()

    try:
        status, _, _ = send("POST", "/items/3?as=root", {"X-User": "alice", "X-Fail": "1"})
        assert status == 500
        status, body, rid = send("GET", "/export", {"X-User": "judy"})
        assert (status, body) == (200, "start\nend\n")
        status, _, anonymous_rid = send("POST", "/items/4", {})
        assert status == 200
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert who(transaction_of(db, 3))[0] == "root"
    judy = {"actor": "judy", "source_ip": "127.0.0.1", "request_id": rid}
    assert events == [("mid-stream", judy), ("closed", judy)]
    assert who(transaction_of(db, 1)) == who(transaction_of(db, 2)) == ("judy", "127.0.0.1", rid)
    assert who(transaction_of(db, 4)) == (None, "127.0.0.1", anonymous_rid)


def test_init_app_twice_on_one_app_is_refused() -> None:
    app = Flask(__name__)
    audit = VersioningAudit(app)
    wrapped = app.wsgi_app
    with pytest.raises(ConfigurationError, match=r"already installed .* once per app"):
        audit.init_app(app)
    with pytest.raises(ConfigurationError, match="already installed"):
        VersioningAudit(app)
    assert app.wsgi_app is wrapped
    assert app.extensions["versioning"] is audit


# --- trusted proxies ----------------------------------------------------------------------------

XFF, FWD = "X-Forwarded-For", "Forwarded"
CLIENT = "198.51.100.7"
Headers = dict[str, str] | list[tuple[str, str]]
PROXIES = ["10.0.0.0/8", "::1", "fd00::/8"]


def post_from(app: Flask, item_id: int, peer: str, headers: Headers | None = None) -> TestResponse:
    response = app.test_client().post(
        f"/items/{item_id}", headers=headers or {}, environ_base={"REMOTE_ADDR": peer}
    )
    assert response.status_code == 200
    return response


def source_ip_of(peer: str, headers: Headers, **options: Any) -> str | None:
    """One request from ``peer`` with ``headers`` through the extension, without a database
    (``test_proxy_headers_end_to_end`` records the same on every backend): the source IP of the
    audit context the view saw."""
    response = (
        context_app(**options)
        .test_client()
        .post("/context", headers=headers, environ_base={"REMOTE_ADDR": peer})
    )
    assert response.status_code == 200 and response.json is not None
    ip: str | None = response.json["source_ip"]
    return ip


def recorded_source_ip_of(db: Sessions, peer: str, headers: Headers, **options: Any) -> str | None:
    """One write from ``peer`` with ``headers``; the source IP its transaction recorded."""
    app, _ = make_app(db, **options)
    response = post_from(app, 1, peer, headers)
    ip = transaction_of(db, 1).source_ip
    assert response.json is not None and response.json["source_ip"] == ip
    return ip


@pytest.mark.parametrize(
    ("peer", "headers", "options", "client"),
    [
        ("203.0.113.5", {XFF: "1.2.3.4"}, {"trusted_proxies": ["10.0.0.0/8"]}, "203.0.113.5"),
        (
            "10.0.0.2",
            {XFF: "6.6.6.6, 198.51.100.7, 10.0.0.1"},
            {"trusted_proxies": PROXIES},
            CLIENT,
        ),
        (
            "10.0.0.2",
            {FWD: 'for=6.6.6.6, for="[2001:db8:cafe::17]:4711", for=10.0.0.1'},
            {"trusted_proxies": PROXIES, "forwarded_header": FWD},
            "2001:db8:cafe::17",
        ),
        ("10.0.0.2", {XFF: "garbage"}, {"trusted_proxies": PROXIES}, "10.0.0.2"),
    ],
    ids=["untrusted-peer", "x-forwarded-for-chain", "forwarded-chain", "garbage"],
)
def test_proxy_headers_end_to_end(
    db: Sessions, peer: str, headers: Headers, options: dict[str, Any], client: str
) -> None:
    """One case per feature recorded on every backend; the tables below run without a database."""
    assert recorded_source_ip_of(db, peer, headers, **options) == client


@pytest.mark.parametrize("forwarded_header", [XFF, FWD])
@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "1.2.3.4"},
        {"X-Forwarded-For": "1.2.3.4, 10.0.0.1"},
        {"Forwarded": "for=1.2.3.4"},
        {"Forwarded": 'for="[2001:db8::1]:443"', "X-Forwarded-For": "1.2.3.4"},
    ],
)
def test_spoofed_forwarded_headers_from_an_untrusted_peer_are_ignored(
    headers: dict[str, str], forwarded_header: str
) -> None:
    options = {"trusted_proxies": ["10.0.0.0/8"], "forwarded_header": forwarded_header}
    assert source_ip_of("203.0.113.5", headers, **options) == "203.0.113.5"


@pytest.mark.parametrize("forwarded_header", [XFF, FWD])
def test_forwarded_headers_are_ignored_by_default_even_from_private_peers(
    db: Sessions, forwarded_header: str
) -> None:
    app, _ = make_app(db, forwarded_header=forwarded_header)
    post_from(app, 1, "10.0.0.1", {"X-Forwarded-For": "198.51.100.7"})
    post_from(app, 2, "127.0.0.1", {"Forwarded": "for=198.51.100.7"})
    assert transaction_of(db, 1).source_ip == "10.0.0.1"
    assert transaction_of(db, 2).source_ip == "127.0.0.1"


@pytest.mark.parametrize(
    ("peer", "forwarded_header", "headers", "client"),
    [
        ("10.0.0.2", XFF, {XFF: "198.51.100.7"}, CLIENT),
        ("10.0.0.2", XFF, {XFF: "198.51.100.7, 10.0.0.1"}, CLIENT),
        # What the client itself wrote further left is never reached.
        ("10.0.0.2", XFF, {XFF: "6.6.6.6, 198.51.100.7, 10.0.0.1"}, CLIENT),
        ("10.0.0.2", XFF, {XFF: "198.51.100.7:5555, 10.0.0.1"}, CLIENT),
        ("::1", XFF, {XFF: "2001:db8::7, fd00::1"}, "2001:db8::7"),
        ("::ffff:10.0.0.2", XFF, {XFF: "::ffff:198.51.100.7"}, CLIENT),
        ("10.0.0.2", XFF, [(XFF, "6.6.6.6, 198.51.100.7"), (XFF, "10.0.0.1")], CLIENT),
        (
            "10.0.0.2",
            FWD,
            {FWD: 'for="[2001:db8::7]:4711";proto=https, for=10.0.0.1'},
            "2001:db8::7",
        ),
        ("10.0.0.2", FWD, [(FWD, "for=6.6.6.6, for=198.51.100.7"), (FWD, "for=10.0.0.1")], CLIENT),
        ("::1", FWD, {FWD: 'for=198.51.100.7;proto=https, for="[fd00::1]:80"'}, CLIENT),
        # An element without for= written by the client, left of our proxy's hop, does not matter.
        ("10.0.0.2", FWD, {FWD: "proto=http, for=198.51.100.7"}, CLIENT),
        # The header that is not configured is never read, whichever it is.
        ("10.0.0.2", FWD, {FWD: "for=198.51.100.9", XFF: "192.0.2.1"}, "198.51.100.9"),
        ("10.0.0.2", XFF, {FWD: "for=198.51.100.9", XFF: "192.0.2.1"}, "192.0.2.1"),
    ],
)
def test_a_chain_through_trusted_proxies_yields_the_client(
    peer: str, forwarded_header: str, headers: Headers, client: str
) -> None:
    options = {"trusted_proxies": PROXIES, "forwarded_header": forwarded_header}
    assert source_ip_of(peer, headers, **options) == client


@pytest.mark.parametrize("options", [{}, {"forwarded_header": XFF}], ids=["default", "explicit"])
@pytest.mark.parametrize(
    ("headers", "recorded"),
    [
        ({FWD: "for=6.6.6.6", XFF: "198.51.100.7"}, CLIENT),
        ({FWD: "for=10.0.0.9, for=6.6.6.6", XFF: "6.6.6.6, 198.51.100.7, 10.0.0.1"}, CLIENT),
        # Our proxy added no X-Forwarded-For: the client's Forwarded is still not believed.
        ({FWD: "for=6.6.6.6"}, "10.0.0.2"),
        ({FWD: "for=6.6.6.6", XFF: "unknown"}, "10.0.0.2"),
    ],
)
def test_default_setting_ignores_a_forwarded_header_sent_by_the_client(
    options: dict[str, str], headers: Headers, recorded: str
) -> None:
    """Our proxies maintain X-Forwarded-For; a Forwarded header can only come from the client."""
    assert source_ip_of("10.0.0.2", headers, trusted_proxies=["10.0.0.0/8"], **options) == (
        recorded
    )


@pytest.mark.parametrize(
    ("headers", "recorded"),
    [
        ({XFF: "6.6.6.6", FWD: "for=198.51.100.7"}, CLIENT),
        ({XFF: "6.6.6.6, 10.0.0.3", FWD: "for=203.0.113.9, for=10.0.0.1"}, "203.0.113.9"),
        # Our proxy added no Forwarded: the client's X-Forwarded-For is still not believed.
        ({XFF: "6.6.6.6"}, "10.0.0.2"),
        ({XFF: "6.6.6.6", FWD: "for=_hidden"}, "10.0.0.2"),
    ],
)
def test_forwarded_setting_ignores_x_forwarded_for(headers: Headers, recorded: str) -> None:
    options = {"trusted_proxies": ["10.0.0.0/8"], "forwarded_header": "Forwarded"}
    assert source_ip_of("10.0.0.2", headers, **options) == recorded


@pytest.mark.parametrize(
    ("value", "recorded"),
    [
        ("forwarded", CLIENT),
        ("FORWARDED", CLIENT),
        ("x-forwarded-for", "203.0.113.9"),
        ("X-FORWARDED-FOR", "203.0.113.9"),
    ],
)
def test_forwarded_header_option_is_case_insensitive(value: str, recorded: str) -> None:
    headers = {FWD: "for=198.51.100.7", XFF: "203.0.113.9"}
    options = {"trusted_proxies": ["10.0.0.0/8"], "forwarded_header": value}
    assert source_ip_of("10.0.0.2", headers, **options) == recorded


@pytest.mark.parametrize(
    ("peer", "trusted", "recorded"),
    [
        ("10.0.0.2", ["::ffff:10.0.0.0/104"], CLIENT),
        ("10.0.0.2", ["::ffff:10.0.0.2"], CLIENT),
        ("::ffff:10.0.0.2", ["::ffff:10.0.0.2"], CLIENT),
        ("10.1.0.1", ["::ffff:10.0.0.0/112"], "10.1.0.1"),  # outside the mapped network
    ],
)
def test_trusted_proxies_written_as_ipv4_mapped_ipv6_are_trusted(
    peer: str, trusted: list[str], recorded: str
) -> None:
    headers = {XFF: "6.6.6.6, 198.51.100.7"}
    assert source_ip_of(peer, headers, trusted_proxies=trusted) == recorded


@pytest.mark.parametrize("peer", ["10.0.0.2", "203.0.113.5"], ids=["trusted", "untrusted"])
@pytest.mark.parametrize(
    ("forwarded_header", "headers"),
    [
        (XFF, {XFF: "x" * 10_000 + ", 198.51.100.7"}),
        (XFF, {XFF: ", ".join(["6.6.6.6"] * 1000) + ", 198.51.100.7, 10.0.0.1"}),
        (XFF, [(XFF, "9" * 10_000), (XFF, "198.51.100.7")]),
        (FWD, {FWD: 'for="' + "x" * 10_000 + '", for=198.51.100.7;proto=https'}),
        (FWD, {FWD: "proto=http;" + "a=b;" * 3000 + ", for=198.51.100.7, for=10.0.0.1"}),
    ],
    ids=["xff-10kb", "xff-1000-hops", "xff-10kb-line", "forwarded-10kb", "forwarded-12kb-params"],
)
def test_huge_client_padding_left_of_the_proxy_hop_does_not_hide_the_client(
    peer: str, forwarded_header: str, headers: Headers
) -> None:
    """Only the tail is read: the hop our proxy appended on the right is still found, and an
    untrusted peer is still the peer."""
    options = {"trusted_proxies": ["10.0.0.0/8"], "forwarded_header": forwarded_header}
    expected = CLIENT if peer == "10.0.0.2" else peer
    assert source_ip_of(peer, headers, **options) == expected


@pytest.mark.parametrize(
    ("headers", "recorded"),
    [
        ({XFF: "garbage"}, "10.0.0.2"),
        ({XFF: "unknown"}, "10.0.0.2"),
        ({XFF: ""}, "10.0.0.2"),
        ({XFF: ",,, ,"}, "10.0.0.2"),
        ({XFF: "999.1.1.1"}, "10.0.0.2"),
        ({XFF: "1.2.3.4.5"}, "10.0.0.2"),
        ({XFF: "fe80::1%eth0"}, "10.0.0.2"),
        ({XFF: "[2001:db8::1"}, "10.0.0.2"),
        ({XFF: "' OR 1=1 --"}, "10.0.0.2"),
        # A malformed hop stops the walk at the last address that could be verified.
        ({XFF: "198.51.100.7, garbage, 10.0.0.1"}, "10.0.0.1"),
        ({FWD: "for=_hidden"}, "10.0.0.2"),
        ({FWD: "proto=https"}, "10.0.0.2"),
        ({FWD: "for=198.51.100.7, proto=https"}, "10.0.0.2"),
        ({FWD: "for=unknown, for=10.0.0.1"}, "10.0.0.1"),
        ({FWD: 'for="'}, "10.0.0.2"),
        # One entry longer than the tail that is read: cut, so it cannot be verified.
        ({XFF: "198.51.100.7" + " " * 5000}, "10.0.0.2"),
        ({FWD: "for=198.51.100.7;" + "x" * 5000}, "10.0.0.2"),
        # A long trusted chain is read from its tail: the client on the right end is found.
        ({XFF: "6.6.6.6, " * 500 + "198.51.100.7, 10.0.0.1"}, CLIENT),
        # Too many hops: the walk stops within the trusted proxies, never at the far left.
        ({XFF: "198.51.100.7, " + ", ".join(["10.0.0.1"] * 40)}, "10.0.0.1"),
    ],
)
def test_garbage_and_oversized_forwarded_headers_never_produce_a_bogus_ip(
    headers: dict[str, str], recorded: str
) -> None:
    """Each case runs with ``forwarded_header`` set to the header it sends."""
    (header,) = headers
    options = {"trusted_proxies": ["10.0.0.0/8"], "forwarded_header": header}
    assert source_ip_of("10.0.0.2", headers, **options) == recorded


@pytest.mark.parametrize(
    ("forwarded_header", "headers"),
    [
        (XFF, {XFF: "6.6.6.6, " + "1" * 5000 + ", 10.0.0.1"}),
        (XFF, [(XFF, "6.6.6.6"), (XFF, "1" * 5000), (XFF, "10.0.0.1")]),
        (FWD, {FWD: "for=6.6.6.6, for=10.0.0.3;x=" + "y" * 5000 + ", for=10.0.0.1"}),
        (FWD, [(FWD, "for=6.6.6.6"), (FWD, "for=10.0.0.3;x=" + "y" * 5000), (FWD, "for=10.0.0.1")]),
    ],
    ids=["xff-one-line", "xff-three-lines", "forwarded-one-line", "forwarded-three-lines"],
)
def test_an_entry_cut_by_the_length_limit_stops_the_walk(
    forwarded_header: str, headers: Headers
) -> None:
    """An entry only partly read is unverifiable, like garbage: the walk stops at the last
    verified hop, whether the proxies joined the header into one line or sent several (the same
    header either way), and never reaches what lies further left."""
    options = {"trusted_proxies": ["10.0.0.0/8"], "forwarded_header": forwarded_header}
    assert source_ip_of("10.0.0.2", headers, **options) == "10.0.0.1"


@pytest.mark.parametrize("peer", ["", "unix:/run/app.sock", "not-an-ip"])
def test_a_peer_without_an_ip_address_records_no_source_ip(db: Sessions, peer: str) -> None:
    app, _ = make_app(db, trusted_proxies=["10.0.0.0/8"], actor=header_actor)
    response = post_from(app, 1, peer, {"X-User": "kim", "X-Forwarded-For": "198.51.100.7"})
    assert who(transaction_of(db, 1)) == ("kim", None, response.headers["X-Request-ID"])


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"actor": "alice"},
        {"actor": 42},
        {"trusted_proxies": "10.0.0.1"},
        {"trusted_proxies": ["10.0.0.0/33"]},
        {"trusted_proxies": ["proxy.internal"]},
        {"trusted_proxies": ["10.0.0.1", None]},
        {"request_id_header": ""},
        {"request_id_header": "X Request ID"},
        {"request_id_header": "X-Request-ID\r\nSet-Cookie:a=b"},
        {"request_id_header": "X:Request-ID"},
        {"request_id_header": "X-R\u00e9quest-ID"},
        {"request_id_header": 42},
        {"request_id_max_length": 0},
        {"request_id_max_length": -1},
        {"request_id_max_length": 129},
        {"request_id_max_length": "64"},
        {"forwarded_header": "X-Real-IP"},
        {"forwarded_header": ""},
        {"forwarded_header": None},
        {"forwarded_header": "X-Forwarded-For, Forwarded"},
        {"forwarded_header": ("Forwarded",)},
        {"forwarded_header": "Forwarded "},
        {"forwarded_header": "X-Forwarded-Host"},
        {"trust_request_id": "sometimes"},
        {"trust_request_id": None},
        {"trust_request_id": False},
    ],
    ids=repr,
)
@pytest.mark.parametrize("form", ["app", "init_app"])
def test_bad_configuration_raises_at_construction(options: dict[str, Any], form: str) -> None:
    app = Flask(__name__)

    def construct() -> VersioningAudit:
        return VersioningAudit(app, **options) if form == "app" else VersioningAudit(**options)

    with pytest.raises(ConfigurationError):
        construct()
    assert "versioning" not in app.extensions
    assert not app.before_request_funcs
    assert not app.teardown_request_funcs
    assert getattr(app.wsgi_app, "__func__", None) is Flask.wsgi_app  # not wrapped


# --- concurrency --------------------------------------------------------------------------------


def test_concurrent_requests_each_record_their_own_actor(
    db: Sessions, queued_engine: sa.Engine
) -> None:
    threads, rounds = 20, 2
    # The writes queue for SQLite's one writer (see queued_engine); the reads use ``db``.
    writers: Sessions = functools.partial(Session, queued_engine)
    barrier = threading.Barrier(threads, timeout=30)
    app = Flask(__name__)
    app.testing = True
    VersioningAudit(app, actor=header_actor, trust_request_id="always")

    @app.post("/items/<int:item_id>")
    def create_item(item_id: int) -> dict[str, Any]:
        late = request.headers.get("X-Late-User")
        if late is not None:
            set_actor(late)  # odd workers learn their user inside the view
        # Every request of the round is inside its view, its context open, before any writes.
        barrier.wait()
        before_write = context_fields()
        write_item(writers, item_id, f"by {before_write['actor']}")
        return before_write

    def worker(number: int) -> list[tuple[int, dict[str, Any], str]]:
        client = app.test_client()
        user = f"user-{number}"
        header = "X-Late-User" if number % 2 else "X-User"
        done = []
        for round_ in range(rounds):
            item_id = number * rounds + round_ + 1
            response = client.post(
                f"/items/{item_id}",
                headers={header: user},
                environ_base={"REMOTE_ADDR": f"10.1.0.{number}"},
            )
            assert response.status_code == 200
            assert response.json is not None
            done.append((item_id, response.json, response.headers["X-Request-ID"]))
        return done

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker, number) for number in range(threads)]
        results = [future.result(timeout=120) for future in futures]

    request_ids = set()
    for number, done in enumerate(results):
        expected_actor, expected_ip = f"user-{number}", f"10.1.0.{number}"
        for item_id, seen, rid in done:
            assert seen == {"actor": expected_actor, "source_ip": expected_ip, "request_id": rid}
            assert who(transaction_of(db, item_id)) == (expected_actor, expected_ip, rid)
            request_ids.add(rid)
    assert len(request_ids) == threads * rounds
