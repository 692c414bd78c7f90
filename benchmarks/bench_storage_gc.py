"""GC throughput on a store of many snapshots (issue 20), file and S3, and its effect on a
concurrent upload.

Synthetic small snapshots (no sandbox): each a 64 KiB page file, most of its pages
shared with the others (a common base) and a few of its own, put by 4 threads. Then
retention's effect is imitated (two of every three snapshots deleted) and `store.gc()`
is timed: manifests read per second, packs deleted or rewritten, bytes freed. Meanwhile
another thread uploads 8 MiB checkpoint-like snapshots back to back, and its upload time
is compared with the same uploads without a gc running (a wait point itself does not
wait for its upload, runtime/checkpoints.py: what a gc slows is the background upload).
S3 is moto's standalone server on loopback (a Python process on the same cores).

    .venv/bin/python benchmarks/bench_storage_gc.py [--snapshots 10000]

Writes benchmarks/results/storage_gc.json (and prints a Markdown table).
"""

from __future__ import annotations

import argparse
import json
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


def fill(store: SnapshotStore, n: int, work: Path) -> list[str]:
    rnd = random.Random(1)
    base = [rnd.randbytes(PAGE) for _ in range(16)]

    def one(i: int) -> str:
        r = random.Random(i)
        pages = [base[j] if r.random() < 0.8 else r.randbytes(PAGE) for j in range(16)]
        f = work / f"s{i}"
        f.write_bytes(b"".join(pages))
        try:
            return store.put(f, {"session": f"s{i // 10}"}).id
        finally:
            f.unlink()

    with ThreadPoolExecutor(4) as ex:
        return list(ex.map(one, range(n)))


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


def run(url: str, n: int, work: Path) -> dict[str, Any]:
    store = open_store(url, cache_bytes=0, use_key_env=False)
    t0 = time.monotonic()
    ids = fill(store, n, work)
    fill_s = time.monotonic() - t0
    alone = uploads(store, work, threading.Event(), 5)
    for i, sid in enumerate(ids):
        if i % 3:
            store.delete(sid)
    stop = threading.Event()
    during: list[float] = []
    th = threading.Thread(target=lambda: during.extend(uploads(store, work, stop, 1000)))
    th.start()
    t0 = time.monotonic()
    res = store.gc()
    gc_s = time.monotonic() - t0
    stop.set()
    th.join()
    t0 = time.monotonic()
    again = store.gc()  # nothing (much) left: the cost of a gc with nothing to do
    idle_s = time.monotonic() - t0
    store.close()
    return {"store": url.split(":")[0], "snapshots": n, "kept": res.snapshots,
            "fill_s": fill_s, "gc_s": gc_s, "manifests_per_s": res.snapshots / gc_s,
            "gc": res.as_dict(), "second_gc_s": idle_s, "second_gc": again.as_dict(),
            "upload_alone_s": statistics.median(alone),
            "upload_during_gc_s": statistics.median(during) if during else None,
            "uploads_during_gc": len(during)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshots", type=int, default=10_000)
    ap.add_argument("--backends", default="file,s3")
    ap.add_argument("--out", default="storage_gc.json", help="results file name")
    args = ap.parse_args()
    out: dict[str, Any] = {"command": " ".join(["benchmarks/bench_storage_gc.py",
                                                *sys.argv[1:]]), "runs": []}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="torpor-bench-gc-"))
    try:
        for backend in args.backends.split(","):
            if backend == "file":
                r = run(f"file://{work / 'store'}", args.snapshots, work)
            else:
                with moto_server():
                    r = run(f"s3://{BUCKET}/gc", args.snapshots, work)
            out["runs"].append(r)
            print(json.dumps(r), flush=True)
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / args.out).write_text(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| store | snapshots (kept) | gc | manifests/s | packs deleted / rewritten | freed "
          "| gc with nothing to free | 8 MiB upload alone / during the gc |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in out["runs"]:
        g = r["gc"]
        during = r["upload_during_gc_s"]
        print(f"| {r['store']} | {r['snapshots']:,} ({r['kept']:,}) | {r['gc_s']:.1f} s "
              f"| {r['manifests_per_s']:,.0f} | {g['deleted_packs']} / {g['repacked_packs']} "
              f"| {g['deleted_bytes'] / 1e6:.1f} MB | {r['second_gc_s']:.1f} s "
              f"| {r['upload_alone_s'] * 1000:.0f} ms / "
              f"{'-' if during is None else f'{during * 1000:.0f} ms'} "
              f"({r['uploads_during_gc']} during) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
