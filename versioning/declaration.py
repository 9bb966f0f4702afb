"""Declaring a versioned model: the ``Versioned`` mixin and what happens when a class is mapped.

As soon as SQLAlchemy has constructed the mapper of a ``Versioned`` class, the ``__versioned__``
options are checked and the history table is added to the model's own ``MetaData`` — no call to
``configure_mappers()`` or any other setup, so ``metadata.create_all()`` and Alembic autogenerate
see the history tables as soon as the models are imported.

An inheritance hierarchy (single-table or joined-table) keeps its history in one table, named after
the base table, holding the columns of every class in it: a record's history is then one query
whichever class it is read through, and each flush writes one statement per hierarchy. A class of
concrete-table inheritance has a table, and so a history, of its own: its records' keys are
independent of its base's, so sharing a history would mix different records.

A mapper of a class that is not versioned over a versioned table (a second class mapped to it, or
a class mapped to a ``join()`` including it) is refused when it is configured: writes through it
would change versioned rows without any history.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypedDict

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.declarative import AbstractConcreteBase
from sqlalchemy.orm import Mapper, RelationshipProperty

from versioning import _compat
from versioning.errors import ConfigurationError
from versioning.guard import register_tables
from versioning.masks import Mask
from versioning.schema import (
    CAPTURED_BY_DATABASE,
    HISTORY_BY_DATABASE,
    LIVE_TABLE_INFO,
    META_COLUMNS,
    PERSONAL,
    capture_open_table,
    foreign_key_index,
    history_table_for,
    personal_column,
    snapshot_column,
    transaction_table_for,
)

__all__ = [
    "CascadeEdge",
    "ModelSpec",
    "Versioned",
    "VersionedOptions",
    "all_specs",
    "cascade_edges",
    "history_table",
    "require_spec",
    "secondary_table",
    "versioned_spec",
]

_SPEC_ATTR = "__versioning_spec__"
_OPTION_KEYS = frozenset({"capture", "exclude", "mask", "personal", "table_name"})
#: Who writes a model's history: the session (the default) or the database's triggers.
CAPTURES = ("session", "database")


class VersionedOptions(TypedDict, total=False):
    """The keys ``__versioned__`` accepts."""

    capture: str
    exclude: Iterable[str]
    mask: Mapping[str, Mask]
    personal: Iterable[str]
    table_name: str


class Versioned:
    """Mix into a mapped class to record every change to it.

    Options go in a ``__versioned__`` dict on the class: ``exclude`` (columns not tracked),
    ``mask`` (column -> callable applied to the stored values), ``personal`` (columns whose
    recorded values :func:`versioning.erase` may remove) and ``table_name`` (of the history
    table; default ``<tablename>_history``).
    """

    __versioned__: ClassVar[VersionedOptions] = {}


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """What the library knows about one versioned mapper, fixed at declaration time."""

    mapper: Mapper[Any]
    base: ModelSpec | None
    history: sa.Table
    transactions: sa.Table
    #: Attribute keys of the versioned columns (all mapped columns but the excluded ones).
    attrs: tuple[str, ...]
    #: Attribute keys of the primary key columns (a record's :data:`~versioning.live_rows.Key`).
    pk_keys: tuple[str, ...]
    live_columns: dict[str, sa.Column[Any]]
    history_names: dict[str, str]
    masks: dict[str, Mask]
    excluded: frozenset[str]
    refresh_on_update: frozenset[str]
    discriminator: str | None
    #: With a ``version_id_col`` a stale session row fails its UPDATE, so its values are current.
    trusts_session: bool
    #: Attribute keys of the personal columns: their recorded values may be erased
    #: (see :mod:`versioning.personal`).
    personal: frozenset[str]
    #: :attr:`attrs` as a set.
    attr_set: frozenset[str] = field(init=False)
    #: Per dialect name: the columns whose stored value may differ from the one sent (see
    #: :func:`versioning.stored.checks`), filled on first use.
    stored_checks: dict[str, dict[str, Callable[[Any], bool] | type]] = field(
        init=False, default_factory=dict
    )
    #: ``"session"`` (the session path writes its history) or ``"database"`` (its table's
    #: triggers do, see :mod:`versioning.triggers`).
    capture: str = "session"
    #: What reads build once per model and reuse (instance plans, statements; see
    #: :mod:`versioning.instances`, :mod:`versioning.live_rows`), filled on first use; it goes
    #: with the model.
    read_cache: dict[Any, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attr_set", frozenset(self.attrs))

    @property
    def model(self) -> type[Any]:
        return self.mapper.class_

    @property
    def root(self) -> ModelSpec:
        return self if self.base is None else self.base

    def type_of(self, key: str) -> sa.types.TypeEngine[Any]:
        return self.live_columns[key].type


def versioned_spec(mapper: Mapper[Any]) -> ModelSpec | None:
    """The spec of ``mapper`` if its class is versioned, else ``None`` (fast; used per flush).

    :func:`require_spec` is the form for a model given by a caller: it raises instead.
    """
    spec: ModelSpec | None = mapper.class_.__dict__.get(_SPEC_ATTR)
    return spec


def session_spec(mapper: Mapper[Any]) -> ModelSpec | None:
    """The spec of ``mapper`` if the session path records its history, else ``None``: a
    model captured by the database (``__versioned__["capture"] = "database"``) is its
    triggers' alone, so that nothing is recorded twice."""
    spec: ModelSpec | None = mapper.class_.__dict__.get(_SPEC_ATTR)
    if spec is None or spec.capture != "session":
        return None
    return spec


def require_spec(model: type[Any]) -> ModelSpec:
    """The spec of a versioned model class, or a clear error if it is not one."""
    mapper = sa.inspect(model, raiseerr=False)
    if not isinstance(mapper, Mapper):
        raise ConfigurationError(f"{model!r} is not a mapped class")
    spec = versioned_spec(mapper)
    if spec is None:
        name = mapper.class_.__name__
        if issubclass(mapper.class_, Versioned):
            concrete = sorted(
                m.class_.__name__
                for m in mapper.self_and_descendants
                if versioned_spec(m) is not None
            )
            raise ConfigurationError(
                f"{name} is an abstract concrete base with no table of its own, so it has no "
                f"history; read the history of its concrete classes ({', '.join(concrete)})"
            )
        raise ConfigurationError(f"{name} is not versioned: mix versioning.Versioned into it")
    return spec


#: Every versioned mapper's spec declared in this process (weakly: a class may go away).
_SPECS: weakref.WeakSet[ModelSpec] = weakref.WeakSet()
#: Whether any model of the process is captured by the database (what makes a commit hand the
#: audit context to the database: see versioning.triggers).
_DATABASE_CAPTURE = [False]


def database_capture_declared() -> bool:
    """Whether a model captured by the database has been declared in this process."""
    return _DATABASE_CAPTURE[0]


def database_captured_specs() -> list[ModelSpec]:
    """The specs of every model captured by the database declared in this process."""
    found = [s for s in _SPECS if s.capture == "database"]
    return sorted(found, key=lambda s: s.history.fullname)


def all_specs() -> list[ModelSpec]:
    """The spec of every versioned model declared so far (for :mod:`versioning.integrity`)."""
    return list(_SPECS)


def history_table(model: type[Any]) -> sa.Table:
    """The history ``Table`` of a versioned model."""
    return require_spec(model).history


def _own_options(cls: type[Any]) -> dict[str, Any]:
    raw = cls.__dict__.get("__versioned__")
    if raw is None:
        return {}
    name = cls.__name__
    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f"{name}.__versioned__ must be a dict, got {type(raw).__name__}; e.g. "
            f"__versioned__ = {{'exclude': ['column']}}"
        )
    unknown = set(raw) - _OPTION_KEYS
    if unknown:
        raise ConfigurationError(
            f"{name}.__versioned__ has unknown option(s) {sorted(unknown)}; the options are "
            f"{sorted(_OPTION_KEYS)}"
        )
    exclude = raw.get("exclude", ())
    if isinstance(exclude, str) or not isinstance(exclude, Iterable):
        raise ConfigurationError(
            f"{name}.__versioned__['exclude'] must be a list of column names, got {exclude!r}"
        )
    mask = raw.get("mask", {})
    if not isinstance(mask, Mapping):
        raise ConfigurationError(
            f"{name}.__versioned__['mask'] must map column names to callables, got {mask!r}"
        )
    for column, fn in mask.items():
        if not callable(fn):
            raise ConfigurationError(
                f"{name}.__versioned__['mask'][{column!r}] must be a callable such as "
                f"versioning.masks.redact, got {fn!r}"
            )
    table_name = raw.get("table_name")
    if table_name is not None and (not isinstance(table_name, str) or not table_name):
        raise ConfigurationError(
            f"{name}.__versioned__['table_name'] must be a non-empty str, got {table_name!r}"
        )
    personal = raw.get("personal", ())
    if isinstance(personal, str) or not isinstance(personal, Iterable):
        raise ConfigurationError(
            f"{name}.__versioned__['personal'] must be a list of column names, got {personal!r}"
        )
    capture = raw.get("capture")
    if capture is not None and capture not in CAPTURES:
        raise ConfigurationError(
            f"{name}.__versioned__['capture'] must be one of {list(CAPTURES)}, got {capture!r}"
        )
    return {
        "capture": capture,
        "exclude": list(exclude),
        "mask": dict(mask),
        "personal": list(personal),
        "table_name": table_name,
    }


def _column_props(mapper: Mapper[Any]) -> dict[str, sa.Column[Any]]:
    """Attribute key -> table column of every column-mapped attribute (not SQL expressions)."""
    # ``mapper.columns`` rather than ``column_attrs``: the latter configures every mapper of the
    # registry, which must not happen while classes are still being declared.
    out: dict[str, sa.Column[Any]] = {}
    for key, column in mapper.columns.items():
        if isinstance(column, sa.Column) and isinstance(column.table, sa.Table):
            out[key] = column
    return out


def _resolve(
    cls: type[Any], option: str, names: Iterable[str], props: dict[str, sa.Column[Any]]
) -> list[str]:
    by_column = {column.name: key for key, column in props.items()}
    keys = []
    for name in names:
        if name in props:
            keys.append(name)
        elif name in by_column:
            keys.append(by_column[name])
        else:
            raise ConfigurationError(
                f"{cls.__name__}.__versioned__['{option}'] names {name!r}, which is not a column "
                f"of {cls.__name__}; its columns are {sorted(props)}"
            )
    return keys


def _declare(mapper: Mapper[Any], cls: type[Any]) -> None:
    if _SPEC_ATTR in cls.__dict__:  # pragma: no cover - a mapper is constructed once per class
        return
    if _is_abstract_concrete_base(mapper, cls):
        return  # mapped over the union of its subclasses' tables: no table, no history, no spec
    options = _own_options(cls)
    if isinstance(mapper.local_table, sa.Table):
        _check_sqlite_conflicts(cls, mapper.local_table)
    props = _column_props(mapper)
    base_spec: ModelSpec | None = None
    # Concrete-table inheritance: the class has its own table, so its own history (a shared one
    # would mix records of different tables that have the same key); the base's options carry over
    # to the columns the class has too.
    concrete_base = _concrete_base_spec(mapper) if mapper.concrete else None
    if mapper.inherits is not None and not mapper.concrete:
        hierarchy_base = _hierarchy_base(mapper)
        base_spec = versioned_spec(hierarchy_base)
        if base_spec is None:
            raise ConfigurationError(
                f"{cls.__name__} is Versioned but its base class "
                f"{hierarchy_base.class_.__name__} is not: mix versioning.Versioned into "
                f"the base class of the hierarchy"
            )
        if options.get("table_name") and options["table_name"] != base_spec.history.name:
            raise ConfigurationError(
                f"{cls.__name__}.__versioned__['table_name'] cannot be set: an inheritance "
                f"hierarchy keeps its history in the base's table {base_spec.history.name!r}; "
                f"set table_name on {base_spec.model.__name__} instead"
            )

    excluded = set(_resolve(cls, "exclude", options.get("exclude", ()), props))
    masks = {
        key: fn
        for key, fn in zip(
            _resolve(cls, "mask", options.get("mask", {}).keys(), props),
            options.get("mask", {}).values(),
            strict=True,
        )
    }
    personal = set(_resolve(cls, "personal", options.get("personal", ()), props))
    if base_spec is not None:
        # The nearest versioned class above: its spec holds what every class above it declared
        # (base_spec is the hierarchy's root, which misses an intermediate class's options).
        parent = (versioned_spec(mapper.inherits) if mapper.inherits else None) or base_spec
        excluded |= parent.excluded
        masks = {**parent.masks, **masks}
        personal |= parent.personal
    elif concrete_base is not None:
        excluded |= {key for key in concrete_base.excluded if key in props}
        masks = {**{k: m for k, m in concrete_base.masks.items() if k in props}, **masks}
        personal |= {key for key in concrete_base.personal if key in props}
    elif mapper.concrete:  # an AbstractConcreteBase subclass: its base is not mapped yet
        inherited = _inherited_options(cls)
        by_column = {column.name: key for key, column in props.items()}
        for name in inherited.get("exclude", ()):
            if name in props or name in by_column:
                excluded.add(by_column.get(name, name))
        for name in inherited.get("personal", ()):
            if name in props or name in by_column:
                personal.add(by_column.get(name, name))
        for name, fn in inherited.get("mask", {}).items():
            if (name in props or name in by_column) and by_column.get(name, name) not in masks:
                masks[by_column.get(name, name)] = fn

    capture = options.get("capture") or _default_capture(cls, mapper)
    if capture == "database":
        _check_database_capture(cls, mapper, masks)
    pk_keys = tuple(mapper.get_property_by_column(col).key for col in mapper.primary_key)
    for key in excluded & set(pk_keys):
        raise ConfigurationError(
            f"{cls.__name__}.__versioned__['exclude'] names the primary key {key!r}; "
            f"a record's history is found by its key, so the key is always recorded"
        )
    discriminator: str | None = None
    if mapper.polymorphic_on is not None and isinstance(mapper.polymorphic_on, sa.Column):
        prop = mapper.get_property_by_column(mapper.polymorphic_on)
        discriminator = prop.key
        if discriminator in excluded:
            raise ConfigurationError(
                f"{cls.__name__}.__versioned__['exclude'] names the discriminator "
                f"{discriminator!r}, which history needs to rebuild the right class"
            )
    for key in set(masks) & set(pk_keys):
        raise ConfigurationError(
            f"{cls.__name__}.__versioned__['mask'] names the primary key {key!r}; masking it "
            f"would make the record's history unfindable"
        )
    for key in masks:
        column = props[key]
        try:
            python_type: type | None = column.type.python_type
        except NotImplementedError:
            python_type = None
        if python_type is None or not issubclass(python_type, str):
            raise ConfigurationError(
                f"{cls.__name__}.__versioned__['mask'] names {key!r}, a "
                f"{column.type!r} column; masks apply to string columns: exclude it instead"
            )
    overlap = excluded & set(masks)
    if overlap:
        raise ConfigurationError(
            f"{cls.__name__}.__versioned__ both excludes and masks {sorted(overlap)}; "
            f"choose one: excluded columns are not recorded at all"
        )
    _check_personal(cls, personal, excluded, pk_keys, discriminator)

    keys = tuple(key for key in props if key not in excluded)
    live_columns = {key: props[key] for key in keys}
    history_names = {key: props[key].name for key in keys}
    clashes = sorted(set(history_names.values()) & META_COLUMNS)
    if clashes:
        raise ConfigurationError(
            f"{cls.__name__} has column(s) {clashes}, names versioning reserves for its own "
            f"history columns; rename the column(s) with mapped_column('other_name', ...)"
        )

    if base_spec is None:
        table = mapper.local_table
        if not isinstance(table, sa.Table):
            raise ConfigurationError(
                f"{cls.__name__} is mapped to {table!r}, not a Table; versioning needs a table"
            )
        transactions = transaction_table_for(table.metadata)
        name = options.get("table_name") or f"{table.name}_history"
        key_cols = [snapshot_column(history_names[k], live_columns[k], False) for k in pk_keys]
        data_cols = [
            snapshot_column(history_names[k], live_columns[k], k in masks)
            for k in keys
            if k not in pk_keys
        ]
        extra_cols = (personal_column(),) if personal else ()
        history = history_table_for(
            cls.__name__, name, table, transactions, key_cols, data_cols, extra_cols
        )
    else:
        history = base_spec.history
        transactions = base_spec.transactions
        _extend_history(cls, history, keys, history_names, live_columns, masks)
        if personal and PERSONAL not in history.c:
            history.append_column(personal_column())
    _register_personal(cls, history, {key: history_names[key] for key in personal})
    for key in keys:
        # (A masked snapshot is text of any length: MariaDB cannot index it, nor is it looked up.)
        if key not in pk_keys and key not in masks and live_columns[key].foreign_keys:
            foreign_key_index(history, history_names[key])

    # Columns a flush may change without the user setting them.
    version_column = mapper.version_id_col
    refresh = frozenset(
        key
        for key in keys
        if live_columns[key].onupdate is not None
        or live_columns[key].server_onupdate is not None
        or live_columns[key].computed is not None
        or (version_column is not None and live_columns[key] is version_column)
    )
    spec = ModelSpec(
        mapper=mapper,
        base=base_spec.root if base_spec is not None else None,
        history=history,
        transactions=transactions,
        attrs=keys,
        pk_keys=pk_keys,
        live_columns=live_columns,
        history_names=history_names,
        masks=masks,
        excluded=frozenset(excluded),
        refresh_on_update=refresh,
        discriminator=discriminator,
        trusts_session=mapper.version_id_col is not None,
        personal=frozenset(personal),
        capture=capture,
    )
    type.__setattr__(cls, _SPEC_ATTR, spec)
    _SPECS.add(spec)
    if isinstance(mapper.local_table, sa.Table):
        mapper.local_table.info[LIVE_TABLE_INFO] = history.name
        if capture == "database":
            _DATABASE_CAPTURE[0] = True
            mapper.local_table.info[CAPTURED_BY_DATABASE] = spec
            history.info[HISTORY_BY_DATABASE] = True
            capture_open_table(transactions)
        register_tables(mapper.local_table, history, transactions)


#: ``MetaData.info`` key: the capture of the models of that ``MetaData`` that do not say.
CAPTURE_DEFAULT = "versioning_capture"


def _default_capture(cls: type[Any], mapper: Mapper[Any]) -> str:
    table = mapper.local_table
    metadata = table.metadata if isinstance(table, sa.Table) else None
    capture = metadata.info.get(CAPTURE_DEFAULT, "session") if metadata is not None else "session"
    if capture not in CAPTURES:
        raise ConfigurationError(
            f"{cls.__name__}: MetaData.info[{CAPTURE_DEFAULT!r}] must be one of "
            f"{list(CAPTURES)}, got {capture!r}"
        )
    return str(capture)


def _check_database_capture(cls: type[Any], mapper: Mapper[Any], masks: dict[str, Mask]) -> None:
    """What database capture needs, checked at declaration: one table of its own, and an SQL
    form for every mask (the triggers apply it; see :mod:`versioning.masks`)."""
    if mapper.inherits is not None or mapper.polymorphic_on is not None:
        raise ConfigurationError(
            f"{cls.__name__}.__versioned__['capture'] = 'database' covers a model mapped to one "
            f"table of its own, not an inheritance hierarchy: keep it on session capture"
        )
    for key, mask in masks.items():
        if getattr(mask, "sql", None) is None:
            raise ConfigurationError(
                f"{cls.__name__}.{key}: the mask {getattr(mask, '__name__', mask)!r} has no SQL "
                f"form, which database capture needs to apply it in the database; give it one "
                f"with versioning.masks.sql_form, or keep {cls.__name__} on session capture"
            )


def _check_personal(
    cls: type[Any],
    personal: set[str],
    excluded: set[str],
    pk_keys: tuple[str, ...],
    discriminator: str | None,
) -> None:
    """Personal columns are recorded (not excluded) and are not what finds a record's history."""
    name = cls.__name__
    for key in sorted(personal & excluded):
        raise ConfigurationError(
            f"{name}.__versioned__['personal'] names {key!r}, which is excluded: history holds "
            f"nothing of it to erase; remove it from 'personal' (or from 'exclude' to record it)"
        )
    for key in sorted(personal & set(pk_keys)):
        raise ConfigurationError(
            f"{name}.__versioned__['personal'] names the primary key {key!r}; a record's "
            f"history is found by its key, so the key cannot be erased: remove it from "
            f"'personal' (give the record a surrogate key if the key itself is personal data)"
        )
    if discriminator is not None and discriminator in personal:
        raise ConfigurationError(
            f"{name}.__versioned__['personal'] names the discriminator {discriminator!r}, which "
            f"history needs to rebuild the right class: remove it from 'personal'"
        )


def _register_personal(cls: type[Any], history: sa.Table, names: dict[str, str]) -> None:
    """Note on the history table which column holds each personal attribute's snapshot.

    The ``changes`` document is keyed by attribute, the snapshot by column name: the commitments
    of :mod:`versioning.personal` need both, from the table alone.
    """
    if not names:
        return
    known: dict[str, str] = history.info.setdefault(PERSONAL, {})
    for key, column in names.items():
        if known.setdefault(key, column) != column:
            raise ConfigurationError(
                f"{cls.__name__}.{key} is personal and recorded in column {column!r}, but another "
                f"class of its hierarchy records a personal {key!r} in column {known[key]!r}; "
                f"their history shares table {history.name!r}: rename one of the attributes"
            )


#: SQLite conflict resolutions that make a plain INSERT or UPDATE delete or skip rows silently.
_SQLITE_SILENT = frozenset({"REPLACE", "IGNORE"})


def _check_sqlite_conflicts(cls: type[Any], table: sa.Table) -> None:
    """Refuse a table declaring SQLite's ``ON CONFLICT REPLACE`` or ``IGNORE`` on a constraint.

    A unit-of-work flush into it would delete a conflicting row (``REPLACE``), store the column
    default instead of the NULL sent (``REPLACE`` on NOT NULL), or skip the row while the session
    believes it written (``IGNORE``): changes the flush cannot see, so history could not hold them.
    An explicit ``insert().prefix_with("OR REPLACE")`` statement is still recorded exactly.
    """
    found: list[str] = []
    for constraint in table.constraints:
        if isinstance(constraint, sa.UniqueConstraint | sa.PrimaryKeyConstraint):
            action = constraint.dialect_options["sqlite"].get("on_conflict")
            if action and str(action).upper() in _SQLITE_SILENT:
                primary = isinstance(constraint, sa.PrimaryKeyConstraint)
                kind = "primary key" if primary else "unique"
                columns = ", ".join(c.name for c in constraint.columns)
                found.append(f"the {kind} constraint ({columns}) declares ON CONFLICT {action}")
    for column in table.columns:
        options = column.dialect_options["sqlite"]
        for option, what in (
            ("on_conflict_primary_key", "primary key"),
            ("on_conflict_unique", "unique"),
            ("on_conflict_not_null", "NOT NULL"),
        ):
            action = options.get(option)
            if action and str(action).upper() in _SQLITE_SILENT:
                found.append(f"column {column.name!r} declares its {what} ON CONFLICT {action}")
    if found:
        raise ConfigurationError(
            f"{cls.__name__}: {'; '.join(found)} (sqlite_on_conflict...). SQLite would then "
            f"delete a conflicting row, store another value than the one sent, or skip the row "
            f"during a flush, where no history can record it. Remove the option (the default, "
            f"ABORT, raises instead), and write such rows with an explicit "
            f"insert(...).prefix_with('OR REPLACE') or 'OR IGNORE' statement, which versioning "
            f"records exactly"
        )


def _hierarchy_base(mapper: Mapper[Any]) -> Mapper[Any]:
    """The mapper whose table holds the base row of ``mapper``'s records: the base mapper of its
    single- or joined-table hierarchy, which a concrete class starts anew."""
    while mapper.inherits is not None and not mapper.concrete:
        mapper = mapper.inherits
    return mapper


def _is_abstract_concrete_base(mapper: Mapper[Any], cls: type[Any]) -> bool:
    """Whether ``mapper`` maps an ``AbstractConcreteBase`` over its subclasses' tables."""
    return issubclass(cls, AbstractConcreteBase) and not isinstance(mapper.local_table, sa.Table)


def _inherited_options(cls: type[Any]) -> dict[str, Any]:
    """The ``__versioned__`` options of the nearest base class of ``cls`` that sets them."""
    for base in cls.__mro__[1:]:
        if base is not Versioned and "__versioned__" in base.__dict__:
            return _own_options(base)
    return {}


def _concrete_base_spec(mapper: Mapper[Any]) -> ModelSpec | None:
    """The spec of the nearest versioned class ``mapper`` inherits from (concrete inheritance)."""
    base = mapper.inherits
    while base is not None:
        spec = versioned_spec(base)
        if spec is not None:
            return spec
        base = base.inherits
    return None


def _extend_history(
    cls: type[Any],
    history: sa.Table,
    keys: tuple[str, ...],
    history_names: dict[str, str],
    live_columns: dict[str, sa.Column[Any]],
    masks: dict[str, Mask],
) -> None:
    """Add a subclass's own columns to its hierarchy's history table."""
    for key in keys:
        name = history_names[key]
        existing = history.c.get(name)
        wanted = snapshot_column(name, live_columns[key], key in masks)
        if existing is None:
            history.append_column(wanted)
        elif _compat.type_affinity(existing.type) is not _compat.type_affinity(wanted.type):
            raise ConfigurationError(
                f"{cls.__name__}.{key} ({wanted.type!r}) and another class of its hierarchy "
                f"both map a column named {name!r} with a different type ({existing.type!r}); "
                f"their history shares table {history.name!r}: rename one of the columns"
            )


def _check_primary_key(mapper: Mapper[Any], cls: type[Any]) -> None:
    table = mapper.local_table
    if (
        (mapper.inherits is None or mapper.concrete)
        and isinstance(table, sa.Table)
        and not table.primary_key.columns
        and not _compat.mapper_primary_key_argument(mapper)
    ):
        raise ConfigurationError(
            f"{cls.__name__} has no primary key; a versioned model needs one to identify its "
            f"records' history: add mapped_column(..., primary_key=True)"
        )


#: Per versioned (parent) table: the :class:`CascadeEdge` list of versioned tables whose foreign
#: keys to it carry a database-side action. Not in ``Table.info``: Alembic writes a table's
#: ``info`` into its migration, which must hold only plain values (see :func:`cascade_edges`).
_CASCADES: weakref.WeakKeyDictionary[sa.Table, list[CascadeEdge]] = weakref.WeakKeyDictionary()
_ACTIONS = frozenset({"CASCADE", "SET NULL", "SET DEFAULT"})
_NO_ACTIONS = frozenset({"NO ACTION", "RESTRICT"})


def cascade_edges(table: Any) -> list[CascadeEdge]:
    """The foreign keys with a database-side action that reference ``table`` (a dict lookup)."""
    return _CASCADES.get(table, []) if isinstance(table, sa.Table) else []


@dataclass(frozen=True, eq=False)
class CascadeEdge:
    """A foreign key of a versioned table whose referential action the database performs.

    Stored on the referenced (parent) table, so that a write of a parent finds what it cascades
    to with a dict lookup. An action is ``None`` when nothing versioned changes through it (none,
    ``RESTRICT``/``NO ACTION``, or ``SET NULL``/``SET DEFAULT``/``ON UPDATE`` of excluded columns).
    """

    child: ModelSpec
    child_columns: tuple[sa.Column[Any], ...]
    parent_columns: tuple[sa.Column[Any], ...]
    ondelete: str | None
    onupdate: str | None


def _action(cls: type[Any], constraint: sa.ForeignKeyConstraint, which: str) -> str | None:
    raw = getattr(constraint, which)
    if raw is None:
        return None
    action = " ".join(str(raw).upper().split())
    if action in _NO_ACTIONS:
        return None
    if action not in _ACTIONS:
        columns = ", ".join(c.name for c in constraint.columns)
        raise ConfigurationError(
            f"{cls.__name__}: the foreign key ({columns}) has {which}={raw!r}, a referential "
            f"action versioning cannot follow; use CASCADE, SET NULL, SET DEFAULT, RESTRICT or "
            f"NO ACTION"
        )
    return action


def _check_cascades(mapper: Mapper[Any], cls: type[Any]) -> None:
    """Know every write the database makes to this model's table through a foreign key action.

    Runs before the mapper is configured (at its first use), when every table a foreign key names
    is known; an error here leaves the mapper unconfigured, so that every later use fails too. An
    action from a versioned table is recorded (see :mod:`versioning.cascades`); one from a table
    that is not versioned would change rows behind the library's back, and is refused.
    """
    table = mapper.local_table
    owner = mapper  # the mapper of the table (single-table inheritance: the hierarchy's base)
    while owner.inherits is not None and owner.inherits.local_table is table:
        owner = owner.inherits
    spec = versioned_spec(owner)
    if spec is None or not isinstance(table, sa.Table):
        return
    # Every versioned column of the table, single-table subclasses' included.
    key_of: dict[sa.Column[Any], str] = {}
    model_of: dict[sa.Column[Any], str] = {}
    for sub in owner.self_and_descendants:
        sub_spec = versioned_spec(sub)
        if sub.local_table is table and sub_spec is not None:
            for key, column in sub_spec.live_columns.items():
                key_of.setdefault(column, key)
                model_of.setdefault(column, sub.class_.__name__)
    found: list[tuple[sa.Table, CascadeEdge]] = []
    for constraint in sorted(table.foreign_key_constraints, key=lambda c: tuple(c.column_keys)):
        ondelete = _action(cls, constraint, "ondelete")
        onupdate = _action(cls, constraint, "onupdate")
        if ondelete is None and onupdate is None:
            continue
        columns = tuple(constraint.columns)
        names = ", ".join(
            f"{model_of.get(c, cls.__name__)}.{key_of.get(c, c.key)}" for c in columns
        )
        try:
            parent = constraint.referred_table
            parent_columns = tuple(element.column for element in constraint.elements)
        except sa.exc.NoReferencedTableError as error:
            raise ConfigurationError(
                f"{names} has a foreign key with a referential action to a table that is not "
                f"declared ({error}); versioning must know that table to record what the "
                f"database does to {cls.__name__} through it: declare it in the same MetaData"
            ) from error
        if parent in mapper.tables and set(columns) <= set(table.primary_key.columns):
            continue  # joined inheritance: the row of the same record in its base table
        versioned = any(c in key_of for c in columns)
        if ondelete != "CASCADE" and not versioned:
            ondelete = None  # SET NULL / SET DEFAULT of excluded columns: nothing recorded changes
        if not versioned:
            onupdate = None
        if ondelete is None and onupdate is None:
            continue
        what = " and ".join(
            f"{which}={action!r}"
            for which, action in (("ondelete", ondelete), ("onupdate", onupdate))
            if action is not None
        )
        if LIVE_TABLE_INFO not in parent.info:
            raise ConfigurationError(
                f"{names} references {parent.fullname!r} with {what}, but {parent.fullname!r} "
                f"is not versioned: the database would delete or change {cls.__name__} rows when "
                f"{parent.fullname!r} changes, and no history can be recorded for that. Make the "
                f"model of {parent.fullname!r} Versioned, or remove {what} from the foreign key "
                f"(let the ORM do it: relationship(cascade='all, delete-orphan') without "
                f"passive_deletes)"
            )
        base_table = _hierarchy_base(mapper).local_table
        if ondelete == "CASCADE" and table is not base_table:
            raise ConfigurationError(
                f"{names} has ondelete='CASCADE' on the table of the joined-inheritance "
                f"subclass {cls.__name__}: the database would delete only the {table.name!r} "
                f"part of the record and leave its row in "
                f"{getattr(base_table, 'name', str(base_table))!r}. Remove ondelete (let the ORM "
                f"delete the record), or put the foreign key on the base class's table"
            )
        if onupdate is not None and set(columns) & set(table.primary_key.columns):
            raise ConfigurationError(
                f"{names} is part of the primary key of {cls.__name__} and has "
                f"onupdate={onupdate!r}: the database would move {cls.__name__} records to "
                f"another key, which versioning cannot follow. Remove onupdate (and change "
                f"keys through the unit of work), or never change the referenced key"
            )
        found.append((parent, CascadeEdge(spec, columns, parent_columns, ondelete, onupdate)))
    # Registered only once every foreign key passed: a refused mapper is refused again (and
    # stays unusable) at each attempt to configure it.
    for parent, edge in found:
        edges = _CASCADES.setdefault(parent, [])
        if not any(e.child_columns == edge.child_columns for e in edges):
            edges.append(edge)
    if found:
        # Imported here: versioning.cascades builds on this module.
        from versioning import cascades

        cascades.install()


def _written_tables(selectable: Any) -> list[sa.Table]:
    """The tables a mapper over ``selectable`` writes to: a table, or the tables of a join."""
    if isinstance(selectable, sa.Table):
        return [selectable]
    if isinstance(selectable, sa.Join):
        return _written_tables(selectable.left) + _written_tables(selectable.right)
    return []  # a subquery or select: the ORM cannot write through it


def secondary_table(prop: RelationshipProperty[Any], mapper: Mapper[Any]) -> sa.Table | None:
    """The ``secondary`` table of a relationship, before its mapper is configured.

    ``RelationshipProperty.secondary`` is only set while the mapper is configured, after the last
    moment a refusal keeps the mapper unusable; so the argument as given is read from the private
    ``_init_args`` and resolved as SQLAlchemy does: a table, a table's name, or a callable.
    """
    argument: Any = _compat.relationship_secondary_argument(prop)
    if callable(argument) and not isinstance(argument, sa.FromClause):
        try:
            argument = argument()
        except Exception:  # SQLAlchemy reports it, in its own words, when it configures
            return None
    if isinstance(argument, str):
        # A table's name ("schema.name" too): the only strings SQLAlchemy takes for secondary.
        argument = mapper.registry.metadata.tables.get(argument)
    return argument if isinstance(argument, sa.Table) else None


def _check_writes_around_history(mapper: Mapper[Any], cls: type[Any]) -> None:
    """Refuse a mapper whose flushes would write to versioned tables without history.

    That is a mapper of a class that is not versioned over a versioned table (a second class
    mapped to it, or a class mapped to a ``join()`` including it), and a relationship that writes
    the rows of a versioned table as its ``secondary``. Checked when the mapper is configured (at
    its first use), whichever class was declared first; an error leaves the mapper unconfigured,
    so that every use of it (and of its registry) fails the same way.
    """
    for prop in mapper.relationships:
        if prop.parent is mapper and not prop.viewonly:
            _refuse_secondary(mapper, cls, prop, secondary_table(prop, mapper))
    if issubclass(cls, Versioned):
        return
    versioned = [
        table
        for table in _written_tables(mapper.persist_selectable)
        if LIVE_TABLE_INFO in table.info
    ]
    if not versioned:
        return
    names = ", ".join(repr(table.fullname) for table in versioned)
    what = "a join of " if isinstance(mapper.persist_selectable, sa.Join) else ""
    raise ConfigurationError(
        f"{cls.__name__} is mapped to {what}versioned table(s) {names}{_owners(mapper, versioned)} "
        f"but is not Versioned: writes through it would change versioned rows without recording "
        f"any history. Write through the versioned model(s) instead, and give them the combined "
        f"view with relationship() or column_property()"
    )


def _refuse_secondary(
    mapper: Mapper[Any], cls: type[Any], prop: RelationshipProperty[Any], secondary: Any
) -> None:
    if not isinstance(secondary, sa.Table) or LIVE_TABLE_INFO not in secondary.info:
        return
    raise ConfigurationError(
        f"{cls.__name__}.{prop.key} uses the versioned table {secondary.fullname!r}"
        f"{_owners(mapper, [secondary])} as its secondary table: the ORM would insert and delete "
        f"its rows without recording any history. Write them through the versioned model (a "
        f"relationship to it, and sqlalchemy.ext.associationproxy for the direct collection), "
        f"or declare {cls.__name__}.{prop.key} with viewonly=True"
    )


def _owners(mapper: Mapper[Any], tables: list[sa.Table]) -> str:
    """`` (mapped by A, B)``: the versioned classes mapped to ``tables``."""
    owners = sorted(
        {
            other.class_.__name__
            for other in mapper.registry.mappers
            if other is not mapper
            and other.local_table in tables
            and versioned_spec(other) is not None
        }
    )
    return f" (mapped by {', '.join(owners)})" if owners else ""


def _listen(fn: Callable[[Mapper[Any], type[Any]], None], name: str) -> None:
    event.listen(Versioned, name, fn, propagate=True)


_listen(_check_primary_key, "instrument_class")
_listen(_declare, "after_mapper_constructed")
_listen(_check_cascades, "before_mapper_configured")
event.listen(Mapper, "before_mapper_configured", _check_writes_around_history)
