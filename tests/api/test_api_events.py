"""Event mapping of every kind of entry, a retried turn seen live, event latency, and
the tenant column's migration of an older database."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.api.conftest import Server, read_sse, shell
from torpor.api.events import OUTPUT_LIMIT, event_for, format_sse
from torpor.context import Entry
from torpor.runtime.db import RuntimeDB


def test_every_entry_kind_maps_to_an_event():
    cases = [
        (Entry.message("user", "hi"), "user", {"text": "hi"}),
        (Entry.message("assistant", "hello"), "assistant", {"delta": "hello"}),
        (Entry.message("assistant", [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
         "assistant", {"delta": "ab"}),
        (Entry.tool_call("c1", "shell", {"command": "ls"}), "tool_call_started",
         {"id": "c1", "name": "shell", "arguments": '{"command": "ls"}'}),
        (Entry.tool_result("c1", "x" * (OUTPUT_LIMIT + 5), meta={"ms": 12.5, "is_error": True}),
         "tool_call_finished", {"id": "c1", "ms": 12.5, "is_error": True, "truncated": True,
                                "output_chars": OUTPUT_LIMIT + 5}),
        (Entry.marker("snapshot_taken", snapshot="ck1", seq=4, bytes=100, ms=9.0),
         "snapshot", {"snapshot": "ck1", "bytes": 100, "ms": 9.0}),
        (Entry.marker("session_restored", snapshot="ck1", ms=30.0), "restored", {"ms": 30.0}),
        (Entry.marker("retry_scheduled", attempt=1, delay=0.5, error="429"), "retry_scheduled",
         {"attempt": 1, "delay": 0.5}),
        (Entry.marker("recovery_note", text="worker died", lost=["c1"]), "recovery",
         {"text": "worker died", "lost": ["c1"]}),
        (Entry.marker("state", state="waiting"), "state", {"state": "waiting"}),
        (Entry.marker("fork", parent="ses-a"), "fork", {"parent": "ses-a"}),
        (Entry.marker("sandbox_started", image="base", ms=80.0), "sandbox_started",
         {"image": "base", "ms": 80.0}),
        (Entry.marker("my_own", x=1), "marker", {"marker": "my_own", "x": 1}),
    ]  # fmt: skip
    for i, (entry, kind, subset) in enumerate(cases, 1):
        entry.seq = i
        got_kind, data = event_for(entry)
        assert got_kind == kind, entry
        assert data["seq"] == i
        for k, v in subset.items():
            assert data[k] == v, (kind, k)
        if kind == "tool_call_finished":
            assert len(data["output"]) == OUTPUT_LIMIT
        assert format_sse(entry).startswith(f"id: {i}\nevent: {kind}\ndata: {{")


def test_retried_turn_seen_live_and_events_arrive_fast(server: Server, script):
    tok = server.token("t-retry")
    model = script([
        {"error": {"status": 429, "retry_after": 0.2, "times": 2, "message": "slow down"}},
        {"text": "working", "tool_calls": [shell("echo ok")]},
        {"text": "finally"},
    ])  # fmt: skip
    with server.http(tok) as h:
        sid = h.post("/v1/sessions", json={"model": model}).json()["id"]
        assert h.post(f"/v1/sessions/{sid}/messages", json={"text": "go"}).status_code == 202
        got: list[dict[str, Any]] = []
        arrived: list[float] = []

        def stop(ev: dict[str, Any]) -> bool:
            arrived.append(time.time())
            return ev["event"] == "state" and ev["data"]["state"] == "waiting"

        with httpx.stream("GET", f"{server.url}/v1/sessions/{sid}/events?after=1",
                          headers={"Authorization": f"Bearer {tok}"}, timeout=60) as r:
            read_sse(r, stop, got)
    kinds = [e["event"] for e in got]
    assert kinds.count("retry_scheduled") == 2, kinds
    assert "restored" in kinds and kinds[-1] == "state"
    retry = next(e for e in got if e["event"] == "retry_scheduled")["data"]
    assert retry["attempt"] == 1 and "slow down" in retry["error"]
    # append -> client latency of entries written while the stream was open
    lat = []
    for ev, t in zip(got, arrived, strict=True):
        written = datetime.fromisoformat(ev["data"]["at"]).timestamp()
        if t - written < 5:
            lat.append(t - written)
    lat.sort()
    assert lat and lat[len(lat) // 2] < 0.3, lat  # woken by the worker, not by polling


def test_tenant_column_added_to_an_older_database(tmp_path: Path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE torpor_sessions (id TEXT PRIMARY KEY, state TEXT NOT NULL, "
        "image TEXT NOT NULL, model TEXT NOT NULL, system TEXT, tools TEXT NOT NULL, "
        "policy TEXT NOT NULL, snapshot TEXT, snapshot_seq BIGINT, snapshots TEXT NOT NULL, "
        "lease_owner TEXT, lease_until DOUBLE PRECISION, wake_at DOUBLE PRECISION, "
        "attempt INTEGER NOT NULL, parent TEXT, error TEXT, created_at DOUBLE PRECISION "
        "NOT NULL, updated_at DOUBLE PRECISION NOT NULL)"
    )
    con.execute("INSERT INTO torpor_sessions VALUES ('ses-old', 'waiting', 'base', 'openai:x', "
                "NULL, 'null', '{}', NULL, NULL, '[]', NULL, NULL, NULL, 0, NULL, NULL, 1, 1)")
    con.commit()
    con.close()
    rdb = RuntimeDB(f"sqlite:///{db}")
    row = rdb.get("ses-old")
    assert row.tenant is None and row.state == "waiting"
    assert [r.id for r in rdb.list(tenant="acme")] == []
    rdb.update("ses-old", tenant="acme")
    assert [r.id for r in rdb.list(tenant="acme")] == ["ses-old"]
    assert [r.id for r in rdb.list("waiting", tenant="acme")] == ["ses-old"]
    rdb.close()
    RuntimeDB(f"sqlite:///{db}").close()  # opening again is a no-op
