"""TorporSandboxClient with the real Agents SDK (0.24) and a real `torpor serve`: a sandbox
agent's run starts a process that keeps a counter in memory, stops at an approval, its
RunState is serialized and its process killed (kill -9); a new process resumes the run
from the state, and the sandbox it gets back still runs that process, with its count."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.fakellm import RESPONSES_PATH, FakeLLM
from tests.api.test_api_sandbox_serve import Serve
from torpor.api.client import Client
from torpor.api.tokens import TokenStore
from torpor.runtime.db import RuntimeDB

ROOT = Path(__file__).resolve().parents[2]
# a process that keeps a random token and a count in its memory, and writes them out
COUNTER = ("(t=$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); n=0; while :; do n=$((n+1)); "
           "echo \"$t $n\" > /tmp/beat.t; mv /tmp/beat.t /tmp/beat; sleep 0.1; done) "
           ">/dev/null 2>&1 & sleep 0.5; echo \"beat $(cat /tmp/beat)\"")
LOOK = "a=$(cat /tmp/beat); sleep 1; b=$(cat /tmp/beat); echo \"beat $a\"; echo \"beat $b\""


def beats(output: str) -> list[tuple[str, int]]:
    return [(t, int(n)) for t, n in re.findall(r"beat (\d+) (\d+)", output)]


pytestmark = [pytest.mark.runsc, pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root and runsc (run scripts/setup.sh)")]


def outputs(fake: FakeLLM) -> dict[str, str]:
    """call_id -> the output the SDK sent back for it (every request's input)."""
    out = {}
    for body in fake.bodies(RESPONSES_PATH):
        for item in body["input"]:
            if item.get("type") == "function_call_output":
                out[item["call_id"]] = str(item["output"])
    return out


@pytest.mark.parametrize("on_exit", ["pause", "keep"])
def test_a_killed_run_resumes_with_its_sandbox_in_memory(home: Path, tmp_path: Path,
                                                         on_exit: str):
    db = f"sqlite:///{home / 'context.db'}"
    rdb = RuntimeDB(db)
    token = TokenStore(rdb).create("acme", ["sandboxes"])[0]
    rdb.close()
    server = Serve(home, db, tmp_path / "serve.log")
    state = tmp_path / "state.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    with FakeLLM() as fake:
        fake.reply(tool_calls=[{"name": "exec_command", "id": "c1",
                                "arguments": {"cmd": COUNTER}}])
        fake.reply(tool_calls=[{"name": "deploy", "id": "c2", "arguments": {}}])
        args = [fake.openai_url, f"http://127.0.0.1:{server.port}", token, str(state), on_exit]
        first = subprocess.Popen([sys.executable, "-m", "tests.integrations.oa_sandbox_app",
                                  "start", *args], cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert first.stdout is not None and first.stdout.readline().strip() == "ready", \
                first.stderr.read() if first.stderr else ""  # fmt: skip
            [(tok, n1)] = beats(outputs(fake)["c1"])
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        saved = json.loads(state.read_text())
        sid = json.dumps(saved).split('"sandbox_id": "')[1].split('"')[0]
        with Client(f"http://127.0.0.1:{server.port}", token) as c:
            assert c.sandboxes.get(sid).state == ("paused" if on_exit == "pause" else "running")

        fake.reply(tool_calls=[{"name": "exec_command", "id": "c3",
                                "arguments": {"cmd": LOOK}}])
        fake.reply(text="done")
        second = subprocess.run([sys.executable, "-m", "tests.integrations.oa_sandbox_app",
                                 "resume", *args], cwd=ROOT, env=env, text=True,
                                capture_output=True, timeout=300)
        assert second.returncode == 0, second.stderr[-4000:]
        assert second.stdout.strip().endswith("done")
        got = outputs(fake)
        assert got["c2"] == "deployed"
        # the process survived, with its memory: the same token, its count going on
        [(t2, n2), (t3, n3)] = beats(got["c3"])
        assert t2 == t3 == tok and n1 < n2 < n3, got["c3"]
    server.stop(signal.SIGTERM)


def test_a_killed_sandbox_comes_back_from_its_native_snapshot(home: Path, tmp_path: Path):
    """on_exit="kill" with a snapshot spec: stop() stores only a reference to a torpor
    snapshot (processes, memory, files); resume finds the sandbox gone and the SDK hydrates a
    new one from that reference: the process runs on, with its token."""
    import asyncio

    from agents.sandbox import LocalSnapshotSpec

    from torpor.integrations.openai_agents import (
        TorporSandboxClient,
        TorporSandboxClientOptions,
    )
    from torpor.integrations.openai_agents.sandbox import decode_ref

    server = Serve(home, f"sqlite:///{home / 'context.db'}", tmp_path / "serve.log")
    url = f"http://127.0.0.1:{server.port}"
    spec = LocalSnapshotSpec(base_path=tmp_path / "snapshots")

    async def run() -> None:
        first = TorporSandboxClient(url)
        s = await first.create(snapshot=spec, options=TorporSandboxClientOptions(on_exit="kill"))
        await s.start()
        [(tok, n1)] = beats((await s.exec(COUNTER, shell=True)).stdout.decode())
        await s.stop()
        await s.shutdown()
        old = s.state.sandbox_id
        assert first.client.sandboxes.get(old).state == "killed"
        stored = list((tmp_path / "snapshots").rglob("*"))
        ref = [decode_ref(p.read_bytes()) for p in stored if p.is_file()]
        assert any(ref), stored  # the SDK keeps a reference, not a tar of the workspace

        second = TorporSandboxClient(url)
        state = second.deserialize_session_state(first.serialize_session_state(s.state))
        again = await second.resume(state)
        await again.start()
        assert again.state.sandbox_id != old
        [(t2, n2), (t3, n3)] = beats((await again.exec(LOOK, shell=True)).stdout.decode())
        assert t2 == t3 == tok and n1 < n2 < n3
        await again.shutdown()

    try:
        asyncio.run(run())
    finally:
        server.stop(signal.SIGTERM)
