"""Who, from where, which request and why: the audit context, carried in a ``ContextVar``.

``audit_context(...)`` opens a *frame* for the duration of a ``with`` block or a decorated call.
Frames nest: an inner frame overrides the outer one field by field; ``extra`` is merged by key.
Because a frame lives in a ``ContextVar``, threads and asyncio tasks each see their own, and a task
started inside a frame sees that frame. :func:`set_actor` fills in the actor of the innermost frame
for code that learns it late (after authentication); since the frame object is shared by everything
started inside it, the actor becomes visible to the whole request, including worker threads.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType, TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from versioning.errors import ContextError

__all__ = ["AuditContext", "audit_context", "current_context", "set_actor"]

#: A callable giving the actor when it is needed (the first versioned flush), e.g. from a request.
ActorSource = Callable[[], "str | int | None"]

P = ParamSpec("P")
R = TypeVar("R")

#: Longest accepted values, matching the columns of the transaction table.
MAX_ACTOR = 255
MAX_REQUEST_ID = 128
MAX_SOURCE_IP = 45
#: MariaDB's ``TEXT`` holds 65,535 bytes; the limit applies on every backend alike.
MAX_REASON_BYTES = 65_535


_UNRESOLVED: Any = object()


class AuditContext:
    """The audit values in force at one moment (see :func:`current_context`). Immutable.

    :func:`current_context` asks a callable actor at once; the value a ``with audit_context()``
    block returns asks it only when ``actor`` is read, and then once.
    """

    __slots__ = ("_actor", "_actor_source", "extra", "reason", "request_id", "source_ip")

    _actor: str | None
    _actor_source: Callable[[], str | None] | None
    source_ip: str | None
    request_id: str | None
    reason: str | None
    extra: Mapping[str, Any]

    def __init__(
        self,
        actor: str | None = None,
        source_ip: str | None = None,
        request_id: str | None = None,
        reason: str | None = None,
        extra: Mapping[str, Any] | None = None,
        *,
        actor_source: Callable[[], str | None] | None = None,
    ) -> None:
        put = object.__setattr__
        put(self, "_actor", actor if actor_source is None else _UNRESOLVED)
        put(self, "_actor_source", actor_source)
        put(self, "source_ip", source_ip)
        put(self, "request_id", request_id)
        put(self, "reason", reason)
        put(self, "extra", MappingProxyType(dict(extra or {})))

    @property
    def actor(self) -> str | None:
        """Who acts: a user name or id (as text), or ``None``."""
        if self._actor is _UNRESOLVED:
            assert self._actor_source is not None
            object.__setattr__(self, "_actor", self._actor_source())
            object.__setattr__(self, "_actor_source", None)
        return self._actor

    def __setattr__(self, name: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return (self.actor, self.source_ip, self.request_id, self.reason, dict(self.extra))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuditContext):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        values = self._values()
        # extra may hold lists and dicts (JSON): hash its canonical JSON text.
        return hash((*values[:4], json.dumps(values[4], sort_keys=True, default=repr)))

    def __repr__(self) -> str:
        actor = "<not asked yet>" if self._actor is _UNRESOLVED else repr(self._actor)
        return (
            f"AuditContext(actor={actor}, source_ip={self.source_ip!r}, "
            f"request_id={self.request_id!r}, reason={self.reason!r}, extra={dict(self.extra)!r})"
        )


class _Frame:
    """One ``audit_context`` scope. Mutable only through :func:`set_actor`."""

    __slots__ = (
        "actor",
        "actor_source",
        "extra",
        "owner",
        "parent",
        "reason",
        "request_id",
        "source_ip",
    )

    def __init__(
        self,
        owner: object,
        parent: _Frame | None,
        actor: str | None,
        actor_source: ActorSource | None,
        source_ip: str | None,
        request_id: str | None,
        reason: str | None,
        extra: dict[str, Any],
    ) -> None:
        self.owner = owner
        self.parent = parent
        self.actor = actor
        self.actor_source = actor_source
        self.source_ip = source_ip
        self.request_id = request_id
        self.reason = reason
        self.extra = extra

    def find_actor(self) -> str | None:
        """The actor from this frame outwards, asking callables as it goes."""
        frame: _Frame | None = self
        while frame is not None:
            if frame.actor is not None:
                return frame.actor
            if frame.actor_source is not None:
                actor = _check_actor(frame.actor_source(), frame.actor_source)
                if actor is not None:
                    return actor
            frame = frame.parent
        return None

    def resolve(self, lazy: bool = False) -> AuditContext:
        """The values in force; with ``lazy``, a callable actor is asked only when read."""
        source_ip = request_id = reason = None
        extras: list[dict[str, Any]] = []
        deferred = False
        frame: _Frame | None = self
        while frame is not None:
            deferred = deferred or (lazy and frame.actor_source is not None)
            source_ip = source_ip if source_ip is not None else frame.source_ip
            request_id = request_id if request_id is not None else frame.request_id
            reason = reason if reason is not None else frame.reason
            if frame.extra:
                extras.append(frame.extra)
            frame = frame.parent
        merged: dict[str, Any] = {}
        for extra in reversed(extras):
            merged.update(extra)
        if deferred:
            return AuditContext(
                None, source_ip, request_id, reason, merged, actor_source=self.find_actor
            )
        return AuditContext(self.find_actor(), source_ip, request_id, reason, merged)


_current: ContextVar[_Frame | None] = ContextVar("versioning_audit_context", default=None)


# Control characters (C0, DEL, C1), the Unicode line and paragraph separators (they break log
# lines) and lone surrogates (they cannot be encoded, so the driver would fail at commit).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# In a reason, tab, line feed and carriage return are text.
_REASON_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# Inside ``extra``: NUL (PostgreSQL's ``jsonb`` and text functions refuse ``\u0000``, so the
# stored document could not be queried there) and lone surrogates.
_JSON_FORBIDDEN = re.compile("[\x00\ud800-\udfff]")
# An IPv6 zone (RFC 4007): an interface name or index. RFC 6874's unreserved characters only.
_ZONE = re.compile(r"[A-Za-z0-9._~-]+")


def _char_at(pattern: re.Pattern[str], text: str) -> str | None:
    """A description of the first character of ``text`` matched by ``pattern``, if any."""
    found = pattern.search(text)
    if found is None:
        return None
    return f"{found.group()!r} (U+{ord(found.group()):04X}) at position {found.start()}"


def describe_callable(source: object) -> str:
    """How an error names an actor callable: its module and qualified name where it has them."""
    seen = 0
    while seen < 10:  # partial(...) and functools.wraps chains, never an endless loop
        seen += 1
        if isinstance(source, functools.partial):
            source = source.func
        elif getattr(source, "__wrapped__", None) is not None:
            source = source.__wrapped__  # type: ignore[attr-defined]
        else:
            break
    name = getattr(source, "__qualname__", None)
    if not isinstance(name, str):
        return repr(source)
    module = getattr(source, "__module__", None)
    return f"{module}.{name}" if isinstance(module, str) else name


def _check_actor(actor: object, source: object = None) -> str | None:
    """A valid actor as text, or ``None`` (no actor). ``source`` is the callable it came from.

    ``None`` and ``False`` mean "no actor", so ``user.is_authenticated and user.id`` works;
    ``0`` and ``"0"`` are actors like any other id.
    """
    if actor is None or actor is False:
        return None
    origin = (
        "actor" if source is None else f"the actor callable {describe_callable(source)} returned"
    )
    if actor is True:
        raise ContextError(
            f"{origin} True: an actor is a user name or id, not a flag; return e.g. "
            "`user.is_authenticated and user.id` (None or False for no actor)"
        )
    if isinstance(actor, bool) or not isinstance(actor, str | int):
        raise ContextError(
            f"{origin} a {type(actor).__name__} ({actor!r}); an actor must be a str or an int "
            "(a user name or id), or None for no actor: pass e.g. actor=user.id"
        )
    try:
        text = str(actor)
    except ValueError:  # an int beyond the digits str() converts
        raise ContextError(
            f"{origin} an int of thousands of digits; an actor must be 1 to {MAX_ACTOR} "
            "characters long (the actor column), e.g. a user id"
        ) from None
    if not text or len(text) > MAX_ACTOR:
        raise ContextError(
            f"{origin} {text[:40]!r}{'...' if len(text) > 40 else ''} of {len(text)} characters; "
            f"an actor must be 1 to {MAX_ACTOR} characters long (the actor column), e.g. a user id"
        )
    bad = _char_at(_CONTROL, text)
    if bad is not None:
        raise ContextError(
            f"{origin} {text[:40]!r} with the control character {bad}; an actor must be printable "
            "text: pass the user's id or name, never raw input"
        )
    return text


def _check_ip(source_ip: object) -> str | None:
    if source_ip is None:
        return None
    if not isinstance(source_ip, str | ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise ContextError(f"source_ip must be an IP address string, got {source_ip!r}")
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        raise ContextError(
            f"source_ip {source_ip!r} is not an IPv4 or IPv6 address; pass the client address "
            "without port, e.g. '203.0.113.7'"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        zone = address.scope_id
        if not _ZONE.fullmatch(zone):
            raise ContextError(
                f"source_ip {str(source_ip)!r} has the IPv6 zone {zone!r}, which is not an "
                "interface name or index (letters, digits and . _ ~ - only); pass the address "
                "without its zone, e.g. 'fe80::1', or with a zone like 'fe80::1%eth0'"
            )
    text = str(address)
    if len(text) > MAX_SOURCE_IP:
        raise ContextError(
            f"source_ip {text!r} is {len(text)} characters long, more than the {MAX_SOURCE_IP} of "
            "the source_ip column; pass the address without its zone, e.g. 'fe80::1'"
        )
    return text


def _check_text(name: str, value: object, limit: int | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ContextError(f"{name} must be a str, got {type(value).__name__} {value!r}")
    if limit is not None and len(value) > limit:
        raise ContextError(
            f"{name} must be at most {limit} characters long (the {name} column), "
            f"got {len(value)}; shorten it"
        )
    return value


def _check_request_id(value: object) -> str | None:
    text = _check_text("request_id", value, MAX_REQUEST_ID)
    if text is not None:
        bad = _char_at(_CONTROL, text)
        if bad is not None:
            raise ContextError(
                f"request_id {text[:40]!r} contains the control character {bad}; a request id "
                "must be printable text, e.g. a UUID"
            )
    return text


def _check_reason(value: object) -> str | None:
    text = _check_text("reason", value, None)
    if text is None:
        return None
    bad = _char_at(_REASON_CONTROL, text)
    if bad is not None:
        raise ContextError(
            f"reason {text[:40]!r} contains the control character {bad}; a reason is text "
            "(tabs and line breaks are fine): remove the character"
        )
    # 4 bytes per character at most: only a long reason can exceed the limit.
    if len(text) > MAX_REASON_BYTES // 4 and len(text.encode("utf-8")) > MAX_REASON_BYTES:
        raise ContextError(
            f"reason is {len(text.encode('utf-8'))} bytes long in UTF-8, more than the "
            f"{MAX_REASON_BYTES} a reason may hold (MariaDB's TEXT column); put long text "
            "elsewhere and reference it"
        )
    return text


def _check_json_value(path: str, value: object) -> None:
    """Keys must be strings, and no string may hold NUL or a lone surrogate."""
    if isinstance(value, str):
        bad = _char_at(_JSON_FORBIDDEN, value)
        if bad is not None:
            raise ContextError(
                f"{path} holds a string with the character {bad}, which a JSON column cannot "
                "store (PostgreSQL refuses NUL): remove it"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ContextError(
                    f"{path} has the key {key!r} of type {type(key).__name__}; JSON object keys "
                    "are strings: use str keys"
                )
            _check_json_value(f"{path}[{key!r}]", key)
            _check_json_value(f"{path}[{key!r}]", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json_value(f"{path}[{index}]", item)


def _check_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` as it will be stored: a JSON round trip, so later changes to the caller's
    objects cannot change it, and what ``current_context()`` shows is what is written."""
    if not extra:
        return {}
    try:
        text = json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ContextError(
            f"extra values of audit_context must be JSON-serializable ({exc}); got {extra!r}"
        ) from None
    for key, value in extra.items():
        _check_json_value(f"extra[{key!r}]", key)
        _check_json_value(f"extra[{key!r}]", value)
    copy: dict[str, Any] = json.loads(text)
    return copy


class audit_context:
    """Set who, from where, which request and why for the changes made inside it.

    Use it as a context manager (``with`` or ``async with``) or as a decorator of sync or async
    functions; each decorated call opens its own frame. Fields left ``None`` are inherited from an
    enclosing ``audit_context``; ``extra`` keyword arguments are merged over the enclosing ones.

    ``actor`` may also be a callable taking no argument: it is called when the actor is needed —
    at the first versioned flush of a transaction, or by :func:`current_context` — so a request
    middleware can name a user that authentication establishes later. A value given with
    :func:`set_actor` takes precedence over it.
    """

    def __init__(
        self,
        actor: str | int | ActorSource | None = None,
        source_ip: str | None = None,
        request_id: str | None = None,
        reason: str | None = None,
        **extra: Any,
    ) -> None:
        self._actor_source: ActorSource | None = None
        if callable(actor):
            self._actor: str | None = None
            self._actor_source = actor
        else:
            self._actor = _check_actor(actor)
        self._source_ip = _check_ip(source_ip)
        self._request_id = _check_request_id(request_id)
        self._reason = _check_reason(reason)
        self._extra = _check_extra(dict(extra))

    def _push(self) -> Token[_Frame | None]:
        frame = _Frame(
            self,
            _current.get(),
            self._actor,
            self._actor_source,
            self._source_ip,
            self._request_id,
            self._reason,
            self._extra,
        )
        return _current.set(frame)

    def open(self) -> None:
        """Enter the context without reading it back (``with`` does both).

        For frameworks whose hooks open and close a context in separate functions; unlike
        ``__enter__`` it never calls a callable actor. Pair every ``open()`` with ``close()``.
        """
        self._push()

    def close(self) -> None:
        """Leave the context entered with :meth:`open` (or ``with``) in this thread or task."""
        # No token is kept on the object: one audit_context may be entered by many threads or
        # tasks at once, each in its own contextvars.Context, and each leaves its own frame.
        frame = _current.get()
        if frame is None or frame.owner is not self:
            raise ContextError("audit_context exited out of order: nest `with` blocks properly")
        _current.set(frame.parent)

    def __enter__(self) -> AuditContext:
        self.open()
        frame = _current.get()
        assert frame is not None
        return frame.resolve(lazy=True)  # a callable actor is asked only if ``.actor`` is read

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> AuditContext:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    @overload
    def __call__(self, func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...
    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, func: Callable[P, Any]) -> Callable[P, Any]:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                token = self._push()
                try:
                    return await func(*args, **kwargs)
                finally:
                    _current.reset(token)

            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            token = self._push()
            try:
                return func(*args, **kwargs)
            finally:
                _current.reset(token)

        return wrapper


_EMPTY = AuditContext()


def current_context() -> AuditContext:
    """The audit values in force here: the innermost frame's, completed by the enclosing ones."""
    frame = _current.get()
    return _EMPTY if frame is None else frame.resolve()


def set_actor(actor: str | int | None) -> None:
    """Set the actor of the innermost active ``audit_context``.

    For code that learns who the user is after the context was opened (e.g. in an authentication
    dependency). Every change flushed after this call in that context — including from threads and
    tasks started inside it — is attributed to ``actor``.
    """
    frame = _current.get()
    if frame is None:
        raise ContextError(
            "set_actor() needs an active audit_context: wrap the request or job in "
            "`with versioning.audit_context():` (or add the integrations middleware)"
        )
    frame.actor = _check_actor(actor)
