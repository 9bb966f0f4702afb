"""The audit context: ``audit_context``, ``current_context`` and ``set_actor``.

Pure Python except the last test, which checks that the transaction row takes the context's values.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
import ipaddress
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from models import Base
from models import Note as Ticket
from sqlalchemy.orm import Session

import versioning
from versioning import (
    AuditContext,
    ContextError,
    VersioningError,
    audit_context,
    current_context,
    history,
    set_actor,
)


def fields(ctx: AuditContext) -> tuple[object, ...]:
    return (ctx.actor, ctx.source_ip, ctx.request_id, ctx.reason, dict(ctx.extra))


# --- no context ---------------------------------------------------------------------------------


def test_no_context_is_all_none_and_empty_extra() -> None:
    ctx = current_context()
    assert fields(ctx) == (None, None, None, None, {})


def test_audit_context_is_frozen() -> None:
    with audit_context(actor="alice", tag="x"):
        ctx = current_context()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.actor = "mallory"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ctx.extra["tag"] = "y"  # type: ignore[index]
    assert ctx.actor == "alice" and dict(ctx.extra) == {"tag": "x"}


# --- context manager -------------------------------------------------------------------------


def test_context_manager_sets_and_restores() -> None:
    with audit_context(
        actor="alice", source_ip="203.0.113.7", request_id="req-1", reason="fix typo", k=1
    ) as entered:
        inside = current_context()
    assert fields(inside) == ("alice", "203.0.113.7", "req-1", "fix typo", {"k": 1})
    assert entered == inside
    assert fields(current_context()) == (None, None, None, None, {})


def test_async_with_sets_and_restores() -> None:
    async def main() -> tuple[AuditContext, AuditContext, AuditContext]:
        async with audit_context(actor="alice", request_id="r-9") as entered:
            await asyncio.sleep(0)
            inside = current_context()
        return entered, inside, current_context()

    entered, inside, after = asyncio.run(main())
    assert entered.actor == "alice" and entered.request_id == "r-9"
    assert inside.actor == "alice" and inside.request_id == "r-9"
    assert fields(after) == (None, None, None, None, {})


def test_actor_int_is_stored_as_str() -> None:
    with audit_context(actor=42):
        assert current_context().actor == "42"


def test_same_instance_can_be_reentered() -> None:
    ctx = audit_context(actor="alice")
    with ctx, audit_context(actor="bob"), ctx:
        assert current_context().actor == "alice"
    assert current_context().actor is None
    with ctx:
        assert current_context().actor == "alice"
    assert current_context().actor is None


# --- nesting -----------------------------------------------------------------------------------


def test_nesting_overrides_field_by_field_and_restores() -> None:
    with audit_context(actor="alice", source_ip="10.0.0.1", request_id="outer"):
        with audit_context(actor="bob", reason="inner reason"):
            assert fields(current_context()) == (
                "bob",
                "10.0.0.1",
                "outer",
                "inner reason",
                {},
            )
            with audit_context(source_ip="10.0.0.2"):
                assert fields(current_context()) == (
                    "bob",
                    "10.0.0.2",
                    "outer",
                    "inner reason",
                    {},
                )
            assert current_context().source_ip == "10.0.0.1"
        assert fields(current_context()) == ("alice", "10.0.0.1", "outer", None, {})
    assert fields(current_context()) == (None, None, None, None, {})


def test_nesting_restores_on_exception() -> None:
    seen: list[str | None] = []

    def fail() -> None:
        with audit_context(actor="bob", b=2):
            seen.append(current_context().actor)
            raise RuntimeError("boom")

    with audit_context(actor="alice", reason="outer", a=1):
        with pytest.raises(RuntimeError, match="boom"):
            fail()
        assert seen == ["bob"]
        assert fields(current_context()) == ("alice", None, None, "outer", {"a": 1})
    assert fields(current_context()) == (None, None, None, None, {})


def test_async_with_restores_on_exception() -> None:
    async def fail() -> None:
        async with audit_context(actor="bob"):
            await asyncio.sleep(0)
            raise KeyError("x")

    async def main() -> AuditContext:
        async with audit_context(actor="alice"):
            with pytest.raises(KeyError):
                await fail()
            return current_context()

    assert asyncio.run(main()).actor == "alice"
    assert current_context().actor is None


def test_extra_is_merged_key_by_key() -> None:
    with audit_context(tenant="acme", source="api"):
        with audit_context(source="cron", job=7):
            assert dict(current_context().extra) == {"tenant": "acme", "source": "cron", "job": 7}
        assert dict(current_context().extra) == {"tenant": "acme", "source": "api"}
    assert dict(current_context().extra) == {}


# --- decorator ---------------------------------------------------------------------------------


def test_decorator_of_sync_function() -> None:
    seen: list[AuditContext] = []

    @audit_context(actor="worker", reason="nightly job", job="cleanup")
    def job(n: int) -> int:
        """Do the job."""
        seen.append(current_context())
        return n * 2

    assert job.__name__ == "job" and job.__doc__ == "Do the job."
    assert current_context().actor is None
    assert job(21) == 42
    assert fields(seen[0]) == ("worker", None, None, "nightly job", {"job": "cleanup"})
    assert current_context().actor is None


def test_decorator_of_sync_function_gives_each_call_its_own_frame() -> None:
    seen: list[str | None] = []

    @audit_context(actor="anonymous")
    def handle(user: str | None) -> None:
        seen.append(current_context().actor)
        if user is not None:
            set_actor(user)
            seen.append(current_context().actor)

    handle("alice")
    handle(None)  # must not inherit alice from the previous call
    with audit_context(actor="outer"):
        handle("bob")
        assert current_context().actor == "outer"
    assert seen == ["anonymous", "alice", "anonymous", "anonymous", "bob"]
    assert current_context().actor is None


def test_decorator_of_sync_function_restores_on_exception() -> None:
    @audit_context(actor="worker")
    def fail() -> None:
        raise ValueError("nope")

    with audit_context(actor="caller"):
        with pytest.raises(ValueError, match="nope"):
            fail()
        assert current_context().actor == "caller"


def test_decorator_of_sync_function_is_reentrant() -> None:
    seen: list[tuple[int, str | None]] = []

    @audit_context(reason="recursive")
    def walk(depth: int) -> None:
        set_actor(f"level-{depth}")
        if depth < 3:
            walk(depth + 1)
        seen.append((depth, current_context().actor))

    walk(0)
    assert seen == [(3, "level-3"), (2, "level-2"), (1, "level-1"), (0, "level-0")]


def test_decorator_of_async_function() -> None:
    @audit_context(actor="svc", request_id="abc")
    async def fetch(x: int) -> tuple[int, AuditContext]:
        await asyncio.sleep(0)
        return x + 1, current_context()

    assert inspect.iscoroutinefunction(fetch)  # frameworks inspect this
    assert fetch.__name__ == "fetch"

    async def main() -> tuple[tuple[int, AuditContext], AuditContext]:
        result = await fetch(1)
        return result, current_context()

    (value, inside), after = asyncio.run(main())
    assert value == 2
    assert (inside.actor, inside.request_id) == ("svc", "abc")
    assert fields(after) == (None, None, None, None, {})


def test_decorator_of_async_function_gives_each_call_its_own_frame() -> None:
    @audit_context(reason="request")
    async def handle(user: str) -> tuple[str | None, str | None]:
        before = current_context().actor
        await asyncio.sleep(0)
        set_actor(user)
        for _ in range(3):
            await asyncio.sleep(0)
        return before, current_context().actor

    async def main() -> list[tuple[str | None, str | None]]:
        return await asyncio.gather(*(handle(f"user-{i}") for i in range(20)))

    results = asyncio.run(main())
    assert results == [(None, f"user-{i}") for i in range(20)]


def test_decorator_of_async_function_restores_on_exception() -> None:
    @audit_context(actor="worker")
    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("nope")

    async def main() -> str | None:
        async with audit_context(actor="caller"):
            with pytest.raises(ValueError, match="nope"):
                await fail()
            return current_context().actor

    assert asyncio.run(main()) == "caller"


# --- set_actor ---------------------------------------------------------------------------------


def test_set_actor_sets_innermost_context_only() -> None:
    with audit_context(actor="alice", reason="outer"):
        with audit_context(request_id="r1"):
            assert current_context().actor == "alice"
            set_actor("bob")
            assert fields(current_context()) == ("bob", None, "r1", "outer", {})
        assert current_context().actor == "alice"


def test_set_actor_fills_actor_of_an_empty_context() -> None:
    with audit_context():
        assert current_context().actor is None
        set_actor(7)
        assert current_context().actor == "7"
    assert current_context().actor is None


def test_set_actor_outside_any_context_raises() -> None:
    with pytest.raises(ContextError, match="audit_context") as info:
        set_actor("alice")
    assert isinstance(info.value, VersioningError)
    assert current_context().actor is None


def test_set_actor_validates() -> None:
    with audit_context(actor="alice"):
        with pytest.raises(ContextError):
            set_actor(3.5)  # type: ignore[arg-type]
        with pytest.raises(ContextError):
            set_actor("x" * 256)
        assert current_context().actor == "alice"


def test_set_actor_is_visible_to_threads_started_inside_the_context() -> None:
    started = threading.Event()
    go = threading.Event()
    seen: list[str | None] = []

    def worker() -> None:
        seen.append(current_context().actor)
        started.set()
        go.wait(5)
        seen.append(current_context().actor)

    with audit_context(reason="request"):
        thread = threading.Thread(target=contextvars.copy_context().run, args=(worker,))
        thread.start()
        assert started.wait(5)
        set_actor("alice")  # learnt after the worker started
        go.set()
        thread.join(5)
    assert seen == [None, "alice"]


def test_set_actor_in_a_worker_thread_is_visible_to_the_request() -> None:
    # e.g. a sync authentication dependency run in a thread pool with the request's context
    async def main() -> tuple[str | None, str | None]:
        async with audit_context(request_id="r1"):
            await asyncio.to_thread(set_actor, "alice")
            inside = current_context().actor
        return inside, current_context().actor

    assert asyncio.run(main()) == ("alice", None)


def test_set_actor_is_visible_to_tasks_started_inside_the_context() -> None:
    async def main() -> tuple[str | None, str | None, str | None]:
        go = asyncio.Event()

        async def child() -> str | None:
            await go.wait()
            return current_context().actor

        async def authenticate() -> None:
            set_actor("carol")

        async with audit_context(reason="request"):
            task = asyncio.create_task(child())
            await asyncio.sleep(0)
            set_actor("bob")
            go.set()
            from_child = await task
            await asyncio.create_task(authenticate())
            after_child_set = current_context().actor
        return from_child, after_child_set, current_context().actor

    assert asyncio.run(main()) == ("bob", "carol", None)


# --- isolation ---------------------------------------------------------------------------------


def test_threads_are_isolated() -> None:
    n = 20
    barrier = threading.Barrier(n, timeout=10)

    def worker(i: int) -> list[tuple[str | None, str | None, dict[str, object]]]:
        seen = []
        with audit_context(actor=f"user-{i}", request_id=f"req-{i}", worker=i):
            barrier.wait()  # every thread is now inside its own context
            ctx = current_context()
            seen.append((ctx.actor, ctx.request_id, dict(ctx.extra)))
            set_actor(f"late-{i}")
            barrier.wait()  # every thread has called set_actor
            ctx = current_context()
            seen.append((ctx.actor, ctx.request_id, dict(ctx.extra)))
            barrier.wait()
        ctx = current_context()
        seen.append((ctx.actor, ctx.request_id, dict(ctx.extra)))
        return seen

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(worker, range(n)))
    for i, seen in enumerate(results):
        assert seen == [
            (f"user-{i}", f"req-{i}", {"worker": i}),
            (f"late-{i}", f"req-{i}", {"worker": i}),
            (None, None, {}),
        ]


def test_threads_sharing_one_audit_context_instance_are_isolated() -> None:
    # A module-level `job_context = audit_context(actor="cron")` used by concurrent workers.
    n = 20
    shared = audit_context(actor="cron")
    barrier = threading.Barrier(n, timeout=10)

    def worker(i: int) -> tuple[str | None, str | None, str | None]:
        with shared:
            barrier.wait()
            set_actor(f"cron-{i}")
            barrier.wait()
            inside = current_context().actor
            barrier.wait()  # all threads are inside before any leaves
        after = current_context().actor
        with shared:
            again = current_context().actor
        return inside, after, again

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(worker, range(n)))
    assert results == [(f"cron-{i}", None, "cron") for i in range(n)]


def test_asyncio_tasks_are_isolated() -> None:
    n = 50

    async def task(i: int) -> list[tuple[str | None, str | None, dict[str, object]]]:
        seen = []
        await asyncio.sleep(0)
        async with audit_context(actor=f"user-{i}", source_ip=f"10.0.0.{i}", task=i):
            for round_ in range(3):
                await asyncio.sleep(0)
                ctx = current_context()
                seen.append((ctx.actor, ctx.source_ip, dict(ctx.extra)))
                if round_ == 0:
                    set_actor(f"late-{i}")
            with audit_context(reason=f"inner-{i}"):
                await asyncio.sleep(0)
                ctx = current_context()
                seen.append((ctx.actor, ctx.reason, dict(ctx.extra)))
        await asyncio.sleep(0)
        ctx = current_context()
        seen.append((ctx.actor, ctx.source_ip, dict(ctx.extra)))
        return seen

    async def main() -> list[list[tuple[str | None, str | None, dict[str, object]]]]:
        return await asyncio.gather(*(task(i) for i in range(n)))

    for i, seen in enumerate(asyncio.run(main())):
        assert seen == [
            (f"user-{i}", f"10.0.0.{i}", {"task": i}),
            (f"late-{i}", f"10.0.0.{i}", {"task": i}),
            (f"late-{i}", f"10.0.0.{i}", {"task": i}),
            (f"late-{i}", f"inner-{i}", {"task": i}),
            (None, None, {}),
        ]


def test_asyncio_tasks_sharing_one_audit_context_instance_are_isolated() -> None:
    shared = audit_context(reason="batch")

    async def task(i: int) -> tuple[str | None, str | None]:
        async with shared:
            set_actor(f"user-{i}")
            for _ in range(3):
                await asyncio.sleep(0)
            inside = current_context().actor
        return inside, current_context().reason

    async def main() -> list[tuple[str | None, str | None]]:
        return await asyncio.gather(*(task(i) for i in range(50)))

    assert asyncio.run(main()) == [(f"user-{i}", None) for i in range(50)]


def test_task_context_does_not_leak_into_parent() -> None:
    async def main() -> tuple[str | None, str | None]:
        async def child() -> str | None:
            with audit_context(actor="child"):
                await asyncio.sleep(0)
                return current_context().actor

        async with audit_context(actor="parent"):
            from_child = await asyncio.create_task(child())
            return from_child, current_context().actor

    assert asyncio.run(main()) == ("child", "parent")


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("actor", [3.5, b"alice", ["alice"], True, object()])
def test_bad_actor_type_raises(actor: object) -> None:
    with pytest.raises(ContextError, match="actor"):
        audit_context(actor=actor)  # type: ignore[arg-type]


def test_actor_length() -> None:
    with audit_context(actor="a" * 255):
        assert current_context().actor == "a" * 255
    with pytest.raises(ContextError, match="actor"):
        audit_context(actor="a" * 256)
    with pytest.raises(ContextError, match="1 to 255 characters"):
        audit_context(actor=10**255)
    with pytest.raises(ContextError, match="1 to 255 characters"):
        audit_context(actor=10**5000)  # beyond the digits str() converts
    with pytest.raises(ContextError, match="actor"):
        audit_context(actor="")


@pytest.mark.parametrize(
    "source_ip", ["not-an-ip", "203.0.113.7:8080", "256.1.1.1", "", "2001:db8::1::2", 12345]
)
def test_invalid_source_ip_raises(source_ip: object) -> None:
    with pytest.raises(ContextError, match="source_ip"):
        audit_context(source_ip=source_ip)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("::FFFF:192.0.2.1", "::ffff:c000:201"),
        ("203.0.113.7", "203.0.113.7"),
        (ipaddress.ip_address("192.0.2.1"), "192.0.2.1"),
        (ipaddress.ip_address("fe80::0001"), "fe80::1"),
    ],
)
def test_source_ip_is_normalised(given: object, stored: str) -> None:
    with audit_context(source_ip=given):  # type: ignore[arg-type]
        assert current_context().source_ip == stored


@pytest.mark.parametrize(
    "extra",
    [
        {"when": object()},
        {"ids": {1, 2}},
        {"ratio": math.nan},
        {"nested": {"bad": b"bytes"}},
    ],
)
def test_non_json_extra_raises(extra: dict[str, object]) -> None:
    with pytest.raises(ContextError, match="JSON"):
        audit_context(**extra)


def test_json_extra_is_accepted() -> None:
    with audit_context(n=1, ok=True, nothing=None, items=[1, "a"], nested={"k": [1.5]}):
        assert dict(current_context().extra) == {
            "n": 1,
            "ok": True,
            "nothing": None,
            "items": [1, "a"],
            "nested": {"k": [1.5]},
        }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"request_id": 123},
        {"request_id": "r" * 129},
        {"reason": 5},
    ],
)
def test_bad_request_id_or_reason_raises(kwargs: dict[str, object]) -> None:
    with pytest.raises(ContextError):
        audit_context(**kwargs)  # type: ignore[arg-type]


def test_context_error_is_a_versioning_error_and_a_value_error() -> None:
    with pytest.raises(ContextError) as info:
        audit_context(source_ip="nope")
    assert isinstance(info.value, VersioningError)
    assert isinstance(info.value, ValueError)
    assert issubclass(versioning.ContextError, ValueError)
    # a rejected context changed nothing
    assert fields(current_context()) == (None, None, None, None, {})


def test_bad_decorator_arguments_raise_at_decoration() -> None:
    with pytest.raises(ContextError):

        @audit_context(actor=["not", "an", "actor"])  # type: ignore[arg-type]
        def handler() -> None:  # pragma: no cover - never decorated
            pass


# --- validation of what could not be stored (or would fail the commit) ----------------------------

XSS_ZONE = "fe80::1%<img src=x onerror=alert(1)>"
# Unicode categories Cc (C0, DEL, C1), the line/paragraph separators, a lone surrogate.
CONTROLS = ["\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\x9b", "\u2028", "\u2029", "\ud800"]


@pytest.mark.parametrize("char", CONTROLS, ids=repr)
@pytest.mark.parametrize("field", ["actor", "request_id"])
def test_control_characters_are_refused_in_actor_and_request_id(field: str, char: str) -> None:
    with pytest.raises(ContextError, match=rf"{field}|actor") as info:
        audit_context(**{field: f"alice{char}admin"})
    assert f"U+{ord(char):04X}" in str(info.value)
    assert "control character" in str(info.value)
    assert fields(current_context()) == (None, None, None, None, {})


@pytest.mark.parametrize("char", CONTROLS, ids=repr)
def test_set_actor_refuses_control_characters_and_keeps_the_actor(char: str) -> None:
    with audit_context(actor="alice"):
        with pytest.raises(ContextError, match="control character"):
            set_actor(f"bob{char}")
        assert current_context().actor == "alice"


@pytest.mark.parametrize(
    "source_ip",
    [
        XSS_ZONE,
        "fe80::1%eth0\r\nX-Injected: 1",
        "fe80::1%\n",
        "fe80::1%\x00",
        "fe80::1%eth 0",
        "fe80::1%eth0;drop",
        "fe80::1%é",
        "fe80::1%" + "a" * 40,  # a valid zone, but longer than the 45-character column
        ipaddress.IPv6Address("fe80::1%<b>"),
        "203.0.113.7\x00",
        "203.0.113.7\n",
    ],
    ids=repr,
)
def test_ipv6_zones_and_control_characters_in_source_ip_are_refused(source_ip: object) -> None:
    with pytest.raises(ContextError, match="source_ip") as info:
        audit_context(source_ip=source_ip)  # type: ignore[arg-type]
    assert "e.g." in str(info.value)  # says what to pass instead
    assert fields(current_context()) == (None, None, None, None, {})


@pytest.mark.parametrize("zone", ["eth0", "en0.100", "1", "25", "wlan-0_~x"])
def test_ipv6_zone_of_an_interface_is_kept(zone: str) -> None:
    with audit_context(source_ip=f"FE80::0001%{zone}"):
        assert current_context().source_ip == f"fe80::1%{zone}"


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x07", "\x7f", "\x9b", "\ud800"], ids=repr)
def test_reason_refuses_nul_and_control_characters(char: str) -> None:
    with pytest.raises(ContextError, match="reason") as info:
        audit_context(reason=f"fix{char}typo")
    assert f"U+{ord(char):04X}" in str(info.value)


def test_reason_may_hold_tabs_and_line_breaks() -> None:
    reason = "Ticket SUP-1:\n\tmerge duplicates\r\n\u2028done"
    with audit_context(reason=reason):
        assert current_context().reason == reason


def test_reason_fits_mariadb_text() -> None:
    longest = "é" * 32_767 + "a"  # 65,535 bytes in UTF-8
    with audit_context(reason=longest):
        assert current_context().reason == longest
    with pytest.raises(ContextError, match=r"65536 bytes .* 65535"):
        audit_context(reason="é" * 32_768)
    with pytest.raises(ContextError, match="reason"):
        audit_context(reason="a" * 65_536)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"note": "a\x00b"}, r"extra\['note'\] .*U\+0000"),
        ({"note": "\ud83d"}, r"extra\['note'\] .*U\+D83D"),
        ({"nested": {"deep": ["ok", "b\x00"]}}, r"extra\['nested'\]\['deep'\]\[1\] .*U\+0000"),
        ({"nested": {"k\x00": 1}}, r"extra\['nested'\]\['k\\x00'\] .*U\+0000"),
        ({"k\x00": 1}, r"extra\['k\\x00'\] .*U\+0000"),
        ({"nested": {1: "a"}}, r"extra\['nested'\] has the key 1 of type int"),
        ({"nested": {None: "a"}}, r"extra\['nested'\] has the key None"),
        ({"loop": (loop := [])}, "JSON"),
    ],
    ids=[
        "nul",
        "surrogate",
        "nested-nul",
        "nested-key-nul",
        "key-nul",
        "int-key",
        "none-key",
        "cycle",
    ],
)
def test_extra_that_a_json_column_cannot_store_is_refused(
    extra: dict[str, object], words: str
) -> None:
    if "loop" in extra:
        extra["loop"].append(extra["loop"])  # type: ignore[attr-defined]
    with pytest.raises(ContextError, match=words):
        audit_context(**extra)  # type: ignore[arg-type]
    assert fields(current_context()) == (None, None, None, None, {})


def test_contexts_with_nested_extra_are_hashable_and_equal_by_value() -> None:
    with audit_context(actor="a", tags=["x"], meta={"b": 1, "a": [2]}):
        first = current_context()
    with audit_context(actor="a", meta={"a": [2], "b": 1}, tags=["x"]):
        second = current_context()
    assert first == second and hash(first) == hash(second)
    assert len({first, second, AuditContext()}) == 2


def test_extra_is_kept_as_it_will_be_stored() -> None:
    tags = ["a"]
    context = audit_context(tags=tags, pair=(1, 2), text="tab\tand\x01control")
    tags.append("added after the context was made")
    with context:
        assert dict(current_context().extra) == {
            "tags": ["a"],
            "pair": [1, 2],  # JSON has no tuples
            "text": "tab\tand\x01control",
        }


# --- what an actor may be ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"), [(0, "0"), ("0", "0"), (-1, "-1"), (10**30, str(10**30))]
)
def test_zero_and_other_ids_are_actors(given: object, stored: str) -> None:
    with audit_context(actor=given):  # type: ignore[arg-type]
        assert current_context().actor == stored
    with audit_context(actor="outer"), audit_context():
        set_actor(given)  # type: ignore[arg-type]
        assert current_context().actor == stored


def test_false_means_no_actor_like_none() -> None:
    user_is_authenticated, user_id = False, 7
    with audit_context(actor="outer"), audit_context(actor=user_is_authenticated and user_id):
        assert current_context().actor == "outer"  # falls through, like None
        set_actor(user_is_authenticated and user_id)
        assert current_context().actor == "outer"
    with audit_context(actor=False):
        assert current_context().actor is None


def test_true_is_refused_as_a_flag() -> None:
    with pytest.raises(ContextError, match="True: an actor is a user name or id, not a flag"):
        audit_context(actor=True)
    with audit_context(), pytest.raises(ContextError, match="not a flag"):
        set_actor(True)


# --- end to end --------------------------------------------------------------------------------


def test_transaction_row_takes_the_context_values(
    create_tables: Callable[[sa.MetaData], sa.Engine], sessions: Callable[[], Session]
) -> None:
    create_tables(Base.metadata)
    transactions = versioning.transaction_table(Base.metadata)
    assert isinstance(transactions, sa.Table)
    session = sessions()
    with audit_context(
        source_ip="2001:DB8:0:0::1", request_id="req-42", reason="onboarding", tenant="acme"
    ):
        with audit_context(flow="signup"):
            set_actor(17)  # learnt after the context opened, before the flush
            session.add(Ticket(id=1, title="first"))
            session.flush()
        # a second flush of the same database transaction, under other values
        with audit_context(actor="someone-else", reason="ignored"):
            session.add(Ticket(id=2, title="second"))
            session.commit()
    with audit_context(actor="bob"):
        ticket = session.get(Ticket, 1)
        assert ticket is not None
        ticket.title = "edited"
        session.commit()
    session.add(Ticket(id=3, title="no context"))
    session.commit()

    rows = session.execute(sa.select(transactions).order_by(transactions.c.id)).mappings().all()
    session.commit()
    assert len(rows) == 3
    first, second, third = rows
    assert (
        first["actor"],
        first["source_ip"],
        first["request_id"],
        first["reason"],
        first["extra"],
    ) == ("17", "2001:db8::1", "req-42", "onboarding", {"tenant": "acme", "flow": "signup"})
    assert (second["actor"], second["source_ip"], second["request_id"], second["reason"]) == (
        "bob",
        None,
        None,
        None,
    )
    assert second["extra"] is None
    assert [third[k] for k in ("actor", "source_ip", "request_id", "reason", "extra")] == [None] * 5

    versions = history(session, Ticket, 2)
    assert versions[0].transaction is not None
    assert versions[0].transaction.id == first["id"]
    assert versions[0].transaction.actor == "17"
    assert dict(versions[0].transaction.extra or {}) == {"tenant": "acme", "flow": "signup"}
    session.commit()


def test_values_at_the_limits_are_stored_exactly_and_bad_ones_refused_before_any_write(
    create_tables: Callable[[sa.MetaData], sa.Engine], sessions: Callable[[], Session]
) -> None:
    """What passes the checks is stored as given on every backend (the longest actor, request id,
    source IP and reason; text JSON can hold); what fails them never reaches the session."""
    create_tables(Base.metadata)
    transactions = versioning.transaction_table(Base.metadata)
    assert isinstance(transactions, sa.Table)
    session = sessions()
    actor = "ü" * 254 + "\U0001f600"  # 255 characters, non-ASCII and outside the BMP
    request_id = "r" * 128
    source_ip = "fe80::abcd:ef01:2345:6789%en0.1234567890"
    reason = "é" * 32_766 + "\n\t!"  # 65,535 bytes in UTF-8: all MariaDB's TEXT holds
    extra = {"note": "tab\t\x01\u2028\U0001f600", "ids": [0, -1], "nested": {"k": None}}
    with audit_context(
        actor=actor, request_id=request_id, source_ip=source_ip, reason=reason, **extra
    ):
        session.add(Ticket(id=1, title="limits"))
        session.commit()
    # Refused when set: the session's write then goes ahead with the values in force.
    with audit_context(actor="bob"):
        session.add(Ticket(id=2, title="refused values"))
        with pytest.raises(ContextError, match="actor"):
            set_actor("mallory\x00")
        for bad in (
            {"actor": "a\x00"},
            {"request_id": "r\x00"},
            {"reason": "why\x00"},
            {"source_ip": XSS_ZONE},
            {"note": "\x00"},
        ):
            with pytest.raises(ContextError):
                audit_context(**bad)  # type: ignore[arg-type]
        assert session.new  # nothing was flushed by the refusals
        session.commit()
    rows = session.execute(sa.select(transactions).order_by(transactions.c.id)).mappings().all()
    session.commit()
    assert len(rows) == 2
    first, second = rows
    assert (first["actor"], first["request_id"], first["source_ip"]) == (
        actor,
        request_id,
        source_ip,
    )
    assert first["reason"] == reason
    assert first["extra"] == extra
    assert (second["actor"], second["reason"], second["extra"]) == ("bob", None, None)
    assert [v.transaction.id for v in history(session, Ticket, 2) if v.transaction] == [
        second["id"]
    ]
    session.commit()
