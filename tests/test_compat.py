"""versioning/_compat.py: the one file that reads SQLAlchemy's private attributes.

No database: these check, on the installed SQLAlchemy, that each helper still finds what it reads
(an upgrade that moves an attribute fails here, by name), and that no other module of the core
reads a private attribute of anything but its own objects.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    with_loader_criteria,
)

from versioning import _compat

CORE = Path(__file__).resolve().parent.parent / "versioning"
table = sa.table("t", sa.column("a"), sa.column("b"))


def _private_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            owner = node.value
            own = isinstance(owner, ast.Name) and owner.id in ("self", "other")
            if not node.attr.startswith("__") and not own:
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args
            if node.func.id in ("getattr", "setattr", "hasattr") and len(args) > 1:
                name = args[1]
                if (
                    isinstance(name, ast.Constant)
                    and isinstance(name.value, str)
                    and name.value.startswith("_")
                    and not name.value.startswith("__")
                ):
                    found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_compat_reads_private_attributes() -> None:
    modules = sorted(p for p in CORE.glob("*.py") if p.name != "_compat.py")
    assert len(modules) > 10
    found = [line for path in modules for line in _private_reads(path)]
    assert found == [], "route these through versioning/_compat.py:\n" + "\n".join(found)
    assert _private_reads(CORE / "_compat.py")  # the check sees private reads where they are


def test_statement_readers_find_what_statements_hold() -> None:
    update = sa.update(table).values(a=1, b=2)
    assert [(str(getattr(t, "key", t)), v.value) for t, v in _compat.set_clause(update)] == [
        ("a", 1),
        ("b", 2),
    ]
    ordered = sa.update(table).ordered_values((table.c.b, 3), (table.c.a, 4))
    assert [(t.key, v.value) for t, v in _compat.set_clause(ordered)] == [("b", 3), ("a", 4)]

    single = sa.insert(table).values(a=1)
    assert _compat.insert_multi_values(single) == ()
    assert list(dict(_compat.insert_values(single))) == ["a"]
    multi = sa.insert(table).values([{"a": 1}, {"a": 2}])
    assert [row["a"] for group in _compat.insert_multi_values(multi) for row in group] == [1, 2]
    assert _compat.insert_values(sa.insert(table)) is None

    prefixed = sa.insert(table).prefix_with("OR IGNORE", dialect="sqlite")
    assert [(str(clause), only) for clause, only in _compat.prefixes(prefixed)] == [
        ("OR IGNORE", "sqlite")
    ]
    assert _compat.prefixes(sa.insert(table)) == ()

    upsert = postgresql.insert(table).on_conflict_do_nothing()
    assert _compat.post_values_clause(upsert) is not None
    assert _compat.post_values_clause(sqlite.insert(table)) is None

    assert len(_compat.returning(sa.insert(table).returning(table.c.a))) == 1
    assert _compat.returning(sa.insert(table)) == ()


def test_mapping_and_type_readers_find_what_sqlalchemy_holds() -> None:
    class Base(DeclarativeBase):
        pass

    link = sa.Table(
        "compat_link",
        Base.metadata,
        sa.Column("a", sa.ForeignKey("compat_a.id"), primary_key=True),
        sa.Column("b", sa.Integer, primary_key=True),
    )

    class A(Base):
        __tablename__ = "compat_a"
        id: Mapped[int] = mapped_column(primary_key=True)
        others: Mapped[list[A]] = relationship(
            secondary="compat_link", primaryjoin=lambda: A.id == link.c.a, viewonly=True
        )

    declared = _compat.mapper_properties(A.__mapper__)
    assert not A.__mapper__.configured  # read without configuring
    assert sorted(p.key for p in declared) == ["id", "others"]
    prop: Any = A.__mapper__.relationships["others"]
    assert _compat.relationship_secondary_argument(prop) == "compat_link"
    assert _compat.mapper_primary_key_argument(A.__mapper__) is None

    assert _compat.type_is_null(sa.types.NullType()) and not _compat.type_is_null(sa.Integer())
    assert _compat.type_affinity(sa.BigInteger()) is _compat.type_affinity(sa.Integer())
    assert _compat.type_affinity(sa.String()) is not _compat.type_affinity(sa.Integer())
    variant = sa.String().with_variant(sa.Text(), "sqlite")
    assert isinstance(_compat.variant_mapping(variant)["sqlite"], sa.Text)
    assert _compat.variant_mapping(sa.Integer()) == {}
    assert _compat.is_interval(sa.Interval()) and _compat.is_interval(postgresql.INTERVAL())
    assert not _compat.is_interval(sa.DateTime())
    assert _compat.decimal_return_scale(sa.Numeric(10, 2)) == 2
    assert _compat.decimal_return_scale(sa.Numeric()) == 10
    datetime_impl = sa.DateTime().dialect_impl(sqlite.dialect())
    stored, pattern = _compat.sqlite_storage(datetime_impl)
    assert stored is not None and stored.endswith(".%(microsecond)06d") and pattern is None

    session = Session()
    _compat.autoflush(session)  # exists and does nothing without pending changes
    assert _compat.session_flushing(session) is False
    with session.begin():
        transaction = session.get_transaction()
        error = RuntimeError("ours")
        _compat.replace_rollback_exception(transaction, error)  # nothing to replace: no-op
        assert getattr(transaction, "_rollback_exception", None) is None


def test_orm_options_and_flush_cycles_are_found() -> None:
    class Base(DeclarativeBase):
        pass

    class Node(Base):
        __tablename__ = "compat_node"
        id: Mapped[int] = mapped_column(primary_key=True)
        parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("compat_node.id"))
        parent: Mapped[Node | None] = relationship(remote_side=[id])

    statement = sa.update(Node).options(with_loader_criteria(Node, Node.id > 0))
    assert len(_compat.orm_options(statement)) == 1
    assert _compat.orm_options(sa.update(Node)) == ()

    seen: list[bool] = []

    def note(session: Session, context: Any) -> None:
        seen.append(_compat.has_cycles(context))

    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        sa.event.listen(session, "after_flush", note)
        session.add(Node(id=1))
        session.flush()  # no self-reference in this flush: no cycle
        root = session.get(Node, 1)
        session.add(Node(id=2, parent=root))
        session.flush()  # rows of a self-referential mapper depend on each other: a cycle
    assert seen == [False, True]


def test_loader_callables_and_remote_annotations_are_found() -> None:
    class Base(DeclarativeBase):
        pass

    class Tree(Base):
        __tablename__ = "compat_tree"
        id: Mapped[int] = mapped_column(primary_key=True)
        parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("compat_tree.id"))
        parent: Mapped[Tree | None] = relationship(remote_side=[id])

    prop: Any = Tree.__mapper__.relationships["parent"]
    remote = [c.name for c in sa.sql.visitors.iterate(prop.primaryjoin) if _compat.is_remote(c)]
    assert remote == ["id"]  # self-referential: told apart by the annotation only

    tree, other = Tree(id=2, parent_id=1), Tree(id=3, parent_id=1)
    calls: list[Any] = []

    def load(state: Any, passive: Any) -> Any:
        calls.append(state.obj())
        return Tree(id=1)

    loaders = {"parent": load}
    _compat.set_loaders(sa.inspect(tree), loaders)  # one loader shared by two instances
    _compat.set_loaders(sa.inspect(other), loaders)
    assert tree.parent is not None and tree.parent.id == 1
    assert tree.parent.id == 1 and calls == [tree]  # loaded once, then held
    assert other.parent is not None and calls == [tree, other]
    assert loaders == {"parent": load}  # each state has a copy of its own


def test_a_flush_in_progress_is_seen() -> None:
    class Base(DeclarativeBase):
        pass

    class Thing(Base):
        __tablename__ = "compat_things"
        id: Mapped[int] = mapped_column(primary_key=True)

    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    seen: list[bool] = []
    with Session(engine) as session:
        sa.event.listen(
            Thing, "before_insert", lambda *_: seen.append(_compat.session_flushing(session))
        )
        session.add(Thing(id=1))
        session.flush()
        assert seen == [True] and not _compat.session_flushing(session)
    engine.dispose()
