"""The instance table of a moment (:class:`versioning.instances.Identity`): pure logic."""

from __future__ import annotations

import gc

import sqlalchemy as sa

from versioning.instances import Identity

TABLE = sa.Table("identity_things", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))


class Thing:
    pass


def test_identity_holds_instances_weakly_and_sweeps_the_dead() -> None:
    identity = Identity()
    kept = [Thing() for _ in range(10)]
    for i, obj in enumerate(kept):
        identity.add((TABLE, (i,)), obj)
    for i in range(10, 3000):  # dropped at once by the caller, as a stream's batch is
        identity.add((TABLE, (i,)), Thing())
    gc.collect()
    assert all(identity.get((TABLE, (i,))) is obj for i, obj in enumerate(kept))
    assert identity.get((TABLE, (2999,))) is None and identity.get((TABLE, (-1,))) is None
    assert len(identity) <= 1025, "dead entries are swept as the table grows"
    identity.add((TABLE, (0,)), replacement := Thing())
    assert identity.get((TABLE, (0,))) is replacement
