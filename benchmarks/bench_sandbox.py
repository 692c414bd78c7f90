"""Benchmark of the gVisor sandbox engine: cold start, setup, checkpoint, restore, starts/min.

Implements the benchmark of issue 2 on three reference sandboxes from the `base` image:
"idle" (nothing started), "dev" (a git repo of 200 files, `python3 -m http.server`, an
interpreter holding stdlib imports) and "fat" (a process holding 256 MiB, a quarter of it
random). For each, over --runs runs interleaved round-robin: cold start to first exec,
cold start + setup, checkpoint time and size against the sandbox's memory use, restore to
first exec (with a correctness check after every restore); then sandbox starts per minute
with N = 1, 2, 4, 8 in parallel, as cold starts and as restores of an idle checkpoint.

    .venv/bin/python benchmarks/bench_sandbox.py [--runs 10] [--duration 20] [--quick]

Needs root, runsc and the base image (TORPOR_IMAGES, default /var/lib/torpor/images).
The engine runs in a private temporary TORPOR_HOME that is removed at the end.
Writes benchmarks/results/sandbox.json, sandbox.md and sandbox.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from torpor.sandbox.engine import SandboxSpec
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore

RESULTS = Path(__file__).parent / "results"
KINDS = ("idle", "dev", "fat")
FAT_BYTES = 256 << 20
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
_threads: list[threading.Thread] = []  # throughput workers, joined before cleanup

# ------------------------------------------------------------------ sandbox programs

DEV_REPO = r"""
set -e
mkdir -p /root/repo/src && cd /root/repo
git init -q
i=0
while [ $i -lt 200 ]; do
  printf '# Module %d.\n\n\ndef f%d(x):\n    return x * %d + 1\n' $i $i $i > src/mod_$i.py
  i=$((i + 1))
done
git add -A
git -c user.email=bench@torpor.invalid -c user.name=bench commit -qm initial
test "$(git ls-files | wc -l)" -eq 200
"""

DEV_INTERP = r"""
import asyncio, email, http, json, os, sqlite3, time, unittest, xml
import email.parser, http.client, json.decoder, sqlite3.dbapi2, xml.etree.ElementTree
db = sqlite3.connect(":memory:")
db.execute("create table t (k integer primary key, v text)")
db.executemany("insert into t values (?, ?)", ((i, str(i) * 8) for i in range(10000)))
state = {i: json.dumps({"i": i, "s": str(i) * 4}) for i in range(20000)}
with open("/tmp/interp.tmp", "w") as f:
    f.write(f"{os.getpid()} {len(state)}\n")
os.rename("/tmp/interp.tmp", "/tmp/interp.ready")
while True:
    time.sleep(3600)
"""

# Waits inside the sandbox until the server answers and the interpreter is ready.
DEV_WAIT = r"""
n=0
until curl -sf -o /dev/null http://127.0.0.1:8000/src/mod_7.py && [ -s /tmp/interp.ready ]; do
  n=$((n + 1)); [ $n -gt 600 ] && { echo "dev not ready" >&2; exit 1; }
  sleep 0.02
done
"""

DEV_CHECK = r"""
set -e
python3 -c '
import urllib.request
body = urllib.request.urlopen("http://127.0.0.1:8000/src/mod_7.py", timeout=10).read()
assert b"def f7(x)" in body, body[:100]
'
kill -0 "$(cut -d" " -f1 /tmp/interp.ready)"
cd /root/repo
test -z "$(git status --porcelain)"
test "$(git rev-list --count HEAD)" -eq 1
"""

FAT_PROG = r"""
import hashlib, os, signal, sys, time
N, REST = int(sys.argv[1]), sys.argv[2]
Q = N // 4
buf = bytearray(N)
buf[:Q] = os.urandom(Q)
if REST == "pattern":
    chunk = (b"torpor fat sandbox: a repeated, non-zero page pattern. " * 80)[:4096] * 256
    for off in range(Q, N, len(chunk)):
        buf[off:off + len(chunk)] = chunk
else:  # zeros, touched page by page so that they are committed memory
    for off in range(Q, N, 4096):
        buf[off] = 0

def write(path):
    digest = hashlib.sha256(buf).hexdigest()
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {digest}\n")
    os.rename(path + ".tmp", path)

signal.signal(signal.SIGUSR1, lambda *_: write("/tmp/fat.check"))
write("/tmp/fat.sha256")
while True:
    time.sleep(3600)
"""

FAT_WAIT = r"""
n=0
until [ -s /tmp/fat.sha256 ]; do
  n=$((n + 1)); [ $n -gt 3000 ] && { echo "fat not ready" >&2; exit 1; }
  sleep 0.02
done
"""

# After a restore: the same process (pid) must still hold the same bytes.
FAT_CHECK = r"""
set -e
read pid sum < /tmp/fat.sha256
rm -f /tmp/fat.check
kill -USR1 "$pid"
n=0
until [ -s /tmp/fat.check ]; do
  n=$((n + 1)); [ $n -gt 3000 ] && { echo "no checksum from $pid" >&2; exit 1; }
  sleep 0.02
done
read pid2 sum2 < /tmp/fat.check
[ "$pid" = "$pid2" ] && [ "$sum" = "$sum2" ] ||
  { echo "fat: $pid2 $sum2 != $pid $sum" >&2; exit 1; }
"""

MEMORY = r"""
echo "SELF $$"
cat /proc/meminfo
grep -H -e '^Name:' -e '^VmRSS:' /proc/[0-9]*/status
"""


class BenchError(Exception):
    pass


def must(res: Any, what: str) -> Any:
    if res.exit_code != 0:
        raise BenchError(f"{what} failed ({res.exit_code}): {res.stderr.decode()[-300:]}")
    return res


def setup(engine: GVisorEngine, kind: str, name: str, fat_rest: str) -> None:
    """Run the sandbox's setup until it is ready (called after the first exec)."""
    if kind == "dev":
        must(engine.exec(name, ["sh", "-c", DEV_REPO], timeout=120), "dev repo")
        engine.spawn(
            name, ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1",
                   "--directory", "/root/repo"],
        )  # fmt: skip
        engine.spawn(name, ["python3", "-c", DEV_INTERP])
        must(engine.exec(name, ["sh", "-c", DEV_WAIT], timeout=60), "dev wait")
    elif kind == "fat":
        engine.spawn(name, ["python3", "-c", FAT_PROG, str(FAT_BYTES), fat_rest])
        must(engine.exec(name, ["sh", "-c", FAT_WAIT], timeout=120), "fat wait")


def check(engine: GVisorEngine, kind: str, name: str) -> tuple[bool, str]:
    """Correctness after a restore."""
    script = {"dev": DEV_CHECK, "fat": FAT_CHECK}.get(kind)
    if script is None:
        res = engine.exec(name, ["sh", "-c", "test -d /root && test -s /run/torpor/generation"])
    else:
        res = engine.exec(name, ["sh", "-c", script], timeout=120)
    return res.exit_code == 0, res.stderr.decode(errors="replace").strip()[-200:]


def memory_use(engine: GVisorEngine, name: str) -> dict[str, Any]:
    """MemTotal-MemAvailable and the sum of VmRSS of the sandbox's processes (bytes)."""
    out = must(engine.exec(name, ["sh", "-c", MEMORY]), "memory").text
    meminfo: dict[str, int] = {}
    names: dict[str, str] = {}
    rss: dict[str, int] = {}
    self_pid = ""
    for line in out.splitlines():
        if line.startswith("SELF "):
            self_pid = line.split()[1]
        elif line.startswith("/proc/"):
            path, _, rest = line.partition(":")
            pid = path.split("/")[2]
            key, _, val = rest.partition(":")
            if key == "Name":
                names[pid] = val.strip()
            elif key == "VmRSS":
                rss[pid] = int(val.split()[0]) * 1024
        elif ":" in line:
            key, _, val = line.partition(":")
            with contextlib.suppress(ValueError, IndexError):
                meminfo[key] = int(val.split()[0]) * 1024
    procs = {p: v for p, v in rss.items() if p != self_pid and names.get(p) != "grep"}
    return {
        "meminfo_used": meminfo.get("MemTotal", 0) - meminfo.get("MemAvailable", 0),
        "rss_sum": sum(procs.values()),
        "processes": {f"{p}:{names.get(p, '?')}": v for p, v in sorted(procs.items())},
    }


# ------------------------------------------------------------------ statistics, machine


def pct(xs: list[float], q: float) -> float:
    """Percentile with linear interpolation between closest ranks (numpy's default)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs: list[float]) -> dict[str, float]:
    return {
        "n": len(xs), "median": pct(xs, 0.5), "p95": pct(xs, 0.95),
        "min": min(xs) if xs else float("nan"), "max": max(xs) if xs else float("nan"),
    }  # fmt: skip


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "kernel": sh(["uname", "-r"]),
        "cpu": cpu,
        "nproc": int(sh(["nproc"]) or 0),
        "memory": mem,
        "runsc_version": sh(["runsc", "--version"]).splitlines()[0:1],
        "runsc_dpkg": sh(["dpkg-query", "-W", "-f=${Version}", "runsc"]),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def mib(x: float) -> str:
    return f"{x / 2**20:.1f} MiB"


# ------------------------------------------------------------------ measurements

ROW = "{:>4} {:<5} {:>9} {:>10} {:>9} {:>9} {:>10} {:>10} {:>9} {:>15} {:>9}  {}"


def one_run(engine: GVisorEngine, kind: str, run: int, fat_rest: str) -> dict[str, Any]:
    name = f"bench-{kind}-{run}"
    spec = SandboxSpec(image="base")
    s: dict[str, Any] = {"run": run}
    try:
        t0 = time.monotonic()
        engine.run(spec, name=name)
        t1 = time.monotonic()
        must(engine.exec(name, ["true"]), "first exec")
        t2 = time.monotonic()
        setup(engine, kind, name, fat_rest)
        t3 = time.monotonic()
        s.update(run_s=t1 - t0, cold_first_exec=t2 - t0, cold_setup=t3 - t0)
        s.update(memory_use(engine, name))
        t0 = time.monotonic()
        ck = engine.checkpoint(name, f"r{run}")
        s.update(checkpoint_wall=time.monotonic() - t0, checkpoint_seconds=ck.seconds,
                 checkpoint_size=ck.size)  # fmt: skip
        t0 = time.monotonic()
        flush = getattr(engine.checkpoints, "flush", None)
        if flush is not None:  # the background upload, not counted in the checkpoint
            flush()
        s["upload_seconds"] = time.monotonic() - t0
        t0 = time.monotonic()
        engine.start(name, checkpoint=ck.id)
        t1 = time.monotonic()
        must(engine.exec(name, ["true"]), "first exec after restore")
        t2 = time.monotonic()
        s.update(restore_start=t1 - t0, restore_first_exec=t2 - t0)
        t0 = time.monotonic()
        ok, err = check(engine, kind, name)
        s.update(check_ok=ok, check_seconds=time.monotonic() - t0)
        if not ok:
            s["check_error"] = err
        # Diagnostic: what checking the hot copy (size + XXH3-128, done on every restore) costs.
        t0 = time.monotonic()
        engine.checkpoints.open_dir(ck.id)
        s["verify_seconds"] = time.monotonic() - t0
        # torpor checkpoints a sandbox again at its next wait point: a restored one.
        t0 = time.monotonic()
        ck2 = engine.checkpoint(name, f"r{run}-again")
        s.update(recheckpoint_wall=time.monotonic() - t0, recheckpoint_seconds=ck2.seconds)
        if flush is not None:
            flush()
        # The same checkpoint restored as a new sandbox, into a standby (Engine.standby:
        # a sandbox created but not started, set up beforehand, as a torpor worker keeps).
        t0 = time.monotonic()
        engine.standby(spec, 1)
        s["standby_setup"] = time.monotonic() - t0
        t0 = time.monotonic()
        sb = engine.restore(ck.id, name=f"{name}-sb")
        t1 = time.monotonic()
        must(engine.exec(sb.name, ["true"]), "first exec after restore into a standby")
        t2 = time.monotonic()
        s.update(standby_restore=t1 - t0, standby_first_exec=t2 - t0,
                 standby_used=sb.from_standby)  # fmt: skip
        ok, err = check(engine, kind, sb.name)
        s["standby_check_ok"] = ok and sb.from_standby
        if not ok:
            s["check_error"] = f"restore into a standby: {err}"
        engine.remove(sb.name, force=True)
        engine.remove(name, force=True)
        engine.checkpoints.delete(ck.id)
        engine.checkpoints.delete(ck2.id)
    finally:
        for n in (name, f"{name}-sb"):
            with contextlib.suppress(Exception):
                engine.remove(n, force=True)
        for m in engine.list_checkpoints():
            if m.get("sandbox") == name:
                with contextlib.suppress(Exception):
                    engine.checkpoints.delete(m["id"])
    return s


def start_and_exec(engine: GVisorEngine, mode: str, name: str, ck_id: str) -> None:
    """One start as the throughput loops count it: a cold `run` or a `restore` of ck_id,
    then the first `exec true`."""
    if mode == "cold":
        engine.run(SandboxSpec(image="base"), name=name)
    else:
        engine.restore(ck_id, name=name)
    must(engine.exec(name, ["true"]), "exec")


def throughput(
    engine: GVisorEngine, mode: str, n: int, duration: float, ck_id: str, stop: threading.Event
) -> dict[str, Any]:
    """n threads loop start -> exec true -> rm -f for `duration` seconds."""
    lat: list[float] = []  # start -> first exec
    rm: list[float] = []  # rm -f
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def worker(w: int) -> None:
        i = 0
        while time.monotonic() < deadline and not stop.is_set():
            name = f"tp-{mode}-{n}-{w}-{i}"
            i += 1
            t0 = time.monotonic()
            try:
                start_and_exec(engine, mode, name, ck_id)
                took = time.monotonic() - t0
                t1 = time.monotonic()
                engine.remove(name, force=True)
                with lock:
                    lat.append(took)
                    rm.append(time.monotonic() - t1)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])
                with contextlib.suppress(Exception):
                    engine.remove(name, force=True)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(n)]
    _threads.extend(threads)
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    elapsed = time.monotonic() - t0
    return {
        "mode": mode, "n": n, "duration": duration, "elapsed": elapsed, "starts": len(lat),
        "starts_per_min": len(lat) / elapsed * 60, "latency": lat,
        "latency_median": pct(lat, 0.5), "latency_p95": pct(lat, 0.95),
        "remove": rm, "remove_median": pct(rm, 0.5), "remove_p95": pct(rm, 0.95),
        "errors": errors,
    }  # fmt: skip


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (every process: runsc's Go processes, the
    sandboxes, this script), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cpu_per_start(engine: GVisorEngine, images: ImageStore, ck_id: str, cycles: int,
                  stop: threading.Event) -> dict[str, Any]:  # fmt: skip
    """Machine CPU per start, one cycle at a time, for torpor's cycles and for runsc
    alone: `runsc run` of /bin/true in a minimal bundle (same platform, network and root
    overlay, no cgroup), which creates, starts, waits for and deletes a sandbox. With C
    cores, C x 60 s / (CPU per start) is the most starts per minute the machine can do."""
    root = Path(tempfile.mkdtemp(prefix="torpor-bench-runsc-"))
    bundle = root / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/true"], "cwd": "/", "env": ["PATH=/usr/bin:/bin"],
                    "user": {"uid": 0, "gid": 0}},
        "root": {"path": str(images.get("base").rootfs), "readonly": False},
        "hostname": "bare",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount",
                                                       "network")]},
    }))  # fmt: skip

    def bare(i: int) -> None:
        subprocess.run([engine.runsc, f"--root={root / 'state'}", f"--platform={engine.platform}",
                        "--network=none", "--overlay2=root:memory", "run",
                        f"--bundle={bundle}", f"bare-{i}"],
                       check=True, capture_output=True)  # fmt: skip

    def torpor_cycle(mode: str, i: int) -> None:
        start_and_exec(engine, mode, f"cpu-{mode}-{i}", ck_id)
        engine.remove(f"cpu-{mode}-{i}", force=True)

    cases: dict[str, Any] = {
        "runsc run /bin/true (runsc alone)": bare,
        "torpor cold: run, exec true, rm -f": lambda i: torpor_cycle("cold", i),
        "torpor restore: restore, exec true, rm -f": lambda i: torpor_cycle("restore", i),
    }
    out: dict[str, Any] = {"cycles": cycles, "cores": os.cpu_count() or 1, "cases": {}}
    try:
        for what, fn in cases.items():
            fn(-1)  # warm the page cache and runsc's first-run work
            walls = []
            c0 = busy_cpu_seconds()  # /proc/stat counts in 10 ms ticks: sum, then divide
            for i in range(cycles):
                if stop.is_set():
                    break
                t0 = time.monotonic()
                fn(i)
                walls.append(time.monotonic() - t0)
            cpu = (busy_cpu_seconds() - c0) / max(1, len(walls))
            out["cases"][what] = {
                "cpu_mean": cpu, "wall_median": pct(walls, 0.5), "n": len(walls),
                "ceiling_per_min": out["cores"] * 60 / cpu if cpu else 0.0,
            }  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


# ------------------------------------------------------------------ reports

TARGETS = {
    "restore_ms": 200, "checkpoint_ms": 150, "starts_per_min": 2000,
}  # fmt: skip


def targets(
    summ: dict[str, Any], tp: list[dict[str, Any]], cpu: dict[str, Any] | None = None
) -> list[tuple[str, str, str, bool]]:
    rows = []
    dev = summ["dev"]
    v = dev["restore_first_exec"]["median"]
    rows.append(("dev restore to first exec, median", "<= 200 ms", ms(v), v <= 0.200))
    v = dev["standby_first_exec"]["median"]
    rows.append(("dev restore into a standby to first exec, median", "<= 200 ms", ms(v),
                 v <= 0.200))  # fmt: skip
    v = dev["checkpoint_seconds"]["median"]
    rows.append(("dev checkpoint median (runsc, CheckpointInfo.seconds)", "<= 150 ms",
                 ms(v), v <= 0.150))  # fmt: skip
    v = dev["checkpoint_wall"]["median"]
    rows.append(("dev checkpoint median (wall of engine.checkpoint)", "<= 150 ms", ms(v),
                 v <= 0.150))  # fmt: skip
    v = dev["recheckpoint_wall"]["median"]
    rows.append(("dev checkpoint again after a restore, median (wall)", "<= 150 ms", ms(v),
                 v <= 0.150))  # fmt: skip
    for kind in KINDS:
        r = summ[kind]["speedup"]
        rows.append((f"{kind}: restore faster than cold start + setup (medians)",
                     "ratio > 1", f"{r:.2f}x", r > 1))  # fmt: skip
        r = summ[kind]["cold_setup"]["median"] / summ[kind]["standby_first_exec"]["median"]
        rows.append((f"{kind}: restore into a standby faster than cold start + setup",
                     "ratio > 1", f"{r:.2f}x", r > 1))  # fmt: skip
    for mode in ("cold", "restore"):
        got = [t for t in tp if t["mode"] == mode]
        if got:
            best = max(got, key=lambda t: t["starts_per_min"])
            what = "cold starts" if mode == "cold" else "restores of idle checkpoint"
            rows.append((f"sandbox starts per minute ({what}, best N)", ">= 2,000",
                         f"{best['starts_per_min']:,.0f} (N={best['n']})",
                         best["starts_per_min"] >= 2000))  # fmt: skip
    for what, c in (cpu or {}).get("cases", {}).items():
        rows.append((f"most starts per minute the cores allow: {what}", ">= 2,000",
                     f"{c['ceiling_per_min']:,.0f} ({ms(c['cpu_mean'])} CPU each)",
                     c["ceiling_per_min"] >= 2000))  # fmt: skip
    return rows


METRICS = [
    ("cold_first_exec", "cold start to first exec", ms),
    ("cold_setup", "cold start + setup until ready", ms),
    ("checkpoint_seconds", "checkpoint (CheckpointInfo.seconds)", ms),
    ("checkpoint_wall", "checkpoint (engine.checkpoint wall)", ms),
    ("checkpoint_size", "checkpoint size", mib),
    ("meminfo_used", "memory: MemTotal - MemAvailable", mib),
    ("rss_sum", "memory: sum of VmRSS", mib),
    ("restore_first_exec", "restore to first exec", ms),
    ("restore_start", "  of which engine.start(checkpoint=)", ms),
    ("verify_seconds", "  checkpoint hot copy check, size + XXH3-128 (alone)", ms),
    ("upload_seconds", "checkpoint: background upload into the snapshot store", ms),
    ("standby_first_exec", "restore into a standby to first exec (new sandbox)", ms),
    ("standby_restore", "  of which engine.restore", ms),
    ("standby_setup", "standby set-up beforehand (engine.standby, off the path)", ms),
    ("check_seconds", "correctness check after restore", ms),
    ("recheckpoint_seconds", "checkpoint again after restore (CheckpointInfo.seconds)", ms),
    ("recheckpoint_wall", "checkpoint again after restore (engine.checkpoint wall)", ms),
]


def write_markdown(data: dict[str, Any], path: Path) -> None:
    m, summ, tp = data["machine"], data["summary"], data["throughput"]
    lines = [
        "# Sandbox engine benchmark",
        "",
        f"{m['date']}, kernel {m['kernel']}, {m['cpu']}, {m['nproc']} CPUs, {m['memory']}, "
        f"runsc {m['runsc_dpkg']}, Python {m['python']}; load average at start "
        f"{m['loadavg_start'][0]:.1f}, at end {data['loadavg_end'][0]:.1f} (shared machine: "
        "other jobs run on the same 2 cores). Produced by "
        f"`{' '.join(['benchmarks/bench_sandbox.py', *data['argv']])}` in "
        f"{data['total_seconds']:.0f} s; {data['runs']} runs per "
        "sandbox, interleaved round-robin; fat sandbox memory beyond the random quarter: "
        f"{data['fat_rest']}.",
        "",
        "## Targets (issue 2)",
        "",
        "| target | wanted | got | |",
        "|---|---|---|---|",
    ]
    for what, want, got, ok in targets(summ, tp, data.get("cpu_per_start")):
        lines.append(f"| {what} | {want} | {got} | {'met' if ok else '**missed**'} |")
    lines += ["", "## Per sandbox (median / p95)", "",
              "| metric | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]
    for key, label, fmt in METRICS:
        cells = [f"{fmt(summ[k][key]['median'])} / {fmt(summ[k][key]['p95'])}" for k in KINDS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| checkpoint size / memory used (medians) | " + " | ".join(
        f"{summ[k]['checkpoint_size']['median'] / max(1, summ[k]['meminfo_used']['median']):.2f}"
        for k in KINDS) + " |")  # fmt: skip
    lines.append("| restore speedup: (cold start + setup) / restore, medians | "
                 + " | ".join(f"{summ[k]['speedup']:.2f}x" for k in KINDS) + " |")
    lines.append("| correctness checks passed | " + " | ".join(
        f"{summ[k]['checks_ok']}/{summ[k]['cold_setup']['n']}" for k in KINDS) + " |")
    lines += ["", "## Sandbox starts per minute, N in parallel", "",
              "start -> `exec true` -> `rm -f`, looped by N threads for "
              f"{data['duration']:.0f} s each. 'cold' is `engine.run` of a fresh sandbox, "
              "'restore' is `engine.restore` of a checkpoint of an idle sandbox (how torpor "
              "resumes).", "",
              "| mode | N | starts | starts/min | start+exec median / p95 | "
              "rm -f median / p95 | errors |",
              "|---|---|---|---|---|---|---|"]
    for t in tp:
        lines.append(
            f"| {t['mode']} | {t['n']} | {t['starts']} | {t['starts_per_min']:,.0f} | "
            f"{ms(t['latency_median'])} / {ms(t['latency_p95'])} | "
            f"{ms(t['remove_median'])} / {ms(t['remove_p95'])} | {len(t['errors'])} |"
        )
    cpu = data.get("cpu_per_start")
    if cpu and cpu["cases"]:
        lines += ["", "## CPU per start", "",
                  f"Busy CPU time of the whole machine (/proc/stat) per cycle, {cpu['cycles']} "
                  "cycles one at a time, and what it allows: "
                  f"{cpu['cores']} cores x 60 s / CPU per start. 'runsc alone' is `runsc run` "
                  "of /bin/true in a minimal bundle (same platform, network and root overlay, "
                  "no cgroup, no torpor): it creates, starts, waits for and deletes a sandbox, "
                  "so it is the floor for any start on this runsc.", "",
                  "| cycle | CPU per cycle (mean) | wall median | most starts per minute |",
                  "|---|---|---|---|"]  # fmt: skip
        for what, c in cpu["cases"].items():
            lines.append(f"| {what} | {ms(c['cpu_mean'])} | {ms(c['wall_median'])} | "
                         f"{c['ceiling_per_min']:,.0f} |")  # fmt: skip
    cold_rm = [t["remove_median"] for t in tp if t["mode"] == "cold" and t["remove"]]
    rest_rm = [t["remove_median"] for t in tp if t["mode"] == "restore" and t["remove"]]
    if cold_rm and rest_rm and pct(rest_rm, 0.5) > 3 * pct(cold_rm, 0.5):
        lines += [
            "",
            f"`rm -f` of a restored sandbox takes {ms(pct(rest_rm, 0.5))} against "
            f"{ms(pct(cold_rm, 0.5))} for a cold-started one, which caps restores per minute. "
            "On this host `runsc delete` of a restored container waits in 'Killing gofer': "
            "the gofer is orphaned when the foreground `runsc restore` exits and stays a "
            "zombie until the host's PID 1 reaps it. The same wait makes 'checkpoint again "
            "after restore' slow (the engine runs `runsc delete` after a checkpoint).",
        ]
    lines += [
        "",
        "Memory use is read inside the sandbox just before the checkpoint. gVisor's "
        "MemTotal - MemAvailable includes the in-memory root overlay (files the sandbox "
        "wrote); the VmRSS sum counts the processes only. The checkpoint is written "
        "with `--compression=none --exclude-committed-zero-pages` into the checkpoint "
        "storage the runtime and the CLI use: a raw hot copy at once (what 'checkpoint' "
        "includes), the compressed, deduplicated copy in the snapshot store in the "
        "background (its own row, waited for between measurements). 'restore to first "
        "exec' includes checking the checkpoint's raw hot copy (the diagnostic row shows "
        "what that costs alone) and the first exec, which goes through init's host "
        "channel (the restored init opens it again by itself; no `runsc exec`).",
        "",
    ]
    path.write_text("\n".join(lines))


def write_plot(summ: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    x = list(range(len(KINDS)))
    w = 0.27
    for off, key, label, color in (
        (-w, "standby_first_exec", "restore into a standby to first exec", "#1b998b"),
        (0, "restore_first_exec", "restore to first exec", "#2a7ab0"),
        (w, "cold_setup", "cold start + setup", "#c8553d"),
    ):
        med = [summ[k][key]["median"] * 1000 for k in KINDS]
        p95 = [summ[k][key]["p95"] * 1000 for k in KINDS]
        bars = ax.bar([i + off for i in x], med, w, label=label, color=color,
                      yerr=[[0] * len(med), [p - m for p, m in zip(p95, med, strict=True)]],
                      capsize=4)  # fmt: skip
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in med], label_type="center",
                     fontsize=8, color="white")  # fmt: skip
    ax.set_xticks(x, KINDS)
    ax.set_ylabel("ms (median; whisker to p95)")
    ax.set_title("torpor gVisor sandboxes: restore vs cold start + setup")
    ax.axhline(200, color="gray", lw=0.8, ls="--", label="200 ms target (dev restore)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------ main


def cleanup(engine: GVisorEngine | None, home: Path) -> None:
    if engine is not None:
        for info in engine.list(all=True):
            with contextlib.suppress(Exception):
                engine.remove(info.id, force=True)
        for m in engine.list_checkpoints():
            with contextlib.suppress(Exception):
                engine.checkpoints.delete(m["id"])
        root = str(home / "runsc")
        for sid in sh(["runsc", f"--root={root}", "list", "-quiet"]).split():
            sh(["runsc", f"--root={root}", "delete", "-force", sid])
    shutil.rmtree(home, ignore_errors=True)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="runs per sandbox (default 10)")
    ap.add_argument("--duration", type=float, default=20.0,
                    help="seconds per N for starts per minute (default 20)")  # fmt: skip
    ap.add_argument("--parallel", default="1,2,4,8", help="values of N (default 1,2,4,8)")
    ap.add_argument("--quick", action="store_true", help="3 runs, 5 s per N (to develop)")
    ap.add_argument("--fat-rest", choices=("pattern", "zeros"), default="pattern",
                    help="fat: the 3/4 that is not random (default: a repeated pattern)")
    ap.add_argument("--no-throughput", action="store_true",
                    help="skip starts per minute and CPU per start")  # fmt: skip
    ap.add_argument("--cpu-cycles", type=int, default=20,
                    help="cycles per case for CPU per start (default 20)")  # fmt: skip
    ap.add_argument("--results", type=Path, default=RESULTS, help="output directory")
    args = ap.parse_args()
    if args.quick:
        args.runs = min(args.runs, 3)
        args.duration = min(args.duration, 5.0)
        args.cpu_cycles = min(args.cpu_cycles, 5)
    parallel = [int(p) for p in args.parallel.split(",") if p]

    images = ImageStore(Path(os.environ.get("TORPOR_IMAGES", "/var/lib/torpor/images")))
    images.get("base")  # fail early, with the store's message, if there is no base image
    home = Path(tempfile.mkdtemp(prefix="torpor-bench-"))
    engine: GVisorEngine | None = None
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with `&`
    stop = threading.Event()
    started = time.monotonic()
    data: dict[str, Any] = {"argv": sys.argv[1:], "machine": machine_info(),
                            "runs": args.runs, "duration": args.duration,
                            "fat_rest": args.fat_rest}  # fmt: skip
    try:
        console.print(f"[bold]torpor sandbox benchmark[/] home={home} runs={args.runs} "
                      f"load={os.getloadavg()[0]:.2f}")  # fmt: skip
        # The checkpoint storage the runtime and the CLI use: a raw hot copy at once, the
        # compressed, deduplicated copy in the snapshot store in the background.
        from torpor.runtime.checkpoints import SnapshotCheckpointStorage
        from torpor.snapshots import open_store

        storage = SnapshotCheckpointStorage(open_store(f"file://{home / 'snapshots'}"), home)
        engine = GVisorEngine(home, images=images, checkpoints=storage)
        samples: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
        console.print(ROW.format("run", "kind", "cold", "cold+setup", "ck runsc", "ck wall",
                                 "ck size", "mem used", "rss sum", "rest|stby", "check",
                                 "note"), style="bold")  # fmt: skip
        for run in range(args.runs):
            order = KINDS[run % 3:] + KINDS[:run % 3]  # rotate who goes first
            for kind in order:
                s = one_run(engine, kind, run, args.fat_rest)
                samples[kind].append(s)
                console.print(ROW.format(
                    run, kind, ms(s["cold_first_exec"]), ms(s["cold_setup"]),
                    ms(s["checkpoint_seconds"]), ms(s["checkpoint_wall"]),
                    mib(s["checkpoint_size"]), mib(s["meminfo_used"]), mib(s["rss_sum"]),
                    f"{ms(s['restore_first_exec'])}|{ms(s['standby_first_exec'])}",
                    "ok" if s["check_ok"] and s["standby_check_ok"] else "[red]FAIL[/]",
                    s.get("check_error", ""),
                ))  # fmt: skip
        data["samples"] = samples
        summ: dict[str, Any] = {}
        for kind in KINDS:
            ss = samples[kind]
            summ[kind] = {key: summary([s[key] for s in ss]) for key, _, _ in METRICS}
            summ[kind]["run_s"] = summary([s["run_s"] for s in ss])
            summ[kind]["checks_ok"] = sum(1 for s in ss if s["check_ok"] and s["standby_check_ok"])
            summ[kind]["speedup"] = (summ[kind]["cold_setup"]["median"]
                                     / summ[kind]["restore_first_exec"]["median"])
        data["summary"] = summ

        tp: list[dict[str, Any]] = []
        if not args.no_throughput:
            src = "tp-idle-source"
            engine.run(SandboxSpec(image="base"), name=src)
            must(engine.exec(src, ["true"]), "exec")
            ck = engine.checkpoint(src, "idle")
            console.print(f"\n[bold]starts per minute[/] ({args.duration:.0f} s per N; idle "
                          f"checkpoint {mib(ck.size)})")  # fmt: skip
            for n in parallel:
                for mode in ("cold", "restore"):
                    t = throughput(engine, mode, n, args.duration, ck.id, stop)
                    tp.append(t)
                    console.print(
                        f"  {mode:<7} N={n}: {t['starts']:>4} starts in {t['elapsed']:5.1f} s "
                        f"= {t['starts_per_min']:7,.0f}/min; start+exec median "
                        f"{ms(t['latency_median'])}, p95 {ms(t['latency_p95'])}; rm -f median "
                        f"{ms(t['remove_median'])}"
                        + (f"; [red]{len(t['errors'])} errors[/]: {t['errors'][0]}"
                           if t["errors"] else "")
                    )  # fmt: skip
            console.print(f"\n[bold]CPU per start[/] ({args.cpu_cycles} cycles each, one "
                          "at a time, whole machine from /proc/stat)")  # fmt: skip
            data["cpu_per_start"] = cpu = cpu_per_start(engine, images, ck.id,
                                                        args.cpu_cycles, stop)  # fmt: skip
            for what, c in cpu["cases"].items():
                console.print(f"  {what:<44} {ms(c['cpu_mean'])} CPU, {ms(c['wall_median'])} "
                              f"wall -> at most {c['ceiling_per_min']:,.0f}/min on "
                              f"{cpu['cores']} cores")  # fmt: skip
            engine.remove(src, force=True)
            engine.checkpoints.delete(ck.id)
        data["throughput"] = tp
        data["total_seconds"] = time.monotonic() - started
        data["loadavg_end"] = os.getloadavg()

        table = Table(title="median / p95 per sandbox")
        table.add_column("metric")
        for k in KINDS:
            table.add_column(k, justify="right")
        for key, label, fmt in METRICS:
            table.add_row(label, *(f"{fmt(summ[k][key]['median'])} / "
                                   f"{fmt(summ[k][key]['p95'])}" for k in KINDS))  # fmt: skip
        table.add_row("(cold+setup) / restore", *(f"{summ[k]['speedup']:.2f}x" for k in KINDS))
        table.add_row("checks passed", *(f"{summ[k]['checks_ok']}/{len(samples[k])}"
                                         for k in KINDS))  # fmt: skip
        console.print(table)
        tt = Table(title="targets")
        for c in ("target", "wanted", "got", ""):
            tt.add_column(c)
        for what, want, got, ok in targets(summ, tp, data.get("cpu_per_start")):
            tt.add_row(what, want, got, "[green]met[/]" if ok else "[red]missed[/]")
        console.print(tt)

        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "sandbox.json").write_text(json.dumps(data, indent=1))
        write_markdown(data, args.results / "sandbox.md")
        write_plot(summ, args.results / "sandbox.png")
        console.print(f"wrote {args.results}/sandbox.json, sandbox.md, sandbox.png "
                      f"({data['total_seconds']:.0f} s)")  # fmt: skip
        failed = sum(len(s) - summ[k]["checks_ok"] for k, s in samples.items())
        return 1 if failed else 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: cleaning up[/]")
        return 130
    finally:
        stop.set()
        for t in _threads:
            t.join(120)
        cleanup(engine, home)


if __name__ == "__main__":
    sys.exit(main())
