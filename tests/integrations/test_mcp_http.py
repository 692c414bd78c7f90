"""/mcp in a real `torpor serve` (a subprocess), driven by the mcp SDK's own streamable
HTTP client: the API's tokens and tenants hold (no token 401, no `exec` scope 403, another
tenant's session or sandbox is not reachable), the tools act on a session's sandbox, and
the sessions' copies are removed when the server stops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.integrations.test_mcp_stdio import (
    ROOT,
    call,
    cli_engine,
    env_of,
    error,
    server,
)
from torpor.api.tokens import TokenStore
from torpor.runtime.core import Runtime
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore

pytestmark = [pytest.mark.runsc, pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root and runsc (run scripts/setup.sh)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sessions(home: Path, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """Sessions s-a (tenant a) and s-b (tenant b), each after one turn that wrote a file;
    tokens a (exec), b (exec), a-drive (drive only)."""
    db = f"sqlite:///{home / 'context.db'}"
    rt = Runtime(db=db, store=f"file://{home / 'snapshots'}", home=home,
                 engine=cli_engine(home))
    for tenant in ("a", "b"):
        script = tmp_path / f"{tenant}.jsonl"
        script.write_text(json.dumps({"tool_calls": [{"name": "shell", "arguments": {
            "command": f"echo tenant-{tenant} > /work/who.txt"}}]}) + "\n"
            + json.dumps({"text": "done"}) + "\n")
        s = rt.create_session(model=f"script:{script}", id=f"s-{tenant}", tenant=tenant)
        assert s.send("go").state == "waiting"
    store = TokenStore(rt.db)
    tokens = {"a": store.create("a", ["exec", "sandboxes"])[0],
              "b": store.create("b", ["exec", "sandboxes"])[0],
              "a-drive": store.create("a", ["drive"])[0],
              "a-sbx": store.create("a", ["sandboxes"])[0]}
    rt.close()
    return db, tokens


def client(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                              timeout=httpx2.Timeout(30, read=120))
    return Client(streamable_http_client(url, http_client=http))


def test_mcp_over_http_in_torpor_serve(home: Path, tmp_path: Path):
    db, tokens = sessions(home, tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "torpor.cli.main", "serve", "--db", db, "--port", str(port),
         "--workers", "0", "--standby", "0"],
        env={**os.environ, **env_of(home)}, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.2)

        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        assert httpx.post(url, json=body).status_code == 401
        r = httpx.post(url, json=body, headers={"Authorization": "Bearer tpk_x_bad"})
        assert r.status_code == 401
        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {tokens['a-drive']}"})
        assert r.status_code == 403 and "exec" in r.json()["message"]

        made: dict[str, Any] = {}
        from torpor.api.client import Client as TorporClient

        api = TorporClient(f"http://127.0.0.1:{port}", tokens["a"], timeout=120)
        box = api.sandboxes.create("base")
        made["box"] = box.id

        async def resource_as_a() -> None:
            async with client(url, tokens["a-sbx"]) as c:
                await call(c, "write_file", sandbox=box.id, path="/work/r.txt", content="r1")
                out = await call(c, "run_command", sandbox=box.id, command="cat /work/r.txt")
                assert out["stdout"] == "r1"
                snap = (await call(c, "snapshot", sandbox=box.id, name="first"))["snapshot"]
                await call(c, "write_file", sandbox=box.id, path="/work/r.txt", content="r2")
                back = (await call(c, "restore", sandbox=box.id, snapshot=snap))["sandbox"]
                fork = (await call(c, "fork", sandbox=box.id))["sandbox"]
                assert back.startswith("sbx-") and fork.startswith("sbx-")
                for sid, want in ((back, "r1"), (fork, "r2")):
                    got = await call(c, "read_file", sandbox=sid, path="/work/r.txt")
                    assert got["content"] == want, sid
                # the resource's own listing has them, as the tenant's
                assert {back, fork} <= {s.id for s in api.sandboxes.list()}
                assert "exec" in await error(c, "read_file", sandbox="session:s-a",
                                             path="/work/who.txt")

        async def remote_stdio() -> None:
            """torpor mcp --sandbox ID --server URL: the same sandbox over stdio."""
            args = ["--sandbox", box.id, "--server", f"http://127.0.0.1:{port}"]
            async with Client(server(home, *args, "--token", tokens["a-sbx"])) as c:
                got = await call(c, "read_file", path="/work/r.txt")
                assert got["content"] == "r2"
                fork = (await call(c, "fork"))["sandbox"]
                out = await call(c, "run_command", sandbox=fork, command="cat /work/r.txt")
                assert out["stdout"] == "r2"
            async with Client(server(home, *args, "--token", tokens["b"])) as c:
                assert "no such sandbox" in await error(c, "run_command", command="true")

        async def as_a() -> None:
            async with client(url, tokens["a"]) as c:
                tools = {t.name for t in (await c.list_tools()).tools}
                assert {"run_command", "read_file", "snapshot", "fork"} <= tools
                got = await call(c, "read_file", sandbox="session:s-a", path="/work/who.txt")
                assert got["content"] == "tenant-a\n"
                await call(c, "write_file", sandbox="s-a", path="/work/x", content="kept")
                out = await call(c, "run_command", sandbox="session:s-a", command="cat /work/x")
                assert out["stdout"] == "kept"  # the same copy across requests
                made["fork"] = (await call(c, "fork", sandbox="s-a"))["sandbox"]
                out = await call(c, "run_command", sandbox=made["fork"], command="cat /work/x")
                assert out["stdout"] == "kept"
                assert "no such session" in await error(c, "read_file", sandbox="session:s-b",
                                                        path="/work/who.txt")
                assert "name a sandbox" in await error(c, "run_command", command="true")

        async def as_b() -> None:
            async with client(url, tokens["b"]) as c:
                got = await call(c, "read_file", sandbox="session:s-b", path="/work/who.txt")
                assert got["content"] == "tenant-b\n"
                for name in ("session:s-a", "s-a"):
                    assert "no such session" in await error(c, "run_command", sandbox=name,
                                                            command="true")
                assert "no such" in await error(c, "run_command", sandbox=made["fork"],
                                                command="true")
                assert "no such sandbox" in await error(c, "run_command", sandbox=made["box"],
                                                        command="true")

        asyncio.run(resource_as_a())
        asyncio.run(remote_stdio())
        asyncio.run(as_a())
        asyncio.run(as_b())
        for sb in api.sandboxes.list():
            sb.kill()
        api.close()
        copies = [i.name for i in GVisorEngine(home, images=ImageStore()).list()
                  if i.name.startswith("mcp-")]
        assert sorted(n[:8] for n in copies) == ["mcp-s-a-", "mcp-s-b-"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    eng = GVisorEngine(home, images=ImageStore())
    left = [i.name for i in eng.list(all=True)]
    assert not [n for n in left if n.startswith("mcp-")], left  # the copies are gone
    eng.remove(made["fork"], force=True)
