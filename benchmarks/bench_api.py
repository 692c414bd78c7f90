"""Benchmark of the HTTP API: server-sent event fan-out and the API's overhead on a turn.

    .venv/bin/python benchmarks/bench_api.py [--quick] [--no-turns]

1. Fan-out: M sessions, N SSE clients (spread over the sessions), a writer appending
   entries to the logs. Events delivered per second and the latency from log append to
   the client, when the writer is a worker in the server's process (it wakes the streams)
   and when it is another process (the streams find entries by polling, every 0.5 s).
2. Turn overhead: the same scripted turn (one tool call, a wait-point snapshot) run with
   the in-process API (`Session.send`) and over HTTP (`Client` send: post + events).

Writes benchmarks/results/api.json and benchmarks/results/api.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.api.conftest import read_sse, serve  # noqa: E402
from torpor.api.app import create_app  # noqa: E402
from torpor.api.client import Client  # noqa: E402
from torpor.context import Entry  # noqa: E402
from torpor.runtime.core import Runtime  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def fanout(home: Path, sessions: int, clients: int, per_session: int, notify: bool,
           interval: float) -> dict[str, Any]:  # fmt: skip
    rt = Runtime(db=f"sqlite:///{home / f'fan-{sessions}-{clients}-{notify}.db'}", home=home)
    app = create_app(rt, auth=False, workers=0)
    # the sessions only carry events (no turn runs), but a model must be configured
    os.environ.setdefault("OPENAI_API_KEY", "never-sent")
    sids = [rt.create_session(model="openai:none").id for _ in range(sessions)]
    heads = {sid: rt.log.head_seq(sid) for sid in sids}
    epochs = {sid: rt.log.acquire(sid) for sid in sids}
    appended: dict[tuple[str, int], float] = {}
    received: list[tuple[str, int, float]] = []
    lock = threading.Lock()
    with serve(app) as url:
        ready = threading.Barrier(clients + 1)

        def client(i: int) -> None:
            sid = sids[i % sessions]
            target = heads[sid] + per_session
            got: list[dict[str, Any]] = []

            def stop(ev: dict[str, Any]) -> bool:
                with lock:
                    received.append((sid, ev["id"], time.perf_counter()))
                return ev["id"] >= target

            with httpx.stream("GET", f"{url}/v1/sessions/{sid}/events",
                              params={"after": heads[sid]}, timeout=120) as r:  # fmt: skip
                ready.wait()
                read_sse(r, stop, got)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        ready.wait()
        time.sleep(0.3)
        t0 = time.perf_counter()
        for k in range(per_session):
            for sid in sids:
                e = Entry.message("assistant", f"step {k}: " + "x" * 200)
                (seq,) = rt.log.append(sid, [e], epoch=epochs[sid])
                appended[(sid, seq)] = time.perf_counter()
                if notify:
                    app.state.notifier.notify(sid)
            if interval:
                time.sleep(interval)
        for t in threads:
            t.join(120)
        wall = time.perf_counter() - t0
    rt.close()
    lat = [(t - appended[(sid, seq)]) * 1000 for sid, seq, t in received
           if (sid, seq) in appended]  # fmt: skip
    return {
        "sessions": sessions, "clients": clients, "entries_per_session": per_session,
        "woken": notify, "events_delivered": len(received), "seconds": round(wall, 3),
        "events_per_s": round(len(received) / wall, 1),
        "latency_ms_p50": round(pct(lat, 50), 2), "latency_ms_p99": round(pct(lat, 99), 2),
    }  # fmt: skip


def turns(home: Path, n: int) -> dict[str, Any]:
    from torpor.runtime.checkpoints import SnapshotCheckpointStorage
    from torpor.sandbox.gvisor import GVisorEngine
    from torpor.sandbox.images import ImageStore
    from torpor.snapshots import open_store

    images = ImageStore()
    images.build_base()
    store = open_store(f"file://{home / 'snapshots'}")
    eng = GVisorEngine(home, images=images, checkpoints=SnapshotCheckpointStorage(store, home))
    rt = Runtime(db=f"sqlite:///{home / 'turns.db'}", store=f"file://{home / 'snapshots'}",
                 home=home, engine=eng)  # fmt: skip

    def script(name: str) -> str:
        p = home / f"{name}.jsonl"
        lines = []
        for i in range(n + 1):
            lines.append({"text": "run", "tool_calls": [
                {"name": "shell", "arguments": {"command": f"echo {i}"}}]})
            lines.append({"text": f"done {i}"})
        p.write_text("".join(json.dumps(x) + "\n" for x in lines))
        return f"script:{p}"

    # interleaved, so both see the same machine state; the HTTP send returns at the
    # wait-point event (the `state: waiting` marker), the in-process one after the row update
    app = create_app(rt, auth=False, workers=1, scripts=home)
    t_local, t_http = [], []
    with serve(app) as url, Client(url) as c:
        local = rt.create_session(model=script("local"))
        remote = c.create_session(model=script("http"))
        local.send("warm up")
        remote.send("warm up")
        for i in range(n):
            t0 = time.perf_counter()
            local.send(f"turn {i}")
            t_local.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            out = remote.send(f"turn {i}")
            t_http.append((time.perf_counter() - t0) * 1000)
            assert out.state == "waiting", out
    for row in rt.sessions():
        with contextlib.suppress(Exception):
            eng.remove(f"s-{row.id}", force=True)
    rt.close()
    ml, mh = statistics.median(t_local), statistics.median(t_http)
    return {"turns": n, "in_process_ms_median": round(ml, 1), "http_ms_median": round(mh, 1),
            "overhead_ms_median": round(mh - ml, 1),
            "in_process_ms": [round(x, 1) for x in t_local],
            "http_ms": [round(x, 1) for x in t_http]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-turns", action="store_true")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="torpor-bench-api-"))
    os.environ.setdefault("TORPOR_HOME", str(home))
    shapes = [(1, 1), (10, 10), (10, 50)] if args.quick else [(1, 1), (10, 10), (10, 100),
                                                               (50, 200)]  # fmt: skip
    per = 50 if args.quick else 200
    fan = []
    for m, nclients in shapes:
        for notify in (True, False):
            r = fanout(home, m, nclients, per, notify, interval=0.002)
            fan.append(r)
            print(json.dumps(r), flush=True)
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "fanout": fan,
    }  # fmt: skip
    if not args.no_turns:
        result["turns"] = turns(home, 5 if args.quick else 15)
        print(json.dumps({k: v for k, v in result["turns"].items() if "median" in k}))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "api.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# HTTP API benchmark", "",
          f"Python {result['machine']['python']}, {result['machine']['cpus']} CPUs. "
          "Writer appends one entry per session every ~2 ms round; latency is log append "
          "-> SSE client.", "",
          "| sessions | SSE clients | writer | events delivered | events/s | p50 ms | p99 ms |",
          "|---:|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in fan:
        who = "in-process worker (woken)" if r["woken"] else "other process (polled)"
        md.append(f"| {r['sessions']} | {r['clients']} | {who} | {r['events_delivered']} | "
                  f"{r['events_per_s']} | {r['latency_ms_p50']} | {r['latency_ms_p99']} |")
    if "turns" in result:
        t = result["turns"]
        md += ["", "| turn (1 tool call + wait-point snapshot) | median ms |", "|---|---:|",
               f"| in-process `Session.send` | {t['in_process_ms_median']} |",
               f"| HTTP `Client` send (post + SSE) | {t['http_ms_median']} |",
               f"| API overhead | {t['overhead_ms_median']} |"]  # fmt: skip
    (RESULTS / "api.md").write_text("\n".join(md) + "\n")
    print((RESULTS / "api.md").read_text())


if __name__ == "__main__":
    main()
