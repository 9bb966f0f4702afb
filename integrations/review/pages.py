"""The review pages, framework-free: from checked query parameters to rendered HTML.

:class:`Review` holds the app's settings (checked when the app is built) and renders each page
with a session of its own from the application's ``sessionmaker``, read-only (rolled back and
closed after the page, never committed) except :meth:`Review.restore`. The Starlette app
(:mod:`versioning.integrations.review.asgi`) and the Flask blueprint
(:func:`versioning.integrations.flask.review_blueprint`) only ask ``authorize``, pass the query
parameters in and send the :class:`Page` back with :data:`SECURITY_HEADERS`.

What is shown is read with the library's public readers (:func:`versioning.searching.entries`,
the event log, :func:`versioning.as_of`, :func:`versioning.digest`, :func:`versioning.verify`):
masked values are their mask's output there and erased values are marked, never shown.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import sqlalchemy as sa
from sqlalchemy.orm import Session

from versioning.activity import activity
from versioning.catalog import Catalog, TableEntry, from_session, load
from versioning.context import audit_context
from versioning.declaration import Versioned
from versioning.errors import CatalogError, ConfigurationError, VersioningError
from versioning.event_log import Event
from versioning.exporting import CsvWriter, JsonLinesWriter, plain, record_text
from versioning.integrations.review import csrf
from versioning.integrations.review.query import (
    BadParameter,
    Cursor,
    Filters,
    parse_filters,
    parse_key,
    parse_moment,
)
from versioning.integrity import digest, verify
from versioning.operation import Operation
from versioning.reading import Transaction, as_of, history
from versioning.restoring import _constraint, restore
from versioning.searching import Entry, entries

__all__ = ["SECURITY_HEADERS", "Page", "Review"]

#: Sent with every page: no script at all, styles from the app's own CSS file only.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

_log = logging.getLogger("versioning")

#: The actions ``authorize(request, action)`` is asked about.
ACTIONS = ("view", "export", "restore")
#: Most versions a record page lists (its timeline), oldest first.
TIMELINE_LIMIT = 500

_HERE = Path(__file__).parent
CSS = (_HERE / "static" / "review.css").read_bytes()


@dataclass
class Page:
    """A response: HTML (``body``) or a stream of bytes (``stream``), with its status."""

    status: int
    body: str = ""
    content_type: str = "text/html; charset=utf-8"
    stream: Iterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Where to send the browser (a 303 after a restore).
    location: str | None = None
    #: Called once the stream is done with, read to its end or not (a client gone mid-export):
    #: releases what it holds (its session). Safe to call more than once.
    on_close: Callable[[], None] | None = None


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["moment"] = _moment
    return env


def _moment(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def shown(value: Any) -> str:
    """A recorded value as text on the page (escaped by the template)."""
    if value is None:
        return "∅"
    if isinstance(value, str):
        return value
    made = plain(value)
    if isinstance(made, str):
        return made
    return json.dumps(made, ensure_ascii=False)


@dataclass
class Change:
    field: str
    old: str
    new: str
    erased: bool = False
    old_missing: bool = False
    new_missing: bool = False


@dataclass
class Item:
    """One row of a list: a version (``entry``) or an event."""

    kind: str  # "version" or "event"
    transaction: Transaction
    table: str = ""
    record: str = ""
    operation: str = ""
    version_id: int = 0
    changes: list[Change] = field(default_factory=list)
    action: str = ""
    outcome: str = ""
    target: str = ""
    details: str = ""


@dataclass
class Group:
    transaction: Transaction
    items: list[Item]


def _item(found: Entry | Event) -> Item:
    if isinstance(found, Event):
        return Item(
            "event",
            found.transaction,
            action=found.action,
            outcome=found.outcome,
            target=found.target or "",
            details="" if found.details is None else shown(dict(found.details)),
        )
    changes = []
    inserted = found.operation is Operation.INSERT
    deleted = found.operation is Operation.DELETE
    for name, (old, new) in found.changes.items():
        gone = name in found.erased
        changes.append(
            Change(
                name,
                "[erased]" if gone else shown(old),
                "[erased]" if gone else shown(new),
                erased=gone,
                old_missing=inserted,
                new_missing=deleted,
            )
        )
    if inserted or deleted:  # an erased value was there (its change is not listed: it is None)
        for name in sorted(found.erased - set(found.changes)):
            changes.append(
                Change(
                    name, "[erased]", "[erased]", True, old_missing=inserted, new_missing=deleted
                )
            )
    return Item(
        "version",
        found.transaction,
        table=found.table,
        record=record_text(found.key),
        operation=found.operation.value,
        version_id=found.version_id,
        changes=changes,
    )


def _groups(items: list[Item]) -> list[Group]:
    out: list[Group] = []
    for item in items:
        if out and out[-1].transaction.id == item.transaction.id:
            out[-1].items.append(item)
        else:
            out.append(Group(item.transaction, [item]))
    return out


def _logged(what: str, exc: BaseException) -> None:
    """Log an error that is not the library's: its class and where it was raised, never its
    message (a database's message may quote a record's values, masked ones included)."""
    where = "".join(
        f"\n  {frame.filename}:{frame.lineno} in {frame.name}"
        for frame in traceback.extract_tb(exc.__traceback__)
    )
    _log.error("versioning review page: %s failed with %s%s", what, type(exc).__name__, where)


def _first_linked(connection: sa.Connection, catalog: Catalog, newest: Any) -> int | None:
    """The first transaction the newest seal links (its entry at position 0: an index probe)."""
    entries = catalog.seal_entries
    found = connection.execute(
        sa.select(entries.c.transaction_id)
        .where(entries.c.seal_id == newest.seal_id)
        .order_by(entries.c.position)
        .limit(1)
    ).scalar()
    return None if found is None else int(found)


def _unsealed(connection: sa.Connection, catalog: Catalog, since: int | None) -> int:
    """How many transactions from ``since`` on (all without) have a digest no seal links: a
    range of the digest table's primary key, each probed in the seal entries' primary key. From
    the newest seal's first transaction on, what it reads is about what was written since the
    seal before it, whatever the size of history."""
    digests, entries = catalog.digests, catalog.seal_entries
    query = (
        sa.select(sa.func.count(sa.distinct(digests.c.transaction_id)))
        .select_from(digests)
        .outerjoin(
            entries,
            sa.and_(
                entries.c.transaction_id == digests.c.transaction_id,
                entries.c.segment == digests.c.segment,
            ),
        )
        .where(entries.c.transaction_id.is_(None))
    )
    if since is not None:
        query = query.where(digests.c.transaction_id >= since)
    return int(connection.execute(query).scalar_one())


def _bound(params: Mapping[str, str], name: str, *, end: bool = False) -> int | dt.datetime | None:
    """A verify range's end as typed: a transaction id, or a moment (see
    :func:`~versioning.integrations.review.query.parse_moment`)."""
    text = (params.get(name) or "").strip()
    if not text:
        return None
    if text.isdigit() and len(text) <= 19:
        return int(text)
    return parse_moment(name, text, end=end)


class Review:
    """The review pages of one app: its settings, and a method per page.

    ``authorize(request, action)`` is required; with ``allow_restore=True`` so are ``secret``
    (signs the CSRF token) and ``actor`` (``actor(request)`` names the reviewer recorded as the
    restore's actor). ``metadata`` chooses the models' ``MetaData`` when several transaction
    tables exist; without models in the process, the database's registry is read.
    """

    def __init__(
        self,
        sessionmaker: Callable[[], Session],
        *,
        authorize: Any,
        allow_restore: bool = False,
        page_size: int = 50,
        title: str = "History",
        secret: str | bytes | None = None,
        actor: Callable[[Any], str] | None = None,
        metadata: sa.MetaData | None = None,
        where: str = "review_app",
    ) -> None:
        if not callable(sessionmaker):
            raise TypeError(
                f"{where}() takes the application's sessionmaker first (a callable returning a "
                f"Session), got {sessionmaker!r}"
            )
        if not callable(authorize):
            raise ConfigurationError(
                f"{where}() needs authorize=: a callable authorize(request, action) -> bool, "
                f"asked for every request with action 'view', 'export' or 'restore' (the page is "
                f"never served without one); got {authorize!r}"
            )
        if not isinstance(allow_restore, bool):
            raise TypeError(f"{where}(): allow_restore must be True or False")
        if (
            isinstance(page_size, bool)
            or not isinstance(page_size, int)
            or not 1 <= page_size <= 200
        ):
            raise TypeError(f"{where}(): page_size must be an int from 1 to 200, got {page_size!r}")
        self.secret = b""
        if allow_restore:
            self.secret = csrf.check_secret(secret)
            if not callable(actor):
                raise ConfigurationError(
                    f"{where}(allow_restore=True) needs actor=: a callable actor(request) -> str "
                    f"naming the reviewer, recorded as the restore's actor"
                )
        self.sessionmaker = sessionmaker
        self.authorize = authorize
        self.allow_restore = allow_restore
        self.page_size = page_size
        self.title = title
        self.actor = actor
        self.metadata = metadata
        self.templates = _environment()
        self._catalog: Catalog | None = None

    # --- plumbing ---------------------------------------------------------------------------

    def _session(self) -> Session:
        return self.sessionmaker()

    def catalog(self, session: Session) -> Catalog:
        """The history tables shown: the models' (in-process), else the database's registry;
        read once."""
        if self._catalog is None:
            try:
                self._catalog = from_session(session, metadata=self.metadata)
            except CatalogError:
                self._catalog = load(session.connection())
        return self._catalog

    def _connection(self, session: Session, catalog: Catalog) -> sa.Connection:
        models = [entry.model for entry in catalog.tables if entry.model is not None]
        return session.connection(bind_arguments={"mapper": models[0]} if models else None)

    def render(self, template: str, base: str, status: int = 200, **values: Any) -> Page:
        body = self.templates.get_template(template).render(
            title=self.title, base=base, allow_restore=self.allow_restore, **values
        )
        return Page(status, body)

    def error(self, base: str, status: int, heading: str, message: str) -> Page:
        return self.render("error.html", base, status, heading=heading, message=message)

    def bad(self, base: str, problem: BadParameter) -> Page:
        return self.render(
            "error.html",
            base,
            400,
            heading=f"The field {problem.field} cannot be used",
            message=f"{problem.field}={problem.value!r}: {problem.fix}",
        )

    def refused(self, base: str, action: str) -> Page:
        return self.error(
            base, 403, "Not allowed", f"You are not allowed to {action} this history."
        )

    def _read(self, base: str, work: Callable[[Session], Page]) -> Page:
        session = self._session()
        try:
            return work(session)
        except BadParameter as problem:
            return self.bad(base, problem)
        except VersioningError as exc:  # a filter the library refuses (e.g. before the horizon)
            return self.error(base, 400, "This cannot be shown", str(exc))
        except Exception as exc:  # the database or the application: a page, not a traceback
            _logged("a page", exc)
            return self.unexpected(base)
        finally:
            session.rollback()
            session.close()

    def unexpected(self, base: str) -> Page:
        return self.error(
            base,
            500,
            "Something went wrong",
            "The page could not be shown because of an error in the database or the application "
            "(it was logged). Nothing was changed; try again later.",
        )

    def _table(self, catalog: Catalog, name: str) -> TableEntry:
        try:
            return catalog.entry(name)
        except CatalogError:
            known = ", ".join(sorted(entry.live for entry in catalog.tables)) or "none"
            raise BadParameter("table", name, f"choose a versioned table: {known}") from None

    def _key(self, info: TableEntry, text: str) -> tuple[Any, ...]:
        types: list[type | None] = []
        for name in info.primary_key:
            try:
                types.append(info.history.c[name].type.python_type)
            except NotImplementedError:
                types.append(None)
        return parse_key(text, info.primary_key, tuple(types))

    # --- activity ---------------------------------------------------------------------------

    def activity(self, params: Mapping[str, str], base: str) -> Page:
        def work(session: Session) -> Page:
            filters = parse_filters(params, page_size=self.page_size)
            catalog = self.catalog(session)
            found, more = self._page(session, catalog, filters)
            items = [_item(item) for item in found]
            next_query = None
            if more and found:
                last = found[-1]
                cursor = (
                    Cursor(last.transaction_id, event_id=last.id)
                    if isinstance(last, Event)
                    else Cursor(last.transaction_id, last.history, version_id=last.version_id)
                )
                next_query = filters.query(after=cursor)
            return self.render(
                "activity.html",
                base,
                groups=_groups(items),
                form=filters.form(),
                tables=sorted(entry.live for entry in catalog.tables),
                next_query=next_query,
                first_query=filters.query(after=None) if filters.after is not None else None,
                export_query=filters.query(after=None, size=None),
            )

        return self._read(base, work)

    def _page(
        self, session: Session, catalog: Catalog, filters: Filters
    ) -> tuple[list[Entry | Event], bool]:
        """One page of versions and events, newest first, after ``filters.after``; whether
        more follow."""
        wanted = filters.size + 1
        given = filters.search()
        if filters.table is not None:
            info = self._table(catalog, filters.table)
            given["table"] = info.history.fullname
            if filters.key is not None:
                given["key"] = self._key(info, filters.key)
        found = list(
            activity(
                self._connection(session, catalog),
                catalog,
                newest_first=True,
                limit=wanted,
                chunk=wanted,
                after=None if filters.after is None else filters.after.key(),
                **given,
            )
        )
        return found[: filters.size], len(found) > filters.size

    # --- one transaction --------------------------------------------------------------------

    def transaction(self, transaction_id: str, base: str) -> Page:
        def work(session: Session) -> Page:
            if not transaction_id.isdigit() or len(transaction_id) > 19:
                raise BadParameter("transaction", transaction_id, "a transaction id is a number")
            number = int(transaction_id)
            catalog = self.catalog(session)
            found = list(activity(session, catalog, transaction_id=number))
            if not found:
                return self.error(
                    base,
                    404,
                    "No such transaction",
                    f"No change or event has transaction id {number}.",
                )
            items = [_item(item) for item in found]
            return self.render("transaction.html", base, group=_groups(items)[0])

        return self._read(base, work)

    # --- one record -------------------------------------------------------------------------

    def record(self, params: Mapping[str, str], base: str, csrf_cookie: str | None) -> Page:
        def work(session: Session) -> Page:
            table_name = params.get("table") or ""
            key_text = params.get("key") or ""
            if not table_name:
                raise BadParameter("table", table_name, "a record page needs table= and key=")
            if not key_text:
                raise BadParameter("key", key_text, "a record page needs table= and key=")
            catalog = self.catalog(session)
            info = self._table(catalog, table_name)
            key = self._key(info, key_text)
            connection = self._connection(session, catalog)
            timeline = list(
                entries(
                    connection,
                    catalog,
                    table=info.history.fullname,
                    key=key,
                    newest_first=False,
                    limit=TIMELINE_LIMIT,
                )
            )
            if not timeline:
                return self.error(
                    base,
                    404,
                    "No history for this record",
                    f"No version of {info.live} {record_text(key)} was recorded.",
                )
            at_text = (params.get("at") or "").strip()
            at = None if not at_text else parse_moment("at", at_text)
            then = self._as_it_was(session, catalog, info, key, at, timeline) if at else None
            restorable = self.allow_restore and info.model is not None and info.kind == "model"
            token = csrf.token(self.secret, csrf_cookie) if restorable and csrf_cookie else ""
            return self.render(
                "record.html",
                base,
                table=info.live,
                record=record_text(key),
                timeline=[_item(entry) for entry in timeline],
                truncated=len(timeline) == TIMELINE_LIMIT,
                at=at,
                at_text=at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") if at else "",
                then=then,
                restorable=restorable,
                csrf_token=token,
            )

        return self._read(base, work)

    def _as_it_was(
        self,
        session: Session,
        catalog: Catalog,
        info: TableEntry,
        key: tuple[Any, ...],
        at: dt.datetime,
        timeline: list[Entry],
    ) -> dict[str, Any]:
        """The record at ``at``: its fields and, where the model is known, its related versioned
        records as of the same moment (from the registry alone: the snapshot row)."""
        if info.model is None or info.kind != "model":
            before = [e for e in timeline if e.transaction.issued_at.astimezone(dt.UTC) <= at]
            if not before or before[-1].operation is Operation.DELETE:
                return {"exists": False, "fields": [], "related": []}
            last = before[-1]
            fields = [
                Change(n, "[erased]" if n in last.erased else shown(v), "", n in last.erased)
                for n, v in last.state.items()
            ]
            return {"exists": True, "fields": fields, "related": [], "models": False}
        instance = as_of(session, info.model, key if len(key) > 1 else key[0], at)
        if instance is None:
            return {"exists": False, "fields": [], "related": []}
        # Values erased from the version read: marked, not shown as empty.
        before = [e for e in timeline if e.transaction.issued_at.astimezone(dt.UTC) <= at]
        erased = before[-1].erased if before else frozenset()
        fields = [
            Change(column, "[erased]", "", True)
            if column in erased
            else Change(column, shown(getattr(instance, attribute)), "")
            for attribute, column in info.attributes.items()
        ]
        related: list[dict[str, Any]] = []
        mapper = sa.inspect(type(instance))
        for relationship in mapper.relationships:
            target = relationship.mapper.class_
            if not issubclass(target, Versioned):
                continue
            try:
                value = getattr(instance, relationship.key)
            except VersioningError as exc:
                related.append({"name": relationship.key, "problem": str(exc), "records": []})
                continue
            values = list(value) if relationship.uselist else ([] if value is None else [value])
            records = []
            for other in values:
                entry = next(
                    (
                        e
                        for e in catalog.tables
                        if e.model is not None and isinstance(other, e.model)
                    ),
                    None,
                )
                other_key = relationship.mapper.primary_key_from_instance(other)
                records.append(
                    {
                        "table": entry.live if entry is not None else target.__tablename__,
                        "record": record_text(tuple(other_key)),
                        "label": f"{type(other).__name__} {record_text(tuple(other_key))}",
                    }
                )
            related.append({"name": relationship.key, "problem": None, "records": records})
        return {"exists": True, "fields": fields, "related": related, "models": True}

    # --- integrity --------------------------------------------------------------------------

    def integrity(self, params: Mapping[str, str], base: str) -> Page:
        def work(session: Session) -> Page:
            catalog = self.catalog(session)
            connection = self._connection(session, catalog)
            newest = digest(connection, catalog=catalog)
            counted_from = None if newest is None else _first_linked(connection, catalog, newest)
            unsealed = _unsealed(connection, catalog, counted_from)
            report = problem = None
            since, until = (_bound(params, "since"), _bound(params, "until", end=True))
            if params.get("verify"):
                try:
                    report = verify(connection, catalog=catalog, since=since, until=until)
                except VersioningError as exc:
                    problem = str(exc)
            return self.render(
                "integrity.html",
                base,
                newest=newest,
                unsealed=unsealed,
                counted_from=counted_from,
                report=report,
                problem=problem,
                form={name: (params.get(name) or "").strip() for name in ("since", "until")},
            )

        return self._read(base, work)

    def digest_json(self, base: str) -> Page:
        def work(session: Session) -> Page:
            catalog = self.catalog(session)
            newest = digest(self._connection(session, catalog), catalog=catalog)
            if newest is None:
                return self.error(base, 404, "Nothing sealed yet", "No seal exists yet.")
            return Page(
                200,
                newest.to_json(),
                content_type="application/json",
                headers={"Content-Disposition": 'attachment; filename="digest.json"'},
            )

        return self._read(base, work)

    # --- export -----------------------------------------------------------------------------

    def export(self, params: Mapping[str, str], base: str) -> Page:
        """CSV or JSON Lines of the activity filter, oldest first, streamed (a session of its
        own, closed when the stream ends or is dropped)."""
        kind = params.get("format", "csv")
        if kind not in ("csv", "jsonl"):
            return self.bad(base, BadParameter("format", kind, "choose csv or jsonl"))
        session = self._session()
        try:
            filters = parse_filters(params, page_size=self.page_size)
            catalog = self.catalog(session)
            given = filters.search()
            if filters.table is not None:
                info = self._table(catalog, filters.table)
                given["table"] = info.history.fullname
                if filters.key is not None:
                    given["key"] = self._key(info, filters.key)
            found = activity(self._connection(session, catalog), catalog, **given)
        except BadParameter as problem:
            session.close()
            return self.bad(base, problem)
        except VersioningError as exc:
            session.close()
            return self.error(base, 400, "This cannot be exported", str(exc))
        except Exception as exc:
            session.close()
            _logged("an export", exc)
            return self.unexpected(base)
        except BaseException:
            session.close()
            raise

        def finish() -> None:
            session.rollback()
            session.close()

        def chunks() -> Iterator[bytes]:
            buffer = io.StringIO()
            writer = CsvWriter(buffer) if kind == "csv" else JsonLinesWriter(buffer)
            try:
                for item in found:
                    if isinstance(item, Event):
                        writer.event(item)
                    else:
                        writer.version(item)
                    if buffer.tell() > 65536:
                        yield buffer.getvalue().encode("utf-8")
                        buffer.seek(0)
                        buffer.truncate()
                yield buffer.getvalue().encode("utf-8")
            finally:
                finish()

        media = "text/csv; charset=utf-8" if kind == "csv" else "application/x-ndjson"
        return Page(
            200,
            content_type=media,
            stream=chunks(),
            headers={"Content-Disposition": f'attachment; filename="history.{kind}"'},
            on_close=finish,
        )

    # --- restore ----------------------------------------------------------------------------

    def restore(
        self,
        form: Mapping[str, str],
        base: str,
        request: Any,
        csrf_cookie: str | None,
    ) -> Page:
        """Restore a record to one of its versions (``allow_restore=True``): a checked CSRF
        token and a reason are required; the reviewer is the actor."""
        if not self.allow_restore or self.actor is None:
            return self.error(base, 404, "Not found", "Restoring is not enabled on this page.")
        if not csrf.valid(self.secret, csrf_cookie, form.get("csrf")):
            return self.error(
                base,
                403,
                "The form has expired",
                "The restore form's security token is missing or wrong: open the record page "
                "again and resubmit.",
            )
        reason = (form.get("reason") or "").strip()
        if not reason:
            return self.bad(
                base, BadParameter("reason", "", "say why you restore this version (required)")
            )
        table_name, key_text = form.get("table") or "", form.get("key") or ""
        version_text = form.get("version") or ""
        session = self._session()
        try:
            if not version_text.isdigit():
                raise BadParameter("version", version_text, "restore a version of the timeline")
            catalog = self.catalog(session)
            info = self._table(catalog, table_name)
            key = self._key(info, key_text)
            if info.model is None or info.kind != "model":
                raise BadParameter(
                    "table", table_name, "records of this table cannot be restored here"
                )
            chosen = [
                version
                for version in history(session, info.model, key if len(key) > 1 else key[0])
                if version.version_id == int(version_text)
            ]
            if not chosen:
                raise BadParameter("version", version_text, "restore a version of the timeline")
            with audit_context(actor=self.actor(request), reason=reason):
                restore(session, chosen[0])
                session.commit()
        except BadParameter as problem:
            session.rollback()
            return self.bad(base, problem)
        except VersioningError as exc:
            session.rollback()
            return self.error(base, 409, "The record could not be restored", str(exc))
        except sa.exc.IntegrityError as exc:  # e.g. a deferred constraint, checked at commit
            session.rollback()
            _logged(f"restoring {table_name} {key_text} (violating {_constraint(exc)})", exc)
            return self.error(
                base,
                409,
                "The record could not be restored",
                f"The database refused the restore: it violates {_constraint(exc)}. Nothing was "
                f"changed. Resolve the conflict (see the record's current state) and try again.",
            )
        except Exception as exc:
            session.rollback()
            _logged(f"restoring {table_name} {key_text}", exc)
            return self.error(
                base,
                500,
                "The record could not be restored",
                "An error in the database or the application stopped the restore (it was "
                "logged). Nothing was changed; try again later.",
            )
        finally:
            session.close()
        where = urlencode({"table": table_name, "key": key_text})
        return Page(303, location=f"{base}/record?{where}")
