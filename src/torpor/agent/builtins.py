"""The built-in tools, all executed inside the sandbox through the `Workspace`: a shell,
file tools (read_file, write_file, edit_file, list_dir) and long-running processes
(start_process, process_output, stop_process). Files are described and listed, and
processes read and signalled, through the workspace's sandbox handle (`files`,
`process`); writes go through a shell, so that a file keeps its mode and owner.

Each tool is a module-level function `fn(workspace, **arguments)` (those whose result is
capped also take `cap`, bound by `builtin_tools`), with its JSON Schema next to it;
`builtin_tools` makes them `Tool` objects.
"""

from __future__ import annotations

import copy
import functools
import signal as signal_module
import time
from collections.abc import Callable
from typing import Any

from torpor.agent.tool import Tool, ToolError, Workspace
from torpor.agent.types import ToolResult
from torpor.sandbox.engine import (
    ProcessNotFound,
    SandboxError,
    SandboxFileError,
    SandboxFileNotFound,
)

__all__ = ["DEFAULT_OUTPUT_CAP", "builtin_tools"]

DEFAULT_OUTPUT_CAP = 16384
SHELL_DEFAULT_TIMEOUT = 60.0
SHELL_MAX_TIMEOUT = 600.0
SHELL_KILL_GRACE = 5  # seconds between TERM and KILL when a shell command times out
READ_MAX_BYTES = 10 * 1024 * 1024  # read_file refuses larger files (use shell for parts)
STOP_WAIT = 3.0  # seconds stop_process waits for the process to exit


# ----------------------------------------------------------------------------- helpers


def _cut(data: bytes, budget: int) -> tuple[str, int]:
    """Decode data, keeping its head and tail within budget bytes; returns (text, cut)."""
    if len(data) <= budget:
        return data.decode(errors="replace"), 0
    head_n = budget // 2
    tail_n = budget - head_n
    cut = len(data) - budget
    head = data[:head_n].decode(errors="replace")
    tail = data[len(data) - tail_n :].decode(errors="replace") if tail_n else ""
    note = (
        f"\n[... {cut} bytes cut here: output is capped at {budget} bytes; "
        f"the first {head_n} and the last {tail_n} bytes are shown ...]\n"
    )
    return head + note + tail, cut


def _split_budget(a: int, b: int, cap: int) -> tuple[int, int]:
    """Share cap bytes between two streams of a and b bytes."""
    if a + b <= cap:
        return a, b
    half = cap // 2
    if a <= half:
        return a, cap - a
    if b <= cap - half:
        return cap - b, b
    return half, cap - half


def _absolute(path: str) -> str:
    if not path.startswith("/"):
        raise ToolError(f"path must be absolute (start with /): {path!r}")
    return path


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown exit status"
    if code > 128:
        try:
            return f"exit code {code} (killed by signal {signal_module.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"exit code {code}"


def _stderr_text(res: Any) -> str:
    return bytes(res.stderr).decode(errors="replace").strip()


def _write(ws: Workspace, path: str, data: bytes) -> None:
    """Write a file through a shell in the sandbox: parents are created, and an existing
    file keeps its mode and owner (the sandbox user owns new files)."""
    script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'
    res = ws.exec(["/bin/sh", "-c", script, "sh", path], stdin=data)
    if res.exit_code != 0:
        raise ToolError(
            f"cannot write {path}: {_stderr_text(res) or _describe_exit(res.exit_code)}"
        )


def _stat(ws: Workspace, path: str) -> tuple[str, int, str]:
    """(kind, size, resolved path) following symlinks; kind is 'file', 'directory' or
    'other'. Raises ToolError if the path does not exist."""
    try:
        entry = ws.files.stat(path, follow=True)
    except SandboxFileNotFound:
        raise ToolError(f"{path}: no such file or directory") from None
    except SandboxFileError as e:
        raise ToolError(f"cannot stat {path}: {e}") from None
    kind = {"file": "file", "dir": "directory"}.get(entry.type, "other")
    return kind, entry.size, entry.path


def _read_text(ws: Workspace, path: str) -> tuple[str, int]:
    """A text file's contents and size in bytes; ToolError for directories, binary and
    oversized files. (The file is stat'ed first: reading a directory through the
    engine's file copy is refused or can block.)"""
    kind, size, resolved = _stat(ws, _absolute(path))
    if kind == "directory":
        raise ToolError(f"{path} is a directory: use list_dir")
    if kind != "file":
        raise ToolError(f"{path} is not a regular file")
    if size > READ_MAX_BYTES:
        raise ToolError(
            f"{path} is {size} bytes, more than read_file reads ({READ_MAX_BYTES} bytes): "
            "use shell to read parts of it (e.g. sed -n '100,200p', head -c, tail -c)"
        )
    data = ws.read_file(resolved)
    if b"\0" in data[:65536]:
        raise ToolError(f"{path} is a binary file ({len(data)} bytes); read_file reads text")
    try:
        return data.decode(), len(data)
    except UnicodeDecodeError:
        raise ToolError(
            f"{path} is not UTF-8 text ({len(data)} bytes); read it with shell (e.g. iconv, od)"
        ) from None


# ------------------------------------------------------------------------ built-in tools

# The arguments schemas (builtin_tools hands each Tool a copy of its own).
_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": False}
_NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}

SHELL_PARAMETERS: dict[str, Any] = {
    **_OBJECT,
    "properties": {
        "command": {"type": "string", "description": "shell command line"},
        "timeout": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "maximum": SHELL_MAX_TIMEOUT,
            "default": SHELL_DEFAULT_TIMEOUT,
            "description": "seconds before the command is killed "
            f"(default {SHELL_DEFAULT_TIMEOUT:g}, max {SHELL_MAX_TIMEOUT:g})",
        },
        "cwd": {**_NULLABLE_STR, "description": "working directory"},
    },
    "required": ["command"],
}


def shell(
    ws: Workspace, command: str, timeout: float | None = None, cwd: str | None = None, *, cap: int
) -> ToolResult:
    limit = SHELL_DEFAULT_TIMEOUT if timeout is None else float(timeout)
    # The deadline is enforced inside the sandbox by timeout(1), which signals the
    # command's whole process group (TERM, then KILL after a grace period).
    argv = ["timeout", "-k", str(SHELL_KILL_GRACE), f"{limit:g}", "/bin/sh", "-c", command]
    start = time.monotonic()
    res = ws.exec(argv, workdir=cwd or None, timeout=limit + SHELL_KILL_GRACE + 30)
    elapsed = time.monotonic() - start
    code = int(res.exit_code)
    out, err = bytes(res.stdout), bytes(res.stderr)
    timed_out = code in (124, 137) and elapsed >= limit
    out_budget, err_budget = _split_budget(len(out), len(err), cap)
    out_text, out_cut = _cut(out, out_budget)
    err_text, err_cut = _cut(err, err_budget)
    cut = out_cut + err_cut
    parts = []
    if timed_out:
        parts.append(
            f"command timed out after {limit:g} s and was killed. If it starts a "
            "long-running program (a server, a watcher), use start_process instead."
        )
    else:
        parts.append(_describe_exit(code))
    if out:
        parts.append("stdout:\n" + out_text)
    if err:
        parts.append("stderr:\n" + err_text)
    if not out and not err:
        parts.append("(no output)")
    if cut:
        parts.append(
            f"[output truncated: {cut} of {len(out) + len(err)} bytes cut; the cap is {cap} bytes]"
        )
    meta: dict[str, Any] = {
        "exit_code": code,
        "timed_out": timed_out,
        "stdout_bytes": len(out),
        "stderr_bytes": len(err),
        "truncated_bytes": cut,
        "output_cap": cap,
    }
    return ToolResult("\n".join(parts), is_error=timed_out, meta=meta)


READ_FILE_PARAMETERS: dict[str, Any] = {
    **_OBJECT,
    "properties": {
        "path": {"type": "string", "description": "absolute path"},
        "offset": {"type": ["integer", "null"], "minimum": 1},
        "limit": {"type": ["integer", "null"], "minimum": 0},
    },
    "required": ["path"],
}


def read_file(
    ws: Workspace, path: str, offset: int | None = None, limit: int | None = None, *, cap: int
) -> ToolResult:
    text, size = _read_text(ws, path)
    meta: dict[str, Any] = {"path": path, "size": size}
    notes = []
    if offset is not None or limit is not None:
        lines = text.splitlines(keepends=True)
        first = max(1, offset or 1)
        chosen = lines[first - 1 : (first - 1 + limit) if limit is not None else None]
        text = "".join(chosen)
        last = first + len(chosen) - 1
        meta.update(lines=len(lines), first_line=first, last_line=last)
        if not chosen:
            notes.append(f"[no lines from line {first}: the file has {len(lines)} lines]")
        elif first > 1 or last < len(lines):
            notes.append(f"[lines {first}-{last} of {len(lines)}]")
    data = text.encode()
    shown, cut = _cut(data, cap)
    meta["truncated_bytes"] = cut
    if cut:
        notes.append(
            f"[{cut} of {len(data)} bytes cut; the cap is {cap} bytes: "
            "read parts with offset and limit (in lines)]"
        )
    if not data and not notes:
        shown = "(empty file)"
    content = shown + ("\n" if notes and shown and not shown.endswith("\n") else "")
    return ToolResult(content + "\n".join(notes), meta=meta)


WRITE_FILE_PARAMETERS: dict[str, Any] = {
    **_OBJECT,
    "properties": {
        "path": {"type": "string", "description": "absolute path"},
        "content": {"type": "string"},
    },
    "required": ["path", "content"],
}


def write_file(ws: Workspace, path: str, content: str) -> ToolResult:
    data = content.encode()
    _write(ws, _absolute(path), data)
    return ToolResult(f"wrote {len(data)} bytes to {path}", meta={"path": path, "bytes": len(data)})


EDIT_FILE_PARAMETERS: dict[str, Any] = {
    **_OBJECT,
    "properties": {
        "path": {"type": "string", "description": "absolute path"},
        "old": {"type": "string", "minLength": 1},
        "new": {"type": "string"},
        "count": {"type": "integer", "minimum": 1, "default": 1},
    },
    "required": ["path", "old", "new"],
}


def edit_file(ws: Workspace, path: str, old: str, new: str, count: int = 1) -> ToolResult:
    if not old:
        raise ToolError("old must not be empty")
    text, _ = _read_text(ws, path)
    found = text.count(old)
    if found == 0:
        raise ToolError(
            f"the old text was not found in {path} (it must match exactly, "
            "including whitespace and indentation)"
        )
    if found > count:
        raise ToolError(
            f"the old text was found {found} times in {path}, more than count={count} "
            f"allows: include more surrounding text to pick one, or pass count={found} "
            "to replace them all"
        )
    _write(ws, path, text.replace(old, new).encode())
    word = "occurrence" if found == 1 else "occurrences"
    return ToolResult(
        f"replaced {found} {word} in {path}", meta={"path": path, "replacements": found}
    )


LIST_DIR_PARAMETERS: dict[str, Any] = {
    **_OBJECT,
    "properties": {
        "path": {"type": "string", "description": "absolute path"},
        "depth": {"type": "integer", "minimum": 1, "maximum": 20, "default": 1},
    },
    "required": ["path"],
}


def list_dir(ws: Workspace, path: str, depth: int = 1, *, cap: int) -> ToolResult:
    _absolute(path)
    try:
        entries = sorted(ws.files.list(path, depth=depth), key=lambda e: e.name)
    except SandboxFileNotFound:
        raise ToolError(f"{path}: no such file or directory") from None
    except SandboxFileError as e:
        if e.reason == "not_a_directory":
            raise ToolError(f"{path} is not a directory") from None
        raise ToolError(str(e)) from None
    lines = []
    for e in entries:
        if e.type == "dir":
            lines.append(f"dir   {'-':>10}  {e.name}/")
        elif e.type == "symlink":
            lines.append(f"link  {'-':>10}  {e.name} -> {e.link_target}")
        else:
            lines.append(f"{'file' if e.type == 'file' else 'other':<5} {e.size:>10}  {e.name}")
    header = f"{path}: {len(entries)} entries (depth {depth}; type, size in bytes, name)"
    body = "\n".join(lines)
    shown, cut = _cut(body.encode(), cap)
    text = header + ("\n" + shown if lines else "\n(empty)")
    if cut:
        text += f"\n[listing truncated: {cut} bytes cut; the cap is {cap} bytes]"
    return ToolResult(text, meta={"path": path, "entries": len(entries), "truncated_bytes": cut})


START_PROCESS_PARAMETERS: dict[str, Any] = {
    **_OBJECT,
    "properties": {
        "command": {"type": "string"},
        "cwd": {**_NULLABLE_STR, "description": "working directory"},
    },
    "required": ["command"],
}


def start_process(ws: Workspace, command: str, cwd: str | None = None) -> ToolResult:
    pid = ws.spawn(["/bin/sh", "-c", command], workdir=cwd or None)
    return ToolResult(
        f"started process {pid}: {command}\n"
        f"Its output is kept: see it with process_output (id {pid}); "
        "stop it with stop_process.",
        meta={"process_id": pid},
    )


def _find_process(ws: Workspace, pid: int) -> dict[str, Any]:
    for row in ws.processes():
        if int(row.get("id", -1)) == pid:
            return row
    raise ToolError(f"no process with id {pid} (ids come from start_process)")


def _process_state(row: dict[str, Any]) -> str:
    if row.get("state") == "running":
        return "running"
    return f"exited with {_describe_exit(row.get('exit'))}"


PROCESS_OUTPUT_PARAMETERS: dict[str, Any] = {
    **_OBJECT,
    "properties": {
        "id": {"type": "integer", "description": "id from start_process"},
        "tail_bytes": {"type": "integer", "minimum": 0, "default": 4096},
    },
    "required": ["id"],
}


def process_output(ws: Workspace, id: int, tail_bytes: int = 4096, *, cap: int) -> ToolResult:
    row = _find_process(ws, id)
    want = min(max(0, tail_bytes), cap // 2)
    parts = [f"process {id}: {_process_state(row)}", f"command: {row.get('argv', '')}"]
    meta: dict[str, Any] = {
        "process_id": id,
        "state": row.get("state"),
        "exit_code": row.get("exit"),
    }
    try:
        output = dict(zip(("stdout", "stderr"), ws.process(id).output(), strict=True))
        failure = ""
    except SandboxError as e:
        output, failure = {}, str(e)
    for stream in ("stdout", "stderr"):
        if stream not in output:
            parts.append(f"{stream}: cannot read ({failure})")
            continue
        data = output[stream]
        meta[f"{stream}_bytes"] = len(data)
        if not data:
            parts.append(f"{stream}: (empty)")
            continue
        tail = data[len(data) - want :] if want else b""
        label = (
            f"{stream} ({len(data)} bytes)"
            if len(tail) == len(data)
            else f"{stream} (last {len(tail)} of {len(data)} bytes)"
        )
        parts.append(f"{label}:\n{tail.decode(errors='replace')}")
    return ToolResult("\n".join(parts), meta=meta)


STOP_PROCESS_PARAMETERS: dict[str, Any] = {
    **_OBJECT,
    "properties": {
        "id": {"type": "integer"},
        "signal": {
            "type": ["string", "integer"],
            "default": "TERM",
            "description": "name (TERM, KILL, INT, HUP) or number",
        },
    },
    "required": ["id"],
}


def stop_process(ws: Workspace, id: int, signal: str | int = "TERM") -> ToolResult:
    sig = str(signal).upper() if isinstance(signal, str) else str(signal)
    try:
        ws.process(id).kill(sig)
    except ProcessNotFound:
        raise ToolError(f"cannot signal process {id}: no such process: {id}") from None
    except SandboxError as e:
        raise ToolError(f"cannot signal process {id}: {e}") from None
    deadline = time.monotonic() + STOP_WAIT
    row = _find_process(ws, id)
    while row.get("state") == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
        row = _find_process(ws, id)
    meta = {
        "process_id": id,
        "signal": sig,
        "state": row.get("state"),
        "exit_code": row.get("exit"),
    }
    if row.get("state") == "running":
        return ToolResult(
            f"sent {sig} to process {id}; it is still running after {STOP_WAIT:g} s "
            "(try signal KILL)",
            meta=meta,
        )
    return ToolResult(f"sent {sig} to process {id}: {_process_state(row)}", meta=meta)


def _tool(
    name: str,
    description: str,
    parameters: dict[str, Any],
    fn: Callable[..., ToolResult],
    *,
    cap: int | None = None,
    safe_to_rerun: bool = False,
) -> Tool:
    """A built-in Tool; `cap` (for the tools whose output is capped) is bound to fn. Each
    Tool gets its own schema and its own fn object, as when the tools were closures of
    builtin_tools (load_tools tells tools apart by `fn is`)."""
    run = functools.partial(fn) if cap is None else functools.partial(fn, cap=cap)
    return Tool(name, description, copy.deepcopy(parameters), run, safe_to_rerun=safe_to_rerun)


def builtin_tools(*, output_cap: int = DEFAULT_OUTPUT_CAP) -> list[Tool]:
    """The built-in tools, all executed inside the sandbox; output_cap bounds the text of
    every result (head and tail are kept, and the result says how much was cut)."""
    cap = max(256, output_cap)
    return [
        _tool(
            "shell",
            "Run a command with /bin/sh -c inside the sandbox and return its exit code, "
            f"stdout and stderr (together capped at {cap} bytes: head and tail are kept). "
            "For servers and other long-running programs use start_process.",
            SHELL_PARAMETERS,
            shell,
            cap=cap,
        ),
        _tool(
            "read_file",
            "Read a UTF-8 text file in the sandbox. offset (first line, from 1) and limit "
            f"(number of lines) select part of it; the text is capped at {cap} bytes.",
            READ_FILE_PARAMETERS,
            read_file,
            cap=cap,
            safe_to_rerun=True,
        ),
        _tool(
            "write_file",
            "Write a text file in the sandbox, replacing it if it exists and creating "
            "parent directories as needed.",
            WRITE_FILE_PARAMETERS,
            write_file,
            safe_to_rerun=True,
        ),
        _tool(
            "edit_file",
            "Replace the exact text old with new in a file. Fails if old is not found, or is "
            "found more times than count (default 1) allows.",
            EDIT_FILE_PARAMETERS,
            edit_file,
        ),
        _tool(
            "list_dir",
            "List a directory in the sandbox: type, size and name of each entry, down to "
            "depth levels (default 1).",
            LIST_DIR_PARAMETERS,
            list_dir,
            cap=cap,
            safe_to_rerun=True,
        ),
        _tool(
            "start_process",
            "Start a long-running program (a dev server, a watcher) in the background with "
            "/bin/sh -c; returns its process id. It keeps running across wait points.",
            START_PROCESS_PARAMETERS,
            start_process,
        ),
        _tool(
            "process_output",
            "Show a process's state (running, or exited with its code) and the tail of its "
            "stdout and stderr.",
            PROCESS_OUTPUT_PARAMETERS,
            process_output,
            cap=cap,
            safe_to_rerun=True,
        ),
        _tool(
            "stop_process",
            "Send a signal (default TERM) to a process started with start_process, and its "
            "children, and report whether it exited.",
            STOP_PROCESS_PARAMETERS,
            stop_process,
            safe_to_rerun=True,
        ),
    ]
