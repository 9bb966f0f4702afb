"""Models and a small story for the review page's tests (tests/test_review*.py): customers with
orders (a relationship, so "as it was at" shows related records), a masked column, stored XSS
payloads typed by users, a denied event."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import versioning
from versioning import Versioned, audit_context

XSS_SCRIPT = "<script>window.__x=1</script>"
XSS_ATTRIBUTE = '" onmouseover="window.__x=1'


class ReviewBase(DeclarativeBase):
    pass


class Customer(Versioned, ReviewBase):
    __tablename__ = "review_customers"
    __versioned__ = {"mask": {"email": versioning.masks.redact}, "personal": ["phone"]}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    email: Mapped[str | None] = mapped_column(sa.String(200))
    phone: Mapped[str | None] = mapped_column(sa.String(40))
    orders: Mapped[list[Order]] = relationship(back_populates="customer")


class Order(Versioned, ReviewBase):
    __tablename__ = "review_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("review_customers.id"))
    status: Mapped[str] = mapped_column(sa.String(200))
    customer: Mapped[Customer] = relationship(back_populates="orders")


@dataclass
class Story:
    """What :func:`tell` wrote: the transaction ids and the moments between them."""

    created: int
    shipped: int
    xss: int
    before_shipping: dt.datetime


def _last_transaction(session: Session) -> int:
    return versioning.history(session, Order, 1)[-1].transaction_id


def tell(engine: sa.Engine, pause: float = 0.0) -> Story:
    """alice creates a customer and orders 1 and 3, bob ships order 1 and pays order 3, mallory
    stores XSS payloads; a denied login is recorded as an event. ``pause`` seconds pass before
    and after ``before_shipping`` (whole seconds apart: MariaDB keeps times to the second)."""
    with Session(engine) as session:
        with audit_context(actor="alice", source_ip="203.0.113.7", reason="new order"):
            customer = Customer(id=1, name="Ada", email="ada@example.com", phone="+44 20 7946 0000")
            session.add_all(
                [
                    customer,
                    Order(id=1, customer=customer, status="new"),
                    Order(id=3, customer=customer, status="draft"),
                ]
            )
            session.commit()
        created = _last_transaction(session)
        time.sleep(pause)
        before_shipping = dt.datetime.now(dt.UTC).replace(microsecond=0)
        time.sleep(pause)
        with audit_context(actor="bob", request_id="req-ship-1", reason="picked up"):
            order = session.get(Order, 1)
            assert order is not None
            order.status = "shipped"
            paid = session.get(Order, 3)
            assert paid is not None
            paid.status = "paid"
            session.commit()
        shipped = _last_transaction(session)
        with audit_context(actor=f"mallory{XSS_ATTRIBUTE}", reason=XSS_SCRIPT):
            session.add(Order(id=2, customer_id=1, status=XSS_SCRIPT))
            order = session.get(Order, 1)
            assert order is not None
            order.status = XSS_ATTRIBUTE
            session.commit()
        xss = _last_transaction(session)
    with audit_context(actor="eve", source_ip="198.51.100.9"):
        versioning.record_event(engine, "login", outcome="denied", target="admin")
    return Story(created, shipped, xss, before_shipping)
