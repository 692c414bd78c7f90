"""Benchmark of the sandbox resource over HTTP, through the unchanged e2b SDK and torpor's
own client side by side, against one real `torpor serve --e2b` (its defaults: a worker
thread and a standby sandbox per image).

    .venv/bin/python benchmarks/bench_sandbox_api.py [--runs N] [--memory MIB] [--quick]

Per run and per client (interleaved: e2b, native, e2b, ...): create a sandbox, run a
first command, start a process that holds `--memory` MiB of memory (written, so that it
is really resident) and counts in it, time a command's round trip (`true`, several
times), pause (it returns once the snapshot is in the store), read what the paused
sandbox holds (host memory of its processes; bytes its snapshot added to the store),
resume (`Sandbox.connect`; `RemoteSandbox.resume`), check that the counter went on from
where it was, and kill it. Latencies are medians and p95 over the runs.

Memory held by a paused sandbox is measured from the host, not asked of torpor: the
resident set (VmRSS) of every host process whose command line names the sandbox's engine
sandbox (runsc's sandbox, gofer and supervisor processes), summed, before and after the
pause. Bytes stored: the snapshot store's own count of the bytes a snapshot added
(`new_bytes`: compressed, deduplicated against what the store held) and its logical size.

Writes benchmarks/results/sandbox_api.json, sandbox_api.md and sandbox_api.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_sandbox import machine_info  # noqa: E402
from tests.conftest import remove_home  # noqa: E402
from torpor.api.client import Client  # noqa: E402
from torpor.runtime.db import RuntimeDB  # noqa: E402
from torpor.runtime.sandboxes.records import SandboxRecords  # noqa: E402
from torpor.sandbox.images import ImageStore  # noqa: E402
from torpor.snapshots import open_store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TORPOR = [sys.executable, "-m", "torpor.cli.main"]
# E2B's published figures (e2b.dev/docs/sandbox/persistence, "Limitations")
E2B_PAUSE_S_PER_GIB = 4.0
E2B_RESUME_S = 1.0


def holder(mib: int) -> str:
    """A process holding `mib` MiB written in memory, counting in /tmp/n."""
    return ("python3 -c 'import os, time\n"
            f"keep = [os.urandom(1 << 20) for _ in range({mib})]\n"
            "n = 0\nwhile True:\n    n += 1\n"
            "    open(\"/tmp/n.t\", \"w\").write(str(n)); os.replace(\"/tmp/n.t\", \"/tmp/n\")\n"
            "    time.sleep(0.01)'")  # fmt: skip


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def box_memory(box: str) -> int:
    """Bytes resident (VmRSS) in the host processes that name the engine sandbox."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if box.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def watch_memory(box: str, t0: float, out: list[float], limit: float = 600.0) -> None:
    """When (seconds after t0) the engine sandbox's host processes were gone: the
    sandbox held no memory from then on (polled every 10 ms)."""
    while time.perf_counter() - t0 < limit:
        if box_memory(box) == 0:
            out.append(time.perf_counter() - t0)
            return
        time.sleep(0.01)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class Server:
    """A `torpor serve --e2b` on a home of its own (no token: loopback, open)."""

    def __init__(self, home: Path) -> None:
        import socket

        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        self.home, self.db = home, f"sqlite:///{home / 'torpor.db'}"
        self.log = home / "serve.log"
        env = dict(os.environ, TORPOR_HOME=str(home), TORPOR_LOG=self.db,
                   TORPOR_SNAPSHOTS=f"file://{home / 'snapshots'}",
                   TORPOR_IMAGES=str(ImageStore().root))  # fmt: skip
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen([*TORPOR, "serve", "--port", str(ports[0]),
                                          "--e2b", str(ports[1])], env=env,
                                         stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        deadline = time.monotonic() + 60
        while "serving http" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log.read_text())
            time.sleep(0.05)
        self.api, self.e2b = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
        self.rdb = RuntimeDB(self.db)
        self.records = SandboxRecords(self.rdb)
        self.store = open_store(f"file://{home / 'snapshots'}")

    def box(self, sid: str) -> str:
        row = self.records.get(sid)
        assert row is not None and row.box, row
        return row.box

    def stop(self) -> None:
        self.rdb.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- one run through each client -----------------------------------------------------------

class E2BClient:
    name = "e2b SDK"

    def __init__(self, srv: Server) -> None:
        os.environ.update(E2B_API_URL=srv.e2b, E2B_SANDBOX_URL=srv.e2b, E2B_API_KEY="bench")
        from e2b import Sandbox

        self.Sandbox = Sandbox

    def create(self) -> Any:
        return self.Sandbox.create(timeout=3600)

    def sid(self, sb: Any) -> str:
        return str(sb.sandbox_id)

    def run(self, sb: Any, cmd: str) -> str:
        return str(sb.commands.run(cmd).stdout)

    def background(self, sb: Any, cmd: str) -> None:
        sb.commands.run(cmd, background=True)

    @staticmethod
    def login(cmd: str) -> str:
        return cmd  # (the SDK runs it with /bin/bash -l -c itself)

    def read(self, sb: Any, path: str) -> str:
        return str(sb.files.read(path))

    def pause(self, sb: Any) -> None:
        assert sb.pause() is True

    def resume(self, sb: Any) -> Any:
        return self.Sandbox.connect(sb.sandbox_id)

    def kill(self, sb: Any) -> None:
        sb.kill()


class NativeClient:
    name = "native client"

    def __init__(self, srv: Server) -> None:
        self.client = Client(srv.api, timeout=600)

    def create(self) -> Any:
        return self.client.sandboxes.create(timeout=3600)

    def sid(self, sb: Any) -> str:
        return str(sb.id)

    def run(self, sb: Any, cmd: Any) -> str:
        return sb.exec(cmd).stdout.decode()

    def background(self, sb: Any, cmd: str) -> None:
        sb.spawn(cmd)

    @staticmethod
    def login(cmd: str) -> Any:
        return ["/bin/bash", "-l", "-c", cmd]

    def read(self, sb: Any, path: str) -> str:
        return sb.files.read_text(path)

    def pause(self, sb: Any) -> None:
        sb.pause()

    def resume(self, sb: Any) -> Any:
        assert sb.resume() is True
        return sb

    def kill(self, sb: Any) -> None:
        sb.kill()


def counter(c: Any, sb: Any) -> int:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(Exception):
            return int(c.read(sb, "/tmp/n"))
        if time.monotonic() > deadline:
            raise RuntimeError("the counter never wrote")
        time.sleep(0.05)


def one_run(srv: Server, c: Any, mib: int, trips: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["create"], sb = timed(c.create)
    sid = c.sid(sb)
    out["first_command"], text = timed(lambda: c.run(sb, "echo ready"))
    assert text == "ready\n", text
    c.background(sb, holder(mib))
    before = counter(c, sb)
    while counter(c, sb) == before:  # its memory written: it counts
        time.sleep(0.05)
    out["round_trips"] = [timed(lambda: c.run(sb, "true"))[0] for _ in range(trips)]
    # the command line the e2b SDK runs every command with (a login bash), by each client
    out["login_trips"] = [timed(lambda: c.run(sb, c.login("true")))[0] for _ in range(trips)]
    box = srv.box(sid)
    out["memory_running"] = box_memory(box)
    freed: list[float] = []
    watch = threading.Thread(target=watch_memory, args=(box, time.perf_counter(), freed))
    watch.start()
    out["pause"], _ = timed(lambda: c.pause(sb))
    watch.join()
    out["memory_freed"] = freed[0] if freed else out["pause"]
    out["memory_paused"] = box_memory(box)
    row = srv.records.get(sid)
    assert row is not None and row.state == "paused" and row.snapshot
    info = srv.store.info(row.snapshot)
    out["stored_new_bytes"], out["snapshot_logical"] = info.new_bytes, info.logical_size
    out["resume"], sb = timed(lambda: c.resume(sb))
    out["first_command_after_resume"], _ = timed(lambda: c.run(sb, "true"))
    out["memory_kept"] = counter(c, sb) >= before  # went on from its memory, not from 0
    c.kill(sb)
    return out


# -- report -----------------------------------------------------------------------------------

METRICS = [("create", "create (API call until it returns)"),
           ("first_command", "first command after create (`echo ready`)"),
           ("round_trip", "a command's round trip (`true`; the SDK: `bash -l -c true`)"),
           ("login_trip", "round trip of `bash -l -c true` (the SDK's command line)"),
           ("memory_freed", "pause: until the sandbox holds no memory (host processes gone)"),
           ("pause", "pause: until it returns (the snapshot stored)"),
           ("resume", "resume (`Sandbox.connect` / `resume`)"),
           ("first_command_after_resume", "first command after resume")]  # fmt: skip


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for key, _ in METRICS:
        many = {"round_trip": "round_trips", "login_trip": "login_trips"}
        xs = [t for r in runs for t in (r[many[key]] if key in many else [r[key]])]
        s[key] = {"median": pct(xs, 50), "p95": pct(xs, 95), "n": len(xs)}
    for key in ("memory_running", "memory_paused", "stored_new_bytes", "snapshot_logical"):
        xs = [float(r[key]) for r in runs]
        s[key] = {"median": pct(xs, 50), "max": max(xs)}
    s["memory_kept"] = sum(bool(r["memory_kept"]) for r in runs)
    s["runs"] = len(runs)
    return s


def ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def mib(x: float) -> str:
    return f"{x / 2**20:.1f} MiB"


def write_md(data: dict[str, Any], path: Path) -> None:
    m, clients = data["machine"], data["clients"]
    names = list(clients)
    lines = [
        "# Sandbox API benchmark: the e2b SDK and torpor's client against `torpor serve`",
        "",
        f"{m['date']}, kernel {m['kernel']}, {m['cpu']}, {m['nproc']} CPUs, Python "
        f"{m['python']}; load average at start {m['loadavg_start'][0]:.1f}, at end "
        f"{data['loadavg_end'][0]:.1f} (a shared machine: other jobs run on the same "
        f"cores). Produced by `benchmarks/bench_sandbox_api.py` in {data['seconds']:.0f} s: "
        f"{data['runs']} runs per client, interleaved; each sandbox holds a process with "
        f"{data['memory_mib']} MiB of written memory when it is paused; e2b {data['e2b']}.",
        "",
        "## Latency (median / p95)",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, label in METRICS:
        cells = [f"{ms(clients[n][key]['median'])} / {ms(clients[n][key]['p95'])}"
                 for n in names]  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## A paused sandbox", "",
              "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows = [("memory_running", "host memory of its processes while running (median)"),
            ("memory_paused", "host memory of its processes while paused (max over runs)"),
            ("snapshot_logical", "its snapshot's size (logical, median)"),
            ("stored_new_bytes", "bytes its snapshot added to the store (median)")]
    for key, label in rows:
        agg = "max" if key == "memory_paused" else "median"
        cells = [f"{clients[n][key][agg]:.0f} bytes" if key == "memory_paused"
                 else mib(clients[n][key][agg]) for n in names]  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| in-memory state kept through pause and resume | " + " | ".join(
        f"{clients[n]['memory_kept']}/{clients[n]['runs']}" for n in names) + " |")
    gib = data["memory_mib"] / 1024
    lines += [
        "", "## Against E2B's published figures", "",
        f"E2B documents a pause at about {E2B_PAUSE_S_PER_GIB:g} s per GiB of memory and a "
        f"resume at about {E2B_RESUME_S:g} s. For these sandboxes ({data['memory_mib']} MiB "
        f"held by one process, plus the rest of the sandbox) that would be about "
        f"{E2B_PAUSE_S_PER_GIB * gib * 1000:.0f} ms to pause and {E2B_RESUME_S * 1000:.0f} ms "
        "to resume.", "",
        "| | E2B (published) | " + " | ".join(f"torpor, {n}" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
        f"| pause | ~{E2B_PAUSE_S_PER_GIB * gib * 1000:.0f} ms ({E2B_PAUSE_S_PER_GIB:g} s/GiB)"
        " | " + " | ".join(f"{ms(clients[n]['pause']['median'])} (memory freed after "
                           f"{ms(clients[n]['memory_freed']['median'])})"
                           for n in names) + " |",
        f"| resume | ~{E2B_RESUME_S * 1000:.0f} ms | " + " | ".join(
            ms(clients[n]["resume"]["median"]) for n in names) + " |",
        "",
        *_scaling_md(data.get("scaling") or []),
        "How it is measured: see the module docstring of the benchmark. A paused sandbox's "
        "memory is read from the host (VmRSS of every process naming its engine sandbox): "
        "pause removes the engine sandbox once its snapshot is stored, so none is left. "
        "The pause includes the checkpoint (runsc), the upload of the snapshot into the "
        "store (compressed, deduplicated) and the removal of the stopped sandbox; the "
        "resume is a restore from the local hot copy of the snapshot (into a standby "
        "sandbox when one is ready) and includes a first call through the restored init.",
        "",
    ]
    path.write_text("\n".join(lines))


def _scaling_md(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    out = ["", "Larger sandboxes (native client; the process's memory is random bytes, which "
           "no compression shrinks: the worst case for the upload a pause waits for):", "",
           "| memory held | memory freed after | pause (stored) | E2B's pause at 4 s/GiB | "
           "resume | E2B's resume | snapshot (logical) | added to the store | memory while "
           "paused |", "|---|---|---|---|---|---|---|---|---|"]
    for size in sorted({r["mib"] for r in rows}):
        rs = [r for r in rows if r["mib"] == size]
        med = {k: pct([float(r[k]) for r in rs], 50) for k in (
            "pause", "memory_freed", "resume", "snapshot_logical", "stored_new_bytes")}
        out.append(f"| {size} MiB | {ms(med['memory_freed'])} | {ms(med['pause'])} | "
                   f"~{E2B_PAUSE_S_PER_GIB * size / 1024 * 1000:.0f} ms | {ms(med['resume'])} | "
                   f"~{E2B_RESUME_S * 1000:.0f} ms | {mib(med['snapshot_logical'])} | "
                   f"{mib(med['stored_new_bytes'])} | "
                   f"{max(r['memory_paused'] for r in rs)} bytes |")  # fmt: skip
    return [*out, ""]


def write_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = data["clients"]
    names = list(clients)
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    keys = [k for k, _ in METRICS]
    w = 0.38
    for i, (n, color) in enumerate(zip(names, ("#c8553d", "#2a7ab0"), strict=False)):
        med = [clients[n][k]["median"] * 1000 for k in keys]
        p95 = [clients[n][k]["p95"] * 1000 for k in keys]
        xs = [j + (i - 0.5) * w for j in range(len(keys))]
        bars = ax.bar(xs, med, w, label=n, color=color,
                      yerr=[[0] * len(med), [p - m for p, m in zip(p95, med, strict=True)]],
                      capsize=3)  # fmt: skip
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in med], fontsize=7, padding=2)
    gib = data["memory_mib"] / 1024
    ax.axhline(E2B_RESUME_S * 1000, color="gray", lw=0.8, ls="--",
               label="E2B resume, published (~1 s)")  # fmt: skip
    ax.axhline(E2B_PAUSE_S_PER_GIB * gib * 1000, color="black", lw=0.8, ls=":",
               label=f"E2B pause, published (4 s/GiB: {data['memory_mib']} MiB)")  # fmt: skip
    ax.set_xticks(range(len(keys)), ["create", "first cmd", "round trip", "bash -l\nround trip",
                                     "memory\nfreed", "pause\n(stored)", "resume",
                                     "cmd after\nresume"], fontsize=7)
    ax.set_ylabel("ms (median; whisker to p95)")
    ax.set_title("torpor serve --e2b: the e2b SDK and torpor's client")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def scaling(srv: Server, sizes: list[int], runs: int) -> list[dict[str, Any]]:
    """Pause and resume of sandboxes holding more memory (native client)."""
    c = NativeClient(srv)
    out = []
    for size in sizes:
        for _ in range(runs):
            r = one_run(srv, c, size, 1)
            out.append({"mib": size, **{k: r[k] for k in (
                "pause", "memory_freed", "resume", "memory_running", "memory_paused",
                "snapshot_logical", "stored_new_bytes", "memory_kept")}})  # fmt: skip
            print(f"scale {size} MiB: pause {ms(r['pause'])}, resume {ms(r['resume'])}",
                  flush=True)  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--memory", type=int, default=64, help="MiB a sandbox's process holds")
    ap.add_argument("--trips", type=int, default=5, help="round trips timed per sandbox")
    ap.add_argument("--scale", default="256,1024", help="MiB of larger sandboxes whose pause "
                    "and resume are timed too (native client; '' for none)")
    ap.add_argument("--scale-runs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="3 runs, 16 MiB, no scaling")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.memory, args.scale = 3, 16, ""
    import e2b

    t0 = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="torpor-bench-sbxapi-"))
    srv = Server(home)
    data: dict[str, Any] = {"machine": machine_info(), "runs": args.runs,
                            "memory_mib": args.memory, "e2b": e2b.__version__ if hasattr(
                                e2b, "__version__") else "2.63"}  # fmt: skip
    try:
        clients = [E2BClient(srv), NativeClient(srv)]
        runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in clients}
        for i in range(args.runs):
            for c in clients:
                r = one_run(srv, c, args.memory, args.trips)
                runs[c.name].append(r)
                print(f"run {i + 1} {c.name}: create {ms(r['create'])}, pause {ms(r['pause'])}, "
                      f"resume {ms(r['resume'])}, paused memory {r['memory_paused']} B",
                      flush=True)  # fmt: skip
        data["clients"] = {n: summarize(rs) for n, rs in runs.items()}
        data["raw"] = runs
        data["scaling"] = scaling(srv, [int(x) for x in args.scale.split(",") if x],
                                  args.scale_runs)  # fmt: skip
    finally:
        srv.stop()
        remove_home(home)
    data["loadavg_end"] = os.getloadavg()
    data["seconds"] = time.monotonic() - t0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sandbox_api.json").write_text(json.dumps(data, indent=1, default=str))
    write_md(data, RESULTS / "sandbox_api.md")
    write_plot(data, RESULTS / "sandbox_api.png")
    print((RESULTS / "sandbox_api.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
