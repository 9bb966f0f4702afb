"""``versioning.diff``: what differs between any two versions of a record, or a version and the
live record — masked, excluded and erased fields as ``changes`` treats them — on every backend."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
from versioning import ERASED, ArgumentError, Versioned, diff, history, masks

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]


class Base(DeclarativeBase):
    pass


class Account(Versioned, Base):
    __tablename__ = "diff_accounts"
    __versioned__ = {
        "mask": {"card": masks.last4},
        "exclude": ["visits"],
        "personal": ["email"],
    }
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))
    balance: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))
    opened: Mapped[dt.date]
    card: Mapped[str] = mapped_column(sa.String(20))
    email: Mapped[str | None] = mapped_column(sa.String(50))
    visits: Mapped[int] = mapped_column(default=0)


class Other(Versioned, Base):
    __tablename__ = "diff_others"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


CARD = "4111111111111111"


def _versions(session: Session) -> list[versioning.Version]:
    session.add(
        Account(
            id=1,
            name="a",
            balance=Decimal("1.00"),
            opened=dt.date(2024, 1, 1),
            card=CARD,
            email="a@example.com",
        )
    )
    session.commit()
    account = session.get_one(Account, 1)
    account.name, account.visits = "b", 3  # visits is excluded
    session.commit()
    account.balance, account.card = Decimal("2.50"), "4000000000000002"
    session.commit()
    account.name = "c"
    session.commit()
    return history(session, Account, 1)


def test_any_two_versions_in_either_order(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    with sessions() as s:
        v1, v2, v3, v4 = _versions(s)
        assert diff(v1, v2) == {"name": ("a", "b")}
        assert diff(v2, v1) == {"name": ("b", "a")}
        assert diff(v1, v4) == {
            "name": ("a", "c"),
            "balance": (Decimal("1.00"), Decimal("2.50")),
            "card": ("************1111", "************0002"),  # mask outputs only
        }
        assert diff(v2, v3) == {
            "balance": (Decimal("1.00"), Decimal("2.50")),
            "card": ("************1111", "************0002"),
        }
        assert diff(v3, v3) == {}
        assert all(isinstance(d["balance"][1], Decimal) for d in [diff(v1, v4)])


def test_a_version_and_the_live_record(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    with sessions() as s:
        v1, _, _, v4 = _versions(s)
        live = s.get_one(Account, 1)
        assert diff(v4, live) == {}
        live.card, live.visits, live.opened = "5555444433330002", 9, dt.date(2025, 1, 1)
        # The same last four digits: masked, nothing to tell apart; visits is not recorded.
        assert diff(v4, live) == {"opened": (dt.date(2024, 1, 1), dt.date(2025, 1, 1))}
        assert diff(live, v1) == {
            "name": ("c", "a"),
            "balance": (Decimal("2.50"), Decimal("1.00")),
            "opened": (dt.date(2025, 1, 1), dt.date(2024, 1, 1)),
            "card": ("************0002", "************1111"),
        }
        s.rollback()


def test_erased_fields_are_shown_as_erased(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    with sessions() as s:
        _versions(s)
        s.get_one(Account, 1).email = "b@example.com"
        s.commit()
        versioning.erase(s, Account, 1, columns=["email"], reason="GDPR")
        s.commit()
        v1, v2, *_, v5 = history(s, Account, 1)
        assert v1.erased == {"email"}
        assert diff(v1, v2) == {"name": ("a", "b"), "email": (ERASED, ERASED)}
        assert diff(v5, s.get_one(Account, 1)) == {"email": (ERASED, "b@example.com")}
        assert repr(ERASED) == "versioning.ERASED"


def test_different_records_and_bad_arguments_are_refused(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as s:
        v1 = _versions(s)[0]
        s.add_all(
            [Account(id=2, name="x", balance=0, opened=dt.date(2024, 1, 1), card="1"), Other(id=1)]
        )
        s.commit()
        other = history(s, Account, 2)[0]
        with pytest.raises(ArgumentError, match=r"Account 1 \(version \d+\) and Account 2 \("):
            diff(v1, other)
        with pytest.raises(ArgumentError, match=r"Account 1 .* and Other 1 \(version"):
            diff(v1, history(s, Other, 1)[0])
        with pytest.raises(ArgumentError, match=r"Account 1 \(version \d+\) and Account 2 \(live"):
            diff(v1, s.get_one(Account, 2))
        with pytest.raises(ArgumentError, match="two live instances"):
            diff(s.get_one(Account, 1), s.get_one(Account, 1))
        with pytest.raises(ArgumentError, match="the second argument is 3"):
            diff(v1, 3)
