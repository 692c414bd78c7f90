"""The agent's tools, in one import: built-in tools that act on a sandbox (shell, files,
long-running processes), user-defined Python tools, and the registry that validates and
runs calls. This module only re-exports; the code lives in

- `torpor.agent.tool`: `Tool`, the `Workspace` protocol, `ToolError`, `UnknownTool` (the
  base the other modules build on);
- `torpor.agent.registry`: `ToolRegistry` (validation, running a call; the built-in tools
  by default), `tool_from_function`;
- `torpor.agent.schemas`: `schema_from_signature`, JSON Schemas from type hints;
- `torpor.agent.tool_modules`: `load_tools` and tool modules (`--tools`, `TORPOR_TOOLS`,
  `torpor.tools` entry points), `ToolModuleError`;
- `torpor.agent.builtins`: `builtin_tools` and the tools themselves.

Tools see the sandbox only through the small `Workspace` protocol, so none of these
modules knows of engines; `torpor.runtime.workspace.SandboxWorkspace` adapts an engine
sandbox to it.
"""

from __future__ import annotations

from torpor.agent.builtins import builtin_tools
from torpor.agent.registry import (
    ENTRY_POINT_GROUP,
    Tool,
    ToolError,
    ToolRegistry,
    UnknownTool,
    Workspace,
    tool_from_function,
)
from torpor.agent.schemas import schema_from_signature
from torpor.agent.tool_modules import TOOLS_ENV, ToolModuleError, load_tools, parse_tool_modules

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
