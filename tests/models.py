"""Test models that several modules share, declared once on one ``MetaData`` (importable since
pytest puts tests/ on sys.path). A module whose models are its subject keeps its own."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from versioning import Versioned


class Base(DeclarativeBase):
    pass


class Note(Versioned, Base):
    """The plainest versioned record: a key the test chooses and one text column."""

    __tablename__ = "shared_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(100))
