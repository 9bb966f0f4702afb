"""Capture for inheritance hierarchies: joined-table and single-table.

A hierarchy keeps one history table, named after the base table, holding the columns of every
class. Inserts, updates and deletes of base and subclass instances are recorded with full
snapshots, readable through the base class and through the subclass, and ``Version.model`` is the
concrete class of the record. Every test runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
from versioning import Operation, Versioned, history, history_table

from helpers import count, ops, read

CreateTables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE


class Base(DeclarativeBase):
    pass


# --- joined-table inheritance ----------------------------------------------------------------


class Employee(Versioned, Base):
    __tablename__ = "inh_employees"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(50))

    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "employee"}


class Manager(Employee):
    __tablename__ = "inh_managers"

    id: Mapped[int] = mapped_column(sa.ForeignKey("inh_employees.id"), primary_key=True)
    budget: Mapped[int] = mapped_column(default=100)

    __mapper_args__ = {"polymorphic_identity": "manager"}


class Engineer(Employee):
    __tablename__ = "inh_engineers"

    id: Mapped[int] = mapped_column(sa.ForeignKey("inh_employees.id"), primary_key=True)
    language: Mapped[str | None] = mapped_column(sa.String(20))

    __mapper_args__ = {"polymorphic_identity": "engineer"}


# --- single-table inheritance ----------------------------------------------------------------


class Vehicle(Versioned, Base):
    __tablename__ = "inh_vehicles"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(50))

    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Car(Vehicle):
    doors: Mapped[int | None] = mapped_column(nullable=True)

    __mapper_args__ = {"polymorphic_identity": "car"}


class Truck(Vehicle):
    payload: Mapped[int | None] = mapped_column(nullable=True)

    __mapper_args__ = {"polymorphic_identity": "truck"}


TX = Base.metadata.tables[versioning.TRANSACTION_TABLE]


# --- declaration -----------------------------------------------------------------------------


def test_one_history_table_per_hierarchy() -> None:
    joined = history_table(Employee)
    assert joined.name == "inh_employees_history"
    assert history_table(Manager) is joined
    assert history_table(Engineer) is joined
    assert {"id", "type", "name", "budget", "language"} <= set(joined.c.keys())
    single = history_table(Vehicle)
    assert single.name == "inh_vehicles_history"
    assert history_table(Car) is single
    assert history_table(Truck) is single
    assert {"id", "kind", "name", "doors", "payload"} <= set(single.c.keys())
    assert "inh_managers_history" not in Base.metadata.tables
    assert isinstance(joined.c.budget.type, sa.Integer)
    assert joined.c.budget.nullable


# --- joined-table ----------------------------------------------------------------------------


def test_joined_insert_update_delete_of_subclass(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Manager(id=1, name="m"))
        session.commit()
        manager = session.get(Manager, 1)
        assert manager is not None
        manager.name = "m2"  # base table column
        manager.budget = 200  # subclass table column
        session.commit()
        manager.budget = 300  # expired after the commit
        session.commit()
        session.delete(manager)
        session.commit()
    for model in (Employee, Manager):
        versions = read(sessions, model, 1)
        assert ops(versions) == [INSERT, UPDATE, UPDATE, DELETE]
        assert all(v.model is Manager for v in versions)
        assert dict(versions[0].state) == {"id": 1, "type": "manager", "name": "m", "budget": 100}
        assert dict(versions[1].changes) == {"name": ("m", "m2"), "budget": (100, 200)}
        assert dict(versions[2].changes) == {"budget": (200, 300)}
        assert dict(versions[2].state) == {"id": 1, "type": "manager", "name": "m2", "budget": 300}
        assert dict(versions[3].state) == {"id": 1, "type": "manager", "name": "m2", "budget": 300}
    assert read(sessions, Engineer, 1) == []


def test_joined_base_instance(create_tables: CreateTables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Employee(id=1, name="e"))
        session.commit()
        employee = session.get(Employee, 1)
        assert employee is not None
        employee.name = "e2"
        session.commit()
        session.delete(employee)  # expired
        session.commit()
    versions = read(sessions, Employee, 1)
    assert ops(versions) == [INSERT, UPDATE, DELETE]
    assert all(v.model is Employee for v in versions)
    assert dict(versions[0].state) == {"id": 1, "type": "employee", "name": "e"}
    assert dict(versions[1].changes) == {"name": ("e", "e2")}
    assert dict(versions[2].state) == {"id": 1, "type": "employee", "name": "e2"}
    assert read(sessions, Manager, 1) == []


def test_joined_subclass_loaded_through_base_query(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """Loaded through the base class, the subclass's own columns are not loaded yet."""
    create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Manager(id=1, name="m", budget=150), Engineer(id=2, name="e")])
        session.commit()
    with sessions() as session:
        manager, engineer = session.scalars(sa.select(Employee).order_by(Employee.id)).all()
        assert isinstance(manager, Manager) and isinstance(engineer, Engineer)
        manager.name = "m2"
        session.delete(engineer)
        session.commit()
    update = read(sessions, Employee, 1)[-1]
    assert update.model is Manager
    assert dict(update.changes) == {"name": ("m", "m2")}
    assert dict(update.state) == {"id": 1, "type": "manager", "name": "m2", "budget": 150}
    deleted = read(sessions, Engineer, 2)[-1]
    assert deleted.operation is DELETE
    assert deleted.model is Engineer
    assert dict(deleted.state) == {"id": 2, "type": "engineer", "name": "e", "language": None}


def test_joined_change_of_subclass_column_only(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Engineer(id=1, name="e", language="py"))
        session.commit()
    with sessions() as session:
        engineer = session.get(Employee, 1)
        assert isinstance(engineer, Engineer)
        engineer.language = "rust"
        session.commit()
    insert, update = read(sessions, Engineer, 1)
    assert insert.model is update.model is Engineer
    assert dict(insert.state) == {"id": 1, "type": "engineer", "name": "e", "language": "py"}
    assert dict(update.changes) == {"language": ("py", "rust")}


# --- single-table ----------------------------------------------------------------------------


def test_single_insert_update_delete_of_subclass(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Car(id=1, name="c", doors=4))
        session.commit()
        car = session.get(Car, 1)
        assert car is not None
        car.doors = 2
        car.name = "c2"
        session.commit()
        car.doors = 3  # expired
        session.commit()
        session.delete(car)
        session.commit()
    for model in (Vehicle, Car):
        versions = read(sessions, model, 1)
        assert ops(versions) == [INSERT, UPDATE, UPDATE, DELETE]
        assert all(v.model is Car for v in versions)
        assert dict(versions[0].state) == {"id": 1, "kind": "car", "name": "c", "doors": 4}
        assert dict(versions[1].changes) == {"name": ("c", "c2"), "doors": (4, 2)}
        assert dict(versions[2].changes) == {"doors": (2, 3)}
        assert dict(versions[3].state) == {"id": 1, "kind": "car", "name": "c2", "doors": 3}
    assert read(sessions, Truck, 1) == []


def test_single_base_instance(create_tables: CreateTables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Vehicle(id=1, name="v"))
        session.commit()
        vehicle = session.get(Vehicle, 1)
        assert vehicle is not None
        vehicle.name = "v2"
        session.commit()
        session.delete(vehicle)
        session.commit()
    versions = read(sessions, Vehicle, 1)
    assert ops(versions) == [INSERT, UPDATE, DELETE]
    assert all(v.model is Vehicle for v in versions)
    assert dict(versions[0].state) == {"id": 1, "kind": "vehicle", "name": "v"}
    assert dict(versions[1].changes) == {"name": ("v", "v2")}
    assert dict(versions[2].state) == {"id": 1, "kind": "vehicle", "name": "v2"}
    assert read(sessions, Car, 1) == []


def test_single_subclasses_loaded_through_base_query(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Car(id=1, name="c", doors=4), Truck(id=2, name="t", payload=10)])
        session.commit()
    with sessions() as session:
        car, truck = session.scalars(sa.select(Vehicle).order_by(Vehicle.id)).all()
        assert isinstance(car, Car) and isinstance(truck, Truck)
        truck.payload = 20
        session.delete(car)
        session.commit()
    truck_versions = read(sessions, Vehicle, 2)
    assert [v.model for v in truck_versions] == [Truck, Truck]
    assert dict(truck_versions[1].changes) == {"payload": (10, 20)}
    assert dict(truck_versions[1].state) == {"id": 2, "kind": "truck", "name": "t", "payload": 20}
    car_versions = read(sessions, Car, 1)
    assert ops(car_versions) == [INSERT, DELETE]
    assert dict(car_versions[1].state) == {"id": 1, "kind": "car", "name": "c", "doors": 4}


# --- both ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kinds", ["joined", "single"])
def test_mixed_classes_in_one_flush_write_one_history_statement(
    create_tables: CreateTables, sessions: Sessions, kinds: str
) -> None:
    engine = create_tables(Base.metadata)
    if kinds == "joined":
        base, classes, table = Employee, (Employee, Manager, Engineer), history_table(Employee)
    else:
        base, classes, table = Vehicle, (Vehicle, Car, Truck), history_table(Vehicle)
    statements: list[str] = []

    def listener(*args: Any) -> None:
        if table.name in args[2]:
            statements.append(args[2])

    with sessions() as session:
        session.add_all([classes[i % 3](id=i, name=f"n{i}") for i in range(1, 31)])
        event.listen(engine, "before_cursor_execute", listener)
        try:
            session.commit()
        finally:
            event.remove(engine, "before_cursor_execute", listener)
    assert len(statements) == 1, statements
    assert count(engine, table) == 30
    assert count(engine, TX) == 1
    with sessions() as session:
        models = [v.model for i in (1, 2, 3) for v in history(session, base, i)]
    assert models == [classes[i % 3] for i in (1, 2, 3)]
