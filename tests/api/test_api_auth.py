"""Tenants, tokens and scopes: 401 without a valid token, 404 for another tenant's
session (no existence leak), 403 for a missing scope; `torpor token` on the CLI. The API's
own logic: on the test double of the engine, no root, runsc or base image needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.api.conftest import Server


def test_no_token_bad_token_revoked_token_401(fake_server: Server, script):
    assert httpx.get(f"{fake_server.url}/v1/sessions").status_code == 401
    r = httpx.get(f"{fake_server.url}/v1/sessions", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["message"]
    assert r.headers.get("www-authenticate") == "Bearer"
    r = httpx.get(f"{fake_server.url}/v1/sessions", headers={"Authorization": "Basic eDp5"})
    assert r.status_code == 401
    tok, info = fake_server.tokens.create("t-rev")
    forged = tok[:-3] + ("aaa" if not tok.endswith("aaa") else "bbb")
    assert fake_server.http(forged).get("/v1/sessions").status_code == 401
    assert fake_server.http(tok).get("/v1/sessions").status_code == 200
    fake_server.tokens.revoke(info.id)
    assert fake_server.http(tok).get("/v1/sessions").status_code == 401
    # open endpoints
    assert httpx.get(f"{fake_server.url}/healthz").json() == {"ok": True}
    assert httpx.get(f"{fake_server.url}/readyz").json()["workers"] == 2
    assert httpx.get(f"{fake_server.url}/openapi.json").json()["openapi"].startswith("3.")
    assert "/docs" in httpx.get(f"{fake_server.url}/").text


def test_other_tenants_sessions_are_404(fake_server: Server, script):
    a, b = fake_server.token("t-a", "drive", "exec"), fake_server.token("t-b", "drive", "exec")
    with fake_server.http(a) as ha, fake_server.http(b) as hb:
        sid = ha.post("/v1/sessions", json={"model": script([{"text": "hi"}])}).json()["id"]
        assert ha.get(f"/v1/sessions/{sid}").status_code == 200
        unknown = "ses-000000000000"
        for path, method, body in [
            (f"/v1/sessions/{sid}", "GET", None),
            (f"/v1/sessions/{sid}/log", "GET", None),
            (f"/v1/sessions/{sid}/log/export", "GET", None),
            (f"/v1/sessions/{sid}/snapshots", "GET", None),
            (f"/v1/sessions/{sid}/events", "GET", None),
            (f"/v1/sessions/{sid}/messages", "POST", {"text": "x"}),
            (f"/v1/sessions/{sid}/close", "POST", None),
            (f"/v1/sessions/{sid}/fork", "POST", {}),
            (f"/v1/sessions/{sid}/sandbox/exec", "POST", {"argv": ["true"]}),
        ]:
            rb = hb.request(method, path, json=body)
            ru = hb.request(method, path.replace(sid, unknown), json=body)
            assert rb.status_code == 404, (path, rb.text)
            # the same answer as for an id that does not exist, but for the id itself
            assert rb.json()["message"].replace(sid, "X") == \
                ru.json()["message"].replace(unknown, "X")  # fmt: skip
        assert [s["id"] for s in hb.get("/v1/sessions").json()["sessions"]] == []
        assert [s["id"] for s in ha.get("/v1/sessions").json()["sessions"]] == [sid]
        # an admin token sees every tenant
        adm = fake_server.token("t-ops", "drive", "admin")
        ids = [s["id"] for s in fake_server.http(adm).get("/v1/sessions",
                                                      params={"limit": 500}).json()["sessions"]]
        assert sid in ids


def test_scopes_separate_drive_exec_admin(fake_server: Server, script):
    drive, exe = fake_server.token("t-s", "drive"), fake_server.token("t-s", "exec")
    with fake_server.http(drive) as hd, fake_server.http(exe) as he:
        sid = hd.post("/v1/sessions", json={"model": script([{"text": "hi"}])}).json()["id"]
        r = hd.post(f"/v1/sessions/{sid}/sandbox/exec", json={"argv": ["true"]})
        assert r.status_code == 403 and "exec" in r.json()["message"]
        assert hd.get(f"/v1/sessions/{sid}/sandbox/file", params={"path": "/etc/hostname"}
                      ).status_code == 403  # fmt: skip
        assert he.get(f"/v1/sessions/{sid}").status_code == 403
        assert he.post("/v1/sessions", json={"model": "openai:x"}).status_code == 403
        # exec scope, right tenant, but no sandbox yet: a clear 409
        r = he.post(f"/v1/sessions/{sid}/sandbox/exec", json={"argv": ["true"]})
        assert r.status_code == 409 and "no sandbox" in r.json()["message"]
        assert hd.get("/metrics").status_code == 403
        assert he.get("/v1/whoami").json() == {"tenant": "t-s", "scopes": ["exec"],
                                               "token": exe.split("_")[1]}  # fmt: skip


def test_token_cli_create_ls_revoke(tmp_path: Path):
    env = {**os.environ, "TORPOR_HOME": str(tmp_path)}
    torpor = [sys.executable, "-m", "torpor.cli.main"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*torpor, *args], env=env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    r = run("token", "create", "--tenant", "acme", "--scope", "drive", "--scope", "exec")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("tpk_") and "shown only now" in r.stderr
    db = (tmp_path / "context.db").read_bytes()
    secret = token.split("_", 2)[2]  # the secret itself may contain "_" (URL-safe base64)
    assert token.encode() not in db and secret.encode() not in db
    ls = run("token", "ls")
    assert "acme" in ls.stdout and "drive,exec" in ls.stdout and token not in ls.stdout
    tid = token.split("_")[1]
    assert run("token", "revoke", tid).returncode == 0
    assert tid not in run("token", "ls").stdout
    bad = run("token", "create", "--tenant", "acme", "--scope", "root")
    assert bad.returncode == 1 and bad.stderr.startswith("torpor: error: unknown scope")
    again = run("token", "revoke", tid)
    assert again.returncode == 1 and "no such live token" in again.stderr
