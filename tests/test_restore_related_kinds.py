"""Restoring with relationships, for the relationship kinds beyond one-to-many and many-to-many:
one-to-one, self-referential, through joined-table and single-table inheritance, and composite
primary keys. Each test changes the graph over several transactions, restores an earlier moment,
and checks the live rows, the history (one transaction, its reason) and that a second restore
writes nothing. Every test runs on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import versioning
from versioning import Operation, Versioned, history, restore

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]
INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE


class Base(DeclarativeBase):
    pass


# --- one-to-one ------------------------------------------------------------------------------


class Person(Versioned, Base):
    __tablename__ = "rk_people"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))
    passport: Mapped[Passport | None] = relationship(
        back_populates="person", cascade="all, delete-orphan", uselist=False
    )


class Passport(Versioned, Base):
    __tablename__ = "rk_passports"
    id: Mapped[int] = mapped_column(primary_key=True)
    # Unique: one passport per person, so the one put back needs the one removed gone first.
    person_id: Mapped[int] = mapped_column(sa.ForeignKey("rk_people.id"), unique=True)
    number: Mapped[str] = mapped_column(sa.String(20))
    person: Mapped[Person] = relationship(back_populates="passport")


# --- self-referential ------------------------------------------------------------------------


class Staff(Versioned, Base):
    __tablename__ = "rk_staff"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))
    manager_id: Mapped[int | None] = mapped_column(sa.ForeignKey("rk_staff.id"))
    manager: Mapped[Staff | None] = relationship(back_populates="reports", remote_side=[id])
    reports: Mapped[list[Staff]] = relationship(back_populates="manager", order_by="Staff.id")


# --- joined-table inheritance: a subclass's relationship to subclasses -----------------------


class Account(Versioned, Base):
    __tablename__ = "rk_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(20))
    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "account"}


class Customer(Account):
    __tablename__ = "rk_customers"
    id: Mapped[int] = mapped_column(sa.ForeignKey("rk_accounts.id"), primary_key=True)
    tier: Mapped[str] = mapped_column(sa.String(10))
    tickets: Mapped[list[Ticket]] = relationship(
        back_populates="customer", cascade="all, delete-orphan", order_by="Ticket.id"
    )
    __mapper_args__ = {"polymorphic_identity": "customer"}


class Ticket(Versioned, Base):
    __tablename__ = "rk_tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(20))
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("rk_customers.id"))
    title: Mapped[str] = mapped_column(sa.String(20))
    customer: Mapped[Customer] = relationship(back_populates="tickets")
    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "ticket"}


class Bug(Ticket):
    __tablename__ = "rk_bugs"
    id: Mapped[int] = mapped_column(sa.ForeignKey("rk_tickets.id"), primary_key=True)
    severity: Mapped[int]
    __mapper_args__ = {"polymorphic_identity": "bug"}


class Idea(Ticket):
    __tablename__ = "rk_ideas"
    id: Mapped[int] = mapped_column(sa.ForeignKey("rk_tickets.id"), primary_key=True)
    votes: Mapped[int]
    __mapper_args__ = {"polymorphic_identity": "idea"}


# --- single-table inheritance: a subclass's relationship to subclasses -----------------------


class Vehicle(Versioned, Base):
    __tablename__ = "rk_vehicles"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Truck(Vehicle):
    axles: Mapped[int | None] = mapped_column(nullable=True)
    trailers: Mapped[list[Trailer]] = relationship(
        back_populates="truck", cascade="all, delete-orphan", order_by="Trailer.id"
    )
    __mapper_args__ = {"polymorphic_identity": "truck"}


class Trailer(Versioned, Base):
    __tablename__ = "rk_trailers"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    truck_id: Mapped[int] = mapped_column(sa.ForeignKey("rk_vehicles.id"))
    load: Mapped[str] = mapped_column(sa.String(20))
    truck: Mapped[Truck] = relationship(back_populates="trailers")
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "trailer"}


class Reefer(Trailer):
    celsius: Mapped[int | None] = mapped_column(nullable=True)
    __mapper_args__ = {"polymorphic_identity": "reefer"}


# --- composite primary keys ------------------------------------------------------------------


class Shipment(Versioned, Base):
    __tablename__ = "rk_shipments"
    region: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(sa.String(10))
    packages: Mapped[list[Package]] = relationship(
        back_populates="shipment", cascade="all, delete-orphan", order_by="Package.seq"
    )


class Package(Versioned, Base):
    __tablename__ = "rk_packages"
    region: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kilos: Mapped[int]
    shipment: Mapped[Shipment] = relationship(back_populates="packages")
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["region", "number"], ["rk_shipments.region", "rk_shipments.number"]
        ),
    )


MODELS = (Person, Passport, Staff, Account, Ticket, Vehicle, Trailer, Shipment, Package)


def _last_transaction(session: Session) -> int:
    table = versioning.transaction_table(Base.metadata)
    return int(session.execute(sa.select(sa.func.max(table.c.id))).scalar_one())


def _rows(session: Session) -> dict[str, int]:
    """Rows of every table, live and history: what a restore that writes nothing leaves."""
    tables = [*Base.metadata.sorted_tables, versioning.transaction_table(Base.metadata)]
    tables += [versioning.history_table(model) for model in MODELS]
    return {
        t.name: int(session.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
        for t in tables
    }


def _last(session: Session, *records: tuple[type[Any], Any]) -> dict[Any, tuple[Operation, int]]:
    """The last version of each record: its operation and transaction."""
    out = {}
    for model, pk in records:
        version = history(session, model, pk)[-1]
        out[model.__name__, pk] = (version.operation, version.transaction_id)
    return out


def _reason(session: Session, model: type[Any], pk: Any) -> str:
    transaction = history(session, model, pk)[-1].transaction
    assert transaction is not None and transaction.reason is not None
    return transaction.reason


def _restore_again_writes_nothing(sessions: Sessions, *args: Any, **kwargs: Any) -> None:
    with sessions() as s:
        before = _rows(s)
        restore(s, *args, **kwargs)
        s.commit()
        assert _rows(s) == before


def test_one_to_one_child_replaced_deleted_and_added_since(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as s:
        ann = Person(name="ann", passport=Passport(number="A1"))
        bob = Person(name="bob", passport=Passport(number="B1"))
        cy = Person(name="cy")
        s.add_all([ann, bob, cy])
        s.commit()
        ids = {"ann": ann.id, "bob": bob.id, "cy": cy.id}
        a1, b1 = ann.passport.id, bob.passport.id  # type: ignore[union-attr]
        then = _last_transaction(s)
        ann.name = "anna"
        s.commit()
        ann.passport = None  # replaced: A1 deleted (its unique person_id freed first) ...
        s.flush()
        ann.passport = Passport(number="A2")  # ... and A2 in the same transaction
        bob.passport = None  # deleted
        cy.passport = Passport(number="C1")  # added
        s.commit()
        a2, c1 = ann.passport.id, cy.passport.id
    restoring = {}
    for name in ("ann", "bob", "cy"):
        with sessions() as s:
            restore(s, Person, ids[name], at=then, relationships=["passport"])
            s.commit()
            restoring[name] = _last_transaction(s)
    with sessions() as s:
        found = {
            name: (p.name, p.passport and (p.passport.id, p.passport.number))
            for name in ids
            if (p := s.get_one(Person, ids[name]))
        }
        assert found == {"ann": ("ann", (a1, "A1")), "bob": ("bob", (b1, "B1")), "cy": ("cy", None)}
        assert s.get(Passport, a2) is None and s.get(Passport, c1) is None
        assert _last(
            s, (Person, ids["ann"]), (Passport, a1), (Passport, a2), (Passport, b1), (Passport, c1)
        ) == {
            ("Person", ids["ann"]): (UPDATE, restoring["ann"]),
            ("Passport", a1): (INSERT, restoring["ann"]),
            ("Passport", a2): (DELETE, restoring["ann"]),
            ("Passport", b1): (INSERT, restoring["bob"]),
            ("Passport", c1): (DELETE, restoring["cy"]),
        }
        # Bob and Cy were as then themselves: only their passports were written.
        assert history(s, Person, ids["bob"])[-1].transaction_id < restoring["ann"]
        reason = _reason(s, Person, ids["ann"])
        assert f"restore Person {ids['ann']} to transaction {then}" in reason
        assert f"with passport as then: Passport {a1} re-created" in reason
        assert f"Passport {a2} deleted" in reason
        assert f"Passport {c1} deleted" in _reason(s, Passport, c1)
    for name in ids:
        _restore_again_writes_nothing(
            sessions, Person, ids[name], at=then, relationships=["passport"]
        )


def test_self_referential_reports_and_manager(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    with sessions() as s:
        boss = Staff(name="boss")
        other = Staff(name="other")
        boss.reports = [Staff(name="amy"), Staff(name="ben")]
        boss.reports[0].reports = [Staff(name="dev")]
        s.add_all([boss, other])
        s.commit()
        amy, ben = (r.id for r in boss.reports)
        dev = boss.reports[0].reports[0].id
        ids = {"boss": boss.id, "other": other.id}
        then = _last_transaction(s)
        boss.name = "chief"
        boss.reports[0].name = "amelia"
        s.commit()
        s.get_one(Staff, ben).manager = other  # moved to another manager
        s.get_one(Staff, dev).manager = boss  # moved up a level
        s.commit()
        new = Staff(name="new", manager=boss)  # added since: no delete cascade, detached
        s.add(new)
        s.commit()
        new_id = new.id
    with sessions() as s:
        restore(s, Staff, ids["boss"], at=then, relationships=["reports.reports"])
        s.commit()
        restoring = _last_transaction(s)
    with sessions() as s:
        boss = s.get_one(Staff, ids["boss"])
        assert boss.name == "boss"
        assert [(r.id, r.name) for r in boss.reports] == [(amy, "amy"), (ben, "ben")]
        assert [r.id for r in boss.reports[0].reports] == [dev]
        assert s.get_one(Staff, ids["other"]).reports == []
        assert (s.get_one(Staff, new_id).manager_id, s.get_one(Staff, new_id).name) == (None, "new")
        assert _last(s, *((Staff, pk) for pk in (ids["boss"], amy, ben, dev, new_id))) == {
            ("Staff", pk): (UPDATE, restoring) for pk in (ids["boss"], amy, ben, dev, new_id)
        }
        assert history(s, Staff, new_id)[-1].changes == {"manager_id": (ids["boss"], None)}
        reason = _reason(s, Staff, ids["boss"])
        assert f"restore Staff {ids['boss']} to transaction {then}" in reason
        assert "with reports.reports as then" in reason
        for pk in (amy, ben, dev):
            assert f"Staff {pk} restored" in reason
        assert f"Staff {new_id} detached (manager_id cleared)" in reason
    _restore_again_writes_nothing(
        sessions, Staff, ids["boss"], at=then, relationships=["reports.reports"]
    )
    # The many-to-one side: a report restored with its manager as then.
    with sessions() as s:
        s.get_one(Staff, ids["boss"]).name = "chief"
        s.get_one(Staff, amy).manager_id = ids["other"]
        s.commit()
    with sessions() as s:
        restore(s, Staff, amy, at=then, relationships=["manager"])
        s.commit()
        restoring = _last_transaction(s)
        assert (s.get_one(Staff, amy).manager_id, s.get_one(Staff, ids["boss"]).name) == (
            ids["boss"],
            "boss",
        )
        assert _last(s, (Staff, amy), (Staff, ids["boss"])) == {
            ("Staff", amy): (UPDATE, restoring),
            ("Staff", ids["boss"]): (UPDATE, restoring),
        }
    _restore_again_writes_nothing(sessions, Staff, amy, at=then, relationships=["manager"])


def test_a_deleted_manager_comes_back_before_its_reports_point_at_it(
    create_tables: Tables, sessions: Sessions
) -> None:
    """One table: the ORM emits its UPDATEs before its INSERTs unless told the order by the
    relationship, so the reports' foreign keys would point at a manager not inserted yet."""
    create_tables(Base.metadata)
    with sessions() as s:
        boss = Staff(name="boss", reports=[Staff(name="amy"), Staff(name="ben")])
        s.add(boss)
        s.commit()
        boss_id = boss.id
        amy, ben = (r.id for r in boss.reports)
        s.delete(boss)  # no delete cascade: the reports stay, their manager_id cleared
        s.commit()
        assert s.get_one(Staff, amy).manager_id is None
    with sessions() as s:
        deleted = history(s, Staff, boss_id)[-1]
        assert deleted.operation is DELETE
        restore(s, deleted, relationships=["reports"])
        s.commit()
        restoring = _last_transaction(s)
        assert [r.id for r in s.get_one(Staff, boss_id).reports] == [amy, ben]
        assert _last(s, (Staff, boss_id), (Staff, amy), (Staff, ben)) == {
            ("Staff", boss_id): (INSERT, restoring),
            ("Staff", amy): (UPDATE, restoring),
            ("Staff", ben): (UPDATE, restoring),
        }
        assert history(s, Staff, amy)[-1].changes == {"manager_id": (None, boss_id)}
        reason = _reason(s, Staff, boss_id)
        assert f"undelete Staff {boss_id}" in reason
        assert f"Staff {amy} restored; Staff {ben} restored" in reason
    _restore_again_writes_nothing(sessions, deleted, relationships=["reports"])
    # Upwards: a report and its manager both deleted; the report restored with its manager.
    with sessions() as s:
        s.delete(s.get_one(Staff, amy))
        s.delete(s.get_one(Staff, boss_id))
        s.commit()
    with sessions() as s:
        version = history(s, Staff, amy)[-2]
        assert version.operation is UPDATE and version.state["manager_id"] == boss_id
        restore(s, version, relationships=["manager"])
        s.commit()
        restoring = _last_transaction(s)
        assert s.get_one(Staff, amy).manager_id == boss_id
        assert _last(s, (Staff, amy), (Staff, boss_id)) == {
            ("Staff", amy): (INSERT, restoring),
            ("Staff", boss_id): (INSERT, restoring),
        }
    _restore_again_writes_nothing(sessions, version, relationships=["manager"])


def test_joined_table_inheritance(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    with sessions() as s:
        acme = Customer(name="acme", tier="gold")
        acme.tickets = [Bug(title="crash", severity=1), Idea(title="dark", votes=3)]
        s.add(acme)
        s.commit()
        acme_id = acme.id
        bug, idea = (t.id for t in acme.tickets)
        then = _last_transaction(s)
        acme.tier = "silver"
        s.get_one(Bug, bug).severity = 2  # a subclass column
        acme.tickets[0].title = "hang"  # a base column
        s.commit()
        acme.tickets.remove(acme.tickets[1])  # deleted
        acme.tickets.append(Bug(title="slow", severity=5))  # added
        s.commit()
        added = acme.tickets[-1].id
    with sessions() as s:
        # Through the base class: the record is a Customer, whose relationship it is.
        restore(s, Account, acme_id, at=then, relationships=["tickets"])
        s.commit()
        restoring = _last_transaction(s)
    with sessions() as s:
        acme = s.get_one(Customer, acme_id)
        assert acme.tier == "gold"
        assert [(type(t), t.id, t.title) for t in acme.tickets] == [
            (Bug, bug, "crash"),
            (Idea, idea, "dark"),
        ]
        assert (s.get_one(Bug, bug).severity, s.get_one(Idea, idea).votes) == (1, 3)
        assert s.get(Ticket, added) is None
        assert s.execute(sa.select(sa.func.count()).select_from(Bug.__table__)).scalar() == 1
        assert _last(s, (Account, acme_id), (Ticket, bug), (Ticket, idea), (Ticket, added)) == {
            ("Account", acme_id): (UPDATE, restoring),
            ("Ticket", bug): (UPDATE, restoring),
            ("Ticket", idea): (INSERT, restoring),
            ("Ticket", added): (DELETE, restoring),
        }
        assert history(s, Ticket, idea)[-1].model is Idea
        assert history(s, Ticket, idea)[-1].state["votes"] == 3
        reason = _reason(s, Account, acme_id)
        assert f"to transaction {then}" in reason and "with tickets as then" in reason
        assert str(idea) in reason and str(added) in reason
    _restore_again_writes_nothing(sessions, Customer, acme_id, at=then, relationships=["tickets"])
    # The many-to-one side: a subclass child restored with its parent, a joined subclass.
    with sessions() as s:
        s.get_one(Customer, acme_id).tier = "bronze"
        s.get_one(Bug, bug).severity = 9
        s.commit()
    with sessions() as s:
        restore(s, Bug, bug, at=then, relationships=["customer"])
        s.commit()
        restoring = _last_transaction(s)
        assert (s.get_one(Bug, bug).severity, s.get_one(Customer, acme_id).tier) == (1, "gold")
        assert _last(s, (Ticket, bug), (Account, acme_id)) == {
            ("Ticket", bug): (UPDATE, restoring),
            ("Account", acme_id): (UPDATE, restoring),
        }
    _restore_again_writes_nothing(sessions, Bug, bug, at=then, relationships=["customer"])


def test_single_table_inheritance(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    with sessions() as s:
        truck = Truck(name="rig", axles=3)
        truck.trailers = [Reefer(load="fish", celsius=-18), Trailer(load="sand")]
        s.add(truck)
        s.commit()
        truck_id = truck.id
        reefer, flat = (t.id for t in truck.trailers)
        then = _last_transaction(s)
        truck.axles = 4
        s.get_one(Reefer, reefer).celsius = 4
        s.commit()
        truck.trailers.remove(truck.trailers[0])  # the subclass child deleted
        truck.trailers[0].load = "gravel"
        truck.trailers.append(Reefer(load="milk", celsius=2))
        s.commit()
        added = truck.trailers[-1].id
    with sessions() as s:
        restore(s, Truck, truck_id, at=then, relationships=["trailers"])
        s.commit()
        restoring = _last_transaction(s)
    with sessions() as s:
        truck = s.get_one(Truck, truck_id)
        assert truck.axles == 3
        assert [(type(t), t.id, t.load) for t in truck.trailers] == [
            (Reefer, reefer, "fish"),
            (Trailer, flat, "sand"),
        ]
        assert s.get_one(Reefer, reefer).celsius == -18
        assert s.get(Trailer, added) is None
        assert _last(
            s, (Vehicle, truck_id), (Trailer, reefer), (Trailer, flat), (Trailer, added)
        ) == {
            ("Vehicle", truck_id): (UPDATE, restoring),
            ("Trailer", reefer): (INSERT, restoring),
            ("Trailer", flat): (UPDATE, restoring),
            ("Trailer", added): (DELETE, restoring),
        }
        assert history(s, Trailer, reefer)[-1].model is Reefer
        reason = _reason(s, Vehicle, truck_id)
        assert f"to transaction {then}" in reason and "with trailers as then" in reason
        assert str(reefer) in reason and str(added) in reason
    _restore_again_writes_nothing(sessions, Truck, truck_id, at=then, relationships=["trailers"])


def test_composite_primary_keys(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    with sessions() as s:
        shipment = Shipment(region="north", number=7, status="open")
        shipment.packages = [Package(seq=1, kilos=10), Package(seq=2, kilos=20)]
        s.add_all([shipment, Shipment(region="north", number=8, status="open")])
        s.commit()
        then = _last_transaction(s)
        shipment.status = "sent"
        shipment.packages[0].kilos = 11
        s.commit()
        shipment.packages.remove(shipment.packages[1])
        shipment.packages.append(Package(seq=3, kilos=30))
        s.commit()
    key, one, two, three = ("north", 7), ("north", 7, 1), ("north", 7, 2), ("north", 7, 3)
    with sessions() as s:
        restore(s, Shipment, key, at=then, relationships=["packages"])
        s.commit()
        restoring = _last_transaction(s)
    with sessions() as s:
        shipment = s.get_one(Shipment, key)
        assert shipment.status == "open"
        assert [(p.seq, p.kilos) for p in shipment.packages] == [(1, 10), (2, 20)]
        assert s.get(Package, three) is None
        assert s.get_one(Shipment, ("north", 8)).packages == []
        assert _last(s, (Shipment, key), (Package, one), (Package, two), (Package, three)) == {
            ("Shipment", key): (UPDATE, restoring),
            ("Package", one): (UPDATE, restoring),
            ("Package", two): (INSERT, restoring),
            ("Package", three): (DELETE, restoring),
        }
        reason = _reason(s, Shipment, key)
        assert f"restore Shipment {key!r} to transaction {then}" in reason
        assert f"Package {one!r} restored" in reason
        assert f"Package {two!r} re-created" in reason
        assert f"Package {three!r} deleted" in reason
    _restore_again_writes_nothing(sessions, Shipment, key, at=then, relationships=["packages"])
    # The many-to-one side, through a composite foreign key.
    with sessions() as s:
        s.get_one(Shipment, key).status = "lost"
        s.get_one(Package, one).kilos = 12
        s.commit()
    with sessions() as s:
        restore(s, Package, one, at=then, relationships=["shipment"])
        s.commit()
        restoring = _last_transaction(s)
        assert (s.get_one(Package, one).kilos, s.get_one(Shipment, key).status) == (10, "open")
        assert [p.seq for p in s.get_one(Shipment, key).packages] == [1, 2]
        assert _last(s, (Package, one), (Shipment, key)) == {
            ("Package", one): (UPDATE, restoring),
            ("Shipment", key): (UPDATE, restoring),
        }
    _restore_again_writes_nothing(sessions, Package, one, at=then, relationships=["shipment"])
