"""What a tool is: `Tool`, the `Workspace` protocol a tool acts on, and the exceptions a
tool call may end in (`ToolError`, `UnknownTool`). The base of the agent's tool modules:
`torpor.agent.builtins` builds its tools from it, `torpor.agent.registry` holds and runs
them; it imports neither.

Tools see the sandbox only through the small `Workspace` protocol below, so this module
knows nothing of engines; `torpor.runtime.workspace.SandboxWorkspace` gives it on a
`torpor.sandbox.Sandbox` handle, whose files and processes it offers as they are
(`files`, `process`). A tool is `fn(workspace, **arguments)` returning text (or a
`ToolResult`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import jsonschema

from torpor.agent.types import ToolResult, ToolSpec
from torpor.sandbox.handle import Process, SandboxFiles

__all__ = ["Tool", "ToolError", "UnknownTool", "Workspace"]


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

    @property
    def files(self) -> SandboxFiles:  # list, stat, read, write, ... (torpor.sandbox.handle)
        ...

    def process(self, id: int) -> Process:  # output, kill, wait, ... of a spawned process
        ...


class ToolError(Exception):
    """An expected tool failure: its message alone becomes the error result's content."""


class UnknownTool(KeyError):
    """A tool name this registry does not hold; the message says how to load it."""

    def __str__(self) -> str:  # KeyError's own str() is the repr of its argument
        return str(self.args[0]) if self.args else "unknown tool"


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
