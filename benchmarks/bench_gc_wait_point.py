"""A gc's effect on a concurrent wait point (issue 20): a real session's turns, each ending
at a wait point, while the snapshot store it writes to is collected, side by side with the
same turns while no gc runs.

The store (file or S3) first holds `--snapshots` synthetic snapshots (bench_storage_gc's
`fill`: small page files sharing most of their pages), two of every three then deleted,
so the gc has packs to delete and rewrite. A session on the real gVisor engine, its
checkpoints in that store (retention at its default: it deletes its own older snapshots at
each wait point, concurrently with the gc), runs one shell call per turn. Measured per
turn: the wait point's checkpoint (`snapshot_ms`: what a turn's answer waits for), and
the whole turn as its caller sees it (`send` to the outcome: restore or warm reuse, model,
tool call, wait point, retention). Turns are taken in rounds: without gc, during a gc
(`store.gc()` in a thread, as the scheduled gc runs it), and without again; the medians
compare the rounds. Each round's uploads are flushed before the next one starts.

    .venv/bin/python benchmarks/bench_gc_wait_point.py [--snapshots 10000] [--backends file,s3]

Needs root, runsc and the base image. Writes benchmarks/results/storage_gc_wait_point.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_runtime import BUCKET, moto_server, small_turns, write_script  # noqa: E402
from bench_storage_gc import fill  # noqa: E402

from torpor.runtime.core import Runtime  # noqa: E402
from torpor.snapshots import open_store  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NAME = "storage_gc_wait_point"


def turns(rt: Runtime, s: Any, n: int, first: int, while_alive: threading.Thread | None = None
          ) -> list[dict[str, float]]:  # fmt: skip
    """Up to n turns (while `while_alive` runs, if given): each one's timings."""
    out = []
    for i in range(first, first + n):
        if while_alive is not None and not while_alive.is_alive():
            break
        t0 = time.monotonic()
        got = s.send(str(i))
        if got.state != "waiting":
            raise RuntimeError(f"turn {i} ended {got.state}: {got.error}")
        out.append({"turn_ms": (time.monotonic() - t0) * 1000, "snapshot_ms": got.snapshot_ms})
    return out


def median(rows: list[dict[str, float]], key: str) -> float | None:
    return statistics.median(r[key] for r in rows) if rows else None


def run(url: str, n: int, work: Path, per_round: int) -> dict[str, Any]:
    store = open_store(url, cache_bytes=0, use_key_env=False)
    t0 = time.monotonic()
    ids, _per_1000 = fill(store, n, work)
    fill_s = time.monotonic() - t0
    for i, sid in enumerate(ids):
        if i % 3:
            store.delete(sid)
    home = work / f"home-{url.split(':')[0]}"
    rt = Runtime(db=f"sqlite:///{home / 'torpor.db'}", store=url, home=home)
    try:
        total = 3 * per_round + 200
        s = rt.create_session(model=write_script(work / "turns.jsonl", small_turns(total)))
        storage = rt.engine.checkpoints
        done = turns(rt, s, 3, 0)  # warm-up: the first restore, the standby
        storage.flush()  # type: ignore[attr-defined]
        before = turns(rt, s, per_round, len(done))
        storage.flush()  # type: ignore[attr-defined]
        result: dict[str, Any] = {}

        def collect() -> None:
            g0 = time.monotonic()
            result["gc"] = store.gc().as_dict()
            result["gc_s"] = time.monotonic() - g0

        gc = threading.Thread(target=collect)
        gc.start()
        during = turns(rt, s, 10_000, len(done) + len(before), while_alive=gc)
        gc.join()
        storage.flush()  # type: ignore[attr-defined]
        after = turns(rt, s, per_round, len(done) + len(before) + len(during))
        storage.flush()  # type: ignore[attr-defined]
        # the gc took nothing the session still lists (retention deleted the rest)
        listed = s.info().snapshots
        missing = [x for x in listed if not store.exists(x)]
        if missing:
            raise RuntimeError(f"snapshots the session lists are gone: {missing}")
    finally:
        rt.close()
        store.close()
    rounds = {"before": before, "during_gc": during, "after": after}
    return {"store": url.split(":")[0], "snapshots": n, "fill_s": fill_s,
            "gc_s": result.get("gc_s"), "gc": result.get("gc"),
            "turns": {k: len(v) for k, v in rounds.items()},
            "median_snapshot_ms": {k: median(v, "snapshot_ms") for k, v in rounds.items()},
            "median_turn_ms": {k: median(v, "turn_ms") for k, v in rounds.items()},
            "rounds": rounds, "listed_all_in_store": len(listed)}  # fmt: skip


def describe(m: dict[str, Any]) -> str:
    return (f"{m['nproc']}-core {m['cpu']}, {m['memory']}, kernel {m['kernel']}, runsc "
            f"{m['runsc_dpkg']} (systrap), Python {m['python']}, load average "
            f"{m['loadavg_start'][0]:.1f} at the start")


def write_md(out: dict[str, Any], path: Path) -> None:
    L = ["# A gc's effect on a concurrent wait point", "",
         f"`{out['command']}` on a {describe(out['machine'])}. Medians over each round's "
         "turns (one shell call and one wait point each); `during gc` is every turn that ran while "
         "`store.gc()` ran.", "",
         "| store | snapshots | gc | turns before / during / after | wait point (checkpoint) "
         "before / during / after | whole turn before / during / after |",
         "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in out["runs"]:
        t, w, m = r["turns"], r["median_snapshot_ms"], r["median_turn_ms"]

        def ms(d: dict[str, Any]) -> str:
            return " / ".join("-" if d[k] is None else f"{d[k]:.0f} ms"
                              for k in ("before", "during_gc", "after"))  # fmt: skip

        L.append(f"| {r['store']} | {r['snapshots']:,} | {r['gc_s']:.1f} s | "
                 f"{t['before']} / {t['during_gc']} / {t['after']} | {ms(w)} | {ms(m)} |")
    path.write_text("\n".join(L) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshots", type=int, default=10_000)
    ap.add_argument("--backends", default="file,s3")
    ap.add_argument("--per-round", type=int, default=15, help="turns before and after the gc")
    args = ap.parse_args()
    from bench_sandbox import machine_info

    out: dict[str, Any] = {"command": " ".join(["benchmarks/bench_gc_wait_point.py",
                                                *sys.argv[1:]]),
                           "machine": machine_info(), "runs": []}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="torpor-bench-gcwp-"))
    try:
        for backend in args.backends.split(","):
            if backend == "file":
                r = run(f"file://{work / 'store'}", args.snapshots, work, args.per_round)
            else:
                with moto_server():
                    r = run(f"s3://{BUCKET}/gcwp", args.snapshots, work, args.per_round)
            out["runs"].append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "rounds"}), flush=True)
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"{NAME}.json").write_text(json.dumps(out, indent=1))
            write_md(out, RESULTS / f"{NAME}.md")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print((RESULTS / f"{NAME}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
