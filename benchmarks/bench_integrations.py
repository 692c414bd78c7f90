"""Benchmark of torpor's LangGraph checkpointer (`TorporSaver`) against LangGraph's own
(`SqliteSaver`, `PostgresSaver`), side by side on the same conversation, in one run.

    .venv/bin/python benchmarks/bench_integrations.py [--quick] [--no-postgres]

The conversation is the headline benchmark's coding-agent session
(`headline_workload.make_script`, small outputs): the same turns, model steps and tool
calls with the same arguments. It runs through a LangGraph graph with an agent node
(the model scripted: each step is the script's next line, no network) and LangGraph's
`ToolNode`, whose tools return output of the size torpor's built-in tools give for those
commands (exit code and stdout, a file listing, ...; made up here, deterministic: no
sandbox runs). Each user message is one `invoke` (durability "sync": each checkpoint is
stored before the next step), until the agent answers in text: a wait point.

For each saver (torpor on SQLite and on PostgreSQL; LangGraph's SqliteSaver and
PostgresSaver), one thread of 10, one of 100 and one of 1,000 tool calls, each in a
database of its own:
- bytes per thread: SQLite: the file (page count x page size, WAL checkpointed) minus
  the empty schema's; PostgreSQL: the saver's tables with their indexes and TOAST (values
  over 2 KB are compressed there), minus the empty schema's;
- put latency as the thread grows (every put, with the thread's tool calls so far), and
  get_tuple latency of the latest checkpoint after each turn (5 reads), kept in the JSON
  as medians per bucket of calls;
- the time to feed the whole conversation.
PostgreSQL is a throwaway local cluster (torpor.db.pgtemp) with default settings.

Writes benchmarks/results/integrations.json, integrations.md and integrations.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from headline_workload import make_script  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from langchain_core.tools import StructuredTool  # noqa: E402
from langgraph.graph import START, MessagesState, StateGraph  # noqa: E402
from langgraph.prebuilt import ToolNode, tools_condition  # noqa: E402

from torpor.integrations.langgraph.saver import FULL_EVERY  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (10, 100, 1000)
READS = 5  # get_tuple reads after each turn
SAVERS = ("torpor-sqlite", "langgraph-sqlite", "torpor-postgres", "langgraph-postgres")
# the wheels the headline's setup turn installs (names only: nothing is read)
WHEELS = {"pkg": Path("benchcalc-0.1.0-py3-none-any.whl"),
          "pip": Path("pip-24.0-py3-none-any.whl")}


# ------------------------------------------------------------------ the conversation

def turns(calls: int) -> list[list[dict[str, Any]]]:
    """The headline's session of `calls` tool calls: turns of model steps, each step
    {"text", "tool_calls"}, the last step of a turn a text answer (the probe turn, which
    the headline does not count, is left out)."""
    lines = make_script(calls, big=False, wheels=WHEELS).lines[:-2]
    out: list[list[dict[str, Any]]] = [[]]
    for line in lines:
        out[-1].append(line)
        if not line.get("tool_calls"):
            out.append([])
    return [t for t in out if t]


def _lines(prefix: str, n: int, width: int) -> str:
    return "".join(f"{prefix} {i:04d} {hashlib.sha256(f'{prefix}{i}'.encode()).hexdigest()}"
                   [:width] + "\n" for i in range(n))


def tool_output(name: str, args: dict[str, Any]) -> str:
    """What torpor's built-in tool would return for this call, in size and shape."""
    if name == "write_file":
        return f"wrote {len(args['content'].encode())} bytes to {args['path']}"
    if name == "edit_file":
        return f"replaced 1 occurrence in {args['path']}"
    if name == "list_dir":
        return (f"{args['path']}: 12 entries (depth 1; type, size in bytes, name)\n"
                + _lines("file        210  feat_", 12, 40))
    if name == "start_process":
        return f"started process 3 (pid 41): {args['command']}"
    if name == "upload_wheels":
        return ("uploaded to /work/wheels: benchcalc-0.1.0-py3-none-any.whl (1187 bytes), "
                "pip-24.0-py3-none-any.whl (2084381 bytes)")
    cmd = args["command"]
    if "unittest" in cmd:
        out = ("stdout:\n\nstderr:\ntest_it (tests.test_feat.T.test_it) ... ok\n\n"
               + "-" * 70 + "\nRan 1 test in 0.001s\n\nOK\n")
    elif "git" in cmd:
        out = "stdout:\n" + _lines("a1b2c3d feature", 3, 30)
    elif "bump.py" in cmd:
        out = f"stdout:\ncounter 3fa9c2d1 {len(cmd) % 50}\n"
    elif "curl" in cmd:
        out = "stdout:\n" + _lines('"""Feature', 4, 48)
    else:
        out = "stdout:\n" + _lines("Successfully installed", 3, 60)
    return "exit code 0\n" + out


def build_graph(script: list[list[dict[str, Any]]]) -> StateGraph:
    steps = [s for t in script for s in t]
    names = sorted({c["name"] for s in steps for c in s.get("tool_calls") or ()})

    def agent(state: MessagesState) -> dict[str, Any]:
        i = sum(isinstance(m, AIMessage) for m in state["messages"])
        step = steps[i]
        calls = [{"name": c["name"], "args": c["arguments"], "id": f"call_{i}_{k}"}
                 for k, c in enumerate(step.get("tool_calls") or ())]
        return {"messages": [AIMessage(content=step.get("text") or "", tool_calls=calls,
                                       id=f"ai_{i}")]}

    def make_tool(name: str) -> StructuredTool:
        return StructuredTool.from_function(
            func=lambda **kw: tool_output(name, kw), name=name, description=name,
            args_schema={"type": "object", "properties": {}, "additionalProperties": True})

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([make_tool(n) for n in names]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder


def conversation_bytes(script: list[list[dict[str, Any]]]) -> int:
    """The conversation's logical bytes: its messages as JSON (user, assistant with its
    tool calls, tool results), as a context log holds them."""
    n = 0
    for i, t in enumerate(script):
        n += len(json.dumps({"role": "user", "content": f"Turn {i + 1}, go on."}))
        for s in t:
            n += len(json.dumps({"role": "assistant", "content": s.get("text"),
                                 "tool_calls": s.get("tool_calls")}))
            for c in s.get("tool_calls") or ():
                n += len(json.dumps({"role": "tool",
                                     "content": tool_output(c["name"], c["arguments"])}))
    return n


# ------------------------------------------------------------------ the savers

@contextmanager
def open_saver(kind: str, where: str) -> Iterator[Any]:
    """A saver on a fresh database: `where` is a SQLite path or a PostgreSQL URL."""
    if kind.startswith("torpor"):
        from torpor.integrations.langgraph import TorporSaver

        url = f"sqlite:///{where}" if kind.endswith("sqlite") else where
        with TorporSaver(url) as saver:
            yield saver
    elif kind == "langgraph-sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        with SqliteSaver.from_conn_string(where) as saver:
            saver.setup()
            yield saver
    else:
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(where) as saver:
            saver.setup()
            yield saver


TABLES = {"torpor": ["langgraph_checkpoints", "langgraph_values", "langgraph_writes"],
          "langgraph": ["checkpoints", "checkpoint_blobs", "checkpoint_writes",
                        "checkpoint_migrations"]}


def stored_bytes(kind: str, where: str) -> int:
    """The database's bytes for the saver (see the module's docstring), saver closed."""
    if kind.endswith("sqlite"):
        with sqlite3.connect(where) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.close()
        return int(pages * size)
    import psycopg

    with psycopg.connect(where) as conn:
        row = conn.execute("SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM "
                           "pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE "
                           "n.nspname = 'public' AND c.relkind = 'r' AND c.relname = ANY(%s)",
                           (TABLES[kind.split("-")[0]],)).fetchone()
    return int(row[0]) if row else 0


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def feed(kind: str, where: str, script: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Run the conversation through a saver; time its puts and get_tuples."""
    puts: list[tuple[int, float]] = []
    reads: list[tuple[int, float]] = []
    done = 0  # tool calls run so far
    with open_saver(kind, where) as saver:
        put = saver.put

        def timed_put(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            out = put(*a, **kw)
            puts.append((done, time.perf_counter() - t))
            return out

        saver.put = timed_put
        graph = build_graph(script).compile(checkpointer=saver)
        config = {"configurable": {"thread_id": f"bench-{kind}-{len(script)}"}}
        t0 = time.perf_counter()
        for i, turn in enumerate(script):
            # (the agent's steps of this turn end with a text answer: a wait point)
            done_after = done + sum(len(s.get("tool_calls") or ()) for s in turn)
            graph.invoke({"messages": [HumanMessage(f"Turn {i + 1}, go on.", id=f"u{i}")]},
                         config, durability="sync")
            done = done_after
            for _ in range(READS):
                t = time.perf_counter()
                tup = saver.get_tuple(config)
                reads.append((done, time.perf_counter() - t))
            assert tup is not None
        feed_s = time.perf_counter() - t0
        messages = len(tup.checkpoint["channel_values"]["messages"])
        checkpoints = sum(1 for _ in saver.list(config))
    return {"calls": done, "messages": messages, "checkpoints": checkpoints,
            "feed_s": feed_s, "puts": puts, "reads": reads}


def empty_bytes(kind: str, where: str) -> int:
    with open_saver(kind, where):
        pass
    return stored_bytes(kind, where)


def window(samples: list[tuple[int, float]], lo: int, hi: int) -> dict[str, float] | None:
    got = [s for n, s in samples if lo <= n <= hi]
    if not got:
        return None
    return {"median_ms": statistics.median(got) * 1e3, "p95_ms": pct(got, 95) * 1e3,
            "n": len(got)}


def run(kind: str, new_db: Callable[[str], str], sizes: tuple[int, ...],
        scripts: dict[int, list]) -> dict[str, Any]:
    res: dict[str, Any] = {"empty_schema_bytes": empty_bytes(kind, new_db("empty"))}
    for calls in sizes:
        print(f"[{kind}] {calls} tool calls", file=sys.stderr, flush=True)
        where = new_db(str(calls))
        fed = feed(kind, where, scripts[calls])
        fed["bytes"] = stored_bytes(kind, where) - res["empty_schema_bytes"]
        if kind.startswith("torpor"):
            from torpor.db import open_database
            from torpor.db.queries import langgraph as q

            url = f"sqlite:///{where}" if kind.endswith("sqlite") else where
            with open_database(url) as db, db.read() as tx:
                fed["payload"] = q.thread_bytes(tx, f"bench-{kind}-{len(scripts[calls])}")
        res[str(calls)] = fed
    last = res[str(sizes[-1])]
    res["put"] = {f"{lo}-{hi}": window(last["puts"], lo, hi)
                  for lo, hi in ((0, 10), (90, 100), (sizes[-1] - 10, sizes[-1]))}
    res["get_tuple"] = {f"{lo}-{hi}": window(last["reads"], lo, hi)
                        for lo, hi in ((0, 10), (90, 110), (sizes[-1] - 20, sizes[-1]))}
    for calls in sizes:  # the samples, kept as medians per bucket of calls (for the plot)
        fed = res[str(calls)]
        for key in ("puts", "reads"):
            fed[key] = series(fed[key], max(1, calls // 40))
    return res


def series(samples: list[tuple[int, float]], step: int) -> list[list[float]]:
    """[calls, median ms, samples] per bucket of `step` tool calls."""
    buckets: dict[int, list[float]] = {}
    for n, sec in samples:
        buckets.setdefault(n // step * step, []).append(sec * 1e3)
    return [[b, round(statistics.median(v), 3), len(v)] for b, v in sorted(buckets.items())]


# ------------------------------------------------------------------ report

def fmt_bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def markdown(r: dict[str, Any]) -> str:
    kinds = [k for k in SAVERS if k in r["savers"]]
    v = r["versions"]
    lines = [
        "# LangGraph checkpointers: torpor's TorporSaver vs LangGraph's own",
        "",
        f"{r['when']}, Python {r['machine']['python']}, {r['machine']['cpus']} CPUs, load "
        f"average at start {r['load_average_at_start'][0]:.1f} (a shared machine: absolute "
        f"times are noisy). LangGraph {v['langgraph']}, langgraph-checkpoint "
        f"{v['langgraph-checkpoint']}, -sqlite {v['langgraph-checkpoint-sqlite']}, "
        f"-postgres {v['langgraph-checkpoint-postgres']}; TorporSaver with full_every "
        f"{r['full_every']}; PostgreSQL: "
        f"{r.get('postgres_version', 'not run')}. Produced by `benchmarks/bench_integrations.py`"
        f"{' --quick' if r['quick'] else ''} in {r['wall_s']:.0f} s.",
        "",
        "The conversation: the headline benchmark's coding-agent session (small outputs), "
        "through a LangGraph graph with an agent node (scripted model) and LangGraph's "
        "ToolNode; tool outputs of the size torpor's built-in tools give (see the script's "
        "docstring). One thread per size, each in a database of its own.",
        "",
    ]
    return "\n".join(lines + _bytes_section(r, kinds) + _latency_section(r, kinds))


def _bytes_section(r: dict[str, Any], kinds: list[str]) -> list[str]:
    sizes = r["sizes"]
    lines = [
        "## Bytes per thread",
        "",
        "| tool calls | model steps | checkpoints | conversation (JSON) | "
        + " | ".join(kinds) + " | " + " | ".join(
            f"{k.split('-')[1]}: LangGraph / torpor" for k in ("torpor-sqlite", "torpor-postgres")
            if k in kinds) + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(kinds)
        + "---:|" * sum(k in kinds for k in ("torpor-sqlite", "torpor-postgres")),
    ]
    for n in sizes:
        first = r["savers"][kinds[0]][str(n)]
        row = [f"{first['calls']:,}", str(r["steps"][str(n)]), f"{first['checkpoints']:,}",
               fmt_bytes(r["conversation_bytes"][str(n)])]
        row += [fmt_bytes(r["savers"][k][str(n)]["bytes"]) for k in kinds]
        for db in ("sqlite", "postgres"):
            if f"torpor-{db}" in kinds and f"langgraph-{db}" in kinds:
                ratio = (r["savers"][f"langgraph-{db}"][str(n)]["bytes"]
                         / max(1, r["savers"][f"torpor-{db}"][str(n)]["bytes"]))
                row.append(f"{ratio:,.0f}x")
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Stored bytes: SQLite, the file (WAL checkpointed) less the empty schema's; "
        "PostgreSQL, the saver's tables with their indexes and TOAST less the empty "
        "schema's (TOAST compresses values over 2 KB, so LangGraph's large blobs are "
        "stored compressed there). torpor's SQLite and PostgreSQL databases also hold "
        "torpor's own (empty) tables, counted in the empty schema.",
        "",
        "What torpor's saver stored for the largest thread, as payload (ids, serialized "
        "values; no database overhead):",
        "",
        "| saver | checkpoints (documents, metadata) | channel values | pending writes |",
        "|---|---:|---:|---:|",
    ]
    for k in kinds:
        if k.startswith("torpor"):
            p = r["savers"][k][str(sizes[-1])]["payload"]
            lines.append(f"| {k} | {fmt_bytes(p['langgraph_checkpoints'])} | "
                         f"{fmt_bytes(p['langgraph_values'])} | "
                         f"{fmt_bytes(p['langgraph_writes'])} |")
    return lines


def _latency_section(r: dict[str, Any], kinds: list[str]) -> list[str]:
    sizes = r["sizes"]
    lines: list[str] = []
    lines += ["", f"## Latency as the thread grows ({sizes[-1]:,}-call thread)", "",
              "put: every checkpoint stored while the thread had that many tool calls; "
              f"get_tuple: the latest checkpoint, {READS} reads after each turn. Median / p95 "
              "(a p95 includes Python's garbage collection: a read of the longest thread "
              "builds about 1,900 message objects, with either saver).",
              "", "| saver | put, calls " + " | put, calls ".join(r["savers"][kinds[0]]["put"])
              + " | get_tuple, calls " + " | get_tuple, calls ".join(
                  r["savers"][kinds[0]]["get_tuple"]) + " | feed |",
              "|---|" + "---:|" * (len(r["savers"][kinds[0]]["put"])
                                   + len(r["savers"][kinds[0]]["get_tuple"]) + 1)]
    for k in kinds:
        s = r["savers"][k]
        cells = [f"{v['median_ms']:.2f} / {v['p95_ms']:.2f} ms" if v else "-"
                 for v in (*s["put"].values(), *s["get_tuple"].values())]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {s[str(sizes[-1])]['feed_s']:.1f} s |")
    lines += ["", "Ratios, LangGraph's saver over torpor's on the same database (above 1: "
              "torpor's is smaller or faster), at the largest thread's last calls:", "",
              "| database | bytes | put median | get_tuple median | feed |",
              "|---|---:|---:|---:|---:|"]
    for db in ("sqlite", "postgres"):
        t, lg = r["savers"].get(f"torpor-{db}"), r["savers"].get(f"langgraph-{db}")
        if not (t and lg):
            continue
        last_put, last_get = list(t["put"])[-1], list(t["get_tuple"])[-1]
        big = str(sizes[-1])
        lines.append(
            f"| {db} | {lg[big]['bytes'] / t[big]['bytes']:,.0f}x | "
            f"{lg['put'][last_put]['median_ms'] / t['put'][last_put]['median_ms']:.1f}x | "
            f"{lg['get_tuple'][last_get]['median_ms'] / t['get_tuple'][last_get]['median_ms']:.1f}x"
            f" | {lg[big]['feed_s'] / t[big]['feed_s']:.1f}x |")
    lines += ["", "Durability: torpor's SQLite runs WAL with synchronous=FULL (each put "
              "fsynced); SqliteSaver runs WAL with SQLite's default synchronous (FULL); "
              "PostgreSQL runs with its defaults (fsync, synchronous_commit on) for both.",
              "", "![bytes and latency](integrations.png)", ""]
    return lines


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in SAVERS if k in r["savers"]]
    styles = {"torpor-sqlite": "o-", "torpor-postgres": "s-", "langgraph-sqlite": "o--",
              "langgraph-postgres": "s--"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    big = str(r["sizes"][-1])
    for k in kinds:
        s = r["savers"][k]
        xs = [s[str(n)]["calls"] for n in r["sizes"]]
        axes[0].plot(xs, [s[str(n)]["bytes"] / 1e6 for n in r["sizes"]], styles[k], label=k)
        for ax, key in ((axes[1], "puts"), (axes[2], "reads")):
            ax.plot([b[0] for b in s[big][key]], [b[1] for b in s[big][key]], styles[k],
                    ms=3, label=k)
    axes[0].set(xscale="log", yscale="log", xlabel="tool calls in the thread",
                ylabel="stored bytes (MB)", title="bytes per thread")
    axes[1].set(xlabel="tool calls so far", ylabel="put (ms), median per bucket",
                title="put latency as the thread grows", yscale="log")
    axes[2].set(xlabel="tool calls so far", ylabel="get_tuple (ms), median per bucket",
                title="get_tuple (latest) as the thread grows", yscale="log")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="threads of 10 and 100 calls only")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    sizes = SIZES[:2] if args.quick else SIZES
    scripts = {n: turns(n) for n in sizes}
    t0 = time.monotonic()
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "versions": {p: version(p) for p in (
            "langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite",
            "langgraph-checkpoint-postgres")},
        "quick": args.quick, "sizes": list(sizes), "load_average_at_start": os.getloadavg(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "steps": {str(n): sum(len(t) for t in scripts[n]) for n in sizes},
        "conversation_bytes": {str(n): conversation_bytes(scripts[n]) for n in sizes},
        "savers": {}, "full_every": FULL_EVERY,
    }
    with tempfile.TemporaryDirectory(prefix="torpor-bench-lg-") as tmp:
        for kind in ("torpor-sqlite", "langgraph-sqlite"):
            report["savers"][kind] = run(kind, lambda tag, k=kind: f"{tmp}/{k}-{tag}.db",
                                         sizes, scripts)
        if not args.no_postgres:
            from torpor.db.pgtemp import TempCluster, server_bindir

            if server_bindir() is None:
                print("PostgreSQL not installed; skipping", file=sys.stderr)
            else:
                with TempCluster() as pg:
                    import psycopg

                    with psycopg.connect(pg.url()) as conn:
                        report["postgres_version"] = conn.execute(
                            "SHOW server_version").fetchone()[0]
                    for kind in ("torpor-postgres", "langgraph-postgres"):
                        report["savers"][kind] = run(
                            kind, lambda _tag: pg.url(pg.create_db()), sizes, scripts)
    report["wall_s"] = time.monotonic() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "integrations.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "integrations.md").write_text(markdown(report))
    plot(report, args.out / "integrations.png")
    print(markdown(report))


if __name__ == "__main__":
    main()
