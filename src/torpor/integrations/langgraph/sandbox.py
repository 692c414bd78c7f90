"""`SandboxTools`: a LangGraph graph's tools run in a torpor sandbox that sleeps, whole
(processes and memory), while the graph waits for a human, and wakes up where the graph
resumes: in this process or in another one.

    from torpor.integrations.langgraph import SandboxMessagesState, SandboxTools, TorporSaver

    box = SandboxTools(image="base")             # tools: shell, start_process, read/write_file
    model = model.bind_tools(box.tools)          # LangChain tools, for the model
    builder = StateGraph(SandboxMessagesState)   # messages + "sandbox"
    builder.add_node("agent", agent)
    builder.add_node("tools", box.node)          # runs the tool calls in the sandbox
    builder.add_node("sleep", box.sleep)         # checkpoint the sandbox, remove it
    builder.add_node("human", human)             # calls langgraph.types.interrupt()
    ...                                          # agent -> tools | sleep; sleep -> human
    graph = builder.compile(checkpointer=TorporSaver(url))

The sandbox lives in the graph's state, under `key` ("sandbox"): `{"id": ..., "checkpoint":
...}`, the id of the running sandbox and the id of its latest checkpoint. The tool node
makes the sandbox when a tool first runs, and wakes it when it sleeps: it restores the
checkpoint named in the state (on this machine's engine, so a process that resumes the
graph from its saver gets the processes, memory and files the sandbox had). The sleep
node checkpoints the sandbox and removes it, so nothing is held while the graph waits,
and writes the checkpoint's id to the state; put it before a node that interrupts (a node
that interrupts loses its own writes, so the sleep must be a node of its own), and before
END if the sandbox should not run between turns.

A tool is a function whose first parameter is the `Sandbox` (`def shell(sandbox,
command: str) -> str`); the model sees the rest of its signature and its docstring. A
tool that raises answers the model with the error (`status="error"`), as LangGraph's
ToolNode does. A sandbox that vanished while running (its process died, it was reaped)
is replaced by a restore of its latest checkpoint, else by a new one, and the tool's
answer says so. Sandboxes are owned by the process that runs them (owner kind
`runtime`: reaped by torpor if that process dies); their checkpoints are kept, so a
graph can travel back to an earlier state (remove them with `Checkpoint.remove`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NotRequired

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.graph import MessagesState

from torpor.sandbox import Sandbox, SandboxNotFound, default_engine
from torpor.sandbox.engine import Engine
from torpor.sandbox.owners import this_process

log = logging.getLogger(__name__)

OUTPUT_CAP = 64 * 1024  # bytes of a command's output a built-in tool answers with


class SandboxMessagesState(MessagesState):
    """`MessagesState` plus the sandbox (`{"id", "checkpoint"}`) that `SandboxTools` keeps
    under its default key."""

    sandbox: NotRequired[dict[str, Any]]


# ------------------------------------------------------------------ built-in tools

def _text(data: bytes) -> str:
    text = data[:OUTPUT_CAP].decode(errors="replace")
    return text + (f"\n[{len(data) - OUTPUT_CAP} bytes cut]" if len(data) > OUTPUT_CAP else "")


def shell(sandbox: Sandbox, command: str, timeout: float = 120) -> str:
    """Run a command with /bin/sh -c in the sandbox; returns its exit code and output."""
    res = sandbox.exec(command, timeout=timeout)
    parts = [f"exit code {res.exit_code}"]
    if res.stdout:
        parts.append("stdout:\n" + _text(res.stdout))
    if res.stderr:
        parts.append("stderr:\n" + _text(res.stderr))
    return "\n".join(parts)


def start_process(sandbox: Sandbox, command: str) -> str:
    """Start a long-running command (a server, a watcher) in the background of the
    sandbox; it keeps running, across sleeps, until it exits."""
    return f"started process {sandbox.spawn(command).id}: {command}"


def read_file(sandbox: Sandbox, path: str) -> str:
    """Read a text file of the sandbox (an absolute path)."""
    return _text(sandbox.files.read(path))


def write_file(sandbox: Sandbox, path: str, content: str) -> str:
    """Write a text file in the sandbox (an absolute path; parent directories are made)."""
    sandbox.files.write(path, content)
    return f"wrote {len(content.encode())} bytes to {path}"


BUILTINS = (shell, start_process, read_file, write_file)


def as_langchain_tool(fn: Callable[..., Any]) -> BaseTool:
    """The LangChain tool a model is shown for `fn`: its name, docstring and parameters
    but the first (the sandbox, which the tool node passes)."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1:]
    hints = {k: v for k, v in inspect.get_annotations(fn, eval_str=True).items()
             if k in {p.name for p in params} or k == "return"}

    @functools.wraps(fn)
    def shown(**kwargs: Any) -> Any:  # never called: the tool node runs `fn`
        raise RuntimeError(f"{fn.__name__} runs in a sandbox: use SandboxTools.node")

    shown.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    shown.__annotations__ = hints
    return StructuredTool.from_function(func=shown, name=fn.__name__,
                                        description=inspect.getdoc(fn) or fn.__name__)


# ------------------------------------------------------------------ the helper

class SandboxTools:
    """Tools run in a torpor sandbox kept in a graph's state (see the module's docstring).

    tools: functions taking the `Sandbox` first (default: shell, start_process,
    read_file, write_file). image and create: how a new sandbox is made
    (`Sandbox.create(image, **create)`: memory, env, network, ...). engine: default
    `torpor.sandbox.default_engine()` (TORPOR_HOME). key: the state's key."""

    def __init__(self, tools: Sequence[Callable[..., Any]] = BUILTINS, *, image: str = "base",
                 engine: Engine | None = None, key: str = "sandbox",
                 create: Mapping[str, Any] | None = None) -> None:
        self.functions = {fn.__name__: fn for fn in tools}
        self.image = image
        self._engine = engine
        self.key = key
        self.create_options = dict(create or {})

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = default_engine()
        return self._engine

    @functools.cached_property
    def tools(self) -> list[BaseTool]:
        """The tools as LangChain tools, for `model.bind_tools`."""
        return [as_langchain_tool(fn) for fn in self.functions.values()]

    def _owner(self) -> dict[str, Any]:
        return this_process("runtime")

    def sandbox(self, state: Mapping[str, Any]) -> tuple[Sandbox, dict[str, Any], str]:
        """The state's sandbox, running: the live one, else a restore of its checkpoint,
        else a new one. Returns (handle, the state's new sandbox entry, a note for the
        model when the live sandbox was lost, else "")."""
        entry = dict(state.get(self.key) or {})
        if entry.get("id"):
            try:
                sb = Sandbox.get(entry["id"], engine=self.engine)
                if sb.last_info is not None and sb.last_info.state == "running":
                    return sb, entry, ""
                sb.remove(force=True)
            except SandboxNotFound:
                pass
            note = (f"[the sandbox {entry['id']} was lost; "
                    + (f"restored from its checkpoint {entry['checkpoint']}]"
                       if entry.get("checkpoint") else "started a new one]"))
            log.warning("%s", note.strip("[]"))
        else:
            note = ""
        if entry.get("checkpoint"):
            sb = Sandbox.restore(entry["checkpoint"], engine=self.engine, owner=self._owner())
        else:
            sb = Sandbox.create(self.image, engine=self.engine, owner=self._owner(),
                                **self.create_options)
        return sb, {**entry, "id": sb.id}, note

    def node(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The tool node: run the tool calls of the last AI message in the sandbox (woken
        or made first when needed); answers with a ToolMessage per call."""
        last = state["messages"][-1]
        calls = last.tool_calls if isinstance(last, AIMessage) else []
        if not calls:
            return {}
        sb, entry, note = self.sandbox(state)
        out = []
        for call in calls:
            fn = self.functions.get(call["name"])
            try:
                if fn is None:
                    raise ValueError(f"no tool named {call['name']!r} "
                                     f"(tools: {', '.join(self.functions)})")
                text, status = str(fn(sb, **call["args"])), "success"
            except Exception as e:  # the model is told, as LangGraph's ToolNode does
                text, status = f"Error: {type(e).__name__}: {e}", "error"
            if note:
                text, note = f"{note}\n{text}", ""
            out.append(ToolMessage(content=text, tool_call_id=call["id"], name=call["name"],
                                   status=status))
        return {"messages": out, self.key: entry}

    def sleep(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The sleep node: checkpoint the running sandbox whole and remove it; the state
        keeps the checkpoint's id (the tool node restores it when a tool runs next).
        Nothing to do when there is no running sandbox."""
        entry = dict(state.get(self.key) or {})
        if not entry.get("id"):
            return {}
        try:
            sb = Sandbox.get(entry["id"], engine=self.engine)
        except SandboxNotFound:  # lost: the next tool call restores the last checkpoint
            return {self.key: {**entry, "id": None}}
        checkpoint = sb.checkpoint(leave_running=False)
        sb.remove(force=True)
        return {self.key: {**entry, "id": None, "checkpoint": checkpoint.id}}


__all__ = ["BUILTINS", "SandboxMessagesState", "SandboxTools", "as_langchain_tool",
           "read_file", "shell", "start_process", "write_file"]
