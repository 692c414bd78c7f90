"""The agent's tools: built-in tools that act on a sandbox (shell, files, long-running
processes), user-defined Python tools, and the registry that validates and runs calls.

Tools see the sandbox only through the small `Workspace` protocol below, so this module
knows nothing of engines; `torpor.runtime.workspace.SandboxWorkspace` adapts an engine
sandbox to it. A tool is `fn(workspace, **arguments)` returning text (or a `ToolResult`);
`ToolRegistry.run` never raises for a tool's failure, it returns an error result the model
can read.

Custom tools reach every worker through tool modules (`load_tools`): a module that defines
`TOOLS` (Tool objects or plain functions; a `ToolRegistry` is one) and is named with
`--tools pkg.module` on `torpor worker` / `torpor serve`, in `TORPOR_TOOLS`, or under the
`torpor.tools` entry point group of an installed distribution.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import signal as signal_module
import time
import traceback
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import jsonschema

from torpor.agent.types import ToolResult, ToolSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "TOOLS_ENV",
    "Tool",
    "ToolError",
    "ToolModuleError",
    "ToolRegistry",
    "UnknownTool",
    "Workspace",
    "builtin_tools",
    "load_tools",
    "parse_tool_modules",
    "schema_from_signature",
    "tool_from_function",
]

DEFAULT_OUTPUT_CAP = 16384
SHELL_DEFAULT_TIMEOUT = 60.0
SHELL_MAX_TIMEOUT = 600.0
SHELL_KILL_GRACE = 5  # seconds between TERM and KILL when a shell command times out
READ_MAX_BYTES = 10 * 1024 * 1024  # read_file refuses larger files (use shell for parts)
STOP_WAIT = 3.0  # seconds stop_process waits for the process to exit
PROCS_DIR = "/run/torpor/procs"  # torpor-init's per-process output (docs/sandbox-init.md)
INIT = "/.torpor/init"
TOOLS_ENV = "TORPOR_TOOLS"  # comma-separated tool modules, when --tools is not given
ENTRY_POINT_GROUP = "torpor.tools"  # entry points naming tool modules (or tool lists)
HOW_TO_LOAD = (
    "a custom tool must be loaded in every process that runs turns: name its module with "
    "--tools pkg.module (torpor worker, torpor serve) or TORPOR_TOOLS=pkg.module, or "
    f"install it as a {ENTRY_POINT_GROUP} entry point"
)


@runtime_checkable
class Workspace(Protocol):
    """What tools need from a sandbox. torpor.runtime.workspace.SandboxWorkspace
    satisfies it."""

    def exec(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        timeout: float | None = None,
    ) -> Any:  # has .exit_code (int), .stdout and .stderr (bytes)
        ...

    def read_file(self, path: str) -> bytes: ...

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None: ...

    def spawn(
        self, argv: Sequence[str], *, env: Sequence[str] = (), workdir: str | None = None
    ) -> int: ...

    def processes(self) -> list[dict[str, Any]]:  # id, pid, state, exit, argv
        ...


class ToolError(Exception):
    """An expected tool failure: its message alone becomes the error result's content."""


class UnknownTool(KeyError):
    """A tool name this registry does not hold; the message says how to load it."""

    def __str__(self) -> str:  # KeyError's own str() is the repr of its argument
        return str(self.args[0]) if self.args else "unknown tool"


class ToolModuleError(Exception):
    """A tool module (--tools, TORPOR_TOOLS, a torpor.tools entry point) that cannot be
    imported or does not provide tools."""


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object
    fn: Callable[..., str | ToolResult]  # fn(workspace, **arguments)
    safe_to_rerun: bool = False  # may be re-run after a crash without asking the model
    _validator: Any = field(default=None, init=False, repr=False, compare=False)

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)

    def validator(self) -> Any:
        if self._validator is None:
            cls = jsonschema.validators.validator_for(
                self.parameters, default=jsonschema.Draft202012Validator
            )
            cls.check_schema(self.parameters)
            self._validator = cls(self.parameters)
        return self._validator


# ---------------------------------------------------------------------------- registry


class ToolRegistry:
    """The tools of a session, by name. `ToolRegistry()` holds the built-in tools;
    `ToolRegistry([])` none. `register` adds user-defined Python tools (a tool of the
    same name replaces the earlier one)."""

    def __init__(self, tools: Iterable[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in builtin_tools() if tools is None else tools:
            self.add(tool)

    def add(self, tool: Tool) -> Tool:
        """Add a ready-made Tool (its schema is checked now)."""
        try:
            tool.validator()
        except jsonschema.SchemaError as e:
            raise ValueError(f"tool {tool.name!r}: invalid JSON Schema: {e.message}") from None
        self._tools[tool.name] = tool
        return tool

    def register(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
        safe_to_rerun: bool = False,
    ) -> Any:
        """Register a host-side Python function as a tool; usable as `@registry.register`
        or `@registry.register(name=..., safe_to_rerun=True)`. The function receives the
        workspace first, then the call's arguments as keywords. Without `parameters` the
        schema comes from the signature and type hints (str, int, float, bool, Literal,
        list[...], dict[...], X | None; `Annotated[T, "text"]` adds a description).
        The description defaults to the docstring. Returns the function unchanged."""

        def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
            self.add(
                tool_from_function(
                    f,
                    name=name,
                    description=description,
                    parameters=parameters,
                    safe_to_rerun=safe_to_rerun,
                )
            )
            return f

        if fn is not None:
            return decorate(fn)
        return decorate

    def specs(self) -> list[ToolSpec]:
        return [t.spec() for t in self._tools.values()]

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownTool(
                f"unknown tool {name!r}; registered tools: {', '.join(self._tools) or 'none'}; "
                + HOW_TO_LOAD
            ) from None

    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def run(self, name: str, arguments: dict[str, Any], workspace: Workspace) -> ToolResult:
        """Validate and run one call. Never raises for a tool's failure: an unknown tool,
        invalid arguments or an exception inside the tool give an error result."""
        start = time.monotonic()
        result = self._run(name, arguments, workspace)
        result.meta["ms"] = round((time.monotonic() - start) * 1000, 1)
        return result

    def _run(self, name: str, arguments: Any, workspace: Workspace) -> ToolResult:
        tool = self._tools.get(name)
        if tool is None:
            return ToolResult(
                f"unknown tool {name!r}; available tools: {', '.join(self._tools) or 'none'}",
                is_error=True,
                meta={"error": "unknown_tool"},
            )
        if isinstance(arguments, dict) and set(arguments) == {"_raw"}:
            raw = str(arguments["_raw"])
            shown = raw if len(raw) <= 500 else raw[:500] + "..."
            return ToolResult(
                f"invalid arguments for {name}: not a valid JSON object: {shown}",
                is_error=True,
                meta={"error": "invalid_arguments"},
            )
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return ToolResult(
                f"invalid arguments for {name}: expected a JSON object, "
                f"got {type(arguments).__name__}",
                is_error=True,
                meta={"error": "invalid_arguments"},
            )
        problems = _validation_errors(tool, arguments)
        if problems:
            return ToolResult(
                f"invalid arguments for {name}: {'; '.join(problems)}",
                is_error=True,
                meta={"error": "invalid_arguments"},
            )
        try:
            out = tool.fn(workspace, **_coerce_integers(tool.parameters, arguments))
        except ToolError as e:
            return ToolResult(f"{name}: {e}", is_error=True, meta={"error": "tool_error"})
        except Exception as e:
            return ToolResult(
                f"tool {name} failed: {type(e).__name__}: {e}",
                is_error=True,
                meta={
                    "error": "exception",
                    "exception": type(e).__name__,
                    "traceback": traceback.format_exc()[-4000:],
                },
            )
        if isinstance(out, ToolResult):
            return out
        return ToolResult(out if isinstance(out, str) else str(out))


def tool_from_function(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    safe_to_rerun: bool = False,
) -> Tool:
    """A Tool from a host-side Python function (see `ToolRegistry.register`)."""
    tool_name = name or fn.__name__
    desc = description if description is not None else (inspect.getdoc(fn) or tool_name)
    schema = parameters if parameters is not None else schema_from_signature(fn)
    return Tool(tool_name, desc, schema, fn, safe_to_rerun=safe_to_rerun)


def _validation_errors(tool: Tool, arguments: dict[str, Any]) -> list[str]:
    errors = sorted(
        tool.validator().iter_errors(arguments),
        key=lambda e: ([str(p) for p in e.path], e.message),
    )
    out = []
    for e in errors:
        where = "/".join(str(p) for p in e.path)
        out.append(f"{where}: {e.message}" if where else e.message)
    return out


def _coerce_integers(schema: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema accepts 3.0 as an integer; hand Python functions an int."""
    props = schema.get("properties", {})
    out = dict(arguments)
    for key, value in arguments.items():
        types_ = props.get(key, {}).get("type") if isinstance(props.get(key), dict) else None
        wants_int = types_ == "integer" or (isinstance(types_, list) and "integer" in types_)
        if wants_int and isinstance(value, float) and value.is_integer():
            out[key] = int(value)
    return out


# ---------------------------------------------------------------------- schema from hints

_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    list: {"type": "array"},
    tuple: {"type": "array"},
    dict: {"type": "object"},
    type(None): {"type": "null"},
    Any: {},
}


def _type_schema(hint: Any, where: str) -> dict[str, Any]:
    if hint in _SIMPLE:
        return dict(_SIMPLE[hint])
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        inner = _type_schema(args[0], where)
        notes = [a for a in args[1:] if isinstance(a, str)]
        if notes:
            inner["description"] = " ".join(notes)
        return inner
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        parts = [_type_schema(a, where) for a in args]
        simple = [p.get("type") for p in parts]
        if all(isinstance(t, str) for t in simple) and all(len(p) == 1 for p in parts):
            return {"type": simple}
        return {"anyOf": parts}
    if origin in (list, tuple, set, frozenset, Sequence, Iterable):
        schema: dict[str, Any] = {"type": "array"}
        if args and args[-1] is not Ellipsis:
            schema["items"] = _type_schema(args[0], where)
        return schema
    if origin is dict or origin is typing.Mapping:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = _type_schema(args[1], where)
        return schema
    raise TypeError(
        f"cannot derive a JSON Schema for {where} (type {hint!r}): use str, int, float, "
        "bool, Literal, list[...], dict[...] or X | None, or pass parameters= explicitly"
    )


def schema_from_signature(fn: Callable[..., Any]) -> dict[str, Any]:
    """JSON Schema for a tool function's arguments: every parameter after the first
    (the workspace)."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as e:
        raise TypeError(f"cannot resolve the type hints of {fn.__name__}: {e}") from None
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(
            f"tool function {fn.__name__} must take the workspace as its first argument"
        )
    properties: dict[str, Any] = {}
    required: list[str] = []
    extra = False
    for p in params[1:]:
        where = f"parameter {p.name!r} of {fn.__name__}"
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            extra = True
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise TypeError(f"{where}: tool arguments are passed by keyword")
        prop = _type_schema(hints[p.name], where) if p.name in hints else {}
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        elif p.default is None or isinstance(p.default, str | int | float | bool):
            prop["default"] = p.default
        properties[p.name] = prop
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": extra,
    }
    if required:
        schema["required"] = required
    return schema


# ------------------------------------------------------------------------ tool modules


def parse_tool_modules(text: str | None) -> list[str]:
    """'pkg.a, pkg.b' -> ['pkg.a', 'pkg.b']: the form of --tools and TORPOR_TOOLS."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def load_tools(
    modules: str | Iterable[str] | None = None, *, entry_points: bool = True
) -> ToolRegistry:
    """The tools of a process that runs turns: the built-in ones, then those of each named
    module, then those of the `torpor.tools` entry points. `modules` None reads
    TORPOR_TOOLS; a string is comma-separated; [] names none.

    A tool module defines `TOOLS`: an iterable of Tool objects or plain functions (made
    tools as by `ToolRegistry.register`; a ToolRegistry is such an iterable). An entry
    point names a tool module (`name = pkg.module`) or, as `pkg.module:attr`, such an
    iterable, a Tool or a function. A module's tool replaces a built-in one of its name;
    two modules defining one name is an error. Raises ToolModuleError, one line naming the
    module and what is wrong, for a module that cannot be imported or provides no tools."""
    origin = f" (from {TOOLS_ENV})" if modules is None else ""
    if modules is None:
        modules = os.environ.get(TOOLS_ENV, "")
    if isinstance(modules, str):
        names = parse_tool_modules(modules)
    else:
        names = [m.strip() for m in modules if m.strip()]
    loaded = []
    for name in dict.fromkeys(names):
        where = f"tool module {name!r}{origin}"
        loaded.append((where, _tools_of(_import(name, where), where)))
    if entry_points:
        loaded.extend(_entry_point_tools())
    registry = ToolRegistry()
    sources: dict[str, str] = {}  # tool name -> the module that gave it
    for where, tools in loaded:
        for tool in tools:
            first = sources.get(tool.name)
            if first is not None:
                if registry.get(tool.name).fn is tool.fn:
                    continue  # the same tool named twice (by --tools and an entry point)
                raise ToolModuleError(f"{where} defines the tool {tool.name!r}, and so does "
                                      f"{first}: rename one of them")  # fmt: skip
            try:
                registry.add(tool)
            except ValueError as e:
                raise ToolModuleError(f"{where}: {e}") from None
            sources[tool.name] = where
    return registry


def _one_line(e: BaseException) -> str:
    """An exception as one line: type, message, and where it was raised."""
    text = f"{type(e).__name__}: {' '.join(str(e).split())}"
    frames = traceback.extract_tb(e.__traceback__)
    if frames and not isinstance(e, SyntaxError):  # a SyntaxError's message says where
        text += f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return text


def _import(name: str, where: str) -> types.ModuleType:
    if not all(part.isidentifier() for part in name.split(".")):
        raise ToolModuleError(f"{where} is not a module name: write pkg.module (its "
                              "directory on PYTHONPATH, or its package installed)")  # fmt: skip
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise ToolModuleError(
                f"{where} cannot be imported: no module named {e.name!r} in this process "
                "(check the name, and that its package is installed or its directory is "
                "on PYTHONPATH)"
            ) from None
        raise ToolModuleError(f"{where} failed to import: {_one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - whatever the module's own code raised
        raise ToolModuleError(f"{where} failed to import: {_one_line(e)}") from None


def _tools_of(obj: Any, where: str) -> list[Tool]:
    """The tools a module (its TOOLS) or an entry point's object provides."""
    if isinstance(obj, types.ModuleType):
        if not hasattr(obj, "TOOLS"):
            raise ToolModuleError(
                f"{where} provides no tools: define TOOLS at module level, a list of Tool "
                "objects or functions (or a ToolRegistry)"
            )
        obj, where = obj.TOOLS, f"{where} (its TOOLS)"
    items = [obj] if isinstance(obj, Tool) or callable(obj) else obj
    if isinstance(items, str | bytes | dict) or not isinstance(items, Iterable):
        raise ToolModuleError(f"{where}: expected a list of Tool objects or functions, "
                              f"not {type(obj).__name__}")  # fmt: skip
    tools: list[Tool] = []
    for item in items:
        if isinstance(item, Tool):
            tools.append(item)
        elif callable(item):
            try:
                tools.append(tool_from_function(item))
            except TypeError as e:
                raise ToolModuleError(f"{where}: {e}") from None
        else:
            raise ToolModuleError(f"{where}: {item!r} is neither a Tool nor a function")
    if not tools:
        raise ToolModuleError(f"{where} provides no tools (it is empty)")
    return tools


def _entry_point_tools() -> list[tuple[str, list[Tool]]]:
    out = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep.dist, "name", None)
        where = f"entry point '{ep.name} = {ep.value}' ({ENTRY_POINT_GROUP}" + (
            f", of {dist})" if dist else ")")  # fmt: skip
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - whatever the module's own code raised
            raise ToolModuleError(f"{where} failed to load: {_one_line(e)}") from None
        out.append((where, _tools_of(obj, where)))
    return out


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
    script = 'stat -L -c "%F|%s" -- "$1" && readlink -f -- "$1"'
    res = ws.exec(["/bin/sh", "-c", script, "sh", path])
    if res.exit_code != 0:
        msg = _stderr_text(res)
        if "No such file" in msg:
            raise ToolError(f"{path}: no such file or directory")
        raise ToolError(f"cannot stat {path}: {msg or _describe_exit(res.exit_code)}")
    lines = bytes(res.stdout).decode(errors="replace").splitlines()
    kind, _, size = lines[0].rpartition("|")
    resolved = lines[1] if len(lines) > 1 else path
    if kind.startswith("regular"):
        kind = "file"
    elif kind != "directory":
        kind = "other"
    return kind, int(size), resolved


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


def builtin_tools(*, output_cap: int = DEFAULT_OUTPUT_CAP) -> list[Tool]:
    """The built-in tools, all executed inside the sandbox; output_cap bounds the text of
    every result (head and tail are kept, and the result says how much was cut)."""
    cap = max(256, output_cap)

    def shell(
        ws: Workspace, command: str, timeout: float | None = None, cwd: str | None = None
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
                f"[output truncated: {cut} of {len(out) + len(err)} bytes cut; "
                f"the cap is {cap} bytes]"
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

    def read_file(
        ws: Workspace, path: str, offset: int | None = None, limit: int | None = None
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

    def write_file(ws: Workspace, path: str, content: str) -> ToolResult:
        data = content.encode()
        _write(ws, _absolute(path), data)
        return ToolResult(
            f"wrote {len(data)} bytes to {path}", meta={"path": path, "bytes": len(data)}
        )

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

    def list_dir(ws: Workspace, path: str, depth: int = 1) -> ToolResult:
        _absolute(path)
        script = (
            '[ -d "$1" ] || { [ -e "$1" ] && echo "$1 is not a directory" >&2 '
            '|| echo "$1: no such file or directory" >&2; exit 2; }; '
            'find -H "$1" -mindepth 1 -maxdepth "$2" -printf \'%y\\t%s\\t%P\\t%l\\0\''
        )
        res = ws.exec(["/bin/sh", "-c", script, "sh", path, str(depth)])
        if res.exit_code == 2:
            raise ToolError(_stderr_text(res))
        entries = []
        for record in bytes(res.stdout).decode(errors="replace").split("\0"):
            if not record:
                continue
            kind, size, rel, target = (record.split("\t", 3) + ["", "", "", ""])[:4]
            entries.append((rel, kind, size, target))
        entries.sort()
        kinds = {"d": "dir", "f": "file", "l": "link"}
        lines = []
        for rel, kind, size, target in entries:
            label = kinds.get(kind, "other")
            if kind == "d":
                lines.append(f"dir   {'-':>10}  {rel}/")
            elif kind == "l":
                lines.append(f"link  {'-':>10}  {rel} -> {target}")
            else:
                lines.append(f"{label:<5} {size:>10}  {rel}")
        header = f"{path}: {len(entries)} entries (depth {depth}; type, size in bytes, name)"
        body = "\n".join(lines)
        shown, cut = _cut(body.encode(), cap)
        text = header + ("\n" + shown if lines else "\n(empty)")
        if cut:
            text += f"\n[listing truncated: {cut} bytes cut; the cap is {cap} bytes]"
        warn = _stderr_text(res)
        if res.exit_code != 0 and warn:
            text += "\nwarnings:\n" + warn[-1000:]
        return ToolResult(
            text, meta={"path": path, "entries": len(entries), "truncated_bytes": cut}
        )

    def start_process(ws: Workspace, command: str, cwd: str | None = None) -> ToolResult:
        pid = ws.spawn(["/bin/sh", "-c", command], workdir=cwd or None)
        return ToolResult(
            f"started process {pid}: {command}\n"
            f"Its output is kept: see it with process_output (id {pid}); "
            "stop it with stop_process.",
            meta={"process_id": pid},
        )

    def _find(ws: Workspace, pid: int) -> dict[str, Any]:
        for row in ws.processes():
            if int(row.get("id", -1)) == pid:
                return row
        raise ToolError(f"no process with id {pid} (ids come from start_process)")

    def _state(row: dict[str, Any]) -> str:
        if row.get("state") == "running":
            return "running"
        return f"exited with {_describe_exit(row.get('exit'))}"

    def process_output(ws: Workspace, id: int, tail_bytes: int = 4096) -> ToolResult:
        row = _find(ws, id)
        want = min(max(0, tail_bytes), cap // 2)
        parts = [f"process {id}: {_state(row)}", f"command: {row.get('argv', '')}"]
        meta: dict[str, Any] = {
            "process_id": id,
            "state": row.get("state"),
            "exit_code": row.get("exit"),
        }
        for stream in ("stdout", "stderr"):
            try:
                data = ws.read_file(f"{PROCS_DIR}/{id}/{stream}")
            except Exception as e:
                parts.append(f"{stream}: cannot read ({e})")
                continue
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

    def stop_process(ws: Workspace, id: int, signal: str | int = "TERM") -> ToolResult:
        sig = str(signal).upper() if isinstance(signal, str) else str(signal)
        res = ws.exec([INIT, "kill", str(id), sig])
        if res.exit_code != 0:
            msg = _stderr_text(res).removeprefix("torpor-init:").strip()
            raise ToolError(f"cannot signal process {id}: {msg or _describe_exit(res.exit_code)}")
        deadline = time.monotonic() + STOP_WAIT
        row = _find(ws, id)
        while row.get("state") == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
            row = _find(ws, id)
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
        return ToolResult(f"sent {sig} to process {id}: {_state(row)}", meta=meta)

    nullable_str = {"type": ["string", "null"]}
    obj = {"type": "object", "additionalProperties": False}
    return [
        Tool(
            "shell",
            "Run a command with /bin/sh -c inside the sandbox and return its exit code, "
            f"stdout and stderr (together capped at {cap} bytes: head and tail are kept). "
            "For servers and other long-running programs use start_process.",
            {
                **obj,
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
                    "cwd": {**nullable_str, "description": "working directory"},
                },
                "required": ["command"],
            },
            shell,
        ),
        Tool(
            "read_file",
            "Read a UTF-8 text file in the sandbox. offset (first line, from 1) and limit "
            f"(number of lines) select part of it; the text is capped at {cap} bytes.",
            {
                **obj,
                "properties": {
                    "path": {"type": "string", "description": "absolute path"},
                    "offset": {"type": ["integer", "null"], "minimum": 1},
                    "limit": {"type": ["integer", "null"], "minimum": 0},
                },
                "required": ["path"],
            },
            read_file,
            safe_to_rerun=True,
        ),
        Tool(
            "write_file",
            "Write a text file in the sandbox, replacing it if it exists and creating "
            "parent directories as needed.",
            {
                **obj,
                "properties": {
                    "path": {"type": "string", "description": "absolute path"},
                    "content": {"type": "string"},
                },
                "required": ["path", "content"],
            },
            write_file,
            safe_to_rerun=True,
        ),
        Tool(
            "edit_file",
            "Replace the exact text old with new in a file. Fails if old is not found, or is "
            "found more times than count (default 1) allows.",
            {
                **obj,
                "properties": {
                    "path": {"type": "string", "description": "absolute path"},
                    "old": {"type": "string", "minLength": 1},
                    "new": {"type": "string"},
                    "count": {"type": "integer", "minimum": 1, "default": 1},
                },
                "required": ["path", "old", "new"],
            },
            edit_file,
        ),
        Tool(
            "list_dir",
            "List a directory in the sandbox: type, size and name of each entry, down to "
            "depth levels (default 1).",
            {
                **obj,
                "properties": {
                    "path": {"type": "string", "description": "absolute path"},
                    "depth": {"type": "integer", "minimum": 1, "maximum": 20, "default": 1},
                },
                "required": ["path"],
            },
            list_dir,
            safe_to_rerun=True,
        ),
        Tool(
            "start_process",
            "Start a long-running program (a dev server, a watcher) in the background with "
            "/bin/sh -c; returns its process id. It keeps running across wait points.",
            {
                **obj,
                "properties": {
                    "command": {"type": "string"},
                    "cwd": {**nullable_str, "description": "working directory"},
                },
                "required": ["command"],
            },
            start_process,
        ),
        Tool(
            "process_output",
            "Show a process's state (running, or exited with its code) and the tail of its "
            "stdout and stderr.",
            {
                **obj,
                "properties": {
                    "id": {"type": "integer", "description": "id from start_process"},
                    "tail_bytes": {"type": "integer", "minimum": 0, "default": 4096},
                },
                "required": ["id"],
            },
            process_output,
            safe_to_rerun=True,
        ),
        Tool(
            "stop_process",
            "Send a signal (default TERM) to a process started with start_process, and its "
            "children, and report whether it exited.",
            {
                **obj,
                "properties": {
                    "id": {"type": "integer"},
                    "signal": {
                        "type": ["string", "integer"],
                        "default": "TERM",
                        "description": "name (TERM, KILL, INT, HUP) or number",
                    },
                },
                "required": ["id"],
            },
            stop_process,
            safe_to_rerun=True,
        ),
    ]
