"""The runtime's, the tokens' and the metrics' statements on both databases (the log's
run in tests/context on both): tokens made, checked, listed and revoked; per-tenant
counts; sessions by state; leases claimed once."""

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
