"""Storage benchmark (issue 20): stored bytes against session length, with the default
retention policy side by side with keep-everything, on the headline workload.

One session per policy runs the headline benchmark's coding-agent workload
(headline_workload.py, small payloads) through torpor's Runtime on a real gVisor engine,
turn by turn, each turn ending at a wait point. At each measuring point (10, 25, 50, 100,
... calls) the uploads are flushed, the store is garbage-collected (`store.gc()`: what
the scheduled gc does; it frees nothing under keep-everything) and measured:

- store: the bytes of the snapshot store's files (packs, indexes, manifests) on disk;
- what a resume needs: the context log (logical bytes, as the headline reports it) plus
  the latest snapshot's stored bytes (its compressed, deduplicated chunks);
- their ratio (goal: <= 2x at every length with the default policy, flat in length).

The default policy is last=3,hourly=24,daily=7; a benchmark session takes all its wait
points within one hour, so here it keeps the newest 3 (the hourly and daily ones only
come into play for sessions that live for hours and days: the table of `kept_by_age`,
computed with the pure schedule, shows how many it keeps then).

    .venv/bin/python benchmarks/bench_storage.py [--calls 1000] [--quick]

Needs root, runsc and the base image. Runs in a private temporary TORPOR_HOME, removed at
the end. Writes benchmarks/results/storage.json, storage.md, storage.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_headline as bh  # noqa: E402
import headline_workload as wl  # noqa: E402

from torpor.sandbox.images import ImageStore  # noqa: E402
from torpor.snapshots import open_store  # noqa: E402
from torpor.snapshots.retention import DEFAULT_SPEC, Retention, select  # noqa: E402

RESULTS = Path(__file__).parent / "results"
POINTS = (10, 25, 50, 100, 200, 300, 500, 750, 1000)
POLICIES = (("default", DEFAULT_SPEC), ("keep everything", "all"))
log = bh.log


def turn_calls(script: wl.Script) -> list[int]:
    """Tool calls done by the end of each turn of the script (the probe turn left out)."""
    out, n = [], 0
    for line in script.lines[:-2]:
        n += len(line.get("tool_calls") or [])
        if not line.get("tool_calls"):
            out.append(n)
    return out


def run_policy(bench: bh.Bench, name: str, spec: str, calls: int,
               points: list[int]) -> list[dict[str, Any]]:  # fmt: skip
    tag = f"c{calls}-{name.replace(' ', '-')}"
    rt, d = bench.runtime(tag)
    try:
        script = wl.make_script(calls, False, bench.wheels)
        s = rt.create_session(model=script.write(d / "turns.jsonl"), system=bh.SYSTEM,
                              policy={"retention": spec})  # fmt: skip
        ends = turn_calls(script)
        todo = [p for p in points if p <= calls]
        rows = []
        t0 = time.monotonic()
        for t, done in enumerate(ends):
            out = s.send(f"Turn {t + 1}: go on with the plan.")
            if out.state != "waiting":
                raise RuntimeError(f"turn {t + 1} ended {out.state}: {out.text}")
            if not todo or done < todo[0]:
                continue
            while todo and done >= todo[0]:
                todo.pop(0)
            rt.engine.checkpoints.flush()  # type: ignore[attr-defined]
            rows.append(measure(rt, d, s, name, done, t + 1, time.monotonic() - t0))
        return rows
    finally:
        bench.cleanup(rt)


def measure(rt: Any, d: Path, s: Any, policy: str, calls: int, turns: int,
            elapsed: float) -> dict[str, Any]:  # fmt: skip
    store = open_store(rt.store_url)
    try:
        g0 = time.monotonic()
        gc = store.gc()
        gc_s = time.monotonic() - g0
        row = s.info()
        latest = store.info(row.snapshot)
        in_store = len(store.ids())
    finally:
        store.close()
    _entries, log_bytes = rt.log.size(s.id)
    store_bytes = bh.dir_bytes(d / "snapshots")
    needs = log_bytes + latest.stored_bytes
    r = {"policy": policy, "calls": calls, "wait_points": turns, "snapshots_in_store": in_store,
         "listed": len(row.snapshots), "store_bytes": store_bytes, "log_bytes": log_bytes,
         "log_db_bytes": bh.log_db_bytes(d), "latest_stored_bytes": latest.stored_bytes,
         "latest_logical_bytes": latest.logical_size, "resume_needs_bytes": needs,
         "ratio": store_bytes / needs, "gc": gc.as_dict(), "gc_s": gc_s,
         "build_s": elapsed}
    log(f"{policy}: {calls} calls, {turns} wait points: store {store_bytes / 1e6:.1f} MB "
        f"({in_store} snapshots), resume needs {needs / 1e6:.1f} MB "
        f"(log {log_bytes / 1e6:.2f} + latest {latest.stored_bytes / 1e6:.1f}): "
        f"{r['ratio']:.2f}x; gc freed {gc.deleted_bytes / 1e6:.1f} MB in {gc_s:.2f} s")
    return r


def kept_by_age() -> list[dict[str, Any]]:
    """How many snapshots the default schedule keeps for a session that takes a wait point
    every `every` seconds while busy, over its life (pure: torpor.snapshots.retention)."""
    out = []
    r = Retention.parse(DEFAULT_SPEC)
    for label, every, busy_h, days in (("a wait point every 2 min, 8 h a day", 120, 8, 30),
                                       ("a wait point every 10 min, around the clock", 600, 24,
                                        30)):  # fmt: skip
        snaps: list[tuple[str, float]] = []
        for day in range(days):
            t = day * 86400.0
            while t < day * 86400.0 + busy_h * 3600:
                snaps.append((str(len(snaps)), t))
                t += every
            if day + 1 in (1, 2, 7, 30):
                out.append({"pattern": label, "days": day + 1, "taken": len(snaps),
                            "kept": len(select(snaps, r))})
    return out


def write_md(res: dict[str, Any], path: Path) -> None:
    rows = res["rows"]
    lines = [
        "# Storage: stored bytes against session length (issue 20)",
        "",
        f"Command: `{res['command']}`. Machine: {res['machine'].get('cpu', '?')}, "
        f"{res['machine'].get('cores', '?')} cores; load average at start "
        f"{res['machine'].get('loadavg_start', '?')}. Wall time {res['wall_s'] / 60:.1f} min.",
        "",
        "The headline workload (small payloads), one session per retention policy (and one "
        "of its own for each short length), measured along the way (after the wait point "
        "at which it reaches each length; the store "
        "garbage-collected first). Resume needs = context log (logical bytes) + the latest "
        "snapshot's stored bytes. The default policy is "
        f"`{DEFAULT_SPEC}`; all of a benchmark session's wait points fall within an hour, so "
        "it keeps the newest 3 here.",
        "",
        "| calls | wait points | policy | snapshots in store | store | log | latest snapshot "
        "(stored) | resume needs | store / needs | gc freed | gc time |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["calls"], r["policy"])):
        lines.append(
            f"| {r['calls']:,} | {r['wait_points']} | {r['policy']} | {r['snapshots_in_store']} "
            f"| {r['store_bytes'] / 1e6:.1f} MB | {r['log_bytes'] / 1e6:.2f} MB "
            f"| {r['latest_stored_bytes'] / 1e6:.1f} MB | {r['resume_needs_bytes'] / 1e6:.1f} MB "
            f"| {r['ratio']:.2f}x | {r['gc']['deleted_bytes'] / 1e6:.1f} MB "
            f"| {r['gc_s']:.2f} s |")
    lines += ["", "The gc's side of it: its throughput on a store of 10,000 snapshots, file and "
              "S3, in [storage_gc.md](storage_gc.md) (`bench_storage_gc.py`), and its effect on "
              "a concurrent wait point in [storage_gc_wait_point.md](storage_gc_wait_point.md) "
              "(`bench_gc_wait_point.py`)."]
    lines += ["", "## Goals", ""]
    for g in res["goals"]:
        lines.append(f"- {g}")
    lines += ["", "## Snapshots the default schedule keeps as a session ages", "",
              "Pure computation with the schedule (no sandbox): a session busy at the given "
              "pace, the number of wait-point snapshots it took and the number kept.", "",
              "| pattern | days | taken | kept |", "|---|---:|---:|---:|"]
    for k in res["kept_by_age"]:
        lines.append(f"| {k['pattern']} | {k['days']} | {k['taken']:,} | {k['kept']} |")
    path.write_text("\n".join(lines) + "\n")


def goals(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    default = sorted((r for r in rows if r["policy"] == "default"), key=lambda r: r["calls"])
    if default:
        worst = max(r["ratio"] for r in default)
        out.append(f"default policy: store / what a resume needs is at most {worst:.2f}x over "
                   f"{', '.join(str(r['calls']) for r in default)} calls (goal <= 2x): "
                   f"**{'met' if worst <= 2 else 'not met'}**")
        first, last = default[0], default[-1]
        out.append(f"default policy: the ratio goes from {first['ratio']:.2f}x at "
                   f"{first['calls']} calls to {last['ratio']:.2f}x at {last['calls']} "
                   f"(flat in session length: {'yes' if last['ratio'] <= first['ratio'] + 0.25 else 'no'})")  # noqa: E501
    keep = {r["calls"]: r for r in rows if r["policy"] == "keep everything"}
    for r in default:
        k = keep.get(r["calls"])
        if k and r["calls"] == max(keep):
            out.append(f"at {r['calls']} calls: keep-everything stores "
                       f"{k['store_bytes'] / 1e6:.1f} MB, the default "
                       f"{r['store_bytes'] / 1e6:.1f} MB ({k['store_bytes'] / r['store_bytes']:.1f}x less)")  # noqa: E501
    return out


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, _spec in POLICIES:
        rs = [r for r in res["rows"] if r["policy"] == name]
        ax.plot([r["calls"] for r in rs], [r["store_bytes"] / 1e6 for r in rs], marker="o",
                label=f"store, {name}")
    rs = [r for r in res["rows"] if r["policy"] == "default"]
    ax.plot([r["calls"] for r in rs], [r["resume_needs_bytes"] / 1e6 for r in rs], ls="--",
            color="gray", label="what a resume needs (log + latest snapshot)")
    ax.set_xlabel("tool calls in the session")
    ax.set_ylabel("MB")
    ax.set_title("Snapshot store size against session length (headline workload)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1000, help="the longest session")
    ap.add_argument("--quick", action="store_true", help="100 calls")
    ap.add_argument("--short", default="10", help="lengths measured by sessions of their own "
                    "(comma-separated; the long session's first wait point comes after its "
                    "17-call set-up turn, a 10-call session's after 10 calls, as in the "
                    "headline)")
    args = ap.parse_args()
    calls = 100 if args.quick else args.calls
    shorts = [int(c) for c in args.short.split(",") if c and int(c) < calls]
    points = [p for p in POINTS if p < calls and p not in shorts] + [calls]
    if os.geteuid() != 0:
        print("needs root (runsc)", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    info = bh.machine()
    images = ImageStore()
    images.build_base()
    home = Path(tempfile.mkdtemp(prefix="torpor-bench-storage-"))
    res: dict[str, Any] = {"command": " ".join(["benchmarks/bench_storage.py", *sys.argv[1:]]),
                           "machine": info, "rows": []}
    try:
        wheels = wl.prepare_wheels(home / "wheels")
        bench = bh.Bench(argparse.Namespace(repeats=1), home, images, wheels)
        for name, spec in POLICIES:
            for short in shorts:
                res["rows"] += run_policy(bench, name, spec, short, [short])
            res["rows"] += run_policy(bench, name, spec, calls, points)
            (RESULTS / "storage.json").write_text(json.dumps(res, indent=1))
        res["kept_by_age"] = kept_by_age()
        res["goals"] = goals(res["rows"])
        info["loadavg_end"] = list(os.getloadavg())
        res["wall_s"] = time.monotonic() - started
        (RESULTS / "storage.json").write_text(json.dumps(res, indent=1))
        write_md(res, RESULTS / "storage.md")
        plot(res, RESULTS / "storage.png")
        print((RESULTS / "storage.md").read_text())
    finally:
        bh.remove_home(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
