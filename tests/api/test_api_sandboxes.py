"""The native sandbox API (/v1/sandboxes) through a real server and real runsc: the Python
client's RemoteSandbox (streamed exec, background processes with stdin, files, pause,
resume, snapshots, forks, timeouts, kill), the NDJSON stream read by hand, tenants and
scopes, and the answers to bad input."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import Server
from torpor.api.client import ApiError, Client
from torpor.api.sandbox_client import RemoteSandbox
from torpor.sandbox.engine import CommandTimeout


@pytest.fixture()
def client(server: Server) -> Iterator[Client]:
    c = Client(server.url, server.token("t-sbx", "sandboxes"))
    yield c
    for sb in c.sandboxes.list():
        if sb.last_info is not None and sb.last_info.state != "killed":
            sb.kill()
    c.close()


def test_exec_streams_output_then_the_exit_code(client: Client):
    sb = client.sandboxes.create(env={"WHO": "world"})
    assert sb.last_info is not None and sb.last_info.state == "running"
    got: list[tuple[float, bytes]] = []
    t0 = time.monotonic()
    res = sb.exec("echo hello $WHO; sleep 1; echo done >&2; exit 3",
                  on_stdout=lambda b: got.append((time.monotonic() - t0, b)))
    assert (res.exit_code, res.stdout, res.stderr) == (3, b"hello world\n", b"done\n")
    assert got and got[0][1] == b"hello world\n" and got[0][0] < 0.9  # before the end
    assert sb.exec(["printf", "%s", "a b"]).stdout == b"a b"  # an argv as it is
    assert sb.exec("cat", stdin="fed\n").stdout == b"fed\n"
    assert sb.exec("pwd", cwd="/tmp").stdout == b"/tmp\n"
    with pytest.raises(CommandTimeout) as e:
        sb.exec("echo before; sleep 30", timeout=1)
    assert e.value.result is not None and e.value.result.stdout == b"before\n"
    assert e.value.result.exit_code == 124
    # binary output passes whole
    assert sb.exec("head -c 256 /dev/urandom | wc -c").stdout.strip() == b"256"
    data = sb.exec("printf '\\377\\376'").stdout
    assert data == b"\xff\xfe"


def test_the_ndjson_stream_by_hand(server: Server, client: Client):
    sb = client.sandboxes.create()
    lines = []
    with httpx.Client(base_url=server.url, timeout=30,
                      headers={"Authorization": client.http.headers["Authorization"]}) as h, \
            h.stream("POST", f"/v1/sandboxes/{sb.id}/exec",
                     json={"cmd": "echo a; echo b >&2; printf '\\303'; printf '\\251'"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(x) for x in r.iter_lines() if x]
    out = "".join(x["data"] for x in lines if x["type"] == "stdout")
    assert out == "a\né"  # a character cut between two chunks comes whole
    assert {"type": "stderr", "data": "b\n"} in lines
    assert lines[-1] == {"type": "exit", "exit_code": 0}


def test_background_processes_with_stdin_output_and_kill(client: Client):
    sb = client.sandboxes.create()
    p = sb.spawn("while read l; do echo got:$l; done; echo eof", stdin=True)
    assert p.info().running
    p.write("one\n")
    p.write(b"two\n")
    p.close_stdin()
    assert p.wait(timeout=10) == 0
    assert p.output() == (b"got:one\ngot:two\neof\n", b"")
    assert p.id in [i.id for i in sb.processes()]
    q = sb.spawn(["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.3; done"])
    chunks: list[bytes] = []
    assert q.stream(on_stdout=chunks.append) == 0
    assert b"".join(chunks) == b"1\n2\n3\n"
    forever = sb.spawn("sleep 1000")
    forever.kill("TERM")
    assert forever.wait(timeout=10) == 143
    with pytest.raises(ApiError) as e:
        sb.process(99999).info()
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:
        forever.write("x")
    assert e.value.status == 409 and "not open" in e.value.message


def test_files(client: Client):
    sb = client.sandboxes.create()
    entry = sb.files.write("/work/dir/a.txt", "alpha\n")
    assert (entry.path, entry.size, entry.type) == ("/work/dir/a.txt", 6, "file")
    blob = bytes(range(256)) * 1000
    sb.files.write("/work/dir/b.bin", blob, mode=0o600)
    assert sb.files.read("/work/dir/b.bin") == blob
    assert sb.files.read_text("/work/dir/a.txt") == "alpha\n"
    assert [e.name for e in sb.files.list("/work/dir")] == ["a.txt", "b.bin"]
    assert sb.files.stat("/work/dir/b.bin").mode == 0o600
    assert sb.files.mkdir("/work/new/deep") is True and sb.files.mkdir("/work/new") is False
    sb.files.move("/work/dir/a.txt", "/work/new/a.txt")
    assert sb.files.exists("/work/new/a.txt") and not sb.files.exists("/work/dir/a.txt")
    sb.files.remove("/work/new", recursive=True)
    assert not sb.files.exists("/work/new")
    with pytest.raises(ApiError) as e:
        sb.files.read("/work/nope")
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:
        sb.files.remove("/work/dir")  # not empty
    assert e.value.status == 409


def test_pause_resume_snapshot_fork_kill(client: Client):
    sb = client.sandboxes.create(timeout=None, metadata={"owner": "me"})
    sb.spawn(["python3", "-c", "import time\nn=0\nwhile True:\n n+=1\n time.sleep(0.01)\n"
                               " open('/tmp/n.t','w').write(str(n))\n"
                               " __import__('os').replace('/tmp/n.t','/tmp/n')\n"])
    sb.files.write("/work/v", "1")
    time.sleep(0.5)
    row = sb.pause()
    assert row.state == "paused" and row.snapshot and row.metadata == {"owner": "me"}
    with pytest.raises(ApiError) as e:
        sb.pause()
    assert e.value.status == 409 and "paused already" in e.value.message
    n = int(sb.files.read_text("/tmp/n"))  # auto_resume: the call resumes it
    assert n > 0 and sb.info.state == "running"
    assert sb.resume() is False
    snap = sb.checkpoint("v1")
    assert (snap.name, snap.kind) == ("v1", "snapshot")
    sb.files.write("/work/v", "2")
    fork = sb.fork(snapshot=snap.id)
    assert fork.files.read_text("/work/v") == "1" and fork.info.source == snap.id
    assert [s.id for s in sb.checkpoints() if s.kind == "snapshot"] == [snap.id]
    fresh = client.sandboxes.create(snapshot=snap.id)
    assert fresh.files.read_text("/work/v") == "1"
    sb.kill()
    assert sb.info.state == "killed"
    with pytest.raises(ApiError) as e:
        sb.exec("true")
    assert e.value.status == 409 and "killed" in e.value.message
    assert client.sandboxes.get(sb.id).info.state == "killed"
    assert {s.id for s in client.sandboxes.list(state="running")} >= {fork.id, fresh.id}


def test_timeout_settings_and_the_idle_janitor(client: Client):
    sb = client.sandboxes.create(timeout=3600, auto_resume=False)
    row = sb.set_timeout(1, on_timeout="pause")
    assert (row.timeout, row.on_timeout, row.auto_resume) == (1, "pause", False)
    deadline = time.monotonic() + 20
    while sb.info.state != "paused":  # the server's janitor pauses it once idle
        assert time.monotonic() < deadline, sb.info
        time.sleep(0.3)
    assert "idle for" in str(sb.info.note)
    with pytest.raises(ApiError) as e:
        sb.exec("true")  # auto_resume off
    assert e.value.status == 409 and "resume it first" in e.value.message
    assert sb.resume() is True
    assert sb.set_timeout(None).timeout is None  # never


def test_tenants_scopes_and_bad_input(server: Server, client: Client):
    sb = client.sandboxes.create()
    other = httpx.Client(base_url=server.url, timeout=30, headers={
        "Authorization": f"Bearer {server.token('t-other', 'sandboxes')}"})
    drive_only = httpx.Client(base_url=server.url, timeout=30, headers={
        "Authorization": f"Bearer {server.token('t-sbx', 'drive')}"})
    anon = httpx.Client(base_url=server.url, timeout=30)
    try:
        for method, path in (("GET", ""), ("POST", "/pause"), ("DELETE", ""),
                             ("GET", "/files?path=/etc/hostname")):
            assert other.request(method, f"/v1/sandboxes/{sb.id}{path}").status_code == 404
        r = other.post(f"/v1/sandboxes/{sb.id}/exec", json={"cmd": "true"})
        assert r.status_code == 404 and r.json()["message"] == f"no such sandbox: {sb.id}"
        assert other.get("/v1/sandboxes").json()["total"] == 0
        r = drive_only.post("/v1/sandboxes", json={})
        assert r.status_code == 403 and "'sandboxes' scope" in r.json()["message"]
        assert anon.get("/v1/sandboxes").status_code == 401
        h = client.http
        assert h.post("/v1/sandboxes", json={"image": "nope"}).status_code == 422
        assert h.post("/v1/sandboxes", json={"snapshot": "nope"}).status_code == 404
        assert h.post("/v1/sandboxes", json={"timeout": -1}).status_code == 422
        assert h.post("/v1/sandboxes", json={"on_timeout": "explode"}).status_code == 422
        assert h.get("/v1/sandboxes/sbx-nope").status_code == 404
        r = h.post(f"/v1/sandboxes/{sb.id}/exec", json={"cmd": []})
        assert r.status_code == 200 and r.text.splitlines()[-1].startswith('{"type": "error"')
        assert h.get(f"/v1/sandboxes/{sb.id}/files", params={"path": "rel"}).status_code == 422
        r = h.put(f"/v1/sandboxes/{sb.id}/files", params={"path": "/work/x"}, content=b"x" * 10,
                  headers={"Content-Type": "text/plain"})
        assert r.status_code == 200  # any content type: the body is the file
        r = h.post(f"/v1/sandboxes/{sb.id}/snapshots", json={"name": "../x"})
        assert r.status_code == 422
        r = h.patch(f"/v1/sandboxes/{sb.id}", json={"on_timeout": None, "timeout": 60})
        assert r.status_code == 200 and r.json()["on_timeout"] == "pause"  # null: unchanged
        r = h.post(f"/v1/sandboxes/{sb.id}/exec", json={"cmd": ["echo", "a\u0000b"]})
        assert r.status_code == 422  # no argv can hold a NUL
        r = h.post(f"/v1/sandboxes/{sb.id}/exec", json={"cmd": "env", "env": {"A=B": "c"}})
        assert r.status_code == 422 and "environment variable name" in r.json()["message"]
        cat = h.post(f"/v1/sandboxes/{sb.id}/processes", json={"cmd": "cat", "stdin": True})
        stdin = f"/v1/sandboxes/{sb.id}/processes/{cat.json()['id']}/stdin"
        r = h.post(stdin, json={"data": "not base64!", "encoding": "base64"})
        assert r.status_code == 422  # (the document's pattern says so too)
        assert h.post(stdin, json={"data": "aGk=", "encoding": "base64"}).status_code == 204
    finally:
        for c in (other, drive_only, anon):
            c.close()


def test_a_client_that_goes_away_stops_its_command(server: Server, client: Client):
    sb = client.sandboxes.create()
    stop = threading.Event()

    def read() -> None:
        with httpx.Client(base_url=server.url, timeout=30, headers={
                "Authorization": client.http.headers["Authorization"]}) as h, \
                h.stream("POST", f"/v1/sandboxes/{sb.id}/exec",
                         json={"cmd": "echo started; sleep 300", "timeout": 600}) as r:
            for _line in r.iter_lines():
                stop.set()
                return  # gone, mid-stream

    threading.Thread(target=read).start()
    assert stop.wait(20)
    deadline = time.monotonic() + 20
    while "sleep 300" in sb.exec("ps -eo args").text:
        assert time.monotonic() < deadline, "the command outlived its client"
        time.sleep(0.2)


def test_remote_sandbox_has_the_handles_names():
    from torpor.sandbox import Sandbox

    shared = {"exec", "spawn", "process", "processes", "files", "checkpoint", "checkpoints",
              "remove_checkpoint", "fork", "kill", "info", "state", "id"}
    assert shared <= set(dir(Sandbox)) | {"id"}
    assert shared <= set(dir(RemoteSandbox)) | {"id"}


def test_a_tenant_over_its_storage_quota(server: Server):
    """Its new sandboxes, forks and snapshots get 429 (snapshots) or 413 (stored bytes)
    naming what to delete; its pause is never refused, its note says why; /v1/usage
    shows its limits and what is left."""
    from torpor.runtime import quotas

    db = server.runtime.db
    h = server.http(server.token("t-quota", "sandboxes", "drive"))
    try:
        sid = h.post("/v1/sandboxes", json={"timeout": None}).json()["id"]
        snap = h.post(f"/v1/sandboxes/{sid}/snapshots", json={"name": "one"}).json()["id"]
        assert h.post(f"/v1/sandboxes/{sid}/pause").status_code == 200
        quotas.set_quota(db, "t-quota", snapshots=1)
        for path, body in (("/v1/sandboxes", {}), (f"/v1/sandboxes/{sid}/snapshots", {}),
                           (f"/v1/sandboxes/{sid}/fork", {"snapshot": snap})):
            r = h.post(path, json=body)
            assert r.status_code == 429, (path, r.text)
            m = r.json()["message"]
            assert "tenant 't-quota' has 2 snapshots, over its quota of 1 (its own" in m, m
            assert "/v1/sandboxes/{id}/snapshots/{snapshot}" in m
        assert h.post(f"/v1/sandboxes/{sid}/resume").status_code == 200
        r = h.post(f"/v1/sandboxes/{sid}/pause")
        assert r.status_code == 200 and "paused all the same" in r.json()["note"]
        got = h.get("/v1/usage").json()["quotas"]
        assert [(q["tenant"], q["snapshots"]) for q in got] == [
            ("t-quota", {"limit": 1, "used": 2, "left": 0, "from": "tenant"})]
        assert got[0]["added_bytes"] > 0  # its pauses' uploads, counted as they ended
        quotas.set_quota(db, "t-quota", snapshots=0, stored_bytes=1)
        r = h.post("/v1/sandboxes", json={})
        assert r.status_code == 413 and "over its quota of 1 (its own" in r.json()["message"]
        assert h.delete(f"/v1/sandboxes/{sid}/snapshots/{snap}").status_code == 204
        quotas.remove_quota(db, "t-quota")  # back to the server's: none
        assert h.post(f"/v1/sandboxes/{sid}/snapshots", json={}).status_code == 201
    finally:
        for sb in h.get("/v1/sandboxes").json()["sandboxes"]:
            h.delete(f"/v1/sandboxes/{sb['id']}")
        h.close()
