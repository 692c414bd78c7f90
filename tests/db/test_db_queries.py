"""The runtime's, the tokens', the sandbox resource's and the metrics' statements on both
databases (the log's run in tests/context on both): tokens made, checked, listed and
revoked; per-tenant counts; sessions by state; leases claimed once; sandbox rows."""

from __future__ import annotations

import threading

import pytest

from torpor.api.tokens import TokenError, TokenStore
from torpor.db.queries import metrics
from torpor.runtime.db import RuntimeDB, SessionRow


def _session(sid: str, tenant: str | None, state: str = "waiting") -> SessionRow:
    return SessionRow(id=sid, state=state, image="base", model="m", system=None, tools=None,
                      policy={}, snapshot=None, snapshot_seq=None, tenant=tenant)


@pytest.fixture
def rdb(url: str):
    db = RuntimeDB(url)
    yield db
    db.close()


def test_tokens(rdb: RuntimeDB):
    tokens = TokenStore(rdb)
    assert not tokens.any()
    text, info = tokens.create("acme", ["exec", "drive"], note="ci")
    assert info.scopes == ["drive", "exec"]
    who = tokens.check(text)
    assert who is not None and (who.tenant, who.scopes, who.token_id) == (
        "acme", {"drive", "exec"}, info.id)
    assert tokens.check(text[:-1] + ("x" if text[-1] != "x" else "y")) is None
    assert tokens.any() and [t.id for t in tokens.list()] == [info.id]
    tokens.revoke(info.id)
    assert tokens.check(text) is None and not tokens.any()
    assert tokens.list() == [] and [t.id for t in tokens.list(include_revoked=True)] == [info.id]
    with pytest.raises(TokenError, match="no such live token"):
        tokens.revoke(info.id)


def test_tenant_counts_and_sessions_by_state(rdb: RuntimeDB):
    rdb.create(_session("a1", "acme"))
    rdb.create(_session("a2", "acme"))
    rdb.create(_session("a3", "acme", state="closed"))
    rdb.create(_session("n1", None))
    rdb.post("a1", "hello")
    rdb.update("a2", state="running")
    rdb.update("a3", state="closed")
    tokens = TokenStore(rdb)
    assert (tokens.open_sessions("acme"), tokens.busy_sessions("acme")) == (2, 2)
    assert (tokens.open_sessions(None), tokens.busy_sessions(None)) == (1, 0)
    assert tokens.open_sessions("nobody") == 0
    with rdb.database.read() as tx:
        assert metrics.sessions_by_state(tx) == {"waiting": 2, "running": 1, "closed": 1}


def test_update_names_only_columns(rdb: RuntimeDB):
    rdb.create(_session("s", None))
    with pytest.raises(ValueError, match="not a column"):
        rdb.update("s", **{"state = 'closed', tenant": "x"})
    assert rdb.update("s", tenant="t") and rdb.get("s").tenant == "t"
    assert not rdb.update("s", owner="not-the-holder", state="closed")
    rdb.ping()


def test_each_session_is_claimed_by_one_worker(rdb: RuntimeDB):
    for i in range(6):
        rdb.create(_session(f"s{i}", None))
        rdb.post(f"s{i}", "work")
    got: dict[str, list[str]] = {}

    def worker(name: str) -> None:
        got[name] = []
        while (row := rdb.claim_any(name, 60.0)) is not None:
            got[name].append(row.id)
            rdb.consume([i for i, _ in rdb.unread(row.id)])  # its work done

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = sorted(s for ids in got.values() for s in ids)
    assert claimed == [f"s{i}" for i in range(6)]  # every session once, by one worker
    assert all(rdb.get(s).lease_owner in got and s in got[rdb.get(s).lease_owner]
               for s in claimed)


def test_sandbox_rows_change_once_per_version(rdb: RuntimeDB):
    from torpor.runtime.sandboxes.records import SandboxRecords, SandboxRow, SnapshotRow

    recs = SandboxRecords(rdb)
    recs.insert(SandboxRow(id="sbx-1", tenant="a", image="base", state="running", box="b1",
                           metadata={"k": "v"}, env={"E": "1"}, timeout=None))
    recs.insert(SandboxRow(id="sbx-2", tenant=None, image="base", state="paused"))
    row = recs.get("sbx-1")
    assert row is not None and (row.metadata, row.env, row.timeout, row.auto_resume,
                                row.version) == ({"k": "v"}, {"E": "1"}, None, True, 0)
    assert [r.id for r in recs.list("a")] == ["sbx-1"]
    assert [r.id for r in recs.list(None)] == ["sbx-2"]  # no tenant is not every tenant
    assert [r.id for r in recs.list(None, every_tenant=True)] == ["sbx-1", "sbx-2"]
    assert [r.id for r in recs.list(None, every_tenant=True, state="paused")] == ["sbx-2"]
    assert recs.running_count("a") == 1 and recs.running_count(None) == 0
    # of two changes made from the same version, the second finds the row moved on
    first = recs.update(row, state="paused", box=None, process=None)
    assert first is not None and (first.state, first.version) == ("paused", 1)
    assert recs.update(row, state="killed") is None
    assert recs.get("sbx-1").state == "paused"  # type: ignore[union-attr]
    recs.touch("sbx-1", 5e9)  # activity is not a change of state
    got = recs.get("sbx-1")
    assert got is not None and (got.last_activity, got.version) == (5e9, 1)
    recs.touch("sbx-1", 1.0)  # never backwards
    assert recs.get("sbx-1").last_activity == 5e9  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not a column"):
        recs.update(got, nope=1)
    recs.add_snapshot(SnapshotRow(id="s1", sandbox="sbx-1", tenant="a", name="n", kind="pause",
                                  bytes=10, created_at=1.0))
    assert [s.id for s in recs.snapshots("sbx-1")] == ["s1"]
    assert recs.snapshot("s1").kind == "pause"  # type: ignore[union-attr]
    recs.remove_snapshot("s1")
    assert recs.snapshots("sbx-1") == [] and recs.snapshot("s1") is None
