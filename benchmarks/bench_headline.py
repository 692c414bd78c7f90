"""The headline benchmark (issue 7): resume by snapshot (torpor) vs resume by replay.

One coding-agent session per (tool calls, payload) — see headline_workload.py — is run
through torpor's Runtime on a real gVisor engine, turn by turn, each turn ending at a wait
point (snapshot, sandbox removed). Then the session's state is brought back two ways:

- snapshot: `session.send` of the next message (restore the latest snapshot, read the
  log, continue); latency = send to the `tool_call_started` event of the next call. The
  first sample is the session itself, the others are forks of the same wait-point
  snapshot (same state, same log prefix).
- replay: what a replay-based engine must do after eviction: read the log, start a fresh
  sandbox from the image and re-run every logged tool call in order through the same
  ToolRegistry on a SandboxWorkspace; latency = start to the moment the next call can run.

Both then run the same probe call (the interpreter's counter and a sha256 listing of
/work) to check whether replay reproduced the state. Also recorded: torpor's log bytes +
snapshot store bytes vs a per-step journal holding every model call's full input, the
snapshot cost per wait point, the snapshot policy's effect on work lost to a crash, and
(optionally) context-only peers on the same conversations: LangGraph with its SQLite and
PostgreSQL checkpointers, and DBOS on PostgreSQL (headline_peers.py, in a separate venv,
against a throwaway PostgreSQL cluster).

    .venv/bin/python benchmarks/bench_headline.py [--quick]
    .venv/bin/python benchmarks/bench_headline.py --peers-only [--convs FILE]

Needs root, runsc and the base image (TORPOR_IMAGES, default /var/lib/torpor/images).
Runs in a private temporary TORPOR_HOME, removed at the end. Writes
benchmarks/results/headline.json, headline.md, headline_resume.png, headline_bytes.png.

--peers-only builds each session (the same scripted workload through the same Runtime and
sandbox, turn by turn to its last wait point) only to get its conversation and torpor's log
bytes, skips the resumes, replays and the rest, runs the peers and writes
benchmarks/results/headline_peers.json and headline_peers.md. --convs FILE keeps those
conversations: read from FILE if it exists (then no sandbox, root or runsc is needed),
else written to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import headline_workload as wl  # noqa: E402

from torpor.agent.loop import model_view  # noqa: E402
from torpor.agent.models import Model, open_model  # noqa: E402
from torpor.agent.tools import ToolRegistry  # noqa: E402
from torpor.context import from_openai, open_log, to_openai  # noqa: E402
from torpor.context.pgtemp import TempCluster, server_bindir  # noqa: E402
from torpor.runtime.checkpoints import SnapshotCheckpointStorage  # noqa: E402
from torpor.runtime.core import Policy, Runtime  # noqa: E402
from torpor.runtime.types import WORKSPACE  # noqa: E402
from torpor.runtime.workspace import SandboxWorkspace  # noqa: E402
from torpor.sandbox.engine import SandboxSpec  # noqa: E402
from torpor.sandbox.gvisor import GVisorEngine  # noqa: E402
from torpor.sandbox.images import ImageStore  # noqa: E402
from torpor.snapshots import open_store  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SYSTEM = "You are a coding agent working in /work. Use the tools; keep answers short."
WINDOW = 50_000_000  # tokens: no compaction, so every step's request is the whole context
HISTORY_LIMIT = 50 * 1024 * 1024  # Temporal's documented workflow history size limit
MODEL_NAME = "gpt-4o"  # the name put in the request bodies whose sizes are counted


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def remove_home(home: Path) -> None:
    """A benchmark's private TORPOR_HOME, with whatever runsc still keeps of its sandboxes."""
    for d in (home / "sandboxes").glob("*") if (home / "sandboxes").exists() else []:
        subprocess.run(["runsc", f"--root={home / 'runsc'}", "delete", "-force", d.name],
                       capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) if d.exists() else 0


def log_db_bytes(d: Path) -> int:
    """torpor's SQLite database in d as stored once its WAL is checkpointed (page_count x
    page_size; the WAL file itself is transient) plus its blob files."""
    with contextlib.closing(sqlite3.connect(d / "torpor.db")) as c:
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        size = c.execute("PRAGMA page_size").fetchone()[0]
    return int(pages * size) + dir_bytes(d / "torpor.db.blobs")


class BenchRuntime(Runtime):
    """The runtime as is, with the scripted model given a window that never compacts."""

    def model(self, spec: str) -> Model:
        if spec not in self._models:
            self._models[spec] = open_model(spec, context_window=WINDOW)
        return self._models[spec]


# ------------------------------------------------------------------------ journal bytes

def journal_series(entries: list[Any], tools: ToolRegistry) -> list[tuple[int, int]]:
    """[(tool calls so far, bytes of the request sent at that step)] for every model call
    in `entries`: the chat.completions body (system, messages, tool specs) a per-step
    journal would store in full. Computed from prefix sums of the message sizes; exact,
    since every step's view is a prefix of the final one (no compaction)."""
    view = model_view(entries)
    msgs = [{"role": "system", "content": SYSTEM}, *to_openai(view)]
    sizes = [len(json.dumps(m)) for m in msgs]
    specs = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                               "parameters": t.parameters}}
             for t in tools.specs()]
    empty = len(json.dumps({"model": MODEL_NAME, "messages": [], "tools": specs}))
    out: list[tuple[int, int]] = []
    calls, acc = 0, 0
    for i, m in enumerate(msgs):
        if m.get("role") == "assistant":  # the request made just before this answer
            out.append((calls, empty + acc + 2 * max(0, i - 1)))
            calls += len(m.get("tool_calls") or [])
        acc += sizes[i]
    return out


def journal_direct(entries: list[Any], tools: ToolRegistry) -> list[int]:
    """The same, the slow way (one full serialisation per step): checks the fast one."""
    specs = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                               "parameters": t.parameters}}
             for t in tools.specs()]
    out = []
    for j, e in enumerate(entries):
        if e.kind == "message" and e.role == "assistant":
            msgs = [{"role": "system", "content": SYSTEM}, *to_openai(model_view(entries[:j]))]
            out.append(len(json.dumps({"model": MODEL_NAME, "messages": msgs, "tools": specs})))
    return out


# --------------------------------------------------------------------------- the roads

def resume_by_snapshot(session: Any, probe_msg: str) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    t0 = time.time()
    out = session.send(probe_msg, on_event=events.append)
    t_end = time.time()
    first = next((e["t"] for e in events if e["type"] == "tool_call_started"), None)
    restored = next((e for e in events if e["type"] == "restored"), {})
    result = [e for e in session.log() if e.kind == "tool_result"][-1]
    return {
        "latency_s": None if first is None else first - t0,
        "restore_ms": restored.get("ms"),
        "standby": bool(restored.get("standby")),
        "turn_s": t_end - t0,
        "probe": str(result.content),
        "snapshot_ms": out.snapshot_ms,
    }


def resume_by_replay(rt: Runtime, reg: ToolRegistry, sid: str, upto: int, name: str,
                     image: str) -> dict[str, Any]:
    t0 = time.time()
    entries = [e for e in rt.log.read(sid) if e.seq <= upto]
    calls = [e for e in entries if e.kind == "tool_call"]
    logged = {e.tool_call_id: str(e.content) for e in entries if e.kind == "tool_result"}
    t_read = time.time()
    with contextlib.suppress(Exception):
        rt.engine.remove(name, force=True)
    rt.engine.run(rt.sandbox_spec(image), name=name)  # the spec sessions run
    ws = SandboxWorkspace(rt.engine, name)
    errors = differ = 0
    try:
        for c in calls:
            res = reg.run(c.tool_name or "", c.args() or {}, ws)
            errors += bool(res.is_error)
            differ += res.content != logged.get(c.tool_call_id)
        t_ready = time.time()
        probe = reg.run("shell", {"command": wl.PROBE}, ws)
    finally:
        with contextlib.suppress(Exception):
            rt.engine.remove(name, force=True)
    return {
        "latency_s": t_ready - t0,
        "read_log_s": t_read - t0,
        "calls": len(calls),
        "errors": errors,
        "results_differing_from_log": differ,
        "probe": probe.content,
    }


def compare_state(a: str, b: str) -> dict[str, Any]:
    ca, fa = wl.parse_probe(a)
    cb, fb = wl.parse_probe(b)
    changed = sorted(p for p in fa.keys() & fb.keys() if fa[p] != fb[p])
    only_a, only_b = sorted(fa.keys() - fb.keys()), sorted(fb.keys() - fa.keys())

    def kind(p: str) -> str:
        if "/.git/" in p:
            return ".git"
        if "__pycache__" in p:
            return "__pycache__"
        return "other"

    by_kind: dict[str, int] = {}
    for p in changed + only_a + only_b:
        by_kind[kind(p)] = by_kind.get(kind(p), 0) + 1
    ta, na = (ca or " ").split(" ", 1) if ca else (None, None)
    tb, nb = (cb or " ").split(" ", 1) if cb else (None, None)
    return {
        "files": len(fa), "files_other": len(fb), "changed": len(changed),
        "only_snapshot": len(only_a), "only_replay": len(only_b), "by_kind": by_kind,
        "examples": (changed + only_a + only_b)[:6],
        "counter_snapshot": ca, "counter_replay": cb,
        "counter_value_same": na == nb, "counter_token_same": ta == tb,
        "identical": not (changed or only_a or only_b) and ca == cb,
    }


# ----------------------------------------------------------------------------- a config

class Bench:
    def __init__(self, args: argparse.Namespace, home: Path, images: ImageStore,
                 wheels: dict[str, Path]) -> None:
        self.args, self.home, self.images, self.wheels = args, home, images, wheels
        self.reg = wl.registry(next(iter(wheels.values())).parent)
        self.convs: dict[str, dict[str, Any]] = {}  # conversations for the peers

    def runtime(self, tag: str, workspace: str | None = WORKSPACE) -> tuple[BenchRuntime, Path]:
        d = self.home / tag
        d.mkdir(parents=True, exist_ok=True)
        store_url = f"file://{d / 'snapshots'}"
        engine = GVisorEngine(self.home, images=self.images, checkpoints=SnapshotCheckpointStorage(
            open_store(store_url), self.home))
        rt = BenchRuntime(db=f"sqlite:///{d / 'torpor.db'}", store=store_url, home=self.home,
                          engine=engine, tools=self.reg, workspace=workspace)
        return rt, d

    def workspace_on_overlay(self, calls: int) -> dict[str, Any]:
        """The same session with /work on the root overlay (Runtime(workspace=None), what
        torpor did before): snapshot resumes only, to show what the tmpfs workspace saves."""
        return self.variant(calls, "overlay", "/work on the overlay", workspace=None)

    def git_defaults(self, calls: int) -> dict[str, Any]:
        """The same session with git's own gc.auto (6,700 loose objects) in its repo instead
        of torpor/base's 256: snapshot resumes only, to show what packing early saves."""
        return self.variant(calls, "gitdefault", "git's default gc.auto", git_gc_auto=6700)

    def variant(self, calls: int, name: str, what: str, workspace: str | None = WORKSPACE,
                git_gc_auto: int | None = None) -> dict[str, Any]:  # fmt: skip
        tag = f"c{calls}-small-{name}"
        rt, d = self.runtime(tag, workspace=workspace)
        try:
            log(f"{tag}: building the session ({calls} tool calls, {what})")
            b = self.build(rt, d, calls, False, git_gc_auto=git_gc_auto)
            s = b["session"]
            snap = s.info().snapshot
            runs = []
            for r in range(self.args.repeats):
                res = resume_by_snapshot(s if r == 0 else s.fork(snap), "Check the state, please.")
                rt.engine.checkpoints.flush()  # type: ignore[attr-defined]
                runs.append(res)
                log(f"{tag}: snapshot resume {r + 1}/{self.args.repeats}: "
                    f"{res['latency_s'] * 1000:.0f} ms (restore {res['restore_ms']} ms)")
            snaps = [e.content for e in rt.log.read(s.id) if e.kind == "marker"
                     and isinstance(e.content, dict)
                     and e.content.get("marker") == "snapshot_taken"]
            sl = [x["latency_s"] for x in runs]
            return {"calls": calls, "payload": "small", "median_s": statistics.median(sl),
                    "p95_s": pct(sl, 0.95), "samples_s": sl,
                    "restore_ms": [x["restore_ms"] for x in runs],
                    "latest_snapshot_raw": snaps[-1]["bytes"] if snaps else 0,
                    "files": len(wl.parse_probe(runs[0]["probe"])[1])}
        finally:
            self.cleanup(rt)

    def build(self, rt: Runtime, d: Path, calls: int, big: bool,
              policy: Policy | None = None, turn_calls: int | None = None,
              git_gc_auto: int | None = None) -> dict[str, Any]:  # fmt: skip
        script = wl.make_script(calls, big, self.wheels, turn_calls=turn_calls,
                                git_gc_auto=git_gc_auto)  # fmt: skip
        spec = script.write(d / "turns.jsonl")
        s = rt.create_session(model=spec, system=SYSTEM, policy=policy)
        t0 = time.monotonic()
        outs = []
        for t in range(script.turns):
            out = s.send(f"Turn {t + 1}: go on with the plan.")
            if out.state != "waiting":
                raise RuntimeError(f"turn {t + 1} of {s.id} ended {out.state}: {out.text}")
            outs.append(out)
        build_s = time.monotonic() - t0
        rt.engine.checkpoints.flush()  # type: ignore[attr-defined]
        return {"session": s, "script": script, "outs": outs, "build_s": build_s}

    def conversation(self, calls: int, payload: str) -> dict[str, Any]:
        """Only build the session: its conversation and torpor's log bytes (--peers-only)."""
        tag = f"c{calls}-{payload}"
        rt, d = self.runtime(tag)
        try:
            log(f"{tag}: building the session ({calls} tool calls)")
            b = self.build(rt, d, calls, payload == "1mb")
            s = b["session"]
            upto = s.info().snapshot_seq
            entries = [e for e in rt.log.read(s.id) if e.seq <= upto]
            log_entries, log_bytes = rt.log.size(s.id)
            store_bytes = dir_bytes(d / "snapshots")
            conv = {"calls": sum(1 for e in entries if e.kind == "tool_call"),
                    "payload": payload, "steps": conversation_steps(rt, s.id, upto),
                    "torpor": {"log": log_bytes, "log_entries": log_entries,
                               "log_on_disk": dir_bytes(d) - store_bytes
                               - dir_bytes(d / "turns.jsonl"), "log_db": log_db_bytes(d),
                               **context_read(rt, s.id), "build_s": b["build_s"]}}
            log(f"{tag}: built in {b['build_s']:.1f} s: {conv['calls']} calls, "
                f"{len(conv['steps'])} steps, log {log_bytes / 1e6:.2f} MB")
            return conv
        finally:
            self.cleanup(rt)

    def run_config(self, calls: int, payload: str) -> dict[str, Any]:
        a = self.args
        big = payload == "1mb"
        tag = f"c{calls}-{payload}"
        rt, d = self.runtime(tag)
        try:
            log(f"{tag}: building the session ({calls} tool calls)")
            b = self.build(rt, d, calls, big)
            s, script = b["session"], b["script"]
            row = s.info()
            snap, upto = row.snapshot, row.snapshot_seq
            entries = [e for e in rt.log.read(s.id) if e.seq <= upto]
            tool_calls = sum(1 for e in entries if e.kind == "tool_call")
            errors = sum(1 for e in entries if e.kind == "tool_result"
                         and (e.meta or {}).get("is_error"))
            snaps = [e.content for e in entries if e.kind == "marker"
                     and isinstance(e.content, dict)
                     and e.content.get("marker") == "snapshot_taken"]
            log_entries, log_bytes = rt.log.size(s.id)
            store_bytes = dir_bytes(d / "snapshots")
            latest_stored = None
            with contextlib.suppress(Exception):
                latest_stored = open_store(rt.store_url).info(snap).stored_bytes
            log_disk = dir_bytes(d) - store_bytes - dir_bytes(d / "turns.jsonl")
            log_db = log_db_bytes(d)  # now: the resumes below add forks to the database
            series = journal_series(entries, self.reg)
            if calls <= 20:  # check the fast journal sum against full serialisations
                direct = journal_direct(entries, self.reg)
                assert [x for _, x in series] == direct, (series, direct)
            journal = sum(x for _, x in series)
            self.convs[tag] = {"calls": tool_calls, "payload": payload,
                               "steps": conversation_steps(rt, s.id, upto)}
            context = context_read(rt, s.id)
            log(f"{tag}: built in {b['build_s']:.1f} s: {tool_calls} calls ({errors} errors), "
                f"{len(snaps)} wait points; log {log_bytes / 1e6:.2f} MB, store "
                f"{store_bytes / 1e6:.1f} MB, journal {journal / 1e6:.2f} MB")
            # -- snapshot road
            snap_runs = []
            for r in range(a.repeats):
                target = s if r == 0 else s.fork(snap)
                res = resume_by_snapshot(target, "Check the state, please.")
                rt.engine.checkpoints.flush()  # type: ignore[attr-defined]
                snap_runs.append(res)
                log(f"{tag}: snapshot resume {r + 1}/{a.repeats}: "
                    f"{res['latency_s'] * 1000:.0f} ms (restore {res['restore_ms']} ms)")
            rt.engine.checkpoints.flush()  # type: ignore[attr-defined]
            # -- snapshot road into a standby (what a worker with --standby keeps ready;
            # set up here off the clock)
            sb_runs: list[dict[str, Any]] = []
            sb_misses: list[str] = []  # resumes that took the standby but could not use it
            while a.standby and len(sb_runs) < a.repeats:
                rt.engine.standby(rt.sandbox_spec("base"), 1)
                res = resume_by_snapshot(s.fork(snap), "Check the state, please.")
                rt.engine.checkpoints.flush()  # type: ignore[attr-defined]
                log(f"{tag}: snapshot resume into a standby {len(sb_runs) + 1}/{a.repeats}: "
                    f"{res['latency_s'] * 1000:.0f} ms (restore {res['restore_ms']} ms, "
                    f"standby: {res['standby']})")
                if res["standby"]:
                    sb_runs.append(res)
                    continue
                why = (rt.engine.standby_misses or ["no reason recorded"])[-1]  # type: ignore[attr-defined]
                sb_misses.append(why)
                log(f"{tag}: the resume did not use the standby ({why}); measured again")
                if len(sb_misses) > a.repeats:
                    raise RuntimeError(f"{tag}: resumes keep missing the standby: {why}")
            # -- replay road
            n_replay = a.replay_repeats if calls < 1000 else max(1, a.replay_repeats - 1)
            replay_runs = []
            for r in range(n_replay):
                res = resume_by_replay(rt, self.reg, s.id, upto, f"replay-{tag}-{r}", "base")
                replay_runs.append(res)
                log(f"{tag}: replay resume {r + 1}/{n_replay}: {res['latency_s']:.2f} s "
                    f"({res['calls']} calls, {res['errors']} errors, "
                    f"{res['results_differing_from_log']} results differ from the log)")
            same_snap = compare_state(snap_runs[0]["probe"], snap_runs[-1]["probe"])
            vs_replay = compare_state(snap_runs[0]["probe"], replay_runs[0]["probe"])
            sl = [x["latency_s"] for x in snap_runs]
            rl = [x["latency_s"] for x in replay_runs]
            return {
                "calls": tool_calls, "payload": payload, "turns": script.turns,
                "build_s": round(b["build_s"], 2), "tool_errors": errors,
                "snapshot": {
                    "median_s": statistics.median(sl), "p95_s": pct(sl, 0.95),
                    "samples_s": sl, "restore_ms": [x["restore_ms"] for x in snap_runs],
                },
                "replay": {
                    "median_s": statistics.median(rl), "p95_s": pct(rl, 0.95), "samples_s": rl,
                    "read_log_s": [x["read_log_s"] for x in replay_runs],
                    "errors": replay_runs[0]["errors"],
                    "results_differing_from_log": replay_runs[0]["results_differing_from_log"],
                },
                "snapshot_standby": {
                    "median_s": statistics.median(x["latency_s"] for x in sb_runs),
                    "p95_s": pct([x["latency_s"] for x in sb_runs], 0.95),
                    "samples_s": [x["latency_s"] for x in sb_runs],
                    "restore_ms": [x["restore_ms"] for x in sb_runs],
                    "misses": sb_misses,
                } if sb_runs else None,
                "speedup": statistics.median(rl) / statistics.median(sl),
                "state_snapshot_vs_snapshot": same_snap,
                "state_snapshot_vs_replay": vs_replay,
                "wait_points": {
                    "count": len(snaps),
                    "snapshot_ms": [m["ms"] for m in snaps],
                    "raw_bytes": [m["bytes"] for m in snaps],
                    "median_ms": statistics.median(m["ms"] for m in snaps),
                    "median_raw_bytes": statistics.median(m["bytes"] for m in snaps),
                },
                "bytes": {
                    "log": log_bytes, "log_entries": log_entries, "log_on_disk": log_disk,
                    "log_db": log_db,
                    "snapshot_store": store_bytes,
                    "snapshot_store_per_wait_point": store_bytes / max(1, len(snaps)),
                    "latest_snapshot_raw": snaps[-1]["bytes"] if snaps else 0,
                    "latest_snapshot_stored": latest_stored,
                    "torpor_minimal": log_bytes + (latest_stored or 0),
                    "torpor_total": log_bytes + store_bytes,
                    "journal": journal, "journal_steps": len(series),
                    "journal_series": series,
                },
                "context_read": context,
            }
        finally:
            self.cleanup(rt)

    def run_policy(self, calls: int, k: int, *, warm: float = 0.0,
                   long_turns: bool = True) -> dict[str, Any]:
        """One run with a mid-turn snapshot every k calls: an autonomous one in two long
        turns, or one in the workload's short turns (a wait point every ~8 calls) whose
        replies come at once; warm > 0 keeps the sandbox warm that long after each wait
        point instead of snapshotting it (a quick reply then skips the snapshot)."""
        tag = f"policy-k{k}-w{warm:g}-{'long' if long_turns else 'short'}"
        rt, d = self.runtime(tag)
        try:
            log(f"{tag}: {calls} calls in {'long' if long_turns else 'short'} turns, "
                f"snapshot_every_calls={k}, warm_seconds={warm:g}")
            b = self.build(rt, d, calls, False,
                           policy=Policy(snapshot_every_calls=k, warm_seconds=warm),
                           turn_calls=(calls - 9) // 2 + 1 if long_turns else None)
            s = b["session"]
            entries = s.log()
            done_calls = 0
            since: list[int] = []  # calls lost by a crash right after each call
            last = 0
            snap_ms: list[float] = []
            for e in entries:
                c = e.content if e.kind == "marker" and isinstance(e.content, dict) else {}
                if e.kind == "tool_result":
                    done_calls += 1
                    since.append(done_calls - last)
                elif c.get("marker") == "snapshot_taken":
                    last = done_calls
                    snap_ms.append(float(c["ms"]))
            return {
                "k": k, "warm": warm, "long_turns": long_turns,
                "calls": done_calls, "turns": b["script"].turns,
                "build_s": round(b["build_s"], 2), "snapshots": len(snap_ms),
                "snapshot_s_total": sum(snap_ms) / 1000,
                "snapshot_share": sum(snap_ms) / 1000 / b["build_s"],
                "lost_mean": statistics.mean(since), "lost_max": max(since),
                "store_bytes": dir_bytes(d / "snapshots"),
            }
        finally:
            self.cleanup(rt)

    def cleanup(self, rt: Runtime) -> None:
        with contextlib.suppress(Exception):
            rt.close()  # a sandbox kept warm is snapshotted now, not by a later timer
        for info in rt.engine.list(all=True):
            with contextlib.suppress(Exception):
                rt.engine.remove(info.name, force=True)
        with contextlib.suppress(Exception):
            rt.close()


# ------------------------------------------------------- why snapshot resume grows

def file_growth(home: Path, images: ImageStore, counts: list[int]) -> list[dict[str, Any]]:
    """Checkpoint size and checkpoint/restore time of an idle sandbox holding n small files
    in its in-memory filesystem (what a growing repo, caches and build outputs add)."""
    d = home / "file-growth"
    engine = GVisorEngine(home, images=images, checkpoints=SnapshotCheckpointStorage(
        open_store(f"file://{d / 'snapshots'}"), home))
    out = []
    for n in counts:
        name = f"fg-{n}"
        engine.run(SandboxSpec(image="base"), name=name)
        try:
            engine.exec(name, ["python3", "-c", "import os, sys\nos.makedirs('/root/d')\n"
                               "for i in range(int(sys.argv[1])):\n"
                               "    open(f'/root/d/f{i}', 'w').write(str(i))", str(n)],
                        timeout=600)  # fmt: skip
            t0 = time.monotonic()
            ck = engine.checkpoint(name, "c")
            ck_ms = (time.monotonic() - t0) * 1000
            t0 = time.monotonic()
            engine.restore(ck.id, name=name + "-r")
            r_ms = (time.monotonic() - t0) * 1000
            engine.exec(name + "-r", ["/bin/true"])
            out.append({"files": n, "raw_bytes": ck.size, "checkpoint_ms": ck_ms,
                        "restore_ms": r_ms})
            log(f"file growth: {n} files: raw {ck.size / 1e6:.1f} MB, checkpoint "
                f"{ck_ms:.0f} ms, restore {r_ms:.0f} ms")
        finally:
            for nm in (name, name + "-r"):
                with contextlib.suppress(Exception):
                    engine.remove(nm, force=True)
    engine.checkpoints.flush()  # type: ignore[attr-defined]
    return out


def exec_growth(home: Path, images: ImageStore, counts: list[int]) -> list[dict[str, Any]]:
    """Checkpoint size and checkpoint/restore time of an idle sandbox after n commands run
    through torpor's exec path (engine.exec: init's host channel, init runs the command)
    and after n plain `runsc exec` of the same command, for comparison."""
    d = home / "exec-growth"
    engine = GVisorEngine(home, images=images, checkpoints=SnapshotCheckpointStorage(
        open_store(f"file://{d / 'snapshots'}"), home))
    out = []
    runs = [("torpor exec", n) for n in counts] + [("plain runsc exec", max(counts))]
    for mode, n in runs:
        name = f"eg-{len(out)}"
        engine.run(SandboxSpec(image="base"), name=name)
        sid = engine.inspect(name).id
        try:
            for _ in range(n):
                if mode == "torpor exec":
                    engine.exec(name, ["/bin/true"])
                else:
                    subprocess.run(["runsc", f"--root={home / 'runsc'}", "exec", sid,
                                    "/bin/true"], check=True, capture_output=True)
            t0 = time.monotonic()
            ck = engine.checkpoint(name, "c")
            ck_ms = (time.monotonic() - t0) * 1000
            t0 = time.monotonic()
            engine.restore(ck.id, name=name + "-r")
            r_ms = (time.monotonic() - t0) * 1000
            engine.exec(name + "-r", ["/bin/true"])
            out.append({"mode": mode, "execs": n, "raw_bytes": ck.size,
                        "checkpoint_ms": ck_ms, "restore_ms": r_ms})
            log(f"exec growth: {mode} x{n}: raw {ck.size / 1e6:.1f} MB, checkpoint "
                f"{ck_ms:.0f} ms, restore {r_ms:.0f} ms")
        finally:
            for nm in (name, name + "-r"):
                with contextlib.suppress(Exception):
                    engine.remove(nm, force=True)
    engine.checkpoints.flush()  # type: ignore[attr-defined]
    return out


# ------------------------------------------------------------------------------- peers

PEERS_VENV = Path(tempfile.gettempdir()) / "torpor-bench-peers-venv"
PEERS_PACKAGES = ["langgraph", "langgraph-checkpoint-sqlite", "langgraph-checkpoint-postgres",
                  "psycopg[binary]", "dbos"]
PEERS_PROBE = ("import langgraph.checkpoint.sqlite, langgraph.checkpoint.postgres, psycopg, "
               "dbos")


def peers_python() -> tuple[Path | None, str]:
    """A separate venv with langgraph + its SQLite and PostgreSQL checkpointers, psycopg and
    dbos (never torpor's own deps); reused when it already imports them all."""
    py = PEERS_VENV / "bin" / "python"
    probe = [str(py), "-c", PEERS_PROBE]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py, "reused"
    t0 = time.monotonic()
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True,
                           capture_output=True, timeout=60)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEERS_PACKAGES], check=True,
                       capture_output=True, timeout=300)
        subprocess.run(probe, check=True, capture_output=True, timeout=60)
    except (subprocess.SubprocessError, OSError) as e:
        return None, f"pip install of the peers failed or took over 5 minutes: {e}"
    return py, f"installed in {time.monotonic() - t0:.0f} s"


def run_peers(conversations: dict[str, dict[str, Any]], work: Path) -> dict[str, Any]:
    """headline_peers.py on the conversations, in the peers venv, with a throwaway
    PostgreSQL cluster for the PostgreSQL checkpointer and DBOS (skipped without one)."""
    py, how = peers_python()
    if py is None:
        return {"skipped": how}
    inp = work / "peer-input.json"
    inp.write_text(json.dumps({k: {x: c[x] for x in ("calls", "payload", "steps")}
                               for k, c in conversations.items()}))
    out = work / "peer-output.json"
    script = Path(__file__).parent / "headline_peers.py"
    cmd = [str(py), str(script), str(inp), str(out), str(work / "peers")]
    cluster, pg_note = None, None
    if server_bindir() is None:
        pg_note = "no PostgreSQL server binaries under /usr/lib/postgresql"
    else:
        try:
            cluster = TempCluster()
            cluster.__enter__()
            cmd += ["--pg", cluster.url()]
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            cluster, pg_note = None, f"PostgreSQL cluster did not start: {e}"
    torpor_pg: dict[str, Any] = {}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=4 * 3600)
        if cluster is not None:
            for tag, c in conversations.items():
                torpor_pg[tag] = {**torpor_on_postgres(c["steps"], cluster, work),
                                  "calls": c["calls"], "payload": c["payload"]}
                log(f"torpor log on PostgreSQL {tag}: {torpor_pg[tag]['bytes'] / 1e6:.2f} MB, "
                    f"read {torpor_pg[tag]['read_median_s'] * 1000:.1f} ms")
    finally:
        if cluster is not None:
            cluster.__exit__(None, None, None)
    if proc.returncode != 0 and not out.exists():
        return {"skipped": f"peer run failed: {proc.stderr[-2000:]}"}
    res = json.loads(out.read_text())
    res["torpor_postgres"] = torpor_pg
    if proc.returncode != 0:
        res["error"] = proc.stderr[-2000:]
    res["venv"] = how
    if pg_note:
        res["postgres_skipped"] = pg_note
    return res


def torpor_on_postgres(steps: list[list[dict[str, Any]]], cluster: TempCluster,
                       work: Path) -> dict[str, Any]:
    """torpor's context log on the peers' PostgreSQL, fed the same conversation one model
    step per append (from_openai: messages, tool calls, tool results; no runtime markers):
    bytes (tables + indexes + TOAST, plus blob files for payloads over 64 KiB) and the
    context read, as for the peers."""
    import psycopg

    url = cluster.url(cluster.create_db())
    blobs = work / f"torpor-pg-blobs-{len(steps)}"

    def size() -> int:
        with psycopg.connect(url) as c:
            row = c.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'm')").fetchone()
        return int(row[0]) if row else 0

    lg = open_log(url, blobs=str(blobs))
    try:
        empty = size()
        epoch = lg.acquire("session")
        t0 = time.monotonic()
        for step in steps:
            lg.append("session", from_openai(step), epoch=epoch)
        feed = time.monotonic() - t0
        entries, logical = lg.size("session")
    finally:
        lg.close()
    stored = size() + dir_bytes(blobs)
    times, n = [], 0
    for _ in range(5):
        t0 = time.monotonic()
        lg = open_log(url, blobs=str(blobs))
        try:
            n = len(to_openai(model_view(lg.read("session"))))
        finally:
            lg.close()
        times.append(time.monotonic() - t0)
    shutil.rmtree(blobs, ignore_errors=True)
    return {"steps": len(steps), "entries": entries, "log": logical, "bytes": stored,
            "bytes_empty_schema": empty, "feed_s": feed,
            "read_median_s": statistics.median(times), "read_samples_s": times,
            "messages_restored": n}


def context_read(rt: Runtime, sid: str) -> dict[str, Any]:
    """torpor's context-only resume: open the log afresh, read the session, build what the
    model is sent (large payloads loaded); median of 5."""
    times = []
    n = 0
    for _ in range(5):
        t0 = time.monotonic()
        lg = open_log(rt.db_url)
        try:
            n = len(to_openai(model_view(lg.read(sid))))
        finally:
            lg.close()
        times.append(time.monotonic() - t0)
    return {"read_median_s": statistics.median(times), "read_samples_s": times,
            "messages": n}


def conversation_steps(rt: Runtime, sid: str, upto: int) -> list[list[dict[str, Any]]]:
    """The session's OpenAI messages, cut into steps: what each model call added. The
    whole conversation as it happened, markers left out: a compaction (the 1 MB sessions
    past about 500 calls pass the model window) cuts what the model is sent, not what a
    peer journaling each step would have stored."""
    entries = [e for e in rt.log.read(sid) if e.seq <= upto and e.kind != "marker"]
    msgs = to_openai(entries)
    steps: list[list[dict[str, Any]]] = [[{"role": "system", "content": SYSTEM}]]
    for m in msgs:
        if m.get("role") == "assistant" and steps[-1]:
            steps.append([])
        steps[-1].append(m)
    return steps


# ------------------------------------------------------------------------------ report

def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    runsc = ""
    if shutil.which("runsc"):
        runsc = subprocess.run(["runsc", "--version"], capture_output=True, text=True).stdout
    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "runsc": runsc.splitlines()[0] if runsc else "?",
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": list(os.getloadavg()),
    }


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = 0.0 if sxx == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def fit_quadratic(points: list[tuple[int, int]]) -> tuple[float, float, float]:
    """Least-squares y = a x^2 + b x + c over (x, y) points (normal equations)."""
    s = [sum(x ** k for x, _ in points) for k in range(5)]
    t = [sum((x ** k) * y for x, y in points) for k in range(3)]
    m = [[s[4], s[3], s[2], t[2]], [s[3], s[2], s[1], t[1]], [s[2], s[1], s[0], t[0]]]
    for i in range(3):  # Gauss-Jordan
        p = max(range(i, 3), key=lambda r: abs(m[r][i]))
        m[i], m[p] = m[p], m[i]
        for r in range(3):
            if r != i and m[i][i]:
                f = m[r][i] / m[i][i]
                m[r] = [a - f * b for a, b in zip(m[r], m[i], strict=True)]
    return tuple(m[i][3] / m[i][i] for i in range(3))  # type: ignore[return-value]


def cumulative(series: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, acc = [], 0
    for calls, b in series:
        acc += b
        out.append((calls, acc))
    return out


def analyse(res: dict[str, Any]) -> dict[str, Any]:
    an: dict[str, Any] = {}
    for payload in ("small", "1mb"):
        cs = sorted((c for c in res["configs"] if c["payload"] == payload),
                    key=lambda c: c["calls"])
        if not cs:
            continue
        a: dict[str, Any] = {}
        xs = [c["calls"] for c in cs]
        ry = [c["replay"]["median_s"] for c in cs]
        sy = [c["snapshot"]["median_s"] for c in cs]
        if len(cs) >= 2:
            b0, b1 = fit_line(xs, ry)
            s_mean = statistics.mean(sy)
            a["replay_fit"] = {"intercept_s": b0, "per_call_s": b1}
            a["crossover_calls"] = (s_mean - b0) / b1 if b1 > 0 else None
            s0, s1 = fit_line(xs, sy)
            a["snapshot_fit"] = {"intercept_s": s0, "per_call_s": s1}
        # journal: fit on the longest session's per-step cumulative series
        longest = cs[-1]
        cum = cumulative(longest["bytes"]["journal_series"])
        pts = [(x, y) for x, y in cum if x > 0]
        if len(pts) >= 3:
            qa, qb, qc = fit_quadratic(pts)
            a["journal_fit"] = {"a": qa, "b": qb, "c": qc, "fitted_on_calls": longest["calls"]}
            cross = next((x for x, y in cum if y >= HISTORY_LIMIT), None)
            if cross is not None:
                a["journal_crosses_50MB_at_calls"] = cross
                a["journal_crossing_measured"] = True
            elif qa > 0:
                disc = qb * qb - 4 * qa * (qc - HISTORY_LIMIT)
                a["journal_crosses_50MB_at_calls"] = (-qb + disc ** 0.5) / (2 * qa)
                a["journal_crossing_measured"] = False
        t0, t1 = fit_line(xs, [c["bytes"]["torpor_total"] for c in cs]) if len(cs) >= 2 \
            else (0.0, cs[0]["bytes"]["torpor_total"] / cs[0]["calls"])
        a["torpor_fit"] = {"intercept": t0, "per_call": t1}
        a["torpor_crosses_50MB_at_calls"] = (HISTORY_LIMIT - t0) / t1 if t1 > 0 else None
        if len(cs) >= 2:
            m0, m1 = fit_line(xs, [c["bytes"]["torpor_minimal"] for c in cs])
            a["torpor_minimal_fit"] = {"intercept": m0, "per_call": m1}
            a["torpor_minimal_crosses_50MB_at_calls"] = (HISTORY_LIMIT - m0) / m1 \
                if m1 > 0 else None
        by = {c["calls"]: c for c in cs}
        goals = {}
        if 100 in by:
            goals["snapshot_20x_faster_at_100"] = by[100]["speedup"] >= 20
            goals["speedup_at_100"] = by[100]["speedup"]
        # the 1,000-call point: the first length >= 1000 (1 MB outputs give 1,013 calls,
        # since a turn is not cut short)
        big_n = min((n for n in by if n >= 1000), default=None)
        if 10 in by and big_n is not None:
            ratio = by[big_n]["snapshot"]["median_s"] / by[10]["snapshot"]["median_s"]
            goals["calls_for_1000"] = big_n
            goals["snapshot_1000_within_1.5x_of_10"] = ratio <= 1.5
            goals["ratio_1000_to_10"] = ratio
            sb10, sbn = by[10].get("snapshot_standby"), by[big_n].get("snapshot_standby")
            if sb10 and sbn:
                goals["standby_ratio_1000_to_10"] = sbn["median_s"] / sb10["median_s"]
        if 100 in by and by[100].get("snapshot_standby"):
            goals["standby_speedup_at_100"] = (by[100]["replay"]["median_s"]
                                               / by[100]["snapshot_standby"]["median_s"])
        if "snapshot_1000_within_1.5x_of_10" not in goals and "snapshot_fit" in a and 10 in by:
            sf = a["snapshot_fit"]
            proj = sf["intercept_s"] + sf["per_call_s"] * 1000
            goals["projected_snapshot_1000_s"] = proj
            goals["projected_ratio_1000_to_10"] = proj / by[10]["snapshot"]["median_s"]
        a["goals"] = goals
        an[payload] = a
    return an


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:.1f} ms" if s < 10 else f"{s:.1f} s"


def detail_table(title: str, data: dict[tuple[int, str], dict[str, Any]], columns: list[str],
                 cells: Any) -> list[str]:
    """One peer's own table: a row per (tool calls, payload) in `data`, by payload then
    calls, with `cells(key, row)` under `columns`. Nothing when the peer did not run."""
    if not data:
        return []
    out = ["", f"### {title}", "", "| tool calls | payload | " + " | ".join(columns) + " |",
           "|---:|---|" + "---:|" * len(columns)]
    for k in sorted(data, key=lambda k: (k[1], k[0])):
        out.append(f"| {k[0]} | {k[1]} | " + " | ".join(str(c) for c in cells(k, data[k]))
                   + " |")
    return out


def peers_md(peers: dict[str, Any], torpor: dict[tuple[int, str], dict[str, Any]]) -> list[str]:
    """The peers' tables; torpor maps (tool calls, payload) to its log's "log" bytes,
    "log_on_disk" bytes and "read_median_s" (context read) for the same conversation."""
    if not peers:
        return ["Not run (--no-peers)."]
    if "skipped" in peers:
        return [f"Skipped: {peers['skipped']}"]
    sq, pg, db, tp = (peers.get(k) or {} for k in ("sqlite", "postgres", "dbos",
                                                    "torpor_postgres"))
    keys = sorted({(p["calls"], p["payload"]) for d in (sq, pg, db) for p in d.values()}
                  | set(torpor), key=lambda k: (k[1], k[0]))

    def by(d: dict[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
        return {(p["calls"], p["payload"]): p for p in d.values()}

    sq, pg, db, tp = by(sq), by(pg), by(db), by(tp)
    L = [f"Peers: LangGraph {peers.get('langgraph', '?')} with langgraph-checkpoint-sqlite "
         f"{peers.get('checkpoint_sqlite', '?')}"
         + (f" and langgraph-checkpoint-postgres {peers['checkpoint_postgres']}; DBOS "
            f"{peers['dbos_version']}; psycopg {peers['psycopg']}; PostgreSQL "
            f"{peers['postgresql']} (a throwaway local cluster, default settings)"
            if peers.get("dbos_version") else "")
         + f" (venv {peers.get('venv')}). Each is fed the same conversation as torpor, one "
         "model step at a time (`benchmarks/headline_peers.py`). **They store context only, "
         "no sandbox state**: compare them with torpor's log, not with its snapshots (a "
         "resume from any of them still leaves the sandbox to be rebuilt, by replay).", "",
         "| tool calls | payload | torpor log: logical / SQLite / context read | torpor log "
         "on PostgreSQL: bytes / context read | LangGraph + SQLite: bytes / resume | "
         "LangGraph + PostgreSQL: bytes / resume | DBOS on PostgreSQL: bytes / recovery (of "
         "which replay) |",
         "|---:|---|---|---|---|---|---|"]
    for k in keys:
        t = torpor.get(k, {})
        disk = t.get("log_db", t.get("log_on_disk"))
        cells = [f"{mb(t['log'])} / {mb(disk) if disk else '-'} / "
                 f"{ms(t.get('read_median_s'))}" if "log" in t else "-"]
        cells += [f"{mb(d[k]['bytes'])} / {ms(d[k][r])}" if k in d else "-"
                  for d, r in ((tp, "read_median_s"), (sq, "resume_median_s"),
                               (pg, "resume_median_s"))]
        cells.append(f"{mb(db[k]['bytes'])} / {ms(db[k]['recovery_median_s'])} "
                     f"({ms(db[k]['replay_median_s'])})" if k in db else "-")
        L.append(f"| {k[0]} | {k[1]} | " + " | ".join(cells) + " |")
    L += ["", "torpor log = the logical bytes of the session's context log (what the runtime "
          "wrote, markers included); SQLite = its database file once the WAL is checkpointed "
          "(page count x page size; it also holds the runtime's own small tables) plus blob "
          "files for payloads over 64 KiB. torpor log on PostgreSQL = torpor's context log "
          "(`open_log(postgresql://...)`) in a database of its own on the same cluster as the "
          "peers, fed the same conversation one append per model step (`from_openai`: "
          "messages, tool calls, results; no runtime markers), same accounting as the peers "
          "plus its blob files. Context read = open the log afresh, read the session and "
          "build what the model is sent (large payloads loaded), median of 5; a snapshot "
          "resume does this plus the sandbox restore. Where the runtime compacted the session "
          "(1 MB outputs past about 500 calls), the runtime's log read loads only the summary "
          "and what follows it; the log on PostgreSQL, fed without markers, loads everything, "
          "as the peers do. LangGraph resume = a fresh "
          "connection, a compiled graph and `get_state` of the thread, median of 5. "
          "PostgreSQL bytes = tables + indexes + TOAST of the schema in a database of its "
          "own, the empty schema included (see below); values over 2 KB are TOAST-compressed "
          "(pglz), so they can be below the uncompressed payload."]
    def log_of(k: tuple[int, str]) -> str:
        return mb(torpor.get(k, {}).get("log", 0))

    L += detail_table(
        "torpor's context log on the same PostgreSQL", tp,
        ["steps", "log entries", "stored", "of which empty schema",
         "torpor log (runtime, logical)", "feed", "context read median"],
        lambda k, p: [p["steps"], p["entries"], mb(p["bytes"]), mb(p["bytes_empty_schema"]),
                      log_of(k), f"{p['feed_s']:.1f} s", ms(p["read_median_s"])])
    L += detail_table(
        "LangGraph + SQLite checkpointer", sq,
        ["steps", "checkpoints", "SQLite file", "torpor log", "feed", "resume median"],
        lambda k, p: [p["steps"], p["checkpoints"], mb(p["bytes"]), log_of(k),
                      f"{p['feed_s']:.1f} s", ms(p["resume_median_s"])])
    L += detail_table(
        "LangGraph + PostgreSQL checkpointer (PostgresSaver)", pg,
        ["steps", "checkpoints", "stored", "of which empty schema",
         "checkpoint payload, uncompressed", "torpor log", "feed", "resume median"],
        lambda k, p: [p["steps"], p["checkpoints"], mb(p["bytes"]),
                      mb(p["bytes_empty_schema"]), mb(p["payload_bytes"]), log_of(k),
                      f"{p['feed_s']:.1f} s", ms(p["resume_median_s"])])
    L += detail_table(
        "DBOS on PostgreSQL", db,
        ["steps", "step outputs recorded", "stored", "of which empty schema",
         "step outputs, as stored before TOAST", "torpor log", "feed", "recovery median",
         "launch / dispatch / replay"],
        lambda k, p: [p["steps"], p["steps_recorded"], mb(p["bytes"]),
                      mb(p["bytes_empty_schema"]), mb(p["payload_bytes"]), log_of(k),
                      f"{p['feed_s']:.1f} s", ms(p["recovery_median_s"]),
                      f"{ms(p['launch_median_s'])} / {ms(p['dispatch_median_s'])} / "
                      f"{ms(p['replay_median_s'])}"])  # fmt: skip
    if db:
        L += ["", "The session is one DBOS workflow; each model step is a `@DBOS.step` returning "
              "the messages it added (assistant message + tool results), so the step outputs "
              "journal the conversation; then the workflow waits in `DBOS.recv` (a wait "
              "point) and the process is killed (`os._exit`, no shutdown): the workflow stays "
              "PENDING. Recovery = a fresh process running `DBOS(config)` + `DBOS.launch()`, "
              "timed until the recovered workflow has replayed its last recorded step (every "
              "step output read back from the database, none re-executed; the messages "
              "checked against the fed ones), interpreter start-up and imports excluded. "
              "Launch = DBOS() + launch(); dispatch = launch to the workflow running again: "
              "DBOS re-enqueues a recovered workflow on its internal queue, whose worker "
              "first polls after its 1 s polling interval, so this part is a constant; "
              "replay = the workflow re-reading its steps' outputs, one database round trip "
              "per step. DBOS's default serializer stores each output as base64 of a pickle "
              "(4/3 of the pickle's bytes)."]
    series = [(name, d[max(d, key=lambda k: (k[1] == "small", k[0]))])
              for name, d in (("LangGraph + SQLite", sq), ("LangGraph + PostgreSQL", pg),
                              ("DBOS", db)) if d]
    if series:
        longest = series[0][1]
        L += ["", f"Growth along the longest conversation with {longest['payload']} outputs "
              f"({longest['calls']} tool calls), sampled while feeding: bytes stored after n "
              "model steps.", "",
              "| steps | " + " | ".join(n for n, _ in series) + " |",
              "|---:|" + "---:|" * len(series)]
        cols = [dict(map(tuple, p.get("series") or [])) for _, p in series]
        for n in sorted({n for c in cols for n in c}):
            L.append(f"| {n} | " + " | ".join(mb(c[n]) if n in c else "-" for c in cols)
                     + " |")
    left = (peers.get("left_out") or {})
    left = left.get("langgraph", []) if isinstance(left, dict) else left
    if left:
        L += ["", f"Left out for LangGraph: {', '.join(left)}: it rewrites the whole message "
              "list at each checkpoint, so 1 MB outputs past 100 calls would need hundreds of "
              "GB. DBOS stores each step's output once and gets every conversation."]
    if peers.get("postgres_skipped"):
        L += ["", f"PostgreSQL checkpointer and DBOS: not run ({peers['postgres_skipped']})."]
    if peers.get("error"):
        L += ["", f"The peer run stopped early: `{peers['error'][-300:]}`"]
    return L


def write_md(res: dict[str, Any], path: Path) -> None:
    m, an = res["machine"], res["analysis"]
    L = ["# Headline: resume by snapshot (torpor) vs resume by replay", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, {m['runsc']}, "
         f"Python {m['python']}; {m['date']}; load average at start "
         f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
         f"{', '.join(f'{x:.2f}' for x in m['loadavg_end'])} (shared machine: other "
         "developers' tests ran at the same time, so absolute times are noisy).", "",
         f"Command: `{res['command']}` ({res['mode']} run, {res['wall_s'] / 60:.1f} min). "
         f"Package install inside the sandbox: {res['install_method']}.", "",
         "## Resume latency and stored bytes", "",
         "| tool calls | payload | wait points | snapshot resume median / p95 | ... into a "
         "standby | replay resume median / p95 | speedup | torpor log | latest snapshot, "
         "stored | snapshot store, all wait points | per-step journal | replay state same? |",
         "|---:|---|---:|---|---|---|---:|---:|---:|---:|---:|---|"]
    for c in sorted(res["configs"], key=lambda c: (c["payload"], c["calls"])):
        v = c["state_snapshot_vs_replay"]
        same = "yes" if v["identical"] else (
            f"no: {v['changed'] + v['only_snapshot'] + v['only_replay']} of {v['files']} files "
            f"differ ({', '.join(f'{k} {n}' for k, n in sorted(v['by_kind'].items()))}); "
            f"counter value {'same' if v['counter_value_same'] else 'differs'}, token "
            f"{'same' if v['counter_token_same'] else 'differs'}")
        L.append(
            f"| {c['calls']} | {c['payload']} | {c['wait_points']['count']} | "
            f"{c['snapshot']['median_s'] * 1000:.0f} / {c['snapshot']['p95_s'] * 1000:.0f} ms "
            f"(n={len(c['snapshot']['samples_s'])}) | "
            + (f"{sb['median_s'] * 1000:.0f} / {sb['p95_s'] * 1000:.0f} ms "
               f"(n={len(sb['samples_s'])})" if (sb := c.get("snapshot_standby")) else "-")
            + " | "
            f"{c['replay']['median_s']:.2f} / {c['replay']['p95_s']:.2f} s "
            f"(n={len(c['replay']['samples_s'])}) | {c['speedup']:.1f}x | "
            f"{mb(c['bytes']['log'])} | {mb(c['bytes']['latest_snapshot_stored'] or 0)} | "
            f"{mb(c['bytes']['snapshot_store'])} | "
            f"{mb(c['bytes']['journal'])} | {same} |")
    L += ["", "Snapshot resume = `session.send` to the next `tool_call_started` event (lease, "
          "restore of the wait-point snapshot, log read, model step). Replay resume = read "
          "the log, start a fresh sandbox from the image, re-run every logged tool call "
          "through the same tools. Samples after the first snapshot resume are forks of the "
          "same wait-point snapshot; every restore read torpor's local hot copy of the "
          "checkpoint (same machine), not the compressed store. Into a standby = the same, "
          "restored into a standby sandbox (set up beforehand, as a torpor worker keeps one "
          "ready; see docs/sandboxes.md). Snapshot store = the "
          "durable, compressed, deduplicated store holding every wait-point snapshot of "
          "the session (none deleted); torpor "
          "log = logical bytes of the context log. Per-step journal = the sum over model "
          "calls of the chat.completions request each was sent (no compaction), what a "
          "workflow history storing every model input holds.", ""]
    misses = [(c, m) for c in res["configs"] for m in (c.get("snapshot_standby") or {})
              .get("misses", [])]  # fmt: skip
    if misses:
        L += [f"Resumes that took a standby but could not use it (restored the usual way, "
              f"not counted above, measured again): {len(misses)} of "
              f"{len(misses) + sum(len(c['snapshot_standby']['samples_s']) for c in res['configs'] if c.get('snapshot_standby'))}; "  # noqa: E501
              "why: " + "; ".join(f"{c['calls']} {c['payload']}: {m.split(': ', 1)[-1]}"
                                  for c, m in misses) + ".", ""]
    L += ["## Goals", ""]
    for payload, a in an.items():
        g = a.get("goals", {})
        if "snapshot_20x_faster_at_100" in g:
            L.append(f"- {payload}: at 100 tool calls snapshot resume is "
                     f"{g['speedup_at_100']:.1f}x faster than replay (goal >= 20x): "
                     f"**{'met' if g['snapshot_20x_faster_at_100'] else 'missed'}**")
        if "standby_speedup_at_100" in g:
            L.append(f"- {payload}: at 100 tool calls snapshot resume into a standby is "
                     f"{g['standby_speedup_at_100']:.1f}x faster than replay (goal >= 20x): "
                     f"**{'met' if g['standby_speedup_at_100'] >= 20 else 'missed'}**")
        if "snapshot_1000_within_1.5x_of_10" in g:
            L.append(f"- {payload}: snapshot resume at {g.get('calls_for_1000', 1000):,} calls is "
                     f"{g['ratio_1000_to_10']:.2f}x that at 10 (goal <= 1.5x): "
                     f"**{'met' if g['snapshot_1000_within_1.5x_of_10'] else 'missed'}**")
            if "standby_ratio_1000_to_10" in g:
                r = g["standby_ratio_1000_to_10"]
                L.append(f"- {payload}: the same into a standby: {r:.2f}x (goal <= 1.5x): "
                         f"**{'met' if r <= 1.5 else 'missed'}**")
        elif "projected_ratio_1000_to_10" in g:
            r = g["projected_ratio_1000_to_10"]
            L.append(f"- {payload}: snapshot resume at 1,000 calls: not measured in this run; "
                     f"the linear fit over the measured lengths projects "
                     f"{g['projected_snapshot_1000_s']:.2f} s, {r:.1f}x that at 10 (goal "
                     f"<= 1.5x): **projected {'met' if r <= 1.5 else 'missed'}** (see "
                     "\"why snapshot resume grows\")")
    L += ["", "## Fits and crossovers", ""]
    for payload, a in an.items():
        if "replay_fit" in a:
            f = a["replay_fit"]
            sf = a["snapshot_fit"]
            cross = a.get("crossover_calls")
            where = ("replay is slower at every measured length, and by the fits it would "
                     "only win for a session with no tool calls at all"
                     if cross is not None and cross < 1 else
                     f"replay is faster below about {cross:.1f} tool calls" if cross else "n/a")
            if sf["per_call_s"] > 0:
                where += (f"; snapshot resume also grows with the session, but "
                          f"{f['per_call_s'] / sf['per_call_s']:.0f}x more slowly than replay")
            L.append(f"- {payload}: replay ~ {f['intercept_s']:.2f} s + "
                     f"{f['per_call_s'] * 1000:.0f} ms per tool call; snapshot ~ "
                     f"{sf['intercept_s'] * 1000:.0f} ms + {sf['per_call_s'] * 1e6:.0f} us per "
                     f"call. Crossover: {where}.")
        if "journal_crosses_50MB_at_calls" in a:
            jf = a["journal_fit"]
            how = ("measured" if a["journal_crossing_measured"] else
                   f"extrapolated from a quadratic fitted to the {jf['fitted_on_calls']}-call "
                   "session's per-step series")
            L.append(f"- {payload}: the per-step journal passes 50 MiB (Temporal's history "
                     f"limit) at about {a['journal_crosses_50MB_at_calls']:.0f} tool calls "
                     f"({how}; fit {jf['a']:.1f} B x calls^2 + {jf['b']:.0f} B x calls); "
                     f"torpor's log + every wait-point snapshot kept (the runtime's default; "
                     "Policy.keep_snapshots bounds it) "
                     f"would reach 50 MiB at about {a['torpor_crosses_50MB_at_calls']:.0f} "
                     "calls (linear fit)"
                     + (f", its log + the latest snapshot (what a resume needs) at about "
                        f"{a['torpor_minimal_crosses_50MB_at_calls']:.0f} calls"
                        if a.get("torpor_minimal_crosses_50MB_at_calls") else "")
                     + "; torpor has no such limit, it is shown for scale.")
    L += ["", "## Snapshot cost per wait point", "",
          "| tool calls | payload | wait points | checkpoint median | raw checkpoint median | "
          "store growth per wait point |", "|---:|---|---:|---:|---:|---:|"]
    for c in sorted(res["configs"], key=lambda c: (c["payload"], c["calls"])):
        w = c["wait_points"]
        L.append(f"| {c['calls']} | {c['payload']} | {w['count']} | {w['median_ms']:.0f} ms | "
                 f"{mb(w['median_raw_bytes'])} | "
                 f"{mb(c['bytes']['snapshot_store_per_wait_point'])} |")
    if res.get("exec_growth"):
        L += ["", "## Why snapshot resume grows with the session", "",
              "An idle sandbox, n commands (`/bin/true`), then one checkpoint and one restore:",
              "", "| how the commands ran | n | raw checkpoint | checkpoint | restore |",
              "|---|---:|---:|---:|---:|"]
        for g in res["exec_growth"]:
            L.append(f"| {g['mode']} | {g['execs']} | {mb(g['raw_bytes'])} | "
                     f"{g['checkpoint_ms']:.0f} ms | {g['restore_ms']:.0f} ms |")
        torpor_rows = sorted((g for g in res["exec_growth"] if g["mode"] == "torpor exec"),
                             key=lambda g: g["execs"])  # fmt: skip
        if len(torpor_rows) >= 2 and torpor_rows[-1]["execs"]:
            a, b = torpor_rows[0], torpor_rows[-1]
            per = (b["raw_bytes"] - a["raw_bytes"]) / b["execs"]
            L += ["", f"Commands run through torpor's exec path leave about {per / 1024:.1f} KiB "
                  "each in the sandbox's memory (plain `runsc exec`: nothing); until torpor-init "
                  "was linked against musl it was about 80 KiB, which dominated. What remains "
                  "is mostly the session's own state: at 1,000 calls the sandbox holds a repo "
                  "with hundreds of commits and thousands of files in memory (its /work "
                  "tmpfs; see the raw checkpoint sizes above). runsc's restore time grows with the "
                  "number of files more than with the bytes: every inode and dentry of the "
                  "in-memory filesystem is an object of the kernel state that runsc decodes "
                  "on restore (below)."]
    if res.get("file_growth"):
        rows = res["file_growth"]
        L += ["", "An idle sandbox holding n small files in its in-memory filesystem:", "",
              "| files | raw checkpoint | checkpoint | restore |", "|---:|---:|---:|---:|"]
        L += [f"| {g['files']:,} | {mb(g['raw_bytes'])} | {g['checkpoint_ms']:.0f} ms | "
              f"{g['restore_ms']:.0f} ms |" for g in rows]
        if len(rows) >= 2 and rows[-1]["files"]:
            per = (rows[-1]["restore_ms"] - rows[0]["restore_ms"]) / rows[-1]["files"] * 1000
            small = sorted((c for c in res.get("configs", []) if c["payload"] == "small"
                            and c.get("context_read")), key=lambda c: c["calls"])  # fmt: skip
            reads = ""
            if len(small) >= 2:
                a, b = small[0], small[-1]
                reads = (f" torpor's own part grows too, less: reading the log and building "
                         f"the model's request took {ms(a['context_read']['read_median_s'])} "
                         f"at {a['calls']:,} small calls and "
                         f"{ms(b['context_read']['read_median_s'])} at {b['calls']:,} (the "
                         "model is sent the whole conversation until it is compacted); the "
                         "runtime reads it while runsc restores the sandbox, so only what was "
                         "appended since is read after the restore.")
            L += ["", f"About {per:.0f} ms of restore per 1,000 files on this runsc. This is "
                  "most of what makes a 1,000-call session's resume slower than a 10-call "
                  "one's, and torpor cannot change it short of a faster restore path in "
                  "gVisor (below: what it can change)." + reads]
    ov, gd = res.get("workspace_on_overlay"), res.get("git_defaults")
    main = [c for c in res.get("configs", []) if c["payload"] == "small"]
    if (ov or gd) and main:
        c = max(main, key=lambda c: c["calls"])
        L += ["", "What torpor does change: how many files a session's sandbox keeps. Two "
              "defaults do that. The runtime gives each session's sandbox a tmpfs at /work: "
              "on the root overlay this gVisor keeps a whiteout (a device file in the kernel "
              "state) for every name deleted or renamed away, and git writes every object "
              "under a temporary name first, Python every `.pyc`; on a tmpfs a deleted file "
              "leaves nothing. And torpor/base sets git's gc.auto to 256 (git's default is "
              "6,700), so a repo packs its loose objects, one file per object, early: an agent "
              "that commits after each change otherwise piles up thousands. The same session, "
              "built once per variant in this run (files: under /work, from the probe):", "",
              "| small payload | variant | files | raw checkpoint | snapshot resume median / "
              "p95 | restore median |", "|---|---|---:|---:|---|---:|",
              f"| {c['calls']:,} calls | torpor's defaults (/work on a tmpfs, gc.auto 256) | "
              f"{c['state_snapshot_vs_snapshot']['files']:,} | "
              f"{mb(c['bytes']['latest_snapshot_raw'])} | "
              f"{ms(c['snapshot']['median_s'])} / {ms(c['snapshot']['p95_s'])} | "
              f"{statistics.median(c['snapshot']['restore_ms']):.0f} ms |"]
        for v, what in ((ov, "/work on the root overlay (`Runtime(workspace=None)`)"),
                        (gd, "git's default gc.auto (6,700) in the repo")):  # fmt: skip
            if v:
                files = f"{v['files']:,}" if v.get("files") else "?"
                L.append(f"| {v['calls']:,} calls | {what} | {files} | "
                         f"{mb(v['latest_snapshot_raw'])} | "
                         f"{ms(v['median_s'])} / {ms(v['p95_s'])} | "
                         f"{statistics.median(v['restore_ms']):.0f} ms |")
    if res.get("policy"):
        L += ["", "## Snapshot policy: work lost to a crash vs time spent snapshotting", "",
              "The same number of calls, either as an autonomous run in two long turns after "
              "the setup turn, or in the workload's short turns with every reply coming at "
              "once; lost work = tool calls done since the last snapshot when a crash hits "
              "right after a call (mean and worst over every call position, from the log's "
              "snapshot markers; no crash injected).", "",
              "| turns | policy | calls | snapshots | time snapshotting | share of run | "
              "lost calls mean / max |", "|---|---|---:|---:|---:|---:|---|"]
        for p in res["policy"]:
            name = "wait points only" if p["k"] == 0 else f"+ every {p['k']} calls"
            if p.get("warm"):
                name = f"delayed: kept warm {p['warm']:g} s after a wait point"
            turns = (f"{p['turns']} long" if p.get("long_turns", True)
                     else f"{p['turns']} short, replies at once")
            L.append(f"| {turns} | {name} | {p['calls']} | {p['snapshots']} | "
                     f"{p['snapshot_s_total']:.1f} s | {p['snapshot_share'] * 100:.0f} % | "
                     f"{p['lost_mean']:.1f} / {p['lost_max']} |")
        L += ["", "Delayed for short waits (`Policy.warm_seconds`): the sandbox stays up after "
              "a wait point and is snapshotted only when the window ends, so replies that "
              "come within it skip both the snapshot and the restore; a crash meanwhile "
              "loses everything since the last snapshot taken (here the whole run, since "
              "every reply came at once). The runtime's default snapshots at every wait "
              "point."]
    L += ["", "## Peers (context only)", ""]
    torpor = {(c["calls"], c["payload"]): {**c.get("context_read", {}), **c["bytes"]}
              for c in res["configs"]}
    L += peers_md(res.get("peers") or {}, torpor)
    L += ["", "![resume latency](headline_resume.png)", "",
          "![stored bytes](headline_bytes.png)", ""]
    path.write_text("\n".join(L))


def plot(res: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"small": "-", "1mb": "--"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for payload in ("small", "1mb"):
        cs = sorted((c for c in res["configs"] if c["payload"] == payload),
                    key=lambda c: c["calls"])
        if not cs:
            continue
        xs = [c["calls"] for c in cs]
        for road, color in (("snapshot", "tab:blue"), ("snapshot_standby", "tab:cyan"),
                            ("replay", "tab:red")):  # fmt: skip
            if not all(c.get(road) for c in cs):
                continue
            med = [c[road]["median_s"] for c in cs]
            p95 = [c[road]["p95_s"] for c in cs]
            road = road.replace("_standby", " into a standby")
            ax.errorbar(xs, med, yerr=[[0] * len(xs), [p - m for p, m in zip(p95, med,
                                                                          strict=True)]],
                        fmt="o" + styles[payload], color=color, capsize=3,
                        label=f"{road} ({payload} outputs)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tool calls in the session")
    ax.set_ylabel("resume latency, s (median; bar to p95)")
    ax.set_title("Resume after eviction: snapshot restore vs replay")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "headline_resume.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for payload in ("small", "1mb"):
        cs = sorted((c for c in res["configs"] if c["payload"] == payload),
                    key=lambda c: c["calls"])
        if not cs:
            continue
        xs = [c["calls"] for c in cs]
        ax.plot(xs, [c["bytes"]["log"] for c in cs], "o" + styles[payload], color="tab:green",
                label=f"torpor log ({payload})")
        ax.plot(xs, [c["bytes"]["torpor_minimal"] for c in cs], "^" + styles[payload],
                color="tab:cyan", label=f"torpor log + latest snapshot ({payload})")
        ax.plot(xs, [c["bytes"]["torpor_total"] for c in cs], "s" + styles[payload],
                color="tab:blue", label=f"torpor log + all snapshots ({payload})")
        cum = cumulative(cs[-1]["bytes"]["journal_series"])
        ax.plot([x for x, _ in cum if x > 0], [y for x, y in cum if x > 0], styles[payload],
                color="tab:red", label=f"per-step journal ({payload})")
        a = res["analysis"].get(payload, {})
        if "journal_fit" in a and not a.get("journal_crossing_measured", True):
            f = a["journal_fit"]
            hi = max(a["journal_crosses_50MB_at_calls"] * 1.3, xs[-1] + 1)
            gx = [xs[-1] * (hi / xs[-1]) ** (i / 40) for i in range(41)]
            ax.plot(gx, [f["a"] * x * x + f["b"] * x + f["c"] for x in gx], ":",
                    color="tab:red", label=f"journal, fitted ({payload})")
    ax.axhline(HISTORY_LIMIT, color="black", lw=0.8, ls="-.")
    ax.text(0.02, HISTORY_LIMIT * 1.15, "50 MiB history limit (Temporal)", fontsize=8,
            transform=ax.get_yaxis_transform())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tool calls in the session")
    ax.set_ylabel("bytes stored")
    ax.set_title("Stored bytes per session")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "headline_bytes.png", dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------------- peers only

def write_peers_md(res: dict[str, Any], path: Path) -> None:
    m = res["machine"]
    torpor = {(c["calls"], c["payload"]): c["torpor"] for c in res["conversations"].values()}
    L = ["# Headline peers: context-only durability on the headline's conversations", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, Python "
         f"{m['python']}; {m['date']}; load average at start "
         f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
         f"{', '.join(f'{x:.2f}' for x in m['loadavg_end'])} (shared machine: absolute times "
         "are noisy).", "",
         f"Command: `{res['command']}` ({res['wall_s'] / 60:.1f} min). Conversations: "
         f"{res['conversations_source']}. They are those of the headline benchmark "
         "(`headline_workload.py`): each session run through torpor's Runtime on gVisor to "
         "its last wait point, then cut into model steps (what each model call added: the "
         "assistant message and its tool results). The resume and replay measurements of the "
         "headline are not repeated here (see headline.md).", "",
         "| tool calls | payload | model steps | messages | messages the model is sent at "
         "resume | torpor log entries | session build |", "|---:|---|---:|---:|---:|---:|---:|"]
    for c in sorted(res["conversations"].values(), key=lambda c: (c["payload"], c["calls"])):
        t = c["torpor"]
        L.append(f"| {c['calls']} | {c['payload']} | {c['steps']} | {c['messages']} | "
                 f"{t.get('messages', '-')} | {t['log_entries']} | {t['build_s']:.0f} s |")
    L += ["", "Messages = the whole conversation, system prompt included, as fed to the peers. "
          "The model is sent fewer where torpor compacted the session (the 1 MB outputs past "
          "about 500 calls overflow the model window): a summary, then what follows it."]
    L += ["", "## Peers (context only)", "", *peers_md(res["peers"], torpor), ""]
    path.write_text("\n".join(L))


def peers_only(args: argparse.Namespace, calls: list[int], payloads: list[str]) -> int:
    """Build the sessions only (or read their conversations from --convs), run the peers,
    write results/headline_peers.json and .md."""
    started = time.monotonic()
    convs_file = Path(args.convs) if args.convs else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="torpor-bench-peers-"))
    try:
        info = machine()
        if convs_file and convs_file.exists():
            convs = json.loads(convs_file.read_text())
            source = f"read from {convs_file} (saved by an earlier --peers-only --convs run)"
        else:
            if os.geteuid() != 0:
                print("needs root (runsc) to build the sessions; or give --convs FILE",
                      file=sys.stderr)
                return 2
            images = ImageStore()
            images.build_base()
            wheels = wl.prepare_wheels(home / "wheels")
            bench = Bench(args, home, images, wheels)
            convs = {f"c{n}-{p}": bench.conversation(n, p) for p in payloads for n in calls}
            source = "built in this run"
            if convs_file:
                convs_file.write_text(json.dumps(convs))
                source += f", saved to {convs_file}"
        log("peers: LangGraph (SQLite, PostgreSQL) and DBOS on the same conversations")
        peers = run_peers(convs, home)
        info["loadavg_end"] = list(os.getloadavg())
        res = {"command": " ".join(["benchmarks/bench_headline.py", *sys.argv[1:]]),
               "machine": info, "conversations_source": source,
               "conversations": {k: {"calls": c["calls"], "payload": c["payload"],
                                     "steps": len(c["steps"]),
                                     "messages": sum(len(x) for x in c["steps"]),
                                     "torpor": c["torpor"]}
                                 for k, c in convs.items()},
               "peers": peers, "wall_s": time.monotonic() - started}
        (RESULTS / "headline_peers.json").write_text(json.dumps(res, indent=1))
        write_peers_md(res, RESULTS / "headline_peers.md")
        log(f"done in {res['wall_s'] / 60:.1f} min: {RESULTS / 'headline_peers.md'}")
        print((RESULTS / "headline_peers.md").read_text())
    finally:
        remove_home(home)
    return 0


# -------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 and 100 calls, few repeats")
    ap.add_argument("--calls", help="comma-separated session lengths (default 10,100,1000)")
    ap.add_argument("--payloads", default="small,1mb")
    ap.add_argument("--repeats", type=int, help="snapshot resumes per session")
    ap.add_argument("--replay-repeats", type=int, help="replays per session")
    ap.add_argument("--policy-calls", type=int, help="calls in the policy experiment run")
    ap.add_argument("--no-policy", action="store_true")
    ap.add_argument("--no-standby", dest="standby", action="store_false",
                    help="skip the snapshot resumes into a standby")  # fmt: skip
    ap.add_argument("--overlay-calls", type=int,
                    help="also resume a session of this length with /work on the root "
                    "overlay instead of a tmpfs (default: the longest; 0: skip)")
    ap.add_argument("--git-defaults-calls", type=int,
                    help="also resume a session of this length whose repo keeps git's "
                    "default gc.auto instead of torpor/base's (default: the longest; 0: skip)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--peers-only", action="store_true",
                    help="only build the sessions and run the peers on their conversations; "
                    "writes results/headline_peers.json and .md")
    ap.add_argument("--convs", metavar="FILE",
                    help="with --peers-only: read the conversations from FILE if it exists, "
                    "else save them there")
    args = ap.parse_args()
    calls = [int(x) for x in (args.calls or ("10,100" if args.quick else "10,100,1000"))
             .split(",")]
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.replay_repeats = args.replay_repeats or (2 if args.quick else 3)
    args.policy_calls = args.policy_calls or (49 if args.quick else 209)
    if args.overlay_calls is None:
        args.overlay_calls = max(calls)
    if args.git_defaults_calls is None:
        args.git_defaults_calls = max(calls)
    payloads = args.payloads.split(",")
    if args.peers_only:
        return peers_only(args, calls, payloads)
    if os.geteuid() != 0:
        print("needs root (runsc)", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    info = machine()
    images = ImageStore()
    images.build_base()
    home = Path(tempfile.mkdtemp(prefix="torpor-bench-headline-"))
    res: dict[str, Any] = {"command": " ".join(["benchmarks/bench_headline.py", *sys.argv[1:]]),
                           "mode": "quick" if args.quick else "full", "machine": info,
                           "configs": [], "policy": []}
    try:
        wheels = wl.prepare_wheels(home / "wheels")
        res["install_method"] = wl.install_command(wheels)[1]
        bench = Bench(args, home, images, wheels)
        for payload in payloads:
            for n in calls:
                cfg = bench.run_config(n, payload)
                res["configs"].append(cfg)
                (RESULTS / "headline.json").write_text(json.dumps(res, indent=1))
        if args.overlay_calls and "small" in payloads:
            res["workspace_on_overlay"] = bench.workspace_on_overlay(args.overlay_calls)
            (RESULTS / "headline.json").write_text(json.dumps(res, indent=1))
        if args.git_defaults_calls and "small" in payloads:
            res["git_defaults"] = bench.git_defaults(args.git_defaults_calls)
            (RESULTS / "headline.json").write_text(json.dumps(res, indent=1))
        if not args.no_peers:
            log("peers: LangGraph (SQLite, PostgreSQL) and DBOS on the same conversations")
            res["peers"] = run_peers(bench.convs, home)
        res["exec_growth"] = exec_growth(home, images, [0, 200] if args.quick else [0, 250, 500])
        res["file_growth"] = file_growth(home, images,
                                         [0, 2000] if args.quick else [0, 2000, 5000])
        if not args.no_policy:
            for k in (0, 5, 20):
                res["policy"].append(bench.run_policy(args.policy_calls, k))
            for warm in (0.0, 60.0):
                res["policy"].append(bench.run_policy(args.policy_calls, 0, warm=warm,
                                                      long_turns=False))
        info["loadavg_end"] = list(os.getloadavg())
        res["wall_s"] = time.monotonic() - started
        res["analysis"] = analyse(res)
        (RESULTS / "headline.json").write_text(json.dumps(res, indent=1))
        write_md(res, RESULTS / "headline.md")
        plot(res)
        log(f"done in {res['wall_s'] / 60:.1f} min: {RESULTS / 'headline.md'}")
        print((RESULTS / "headline.md").read_text())
    finally:
        remove_home(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
