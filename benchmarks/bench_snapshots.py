"""Benchmark of the snapshot store on real gVisor checkpoints and a synthetic memory image.

Measures, side by side in one run: stored size against raw checkpoint size (and
against whole-file zstd -3); new bytes stored for a second checkpoint of the same
sandbox after a small change, with page-level dedup on and off, and with gVisor's
own flate compression left on; put/get throughput for the file store and an S3 API
server on loopback (moto); time to first byte and bytes fetched for a 1 % random read.

    .venv/bin/python benchmarks/bench_snapshots.py [--no-gvisor] [--no-s3] [--image-mib N]

Writes benchmarks/results/snapshots.json and snapshots.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyzstd

from torpor.snapshots import open_store

PAGE = 4096
RESULTS = Path(__file__).parent / "results"


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def dir_size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


def block_share(a: Path, b: Path, block: int) -> float:
    """Fraction of b's aligned blocks (by count) whose content also occurs in a."""
    def blocks(p: Path) -> list[bytes]:
        data = p.read_bytes()
        return [hashlib.sha256(data[i:i + block]).digest() for i in range(0, len(data), block)]
    seen = set(blocks(a))
    bb = blocks(b)
    return sum(1 for h in bb if h in seen) / max(1, len(bb))


def whole_zstd(d: Path) -> int:
    return sum(len(pyzstd.compress(p.read_bytes(), 3)) for p in sorted(d.iterdir())
               if p.is_file())


# ------------------------------------------------------------------ gVisor checkpoints
def gvisor_checkpoints(work: Path) -> list[dict[str, Any]]:
    """Two reference sandboxes, each checkpointed twice (none and flate compression)."""
    from torpor.sandbox.engine import SandboxSpec
    from torpor.sandbox.gvisor import GVisorEngine
    from torpor.sandbox.images import ImageStore

    home = work / "gvhome"
    engine = GVisorEngine(home=home, images=ImageStore(Path(
        os.environ.get("TORPOR_HOME", "/var/lib/torpor")) / "images"))
    setups = {
        "http-server": (["python3", "-m", "http.server", "8000", "--directory", "/tmp"],
                        ["sh", "-c", "for i in 1 2 3 4 5; do curl -s localhost:8000/ "
                         ">/dev/null; done"]),
        "git-repo": (["sh", "-c", "mkdir -p /tmp/r && cd /tmp/r && git init -q && "
                      "for i in $(seq 1 200); do echo line $i >> f$((i % 20)).txt; done && "
                      "git add . && git -c user.email=a@b -c user.name=a commit -qm one && "
                      "exec python3 -c 'import time; d=[bytes(1000)*i for i in range(300)];"
                      " time.sleep(10**6)'"],
                     ["sh", "-c", "cd /tmp/r && echo change >> f1.txt && git -c "
                      "user.email=a@b -c user.name=a commit -qam two && git log -q >/dev/null"]),
    }
    out = []
    for name, (cmd, poke) in setups.items():
        info = engine.run(SandboxSpec(image="torpor/base:latest", cmd=cmd), name=f"bench-{name}")
        try:
            time.sleep(2)
            sets: dict[str, list[Path]] = {"none": [], "flate": []}
            for step in range(2):
                if step:
                    engine.exec(info.name, poke[:1] + poke[1:], timeout=60)
                    time.sleep(0.5)
                ck = engine.checkpoint(info.name, f"c{step}", leave_running=True)
                src, tmp = engine.checkpoints.open_dir(ck.id)
                dst = work / f"{name}-none-{step}"
                shutil.copytree(src, dst)
                (dst / "meta.json").unlink(missing_ok=True)
                if tmp:
                    shutil.rmtree(src, ignore_errors=True)
                flate = work / f"{name}-flate-{step}"
                flate.mkdir()
                live = engine.inspect(info.name)
                # A direct `runsc checkpoint` must close init's host channel first, as the
                # engine's own checkpoint does (gVisor cannot save that socket).
                engine.client.run(live, ["prepare"], timeout=60)
                try:
                    engine.driver.run(live, "checkpoint", f"--image-path={flate}",
                                      "--leave-running", live.id, timeout=600)
                finally:
                    engine.client.channel_token(live, "resumed")
                sets["none"].append(dst)
                sets["flate"].append(flate)
            out.append({"name": name, **sets})
        finally:
            engine.remove(info.name, force=True)
    return out


# ------------------------------------------------------------------ synthetic image
def synthetic_image(work: Path, mib: int) -> dict[str, Any]:
    rnd = random.Random(1)
    n = mib * 1024 * 1024 // PAGE
    code = (b"\x48\x89\xe5\x41\x57\x41\x56\x53\x48\x83\xec\x18" * 400)[:PAGE - 8]
    heap = [rnd.randbytes(512) + bytes(PAGE - 512) for _ in range(64)]
    pages = []
    for p in range(n):
        r = rnd.random()
        if r < 0.45:
            pages.append(bytes(PAGE))
        elif r < 0.65:
            pages.append(p.to_bytes(8, "little") + code)
        elif r < 0.95:
            pages.append(heap[p % 64][:PAGE - 8] + p.to_bytes(8, "little"))
        else:
            pages.append(rnd.randbytes(PAGE))
    a = work / "vm-0"
    a.mkdir()
    (a / "memory.pages").write_bytes(b"".join(pages))
    for _ in range(n // 100):  # 1 % of the pages dirtied: 256 bytes written in each
        p = rnd.randrange(n)
        at = rnd.randrange(0, PAGE - 256)
        pages[p] = pages[p][:at] + rnd.randbytes(256) + pages[p][at + 256:]
    b = work / "vm-1"
    b.mkdir()
    (b / "memory.pages").write_bytes(b"".join(pages))
    return {"name": f"synthetic {mib} MiB VM memory", "none": [a, b], "flate": []}


# ------------------------------------------------------------------ S3
def start_s3() -> tuple[Any, str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_ENDPOINT_URL=url, AWS_REGION="us-east-1")
    import boto3
    boto3.client("s3").create_bucket(Bucket="bench")
    return server, url


# ------------------------------------------------------------------ measurements
def measure(ds: dict[str, Any], work: Path, s3: bool) -> dict[str, Any]:
    a, b = ds["none"]
    raw = dir_size(a)
    res: dict[str, Any] = {"name": ds["name"], "raw_bytes": raw, "raw_bytes_second": dir_size(b),
                           "files": {p.name: p.stat().st_size for p in a.iterdir()},
                           "whole_file_zstd3": whole_zstd(a)}
    pages_a = next(p for p in a.iterdir() if p.name.endswith(("pages.img", ".pages")))
    pages_b = b / pages_a.name
    res["page_share_4k"] = block_share(pages_a, pages_b, 4096)
    res["page_share_64k"] = block_share(pages_a, pages_b, 65536)
    configs = (("page_dedup", {"page_chunks": True}),
               ("page_dedup_no_delta", {"page_chunks": True, "deltas": False}),
               ("cdc_only", {"page_chunks": False}))
    for key, opts in configs:
        root = work / f"st-{ds['name'][:8]}-{key}".replace(" ", "_")
        st = open_store(str(root), use_key_env=False, **opts)
        t = time.perf_counter()
        i1 = st.put(a)
        put_s = time.perf_counter() - t
        t = time.perf_counter()
        i2 = st.put(b, parent=i1.id)
        put2_s = time.perf_counter() - t
        doc = st.info(i2.id).as_dict()
        res[key] = {"stored_first": i1.stored_bytes, "new_second": i2.new_bytes,
                    "new_second_pct_of_first": 100 * i2.new_bytes / i1.stored_bytes,
                    "stored_second": i2.stored_bytes, "put_second_s": put2_s,
                    "new_second_by_file": new_bytes_by_file(st, i2.id),
                    "delta_chunks_second": st.info_doc(i2.id).get("new_delta_chunks", 0),
                    "chunks_second": doc["unique_chunks"]}
        if key == "page_dedup":
            res["put_mb_s_file"] = raw / put_s / 1e6
            t = time.perf_counter()
            st.get(i2.id, work / "restored")
            res["get_mb_s_file"] = dir_size(b) / (time.perf_counter() - t) / 1e6
            shutil.rmtree(work / "restored")
            res.update(random_read(str(root), i2.id, pages_a.name, "file"))
        st.close()
        shutil.rmtree(root)
    if ds["flate"]:
        fa, fb = ds["flate"]
        root = work / "st-flate"
        st = open_store(str(root), use_key_env=False)
        i1 = st.put(fa)
        i2 = st.put(fb)
        res["flate"] = {"raw_first": dir_size(fa), "stored_first": i1.stored_bytes,
                        "new_second": i2.new_bytes,
                        "new_second_pct_of_first": 100 * i2.new_bytes / max(1, i1.stored_bytes)}
        st.close()
        shutil.rmtree(root)
    if s3:
        url = f"s3://bench/{os.urandom(4).hex()}"
        cache = work / "cache"
        st = open_store(url, cache_bytes=0, use_key_env=False)
        t = time.perf_counter()
        i1 = st.put(a)
        res["put_mb_s_s3"] = raw / (time.perf_counter() - t) / 1e6
        t = time.perf_counter()
        st.get(i1.id, work / "restored")
        res["get_mb_s_s3_cold"] = raw / (time.perf_counter() - t) / 1e6
        shutil.rmtree(work / "restored")
        warm = open_store(url, cache_dir=cache, cache_bytes=4 << 30, use_key_env=False)
        warm.get(i1.id, work / "restored")
        shutil.rmtree(work / "restored")
        warm.backend.stats.reset()
        t = time.perf_counter()
        warm.get(i1.id, work / "restored")
        res["get_mb_s_s3_warm_cache"] = raw / (time.perf_counter() - t) / 1e6
        res["s3_bytes_read_warm"] = warm.backend.stats.bytes_read
        shutil.rmtree(work / "restored")
        shutil.rmtree(cache)
        res.update(random_read(url, i1.id, pages_a.name, "s3"))
        st.close()
    return res


def new_bytes_by_file(st: Any, sid: str) -> dict[str, int]:
    """Stored bytes of the chunks a put added, by the file that first used each."""
    from torpor.snapshots.packs import decode_index, idx_key

    doc = st.info_doc(sid)
    added: dict[bytes, int] = {}
    for pack in doc["packs"]:
        for cid, loc in decode_index(pack, st.backend.get(idx_key(pack))):
            added[cid] = loc.length
    out: dict[str, int] = {}
    for ft in st.manifest(sid).files:
        n = 0
        for cid in ft.ids:
            n += added.pop(cid, 0)
        out[ft.name] = n
    return out


def random_read(url: str, sid: str, name: str, tag: str) -> dict[str, Any]:
    """Cold store object: time to first byte of a 4 KiB read, then 1 % of pages at random."""
    t = time.perf_counter()
    st = open_store(url, cache_bytes=0, use_key_env=False)
    r = st.open(sid, name)
    r.read(r.size // 2, PAGE)
    ttfb = time.perf_counter() - t
    st.stats.reset()
    n = max(1, r.size // PAGE // 100)
    rnd = random.Random(2)
    t = time.perf_counter()
    for p in rnd.sample(range(r.size // PAGE), n):
        r.read(p * PAGE, PAGE)
    secs = time.perf_counter() - t
    stored = st.info(sid).stored_bytes
    out = {f"ttfb_ms_{tag}": ttfb * 1000, f"read1pct_s_{tag}": secs,
           f"read1pct_bytes_fetched_{tag}": st.stats.bytes_fetched,
           f"read1pct_pct_of_stored_{tag}": 100 * st.stats.bytes_fetched / stored,
           f"read1pct_chunks_{tag}": st.stats.chunks_decoded}
    st.close()
    return out


def render(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = ["# Snapshot store benchmark", "",
             f"{env['when']}, Python {env['python']}, {env['cpus']} CPUs, load average at "
             f"start {env['load']:.1f} (shared machine). Produced by "
             "`benchmarks/bench_snapshots.py`. Sizes in MB (10^6 bytes).", "",
             "## Size and dedup", "",
             "Second checkpoint of the same sandbox after a small change, stored with its "
             "first as parent: new bytes with page chunks and page deltas (the default), "
             "with page chunks only, and with content-defined chunks only.", "",
             "| data | raw | whole-file zstd -3 | stored (ours) | 2nd: new bytes "
             "| 2nd: new bytes, no page deltas | 2nd: new bytes, CDC only "
             "| 2nd with gVisor flate: raw / new bytes "
             "| 4 KiB pages shared | 64 KiB blocks shared |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        pd, nd, cd = r["page_dedup"], r["page_dedup_no_delta"], r["cdc_only"]
        fl = r.get("flate")
        flate = (f"{mb(fl['raw_first'])} / {mb(fl['new_second'])} "
                 f"({fl['new_second_pct_of_first']:.0f} %)") if fl else "n/a"
        lines.append(
            f"| {r['name']} | {mb(r['raw_bytes'])} | {mb(r['whole_file_zstd3'])} "
            f"| {mb(pd['stored_first'])} | **{mb(pd['new_second'])} "
            f"({pd['new_second_pct_of_first']:.1f} %)** | {mb(nd['new_second'])} "
            f"({nd['new_second_pct_of_first']:.1f} %) | {mb(cd['new_second'])} "
            f"({cd['new_second_pct_of_first']:.1f} %) | {flate} "
            f"| {100 * r['page_share_4k']:.1f} % | {100 * r['page_share_64k']:.1f} % |")
    lines += ["", "Where the second checkpoint's new bytes go (KB = 10^3 bytes), with and "
              "without page deltas:", "",
              "| data | file | new bytes | same, no page deltas | new chunks stored as deltas |",
              "|---|---|---|---|---|"]
    for r in results:
        pd, nd = r["page_dedup"], r["page_dedup_no_delta"]
        for name, n in pd["new_second_by_file"].items():
            lines.append(f"| {r['name']} | {name} | {n / 1e3:.1f} KB "
                         f"| {nd['new_second_by_file'].get(name, 0) / 1e3:.1f} KB "
                         + (f"| {pd['delta_chunks_second']} |"
                            if name.endswith(("pages.img", ".pages")) else "| |"))
    lines += ["", "## Throughput and random reads", "",
              "| data | put file | get file | put S3 | get S3 cold | get S3 warm cache "
              "| TTFB file | TTFB S3 | 1 % read: fetched (of stored), file | same, S3 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        def g(k: str, fmt: str = "{:.0f} MB/s", r: dict[str, Any] = r) -> str:
            return fmt.format(r[k]) if k in r else "n/a"
        lines.append(
            f"| {r['name']} | {g('put_mb_s_file')} | {g('get_mb_s_file')} "
            f"| {g('put_mb_s_s3')} | {g('get_mb_s_s3_cold')} | {g('get_mb_s_s3_warm_cache')} "
            f"| {g('ttfb_ms_file', '{:.1f} ms')} | {g('ttfb_ms_s3', '{:.1f} ms')} "
            f"| {g('read1pct_bytes_fetched_file', '{:,} B')} "
            f"({g('read1pct_pct_of_stored_file', '{:.2f} %')}) "
            f"| {g('read1pct_bytes_fetched_s3', '{:,} B')} "
            f"({g('read1pct_pct_of_stored_s3', '{:.2f} %')}) |")
    lines += ["", "S3 is moto's standalone server on loopback (a Python process on the same "
              "2 shared cores), so S3 figures show request patterns more than real S3 "
              "speed. 'Warm cache' is a restore on the machine that already holds the "
              "chunks: it reads " + ", ".join(
                  f"{r.get('s3_bytes_read_warm', 'n/a')} B" for r in results)
              + " from S3.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-gvisor", action="store_true")
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--image-mib", type=int, default=256)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    env = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "python": platform.python_version(), "cpus": os.cpu_count(),
           "load": os.getloadavg()[0]}
    work = Path(tempfile.mkdtemp(prefix="bench-snap-"))
    server = None
    try:
        datasets = []
        if not args.no_gvisor:
            try:
                datasets += gvisor_checkpoints(work)
            except Exception as exc:  # noqa: BLE001 - report and go on with the rest
                print(f"gVisor checkpoints skipped: {exc}", file=sys.stderr)
        datasets.append(synthetic_image(work, args.image_mib))
        if not args.no_s3:
            server, _ = start_s3()
        results = []
        for ds in datasets:
            print(f"measuring {ds['name']} ...", file=sys.stderr)
            results.append(measure(ds, work, s3=server is not None))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "snapshots.json").write_text(json.dumps(
            {"env": env, "results": results}, indent=1, default=str))
        md = render(results, env)
        (args.out / "snapshots.md").write_text(md)
        print(md)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["sync"], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
