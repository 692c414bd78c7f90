"""The agent's tools as logic: their schemas, the registry (user-defined tools, argument
validation, errors), and how the built-in tools check their arguments, cap their output
and word their errors. They run on `tests/fakeengine.py`'s FakeEngine (host directories
and host processes, no isolation), so they need no root, runsc or base image; what the
tools do in a real sandbox is tests/agent/test_agent_tools.py's, on the real runsc."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import pytest

from tests.fakeengine import FakeEngine
from torpor.agent.builtins import READ_MAX_BYTES
from torpor.agent.tools import (
    Tool,
    ToolError,
    ToolRegistry,
    Workspace,
    builtin_tools,
    schema_from_signature,
)
from torpor.agent.types import ToolResult, ToolSpec
from torpor.runtime.workspace import SandboxWorkspace
from torpor.sandbox.engine import SandboxSpec


@pytest.fixture
def engine(tmp_path: Path) -> FakeEngine:
    return FakeEngine(tmp_path / "fake")


@pytest.fixture
def ws(engine: FakeEngine) -> Iterator[SandboxWorkspace]:
    info = engine.run(SandboxSpec(image="base"), name="logic")
    yield SandboxWorkspace(engine, info.name)
    engine.remove(info.name, force=True)


@pytest.fixture
def reg() -> ToolRegistry:
    return ToolRegistry()


def put(ws: SandboxWorkspace, path: str, data: bytes) -> None:
    ws.engine.write_file(ws.sandbox, path, data)


# ------------------------------------------------------------------------------ shell


def test_workspace_satisfies_protocol(ws: SandboxWorkspace) -> None:
    assert isinstance(ws, Workspace)


def test_shell_output_cap(ws: SandboxWorkspace) -> None:
    reg = ToolRegistry(builtin_tools(output_cap=1000))
    cmd = "head -c 5000 /dev/zero | tr '\\0' a; echo; echo END; echo oops >&2"
    r = reg.run("shell", {"command": cmd}, ws)
    assert not r.is_error
    total = 5000 + 1 + 4 + 5
    assert r.meta["truncated_bytes"] == total - 1000
    assert r.meta["stdout_bytes"] == 5005 and r.meta["stderr_bytes"] == 5
    assert f"[output truncated: {total - 1000} of {total} bytes cut; the cap is 1000 bytes]" in (
        r.content
    )
    assert "bytes cut here: output is capped at 995 bytes" in r.content  # stdout's share
    head = r.content.split("stdout:\n", 1)[1]
    assert head.startswith("a" * 497 + "\n[... 4010 bytes cut here")  # the head, then ...
    assert "END\n" in r.content  # ... the tail is kept
    assert "stderr:\noops\n" in r.content  # the small stream is kept whole
    # a cap below 256 bytes is raised to 256
    assert "capped at 256" in ToolRegistry(builtin_tools(output_cap=10)).get("shell").description


def test_shell_argument_validation(reg: ToolRegistry, ws: SandboxWorkspace) -> None:
    r = reg.run("shell", {"command": "true", "timeout": 601}, ws)
    assert r.is_error
    assert r.content == (
        "invalid arguments for shell: timeout: 601 is greater than the maximum of 600.0"
    )
    r = reg.run("shell", {"command": "true", "timeout": 0}, ws)
    assert r.is_error and "timeout: 0 is less than or equal to the minimum of 0" in r.content
    r = reg.run("shell", {"cmd": "ls"}, ws)
    assert r.is_error
    assert "'command' is a required property" in r.content
    assert "Additional properties are not allowed ('cmd' was unexpected)" in r.content


def test_shell_reports_exit_codes_and_signals(reg: ToolRegistry, ws: SandboxWorkspace) -> None:
    r = reg.run("shell", {"command": "echo out; echo err >&2; exit 3"}, ws)
    assert r.content == "exit code 3\nstdout:\nout\n\nstderr:\nerr\n"
    assert r.meta["exit_code"] == 3 and r.meta["timed_out"] is False
    assert reg.run("shell", {"command": "true"}, ws).content == "exit code 0\n(no output)"
    r = reg.run("shell", {"command": "kill -TERM $$"}, ws)
    assert r.content == "exit code 143 (killed by signal SIGTERM)\n(no output)"


# ------------------------------------------------------------------------------ files


def test_read_file_errors(reg: ToolRegistry, ws: SandboxWorkspace) -> None:
    r = reg.run("read_file", {"path": "/nonexistent/file"}, ws)
    assert r.is_error and r.content == "read_file: /nonexistent/file: no such file or directory"

    ws.files.mkdir("/tmp/dir")
    r = reg.run("read_file", {"path": "/tmp/dir"}, ws)
    assert r.is_error and r.content == "read_file: /tmp/dir is a directory: use list_dir"

    put(ws, "/tmp/zeros", bytes(1000))
    r = reg.run("read_file", {"path": "/tmp/zeros"}, ws)
    assert r.is_error
    assert r.content == "read_file: /tmp/zeros is a binary file (1000 bytes); read_file reads text"

    put(ws, "/tmp/latin1", "café".encode("latin-1"))
    r = reg.run("read_file", {"path": "/tmp/latin1"}, ws)
    assert r.is_error and r.content.startswith("read_file: /tmp/latin1 is not UTF-8 text (4 b")

    put(ws, "/tmp/huge", b"x" * (READ_MAX_BYTES + 1))
    r = reg.run("read_file", {"path": "/tmp/huge"}, ws)
    assert r.is_error and f"is {READ_MAX_BYTES + 1} bytes, more than read_file reads" in r.content

    os.mkfifo(ws.engine.host_path(ws.sandbox, "/tmp/fifo"))  # type: ignore[attr-defined]
    r = reg.run("read_file", {"path": "/tmp/fifo"}, ws)
    assert r.is_error and r.content == "read_file: /tmp/fifo is not a regular file"

    r = reg.run("read_file", {"path": "etc/passwd"}, ws)
    assert r.is_error and r.content == (
        "read_file: path must be absolute (start with /): 'etc/passwd'"
    )


def test_read_file_lines_and_cap(ws: SandboxWorkspace) -> None:
    reg = ToolRegistry(builtin_tools(output_cap=1000))
    put(ws, "/tmp/numbers", "".join(f"{i}\n" for i in range(1, 2001)).encode())  # 8893 bytes
    r = reg.run("read_file", {"path": "/tmp/numbers"}, ws)
    assert not r.is_error
    assert r.meta["truncated_bytes"] == 8893 - 1000 and r.meta["size"] == 8893
    assert r.content.startswith("1\n2\n3\n")
    assert r.content.endswith(
        "1999\n2000\n[7893 of 8893 bytes cut; the cap is 1000 bytes: "
        "read parts with offset and limit (in lines)]"
    )
    r = reg.run("read_file", {"path": "/tmp/numbers", "offset": 2, "limit": 2}, ws)
    assert r.content == "2\n3\n[lines 2-3 of 2000]"
    assert (r.meta["first_line"], r.meta["last_line"], r.meta["lines"]) == (2, 3, 2000)
    r = reg.run("read_file", {"path": "/tmp/numbers", "offset": 3000}, ws)
    assert r.content == "[no lines from line 3000: the file has 2000 lines]"
    put(ws, "/tmp/empty", b"")
    assert reg.run("read_file", {"path": "/tmp/empty"}, ws).content == "(empty file)"
    r = reg.run("read_file", {"path": "/tmp/numbers", "offset": 0}, ws)
    assert r.is_error and "offset: 0 is less than the minimum of 1" in r.content


def test_edit_file_errors(reg: ToolRegistry, ws: SandboxWorkspace) -> None:
    path = "/tmp/edit/app.py"
    put(ws, path, b"x = 1\ny = 1\nprint(x)\n")
    r = reg.run("edit_file", {"path": path, "old": "z = 3", "new": "z = 4"}, ws)
    assert r.is_error and r.content == (
        "edit_file: the old text was not found in /tmp/edit/app.py (it must match exactly, "
        "including whitespace and indentation)"
    )
    r = reg.run("edit_file", {"path": path, "old": " = 1", "new": " = 2"}, ws)
    assert r.is_error and r.content == (
        "edit_file: the old text was found 2 times in /tmp/edit/app.py, more than count=1 "
        "allows: include more surrounding text to pick one, or pass count=2 to replace them all"
    )
    r = reg.run("edit_file", {"path": "/tmp/edit/none.py", "old": "a", "new": "b"}, ws)
    assert r.is_error and r.content == "edit_file: /tmp/edit/none.py: no such file or directory"
    r = reg.run("edit_file", {"path": path, "old": "", "new": "b"}, ws)
    assert r.is_error and "old: '' should be non-empty" in r.content
    assert ws.read_file(path) == b"x = 1\ny = 1\nprint(x)\n"  # untouched by any of them


def test_list_dir_format_and_errors(reg: ToolRegistry, ws: SandboxWorkspace) -> None:
    put(ws, "/tmp/ls/README", b"12345")
    put(ws, "/tmp/ls/src/pkg/mod.py", b"abc")
    os.symlink("README", ws.engine.host_path(ws.sandbox, "/tmp/ls/link"))  # type: ignore[attr-defined]
    r = reg.run("list_dir", {"path": "/tmp/ls"}, ws)
    assert not r.is_error
    assert r.content == (
        "/tmp/ls: 3 entries (depth 1; type, size in bytes, name)\n"
        "file           5  README\n"
        "link           -  link -> README\n"
        "dir            -  src/"
    )
    assert r.meta == {"path": "/tmp/ls", "entries": 3, "truncated_bytes": 0, "ms": r.meta["ms"]}

    r = reg.run("list_dir", {"path": "/tmp/ls", "depth": 3}, ws)
    assert r.meta["entries"] == 5
    assert r.content.splitlines()[1:] == [
        "file           5  README", "link           -  link -> README", "dir            -  src/",
        "dir            -  src/pkg/", "file           3  src/pkg/mod.py",
    ]  # fmt: skip

    ws.files.mkdir("/tmp/empty")
    assert reg.run("list_dir", {"path": "/tmp/empty"}, ws).content == (
        "/tmp/empty: 0 entries (depth 1; type, size in bytes, name)\n(empty)"
    )
    r = reg.run("list_dir", {"path": "/tmp/ls/README"}, ws)
    assert r.is_error and r.content == "list_dir: /tmp/ls/README is not a directory"
    r = reg.run("list_dir", {"path": "/tmp/nope"}, ws)
    assert r.is_error and r.content == "list_dir: /tmp/nope: no such file or directory"
    r = reg.run("list_dir", {"path": "/tmp/ls", "depth": 0}, ws)
    assert r.is_error and "depth: 0 is less than the minimum of 1" in r.content
    r = reg.run("list_dir", {"path": "tmp"}, ws)
    assert r.is_error and "path must be absolute" in r.content


def test_list_dir_cap(ws: SandboxWorkspace) -> None:
    for i in range(100):
        put(ws, f"/tmp/many/file-{i:03d}", b"x")
    r = ToolRegistry(builtin_tools(output_cap=300)).run("list_dir", {"path": "/tmp/many"}, ws)
    assert r.meta["entries"] == 100 and r.meta["truncated_bytes"] > 0
    assert r.content.startswith("/tmp/many: 100 entries")
    assert r.content.endswith(
        f"\n[listing truncated: {r.meta['truncated_bytes']} bytes cut; the cap is 300 bytes]"
    )
    assert "file-000" in r.content and "file-099" in r.content  # head and tail


# -------------------------------------------------------------------------- processes


def test_process_tools_report_state_output_and_errors(
    reg: ToolRegistry, ws: SandboxWorkspace
) -> None:  # fmt: skip
    r = reg.run("start_process", {"command": "echo started; echo warn >&2; exec sleep 60"}, ws)
    assert not r.is_error
    pid = r.meta["process_id"]
    assert r.content.startswith(f"started process {pid}: echo started;")

    deadline = time.monotonic() + 10
    out = reg.run("process_output", {"id": pid}, ws)
    while "stderr (" not in out.content and time.monotonic() < deadline:  # both written
        time.sleep(0.01)
        out = reg.run("process_output", {"id": pid}, ws)
    assert out.content.startswith(f"process {pid}: running\ncommand: /bin/sh -c echo started")
    assert "stdout (8 bytes):\nstarted\n" in out.content
    assert out.content.endswith("stderr (5 bytes):\nwarn\n")
    assert out.meta["state"] == "running" and out.meta["exit_code"] is None
    r = reg.run("process_output", {"id": pid, "tail_bytes": 3}, ws)
    assert "stdout (last 3 of 8 bytes):\ned\n" in r.content

    r = reg.run("stop_process", {"id": pid}, ws)
    assert r.content == (
        f"sent TERM to process {pid}: exited with exit code 143 (killed by signal SIGTERM)"
    )
    assert (r.meta["state"], r.meta["exit_code"], r.meta["signal"]) == ("exited", 143, "TERM")
    r = reg.run("stop_process", {"id": pid, "signal": "kill"}, ws)  # again: harmless
    assert not r.is_error and r.meta["signal"] == "KILL"

    r = reg.run("stop_process", {"id": 99999}, ws)
    assert r.is_error
    assert r.content == "stop_process: cannot signal process 99999: no such process: 99999"
    r = reg.run("process_output", {"id": 99999}, ws)
    assert r.is_error and r.content == (
        "process_output: no process with id 99999 (ids come from start_process)"
    )
    r = reg.run("stop_process", {"id": "one"}, ws)
    assert r.is_error and "id: 'one' is not of type 'integer'" in r.content


# --------------------------------------------------------------------------- registry


class Thing:
    """A type a JSON Schema cannot be derived from."""


def test_builtin_specs_and_rerun_flags() -> None:
    reg = ToolRegistry()
    specs = reg.specs()
    assert all(isinstance(s, ToolSpec) for s in specs)
    assert [s.name for s in specs] == [
        "shell", "read_file", "write_file", "edit_file",
        "list_dir", "start_process", "process_output", "stop_process",
    ]  # fmt: skip
    for s in specs:
        assert s.parameters["type"] == "object" and s.description
        assert s.parameters["additionalProperties"] is False
    safe = {t.name for t in reg if t.safe_to_rerun}
    assert safe == {"read_file", "write_file", "list_dir", "process_output", "stop_process"}
    assert "16384 bytes" in reg.get("shell").description
    assert ToolRegistry([]).specs() == []
    # each registry's tools have their own schemas: changing one changes no other
    reg.get("shell").parameters["properties"]["command"]["description"] = "changed"
    assert ToolRegistry().get("shell").parameters["properties"]["command"]["description"] == (
        "shell command line"
    )


def test_user_tool_from_signature(ws: SandboxWorkspace) -> None:
    reg = ToolRegistry([])

    @reg.register
    def add(workspace: Workspace, a: int, b: int = 2, note: str | None = None) -> str:
        """Add two integers."""
        return f"{a + b}{' ' + note if note else ''}"

    @reg.register(name="echo_flag", safe_to_rerun=True)
    def echo_flag(
        workspace: Workspace,
        flag: Annotated[Literal["-s", "-r"], "which uname field"] = "-s",
    ) -> str:
        return workspace.exec(["echo", flag]).stdout.decode().strip()

    assert add(None, 1) == "3"  # the decorator returns the function itself
    spec = reg.get("add").spec()
    assert spec == ToolSpec(
        "add",
        "Add two integers.",
        {
            "type": "object",
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": "integer", "default": 2},
                "note": {"type": ["string", "null"], "default": None},
            },
            "additionalProperties": False,
            "required": ["a"],
        },
    )
    assert reg.get("echo_flag").parameters["properties"]["flag"] == {
        "enum": ["-s", "-r"],
        "description": "which uname field",
        "default": "-s",
    }
    assert [t.safe_to_rerun for t in reg] == [False, True]

    r = reg.run("add", {"a": 40, "b": 2, "note": "ok"}, ws)
    assert r == ToolResult("42 ok", meta={"ms": r.meta["ms"]})
    assert reg.run("add", {"a": 1.0}, ws).content == "3"  # integral floats arrive as ints
    assert reg.run("echo_flag", {}, ws).content == "-s"  # the default, through the workspace

    r = reg.run("add", {"a": "forty"}, ws)
    assert (
        r.is_error and r.content == "invalid arguments for add: a: 'forty' is not of type 'integer'"
    )
    r = reg.run("add", {"b": 1, "c": 2}, ws)
    assert r.is_error and r.content == (
        "invalid arguments for add: 'a' is a required property; "
        "Additional properties are not allowed ('c' was unexpected)"
    )
    r = reg.run("echo_flag", {"flag": "-a"}, ws)
    assert r.is_error and "flag: '-a' is not one of ['-s', '-r']" in r.content
    r = reg.run("add", {"_raw": '{"a": 1'}, ws)
    assert r.is_error and r.content == 'invalid arguments for add: not a valid JSON object: {"a": 1'


def test_registry_errors(ws: SandboxWorkspace) -> None:
    reg = ToolRegistry([])

    @reg.register(description="divides", parameters={"type": "object"})
    def boom(workspace: Workspace, **kw: object) -> str:
        return str(1 / 0)

    @reg.register
    def refuse(workspace: Workspace) -> ToolResult:
        raise ToolError("not today")

    r = reg.run("boom", {}, ws)
    assert r.is_error and r.content == "tool boom failed: ZeroDivisionError: division by zero"
    assert r.meta["exception"] == "ZeroDivisionError" and "1 / 0" in r.meta["traceback"]
    assert r.meta["error"] == "exception" and set(r.meta) == {"error", "exception",
                                                               "traceback", "ms"}  # fmt: skip

    r = reg.run("refuse", {}, ws)
    assert r.is_error and r.content == "refuse: not today"
    assert r.meta["error"] == "tool_error"

    r = reg.run("missing", {"x": 1}, ws)
    assert r.is_error and r.content == "unknown tool 'missing'; available tools: boom, refuse"
    assert r.meta["error"] == "unknown_tool"
    with pytest.raises(KeyError, match="unknown tool 'missing'; registered tools: boom, refuse"):
        reg.get("missing")

    def odd(workspace: Workspace, thing: Thing) -> str:
        return ""

    with pytest.raises(TypeError, match="cannot derive a JSON Schema for parameter 'thing'"):
        reg.register(odd)
    with pytest.raises(ValueError, match="invalid JSON Schema"):
        reg.add(Tool("bad", "bad schema", {"type": "nonsense"}, lambda ws: ""))
    with pytest.raises(TypeError, match="must take the workspace as its first argument"):
        schema_from_signature(lambda: "")
