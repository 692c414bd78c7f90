"""LangGraph with its SQLite checkpointer, fed the headline benchmark's conversations.

Run by bench_headline.py with the Python of a separate venv that holds langgraph (never
one of torpor's dependencies):

    python headline_peers.py INPUT.json OUTPUT.json WORKDIR

INPUT maps a config tag to {"calls", "payload", "steps"}, steps being the OpenAI messages
each model call added. Every step is one `invoke` of a one-node graph on MessagesState
with a SqliteSaver, so the checkpointer sees the conversation grow as an agent loop would
write it. Recorded per conversation: the SQLite file's bytes (one thread per file),
checkpoints written, time to feed it, and the time to resume the thread (a fresh
connection + compiled graph + get_state), median of 5. LangGraph keeps context only.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, MessagesState, StateGraph


def to_lc(m: dict[str, Any]) -> BaseMessage:
    role, content = m.get("role"), m.get("content")
    text = content if isinstance(content, str) else json.dumps(content) if content else ""
    if role == "system":
        return SystemMessage(text)
    if role == "user":
        return HumanMessage(text)
    if role == "tool":
        return ToolMessage(text, tool_call_id=m["tool_call_id"])
    calls = [{"name": c["function"]["name"], "id": c["id"], "type": "tool_call",
              "args": json.loads(c["function"]["arguments"] or "{}")}
             for c in m.get("tool_calls") or []]
    return AIMessage(text, tool_calls=calls)


def graph(saver: SqliteSaver) -> Any:
    g = StateGraph(MessagesState)
    g.add_node("agent", lambda state: {"messages": []})
    g.add_edge(START, "agent")
    g.add_edge("agent", END)
    return g.compile(checkpointer=saver)


def run_one(steps: list[list[dict[str, Any]]], db: Path) -> dict[str, Any]:
    cfg = {"configurable": {"thread_id": "session"}}
    conn = sqlite3.connect(db, check_same_thread=False)
    app = graph(SqliteSaver(conn))
    t0 = time.monotonic()
    for step in steps:
        app.invoke({"messages": [to_lc(m) for m in step]}, cfg)
    feed = time.monotonic() - t0
    checkpoints = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    conn.close()
    size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    times = []
    n_msgs = 0
    for _ in range(5):
        t = time.monotonic()
        c = sqlite3.connect(db, check_same_thread=False)
        state = graph(SqliteSaver(c)).get_state(cfg)
        n_msgs = len(state.values.get("messages", []))
        times.append(time.monotonic() - t)
        c.close()
    return {"steps": len(steps), "checkpoints": checkpoints, "bytes": size, "feed_s": feed,
            "resume_median_s": statistics.median(times), "resume_samples_s": times,
            "messages_restored": n_msgs}


def main() -> int:
    inp, out, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    work.mkdir(parents=True, exist_ok=True)
    convs = json.loads(inp.read_text())
    res: dict[str, Any] = {"langgraph": version("langgraph"),
                           "checkpoint_sqlite": version("langgraph-checkpoint-sqlite"),
                           "sqlite": {}}
    for tag, c in convs.items():
        r = run_one(c["steps"], work / f"{tag}.sqlite")
        r.update(calls=c["calls"], payload=c["payload"])
        res["sqlite"][tag] = r
        print(f"{tag}: {r['bytes'] / 1e6:.2f} MB, {r['checkpoints']} checkpoints, "
              f"resume {r['resume_median_s'] * 1000:.1f} ms", flush=True)
    out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
