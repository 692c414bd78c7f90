"""`torpor session ... --server URL` against a real server, and `torpor serve`'s binding
rule (no non-loopback address without a token)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.api.conftest import Server, free_port, shell

TORPOR = [sys.executable, "-m", "torpor.cli.main"]


def test_session_commands_against_a_remote_server(server: Server, script, tmp_path: Path):
    tok = server.token("t-cli")
    # TORPOR_HOME points elsewhere: nothing may come from a local database
    env = {**os.environ, "TORPOR_HOME": str(tmp_path / "nothing"), "TORPOR_TOKEN": tok}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TORPOR, "session", *args, "--server", server.url], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    model = script([
        {"text": "working", "tool_calls": [shell("echo remote-ok")]},
        {"text": "all done"},
    ])  # fmt: skip
    r = run("new", "--model", model)
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    r = run("send", sid, "do it")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "all done"
    assert "→ shell" in r.stderr and "remote-ok" in r.stderr and "wait point" in r.stderr
    r = run("ls")
    assert sid in r.stdout and "waiting" in r.stdout
    r = run("show", sid, "--format", "json")
    shown = json.loads(r.stdout)
    assert shown["session"]["id"] == sid
    assert any(e["kind"] == "tool_result" for e in shown["log"])
    assert "◆ snapshot_taken" in run("show", sid).stdout
    r = run("fork", sid)
    assert r.returncode == 0, r.stderr
    child = r.stdout.strip()
    assert child.startswith("ses-") and child != sid
    assert run("close", sid).returncode == 0
    assert server.runtime.db.get(sid).state == "closed"
    r = run("send", sid, "more")
    assert r.returncode == 1 and "closed" in r.stderr and "HTTP 409" in r.stderr
    assert r.stderr.startswith("torpor: error:")
    # another tenant's token: the session does not exist for it
    env["TORPOR_TOKEN"] = server.token("t-cli-other")
    r = run("show", sid)
    assert r.returncode == 1 and "no such session" in r.stderr
    # no server there: one clean line
    r = subprocess.run([*TORPOR, "session", "ls", "--server", f"http://127.0.0.1:{free_port()}"],
                       env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1 and r.stderr.startswith("torpor: error: cannot reach")


def test_serve_refuses_public_address_without_tokens_then_serves(tmp_path: Path):
    env = {**os.environ, "TORPOR_HOME": str(tmp_path)}
    r = subprocess.run([*TORPOR, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                       env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1
    assert "refusing to listen on 0.0.0.0" in r.stderr and "torpor token create" in r.stderr
    # loopback without tokens: served, open
    port = free_port()
    p = subprocess.Popen([*TORPOR, "serve", "--port", str(port), "--workers", "0"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 30
        while True:
            try:
                r2 = httpx.get(f"http://127.0.0.1:{port}/v1/sessions", timeout=2)
                break
            except httpx.TransportError:
                assert time.time() < deadline and p.poll() is None, p.stderr
                time.sleep(0.1)
        assert r2.status_code == 200 and r2.json()["sessions"] == []
    finally:
        p.terminate()
        p.wait(30)
    # with a token: auth is on
    tok = subprocess.run([*TORPOR, "token", "create", "--tenant", "acme"], env=env,
                         capture_output=True, text=True, timeout=60).stdout.strip()  # fmt: skip
    port = free_port()
    p = subprocess.Popen([*TORPOR, "serve", "--port", str(port), "--workers", "0"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 30
        while True:
            try:
                r3 = httpx.get(f"http://127.0.0.1:{port}/v1/sessions", timeout=2)
                break
            except httpx.TransportError:
                assert time.time() < deadline and p.poll() is None
                time.sleep(0.1)
        assert r3.status_code == 401
        ok = httpx.get(f"http://127.0.0.1:{port}/v1/sessions",
                       headers={"Authorization": f"Bearer {tok}"})  # fmt: skip
        assert ok.status_code == 200
    finally:
        p.terminate()
        p.wait(30)


def test_sandbox_verbs_against_a_remote_server(server: Server, tmp_path: Path):
    env = {**os.environ, "TORPOR_HOME": str(tmp_path / "nothing"),
           "TORPOR_TOKEN": server.token("t-cli-sbx", "sandboxes")}

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        # --server right after the verb: run and exec take what follows the sandbox (or
        # the image) as the command
        at = 2 if args[0] == "checkpoint" else 1
        return subprocess.run([*TORPOR, *args[:at], "--server", server.url, *args[at:]],
                              env=env, input=input, capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    r = run("run", "-e", "WHO=cli", "--timeout", "600", "base")
    assert r.returncode == 0, r.stderr
    sbx = r.stdout.strip()
    assert sbx.startswith("sbx-")
    r = run("exec", sbx, "sh", "-c", "echo hi $WHO; echo err >&2; exit 5")
    assert (r.returncode, r.stdout, r.stderr) == (5, "hi cli\n", "err\n")
    r = run("exec", "-i", sbx, "cat", input="piped\n")
    assert (r.returncode, r.stdout) == (0, "piped\n")
    r = run("exec", "-d", sbx, "sleep", "300")
    assert r.returncode == 0 and r.stdout.strip().isdigit(), r.stderr
    src = tmp_path / "in.txt"
    src.write_text("copied\n")
    assert run("cp", str(src), f"{sbx}:/work/in.txt").returncode == 0
    assert run("cp", f"{sbx}:/work/in.txt", str(tmp_path / "out.txt")).returncode == 0
    assert (tmp_path / "out.txt").read_text() == "copied\n"
    r = run("checkpoint", "create", sbx, "v1")
    assert r.returncode == 0, r.stderr
    snap = r.stdout.strip()
    assert snap in run("checkpoint", "ls", sbx).stdout
    r = run("pause", sbx)
    assert r.returncode == 0 and "paused in" in r.stderr, r.stderr
    assert "paused" in run("ps").stdout
    r = run("resume", sbx)
    assert r.returncode == 0 and "resumed in" in r.stderr, r.stderr
    assert json.loads(run("inspect", sbx).stdout)["state"] == "running"
    r = run("restore", snap)
    assert r.returncode == 0, r.stderr
    copy = r.stdout.strip()
    assert run("exec", copy, "cat", "/work/in.txt").stdout == "copied\n"
    assert run("rm", sbx, copy).returncode == 0
    listed = json.loads(run("ps", "-a", "--format", "json").stdout)
    assert {r["id"]: r["state"] for r in listed}[sbx] == "killed"
    assert sbx not in run("ps", "-q").stdout  # killed: only with -a
    # what only this machine's sandboxes have is refused, in one line
    r = run("run", "--name", "x", "base")
    assert r.returncode == 2 and "not with --server" in r.stderr
    r = subprocess.run([*TORPOR, "pause", sbx], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "acts on the sandboxes of a torpor server" in r.stderr
    r = run("exec", "sbx-nope", "true")
    assert r.returncode == 1 and "no such sandbox" in r.stderr
