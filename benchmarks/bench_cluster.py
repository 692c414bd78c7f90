"""Benchmark of several machines: turns per minute, resume paths, failover, lost changes.

"Machines" are separate TORPOR_HOMEs (their own sandboxes, standbys and hot copies), each
running one `torpor worker` process, sharing one throwaway PostgreSQL cluster and one S3
API server (moto, in its own process) on loopback: what issue 15 asks to measure.

- Throughput: with 1, 2 and 4 machines, --sessions sessions each driven by a user who
  answers as soon as the wait point is reached (each turn appends a line to a file in the
  sandbox and asks a process for a token it holds in memory) for --duration seconds:
  turns per minute, and every turn checked (its line count and the token: 0 lost changes).
- Resume paths, side by side from the same runs: restore ms from a hot copy (into a
  standby or not) and from the store, the share of resumes from a hot copy, and the
  turns that waited for another machine's upload. With --affinity 0 as well (any machine
  takes any turn) to show what affinity buys.
- Failover: 2 machines, `--lease-ttl 3`; the machine running a turn (a tool call that
  sleeps) is killed with kill -9 and its hot cache removed; time from the kill to the
  recovery (the `recovering` state marker on the other machine) and to the first tool
  call after it, and the calls lost, over --kills kills.

    .venv/bin/python benchmarks/bench_cluster.py [--machines 1,2,4] [--duration 40]
                                                 [--sessions 4] [--kills 3] [--quick]

Needs root, runsc, the base image, the PostgreSQL server binaries and moto. Writes
benchmarks/results/cluster.json, cluster.md and cluster.png. The machines share this
host's cores: past the core count, more machines add contention, not capacity.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from bench_runtime import BUCKET, moto_server
from bench_sandbox import machine_info, summary
from rich.console import Console

from torpor.context.pgtemp import TempCluster
from torpor.runtime.checkpoints import SnapshotCheckpointStorage
from torpor.runtime.core import Runtime
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore
from torpor.snapshots import open_store

RESULTS = Path(__file__).parent / "results"
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

TOKEN_SERVER = (
    "import os, socket\n"
    "t = os.urandom(8).hex()\n"
    "s = socket.socket(socket.AF_UNIX); s.bind(\"/work/tok.sock\"); s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(t.encode()); c.close()\n"
)
ASK = ("import socket; s = socket.socket(socket.AF_UNIX); s.connect('/work/tok.sock'); "
       "print(s.recv(64).decode())")  # fmt: skip


def turns_script(path: Path, turns: int) -> str:
    lines = []
    for i in range(1, turns + 1):
        wait = "while [ ! -S /work/tok.sock ]; do sleep 0.05; done; " if i == 1 else ""
        calls = [{"name": "shell", "arguments": {
            "command": f"{wait}echo {i} >> /work/lines; wc -l < /work/lines; "
                       f"python3 -c \"{ASK}\""}}]  # fmt: skip
        if i == 1:
            calls.insert(0, {"name": "start_process",
                             "arguments": {"command": f"python3 -c '{TOKEN_SERVER}'"}})
        lines += [{"text": "", "tool_calls": calls}, {"text": f"turn {i} done"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f"script:{path}"


def markers(entries: list[Any], name: str) -> list[tuple[Any, dict[str, Any]]]:
    return [(e, e.content) for e in entries if e.kind == "marker"
            and isinstance(e.content, dict) and e.content.get("marker") == name]  # fmt: skip


def at(e: Any) -> float:
    return datetime.fromisoformat(e.created_at).timestamp()


class Cluster:
    def __init__(self, root: Path, db: str, store: str) -> None:
        self.root, self.db, self.store = root, db, store
        self.procs: list[tuple[Path, subprocess.Popen[bytes]]] = []
        home = root / "client"
        engine = GVisorEngine(home, images=ImageStore(),
                              checkpoints=SnapshotCheckpointStorage(open_store(store), home))
        self.rt = Runtime(db=db, store=store, home=home, engine=engine)  # fmt: skip

    def machine(self, *args: str) -> tuple[Path, subprocess.Popen[bytes]]:
        home = self.root / f"m{len(self.procs)}"
        home.mkdir(parents=True)
        with (home / "worker.log").open("wb") as log:
            p = subprocess.Popen(
                [sys.executable, "-m", "torpor.cli.main", "worker", "--db", self.db,
                 "--store", self.store, "--pool", "0", *args],
                env=dict(os.environ, TORPOR_HOME=str(home)), stdout=log, stderr=log,
            )  # fmt: skip
        self.procs.append((home, p))
        return home, p

    def close(self) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        self.rt.close()
        for home, _ in self.procs:
            for d in (home / "sandboxes").glob("*") if (home / "sandboxes").exists() else []:
                subprocess.run(["runsc", f"--root={home / 'runsc'}", "delete", "-force",
                                d.name], capture_output=True)  # fmt: skip


def turn_done(rt: Runtime, sid: str, i: int) -> bool:
    row = rt.db.get(sid)
    if row.state != "waiting" or row.lease_owner or rt.db.unread(sid):
        return False
    tail = rt.log.read(sid, after=max(0, (row.snapshot_seq or 0) - 8))
    return any(e.kind == "message" and e.content == f"turn {i} done" for e in tail)


def throughput(pg: TempCluster, root: Path, machines: int, affinity: float, sessions: int,
               args: argparse.Namespace, prefetch: bool = True) -> dict[str, Any]:  # fmt: skip
    c = Cluster(root / f"tp-{machines}-{affinity:g}-{int(prefetch)}", pg.url(pg.create_db()),
                f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}")  # fmt: skip
    try:
        for _ in range(machines):
            c.machine("--affinity", f"{affinity:g}",
                      "--prefetch" if prefetch else "--no-prefetch")
        sids = [c.rt.create_session(model=turns_script(c.root / f"s{k}.jsonl", 2000)).id
                for k in range(sessions)]  # fmt: skip
        # a first turn each (cold starts) before the clock starts
        for sid in sids:
            c.rt.get_session(sid).post("turn 1")
        for sid in sids:
            while not turn_done(c.rt, sid, 1):
                time.sleep(0.05)
        users: dict[str, dict[str, Any]] = {sid: {"turns": 1} for sid in sids}
        t0 = time.monotonic()
        until = t0 + args.duration
        ts = [threading.Thread(target=quick_from, args=(c.rt, sid, 2, until, users[sid]),
                               daemon=True) for sid in sids]  # fmt: skip
        for t in ts:
            t.start()
        for t in ts:
            t.join(args.duration + 180)
        elapsed = time.monotonic() - t0
        turns = sum(u.get("turns", 1) - 1 for u in users.values())
        restores, awaited, notes = [], [], 0
        for sid in sids:
            entries = c.rt.log.read(sid)
            restores += [m for _, m in markers(entries, "session_restored")]
            awaited += [m["ms"] for _, m in markers(entries, "upload_awaited")]
            notes += len(markers(entries, "recovery_note"))
        paths: dict[str, list[float]] = {"hot copy, standby": [], "hot copy": [], "store": []}
        for m in restores:
            key = ("hot copy, standby" if m.get("standby") else "hot copy") if m.get("hot") \
                else "store"  # fmt: skip
            paths[key].append(float(m["ms"]))
        return {
            "machines": machines, "affinity": affinity, "sessions": len(sids),
            "prefetch": prefetch,
            "seconds": round(elapsed, 1), "turns": turns,
            "turns_per_minute": round(turns / elapsed * 60, 1),
            "bad_turns": sum(u.get("bad", 0) for u in users.values()),
            "stuck": [u["stuck"] for u in users.values() if "stuck" in u],
            "processes_restarted": sum(len(u.get("tokens", set())) - 1 for u in users.values()),
            "recovery_notes": notes,
            "restores": len(restores),
            "hot_share": round(sum(1 for m in restores if m.get("hot")) / max(1, len(restores)), 3),
            "restore_ms": {k: summary(v) for k, v in paths.items()},
            "awaited_uploads": len(awaited), "awaited_ms": summary(awaited),
        }  # fmt: skip
    finally:
        c.close()


def quick_from(rt: Runtime, sid: str, first: int, until: float, out: dict[str, Any]) -> None:
    """A user who posts turn after turn (from `first`) as soon as each is done, until
    `until`, checking each one's line count and token."""
    i = first - 1
    while time.monotonic() < until:
        i += 1
        if not one_turn(rt, sid, i, out):
            return


def one_turn(rt: Runtime, sid: str, i: int, out: dict[str, Any]) -> bool:
    """Post turn i, wait until it is done and check its line count and the in-memory
    process's token (out: turns, bad, tokens; stuck if it never ends)."""
    rt.get_session(sid).post(f"turn {i}")
    deadline = time.monotonic() + 120
    while not turn_done(rt, sid, i):
        if time.monotonic() > deadline:
            out["stuck"] = i
            return False
        time.sleep(0.02)
    seq = rt.db.get(sid).snapshot_seq or 0
    result = str([e for e in rt.log.read(sid, after=max(0, seq - 12))
                  if e.kind == "tool_result"][-1].content)  # fmt: skip
    got = result.split("stdout:\n", 1)[-1].split()
    ok = result.startswith("exit code 0") and len(got) == 2 and got[0] == str(i)
    out.setdefault("tokens", set()).add(got[-1] if len(got) == 2 else "?")
    out["turns"], out["bad"] = i, out.get("bad", 0) + (0 if ok else 1)
    return True


def failover(pg: TempCluster, root: Path, kills: int) -> dict[str, Any]:
    results = []
    for k in range(kills):
        c = Cluster(root / f"fo-{k}", pg.url(pg.create_db()),
                    f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}")  # fmt: skip
        try:
            path = c.root / "fo.jsonl"
            c.root.mkdir(parents=True, exist_ok=True)
            lines = [
                {"text": "", "tool_calls": [{"name": "shell", "arguments": {
                    "command": "echo 1 >> /work/lines"}}]}, {"text": "first"},
                {"text": "", "tool_calls": [{"name": "shell", "arguments": {
                    "command": "echo 2 >> /work/lines"}}, {"name": "shell", "arguments": {
                    "command": "sleep 20"}}]},
                {"text": "", "tool_calls": [{"name": "shell", "arguments": {
                    "command": "wc -l < /work/lines"}}]}, {"text": "second"},
            ]  # fmt: skip
            path.write_text("".join(json.dumps(x) + "\n" for x in lines))
            a_home, a = c.machine("--lease-ttl", "3")
            s = c.rt.create_session(model=f"script:{path}")
            s.post("one")
            while not turn_done_text(c.rt, s.id, "first"):
                time.sleep(0.05)
            s.post("two")
            while not any(e.kind == "tool_call" and "sleep 20" in str(e.arguments)
                          for e in c.rt.log.read(s.id)):  # fmt: skip
                time.sleep(0.02)
            time.sleep(0.3)
            c.machine("--lease-ttl", "3")
            time.sleep(1.0)  # the second machine is up (its first heartbeat written)
            t_kill = time.time()
            a.send_signal(signal.SIGKILL)
            a.wait()
            shutil.rmtree(a_home / "checkpoint-cache", ignore_errors=True)
            while not turn_done_text(c.rt, s.id, "second"):
                time.sleep(0.05)
            entries = c.rt.log.read(s.id)
            rec = [e for e, m in markers(entries, "state") if m.get("state") == "recovering"
                   and at(e) >= t_kill - 1]  # fmt: skip
            after = [e for e in entries if e.kind == "tool_call" and rec and e.seq > rec[0].seq]
            note = markers(entries, "recovery_note")[-1][1]
            results.append({
                "to_recovery_s": round(at(rec[0]) - t_kill, 2) if rec else None,
                "to_first_tool_call_s": round(at(after[0]) - t_kill, 2) if after else None,
                "lost_calls": len(note.get("lost", [])),
                "interrupted_calls": len(note.get("interrupted", [])),
            })  # fmt: skip
        finally:
            c.close()
    return {
        "kills": results, "lease_ttl": 3,
        "to_recovery_s": summary([r["to_recovery_s"] for r in results if r["to_recovery_s"]]),
        "to_first_tool_call_s": summary([r["to_first_tool_call_s"] for r in results
                                         if r["to_first_tool_call_s"]]),
    }  # fmt: skip


MEMORY_HOLDER = (  # a process holding 32 MiB of incompressible memory: a dev-sized sandbox
    "import os, time\n"
    "held = os.urandom(32 << 20)\n"
    "open(\"/work/held\", \"w\").write(str(len(held)))\n"
    "while True: time.sleep(60)\n"
)


def handover_script(path: Path, turns: int) -> str:
    """turns_script's turns, with a process holding 32 MiB started by the first turn."""
    turns_script(path, turns)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[0]["tool_calls"].insert(0, {"name": "start_process", "arguments": {
        "command": f"python3 -c '{MEMORY_HOLDER}'"}})  # fmt: skip
    first = lines[0]["tool_calls"][-1]["arguments"]
    first["command"] = ("while [ ! -s /work/held ]; do sleep 0.05; done; "
                        + first["command"])  # fmt: skip
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f"script:{path}"


def handover(pg: TempCluster, root: Path, rounds: int, prefetch: bool) -> dict[str, Any]:
    """kill -9 of a session's machine at a wait point (its upload done): the next turn goes
    to the other machine. Its restore, side by side with the same session's hot restores
    on the first machine: from the follower's prefetched copy, or (no prefetch) from the
    store. Every turn checked: line count and the in-memory token (nothing lost)."""
    out: list[dict[str, Any]] = []
    for k in range(rounds):
        c = Cluster(root / f"ho-{int(prefetch)}-{k}", pg.url(pg.create_db()),
                    f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}")  # fmt: skip
        try:
            flag = "--prefetch" if prefetch else "--no-prefetch"
            a_home, a = c.machine("--lease-ttl", "3", flag)
            s = c.rt.create_session(model=handover_script(c.root / "ho.jsonl", 10))
            users: dict[str, Any] = {}
            for i in (1, 2, 3, 4):  # turn 1 starts the sandbox, 2-4 resume hot on a
                one_turn(c.rt, s.id, i, users)
            b_home, _b = c.machine("--lease-ttl", "3", flag)
            snap = str(c.rt.db.get(s.id).snapshot)
            deadline = time.monotonic() + 60
            while not (c.rt.engine.checkpoints.available(snap)  # type: ignore[attr-defined]
                       and (not prefetch or c.rt.db.snapshot_copies(snap))):  # fmt: skip
                if time.monotonic() > deadline:
                    raise RuntimeError("the upload (or the follower's copy) did not come")
                time.sleep(0.05)
            time.sleep(1.5)  # b's heartbeat is in, a's was fresh: a real handover
            a.send_signal(signal.SIGKILL)
            a.wait()
            shutil.rmtree(a_home / "checkpoint-cache", ignore_errors=True)
            t0 = time.time()
            one_turn(c.rt, s.id, 5, users)
            entries = c.rt.log.read(s.id)
            rs = [m for _, m in markers(entries, "session_restored")]
            calls = [e for e in entries if e.kind == "tool_call"]
            out.append({
                "hot_on_first_machine_ms": [float(m["ms"]) for m in rs[:-1]],
                "handover_ms": float(rs[-1]["ms"]), "handover_hot": bool(rs[-1].get("hot")),
                "post_to_first_call_s": round(at(calls[-1]) - t0, 3),
                "bad_turns": users.get("bad", 0),
                "processes_restarted": len(users.get("tokens", set())) - 1,
                "recovery_notes": len(markers(entries, "recovery_note")),
            })  # fmt: skip
        finally:
            c.close()
    hot = [x for r in out for x in r["hot_on_first_machine_ms"]]
    return {
        "prefetch": prefetch, "rounds": out, "hot_ms": summary(hot),
        "handover_ms": summary([r["handover_ms"] for r in out]),
        "handover_hot": sum(1 for r in out if r["handover_hot"]),
        "post_to_first_call_s": summary([r["post_to_first_call_s"] for r in out]),
        "lost": sum(r["bad_turns"] + r["processes_restarted"] for r in out),
        "recovery_notes": sum(r["recovery_notes"] for r in out),
    }  # fmt: skip


def turn_done_text(rt: Runtime, sid: str, text: str) -> bool:
    row = rt.db.get(sid)
    return (row.state == "waiting" and not row.lease_owner and not rt.db.unread(sid)
            and any(e.kind == "message" and e.content == text for e in rt.log.read(sid)))


def fmt_ms(s: dict[str, float]) -> str:
    return "-" if not s.get("n") else f"{s['median']:.0f} (p95 {s['p95']:.0f}, n={s['n']})"


def write_markdown(data: dict[str, Any], path: Path) -> None:
    m = data["machine"]
    lines = [
        "# Several machines: throughput, resume paths, failover",
        "",
        f"`benchmarks/bench_cluster.py {' '.join(data['argv'])}` on {m['date']}: {m['cpu']}, "
        f"{m['nproc']} cores, {m['memory']}, runsc {m['runsc_dpkg']}, PostgreSQL "
        f"{data['postgres']}, moto S3 on loopback. Every machine is a TORPOR_HOME of its own "
        "with one `torpor worker`; they share this host's cores, so past "
        f"{m['nproc']} machines they contend rather than add capacity.",
        "",
        f"Each phase: a user per session who answers at once, {data['duration']:g} s. "
        "Every turn is checked: its line count and the in-memory process's token. The row "
        "with prefetch off shows what the followers' fetches cost in turns per minute (on "
        "these 2 shared cores). The last row is the race of issue 15: one session, no "
        "affinity, so that either machine takes each turn and resumes from the store.",
        "",
        "| machines | affinity | prefetch | sessions | turns/min | resumes from a hot copy | "
        "restore ms: hot copy + standby | hot copy | store | waited for an upload | lost "
        "changes | recovery notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["throughput"]:
        lines.append(
            f"| {r['machines']} | {r['affinity']:g} s | "
            f"{'on' if r.get('prefetch', True) else 'off'} | {r['sessions']} | "
            f"{r['turns_per_minute']:.0f} | "
            f"{r['hot_share'] * 100:.0f} % of {r['restores']} | "
            f"{fmt_ms(r['restore_ms']['hot copy, standby'])} | "
            f"{fmt_ms(r['restore_ms']['hot copy'])} | {fmt_ms(r['restore_ms']['store'])} | "
            f"{r['awaited_uploads']} ({fmt_ms(r['awaited_ms'])} ms) | "
            f"{r['bad_turns'] + r['processes_restarted']} | {r['recovery_notes']} |")
    f = data["failover"]
    lines += [
        "",
        f"## Failover ({len(f['kills'])} kills, `--lease-ttl {f['lease_ttl']}`)",
        "",
        "kill -9 of the machine running a turn (a call that sleeps 20 s), its hot cache "
        "removed; the other machine recovers the session from the newest stored snapshot.",
        "",
        "| kill | to recovery (s) | to first tool call (s) | calls lost | calls interrupted |",
        "|---|---|---|---|---|",
    ]
    for i, k in enumerate(f["kills"], 1):
        lines.append(f"| {i} | {k['to_recovery_s']} | {k['to_first_tool_call_s']} | "
                     f"{k['lost_calls']} | {k['interrupted_calls']} |")
    s1, s2 = f["to_recovery_s"], f["to_first_tool_call_s"]
    if s1.get("n"):
        lines += ["", f"Median: {s1['median']:.1f} s to the recovery, {s2['median']:.1f} s to "
                      "its first tool call (the lease TTL is most of it)."]
    if data.get("handover"):
        lines += [
            "", "## Handover at a wait point (a turn the session's machine cannot take)", "",
            "Two machines; a session whose sandbox holds a process with 32 MiB of "
            "incompressible memory runs turns 2-4 on its first machine (restores from its "
            "hot copy), which is then killed with kill -9 at a wait point, its upload done "
            "(and, with prefetch, the follower's copy recorded). The next turn goes to the "
            "other machine. Side by side in each run: the hot restores on the first machine "
            "and the handover's restore on the other.", "",
            "| prefetch | restore ms, hot copy on the first machine | restore ms, handover "
            "| ratio | handover restores from a hot copy | post -> first tool call (s) | "
            "lost changes | recovery notes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for h in data["handover"]:
            ratio = (h["handover_ms"]["median"] / h["hot_ms"]["median"]
                     if h["hot_ms"].get("n") and h["handover_ms"].get("n") else None)
            lines.append(
                f"| {'on (default)' if h['prefetch'] else 'off'} | {fmt_ms(h['hot_ms'])} | "
                f"{fmt_ms(h['handover_ms'])} | {f'{ratio:.2f}x' if ratio else '-'} | "
                f"{h['handover_hot']} of {len(h['rounds'])} | "
                f"{h['post_to_first_call_s'].get('median', 0):.2f} | {h['lost']} | "
                f"{h['recovery_notes']} |")  # fmt: skip
    lines += ["", f"Total {data['total_seconds']:.0f} s; load average at the end "
                  f"{data['loadavg_end'][0]:.2f}.", ""]
    path.write_text("\n".join(lines))


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    rows = [r for r in data["throughput"] if r["affinity"] > 0]
    a1.bar([str(r["machines"]) for r in rows], [r["turns_per_minute"] for r in rows])
    a1.set_xlabel("machines")
    a1.set_ylabel("turns per minute")
    a1.set_title("throughput (affinity on)")
    labels, meds = [], []
    for r in data["throughput"]:
        for k, v in r["restore_ms"].items():
            if v.get("n"):
                labels.append(f"{r['machines']}m a={r['affinity']:g}\n{k}")
                meds.append(v["median"])
    a2.barh(labels, meds)
    a2.set_xlabel("restore ms (median)")
    a2.set_title("resume by path")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", default="1,2,4")
    ap.add_argument("--duration", type=float, default=40.0, help="seconds per phase")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--handovers", type=int, default=3,
                    help="rounds of the handover at a wait point, with and without prefetch")
    ap.add_argument("--quick", action="store_true", help="1,2 machines, 12 s, 1 kill")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.quick:
        args.machines, args.duration, args.kills, args.handovers = "1,2", 12.0, 1, 1
    os.environ.setdefault("TORPOR_IMAGES", "/var/lib/torpor/images")
    ImageStore(Path(os.environ["TORPOR_IMAGES"])).get("base")
    root = Path(tempfile.mkdtemp(prefix="torpor-bench-cluster-"))
    started = time.monotonic()
    pgv = subprocess.run(["sh", "-c", "ls /usr/lib/postgresql | sort -n | tail -1"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    data: dict[str, Any] = {"argv": sys.argv[1:], "machine": machine_info(),
                            "postgres": pgv or "?", "sessions": args.sessions,
                            "duration": args.duration, "throughput": []}  # fmt: skip
    try:
        with TempCluster() as pg, moto_server():
            # with affinity, and the race of the issue: one session, no affinity, so that
            # turns go to either machine and the store path is measured too
            phases = [(int(n), 0.5, args.sessions, True) for n in args.machines.split(",")]
            phases.append((2, 0.5, args.sessions, False))  # what prefetch costs
            phases.append((2, 0.0, 1, True))
            for n, aff, k, pf in phases:
                console.print(f"throughput: {n} machine(s), affinity {aff:g} s, prefetch "
                              f"{pf}, {k} session(s) ...")  # fmt: skip
                r = throughput(pg, root, n, aff, k, args, prefetch=pf)
                console.print(f"  {r['turns_per_minute']:.0f} turns/min, hot "
                              f"{r['hot_share'] * 100:.0f} %, lost "
                              f"{r['bad_turns'] + r['processes_restarted']}")  # fmt: skip
                data["throughput"].append(r)
            console.print(f"failover: {args.kills} kill(s) ...")
            data["failover"] = failover(pg, root, args.kills)
            data["handover"] = []
            for prefetch in (True, False):
                console.print(f"handover at a wait point, prefetch {prefetch}: "
                              f"{args.handovers} round(s) ...")  # fmt: skip
                h = handover(pg, root, args.handovers, prefetch)
                console.print(f"  hot {fmt_ms(h['hot_ms'])} ms, handover "
                              f"{fmt_ms(h['handover_ms'])} ms ({h['handover_hot']} hot), "
                              f"lost {h['lost']}")  # fmt: skip
                data["handover"].append(h)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    data["total_seconds"] = time.monotonic() - started
    data["loadavg_end"] = os.getloadavg()
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "cluster.json").write_text(json.dumps(data, indent=1, default=list))
    write_markdown(data, args.results / "cluster.md")
    plot(data, args.results / "cluster.png")
    console.print((args.results / "cluster.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
