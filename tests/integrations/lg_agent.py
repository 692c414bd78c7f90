"""A LangGraph agent for the tests: an agent node whose model is scripted (no network)
and a tool node (LangGraph's `ToolNode`) whose tool prints text of a chosen size.

Each user message starts a turn: the agent calls the `shell` tool `calls` times, one
call per model step, then answers in text. Message ids are deterministic (the agent's
from the turn and step, the tools' from the call id) so that two runs compare equal.
"""

from __future__ import annotations

import hashlib
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition


def output(command: str, size: int) -> str:
    """Deterministic text of about `size` bytes, as a command would print."""
    lines, n = [], 0
    while n < size:
        h = hashlib.sha256(f"{command}/{len(lines)}".encode()).hexdigest()
        line = f"{len(lines):04d} ok {h[:40]}\n"
        lines.append(line)
        n += len(line)
    return "".join(lines)[:size]


def build(*, calls: int = 2, size: int = 300) -> StateGraph:
    """The graph's builder (compile it with a checkpointer)."""

    @tool
    def shell(command: str) -> str:
        """Run a shell command."""
        return output(command, size)

    def agent(state: MessagesState) -> dict[str, Any]:
        msgs = state["messages"]
        turn = sum(isinstance(m, HumanMessage) for m in msgs)
        since = len(msgs) - max(i for i, m in enumerate(msgs) if isinstance(m, HumanMessage))
        done = sum(isinstance(m, ToolMessage) for m in msgs[-since:])
        if done < calls:
            call = f"call-{turn}-{done}"
            return {"messages": [AIMessage(
                content="", id=f"ai-{turn}-{done}",
                tool_calls=[{"name": "shell", "id": call,
                             "args": {"command": f"make test TURN={turn} STEP={done}"}}])]}
        return {"messages": [AIMessage(content=f"Turn {turn} done.", id=f"ai-{turn}-end")]}

    def tools(state: MessagesState) -> dict[str, Any]:
        out = ToolNode([shell]).invoke(state)
        for m in out["messages"]:
            m.id = f"tool-{m.tool_call_id}"
        return out

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", tools)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder


def user(turn: int) -> dict[str, Any]:
    return {"messages": [HumanMessage(content=f"Please do feature {turn}.", id=f"user-{turn}")]}


def plain(messages: list[Any]) -> list[tuple[str, Any, Any]]:
    """Messages as comparable tuples (type, id, content, tool calls or call id)."""
    return [(m.type, m.id, m.content, getattr(m, "tool_calls", None)
             or getattr(m, "tool_call_id", None)) for m in messages]


__all__ = ["END", "build", "output", "plain", "user"]
