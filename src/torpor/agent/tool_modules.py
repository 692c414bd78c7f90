"""Tool modules: how a process that runs turns gets its custom tools (`load_tools`).

Custom tools reach every worker through tool modules: a module that defines `TOOLS`
(Tool objects or plain functions; a `ToolRegistry` is one) and is named with
`--tools pkg.module` on `torpor worker` / `torpor serve`, in `TORPOR_TOOLS`, or under the
`torpor.tools` entry point group of an installed distribution. A module that cannot be
imported or provides no tools is a one-line `ToolModuleError`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
import types
from collections.abc import Iterable
from typing import Any

from torpor.agent.registry import ENTRY_POINT_GROUP, Tool, ToolRegistry, tool_from_function

__all__ = [
    "ENTRY_POINT_GROUP",
    "TOOLS_ENV",
    "ToolModuleError",
    "load_tools",
    "parse_tool_modules",
]

TOOLS_ENV = "TORPOR_TOOLS"  # comma-separated tool modules, when --tools is not given


class ToolModuleError(Exception):
    """A tool module (--tools, TORPOR_TOOLS, a torpor.tools entry point) that cannot be
    imported or does not provide tools."""


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
