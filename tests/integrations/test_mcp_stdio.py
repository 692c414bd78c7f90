"""`torpor mcp --sandbox` and `--session` over stdio, driven by the mcp SDK's own client
(it spawns the command): the tools act on a real runsc sandbox, snapshots restore and fork
with the processes' memory, errors come back as tool errors."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from torpor.runtime.checkpoints import SnapshotCheckpointStorage
from torpor.sandbox import Sandbox
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore
from torpor.snapshots import open_store

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"run_command", "read_file", "write_file", "list_files", "snapshot", "restore", "fork"}

pytestmark = [pytest.mark.runsc, pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runsc") is None,
    reason="needs root and runsc (run scripts/setup.sh)")]


def env_of(home: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "TORPOR_HOME": str(home),
            "TORPOR_IMAGES": str(ImageStore().root),
            "TORPOR_SNAPSHOTS": f"file://{home / 'snapshots'}",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def cli_engine(home: Path) -> GVisorEngine:
    """The engine `torpor mcp` opens for this home (checkpoints in its snapshot store)."""
    store = open_store(f"file://{home / 'snapshots'}")
    return GVisorEngine(home, images=ImageStore(),
                        checkpoints=SnapshotCheckpointStorage(store, home))


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content
    return r.structured_content or json.loads(r.content[0].text)


async def error(client: Client, tool: str, **args: Any) -> str:
    r = await client.call_tool(tool, args)
    assert r.is_error
    return r.content[0].text


def server(home: Path, *args: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable,
                                 args=["-m", "torpor.cli.main", "mcp", *args],
                                 env=env_of(home), cwd=str(ROOT))


def test_stdio_tools_on_a_sandbox(home: Path):
    eng = cli_engine(home)
    sb = Sandbox.create(image="base", engine=eng, name="dev")
    made: list[str] = []
    try:
        # a process whose state lives only in memory: a shell that remembers a counter. It
        # opens the FIFO once, read-write: a loop of `read l < /tmp/in` (an open per line)
        # can open it while the last writer has written but not yet closed, read EOF and
        # end (a FIFO's race, on Linux too; seen here under load, before a fork).
        sb.exec("mkfifo /tmp/in; (exec 3<>/tmp/in; n=0; while read l <&3; do n=$((n+1)); "
                "echo $n > /tmp/count; done) >/dev/null 2>&1 &")
        # one line to it, then (up to 10 s) the count it led to
        bump = ("b=$(cat /tmp/count 2>/dev/null); echo 1 > /tmp/in; i=0; "
                "while [ \"$(cat /tmp/count 2>/dev/null)\" = \"$b\" ] && [ $i -lt 200 ]; "
                "do sleep 0.05; i=$((i+1)); done; cat /tmp/count")

        async def session() -> None:
            async with Client(server(home, "--sandbox", "dev")) as c:
                assert {t.name for t in (await c.list_tools()).tools} >= TOOLS
                ro = {t.name: t.annotations.read_only_hint if t.annotations else None
                      for t in (await c.list_tools()).tools}
                assert ro["read_file"] and ro["list_files"] and not ro["write_file"]

                w = await call(c, "write_file", path="/work/notes/a.txt", content="hello\n")
                assert w == {"path": "/work/notes/a.txt", "bytes": 6}
                r = await call(c, "read_file", path="/work/notes/a.txt")
                assert (r["content"], r["encoding"], r["size"]) == ("hello\n", "utf-8", 6)
                await call(c, "write_file", path="/work/bin", content="AAEC/w==",
                           encoding="base64")
                b = await call(c, "read_file", path="/work/bin")
                assert (b["content"], b["encoding"]) == ("AAEC/w==", "base64")
                ls = await call(c, "list_files", path="/work/notes")
                assert [(e["name"], e["type"]) for e in ls["entries"]] == [("a.txt", "file")]

                x = await call(c, "run_command", command=f"{bump}; echo oops >&2; exit 3")
                assert (x["exit_code"], x["stdout"], x["stderr"]) == (3, "1\n", "oops\n")

                snap = (await call(c, "snapshot", name="one"))["snapshot"]
                await call(c, "run_command", command=bump)  # count: 2
                fork = (await call(c, "fork"))["sandbox"]
                back = (await call(c, "restore", snapshot=snap))["sandbox"]
                made.extend([fork, back])
                # each copy has the counter process, with its count as of its snapshot
                for sid, want in ((fork, "3"), (back, "2"), ("dev", "3")):
                    out = await call(c, "run_command", sandbox=sid, command=bump)
                    assert out["stdout"].strip() == want, sid

                assert "a.txt" in (await call(c, "read_file", sandbox=back,
                                              path="/work/notes/a.txt"))["path"]
                msg = await error(c, "read_file", path="/no/such/file")
                assert "/no/such/file" in msg
                assert "no-such-sandbox" in await error(c, "run_command", command="true",
                                                        sandbox="no-such-sandbox")

        asyncio.run(session())
    finally:
        for sid in made:
            Sandbox(sid, engine=eng).kill()
        sb.kill()


def test_stdio_refuses_a_bad_command_line(home: Path):
    import subprocess

    both = subprocess.run([sys.executable, "-m", "torpor.cli.main", "mcp"],
                          capture_output=True, text=True, env=env_of(home), cwd=ROOT,
                          timeout=60)
    assert both.returncode != 0 and "one of --sandbox and --session" in both.stderr


def test_stdio_tools_on_a_sessions_sandbox(home: Path, tmp_path: Path):
    from torpor.runtime.core import Runtime

    script = tmp_path / "turns.jsonl"
    script.write_text(json.dumps({"tool_calls": [{"name": "shell", "arguments": {
        "command": "echo from-the-turn > /work/turn.txt"}}]}) + "\n"
        + json.dumps({"text": "done"}) + "\n")
    db = f"sqlite:///{home / 'context.db'}"
    rt = Runtime(db=db, store=f"file://{home / 'snapshots'}", home=home,
                 engine=cli_engine(home))
    s = rt.create_session(model=f"script:{script}", id="s1")
    assert s.send("go").state == "waiting"  # a snapshot was taken at the wait point
    rt.close()

    async def session() -> None:
        async with Client(server(home, "--session", "s1", "--db", db)) as c:
            r = await call(c, "read_file", path="/work/turn.txt")
            assert r["content"] == "from-the-turn\n"
            await call(c, "write_file", path="/work/mcp.txt", content="x")
            out = await call(c, "run_command", command="cat /work/mcp.txt /work/turn.txt")
            assert out["stdout"] == "xfrom-the-turn\n"  # the same copy, call after call
            assert "session s1" in (await call(c, "snapshot"))["of"]
            fork = (await call(c, "fork"))["sandbox"]
            got = await call(c, "read_file", sandbox=fork, path="/work/mcp.txt")
            assert got["content"] == "x"
            GVisorEngine(home, images=ImageStore()).remove(fork, force=True)

    asyncio.run(session())
    # the copy was removed when the server ended; the session's own snapshot is untouched
    left = [i.name for i in GVisorEngine(home, images=ImageStore()).list(all=True)]
    assert not [n for n in left if n.startswith("mcp-s1-")], left
    missing = subprocess_run(home, "mcp", "--session", "nope", "--db", db)
    assert missing.returncode != 0 and "nope" in missing.stderr


def subprocess_run(home: Path, *args: str) -> Any:
    import subprocess

    return subprocess.run([sys.executable, "-m", "torpor.cli.main", *args],
                          capture_output=True, text=True, env=env_of(home), cwd=ROOT,
                          timeout=120)
