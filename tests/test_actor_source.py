"""``audit_context(actor=<callable>)``: an actor known only when it is needed.

A request middleware opens the context before authentication has run, so it passes a zero-argument
callable; the callable is asked at the first versioned flush of a database transaction (or by
``current_context()``). ``set_actor`` in the same frame wins over it; a callable returning ``None``
falls through to the enclosing frames; what it returns is validated like a plain actor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from models import Base
from models import Note as Page
from sqlalchemy.orm import Session

import versioning
from versioning import (
    ContextError,
    audit_context,
    current_context,
    history,
    set_actor,
)


class Source:
    """An actor callable whose answer can change, counting its calls."""

    def __init__(self, actor: object = None) -> None:
        self.actor = actor
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return self.actor


# --- resolution ----------------------------------------------------------------------------------


def test_callable_is_not_called_when_the_context_opens() -> None:
    # A middleware opens the context before authentication has run: asking the callable then
    # would give the wrong answer, or fail (e.g. reading ``request.state.user``).
    source = Source("alice")
    context = audit_context(actor=source)  # type: ignore[arg-type]
    with context:
        assert source.calls == 0

    async def main() -> int:
        async with audit_context(actor=source):  # type: ignore[arg-type]
            return source.calls

    assert asyncio.run(main()) == 0

    @audit_context(actor=source)  # type: ignore[arg-type]
    def job() -> int:
        return source.calls

    assert job() == 0


def test_callable_failing_before_authentication_does_not_break_entering() -> None:
    state: dict[str, str] = {}

    def user_of_request() -> str:
        return state["user"]  # KeyError until authentication ran

    with audit_context(actor=user_of_request, request_id="r-1"):
        state["user"] = "alice"
        assert current_context().actor == "alice"


def test_callable_gives_the_actor_when_it_is_asked_for() -> None:
    source = Source(None)
    with audit_context(actor=source, request_id="r-1"):  # type: ignore[arg-type]
        assert current_context().actor is None
        source.actor = "alice"  # authentication ran
        assert current_context().actor == "alice"
        assert current_context().request_id == "r-1"
    assert current_context().actor is None


def test_plain_functions_and_lambdas_are_accepted() -> None:
    def who() -> str:
        return "bob"

    with audit_context(actor=who):
        assert current_context().actor == "bob"
    with audit_context(actor=lambda: 42):
        assert current_context().actor == "42"  # int stored as str, like a plain actor


def test_set_actor_wins_over_the_callable() -> None:
    source = Source("from-callable")
    with audit_context(actor=source):  # type: ignore[arg-type]
        assert current_context().actor == "from-callable"
        set_actor("explicit")
        calls = source.calls
        assert current_context().actor == "explicit"
        assert source.calls == calls  # not even asked any more
        set_actor(None)  # clearing the explicit actor lets the callable answer again
        assert current_context().actor == "from-callable"


def test_set_actor_in_an_inner_frame_wins_over_an_outer_callable() -> None:
    with audit_context(actor=lambda: "outer-callable"):
        with audit_context(reason="inner"):
            assert current_context().actor == "outer-callable"
            set_actor("inner-explicit")
            assert current_context().actor == "inner-explicit"
        assert current_context().actor == "outer-callable"


def test_callable_returning_none_falls_through_to_enclosing_frames() -> None:
    with audit_context(actor="job:nightly"), audit_context(actor=lambda: None):
        assert current_context().actor == "job:nightly"
    outer = Source("outer-callable")
    with audit_context(actor=outer), audit_context(actor=lambda: None):  # type: ignore[arg-type]
        assert current_context().actor == "outer-callable"
    with audit_context(actor=lambda: None):
        assert current_context().actor is None


def test_inner_callable_overrides_outer_actor_and_outer_callable_is_not_asked() -> None:
    outer = Source("outer")
    with audit_context(actor=outer):  # type: ignore[arg-type]
        before = outer.calls
        with audit_context(actor=lambda: "inner"):
            assert current_context().actor == "inner"
        assert outer.calls == before
        with audit_context(actor="inner-plain"):
            assert current_context().actor == "inner-plain"
        assert outer.calls == before
    with audit_context(actor="outer-plain"), audit_context(actor=lambda: "inner"):
        assert current_context().actor == "inner"


@pytest.mark.parametrize("bad", [3.5, b"alice", ["alice"], True, object(), "", "a" * 256])
def test_what_the_callable_returns_is_validated(bad: object) -> None:
    with audit_context(actor=lambda: bad), pytest.raises(ContextError, match="actor"):  # type: ignore[arg-type,return-value]
        current_context()


def test_callable_accepts_the_longest_actor() -> None:
    with audit_context(actor=lambda: "a" * 255):
        assert current_context().actor == "a" * 255


def test_error_raised_by_the_callable_propagates() -> None:
    def broken() -> str:
        raise LookupError("no session")

    with audit_context(actor=broken), pytest.raises(LookupError, match="no session"):
        current_context()


def test_callable_in_decorator_and_async_with() -> None:
    source = Source("decorated")

    @audit_context(actor=source)  # type: ignore[arg-type]
    def job() -> str | None:
        return current_context().actor

    assert job() == "decorated"

    async def main() -> tuple[str | None, str | None]:
        async with audit_context(actor=lambda: "async-user"):
            inside = current_context().actor

            async def child() -> str | None:
                return current_context().actor

            from_task = await asyncio.create_task(child())
        return inside, from_task

    assert asyncio.run(main()) == ("async-user", "async-user")


# --- what a callable's answer means --------------------------------------------------------------


class User:
    def __init__(self, user_id: object, authenticated: bool = True) -> None:
        self.id = user_id
        self.is_authenticated = authenticated


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (User(0), "0"),
        (User("0"), "0"),
        (User(7), "7"),
        (User(7, authenticated=False), "outer"),  # `False and ...` is False: no actor
        (User(None), "outer"),
    ],
    ids=["id-0", "id-str-0", "id-7", "anonymous", "id-none"],
)
def test_zero_is_an_actor_and_false_or_none_mean_no_actor(user: User, expected: str) -> None:
    def actor_of_user() -> object:
        return user.is_authenticated and user.id

    with audit_context(actor="outer"), audit_context(actor=actor_of_user):  # type: ignore[arg-type]
        assert current_context().actor == expected


def flag_actor() -> bool:
    return True


@pytest.mark.parametrize(
    ("returned", "words"),
    [
        (True, "returned True: an actor is a user name or id, not a flag"),
        (1.5, "returned a float"),
        ({"id": 1}, "returned a dict"),
        ("", "returned '' of 0 characters"),
        ("alice\x00", r"control character .*\(U\+0000\)"),
        ("a\nb", "control character"),
    ],
    ids=["true", "float", "dict", "empty", "nul", "newline"],
)
def test_a_bad_answer_names_the_callable(returned: object, words: str) -> None:
    def user_lookup() -> object:
        return returned

    with (
        audit_context(actor=user_lookup),  # type: ignore[arg-type]
        pytest.raises(ContextError, match=words) as info,
    ):
        current_context()
    assert "test_a_bad_answer_names_the_callable.<locals>.user_lookup" in str(info.value)


def test_the_callable_is_named_through_partials_and_wrappers() -> None:
    import functools

    def wrapper() -> bool:
        return flag_actor()

    wrapper.__wrapped__ = flag_actor  # type: ignore[attr-defined]
    for source in (functools.partial(flag_actor), wrapper, functools.partial(wrapper)):
        with audit_context(actor=source), pytest.raises(ContextError) as info:  # type: ignore[arg-type]
            current_context()
        name = f"{flag_actor.__module__}.flag_actor"
        assert f"the actor callable {name} returned True" in str(info.value)


# --- end to end: the transaction row -----------------------------------------------------------


def actors(session: Session) -> list[str | None]:
    transactions = versioning.transaction_table(Base.metadata)
    assert isinstance(transactions, sa.Table)
    rows = session.execute(sa.select(transactions.c.actor).order_by(transactions.c.id)).all()
    session.commit()
    return [row.actor for row in rows]


def test_transaction_row_takes_the_callable_actor_at_the_first_flush(
    create_tables: Callable[[sa.MetaData], sa.Engine], sessions: Callable[[], Session]
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    source = Source(None)
    with audit_context(actor=lambda: source(), request_id="req-7"):
        page = Page(id=1, title="draft")
        session.add(page)
        source.actor = "alice"  # authentication ran before anything was flushed
        session.flush()
        # later flushes of the same database transaction keep the first answer
        source.actor = "mallory"
        page.title = "edited"
        session.flush()
        session.add(Page(id=2, title="second"))
        session.commit()
        # a new database transaction asks again
        source.actor = 99
        page.title = "final"
        session.commit()

    assert actors(session) == ["alice", "99"]
    versions = history(session, Page, 1)
    assert [v.transaction.actor for v in versions if v.transaction] == ["alice", "alice", "99"]
    assert all(v.transaction and v.transaction.request_id == "req-7" for v in versions)
    assert [v.transaction.actor for v in history(session, Page, 2) if v.transaction] == ["alice"]
    session.commit()


def test_callable_is_asked_once_per_database_transaction(
    create_tables: Callable[[sa.MetaData], sa.Engine], sessions: Callable[[], Session]
) -> None:
    # The callable may be costly (a user lookup): it is asked when the transaction row is written,
    # not again at the later flushes of that transaction, whose row already names the actor.
    create_tables(Base.metadata)
    session = sessions()
    source = Source("alice")
    with audit_context(actor=source):  # type: ignore[arg-type]
        page = Page(id=1, title="a")
        session.add(page)
        assert source.calls == 0
        session.flush()
        assert source.calls == 1
        for n in range(3):
            page.title = f"edit {n}"
            session.flush()
        session.add(Page(id=2, title="b"))
        session.commit()
        assert source.calls == 1
        page.title = "next transaction"
        session.commit()
        assert source.calls == 2
    assert actors(session) == ["alice", "alice"]


def test_set_actor_wins_over_the_callable_in_the_transaction_row(
    create_tables: Callable[[sa.MetaData], sa.Engine], sessions: Callable[[], Session]
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    with audit_context(actor=lambda: "anonymous"):
        set_actor("carol")
        session.add(Page(id=1, title="by carol"))
        session.commit()
    with audit_context(actor=lambda: "anonymous"):
        session.add(Page(id=2, title="by anonymous"))
        session.commit()
    with audit_context(actor="job:import"), audit_context(actor=lambda: None):
        session.add(Page(id=3, title="by the job"))
        session.commit()
    assert actors(session) == ["carol", "anonymous", "job:import"]


def test_callable_returning_a_bad_actor_fails_the_flush_and_writes_nothing(
    create_tables: Callable[[sa.MetaData], sa.Engine], sessions: Callable[[], Session]
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    with audit_context(actor=lambda: ["not", "an", "actor"]):  # type: ignore[arg-type,return-value]
        session.add(Page(id=1, title="never"))
        with pytest.raises(ContextError, match="actor"):
            session.commit()
    session.rollback()
    assert session.get(Page, 1) is None
    assert actors(session) == []
    assert history(session, Page, 1) == []
    session.commit()


def test_callable_returning_zero_or_false_commits_on_every_backend(
    create_tables: Callable[[sa.MetaData], sa.Engine], sessions: Callable[[], Session]
) -> None:
    """``0`` is recorded as the actor ``"0"``; ``False`` (``user.is_authenticated and user.id``
    for an anonymous user) is no actor — the commit goes through, it used to raise."""
    create_tables(Base.metadata)
    session = sessions()
    for user in (User(0), User(5, authenticated=False)):
        with audit_context(actor=lambda user=user: user.is_authenticated and user.id):  # type: ignore[misc]
            session.add(Page(id=len(actors(session)) + 1, title="x"))
            session.commit()
    assert actors(session) == ["0", None]


def test_callable_returning_true_or_nul_fails_the_flush_naming_it_and_writes_nothing(
    create_tables: Callable[[sa.MetaData], sa.Engine], sessions: Callable[[], Session]
) -> None:
    create_tables(Base.metadata)
    session = sessions()
    for bad in (True, "alice\x00"):

        def user_lookup(bad: object = bad) -> object:
            return bad

        with audit_context(actor=user_lookup):  # type: ignore[arg-type]
            session.add(Page(id=1, title="never"))
            with pytest.raises(ContextError, match=r"actor callable .*user_lookup returned"):
                session.commit()
        session.rollback()
        assert session.get(Page, 1) is None
        assert actors(session) == []
        assert history(session, Page, 1) == []
        session.commit()
