"""Stored bytes in the API: /v1/usage (a tenant's own, every tenant's for admin), a
session's `storage`, and the Prometheus gauges, from what the scheduled gc counted
(runtime/storage.record_usage). In-process, the test double of the engine: no root."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from tests.api.conftest import make_runtime
from tests.fakeengine import FakeEngine
from torpor.api.app import create_app
from torpor.runtime.storage import record_usage
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
    assert ca.get("/v1/usage").json() == {"tenants": [], "sessions": []}
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
    assert [s["name"] for s in cadm.get("/v1/usage?limit=1").json()["sessions"]] == [sa]
    text = cadm.get("/metrics").text
    assert 'torpor_storage_bytes{kind="stored",tenant="a"} 900.0' in text
    assert 'torpor_storage_snapshots{tenant="b"} 2.0' in text
    assert 'torpor_store_bytes{kind="packs"}' in text
    rt.close()


def test_a_tenant_over_its_quota_makes_no_new_sessions(tmp_path: Path) -> None:
    from torpor.runtime.retention import Quota

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
