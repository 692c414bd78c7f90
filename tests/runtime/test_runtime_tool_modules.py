"""Custom tools in every worker: a session created with a tool from a tool module in one
process is run by `torpor worker` processes that import the module (--tools,
TORPOR_TOOLS); a worker without it fails the turn once, saying which tool and how to load
it, and the next message to a worker that has it goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runtime.test_runtime_sessions import markers, results
from torpor.agent.tools import TOOLS_ENV
from torpor.runtime.core import InvalidSession, Runtime, Worker
from torpor.sandbox.images import ImageStore

MODULE = "torpor_test_stamps"
SOURCE = '''"""A tool module for the tests: one host-side tool that acts on the sandbox."""
import os

from torpor.agent.tools import ToolRegistry, Workspace

TOOLS = ToolRegistry([])


@TOOLS.register
def stamp(workspace: Workspace, label: str) -> str:
    """Append a label to /work/stamps in the sandbox; say which process ran the tool."""
    script = 'echo "$1" >> /work/stamps && cat /work/stamps'
    res = workspace.exec(["/bin/sh", "-c", script, "sh", label])
    return f"pid {os.getpid()}: " + res.stdout.decode().strip().replace("\\n", ",")
'''


def stamp(label: str) -> dict[str, object]:
    return {"name": "stamp", "arguments": {"label": label}}


@pytest.fixture()
def tool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tool module, in a directory on this process's sys.path (and, through
    PYTHONPATH, on the workers')."""
    root = tmp_path / "toolmods"
    root.mkdir()
    (root / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    return root


def worker(runtime: Runtime, tool_dir: Path, *args: str, **env: str) -> subprocess.Popen:
    """`torpor worker ARGS` on the test runtime's database, store and home; the module's
    directory is on its PYTHONPATH, TORPOR_TOOLS only if given."""
    base = {k: v for k, v in os.environ.items() if k != TOOLS_ENV}
    base.update(TORPOR_HOME=str(runtime.home), TORPOR_LOG=runtime.db_url,
                TORPOR_SNAPSHOTS=f"file://{runtime.home / 'snapshots'}",
                TORPOR_IMAGES=str(ImageStore().root), PYTHONPATH=str(tool_dir), **env)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "torpor.cli.main", "worker", *args],
                            env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err.decode()
    return proc


def test_a_custom_tool_runs_in_worker_processes_that_load_its_module(
    runtime: Runtime, script, tool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = script([
        {"text": "stamping", "tool_calls": [stamp("one")]}, {"text": "stamped once"},
        {"text": "again", "tool_calls": [stamp("two")]}, {"text": "stamped twice"},
    ])  # fmt: skip
    # A runtime without the module refuses the session at creation, saying how to load it.
    with pytest.raises(InvalidSession, match="unknown tool 'stamp'.*--tools pkg.module"):
        runtime.create_session(model=model, tools=["shell", "stamp"])
    # Runtime() without tools= loads TORPOR_TOOLS, as the workers do.
    monkeypatch.setenv(TOOLS_ENV, MODULE)
    front = Runtime(db=runtime.db_url, store=runtime.store_url, home=runtime.home,
                    engine=runtime.engine)  # fmt: skip
    try:
        sid = front.create_session(model=model, tools=["shell", "stamp"]).id
    finally:
        front.close(drain_pools=False)
    s = runtime.get_session(sid)

    # 1. A worker without the module: the turn fails once, naming the tool and the fix.
    s.post("go")
    worker(runtime, tool_dir, "--session", s.id)
    row = s.info()
    assert row.state == "failed", row
    error = row.error or ""
    assert error.startswith("UnknownTool: unknown tool 'stamp'; registered tools: shell,")
    assert "--tools pkg.module" in error and "TORPOR_TOOLS=pkg.module" in error
    assert "torpor.tools entry point" in error and "KeyError" not in error
    entries = s.log()
    assert [m["error"] for m in markers(entries, "error")] == [error]
    assert markers(entries, "sandbox_started") == []  # found out before any sandbox
    with pytest.raises(Exception, match="no such sandbox|not found|No such"):
        runtime.engine.inspect(f"s-{s.id}")
    n = len(entries)
    assert Worker(runtime).run_once() is None  # no worker takes it again: no loop
    time.sleep(0.3)
    assert len(s.log()) == n

    # 2. The user's retry, taken by a worker started with --tools: the tool runs there.
    s.post("go again")
    proc = worker(runtime, tool_dir, "--session", s.id, "--tools", MODULE)
    row = s.info()
    assert row.state == "waiting" and row.error is None, row
    assert results(s.log())[-1] == f"pid {proc.pid}: one"
    assert [e.content for e in s.log() if e.kind == "message" and e.role == "assistant"][-1] == (
        "stamped once"
    )

    # 3. The next message, to a worker that has TORPOR_TOOLS: the sandbox went on too.
    s.post("once more")
    proc = worker(runtime, tool_dir, "--once", **{TOOLS_ENV: MODULE})
    assert s.info().state == "waiting"
    assert results(s.log())[-1] == f"pid {proc.pid}: one,two"
    assert len(markers(s.log(), "error")) == 1


def test_torpor_serve_with_tools_accepts_and_runs_the_tool(
    runtime: Runtime, script, tool_dir: Path, tmp_path: Path
) -> None:
    """`torpor serve --tools MODULE`: the API accepts a session naming the module's tool
    (without the option: 422, saying how to load it) and its worker threads run it."""
    import httpx

    from tests.api.conftest import free_port

    model = script([{"text": "stamping", "tool_calls": [stamp("served")]}, {"text": "done"}])
    env = {k: v for k, v in os.environ.items() if k != TOOLS_ENV}
    env.update(TORPOR_HOME=str(runtime.home), TORPOR_LOG=runtime.db_url,
               TORPOR_SNAPSHOTS=f"file://{runtime.home / 'snapshots'}",
               TORPOR_IMAGES=str(ImageStore().root), PYTHONPATH=str(tool_dir))  # fmt: skip

    def serve(*args: str) -> tuple[subprocess.Popen, str]:
        port = free_port()
        argv = [sys.executable, "-m", "torpor.cli.main", "serve", "--port", str(port),
                "--standby", "0", "--scripts", str(tmp_path), *args]  # fmt: skip
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                return p, url
            except httpx.TransportError:
                assert time.time() < deadline and p.poll() is None, p.stderr
                time.sleep(0.1)

    body = {"model": model, "tools": ["stamp"]}
    p, url = serve("--workers", "0")
    try:
        r = httpx.post(f"{url}/v1/sessions", json=body, timeout=30)
        assert r.status_code == 422, r.text
        assert "unknown tool 'stamp'" in r.text and "--tools pkg.module" in r.text
    finally:
        p.terminate()
        p.wait(30)
    p, url = serve("--tools", MODULE)
    try:
        r = httpx.post(f"{url}/v1/sessions", json=body, timeout=30)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        r = httpx.post(f"{url}/v1/sessions/{sid}/messages", json={"text": "go"}, timeout=30)
        assert r.status_code == 202, r.text
        deadline = time.time() + 120
        while runtime.db.get(sid).state != "waiting" or not results(runtime.log.read(sid)):
            assert time.time() < deadline and p.poll() is None, runtime.db.get(sid)
            time.sleep(0.1)
        assert results(runtime.log.read(sid)) == [f"pid {p.pid}: served"]
    finally:
        p.terminate()
        p.wait(30)
