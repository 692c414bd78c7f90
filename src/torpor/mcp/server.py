"""The MCP server (built with the `mcp` SDK's `MCPServer`): a torpor sandbox as tools for
any MCP client: run a command, read, write and list files, snapshot, restore, fork.

Which sandbox a tool acts on is the front door's business: `build(resolve)` takes a
resolver, called at each tool call with the tool's `sandbox` argument (None when the
client left it out) and the request's HTTP headers (None over stdio), that gives the
`Target` as a context manager (or raises `LookupError`, `PermissionError` or the SDK's
`ToolError`: the tool answers with the error, as it does with a sandbox's errors).
`torpor mcp` (stdio, cli/mcp_cmd.py) binds one sandbox or session, so `sandbox` may be
left out; `/mcp` in `torpor serve` (api/mcp_mount.py) checks
the request's token and resolves the tenant's sandboxes, so a tool must name one.

The tools run in the SDK's worker threads (they are synchronous: torpor's sandbox calls
block). Output and file contents are capped at `OUTPUT_CAP` bytes (`truncated` says so);
a command's output is decoded as UTF-8 (undecodable bytes replaced), a file's content
travels as base64 when it is not UTF-8 (`encoding`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from torpor.sandbox.engine import SandboxError

OUTPUT_CAP = 256 * 1024  # bytes of a command's output, or of a file, a tool answers with

# what a tool answers with as an error, its message included: the sandbox's errors (no such
# file, a command's timeout, ...), a resolver's (no such sandbox, not this tenant's), and
# `ToolError`, which a resolver may raise for anything else it wants the client to read
EXPECTED: tuple[type[Exception], ...] = (SandboxError, LookupError, PermissionError, OSError,
                                          ValueError)


@dataclass
class Target:
    """What the tools act on. `label` names it in answers ("sandbox sb-1", "session s1");
    `sandbox` has `exec(argv, cwd=, timeout=)` and `files.read/write/list` (a
    `torpor.sandbox.Sandbox` or a `RemoteSandbox`); the three callables take a snapshot
    (returns its id), make a new sandbox from a snapshot and fork it (return the new
    sandbox's id: the `sandbox` argument of the next calls)."""

    label: str
    sandbox: Any
    snapshot: Callable[[str | None], str]
    restore: Callable[[str], str]
    fork: Callable[[], str]


Resolver = Callable[[str | None, Mapping[str, str] | None], AbstractContextManager[Target]]

INSTRUCTIONS = (
    "Tools on a torpor sandbox: a gVisor Linux sandbox that can be snapshotted whole "
    "(processes, memory and files) and restored or forked from a snapshot. Paths are "
    "absolute paths inside the sandbox.")


def _text(data: bytes) -> tuple[str, str]:
    """(content, encoding): UTF-8 text when it is, else base64."""
    try:
        return data.decode(), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode(), "base64"


SANDBOX_DOC = ("the sandbox to act on: a sandbox id (or, where the server offers them, "
               "`session:ID` for a torpor session's sandbox); default: the one the server "
               "was started for")


def build(resolve: Resolver, *, name: str = "torpor") -> MCPServer:
    """An MCPServer whose tools act on the targets `resolve` gives."""
    mcp = MCPServer(name, instructions=INSTRUCTIONS)

    @contextlib.contextmanager
    def target(sandbox: str | None, ctx: Context | None) -> Iterator[Target]:
        headers = ctx.headers if ctx is not None else None
        try:
            with resolve(sandbox or None, headers) as t:
                yield t
        except ToolError:
            raise
        except EXPECTED as e:  # the client is told why (the SDK would hide the message)
            raise ToolError(str(e) or type(e).__name__) from None

    ro = ToolAnnotations(read_only_hint=True, destructive_hint=False)

    @mcp.tool(description="Run a shell command (/bin/sh -c) in the sandbox to its end; "
              "answers its exit code, stdout and stderr. `sandbox`: " + SANDBOX_DOC)
    def run_command(command: str, ctx: Context, cwd: str | None = None,
                    timeout: float = 60.0, sandbox: str | None = None) -> dict[str, Any]:
        with target(sandbox, ctx) as t:
            r = t.sandbox.exec(["/bin/sh", "-c", command], cwd=cwd, timeout=timeout)
        return {"exit_code": r.exit_code,
                "stdout": r.stdout[:OUTPUT_CAP].decode(errors="replace"),
                "stderr": r.stderr[:OUTPUT_CAP].decode(errors="replace"),
                "truncated": max(len(r.stdout), len(r.stderr)) > OUTPUT_CAP}

    @mcp.tool(description="Read a file of the sandbox (UTF-8 text, else base64: see "
              "`encoding`). `sandbox`: " + SANDBOX_DOC, annotations=ro)
    def read_file(path: str, ctx: Context, sandbox: str | None = None) -> dict[str, Any]:
        with target(sandbox, ctx) as t:
            data: bytes = t.sandbox.files.read(path)
        content, enc = _text(data[:OUTPUT_CAP])
        return {"path": path, "size": len(data), "encoding": enc, "content": content,
                "truncated": len(data) > OUTPUT_CAP}

    @mcp.tool(description="Write a file in the sandbox (its directories are made), from "
              "text or base64 (`encoding`). `sandbox`: " + SANDBOX_DOC)
    def write_file(path: str, content: str, ctx: Context,
                   encoding: Literal["utf-8", "base64"] = "utf-8",
                   sandbox: str | None = None) -> dict[str, Any]:
        try:
            data = (base64.b64decode(content, validate=True) if encoding == "base64"
                    else content.encode())
        except (binascii.Error, ValueError) as e:
            raise ToolError(f"content is not base64: {e}") from None
        with target(sandbox, ctx) as t:
            t.sandbox.files.write(path, data)
        return {"path": path, "bytes": len(data)}

    @mcp.tool(description="List a directory of the sandbox (`depth` levels). "
              "`sandbox`: " + SANDBOX_DOC, annotations=ro)
    def list_files(ctx: Context, path: str = "/", depth: int = 1,
                   sandbox: str | None = None) -> dict[str, Any]:
        with target(sandbox, ctx) as t:
            entries = t.sandbox.files.list(path, depth=depth)
        return {"path": path, "entries": [
            {"name": e.name, "path": e.path, "type": e.type, "size": e.size}
            for e in entries]}

    @mcp.tool(description="Snapshot the whole sandbox (processes, memory, files); it "
              "keeps running. Answers the snapshot's id, for `restore`. `sandbox`: "
              + SANDBOX_DOC)
    def snapshot(ctx: Context, name: str | None = None,
                 sandbox: str | None = None) -> dict[str, Any]:
        with target(sandbox, ctx) as t:
            return {"snapshot": t.snapshot(name), "of": t.label}

    @mcp.tool(description="A new sandbox from a snapshot, running where the snapshot left "
              "off (the sandbox it was taken of is left as it is). Answers the new "
              "sandbox's id: pass it as `sandbox` to act on it. `sandbox`: " + SANDBOX_DOC)
    def restore(snapshot: str, ctx: Context, sandbox: str | None = None) -> dict[str, Any]:
        with target(sandbox, ctx) as t:
            return {"sandbox": t.restore(snapshot)}

    @mcp.tool(description="A new, independent copy of the running sandbox (from a "
              "snapshot taken now). Answers the copy's id: pass it as `sandbox` to act on "
              "it. `sandbox`: " + SANDBOX_DOC)
    def fork(ctx: Context, sandbox: str | None = None) -> dict[str, Any]:
        with target(sandbox, ctx) as t:
            return {"sandbox": t.fork(), "of": t.label}

    return mcp
