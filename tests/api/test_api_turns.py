"""Turns over HTTP on a real server and sandbox: SSE events live and resumable, the
Python client, forks, snapshots, logs, sandbox access, metrics."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.api.conftest import Server, read_sse, shell
from torpor.api.client import Client


def is_wait(ev: dict[str, Any]) -> bool:
    return ev["event"] == "state" and ev["data"].get("state") == "waiting"


def test_turn_over_http_with_live_events_and_resume(server: Server, script):
    tok = server.token("t-turn", "drive", "exec")
    model = script([
        {"text": "writing",
         "tool_calls": [shell("mkdir -p /work; echo hello > /work/a.txt; cat /work/a.txt")]},
        {"text": "done writing"},
    ])  # fmt: skip
    with server.http(tok) as h:
        s = h.post("/v1/sessions", json={"model": model}).json()
        sid = s["id"]
        assert s["tenant"] == "t-turn" and s["state"] == "created"
        got: list[dict[str, Any]] = []
        opened = threading.Event()

        def listen() -> None:
            with httpx.stream("GET", f"{server.url}/v1/sessions/{sid}/events",
                              headers={"Authorization": f"Bearer {tok}"},
                              timeout=httpx.Timeout(10, read=60)) as r:  # fmt: skip
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                opened.set()
                read_sse(r, is_wait, got)

        t = threading.Thread(target=listen)
        t.start()
        assert opened.wait(10)
        t0 = time.time()
        r = h.post(f"/v1/sessions/{sid}/messages", json={"text": "write a file"})
        assert r.status_code == 202, r.text
        assert time.time() - t0 < 2, "the post waited for the turn"
        turn = r.json()["turn"]
        assert isinstance(turn, int)
        t.join(90)
        assert not t.is_alive()
        kinds = [e["event"] for e in got]
        for k in ("user", "tool_call_started", "tool_call_finished", "assistant", "snapshot"):
            assert k in kinds, kinds
        ids = [e["id"] for e in got]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        fin = next(e for e in got if e["event"] == "tool_call_finished")["data"]
        assert "hello" in fin["output"] and fin["is_error"] is False
        snap = next(e for e in got if e["event"] == "snapshot")["data"]
        assert snap["bytes"] > 0 and snap["ms"] > 0 and snap["snapshot"]
        assert got[0]["data"]["seq"] == ids[0]

        # reconnect in the middle with Last-Event-ID: exactly the rest arrives
        cut = ids[len(ids) // 2]
        rest: list[dict[str, Any]] = []
        with httpx.stream("GET", f"{server.url}/v1/sessions/{sid}/events?until=wait",
                          headers={"Authorization": f"Bearer {tok}", "Last-Event-ID": str(cut)},
                          timeout=30) as r:  # fmt: skip
            read_sse(r, is_wait, rest)
        assert [e["id"] for e in rest] == [i for i in ids if i > cut]
        assert [e["data"] for e in rest] == [e["data"] for e in got if e["id"] > cut]

        # the whole stream from 0 equals the log
        log = h.get(f"/v1/sessions/{sid}/log", params={"limit": 500}).json()["entries"]
        full: list[dict[str, Any]] = []
        with httpx.stream("GET", f"{server.url}/v1/sessions/{sid}/events?until=wait",
                          headers={"Authorization": f"Bearer {tok}"}, timeout=30) as r:
            read_sse(r, is_wait, full)
        assert [e["id"] for e in full] == [e["seq"] for e in log][: len(full)]
        assert full[0]["event"] == "state" and full[0]["data"]["state"] == "created"

        # snapshots, export, paged log
        snaps = h.get(f"/v1/sessions/{sid}/snapshots").json()["snapshots"]
        assert len(snaps) == 1 and snaps[0]["snapshot"] == snap["snapshot"]
        oa = h.get(f"/v1/sessions/{sid}/log/export", params={"format": "openai"}).json()
        roles = [m["role"] for m in oa["messages"]]
        assert roles[:2] == ["user", "assistant"] and "tool" in roles
        an = h.get(f"/v1/sessions/{sid}/log/export", params={"format": "anthropic"}).json()
        assert an["format"] == "anthropic" and an["messages"][0]["role"] == "user"
        page1 = h.get(f"/v1/sessions/{sid}/log", params={"limit": 2}).json()
        assert len(page1["entries"]) == 2 and page1["next_after"] == page1["entries"][-1]["seq"]
        page2 = h.get(f"/v1/sessions/{sid}/log",
                      params={"after": page1["next_after"], "limit": 2}).json()  # fmt: skip
        assert page2["entries"][0]["seq"] == page1["next_after"] + 1

        # sandbox access: the file the agent wrote, in a throwaway restore
        ex = h.post(f"/v1/sessions/{sid}/sandbox/exec", json={"argv": ["cat", "/work/a.txt"]})
        assert ex.status_code == 200, ex.text
        assert ex.json()["stdout"] == "hello\n" and ex.json()["exit_code"] == 0
        f = h.get(f"/v1/sessions/{sid}/sandbox/file", params={"path": "/work/a.txt"}).json()
        assert f["content"] == "hello\n" and f["encoding"] == "utf-8"

        # metrics see the snapshot (admin scope)
        admin = server.token("t-turn", "admin")
        m = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {admin}"})
        assert m.status_code == 200
        assert "torpor_snapshot_ms_count" in m.text and 'torpor_sessions{state="waiting"}' in m.text
        assert h.get("/metrics").status_code == 403


def test_python_client_send_fork_close(server: Server, script):
    tok = server.token("t-client")
    model = script([
        {"text": "starting", "tool_calls": [shell("mkdir -p /work; echo 41 > /work/n")]},
        {"text": "first done"},
        {"text": "reading", "tool_calls": [shell("cat /work/n")]},
        {"text": "second done"},
    ])  # fmt: skip
    with Client(server.url, tok) as c:
        s = c.create_session(model=model, system="be brief")
        seen: list[str] = []
        out = s.send("start", on_event=lambda ev: seen.append(ev.type))
        assert out.state == "waiting" and out.text == "first done"
        assert out.snapshot and out.snapshot_ms > 0 and out.restore_ms is None
        assert "tool_call_started" in seen and "snapshot" in seen
        out2 = s.send("read")
        assert out2.text == "second done" and out2.restore_ms is not None
        results = [e.content for e in s.log() if e.kind == "tool_result"]
        assert results[-1].strip().endswith("41")
        assert [x.id for x in c.sessions()] == [s.id]
        child = s.fork(out.snapshot)
        info = child.info()
        assert info.parent == s.id and info.tenant == "t-client"
        assert info.snapshot == out.snapshot
        assert len(c.sessions()) == 2
        s.close()
        assert s.info().state == "closed"
        # an event stream on a closed session ends by itself
        evs = list(s.events(after=0))
        assert evs[-1].type == "state" and evs[-1].data["state"] == "closed"
        assert [x.id for x in c.sessions(state="closed")] == [s.id]


def test_exec_reaches_the_live_sandbox_while_a_turn_runs(server: Server, script):
    tok = server.token("t-live", "drive", "exec")
    model = script([
        {"text": "working", "tool_calls": [shell("echo live > /tmp/live; sleep 4")]},
        {"text": "done"},
    ])  # fmt: skip
    with server.http(tok) as h:
        sid = h.post("/v1/sessions", json={"model": model}).json()["id"]
        h.post(f"/v1/sessions/{sid}/messages", json={"text": "go"})
        deadline = time.time() + 30
        while True:  # until the tool call has started (its entry is in the log)
            log = h.get(f"/v1/sessions/{sid}/log", params={"limit": 500}).json()["entries"]
            if any(e["kind"] == "tool_call" for e in log):
                break
            assert time.time() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
        assert h.get(f"/v1/sessions/{sid}").json()["busy"] is True
        r = h.post(f"/v1/sessions/{sid}/sandbox/exec", json={"argv": ["cat", "/tmp/live"]})
        assert r.status_code == 200 and r.json()["stdout"] == "live\n", r.text
        end = list(Client(server.url, tok).get_session(sid).events(after=0, until="wait"))
        assert end[-1].type == "state" and end[-1].data["state"] == "waiting"


def test_exec_that_fails_in_the_live_sandbox_is_not_run_again(server: Server, script,
                                                               monkeypatch):  # fmt: skip
    """A command that timed out in the live sandbox may have done its work: it is not run a
    second time in a throwaway restore (which the endpoint did when the live exec failed)."""
    tok = server.token("t-once", "drive", "exec")
    model = script([
        {"text": "setup"},
        {"text": "working", "tool_calls": [shell("sleep 6")]},
        {"text": "done"},
    ])  # fmt: skip
    eng = server.runtime.engine
    debug_restores: list[str] = []
    real_restore = eng.restore

    def restore(snapshot: str, *, name: str, **kw):  # type: ignore[no-untyped-def]
        if name.startswith("dbg-"):
            debug_restores.append(name)
        return real_restore(snapshot, name=name, **kw)

    monkeypatch.setattr(eng, "restore", restore)  # a spy: the real restore still runs
    with server.http(tok) as h:
        sid = h.post("/v1/sessions", json={"model": model}).json()["id"]
        rs = Client(server.url, tok).get_session(sid)
        assert rs.send("first").state == "waiting"  # now there is a snapshot
        h.post(f"/v1/sessions/{sid}/messages", json={"text": "go"})
        deadline = time.time() + 30
        while not any(e["kind"] == "tool_call" for e in
                      h.get(f"/v1/sessions/{sid}/log", params={"limit": 500}).json()["entries"]):
            assert time.time() < deadline
            time.sleep(0.1)
        r = h.post(f"/v1/sessions/{sid}/sandbox/exec",
                   json={"argv": ["sh", "-c", "sleep 5"], "timeout": 1})  # fmt: skip
        assert r.status_code == 409 and "exec failed" in r.json()["message"], r.text
        assert debug_restores == []
        list(rs.events(after=0, until="wait"))
    # a waiting session's exec still goes to a throwaway restore
    with server.http(tok) as h:
        while h.get(f"/v1/sessions/{sid}").json()["busy"]:  # the lease goes after the marker
            time.sleep(0.05)
        r = h.post(f"/v1/sessions/{sid}/sandbox/exec", json={"argv": ["true"]})
        assert r.status_code == 200 and len(debug_restores) == 1


def wait_for_tool_call(h: httpx.Client, sid: str) -> None:
    deadline = time.time() + 30
    while not any(e["kind"] == "tool_call" for e in
                  h.get(f"/v1/sessions/{sid}/log", params={"limit": 500}).json()["entries"]):
        assert time.time() < deadline
        time.sleep(0.1)
    time.sleep(0.5)  # the command runs in the sandbox now


def test_cancel_and_close_a_running_turn_over_http(server: Server, script):
    tok = server.token("t-cancel")
    model = script([
        {"text": "", "tool_calls": [shell("sleep 60")]},
        {"text": "stopped, then"},
        {"text": "", "tool_calls": [shell("sleep 60")]},
    ])  # fmt: skip
    with server.http(tok) as h:
        sid = h.post("/v1/sessions", json={"model": model}).json()["id"]
        h.post(f"/v1/sessions/{sid}/messages", json={"text": "go"})
        wait_for_tool_call(h, sid)
        t0 = time.monotonic()
        r = h.post(f"/v1/sessions/{sid}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "waiting" and r.json()["cancel"] is None
        assert time.monotonic() - t0 < 10  # the sleep was stopped, not waited for
        log = h.get(f"/v1/sessions/{sid}/log", params={"limit": 500}).json()["entries"]
        names = [(e["content"] or {}).get("marker") for e in log if e["kind"] == "marker"]
        assert "cancelled" in names and "snapshot_taken" in names
        # the next message runs; the model was told of the cancel
        rs = Client(server.url, tok).get_session(sid)
        assert rs.send("again").text == "stopped, then"
        # close of a running session cancels it, then closes it (it used to be a 409)
        h.post(f"/v1/sessions/{sid}/messages", json={"text": "one more"})
        wait_for_tool_call(h, sid)
        r = h.post(f"/v1/sessions/{sid}/close")
        assert r.status_code == 200 and r.json()["state"] == "closed", r.text
        assert h.post(f"/v1/sessions/{sid}/messages", json={"text": "x"}).status_code == 409
        assert h.post("/v1/sessions/ses-nope/cancel").status_code == 404
    assert [i for i in server.runtime.engine.list(all=True) if i.name == f"s-{sid}"] == []
