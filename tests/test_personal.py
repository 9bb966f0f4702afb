"""Personal columns without a database: the declaration, and the commitments that keep a history
row's digest the same when its personal values are erased (``versioning.personal``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from versioning import ConfigurationError, Versioned, history_table, masks
from versioning.declaration import require_spec
from versioning.personal import (
    PERSONAL,
    committed_view,
    erase_values,
    erased_keys,
    salts,
    unsalted,
)
from versioning.schema import CHANGES, OPERATION, TRANSACTION_ID, VERSION_ID


class Base(DeclarativeBase):
    pass


class Client(Versioned, Base):
    __tablename__ = "personal_clients"
    __versioned__ = {"personal": ["email", "phone_no"], "mask": {"phone": masks.last4}}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    email: Mapped[str | None] = mapped_column("email_address", sa.String(100))
    # Named by its column name in "personal": resolved to the attribute key.
    phone: Mapped[str | None] = mapped_column("phone_no", sa.String(30))


class Plain(Versioned, Base):
    __tablename__ = "personal_plain"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str | None] = mapped_column(sa.String(100))


class Party(Versioned, Base):
    """A hierarchy whose base has no personal columns; a subclass adds one, another inherits."""

    __tablename__ = "personal_parties"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    email: Mapped[str | None] = mapped_column(sa.String(100))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "party"}


class Person(Party):
    __versioned__ = {"personal": ["email"]}
    __mapper_args__ = {"polymorphic_identity": "person"}


class Employee(Person):
    __versioned__ = {"personal": ["badge"]}
    badge: Mapped[str | None] = mapped_column(sa.String(20))
    __mapper_args__ = {"polymorphic_identity": "employee"}


def fresh_base() -> type[DeclarativeBase]:
    class FreshBase(DeclarativeBase):
        pass

    return FreshBase


def test_personal_columns_are_declared_by_attribute_or_column_name() -> None:
    spec = require_spec(Client)
    assert spec.personal == {"email", "phone"}
    table = history_table(Client)
    column = table.c[PERSONAL]
    assert isinstance(column.type, sa.JSON) and column.nullable
    assert table.info[PERSONAL] == {"email": "email_address", "phone": "phone_no"}


def test_a_model_without_personal_columns_has_no_personal_column() -> None:
    assert require_spec(Plain).personal == frozenset()
    assert PERSONAL not in history_table(Plain).c


def test_subclasses_add_personal_columns_to_their_hierarchys_table() -> None:
    assert require_spec(Party).personal == frozenset()
    assert require_spec(Person).personal == {"email"}
    assert require_spec(Employee).personal == {"email", "badge"}
    assert PERSONAL in history_table(Party).c


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"personal": ["mail"]}, ["Customer", "'mail'", "personal", "not a column"]),
        ({"personal": "email"}, ["Customer", "personal", "list of column names"]),
        ({"personal": ["email"], "exclude": ["email"]}, ["Customer", "'email'", "excluded"]),
        ({"personal": ["id"]}, ["Customer", "'id'", "primary key"]),
    ],
)
def test_invalid_personal_declarations(options: dict[str, Any], words: list[str]) -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError) as error:

        class Customer(Versioned, FreshBase):
            __tablename__ = "customers"
            __versioned__ = options  # type: ignore[assignment]
            id: Mapped[int] = mapped_column(primary_key=True)
            email: Mapped[str | None] = mapped_column(sa.String(100))

    for word in words:
        assert word in str(error.value), (word, str(error.value))


def test_the_discriminator_cannot_be_personal() -> None:
    FreshBase = fresh_base()
    with pytest.raises(ConfigurationError, match="discriminator 'kind'"):

        class Thing(Versioned, FreshBase):
            __tablename__ = "things"
            __versioned__ = {"personal": ["kind"]}
            id: Mapped[int] = mapped_column(primary_key=True)
            kind: Mapped[str] = mapped_column(sa.String(20))
            __mapper_args__ = {"polymorphic_on": "kind"}


def test_a_masked_column_may_be_personal() -> None:
    FreshBase = fresh_base()

    class Card(Versioned, FreshBase):
        __tablename__ = "cards"
        __versioned__ = {"personal": ["number"], "mask": {"number": masks.last4}}
        id: Mapped[int] = mapped_column(primary_key=True)
        number: Mapped[str] = mapped_column(sa.String(20))

    assert require_spec(Card).personal == {"number"}


# -- commitments -------------------------------------------------------------------------------

HEX64 = r"[0-9a-f]{64}"


def row(**values: Any) -> dict[str, Any]:
    """A history row of Client as written (or read back): keyed by history column name."""
    base: dict[str, Any] = {
        VERSION_ID: 3,
        TRANSACTION_ID: 5,
        OPERATION: "update",
        "id": 7,
        "name": "Ann",
        "email_address": "ann@new.example",
        "phone_no": "*********5678",
        CHANGES: {"email": ["ann@example.com", "ann@new.example"], "name": ["An", "Ann"]},
        PERSONAL: salts(["email", "phone"]),
    }
    return base | values


def canonical(view: Any) -> str:
    return json.dumps(view, sort_keys=True, default=str)


def test_a_table_without_personal_columns_is_viewed_as_it_is() -> None:
    plain = {VERSION_ID: 1, "id": 1, "email": "a@example.com", CHANGES: None}
    assert committed_view(history_table(Plain), plain) is plain


def test_the_view_replaces_personal_values_by_commitments() -> None:
    table = history_table(Client)
    written = row()
    view = committed_view(table, written)
    assert PERSONAL not in view
    text = canonical(view)
    for value in ("ann@example.com", "ann@new.example", "*********5678"):
        assert value not in text
    assert view["name"] == "Ann" and view["id"] == 7
    assert view[CHANGES]["name"] == ["An", "Ann"]
    for value in (view["email_address"], view["phone_no"], view[CHANGES]["email"]):
        assert isinstance(value, str) and len(value) == 64 and int(value, 16) >= 0
    assert len({view["email_address"], view["phone_no"], view[CHANGES]["email"]}) == 3
    assert written[CHANGES]["email"] == ["ann@example.com", "ann@new.example"]  # not changed


def test_the_view_is_the_same_after_erasure() -> None:
    table = history_table(Client)
    written = row()
    before = canonical(committed_view(table, written))
    erased = erase_values(table, written, ["email", "phone"])
    assert erased is not None
    changes, personal = erased
    after_row = written | {
        "email_address": None,
        "phone_no": None,
        CHANGES: changes,
        PERSONAL: personal,
    }
    assert changes == {"email": None, "name": ["An", "Ann"]}
    assert erased_keys(personal) == {"email", "phone"}
    # What remains holds no value and no salt...
    remains = canonical(after_row)
    for value in ("ann@example.com", "ann@new.example", "*5678", *written[PERSONAL].values()):
        assert value not in remains
    # ...and the row's view, so its digest, is unchanged.
    assert canonical(committed_view(table, after_row)) == before
    # Erasing again changes nothing.
    assert erase_values(table, after_row, ["email", "phone"]) is None


def test_erasing_one_column_keeps_the_others() -> None:
    table = history_table(Client)
    written = row()
    erased = erase_values(table, written, ["phone"])
    assert erased is not None
    changes, personal = erased
    assert changes == written[CHANGES]
    assert personal["email"] == written[PERSONAL]["email"]
    assert erased_keys(personal) == {"phone"}
    after_row = written | {"phone_no": None, CHANGES: changes, PERSONAL: personal}
    assert canonical(committed_view(table, after_row)) == canonical(committed_view(table, written))


def test_a_changed_value_changes_the_view() -> None:
    """The commitments bind the values: altering one before erasure is seen by the digest."""
    table = history_table(Client)
    written = row()
    view = canonical(committed_view(table, written))
    altered = written | {"email_address": "eve@example.com"}
    assert canonical(committed_view(table, altered)) != view
    changes = {**written[CHANGES], "email": ["ann@example.com", "eve@example.com"]}
    assert canonical(committed_view(table, written | {CHANGES: changes})) != view


def test_commitments_are_salted() -> None:
    """No unsalted hash of the value stays: the same value commits differently in each row."""
    table = history_table(Client)
    one = committed_view(table, row())
    two = committed_view(table, row())
    assert one["email_address"] != two["email_address"]
    plain = hashlib.sha256(json.dumps("ann@new.example").encode()).hexdigest()
    assert plain not in (one["email_address"], two["email_address"])


def test_an_insert_and_a_null_value_commit_too() -> None:
    table = history_table(Client)
    inserted = row(**{OPERATION: "insert", CHANGES: None, "phone_no": None})
    view = committed_view(table, inserted)
    assert view[CHANGES] is None
    assert len(view["phone_no"]) == 64
    erased = erase_values(table, inserted, ["email", "phone"])
    assert erased is not None and erased[0] is None
    after_row = inserted | {"email_address": None, "phone_no": None, PERSONAL: erased[1]}
    assert committed_view(table, after_row) == view


def test_rows_without_salt_are_reported() -> None:
    table = history_table(Client)
    old = row(**{PERSONAL: None})
    assert unsalted(table, old, ["email", "phone"]) == ["email", "phone"]
    assert unsalted(table, old | {"phone_no": None}, ["phone"]) == []
    assert unsalted(table, row(), ["email", "phone"]) == []


def test_salts_are_random_and_long() -> None:
    made = [salts(["email"])["email"] for _ in range(3)]
    assert len(set(made)) == 3
    assert all(len(bytes.fromhex(salt)) == 16 for salt in made)


def test_options_of_an_intermediate_class_apply_to_its_subclasses() -> None:
    """A mask (or exclusion, or personal column) declared between the base and a subclass is
    the subclass's too: otherwise its values would be recorded as they are."""
    FreshBase = fresh_base()

    class Account(Versioned, FreshBase):
        __tablename__ = "accounts"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(sa.String(20))
        card: Mapped[str | None] = mapped_column(sa.String(20))
        note: Mapped[str | None] = mapped_column(sa.String(20))
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "account"}

    class Paying(Account):
        __versioned__ = {"mask": {"card": masks.redact}, "exclude": ["note"]}
        __mapper_args__ = {"polymorphic_identity": "paying"}

    class Premium(Paying):
        __mapper_args__ = {"polymorphic_identity": "premium"}

    spec = require_spec(Premium)
    assert spec.masks == {"card": masks.redact}
    assert spec.excluded == {"note"}


def test_one_personal_attribute_in_two_columns_of_a_hierarchy_is_refused() -> None:
    """The commitments find a personal attribute's snapshot column from the table alone."""
    FreshBase = fresh_base()

    class Contact(Versioned, FreshBase):
        __tablename__ = "contacts"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(sa.String(20))
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "contact"}

    class Mail(Contact):
        __versioned__ = {"personal": ["address"]}
        address: Mapped[str | None] = mapped_column("mail_address", sa.String(100))
        __mapper_args__ = {"polymorphic_identity": "mail"}

    with pytest.raises(ConfigurationError) as error:

        class Post(Contact):
            __versioned__ = {"personal": ["address"]}
            address: Mapped[str | None] = mapped_column("post_address", sa.String(100))
            __mapper_args__ = {"polymorphic_identity": "post"}

    message = str(error.value)
    assert "Post.address" in message and "'mail_address'" in message and "rename" in message
