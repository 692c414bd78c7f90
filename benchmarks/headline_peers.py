"""Context-only peers fed the headline benchmark's conversations: LangGraph (SQLite and
PostgreSQL checkpointers) and DBOS on PostgreSQL.

Run by bench_headline.py with the Python of a separate venv that holds langgraph,
langgraph-checkpoint-sqlite, langgraph-checkpoint-postgres, psycopg and dbos (never
torpor's dependencies):

    python headline_peers.py INPUT.json OUTPUT.json WORKDIR [--pg POSTGRES_URL]

INPUT maps a config tag to {"calls", "payload", "steps"}, steps being the OpenAI messages
each model call added (the assistant message and its tool results). Without --pg only the
SQLite peer runs. None of the peers holds any sandbox state: they store context only.

- LangGraph + SqliteSaver / PostgresSaver: every step is one `invoke` of a one-node graph
  on MessagesState, so the checkpointer sees the conversation grow as an agent loop would
  write it. One thread per SQLite file / per PostgreSQL database. Recorded: bytes stored
  (SQLite: the file, once closed; PostgreSQL: tables + indexes + TOAST of the checkpoint
  tables, and the empty schema's share), the same sampled while feeding,
  checkpoints written, time to feed, and time to resume the thread (a fresh connection +
  compiled graph + get_state), median of 5.
- DBOS: the session is one workflow, each model step one `@DBOS.step` that returns the
  messages it added (so DBOS's step outputs journal the conversation, as a DBOS agent
  would), then the workflow waits for the next user message in `DBOS.recv` (a wait
  point). The feeding process is killed there (os._exit, no shutdown). Recovery = a
  fresh process: DBOS(config) + DBOS.launch(), which finds the PENDING workflow and runs
  it again, every recorded step's output read back from the system database instead of
  re-executed (the step function refuses to run in a recovery process); timed from
  DBOS() to the workflow having replayed its last recorded step (python start-up and
  imports excluded), median of 5 (3 for sessions over 100 MB), each recovery process
  killed again at the wait point. Recorded: bytes of DBOS's system database schema
  (tables + indexes + TOAST), step outputs recorded, feed time, recovery time and its
  parts (launch; launch to the workflow being dispatched again; replay of the steps).

LangGraph rewrites the whole message list at every checkpoint, so its bytes grow with the
square of the session; conversations with 1 MB outputs past 100 tool calls are left out
for it (hundreds of GB). DBOS stores each step's output once, so it gets every session.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

LANGGRAPH_MAX_1MB_CALLS = 100  # past this, 1 MB outputs would need hundreds of GB
RESUMES = 5
BIG = 100_000_000  # sessions stored in more bytes than this get 3 recoveries, not 5
DBOS_SCHEMA = "dbos"
DBOS_VERSION = "torpor-headline-peer"  # fixed app version: feed and recovery processes match
RESULT = "PEER-RESULT "


def sample_points(n: int) -> set[int]:
    """Steps after which the stored bytes are sampled while feeding: 1-2-5 and the end."""
    pts = {n}
    k = 1
    while k < n:
        pts.update(x for x in (k, 2 * k, 5 * k) if x < n)
        k *= 10
    return pts


def digest(msgs: list[Any]) -> str:
    return hashlib.sha256(json.dumps(msgs, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------ postgres

def pg_connect(url: str, **kw: Any) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, **kw)


def pg_bytes(conn: Any, schema: str) -> int:
    """Tables + indexes + TOAST of every table in `schema`."""
    row = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'm')", (schema,)).fetchone()
    return int(row[0] if isinstance(row, tuple) else next(iter(row.values())))


def fresh_db(url: str, name: str) -> str:
    """Drop and create database `name` on the cluster at `url`; return its URL."""
    with pg_connect(url) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


def drop_db(url: str, name: str) -> None:
    with pg_connect(url) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ----------------------------------------------------------------------- langgraph

def to_lc(m: dict[str, Any]) -> Any:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

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


def graph(saver: Any) -> Any:
    from langgraph.graph import END, START, MessagesState, StateGraph

    g = StateGraph(MessagesState)
    g.add_node("agent", lambda state: {"messages": []})
    g.add_edge(START, "agent")
    g.add_edge("agent", END)
    return g.compile(checkpointer=saver)


CFG = {"configurable": {"thread_id": "session"}}


def feed_langgraph(app: Any, steps: list[list[dict[str, Any]]],
                   size: Callable[[], int]) -> tuple[float, list[tuple[int, int]]]:
    """Invoke once per step; (feed seconds without the sampling, [(steps, bytes)])."""
    pts = sample_points(len(steps))
    series: list[tuple[int, int]] = []
    sampling = 0.0
    t0 = time.monotonic()
    for i, step in enumerate(steps, 1):
        app.invoke({"messages": [to_lc(m) for m in step]}, CFG)
        if i in pts:
            t = time.monotonic()
            series.append((i, size()))
            sampling += time.monotonic() - t
    return time.monotonic() - t0 - sampling, series


def run_sqlite(steps: list[list[dict[str, Any]]], db: Path) -> dict[str, Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    def size() -> int:
        return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))

    def pages() -> int:  # while feeding: the database as stored once its WAL is checkpointed
        return int(conn.execute("PRAGMA page_count").fetchone()[0]
                   * conn.execute("PRAGMA page_size").fetchone()[0])

    conn = sqlite3.connect(db, check_same_thread=False)
    feed, series = feed_langgraph(graph(SqliteSaver(conn)), steps, pages)
    checkpoints = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    conn.close()
    times, n_msgs = [], 0
    for _ in range(RESUMES):
        t = time.monotonic()
        c = sqlite3.connect(db, check_same_thread=False)
        state = graph(SqliteSaver(c)).get_state(CFG)
        n_msgs = len(state.values.get("messages", []))
        times.append(time.monotonic() - t)
        c.close()
    return {"steps": len(steps), "checkpoints": checkpoints, "bytes": size(), "feed_s": feed,
            "resume_median_s": statistics.median(times), "resume_samples_s": times,
            "messages_restored": n_msgs, "series": series}


def run_lg_postgres(steps: list[list[dict[str, Any]]], url: str) -> dict[str, Any]:
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row

    def connect() -> Any:  # what PostgresSaver.from_conn_string opens
        return pg_connect(url, prepare_threshold=0, row_factory=dict_row)

    with connect() as conn, connect() as probe:
        saver = PostgresSaver(conn)
        saver.setup()
        empty = pg_bytes(probe, "public")
        feed, series = feed_langgraph(graph(saver), steps, lambda: pg_bytes(probe, "public"))
        checkpoints = conn.execute("SELECT count(*) AS n FROM checkpoints").fetchone()["n"]
        payload = conn.execute(
            "SELECT (SELECT coalesce(sum(octet_length(blob)), 0) FROM checkpoint_blobs) + "
            "(SELECT coalesce(sum(octet_length(blob)), 0) FROM checkpoint_writes) + "
            "(SELECT coalesce(sum(octet_length(checkpoint::text) + octet_length(metadata::text)),"
            " 0) FROM checkpoints) AS n").fetchone()["n"]
        stored = pg_bytes(probe, "public")
    times, n_msgs = [], 0
    for _ in range(RESUMES):
        t = time.monotonic()
        with connect() as c:
            state = graph(PostgresSaver(c)).get_state(CFG)
            n_msgs = len(state.values.get("messages", []))
            times.append(time.monotonic() - t)
    return {"steps": len(steps), "checkpoints": checkpoints, "bytes": stored,
            "bytes_empty_schema": empty, "payload_bytes": int(payload), "feed_s": feed,
            "resume_median_s": statistics.median(times), "resume_samples_s": times,
            "messages_restored": n_msgs, "series": series}


# ---------------------------------------------------------------------------- DBOS

class _Session:
    """State of the DBOS process: the conversation (feeding only) and timing marks."""

    feeding = False
    steps: list[list[dict[str, Any]]] = []
    marks: dict[str, Any] = {}
    replayed = threading.Event()
    probe: Any = None
    points: set[int] = set()
    series: list[tuple[int, int]] = []
    sampling = 0.0


def model_step(i: int) -> list[dict[str, Any]]:
    """One model call of the agent: returns the messages it added (a DBOS step)."""
    if not _Session.feeding:
        raise RuntimeError(f"step {i} executed during recovery (not replayed)")
    return _Session.steps[i]


def agent_session(n_steps: int) -> int:
    """The agent session (a DBOS workflow): n model steps, then wait for the user."""
    from dbos import DBOS

    s = _Session
    s.marks["enter"] = time.monotonic()
    msgs: list[dict[str, Any]] = []
    for i in range(n_steps):
        msgs.extend(model_step(i))
        if s.feeding and i + 1 in s.points:
            t = time.monotonic()
            s.series.append((i + 1, pg_bytes(s.probe, DBOS_SCHEMA)))
            s.sampling += time.monotonic() - t
    s.marks["replayed"] = time.monotonic()
    s.marks["messages"], s.marks["digest"] = len(msgs), digest(msgs)
    s.replayed.set()
    DBOS.recv("user_message", timeout_seconds=7 * 86400)  # the wait point
    return len(msgs)


def dbos_child(mode: str, url: str, steps_file: str, n: int) -> int:
    """One DBOS process: `feed` runs the session's workflow up to its wait point, `recover`
    launches DBOS so that it recovers the pending workflow; both are killed (os._exit) once
    the workflow has (re)played its n steps and reached the wait point."""
    global model_step, agent_session
    from dbos import DBOS, SetWorkflowID

    s = _Session
    s.feeding = mode == "feed"
    if s.feeding:
        s.steps = json.loads(Path(steps_file).read_text())
        s.probe = pg_connect(url)
        s.points = sample_points(n)
    model_step = DBOS.step()(model_step)
    agent_session = DBOS.workflow()(agent_session)
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    DBOS(config={"name": "torpor-headline-peer", "system_database_url": url,
                 "application_version": DBOS_VERSION, "log_level": "WARNING"})
    DBOS.launch()
    t_launch = time.monotonic()
    if s.feeding:
        out["bytes_empty_schema"] = pg_bytes(s.probe, DBOS_SCHEMA)
        t0 = time.monotonic()
        with SetWorkflowID("session"):
            DBOS.start_workflow(agent_session, n)
    if not s.replayed.wait(3600):
        print(RESULT + json.dumps({"error": "workflow did not reach its wait point"}), flush=True)
        os._exit(1)
    m = s.marks
    if s.feeding:
        out["feed_s"] = m["replayed"] - t0 - s.sampling
        out["series"] = s.series
        time.sleep(1.0)  # let recv record its wait before the "crash"
    else:
        out.update(launch_s=t_launch - t0, dispatch_s=m["enter"] - t_launch,
                   replay_s=m["replayed"] - m["enter"], recovery_s=m["replayed"] - t0)
    out.update(messages=m["messages"], digest=m["digest"])
    print(RESULT + json.dumps(out), flush=True)
    os._exit(0)  # a crash: no DBOS.destroy(), the workflow stays PENDING


def child(mode: str, url: str, steps_file: str, n: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--dbos-child", mode, url, steps_file,
                           str(n)], capture_output=True, text=True, timeout=7200)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"DBOS {mode} process failed ({proc.returncode}): "
                           f"{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    res: dict[str, Any] = json.loads(lines[-1][len(RESULT):])
    if "error" in res:
        raise RuntimeError(f"DBOS {mode}: {res['error']}")
    return res


def run_dbos(steps: list[list[dict[str, Any]]], url: str, work: Path) -> dict[str, Any]:
    f = work / "dbos-steps.json"
    f.write_text(json.dumps(steps))
    fed = child("feed", url, str(f), len(steps))
    f.unlink()
    with pg_connect(url) as c:
        stored = pg_bytes(c, DBOS_SCHEMA)
        recorded, ops, payload = c.execute(
            "SELECT count(*) FILTER (WHERE function_name = 'model_step'), count(*), "
            "coalesce(sum(octet_length(output)), 0) "
            "FROM dbos.operation_outputs WHERE workflow_uuid = 'session'").fetchone()
        status = c.execute("SELECT status FROM dbos.workflow_status "
                           "WHERE workflow_uuid = 'session'").fetchone()[0]
    runs = []
    for _ in range(3 if stored > BIG else RESUMES):
        r = child("recover", url, "-", len(steps))
        if r["messages"] != fed["messages"] or r["digest"] != fed["digest"]:
            raise RuntimeError(f"recovery replayed other messages: {r} vs {fed}")
        runs.append(r)
    rec = [r["recovery_s"] for r in runs]
    return {"steps": len(steps), "steps_recorded": recorded, "operations_recorded": ops,
            "bytes": stored,
            "bytes_empty_schema": fed["bytes_empty_schema"], "payload_bytes": int(payload),
            "status_after_crash": status, "feed_s": fed["feed_s"], "series": fed["series"],
            "recovery_median_s": statistics.median(rec), "recovery_samples_s": rec,
            "launch_median_s": statistics.median(r["launch_s"] for r in runs),
            "dispatch_median_s": statistics.median(r["dispatch_s"] for r in runs),
            "replay_median_s": statistics.median(r["replay_s"] for r in runs),
            "messages_restored": runs[-1]["messages"]}


# ---------------------------------------------------------------------------- main

def main(argv: list[str]) -> int:
    if argv[:1] == ["--dbos-child"]:
        return dbos_child(argv[1], argv[2], argv[3], int(argv[4]))
    pg = None
    if "--pg" in argv:
        i = argv.index("--pg")
        pg = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    inp, out, work = Path(argv[0]), Path(argv[1]), Path(argv[2])
    work.mkdir(parents=True, exist_ok=True)
    convs = json.loads(inp.read_text())
    res: dict[str, Any] = {
        "langgraph": version("langgraph"),
        "checkpoint_sqlite": version("langgraph-checkpoint-sqlite"),
        "sqlite": {}, "postgres": {}, "dbos": {},
        "left_out": {"langgraph": sorted(
            k for k, c in convs.items()
            if c["payload"] == "1mb" and c["calls"] > LANGGRAPH_MAX_1MB_CALLS)},
    }
    if pg:
        with pg_connect(pg) as c:
            res["postgresql"] = c.execute("SHOW server_version").fetchone()[0]
        res.update(checkpoint_postgres=version("langgraph-checkpoint-postgres"),
                   psycopg=version("psycopg"), dbos_version=version("dbos"))

    def save() -> None:
        out.write_text(json.dumps(res, indent=1))

    def note(peer: str, tag: str, r: dict[str, Any]) -> None:
        t = r.get("resume_median_s", r.get("recovery_median_s", 0))
        print(f"{peer} {tag}: {r['bytes'] / 1e6:.2f} MB, {r['steps']} steps, "
              f"feed {r['feed_s']:.1f} s, resume/recovery {t * 1000:.1f} ms", flush=True)

    order = sorted(convs, key=lambda k: (convs[k]["payload"], convs[k]["calls"]))
    for tag in order:
        c = convs[tag]
        meta = {"calls": c["calls"], "payload": c["payload"]}
        if tag not in res["left_out"]["langgraph"]:
            r = run_sqlite(c["steps"], work / f"{tag}.sqlite")
            (work / f"{tag}.sqlite").unlink()
            res["sqlite"][tag] = {**r, **meta}
            note("langgraph-sqlite", tag, r)
            save()
            if pg:
                name = f"lg_{tag}".replace("-", "_")
                r = run_lg_postgres(c["steps"], fresh_db(pg, name))
                drop_db(pg, name)
                res["postgres"][tag] = {**r, **meta}
                note("langgraph-postgres", tag, r)
                save()
        if pg:
            name = f"dbos_{tag}".replace("-", "_")
            r = run_dbos(c["steps"], fresh_db(pg, name), work)
            drop_db(pg, name)
            res["dbos"][tag] = {**r, **meta}
            note("dbos", tag, r)
            save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
