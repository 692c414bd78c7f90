"""Bad input and limits: every refusal is a 4xx with a JSON message, never a 500.
Driven in-process (no worker threads: posted turns stay queued), except where the socket
matters (a chunked body with no Content-Length)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tests.api.conftest import make_runtime, serve
from tests.fakeengine import FakeEngine
from torpor.api.app import Limits, create_app


@pytest.fixture(scope="module")
def api_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-input")


@pytest.fixture(scope="module")
def api_engine(api_home: Path) -> FakeEngine:
    """The API's own logic: the test double of the engine (no root, runsc or base image);
    no test here runs a turn."""
    return FakeEngine(api_home / "engine")


@pytest.fixture()
def api(api_home: Path, api_engine, tmp_path: Path):  # type: ignore[no-untyped-def]
    rt = make_runtime(api_home, api_engine, tmp_path / "bad.db")
    limits = Limits(max_body_bytes=4096, max_message_chars=1000, sessions_per_tenant=3,
                    turns_per_tenant=1)  # fmt: skip
    app = create_app(rt, auth=True, limits=limits, workers=0)
    tok = app.state.tokens.create("t1", ["drive", "exec"])[0]
    c = TestClient(app, headers={"Authorization": f"Bearer {tok}"}, raise_server_exceptions=False)
    yield c, app
    rt.close()


def msg(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["message"], str) and body["message"]
    return body["message"]


def test_malformed_json_wrong_type_unknown_fields(api):
    c, _ = api
    m = msg(c.post("/v1/sessions", content=b'{"model": "openai:x",',
                   headers={"Content-Type": "application/json"}), 400)  # fmt: skip
    assert "malformed JSON" in m
    msg(c.post("/v1/sessions", content=b"model=openai:x",
               headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)  # fmt: skip
    msg(c.post("/v1/sessions", content=b'{"model": "openai:x"}',
               headers={"Content-Type": "text/plain"}), 415)  # fmt: skip
    msg(c.post("/v1/sessions", json=[1, 2]), 422)
    msg(c.post("/v1/sessions", json={"model": "openai:x", "colour": "red"}), 422)
    msg(c.post("/v1/sessions", json={"model": 7}), 422)
    assert "provider:name" in msg(c.post("/v1/sessions", json={"model": "gpt-4o"}), 422)
    assert "unknown tool" in msg(c.post("/v1/sessions", json={"model": "openai:x",
                                                              "tools": ["nope"]}), 422)
    msg(c.post("/v1/sessions", json={"model": "openai:x", "policy": {"max_attempts": 0}}), 422)
    msg(c.get("/v1/sessions", params={"state": "sleepy"}), 422)
    msg(c.get("/v1/sessions", params={"limit": 0}), 422)
    msg(c.get("/v1/nothing-here"), 404)
    msg(c.delete("/v1/sessions"), 405)


def test_unknown_ids_and_closed_sessions(api):
    c, _ = api
    for method, path in [("GET", "/v1/sessions/ses-nope"), ("GET", "/v1/sessions/ses-nope/log"),
                         ("GET", "/v1/sessions/ses-nope/events"),
                         ("POST", "/v1/sessions/ses-nope/close"),
                         ("GET", "/v1/sessions/ses-nope/snapshots")]:  # fmt: skip
        assert "no such session" in msg(c.request(method, path), 404)
    sid = c.post("/v1/sessions", json={"model": "openai:x"}).json()["id"]
    assert "no snapshot" in msg(c.post(f"/v1/sessions/{sid}/fork", json={}), 409)
    assert "no such snapshot" in msg(c.post(f"/v1/sessions/{sid}/fork",
                                            json={"snapshot": "ck-x"}), 404)  # fmt: skip
    msg(c.get(f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": "abc"}), 400)
    msg(c.get(f"/v1/sessions/{sid}/sandbox/file", params={"path": "etc/passwd"}), 422)
    assert c.post(f"/v1/sessions/{sid}/close").json()["state"] == "closed"
    assert c.post(f"/v1/sessions/{sid}/close").status_code == 200  # closing twice is fine
    assert "closed" in msg(c.post(f"/v1/sessions/{sid}/messages", json={"text": "hi"}), 409)


def test_idempotency_key_second_post_is_a_no_op(api):
    c, app = api
    sid = c.post("/v1/sessions", json={"model": "openai:x"}).json()["id"]
    h = {"Idempotency-Key": "k-1"}
    r1 = c.post(f"/v1/sessions/{sid}/messages", json={"text": "once"}, headers=h)
    r2 = c.post(f"/v1/sessions/{sid}/messages", json={"text": "once"}, headers=h)
    assert r1.status_code == r2.status_code == 202
    assert r1.json()["turn"] == r2.json()["turn"]
    assert (r1.json()["duplicate"], r2.json()["duplicate"]) == (False, True)
    rt = app.state.runtime
    assert [t for _, t in rt.db.unread(sid)] == ["once"]
    r3 = c.post(f"/v1/sessions/{sid}/messages", json={"text": "twice"},
                headers={"Idempotency-Key": "k-2"})  # fmt: skip
    assert r3.json()["turn"] != r1.json()["turn"]
    r4 = c.post(f"/v1/sessions/{sid}/messages", json={"text": "no key"})
    r5 = c.post(f"/v1/sessions/{sid}/messages", json={"text": "no key"})
    assert r4.json()["turn"] != r5.json()["turn"]
    assert len(rt.db.unread(sid)) == 4


def test_limits_413_and_429(api):
    c, _ = api
    assert "limit" in msg(c.post("/v1/sessions", json={"model": "openai:x",
                                                       "system": "x" * 5000}), 413)
    sids = [c.post("/v1/sessions", json={"model": "openai:x"}).json()["id"] for _ in range(3)]
    assert "open sessions" in msg(c.post("/v1/sessions", json={"model": "openai:x"}), 429)
    assert "characters" in msg(c.post(f"/v1/sessions/{sids[0]}/messages",
                                      json={"text": "y" * 1001}), 413)  # fmt: skip
    assert c.post(f"/v1/sessions/{sids[0]}/messages", json={"text": "a"}).status_code == 202
    r = c.post(f"/v1/sessions/{sids[1]}/messages", json={"text": "b"})
    assert "turns" in msg(r, 429) and r.headers["retry-after"] == "1"
    # the busy session itself takes more messages (no more concurrency)
    assert c.post(f"/v1/sessions/{sids[0]}/messages", json={"text": "c"}).status_code == 202
    # closing one frees a session slot
    c.post(f"/v1/sessions/{sids[2]}/close")
    assert c.post("/v1/sessions", json={"model": "openai:x"}).status_code == 201


def test_oversized_chunked_body_over_a_real_socket(api_home: Path, api_engine, tmp_path: Path):
    rt = make_runtime(api_home, api_engine, tmp_path / "chunk.db")
    app = create_app(rt, auth=False, limits=Limits(max_body_bytes=2048), workers=0)
    try:
        with serve(app) as url:
            def chunks() -> Iterator[bytes]:
                yield b'{"model": "openai:x", "system": "'
                for _ in range(10):
                    yield b"z" * 1000
                yield b'"}'

            r = httpx.post(f"{url}/v1/sessions", content=chunks(),
                           headers={"Content-Type": "application/json"})  # fmt: skip
            assert r.request.headers.get("transfer-encoding") == "chunked"
            msg(r, 413)
            r = httpx.post(f"{url}/v1/sessions", content=b"x" * 5000,
                           headers={"Content-Type": "application/json"})  # fmt: skip
            msg(r, 413)
            ok = httpx.post(f"{url}/v1/sessions", json={"model": "openai:x"})
            assert ok.status_code == 201 and ok.json()["tenant"] is None
    finally:
        rt.close()


def test_sessions_that_could_never_run_are_refused_at_creation(api, monkeypatch, tmp_path):
    """Each of these used to be accepted with 201, then looped through recoveries forever."""
    c, app = api
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    m = msg(c.post("/v1/sessions", json={"model": "openai:gpt-4o-mini"}), 422)
    assert "no API key: set OPENAI_API_KEY" in m
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    m = msg(c.post("/v1/sessions", json={"model": "openai:x", "image": "nope"}), 422)
    assert "no such image" in m and "torpor image pull" in m
    m = msg(c.post("/v1/sessions", json={"model": "openai:x",
                                         "policy": {"retention": "last=0"}}), 422)
    assert "retention" in m
    m = msg(c.post("/v1/sessions", json={"model": "openai:x",
                                         "policy": {"retention": "forever"}}), 422)
    assert "retention" in m
    assert app.state.runtime.sessions() == []
    r = c.post("/v1/sessions", json={"model": "openai:x", "policy": {"retention": "all"}})
    assert r.status_code == 201 and r.json()["policy"]["retention"] == "all", r.text


def test_script_models_only_from_the_servers_scripts_directory(api, api_home, api_engine,
                                                               tmp_path):  # fmt: skip
    """Any tenant could make the server open any file; now only `--scripts DIR` ones."""
    c, _ = api
    inside = tmp_path / "scripts" / "t.jsonl"
    inside.parent.mkdir()
    inside.write_text('{"text": "hi"}\n')
    m = msg(c.post("/v1/sessions", json={"model": f"script:{inside}"}), 422)
    assert "torpor serve --scripts DIR" in m
    rt = make_runtime(api_home, api_engine, tmp_path / "scripts.db")
    try:
        app = create_app(rt, auth=False, workers=0, scripts=inside.parent)
        with TestClient(app, raise_server_exceptions=False) as c2:
            assert c2.post("/v1/sessions", json={"model": f"script:{inside}"}).status_code == 201
            not_jsonl = inside.parent / "notes.txt"
            not_jsonl.write_text("root:x:0:0:root:/root:/bin/bash\n")
            for model, says in {f"script:{inside.parent}/missing": "cannot read the script",
                                f"script:{not_jsonl}": f"{not_jsonl}:1"}.items():  # fmt: skip
                assert says in msg(c2.post("/v1/sessions", json={"model": model}), 422)
            for outside in ("/etc/shadow", f"{inside.parent}/../../x.jsonl"):
                m = msg(c2.post("/v1/sessions", json={"model": f"script:{outside}"}), 422)
                assert "outside the directory this server takes scripts from" in m
    finally:
        rt.close()


def test_remote_send_keeps_its_deadline(api_home, api_engine, tmp_path):
    """No worker runs the turn: send(timeout=2) gives up after ~2 s (it used to check its
    deadline only when an event came, and keepalives are comments: it waited forever)."""
    import time

    from torpor.api.client import Client

    rt = make_runtime(api_home, api_engine, tmp_path / "deadline.db")
    try:
        app = create_app(rt, auth=False, workers=0)
        with serve(app) as url, Client(url) as c:
            s = c.create_session(model="openai:x")
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match="not done after 2"):
                s.send("anyone there?", timeout=2)
            assert 1.9 < time.monotonic() - t0 < 6
    finally:
        rt.close()
