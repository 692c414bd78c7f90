"""The tool registry: the `ToolRegistry` that holds a session's tools by name (the
built-in ones by default), validates each call's arguments against the tool's JSON Schema
and runs it. What a tool is (`Tool`), the `Workspace` a tool acts on and `ToolError`,
`UnknownTool` live in `torpor.agent.tool` and are re-exported here.

Tools see the sandbox only through the small `Workspace` protocol, so this module
knows nothing of engines; `torpor.runtime.workspace.SandboxWorkspace` adapts an engine
sandbox to it. A tool is `fn(workspace, **arguments)` returning text (or a `ToolResult`);
`ToolRegistry.run` never raises for a tool's failure, it returns an error result the model
can read.
"""

from __future__ import annotations

import inspect
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jsonschema

from torpor.agent.builtins import builtin_tools
from torpor.agent.schemas import schema_from_signature
from torpor.agent.tool import Tool, ToolError, UnknownTool, Workspace
from torpor.agent.types import ToolResult, ToolSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "Tool",
    "ToolError",
    "ToolRegistry",
    "UnknownTool",
    "Workspace",
    "tool_from_function",
]

# Here rather than in torpor.agent.tool_modules (which imports this module), because the
# registry's unknown-tool message says how to load a tool.
ENTRY_POINT_GROUP = "torpor.tools"  # entry points naming tool modules (or tool lists)
HOW_TO_LOAD = (
    "a custom tool must be loaded in every process that runs turns: name its module with "
    "--tools pkg.module (torpor worker, torpor serve) or TORPOR_TOOLS=pkg.module, or "
    f"install it as a {ENTRY_POINT_GROUP} entry point"
)


# ---------------------------------------------------------------------------- registry


class ToolRegistry:
    """The tools of a session, by name. `ToolRegistry()` holds the built-in tools;
    `ToolRegistry([])` none. `register` adds user-defined Python tools (a tool of the
    same name replaces the earlier one)."""

    def __init__(self, tools: Iterable[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        if tools is None:
            tools = builtin_tools()
        for tool in tools:
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
