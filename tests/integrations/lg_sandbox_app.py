"""A LangGraph graph whose tools run in a torpor sandbox and which waits for a human, run
as its own process by tests/integrations/test_langgraph_sandbox.py:

    python -m tests.integrations.lg_sandbox_app DB_URL THREAD start|resume

`start` runs it from a user message to its interrupt: the agent (scripted) writes a
program holding a random token in memory, starts it in the background, asks it for the
token, then asks a human for approval (the sandbox goes to sleep: checkpointed, removed).
`resume` answers the human (another process, later) and runs it to its end: the agent
asks the program again. Prints the thread's state as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from torpor.integrations.langgraph import SandboxMessagesState, SandboxTools, TorporSaver

HOLDER = """\
import os, socket
token, count = os.urandom(8).hex(), 0
try:
    os.unlink('/tmp/holder.sock')
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX)
srv.bind('/tmp/holder.sock')
srv.listen()
while True:
    conn, _ = srv.accept()
    with conn:
        count += 1
        conn.sendall(f'{token} {count}'.encode())
"""
ASK = """\
import socket, time
for _ in range(200):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect('/tmp/holder.sock')
        break
    except OSError:
        time.sleep(0.05)
print('holder', s.recv(64).decode())
"""
STEPS: list[dict[str, Any]] = [
    {"calls": [("write_file", {"path": "/work/holder.py", "content": HOLDER}),
               ("write_file", {"path": "/work/ask.py", "content": ASK})]},
    {"calls": [("start_process", {"command": "python3 /work/holder.py"})]},
    {"calls": [("shell", {"command": "python3 /work/ask.py"})]},
    {"text": "APPROVAL: the holder runs; may I go on?"},
    {"calls": [("shell", {"command": "python3 /work/ask.py"})]},
    {"text": "Done."},
]


def agent(state: SandboxMessagesState) -> dict[str, Any]:
    i = sum(isinstance(m, AIMessage) for m in state["messages"])
    step = STEPS[i]
    calls = [{"name": n, "args": a, "id": f"call-{i}-{k}"}
             for k, (n, a) in enumerate(step.get("calls", ()))]
    return {"messages": [AIMessage(content=step.get("text", ""), tool_calls=calls)]}


def human(state: SandboxMessagesState) -> dict[str, Any]:
    answer = interrupt({"question": state["messages"][-1].content})
    return {"messages": [HumanMessage(answer)]}


def asks_human(state: SandboxMessagesState) -> str:
    return "human" if state["messages"][-1].content.startswith("APPROVAL") else END


def build(box: SandboxTools) -> StateGraph:
    builder = StateGraph(SandboxMessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", box.node)
    builder.add_node("sleep", box.sleep)
    builder.add_node("human", human)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges(
        "agent", lambda s: "tools" if s["messages"][-1].tool_calls else "sleep")
    builder.add_edge("tools", "agent")
    builder.add_conditional_edges("sleep", asks_human)
    builder.add_edge("human", "agent")
    return builder


def main() -> None:
    url, thread, action = sys.argv[1:4]
    with TorporSaver(url) as saver:
        graph = build(SandboxTools()).compile(checkpointer=saver)
        config = {"configurable": {"thread_id": thread}}
        if action == "start":
            graph.invoke({"messages": [HumanMessage("Set up the holder.")]}, config)
        else:
            graph.invoke(Command(resume="Yes, go on."), config)
        state = graph.get_state(config)
        print(json.dumps({
            "messages": [[m.type, m.content] for m in state.values["messages"]],
            "sandbox": state.values.get("sandbox"), "next": list(state.next),
            "interrupts": [i.value for t in state.tasks for i in t.interrupts]}))


if __name__ == "__main__":
    main()
