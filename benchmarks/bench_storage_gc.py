"""GC throughput on a store of many snapshots (issue 20), file and S3, and its effect on a
concurrent upload.

Synthetic small snapshots (no sandbox): each a 64 KiB page file, most of its pages
shared with the others (a common base) and a few of its own, put by 4 threads (the fill
is timed per 1,000 puts: it must stay flat as the store grows). Then retention's effect
is imitated (two of every three snapshots deleted) and `store.gc()` is timed, phase by
phase (listing, waiting for puts, reading manifests, reading pack indexes, deleting),
with the requests it made: manifests read per second, packs deleted or rewritten, bytes
freed. Meanwhile another store object (another worker) uploads 8 MiB checkpoint-like
snapshots back to back, and its upload time is compared with the same uploads without
a gc running (a wait point itself does not wait for its upload, runtime/checkpoints.py:
what a gc slows is the background upload). S3 is moto's standalone server on loopback
(a Python process on the same cores).

    .venv/bin/python benchmarks/bench_storage_gc.py [--snapshots 10000]

Writes benchmarks/results/storage_gc.json and storage_gc.md (and prints the table).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_runtime import BUCKET, moto_server  # noqa: E402

from torpor.snapshots import SnapshotStore, open_store  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PAGE = 4096


def fill(store: SnapshotStore, n: int, work: Path) -> tuple[list[str], list[float]]:
    """Put n small snapshots (4 threads); their ids, and the seconds each 1,000 took."""
    rnd = random.Random(1)
    base = [rnd.randbytes(PAGE) for _ in range(16)]
    done = [0]
    marks: list[float] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def one(i: int) -> str:
        r = random.Random(i)
        pages = [base[j] if r.random() < 0.8 else r.randbytes(PAGE) for j in range(16)]
        f = work / f"s{i}"
        f.write_bytes(b"".join(pages))
        try:
            return store.put(f, {"session": f"s{i // 10}"}).id
        finally:
            f.unlink()
            with lock:
                done[0] += 1
                if done[0] % 1000 == 0:
                    marks.append(time.monotonic() - t0)
                    print(f"  {done[0]:,} put in {marks[-1]:.0f} s", flush=True)

    with ThreadPoolExecutor(4) as ex:
        ids = list(ex.map(one, range(n)))
    per_1000 = [b - a for a, b in zip([0.0, *marks], marks, strict=False)]
    return ids, per_1000


def uploads(store: SnapshotStore, work: Path, stop: threading.Event,
            most: int) -> list[float]:  # fmt: skip
    """Back-to-back 8 MiB puts (each a little different) until stop or `most` done."""
    rnd = random.Random(7)
    d = work / "ck"
    d.mkdir(exist_ok=True)
    data = bytearray(rnd.randbytes(2 * 1024 * 1024) + bytes(6 * 1024 * 1024))
    times = []
    while not stop.is_set() and len(times) < most:
        for _ in range(64):
            k = rnd.randrange(len(data) // PAGE) * PAGE
            data[k:k + 16] = rnd.randbytes(16)
        (d / "pages.img").write_bytes(data)
        t0 = time.monotonic()
        store.put(d, {"session": "upload"})
        times.append(time.monotonic() - t0)
    return times


PHASES = ("_candidates", "_wait_for_puts", "_live_chunks", "_read_indexes", "_sweep")


def timed_phases(store: SnapshotStore) -> dict[str, float]:
    """Wrap the collector's phases of `store` to time them (seconds, summed)."""
    spent: dict[str, float] = {}
    coll = store._collector
    for name in PHASES:
        fn = getattr(coll, name)

        def timed(*a: Any, _fn: Any = fn, _name: str = name) -> Any:
            t0 = time.monotonic()
            try:
                return _fn(*a)
            finally:
                spent[_name.strip("_")] = spent.get(_name.strip("_"), 0.0) + \
                    time.monotonic() - t0

        setattr(coll, name, timed)
    return spent


def run(url: str, n: int, work: Path) -> dict[str, Any]:
    store = open_store(url, cache_bytes=0, use_key_env=False)
    other = open_store(url, cache_bytes=0, use_key_env=False)  # the uploading worker
    t0 = time.monotonic()
    ids, per_1000 = fill(store, n, work)
    fill_s = time.monotonic() - t0
    alone = uploads(other, work, threading.Event(), 7)
    for i, sid in enumerate(ids):
        if i % 3:
            store.delete(sid)
    spent = timed_phases(store)
    store.backend.stats.reset()
    stop = threading.Event()
    during: list[float] = []
    th = threading.Thread(target=lambda: during.extend(uploads(other, work, stop, 1000)))
    th.start()
    t0 = time.monotonic()
    res = store.gc()
    gc_s = time.monotonic() - t0
    stop.set()
    th.join()
    requests = store.backend.stats.as_dict()
    phases = dict(spent)
    spent.clear()
    after = uploads(other, work, threading.Event(), 7)
    t0 = time.monotonic()
    again = store.gc()  # nothing (much) left: the cost of a gc with nothing to do
    idle_s = time.monotonic() - t0
    store.close()
    other.close()
    return {"store": url.split(":")[0], "snapshots": n, "kept": res.snapshots,
            "fill_s": fill_s, "fill_s_per_1000": per_1000, "gc_s": gc_s,
            "manifests_per_s": res.snapshots / gc_s, "gc": res.as_dict(),
            "gc_phases_s": phases, "gc_requests": requests,
            "second_gc_s": idle_s, "second_gc": again.as_dict(),
            "second_gc_phases_s": dict(spent),
            "upload_alone_s": statistics.median(alone),
            "upload_after_gc_s": statistics.median(after),
            "upload_during_gc_s": statistics.median(during) if during else None,
            "uploads_alone": alone, "uploads_during": during, "uploads_after": after,
            "uploads_during_gc": len(during)}


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.0f} ms" if xs else "-"


def table(out: dict[str, Any]) -> str:
    """The results as Markdown. Upload medians leave out each series' first upload (a new
    store's first put lists every pack; the first after the gc too, the gc having changed
    the epoch): those are shown on their own."""
    rows = ["| store | snapshots (kept) | fill, s per 1,000 puts (first / last) | gc "
            "| manifests/s | packs deleted / rewritten | freed | gc with nothing to free |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in out["runs"]:
        g = r["gc"]
        per = r["fill_s_per_1000"]
        rows.append(
            f"| {r['store']} | {r['snapshots']:,} ({r['kept']:,}) "
            f"| {per[0]:.0f} / {per[-1]:.0f} s ({r['fill_s']:.0f} s in all) | {r['gc_s']:.1f} s "
            f"| {r['manifests_per_s']:,.0f} | {g['deleted_packs']:,} / {g['repacked_packs']} "
            f"| {g['deleted_bytes'] / 1e6:.1f} MB | {r['second_gc_s']:.1f} s |")
    rows += ["", "An 8 MiB upload by another store object (another worker), medians (ratio to "
             "alone); its first upload, which lists every pack, on its own:", "",
             "| store | alone | during the gc | after it | during / alone | uploads "
             "(alone / during / after) | first upload: new store / after the gc |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in out["runs"]:
        a, d, f = r["uploads_alone"], r["uploads_during"], r["uploads_after"]
        ratio = statistics.median(d) / statistics.median(a[1:]) if d and a[1:] else None
        rows.append(f"| {r['store']} | {_ms(a[1:])} | {_ms(d)} | {_ms(f[1:])} "
                    f"| {'-' if ratio is None else f'{ratio:.1f}x'} "
                    f"| {len(a) - 1} / {len(d)} / {len(f) - 1} | {a[0]:.2f} s / {f[0]:.2f} s |")
    rows += ["", "Where a gc's time goes (seconds per phase; what it asked of the backend; S3 "
             "deletes 1,000 objects a request):", "",
             "| store | list | wait for puts | read manifests | read pack indexes | delete "
             "| GETs / LISTs / objects deleted / PUTs | gc with nothing to free: manifests "
             "/ indexes |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in out["runs"]:
        p, q, p2 = r["gc_phases_s"], r["gc_requests"], r["second_gc_phases_s"]
        rows.append(f"| {r['store']} | " + " | ".join(
            f"{p.get(k, 0):.1f}" for k in ("candidates", "wait_for_puts", "live_chunks",
                                         "read_indexes", "sweep"))
            + f" | {q['gets']:,} / {q['lists']:,} / {q['deletes']:,} / {q['puts']:,} "
              f"| {p2.get('live_chunks', 0):.1f} / {p2.get('read_indexes', 0):.1f} |")
    return "\n".join(rows) + "\n"


def plot(out: dict[str, Any], path: Path) -> None:
    """Fill time per 1,000 puts against store size (flat: no put lists every pack), and
    the 8 MiB upload's time alone, during the gc and after it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in out["runs"]:
        per = r["fill_s_per_1000"]
        a.plot([1000 * (i + 1) for i in range(len(per))], per, marker="o", label=r["store"])
    a.set(xlabel="snapshots in the store", ylabel="seconds per 1,000 puts (4 threads)",
          title="filling the store", ylim=(0, None))
    a.legend()
    for k, r in enumerate(out["runs"]):
        xs = [3 * k + j for j in range(3)]
        series = [r["uploads_alone"][1:], r["uploads_during"], r["uploads_after"][1:]]
        b.boxplot([[t * 1000 for t in ts] or [0] for ts in series], positions=xs)
    b.set_xticks([3 * k + j for k in range(len(out["runs"])) for j in range(3)],
                 [f"{r['store']}\n{w}" for r in out["runs"] for w in ("alone", "gc", "after")])
    b.set(ylabel="8 MiB upload, ms", title="another worker's upload (first ones left out)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_results(out: dict[str, Any], name: str) -> None:
    md = table(out)
    print(md)
    (RESULTS / f"{name}.md").write_text(
        f"# GC at scale (issue 20)\n\nCommand: `{out['command']}`. Machine: {out['cores']} "
        f"cores, shared; load average at start {[round(x, 1) for x in out['load_at_start']]}."
        f"\n\n{md}\n![fill time and upload latency]({name}.png)\n")
    plot(out, RESULTS / f"{name}.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshots", type=int, default=10_000)
    ap.add_argument("--backends", default="file,s3")
    ap.add_argument("--out", default="storage_gc", help="results file name (no suffix)")
    ap.add_argument("--replot", action="store_true",
                    help="only rewrite the .md and .png from the .json")
    args = ap.parse_args()
    if args.replot:
        write_results(json.loads((RESULTS / f"{args.out}.json").read_text()), args.out)
        return 0
    out: dict[str, Any] = {"command": " ".join(["benchmarks/bench_storage_gc.py",
                                                *sys.argv[1:]]),
                           "load_at_start": os.getloadavg(), "cores": os.cpu_count(),
                           "runs": []}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="torpor-bench-gc-"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        for backend in args.backends.split(","):
            if backend == "file":
                r = run(f"file://{work / 'store'}", args.snapshots, work)
            else:
                with moto_server():
                    r = run(f"s3://{BUCKET}/gc", args.snapshots, work)
            r["load_after"] = os.getloadavg()
            out["runs"].append(r)
            print(json.dumps({k: v for k, v in r.items() if not k.startswith("uploads_")}),
                  flush=True)
            (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
