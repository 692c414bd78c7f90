"""Stored bytes in the API: /v1/usage (a tenant's own, every tenant's for admin), a
session's `storage`, and the Prometheus gauges, from what the scheduled gc counted
(runtime/storage.record_usage); the quotas: the server's, a tenant's own (`torpor quota`),
and stored bytes counted as snapshots are stored, between two gcs. In-process, the test
double of the engine: no root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from starlette.testclient import TestClient

from tests.api.conftest import make_runtime
from tests.fakeengine import FakeEngine
from torpor.api.app import create_app
from torpor.runtime.checkpoints import SnapshotCheckpointStorage
from torpor.runtime.quotas import Quota
from torpor.runtime.storage import account, record_usage
from torpor.snapshots import open_store
from torpor.snapshots.usage import StoreUsage, Usage


def test_usage_per_tenant_and_session(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path, FakeEngine(tmp_path / "engine"), tmp_path / "u.db")
    app = create_app(rt, auth=True, workers=0)
    tokens = app.state.tokens
    ta, tb = tokens.create("a", ["drive"])[0], tokens.create("b", ["drive"])[0]
    admin = tokens.create("ops", ["drive", "admin"])[0]
    ca, cb, cadm = (TestClient(app, headers={"Authorization": f"Bearer {t}"})
                    for t in (ta, tb, admin))  # fmt: skip
    sa = ca.post("/v1/sessions", json={"model": "openai:x"}).json()["id"]
    sb = cb.post("/v1/sessions", json={"model": "openai:x"}).json()["id"]
    assert ca.get(f"/v1/sessions/{sa}").json()["storage"] is None  # not counted yet
    got = ca.get("/v1/usage").json()
    assert {k: got[k] for k in ("tenants", "sessions", "sandboxes")} == {
        "tenants": [], "sessions": [], "sandboxes": []}
    assert got["quotas"] == [{  # no limits: the server's are 0 (none)
        "tenant": "a", "counted_bytes": 0, "added_bytes": 0, "counted_at": None,
        "stored_bytes": {"limit": None, "used": 0, "left": None, "from": "server"},
        "snapshots": {"limit": None, "used": 0, "left": None, "from": "server"}}]
    record_usage(rt.db, {
        "session": StoreUsage(snapshots=5, groups={sa: Usage(3, 3000, 900, 600),
                                                   sb: Usage(2, 2000, 500, 200)}),
        "tenant": StoreUsage(snapshots=5, groups={"a": Usage(3, 3000, 900, 600),
                                                  "b": Usage(2, 2000, 500, 200)}),
    })  # fmt: skip
    got = ca.get("/v1/usage").json()
    assert [t["name"] for t in got["tenants"]] == ["a"]
    assert got["tenants"][0] | {"at": 0} == {"kind": "tenant", "name": "a", "tenant": "a",
                                             "snapshots": 3, "logical": 3000, "stored": 900,
                                             "exclusive": 600, "shared": 300, "at": 0}
    assert [s["name"] for s in got["sessions"]] == [sa]
    assert ca.get(f"/v1/sessions/{sa}").json()["storage"]["stored"] == 900
    assert cb.get(f"/v1/sessions/{sa}").status_code == 404  # another tenant's: absent
    every = cadm.get("/v1/usage").json()
    assert [t["name"] for t in every["tenants"]] == ["a", "b"]  # largest first
    assert [q["tenant"] for q in every["quotas"]] == ["a", "b", "ops"]  # (ops: its token)
    assert [s["name"] for s in cadm.get("/v1/usage?limit=1").json()["sessions"]] == [sa]
    text = cadm.get("/metrics").text
    assert 'torpor_storage_bytes{kind="stored",tenant="a"} 900.0' in text
    assert 'torpor_storage_snapshots{tenant="b"} 2.0' in text
    assert 'torpor_store_bytes{kind="packs"}' in text
    rt.close()


def test_a_tenant_over_its_quota_makes_no_new_sessions(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path, FakeEngine(tmp_path / "engine"), tmp_path / "q.db")
    app = create_app(rt, auth=True, workers=0)
    ta = app.state.tokens.create("a", ["drive"])[0]
    tb = app.state.tokens.create("b", ["drive"])[0]
    ca, cb = (TestClient(app, headers={"Authorization": f"Bearer {t}"}) for t in (ta, tb))
    sa = ca.post("/v1/sessions", json={"model": "openai:x"}).json()["id"]
    for i in range(3):
        rt.db.record_snapshot(f"snap-{i}", sa, "m", "m:1")
    rt.quota = Quota(snapshots=2)
    r = ca.post("/v1/sessions", json={"model": "openai:x"})
    assert r.status_code == 429, r.text
    assert "tenant 'a' has 3 snapshots, over its quota of 2" in r.json()["message"]
    assert cb.post("/v1/sessions", json={"model": "openai:x"}).status_code == 201  # b is not
    rt.quota = Quota(stored_bytes=1000)
    assert ca.post("/v1/sessions", json={"model": "openai:x"}).status_code == 201  # not counted
    record_usage(rt.db, {
        "session": StoreUsage(groups={sa: Usage(3, 9000, 4000, 4000)}),
        "tenant": StoreUsage(groups={"a": Usage(3, 9000, 4000, 4000)}),
    })  # fmt: skip
    r = ca.post("/v1/sessions", json={"model": "openai:x"})
    assert r.status_code == 413, r.text
    m = r.json()["message"]
    assert "stores 4,000 bytes of snapshots, over its quota of 1,000" in m
    assert f"{sa} (4,000 bytes, 3 snapshots)" in m and "torpor snapshot rm" in m
    rt.close()


def quota_cli(db: Path, *args: str) -> str:
    """`torpor quota ...` on the server's database, as an operator runs it."""
    out = subprocess.run([sys.executable, "-m", "torpor.cli.main", "quota", *args, "--db",
                          f"sqlite:///{db}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_tenants_own_quota_replaces_the_servers_for_it_only(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    rt = make_runtime(tmp_path, FakeEngine(tmp_path / "engine"), db)
    app = create_app(rt, auth=True, workers=0)
    ca, cb = (TestClient(app, headers={"Authorization": f"Bearer {t}"})
              for t in (app.state.tokens.create(n, ["drive"])[0] for n in ("a", "b")))
    new = {"model": "openai:x"}
    sa, sb = (c.post("/v1/sessions", json=new).json()["id"] for c in (ca, cb))
    for i in range(3):
        rt.db.record_snapshot(f"a-{i}", sa, "m", "m:1")
        rt.db.record_snapshot(f"b-{i}", sb, "m", "m:1")
    rt.quota = Quota(snapshots=5)  # the server's: both under it

    quota_cli(db, "set", "a", "--snapshots", "2")  # lowered, for a only
    r = ca.post("/v1/sessions", json=new)
    assert r.status_code == 429, r.text
    assert ("tenant 'a' has 3 snapshots, over its quota of 2 (its own quota (`torpor quota "
            "set`))") in r.json()["message"]
    assert cb.post("/v1/sessions", json=new).status_code == 201
    assert ca.get("/v1/usage").json()["quotas"][0] | {"counted_at": 0} == {
        "tenant": "a", "counted_bytes": 0, "added_bytes": 0, "counted_at": 0,
        "snapshots": {"limit": 2, "used": 3, "left": 0, "from": "tenant"},
        "stored_bytes": {"limit": None, "used": 0, "left": None, "from": "server"}}

    rt.quota = Quota(snapshots=1)  # the server's lowered: b is over it ...
    r = cb.post("/v1/sessions", json=new)
    assert r.status_code == 429 and "over its quota of 1 (the server's quota " \
        "(--tenant-snapshots))" in r.json()["message"]  # fmt: skip
    quota_cli(db, "set", "b", "--snapshots", "10")  # ... unless its own is higher
    assert cb.post("/v1/sessions", json=new).status_code == 201
    got = cb.get("/v1/usage").json()["quotas"]
    assert [(q["tenant"], q["snapshots"]["left"]) for q in got] == [("b", 7)]

    quota_cli(db, "set", "a", "--stored-bytes", "1K")  # its snapshots' limit stays 2
    record_usage(rt.db, {"session": StoreUsage(groups={sa: Usage(3, 9000, 4000, 4000)}),
                         "tenant": StoreUsage(groups={"a": Usage(3, 9000, 4000, 4000)})})
    quota_cli(db, "set", "a", "--snapshots", "0")  # 0: no limit on its snapshots
    r = ca.post("/v1/sessions", json=new)
    assert r.status_code == 413, r.text
    assert "stores 4,000 bytes of snapshots, over its quota of 1,024 (its own" \
        in r.json()["message"]  # fmt: skip
    listed = json.loads(quota_cli(db, "ls", "--format", "json"))
    assert listed == [
        {"tenant": "a", "stored_bytes": 1024, "snapshots": 0, "used_bytes": 4000,
         "used_snapshots": 3},
        {"tenant": "b", "stored_bytes": None, "snapshots": 10, "used_bytes": 0,
         "used_snapshots": 3}]  # fmt: skip
    assert "1.0 KiB (1024)" in quota_cli(db, "ls")

    quota_cli(db, "rm", "a")  # the server's again: 1 snapshot, no limit on bytes
    r = ca.post("/v1/sessions", json=new)
    assert r.status_code == 429 and "(the server's quota" in r.json()["message"]
    rt.quota = Quota()
    assert ca.post("/v1/sessions", json=new).status_code == 201
    assert cb.post("/v1/sessions", json=new).status_code == 201  # (b: its own 10)
    rt.close()


def test_stored_bytes_count_as_snapshots_are_stored_between_two_counts(tmp_path: Path) -> None:
    """The last count (a scheduled gc's) plus each snapshot's new bytes as its upload ends:
    a tenant under its quota at the count goes over without a gc run; the next count
    corrects the estimate."""
    engine = FakeEngine(tmp_path / "engine")
    store = open_store(f"file://{tmp_path / 'snapshots'}")
    cks = SnapshotCheckpointStorage(store, tmp_path, background=False)
    engine.checkpoints = cks  # type: ignore[attr-defined]  # (the runtime listens to it)
    rt = make_runtime(tmp_path, engine, tmp_path / "f.db")
    app = create_app(rt, auth=True, workers=0)
    ca, cb = (TestClient(app, headers={"Authorization": f"Bearer {t}"})
              for t in (app.state.tokens.create(n, ["drive"])[0] for n in ("a", "b")))
    new = {"model": "openai:x"}
    sa, sb = (c.post("/v1/sessions", json=new).json()["id"] for c in (ca, cb))
    rt.quota = Quota(stored_bytes=300_000)
    record_usage(rt.db, {"session": StoreUsage(groups={sa: Usage(1, 1000, 100_000, 0)}),
                         "tenant": StoreUsage(groups={"a": Usage(1, 1000, 100_000, 0)})})
    assert ca.post("/v1/sessions", json=new).status_code == 201  # under it

    def stored(snap: str, session: str) -> None:  # a wait point's snapshot, uploaded
        d = cks.staging_dir()
        (d / "checkpoint.img").write_bytes(os.urandom(128 << 10))  # (incompressible)
        cks.put(snap, d, {"sandbox": f"s-{session}"})

    stored("a-1", sa)
    stored("a-2", sa)
    stored("b-1", sb)  # another tenant's
    r = ca.post("/v1/sessions", json=new)
    assert r.status_code == 413, r.text
    m = r.json()["message"]
    assert "(100,000 at the last count + " in m and " stored since), over its quota of " \
        "300,000" in m  # fmt: skip
    assert cb.post("/v1/sessions", json=new).status_code == 201
    q = ca.get("/v1/usage").json()["quotas"][0]
    assert q["counted_bytes"] == 100_000 and 2 * (128 << 10) <= q["added_bytes"] < 300_000

    t0 = time.time()  # the next count: what the store holds, the estimate dropped
    record_usage(rt.db, account(rt.db, store), at=t0)
    q = ca.get("/v1/usage").json()["quotas"][0]
    assert q["added_bytes"] == 0 and 2 * (128 << 10) <= q["counted_bytes"] < 300_000
    assert ca.post("/v1/sessions", json=new).status_code == 201  # under it again
    rt.close()
    store.close()
