"""Per-tenant quotas (torpor.runtime.quotas) on SQLite and PostgreSQL: a tenant's own
limits in place of the server's, what a tenant uses (its sessions' and sandboxes'
snapshots; the last count plus the bytes stored since), and what a refusal says. The
runtime, API and sandbox sides are tested in tests/api/test_api_usage.py,
tests/runtime/test_sandboxes.py and tests/e2b."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from torpor.runtime import quotas
from torpor.runtime.db import RuntimeDB, SessionRow
from torpor.runtime.quotas import Quota
from torpor.runtime.sandboxes.records import SandboxRecords, SandboxRow, SnapshotRow
from torpor.runtime.storage import record_usage
from torpor.snapshots.usage import StoreUsage, Usage


@pytest.fixture()
def db(url: str) -> Iterator[RuntimeDB]:
    d = RuntimeDB(url)
    yield d
    d.close()


def _session(db: RuntimeDB, sid: str, tenant: str | None, snaps: int) -> None:
    db.create(SessionRow(id=sid, state="waiting", image="base", model="script:x",
                         system=None, tools=None, policy={}, snapshot=None, snapshot_seq=None,
                         tenant=tenant))  # fmt: skip
    for i in range(snaps):
        db.record_snapshot(f"{sid}-{i}", sid, "m", "m:1")


def _sandbox(db: RuntimeDB, sid: str, tenant: str | None, snaps: int) -> None:
    rec = SandboxRecords(db)
    rec.insert(SandboxRow(id=sid, tenant=tenant, image="base", state="paused"))
    for i in range(snaps):
        rec.add_snapshot(SnapshotRow(id=f"{sid}-{i}", sandbox=sid, tenant=tenant,
                                     name=f"n{i}", kind="snapshot", bytes=10,
                                     created_at=float(i)))  # fmt: skip


def test_own_limits_replace_the_servers_one_by_one(db: RuntimeDB) -> None:
    server = Quota(stored_bytes=1000, snapshots=5)
    assert quotas.effective(db, "a", server) == quotas.TenantQuota("a", server)
    assert quotas.set_quota(db, "a", snapshots=2) == (None, 2)
    got = quotas.effective(db, "a", server)
    assert got.quota == Quota(stored_bytes=1000, snapshots=2) and got.own == {"snapshots"}
    assert quotas.set_quota(db, "a", stored_bytes=0) == (0, 2)  # 0: none, for a
    assert quotas.effective(db, "a", server).quota == Quota(stored_bytes=0, snapshots=2)
    assert quotas.effective(db, "b", server).quota == server  # b: the server's
    assert quotas.set_quota(db, "", snapshots=9) == (None, 9)  # those without a tenant
    assert quotas.effective(db, None, server).quota.snapshots == 9
    assert [t for t, *_ in quotas.own_quotas(db)] == ["", "a"]
    assert quotas.remove_quota(db, "a") and not quotas.remove_quota(db, "a")
    assert quotas.effective(db, "a", server).quota == server
    with pytest.raises(ValueError):
        quotas.set_quota(db, "a", snapshots=-1)


def test_a_tenants_sessions_and_sandboxes_count_and_a_refusal_names_them(
        db: RuntimeDB) -> None:  # fmt: skip
    _session(db, "s1", "a", 2)
    _session(db, "s2", "b", 4)
    _sandbox(db, "sbx-1", "a", 3)
    _sandbox(db, "sbx-2", None, 1)
    assert quotas.tenant_use(db, "a") == quotas.TenantUse(5, 0, 0, None)
    assert quotas.snapshot_count(db, None) == 1
    assert quotas.known_tenants(db) == ["", "a", "b"]
    assert quotas.over_quota(db, "a", Quota(snapshots=5)) is None  # at it: not over
    over = quotas.over_quota(db, "a", Quota(snapshots=4))
    assert over is not None and (over.what, over.have, over.limit, over.status) == (
        "snapshots", 5, 4, 429)
    said = quotas.refusal(over, "sandboxes", db, "a")
    assert said.startswith("tenant 'a' has 5 snapshots, over its quota of 4 (the server's "
                           "quota (--tenant-snapshots)): no new sandboxes")  # fmt: skip
    # before any count: those with the most snapshots
    assert "Largest sessions: s1 (2 snapshots)" in said
    assert "Largest sandboxes: sbx-1 (3 snapshots)" in said


def test_stored_bytes_are_the_last_count_plus_what_was_stored_since(db: RuntimeDB) -> None:
    _session(db, "s1", "a", 0)
    _sandbox(db, "sbx-1", "a", 0)
    _session(db, "s2", None, 0)
    record_usage(db, {"tenant": StoreUsage(groups={"a": Usage(1, 100, 500, 500)}),
                      "session": StoreUsage(groups={"s1": Usage(1, 100, 500, 500)})},
                 at=1.0)  # fmt: skip
    quota = Quota(stored_bytes=1000)
    assert quotas.over_quota(db, "a", quota) is None
    quotas.note_stored(db, "w1", {"sandbox": "s-s1"}, 300)  # a wait point's snapshot
    quotas.note_stored(db, "w1", {"sandbox": "s-s1"}, 300)  # (the same one: once)
    quotas.note_stored(db, "p1", {"sandbox": "sbx-1"}, 300)  # a sandbox's pause
    quotas.note_stored(db, "x1", {"sandbox": "s-s2"}, 7000)  # no tenant's
    quotas.note_stored(db, "y1", {"sandbox": "s-elsewhere"}, 7000)  # not in this database
    quotas.note_stored(db, "z1", {}, 7000)  # a `torpor sandbox checkpoint`
    use = quotas.tenant_use(db, "a")
    assert (use.counted_bytes, use.added_bytes, use.stored_bytes) == (500, 600, 1100)
    assert quotas.tenant_use(db, None).added_bytes == 7000
    over = quotas.over_quota(db, "a", quota)
    assert over is not None and over.status == 413
    assert over.why == ("tenant 'a' stores 1,100 bytes of snapshots (500 at the last count + "
                        "600 stored since), over its quota of 1,000 (the server's quota "
                        "(--tenant-stored-bytes))")  # fmt: skip
    assert "Largest sessions: s1 (500 bytes, 1 snapshots)" in quotas.what_to_delete(db, "a")
    view = quotas.quota_json(db, "a", quota)
    assert view["stored_bytes"] == {"limit": 1000, "used": 1100, "left": 0, "from": "server"}
    # the next count saw them: what was stored before it began goes
    record_usage(db, {"tenant": StoreUsage(groups={"a": Usage(3, 100, 900, 900)})})
    use = quotas.tenant_use(db, "a")
    assert (use.counted_bytes, use.added_bytes) == (900, 0)
    assert quotas.over_quota(db, "a", quota) is None
