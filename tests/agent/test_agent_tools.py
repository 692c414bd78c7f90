"""The agent's tools in a real gVisor sandbox: what the built-in tools do there (commands,
timeouts, files keeping their mode, listings, processes, a process surviving
checkpoint/restore) and a user tool running its commands inside it. Their schemas,
argument checks, output caps and error messages are tested without a sandbox in
test_agent_tools_logic.py."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from torpor.agent.tools import ToolRegistry, Workspace
from torpor.agent.types import ToolResult
from torpor.runtime.workspace import SandboxWorkspace
from torpor.sandbox.engine import SandboxSpec
from torpor.sandbox.factory import open_engine
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore

NEEDS_RUNSC = True  # tests/agent/conftest.py: skipped without root and runsc


@pytest.fixture(scope="session")
def tools_engine() -> Iterator[GVisorEngine]:
    home = Path(tempfile.mkdtemp(prefix="torpor-test-tools-"))
    # open_engine runs torpor's runsc self-test (a few seconds): once per run.
    engine = open_engine(home, images=ImageStore())
    yield engine
    for info in engine.list(all=True):
        with contextlib.suppress(Exception):
            engine.remove(info.id, force=True)
    for d in (home / "sandboxes").glob("*"):
        subprocess.run(
            ["runsc", f"--root={home / 'runsc'}", "delete", "-force", d.name], capture_output=True
        )
    shutil.rmtree(home, ignore_errors=True)


def _sandbox(engine: GVisorEngine) -> Iterator[SandboxWorkspace]:
    name = f"tools-{secrets.token_hex(4)}"
    engine.run(SandboxSpec(image="base"), name=name)
    try:
        yield SandboxWorkspace(engine, name)
    finally:
        with contextlib.suppress(Exception):
            engine.remove(name, force=True)


@pytest.fixture(scope="module")
def ws(tools_engine: GVisorEngine) -> Iterator[SandboxWorkspace]:
    yield from _sandbox(tools_engine)


@pytest.fixture(scope="module")
def reg() -> ToolRegistry:
    return ToolRegistry()


def sh(ws: SandboxWorkspace, command: str) -> str:
    res = ws.exec(["/bin/sh", "-c", command])
    assert res.exit_code == 0, res.stderr
    return res.stdout.decode()


# ------------------------------------------------------------------------------ shell


def test_shell_output_and_exit_code(reg: ToolRegistry, ws: SandboxWorkspace) -> None:
    r = reg.run("shell", {"command": "echo out; echo err >&2; exit 3"}, ws)
    assert not r.is_error
    assert r.content == "exit code 3\nstdout:\nout\n\nstderr:\nerr\n"
    assert r.meta["exit_code"] == 3
    assert r.meta["truncated_bytes"] == 0 and r.meta["timed_out"] is False
    assert r.meta["ms"] > 0

    r = reg.run("shell", {"command": "pwd", "cwd": "/tmp"}, ws)
    assert r.meta["exit_code"] == 0 and "stdout:\n/tmp\n" in r.content

    r = reg.run("shell", {"command": "true"}, ws)
    assert r.content == "exit code 0\n(no output)"

    r = reg.run("shell", {"command": "kill -9 $$"}, ws)
    assert r.meta["exit_code"] == 137 and "killed by signal SIGKILL" in r.content


def test_shell_timeout_kills_the_command(reg: ToolRegistry, ws: SandboxWorkspace) -> None:
    start = time.monotonic()
    r = reg.run("shell", {"command": "echo before; sleep 47 & sleep 48", "timeout": 1}, ws)
    assert time.monotonic() - start < 10
    assert r.is_error and r.meta["timed_out"] is True
    assert r.content.startswith("command timed out after 1 s and was killed.")
    assert "start_process" in r.content
    assert "stdout:\nbefore\n" in r.content  # what it printed before the deadline
    # the command and its background job are gone
    assert "sleep 4" not in sh(ws, "ps -eo args")


# ------------------------------------------------------------------------------ files


def test_write_then_read(reg: ToolRegistry, ws: SandboxWorkspace) -> None:
    text = "first line\nzweite Zeile ✓\nthird\n"
    r = reg.run("write_file", {"path": "/tmp/w/deep/er/a.txt", "content": text}, ws)
    assert not r.is_error, r.content
    assert r.meta["bytes"] == len(text.encode())
    assert sh(ws, "cat /tmp/w/deep/er/a.txt") == text

    r = reg.run("read_file", {"path": "/tmp/w/deep/er/a.txt"}, ws)
    assert not r.is_error and r.content == text and r.meta["size"] == len(text.encode())

    r = reg.run("read_file", {"path": "/tmp/w/deep/er/a.txt", "offset": 2, "limit": 1}, ws)
    assert r.content == "zweite Zeile ✓\n[lines 2-2 of 3]"
    assert r.meta["first_line"] == 2 and r.meta["last_line"] == 2

    # rewriting is idempotent and keeps the file's mode
    sh(ws, "chmod 755 /tmp/w/deep/er/a.txt")
    for _ in range(2):
        assert not reg.run(
            "write_file", {"path": "/tmp/w/deep/er/a.txt", "content": "x"}, ws
        ).is_error
    assert sh(ws, "stat -c %a /tmp/w/deep/er/a.txt; cat /tmp/w/deep/er/a.txt") == "755\nx"

    assert not reg.run("write_file", {"path": "/tmp/w/empty", "content": ""}, ws).is_error
    assert reg.run("read_file", {"path": "/tmp/w/empty"}, ws).content == "(empty file)"

    # reading through a symlink works
    sh(ws, "ln -sf /tmp/w/deep/er/a.txt /tmp/w/link")
    assert reg.run("read_file", {"path": "/tmp/w/link"}, ws).content == "x"


def test_read_file_refuses_a_directory_without_reading_it(reg: ToolRegistry,
                                                         ws: SandboxWorkspace) -> None:
    # a directory with more data in it than a pipe holds: refused at once, never copied
    sh(ws, "mkdir -p /tmp/bigdir && head -c 1000000 /dev/zero > /tmp/bigdir/f")
    t0 = time.monotonic()
    r = reg.run("read_file", {"path": "/tmp/bigdir"}, ws)
    assert r.is_error and r.content == "read_file: /tmp/bigdir is a directory: use list_dir"
    assert time.monotonic() - t0 < 10
    r = reg.run("read_file", {"path": "/tmp/bigdir/f"}, ws)
    assert r.content == (
        "read_file: /tmp/bigdir/f is a binary file (1000000 bytes); read_file reads text"
    )


def test_edit_file(reg: ToolRegistry, ws: SandboxWorkspace) -> None:
    path = "/tmp/edit/app.py"
    reg.run("write_file", {"path": path, "content": "x = 1\ny = 1\nprint(x)\n"}, ws)
    sh(ws, f"chmod 700 {path}")

    r = reg.run("edit_file", {"path": path, "old": "print(x)", "new": "print(x + y)"}, ws)
    assert not r.is_error and r.content == f"replaced 1 occurrence in {path}"
    assert r.meta["replacements"] == 1
    assert sh(ws, f"cat {path}; stat -c %a {path}") == "x = 1\ny = 1\nprint(x + y)\n700\n"

    r = reg.run("edit_file", {"path": path, "old": " = 1", "new": " = 2"}, ws)
    assert r.is_error and "found 2 times" in r.content  # (its words: the logic tests')
    assert sh(ws, f"cat {path}") == "x = 1\ny = 1\nprint(x + y)\n"  # untouched

    r = reg.run("edit_file", {"path": path, "old": " = 1", "new": " = 2", "count": 2}, ws)
    assert not r.is_error and r.content == f"replaced 2 occurrences in {path}"
    assert sh(ws, f"cat {path}; stat -c %a {path}") == "x = 2\ny = 2\nprint(x + y)\n700\n"


def test_list_dir(reg: ToolRegistry, ws: SandboxWorkspace) -> None:
    sh(
        ws,
        "mkdir -p /tmp/ls/src/pkg && printf 12345 > /tmp/ls/README && "
        "printf abc > /tmp/ls/src/pkg/mod.py && ln -s README /tmp/ls/link",
    )
    r = reg.run("list_dir", {"path": "/tmp/ls"}, ws)
    assert not r.is_error
    lines = r.content.splitlines()
    assert lines[0] == "/tmp/ls: 3 entries (depth 1; type, size in bytes, name)"
    assert lines[1].split() == ["file", "5", "README"]
    assert lines[2].split() == ["link", "-", "link", "->", "README"]
    assert lines[3].split() == ["dir", "-", "src/"]
    assert r.meta["entries"] == 3

    r = reg.run("list_dir", {"path": "/tmp/ls", "depth": 3}, ws)
    assert r.meta["entries"] == 5
    assert ["file", "3", "src/pkg/mod.py"] in [line.split() for line in r.content.splitlines()]

    r = reg.run("list_dir", {"path": "/tmp/ls/README"}, ws)
    assert r.is_error and r.content == "list_dir: /tmp/ls/README is not a directory"
    r = reg.run("list_dir", {"path": "/tmp/nope"}, ws)
    assert r.is_error and r.content == "list_dir: /tmp/nope: no such file or directory"


# -------------------------------------------------------------------------- processes

SERVER = "cd /tmp/site && exec python3 -u -m http.server --bind 127.0.0.1 {port}"
FETCH = (
    'python3 -c "import urllib.request as u; '
    "print(u.urlopen('http://127.0.0.1:{port}/hello.txt', timeout=5).read().decode())\""
)


def _wait_serving(reg: ToolRegistry, ws: Workspace, pid: int) -> ToolResult:
    deadline = time.monotonic() + 15
    while True:
        r = reg.run("process_output", {"id": pid}, ws)
        if "Serving HTTP" in r.content or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_processes(reg: ToolRegistry, ws: SandboxWorkspace) -> None:
    reg.run("write_file", {"path": "/tmp/site/hello.txt", "content": "hello from the sandbox"}, ws)
    r = reg.run("start_process", {"command": SERVER.format(port=8601)}, ws)
    assert not r.is_error, r.content
    pid = r.meta["process_id"]
    assert isinstance(pid, int) and r.content.startswith(f"started process {pid}: ")

    r = _wait_serving(reg, ws, pid)
    assert r.content.startswith(f"process {pid}: running\ncommand: /bin/sh -c cd /tmp/site")
    assert "Serving HTTP on 127.0.0.1 port 8601" in r.content
    assert r.meta["state"] == "running" and r.meta["exit_code"] is None

    r = reg.run("shell", {"command": FETCH.format(port=8601)}, ws)
    assert r.meta["exit_code"] == 0 and "hello from the sandbox" in r.content
    r = reg.run("process_output", {"id": pid}, ws)
    assert '"GET /hello.txt HTTP/1.1" 200' in r.content  # http.server logs to stderr

    r = reg.run("process_output", {"id": pid, "tail_bytes": 10}, ws)
    assert "(last 10 of " in r.content

    r = reg.run("stop_process", {"id": pid}, ws)
    assert not r.is_error, r.content
    assert r.meta["state"] == "exited"
    assert (
        r.content
        == f"sent TERM to process {pid}: exited with exit code 143 (killed by signal SIGTERM)"
    )
    r = reg.run("process_output", {"id": pid}, ws)
    assert r.content.startswith(f"process {pid}: exited with exit code 143")
    assert r.meta["state"] == "exited" and r.meta["exit_code"] == 143

    # stopping again is harmless (safe to re-run)
    r = reg.run("stop_process", {"id": pid, "signal": "KILL"}, ws)
    assert not r.is_error and r.meta["state"] == "exited"

    r = reg.run("stop_process", {"id": 99999}, ws)  # torpor-init's "no such process"
    assert r.content == "stop_process: cannot signal process 99999: no such process: 99999"
    r = reg.run("stop_process", {"id": pid, "signal": "NOPE"}, ws)
    assert r.is_error and r.content == (
        f"stop_process: cannot signal process {pid}: bad signal: NOPE (use a name such as "
        "TERM, KILL, INT, HUP, or a number)"
    )


def test_process_survives_checkpoint_and_restore(
    tools_engine: GVisorEngine, reg: ToolRegistry
) -> None:
    for ws in _sandbox(tools_engine):
        reg.run("write_file", {"path": "/tmp/site/hello.txt", "content": "still here"}, ws)
        pid = reg.run("start_process", {"command": SERVER.format(port=8602)}, ws).meta["process_id"]
        assert "Serving HTTP" in _wait_serving(reg, ws, pid).content

        ck = tools_engine.checkpoint(ws.sandbox, "tools")
        assert tools_engine.inspect(ws.sandbox).state != "running"
        tools_engine.start(ws.sandbox, checkpoint=ck.id)

        r = reg.run("process_output", {"id": pid}, ws)
        assert r.content.startswith(f"process {pid}: running"), r.content
        assert "Serving HTTP on 127.0.0.1 port 8602" in r.content  # output kept too
        r = reg.run("shell", {"command": FETCH.format(port=8602)}, ws)
        assert r.meta["exit_code"] == 0 and "still here" in r.content, r.content
        assert reg.run("stop_process", {"id": pid}, ws).meta["state"] == "exited"


# --------------------------------------------------------------------------- registry


def test_a_user_tool_runs_its_commands_inside_the_sandbox(ws: SandboxWorkspace) -> None:
    reg = ToolRegistry([])

    @reg.register
    def where(workspace: Workspace) -> str:
        """Say whether it runs in a torpor sandbox."""
        return workspace.exec(["sh", "-c", "test -x /.torpor/init && echo inside"]).text

    r = reg.run("where", {}, ws)
    assert not r.is_error and r.content == "inside\n"
