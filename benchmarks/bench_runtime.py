"""Benchmark of durable sessions: resume latency, wait-point cost, idle memory, throughput.

Implements the benchmark of issue 5 on two backends side by side in one run:
"sqlite+file" (SQLite log, local snapshot directory) and "postgres+s3" (a throwaway
PostgreSQL cluster through torpor.context.pgtemp, moto's S3 server on loopback).

For each backend a scripted session's first turn builds the reference "dev" sandbox (a git
repo of 200 files, `python3 -m http.server` started with the start_process tool, an
interpreter holding stdlib imports), then over --rounds rounds:

- resume latency: from `session.send(message)` to the first tool call of the turn starting
  in the restored sandbox (the `tool_call_started` event's timestamp), broken down with the
  turn's own events (state -> restored -> user -> assistant -> tool_call_started) and with
  timers around the engine's restore steps;
- wait-point cost: the `snapshot` event's ms (checkpoint + store) and the total from the
  `turn_finished` event to the `waiting` state;
- idle memory: after the wait point, `runsc --root <home>/runsc list` and the process table
  must hold nothing of the session's sandbox; the stored bytes are reported.

Then a few rounds whose raw hot checkpoint copy is removed first (the restore reads the
snapshot store), session creations per minute (create + first turn to its wait point,
without and with the warm pool of pre-started sandboxes), and sessions suspended + resumed
per minute with several sessions round-robin, served by 1 and then 2 `torpor worker`
processes.

    .venv/bin/python benchmarks/bench_runtime.py [--rounds 15] [--duration 30] [--quick]

Needs root, runsc, the base image (TORPOR_IMAGES, default /var/lib/torpor/images), the
PostgreSQL server binaries and moto. Every backend runs in a private temporary TORPOR_HOME
removed at the end. Writes benchmarks/results/runtime.json, runtime.md and runtime.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench_sandbox import DEV_CHECK, DEV_INTERP, DEV_REPO, DEV_WAIT, machine_info, summary
from rich.console import Console

from torpor.context.pgtemp import TempCluster
from torpor.runtime.core import Runtime, wait_for
from torpor.sandbox.images import ImageStore

RESULTS = Path(__file__).parent / "results"
BACKENDS = ("sqlite+file", "postgres+s3")
BUCKET = "torpor-bench"
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

# Resume breakdown: (key, label). Consecutive event timestamps of one resumed turn.
BREAKDOWN = [
    ("claim", "post + claim + epoch + `running` marker (send -> state event)"),
    ("restore_engine", "restore: engine.restore (runsc restore of the dev sandbox)"),
    ("restore_bookkeeping", "restore: leftover-sandbox check + `session_restored` marker"),
    ("inbox", "inbox: read unread, append user message, mark consumed"),
    ("model", "model call: read log tail, build request, scripted model"),
    ("tool_start", "tool start: append assistant message + tool-call intent"),
]
# Inside engine.restore: timers around the engine's steps.
RESTORE_STEPS = [
    ("checkpoint_info", "checkpoint metadata (snapshot manifest from the store)"),
    ("image", "image lookup"),
    ("open_dir", "checkpoint files: raw hot copy checked, else fetched from the store"),
    ("boot", "runsc restore until the sandbox answers"),
]


def shell(command: str, **kw: Any) -> dict[str, Any]:
    return {"name": "shell", "arguments": {"command": command, **kw}}


def write_script(path: Path, turns: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(t) + "\n" for t in turns))
    return f"script:{path}"


def dev_turns(rounds: int) -> list[dict[str, Any]]:
    setup = {"text": "setting up the dev sandbox", "tool_calls": [
        shell(DEV_REPO, timeout=120),
        {"name": "start_process",
         "arguments": {"command": "python3 -m http.server 8000", "cwd": "/root/repo"}},
        {"name": "write_file", "arguments": {"path": "/root/interp.py", "content": DEV_INTERP}},
        {"name": "start_process", "arguments": {"command": "python3 /root/interp.py"}},
        shell(DEV_WAIT, timeout=60),
    ]}  # fmt: skip
    turns = [setup, {"text": "the dev sandbox is ready"}]
    for r in range(rounds):
        turns += [{"text": f"checking, round {r}", "tool_calls": [shell(DEV_CHECK)]},
                  {"text": f"all there, round {r}"}]  # fmt: skip
    return turns


def small_turns(n: int) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for r in range(n):
        turns += [{"text": f"step {r}", "tool_calls": [shell(f"echo {r} >> /root/steps")]},
                  {"text": f"done {r}"}]  # fmt: skip
    return turns


def runsc_ids(home: Path) -> list[str]:
    res = subprocess.run(["runsc", "--root", str(home / "runsc"), "list", "-quiet"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    return [line.strip() for line in res.stdout.splitlines() if line.strip()]


def procs_of(sandbox_id: str) -> list[tuple[int, str]]:
    """(RSS KiB, command) of host processes whose command line names the sandbox."""
    out = subprocess.run(["ps", "-eo", "rss=,args="], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        rss, _, args = line.strip().partition(" ")
        if sandbox_id in args and "ps -eo" not in args:
            found.append((int(rss or 0), args[:120]))
    return found


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"


# ------------------------------------------------------------------ instrumentation


class Timers:
    """Wraps methods of the runtime's engine in place to time the steps of a restore and of
    a wait point (only this process's own objects; nothing in torpor is changed)."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def wrap(self, obj: Any, attr: str, key: str) -> None:
        fn = getattr(obj, attr)

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.current[key] = self.current.get(key, 0.0) + (time.perf_counter() - t0) * 1000

        setattr(obj, attr, timed)

    def take(self) -> dict[str, float]:
        out, self.current = self.current, {}
        return out


def instrument(rt: Runtime) -> Timers:
    t = Timers()
    eng = rt.engine
    t.wrap(eng.checkpointer, "find", "checkpoint_info")
    t.wrap(eng, "_image", "image")
    t.wrap(eng.booter, "boot", "boot")
    t.wrap(eng.checkpoints, "open_dir", "open_dir")
    t.wrap(eng.checkpoints, "put", "store_put")
    if hasattr(eng.checkpoints, "_upload"):  # background upload into the snapshot store
        t.wrap(eng.checkpoints, "_upload", "upload")
    return t


def flush(rt: Runtime) -> float:
    """Wait for background checkpoint uploads; returns the ms waited."""
    t0 = time.perf_counter()
    fn = getattr(rt.engine.checkpoints, "flush", None)
    if fn is not None:
        fn()
    return (time.perf_counter() - t0) * 1000


# ------------------------------------------------------------------ backends


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's standalone S3 server in its own process (not a thread of this one, so that
    it does not compete with the runtime for this process's GIL)."""
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}  # fmt: skip
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN",
                                            "AWS_ENDPOINT_URL_S3"]}  # fmt: skip
    os.environ.update(env)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(k, None)
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.terminate()
        server.wait(timeout=30)


@contextlib.contextmanager
def backend(kind: str, root: Path) -> Iterator[tuple[str, str, Path]]:
    """(db url, store url, TORPOR_HOME) of a fresh backend."""
    home = root / kind.replace("+", "-")
    home.mkdir(parents=True)
    old_home = os.environ.get("TORPOR_HOME")
    os.environ["TORPOR_HOME"] = str(home)  # the S3 store's chunk cache goes under it
    try:
        if kind == "sqlite+file":
            yield f"sqlite:///{home / 'torpor.db'}", f"file://{home / 'snapshots'}", home
        else:
            with TempCluster() as pg, moto_server():
                yield pg.url(pg.create_db()), f"s3://{BUCKET}/runtime", home
    finally:
        if old_home is None:
            os.environ.pop("TORPOR_HOME", None)
        else:
            os.environ["TORPOR_HOME"] = old_home
        for sid in runsc_ids(home):
            subprocess.run(["runsc", "--root", str(home / "runsc"), "delete", "-force", sid],
                           capture_output=True, timeout=60)  # fmt: skip


# ------------------------------------------------------------------ measurements


def one_round(rt: Runtime, sid: str, text: str, timers: Timers, home: Path) -> dict[str, Any]:
    s = rt.get_session(sid)
    events: list[dict[str, Any]] = []
    live: dict[str, Any] = {}

    def on_event(ev: dict[str, Any]) -> None:
        events.append(ev)
        if ev["type"] == "restored":
            live["restore_steps"] = dict(timers.current)  # the restore's steps only
        if ev["type"] == "tool_call_finished" and "sandbox_id" not in live:
            # Off the measured paths: between the tool's end and the next model call.
            for info in rt.engine.list():
                if info.name == f"s-{sid}":
                    live["sandbox_id"] = info.id
                    live["rss_kib"] = sum(r for r, _ in procs_of(info.id))

    timers.take()
    t0 = time.time()
    out = s.send(text, on_event=on_event)
    flush_ms = flush(rt)  # the upload runs on after the wait point; not in the next round
    steps = timers.take()
    first = {}
    for ev in events:
        first.setdefault(ev["type"] if ev["type"] != "state" else f"state:{ev['state']}", ev)
    need = ("state:running", "restored", "user", "assistant", "tool_call_started",
            "turn_finished", "snapshot", "state:waiting")  # fmt: skip
    missing = [k for k in need if k not in first]
    if missing:
        raise RuntimeError(f"round of {sid}: events {missing} missing ({out.state})")
    t = {k: first[k]["t"] for k in need}
    restore_engine = first["restored"]["ms"]
    row: dict[str, Any] = {
        "resume_ms": (t["tool_call_started"] - t0) * 1000,
        "claim": (t["state:running"] - t0) * 1000,
        "restore_engine": restore_engine,
        "from_standby": bool(first["restored"].get("standby")),
        "restore_bookkeeping": (t["restored"] - t["state:running"]) * 1000 - restore_engine,
        "inbox": (t["user"] - t["restored"]) * 1000,
        "model": (t["assistant"] - t["user"]) * 1000,
        "model_itself": first["assistant"]["ms"],
        "first_tool_ms": first["tool_call_finished"]["ms"] if "tool_call_finished" in first
        else 0.0,
        "tool_start": (t["tool_call_started"] - t["assistant"]) * 1000,
        "snapshot_ms": first["snapshot"]["ms"],
        "snapshot_new_bytes": first["snapshot"]["bytes"],
        "wait_point_total_ms": (t["state:waiting"] - t["turn_finished"]) * 1000,
        "store_put_ms": steps.pop("store_put", 0.0),
        "upload_ms": steps.pop("upload", 0.0),
        "upload_wait_after_ms": flush_ms,
        "restore_steps": live.get("restore_steps", {}),
        "snapshot": out.snapshot,
        "running_rss_kib": live.get("rss_kib", 0),
    }
    # The sandbox must be gone: no runsc container, no host process.
    sb = live.get("sandbox_id", "?")
    ids = runsc_ids(home)
    row["idle_runsc_containers"] = len(ids)
    row["idle_sandbox_listed"] = sb in ids
    row["idle_processes"] = len(procs_of(sb)) if sb != "?" else -1
    meta = rt.engine.checkpoints.meta(out.snapshot)  # type: ignore[attr-defined]
    row["stored_logical_bytes"] = meta.get("size", 0)
    row["stored_bytes"] = meta.get("stored_bytes", 0)
    # What the snapshot added to the store (after compression, dedup and page deltas
    # against the snapshot it was restored from); the event's `bytes` is its raw size.
    row["snapshot_new_bytes"] = meta.get("new_bytes", row["snapshot_new_bytes"])
    results = [e for e in s.log() if e.kind == "tool_result"]
    row["check_ok"] = bool(results) and not (results[-1].meta or {}).get("is_error") and (
        "exit code 0" in str(results[-1].content) or str(results[-1].content).strip() == "")
    row["check_output"] = str(results[-1].content)[:200] if results else ""
    return row


def create_one(rt: Runtime, model: str) -> tuple[str, float, dict[str, Any]]:
    started: dict[str, Any] = {}

    def on_event(ev: dict[str, Any]) -> None:
        if ev["type"] == "sandbox_started":
            started.update(ms=ev["ms"], pooled=bool(ev.get("pooled")))

    t0 = time.perf_counter()
    s = rt.create_session(model=model, system="benchmark session")
    out = s.send("start", on_event=on_event)
    secs = time.perf_counter() - t0
    if out.state != "waiting":
        raise RuntimeError(f"creation of {s.id} ended {out.state}")
    return s.id, secs, {"start_ms": started.get("ms", 0.0), "pooled": started.get("pooled"),
                        "snapshot_ms": out.snapshot_ms, "snapshot": out.snapshot}  # fmt: skip


def creations(rt: Runtime, model: str, n: int) -> tuple[list[str], dict[str, Any]]:
    """n sessions created one after another: create + first turn to its wait point."""
    sids, secs, infos = [], [], []
    t0 = time.perf_counter()
    for _ in range(n):
        sid, sec, info = create_one(rt, model)
        sids.append(sid)
        secs.append(sec)
        infos.append(info)
    elapsed = time.perf_counter() - t0
    return sids, {"n": n, "elapsed": elapsed, "per_min": n / elapsed * 60,
                  "seconds": summary(secs),
                  "sandbox_start_ms": summary([i["start_ms"] for i in infos]),
                  "snapshot_ms": summary([i["snapshot_ms"] for i in infos]),
                  "snapshots": [i["snapshot"] for i in infos],
                  "pooled": sum(1 for i in infos if i["pooled"])}  # fmt: skip


def with_watchdog(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run fn in a daemon thread; if it does not finish in time, give up on it (it is left
    hanging) and return ([], {"error": ...})."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["out"] = fn()
        except Exception as e:  # noqa: BLE001 - reported, the benchmark goes on
            box["err"] = f"{type(e).__name__}: {e}"

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    if "out" in box:
        return box["out"]
    err = box.get("err") or f"did not finish in {timeout:.0f} s (hung)"
    console.print(f"  [red]{what}: {err}[/]")
    return [], {"error": err}


def pooled_creations(db: str, store: str, home: Path, model: str, n: int,
                     size: int) -> tuple[list[str], dict[str, Any] | None]:  # fmt: skip
    """The same with a warm pool of `size` sandboxes (filled before the clock starts)."""
    try:
        rtp = Runtime(db=db, store=store, home=home, pool_size=size)  # type: ignore[call-arg]
    except TypeError:
        return [], None  # this torpor has no pool
    try:
        pool = rtp.pool("base")
        deadline = time.monotonic() + 120
        while len(pool._ready()) < size and time.monotonic() < deadline:
            time.sleep(0.05)
        sids, res = creations(rtp, model, n)
        res["pool_size"] = size
        return sids, res
    finally:
        rtp.close()


class WorkerProcs:
    def __init__(self, db: str, store: str, home: Path, n: int) -> None:
        self.logs = [home / f"worker-{i}-{time.monotonic_ns()}.log" for i in range(n)]
        env = dict(os.environ, TORPOR_HOME=str(home))
        self.files = [log.open("w") for log in self.logs]
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "torpor.cli.main", "worker", "--db", db,
                              "--store", store], env=env, stdout=subprocess.DEVNULL,
                             stderr=f)  # fmt: skip
            for f in self.files
        ]
        deadline = time.monotonic() + 120
        while not all("waiting for work" in log.read_text() for log in self.logs):
            for p, log in zip(self.procs, self.logs, strict=True):
                if p.poll() is not None:
                    raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self.files:
            f.close()


def throughput(rt: Runtime, db: str, store: str, home: Path, sids: list[str], workers: int,
               duration: float) -> dict[str, Any]:  # fmt: skip
    """Feed the sessions one message at a time each (a new one as soon as a session waits
    again) for `duration` s, served by `workers` worker processes; count finished turns."""
    procs = WorkerProcs(db, store, home, workers)
    posted = 0
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration:
            for sid in sids:
                row = rt.db.get(sid)
                idle = row.state == "waiting" and not row.lease_owner
                if idle and not rt.db.unread(sid):
                    rt.get_session(sid).post(f"message {posted}")
                    posted += 1
            time.sleep(0.02)
        for sid in sids:
            deadline = time.monotonic() + 120
            while rt.db.unread(sid) and time.monotonic() < deadline:
                time.sleep(0.02)
            wait_for(rt, sid, timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        procs.stop()
    return {"workers": workers, "sessions": len(sids), "turns": posted, "elapsed": elapsed,
            "per_min": posted / elapsed * 60}  # fmt: skip


def run_backend(kind: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    scripts = root / "scripts"
    scripts.mkdir(exist_ok=True)
    with backend(kind, root) as (db, store, home):
        console.print(f"\n[bold]{kind}[/]  db={db.split('?')[0]}  store={store}")
        rt = Runtime(db=db, store=store, home=home)
        try:
            return measure(rt, kind, db, store, home, scripts, args)
        finally:
            for row in rt.sessions():
                with contextlib.suppress(Exception):
                    rt.engine.remove(f"s-{row.id}", force=True)
            rt.close()


def measure(rt: Runtime, kind: str, db: str, store: str, home: Path, scripts: Path,
            args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    slug = kind.replace("+", "-")
    total_rounds = args.rounds + args.cold_rounds
    model = write_script(scripts / f"dev-{slug}.jsonl", dev_turns(total_rounds + 2))
    t0 = time.perf_counter()
    dev = rt.create_session(model=model, system="You are a coding agent.")
    first = dev.send("set up the dev sandbox")
    dev_create_s = time.perf_counter() - t0
    if first.state != "waiting":
        raise RuntimeError(f"dev setup ended {first.state}")
    console.print(f"  dev sandbox built by turn 1 in {dev_create_s:.1f} s; wait point "
                  f"{first.snapshot_ms:.0f} ms, {first.snapshot_bytes / 2**20:.1f} MiB new")
    timers = instrument(rt)
    rounds: list[dict[str, Any]] = []
    hdr = "{:>5} {:>7} {:>7} {:>8} {:>7} {:>6} {:>6} {:>6} {:>9} {:>9} {:>6}  {}"
    console.print(hdr.format("round", "resume", "claim", "restore", "inbox", "model", "tool",
                             "snap", "waitpoint", "stored", "idle", "check"), style="bold")
    base = rt.sandbox_spec("base")  # what a session of image base runs
    snaps = rt.engine.checkpoints.store  # type: ignore[attr-defined]
    chunk_cache = snaps.cache
    for r in range(total_rounds):
        # Cold rounds read the snapshot store, as a machine without the newest hot copy
        # does; they alternate between "older": older hot copies of the session are here
        # (a machine that ran or followed it before: shared chunks are copied from them)
        # and "bare": nothing of it is here (no hot copy, no chunk cache).
        cold = (False if r < args.rounds
                else "older" if (r - args.rounds) % 2 == 0 else "bare")  # fmt: skip
        # Every other round restores into a standby (what a worker with --standby keeps
        # ready, refilled at wait points), set up here off the clock; the others have none.
        use_standby = args.standby and not cold and r % 2 == 1
        rt.engine.standby(base, 1 if use_standby else 0)
        if cold:  # drop the raw hot copy: the restore reads the snapshot store
            for d in (home / "checkpoint-cache").iterdir():
                if d.name == str(dev.info().snapshot) or (cold == "bare"
                                                          and not d.name.startswith(".")):
                    shutil.rmtree(d, ignore_errors=True)
        snaps.cache = None if cold == "bare" else chunk_cache
        try:
            row = one_round(rt, dev.id, f"round {r}: is everything still there?", timers, home)
        finally:
            snaps.cache = chunk_cache
        row["round"], row["cold"], row["standby"] = r, cold, use_standby
        if row["from_standby"] != use_standby:
            raise RuntimeError(f"round {r}: standby {use_standby} but restored "
                               f"{'into' if row['from_standby'] else 'without'} one")  # fmt: skip
        rounds.append(row)
        idle_ok = not row["idle_sandbox_listed"] and row["idle_processes"] == 0
        console.print(hdr.format(
            f"{r}{'c' if cold == 'older' else 'b' if cold else 's' if use_standby else ''}",
            f"{row['resume_ms']:.0f}",
            f"{row['claim']:.0f}",
            f"{row['restore_engine']:.0f}", f"{row['inbox']:.0f}", f"{row['model']:.0f}",
            f"{row['tool_start']:.0f}", f"{row['snapshot_ms']:.0f}",
            f"{row['wait_point_total_ms']:.0f}", f"{row['stored_logical_bytes'] / 2**20:.1f}M",
            "0 B" if idle_ok else "[red]LIVE[/]", "ok" if row["check_ok"] else "[red]FAIL[/]",
        ))  # fmt: skip
    rt.engine.standby(base, 0)
    warm = [x for x in rounds if not x["cold"] and not x["standby"]]
    cold_rows = [x for x in rounds if x["cold"] == "older"]
    bare_rows = [x for x in rounds if x["cold"] == "bare"]
    sb_rows = [x for x in rounds if x["standby"]]
    summ: dict[str, Any] = {
        "resume_ms": summary([x["resume_ms"] for x in warm]),
        "resume_standby_ms": summary([x["resume_ms"] for x in sb_rows]) if sb_rows else None,
        "restore_standby_ms": summary([x["restore_engine"] for x in sb_rows])
        if sb_rows else None,
        "resume_cold_ms": summary([x["resume_ms"] for x in cold_rows]) if cold_rows else None,
        "resume_bare_ms": summary([x["resume_ms"] for x in bare_rows]) if bare_rows else None,
        "breakdown": {k: summary([x[k] for x in warm]) for k, _ in BREAKDOWN},
        "model_itself": summary([x["model_itself"] for x in warm]),
        "first_tool_ms": summary([x["first_tool_ms"] for x in warm]),
        "restore_steps": {k: summary([x["restore_steps"].get(k, 0.0) for x in warm])
                          for k, _ in RESTORE_STEPS},  # fmt: skip
        "restore_steps_cold": {k: summary([x["restore_steps"].get(k, 0.0) for x in cold_rows])
                               for k, _ in RESTORE_STEPS} if cold_rows else None,  # fmt: skip
        "restore_steps_bare": {k: summary([x["restore_steps"].get(k, 0.0) for x in bare_rows])
                               for k, _ in RESTORE_STEPS} if bare_rows else None,  # fmt: skip
        "snapshot_ms": summary([x["snapshot_ms"] for x in rounds]),
        "store_put_ms": summary([x["store_put_ms"] for x in rounds]),
        "upload_ms": summary([x["upload_ms"] for x in rounds]),
        "wait_point_total_ms": summary([x["wait_point_total_ms"] for x in rounds]),
        "snapshot_new_bytes": summary([x["snapshot_new_bytes"] for x in rounds]),
        "stored_logical_bytes": summary([x["stored_logical_bytes"] for x in rounds]),
        "stored_bytes": summary([x["stored_bytes"] for x in rounds]),
        "running_rss_kib": summary([x["running_rss_kib"] for x in rounds]),
        "idle_ok": all(not x["idle_sandbox_listed"] and x["idle_processes"] == 0
                       for x in rounds),  # fmt: skip
        "checks_ok": sum(1 for x in rounds if x["check_ok"]),
        "rounds": len(rounds),
        "dev_create_s": dev_create_s,
        "dev_first_snapshot_ms": first.snapshot_ms,
        "dev_first_snapshot_bytes": first.snapshot_bytes,
    }
    # Session creations per minute: create + first turn (fresh sandbox from the image, a
    # tool call, the wait point), one after another in this process.
    small = write_script(scripts / f"small-{slug}.jsonl", small_turns(400))
    created, summ["creations"] = creations(rt, small, args.creations)
    c = summ["creations"]
    console.print(f"  session creations, no pool: {c['n']} in {c['elapsed']:.1f} s = "
                  f"{c['per_min']:.0f}/min (sandbox start {c['sandbox_start_ms']['median']:.0f}"
                  " ms median)")
    more, summ["creations_pool"] = [], None
    if args.pool > 0:
        more, summ["creations_pool"] = with_watchdog(
            lambda: pooled_creations(db, store, home, small, args.creations, args.pool),
            timeout=60 + 15 * args.creations, what="creations with the warm pool")
    created += more
    # The floor: restoring a near-empty sandbox (a new session's first snapshot, ~1 MiB).
    floor = []
    flush(rt)
    for snap in summ["creations"]["snapshots"][:3]:
        t1 = time.perf_counter()
        rt.engine.restore(snap, name="bench-floor")
        floor.append((time.perf_counter() - t1) * 1000)
        rt.engine.remove("bench-floor", force=True)
    summ["restore_floor_ms"] = summary(floor)
    console.print(f"  engine.restore of a near-empty sandbox: {summary(floor)['median']:.0f} ms;"
                  f" its wait point {summ['creations']['snapshot_ms']['median']:.0f} ms")
    if (c := summ["creations_pool"]) is not None and "error" not in c:
        console.print(f"  session creations, pool of {args.pool}: {c['n']} in "
                      f"{c['elapsed']:.1f} s = {c['per_min']:.0f}/min ({c['pooled']} from the "
                      f"pool; sandbox start {c['sandbox_start_ms']['median']:.0f} ms median)")
    tp = []
    for n in args.workers:
        t = throughput(rt, db, store, home, created, n, args.duration)
        tp.append(t)
        console.print(f"  suspend+resume, {t['sessions']} sessions, {n} worker process(es): "
                      f"{t['turns']} turns in {t['elapsed']:.1f} s = {t['per_min']:.0f}/min")
    summ["throughput"] = tp
    ids = runsc_ids(home)
    summ["runsc_containers_after"] = len(ids)
    summ["sessions_waiting_after"] = sum(1 for r in rt.sessions() if r.state == "waiting")
    return {"summary": summ, "rounds": rounds, "db": db.split("@")[-1], "store": store}


# ------------------------------------------------------------------ report


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    sq = res["sqlite+file"]["summary"]
    out = [
        ("resume median, SQLite+file", "<= 200 ms (goal 100 ms)",
         f"{sq['resume_ms']['median']:.0f} ms", sq["resume_ms"]["median"] <= 200),
    ]  # fmt: skip
    if sq.get("resume_standby_ms"):
        v = sq["resume_standby_ms"]["median"]
        out.append(("resume median into a standby sandbox, SQLite+file",
                     "<= 200 ms (goal 100 ms)", f"{v:.0f} ms", v <= 200))  # fmt: skip
    out += [
        ("wait-point cost median (checkpoint + store), SQLite+file", "<= 150 ms",
         f"{sq['snapshot_ms']['median']:.0f} ms", sq["snapshot_ms"]["median"] <= 150),
    ]  # fmt: skip
    for kind in BACKENDS:
        if kind in res:
            s = res[kind]["summary"]
            out.append((f"idle memory per waiting session, {kind}", "0 bytes",
                        "0 bytes (no runsc container, no process)" if s["idle_ok"]
                        else "a sandbox was still there", s["idle_ok"]))  # fmt: skip
    return out


def write_markdown(data: dict[str, Any], path: Path) -> None:
    m, res = data["machine"], data["backends"]
    kinds = [k for k in BACKENDS if k in res]
    S = {k: res[k]["summary"] for k in kinds}

    def cells(get: Callable[[dict[str, Any]], str]) -> str:
        return " | ".join(get(S[k]) for k in kinds)

    def mp(d: dict[str, float]) -> str:
        return f"{d['median']:.0f} / {d['p95']:.0f} ms"

    lines = [
        "# Runtime benchmark (durable sessions)",
        "",
        f"{m['date']}, kernel {m['kernel']}, {m['cpu']}, {m['nproc']} CPUs, {m['memory']}, "
        f"runsc {m['runsc_dpkg']}, Python {m['python']}, PostgreSQL {data['postgres']}; load "
        f"average at start {m['loadavg_start'][0]:.1f}, at end {data['loadavg_end'][0]:.1f} "
        "(shared machine: other jobs run on the same 2 cores, so every figure here is "
        "pessimistic and noisy). Produced by "
        f"`{' '.join(['benchmarks/bench_runtime.py', *data['argv']])}` in "
        f"{data['total_seconds']:.0f} s: {data['rounds']} resume rounds per backend (plus "
        f"{data['cold_rounds']} without the hot copy), {data['creations']} session creations, "
        f"{data['duration']:.0f} s per throughput phase. Scripted model (no LLM latency).",
        "",
        "## Targets (issue 5)",
        "",
        "| target | wanted | got | |",
        "|---|---|---|---|",
    ]
    for what, want, got, ok in targets(res):
        lines.append(f"| {what} | {want} | {got} | {'met' if ok else '**missed**'} |")
    lines += [
        "",
        "## Side by side (median / p95)",
        "",
        "| metric | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
        "| resume latency (send -> first tool call running in the restored sandbox) | "
        + cells(lambda s: mp(s["resume_ms"])) + " |",
        "| resume latency into a standby sandbox (set up beforehand, as a worker keeps one) | "
        + cells(lambda s: mp(s["resume_standby_ms"]) if s.get("resume_standby_ms") else "-")
        + " |",
        "| ... of which the restore into the standby (`restored` event) | "
        + cells(lambda s: mp(s["restore_standby_ms"]) if s.get("restore_standby_ms") else "-")
        + " |",
        "| resume latency from the store, older hot copies of the session here (what a "
        "machine that ran or followed it before has) | "
        + cells(lambda s: mp(s["resume_cold_ms"]) if s["resume_cold_ms"] else "-") + " |",
        "| ... ratio to the resume from the hot copy (issue 15: <= 1.5x) | "
        + cells(lambda s: f"{s['resume_cold_ms']['median'] / s['resume_ms']['median']:.2f}x"
                if s["resume_cold_ms"] else "-") + " |",
        "| resume latency from the store, nothing of the session here (no hot copy, no chunk "
        "cache) | "
        + cells(lambda s: mp(s["resume_bare_ms"]) if s.get("resume_bare_ms") else "-") + " |",
        "| ... ratio to the resume from the hot copy | "
        + cells(lambda s: f"{s['resume_bare_ms']['median'] / s['resume_ms']['median']:.2f}x"
                if s.get("resume_bare_ms") else "-") + " |",
        "| wait point: checkpoint + store (`snapshot` event) | "
        + cells(lambda s: mp(s["snapshot_ms"])) + " |",
        "| ... of which the checkpoint storage's put (hot copy; the upload is queued) | "
        + cells(lambda s: mp(s["store_put_ms"])) + " |",
        "| background upload into the snapshot store, after the wait point | "
        + cells(lambda s: mp(s["upload_ms"])) + " |",
        "| wait point total: turn end -> `waiting` | "
        + cells(lambda s: mp(s["wait_point_total_ms"])) + " |",
        "| snapshot size (logical) / new bytes stored per wait point | "
        + cells(lambda s: f"{s['stored_logical_bytes']['median'] / 2**20:.1f} MiB / "
                f"{s['snapshot_new_bytes']['median'] / 2**20:.2f} MiB") + " |",
        "| RSS of the sandbox's host processes while running | "
        + cells(lambda s: f"{s['running_rss_kib']['median'] / 1024:.0f} MiB") + " |",
        "| idle memory per waiting session | "
        + cells(lambda s: "0 bytes" if s["idle_ok"] else "NOT ZERO") + " |",
        "| stored bytes per waiting session (its latest snapshot, compressed + deduplicated "
        "in the store) | "
        + cells(lambda s: f"{s['stored_bytes']['median'] / 2**20:.1f} MiB") + " |",
        "| dev sandbox built by turn 1 (fresh sandbox, 5 tool calls, wait point) | "
        + cells(lambda s: f"{s['dev_create_s']:.1f} s") + " |",
        "| session creations per minute (create + first turn to its wait point), no pool | "
        + cells(lambda s: f"{s['creations']['per_min']:.0f}/min "
                f"({s['creations']['per_min'] / data['machine']['nproc']:.0f} per core; "
                f"sandbox start {s['creations']['sandbox_start_ms']['median']:.0f} ms)") + " |",
        f"| ... with a warm pool of {data['pool']} pre-started sandboxes | "
        + cells(lambda s: f"{s['creations_pool']['per_min']:.0f}/min "
                f"({s['creations_pool']['per_min'] / data['machine']['nproc']:.0f} per core; "
                f"{s['creations_pool']['pooled']}/{s['creations_pool']['n']} from the pool, "
                f"sandbox start {s['creations_pool']['sandbox_start_ms']['median']:.0f} ms)"
                if s.get("creations_pool") and "error" not in s["creations_pool"]
                else (s.get("creations_pool") or {}).get("error", "not measured (--pool 0)"))
        + " |",
    ]
    for i, n in enumerate(data["workers"]):
        lines.append(
            f"| sessions suspended + resumed per minute, {n} worker process(es) | "
            + cells(lambda s, i=i: f"{s['throughput'][i]['per_min']:.0f}/min "
                    f"({s['throughput'][i]['sessions']} sessions)") + " |")  # fmt: skip
    lines += ["", "## Where resume time goes (medians, ms)", "",
              "| step | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for key, label in BREAKDOWN:
        lines.append(f"| {label} | " + cells(
            lambda s, key=key: f"{s['breakdown'][key]['median']:.1f} "
            f"({percent(s['breakdown'][key]['median'], s['resume_ms']['median'])})") + " |")
    lines.append("| **total: resume latency (median)** | "
                 + cells(lambda s: f"**{s['resume_ms']['median']:.0f}**") + " |")
    lines.append("| (after it: the first tool call itself, an HTTP fetch from the restored "
                 "server + git status + a process check) | "
                 + cells(lambda s: f"{s['first_tool_ms']['median']:.0f}") + " |")
    lines += ["", "Inside the engine's restore (medians, ms; warm = raw hot copy present, cold "
              "= read from the store with older hot copies here, bare = read from the store "
              "with nothing here):", "", "| step | " + " | ".join(
                  f"{k} warm | {k} cold | {k} bare" for k in kinds) + " |",
              "|---|" + "---|---|---|" * len(kinds)]  # fmt: skip
    for key, label in RESTORE_STEPS:
        row = []
        for k in kinds:
            row.append(f"{S[k]['restore_steps'][key]['median']:.1f}")
            for which in ("restore_steps_cold", "restore_steps_bare"):
                steps = S[k].get(which)
                row.append(f"{steps[key]['median']:.1f}" if steps else "-")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines += ["", *data.get("analysis", []), "",
              "![resume latency per round](runtime.png)", ""]
    path.write_text("\n".join(lines))


def analysis(res: dict[str, Any]) -> list[str]:
    s = res["sqlite+file"]["summary"]
    b = {k: s["breakdown"][k]["median"] for k, _ in BREAKDOWN}
    rs = {k: s["restore_steps"][k]["median"] for k, _ in RESTORE_STEPS}
    total = s["resume_ms"]["median"]
    floor = s["restore_floor_ms"]["median"]
    around = b["claim"] + b["inbox"] + b["model"] + b["tool_start"] + b["restore_bookkeeping"]
    return [
        "## Reading it",
        "",
        f"On SQLite+file the median resume is {total:.0f} ms, and "
        f"{percent(b['restore_engine'], total)} of it is the engine's restore "
        f"({b['restore_engine']:.0f} ms). Inside it, runsc restoring the dev sandbox takes "
        f"{rs['boot']:.0f} ms, checking the raw hot copy of the checkpoint "
        f"({s['stored_logical_bytes']['median'] / 2**20:.0f} MiB, size and checksum of "
        f"every file) {rs['open_dir']:.0f} ms and the checkpoint metadata "
        f"{rs['checkpoint_info']:.1f} ms. Everything torpor does around it (lease claim, "
        f"fencing epoch and state marker {b['claim']:.1f} ms, inbox {b['inbox']:.1f} ms, "
        f"model-call bookkeeping {b['model']:.1f} ms, tool-call intent "
        f"{b['tool_start']:.1f} ms, restore marker {b['restore_bookkeeping']:.1f} ms) adds "
        f"{around:.0f} ms in all.",
        "",
        f"Restoring a near-empty sandbox (a new session's first snapshot) takes {floor:.0f} ms "
        f"on the same engine: that is runsc's fixed cost of bringing a sandbox back (new "
        f"sandbox and gofer processes, kernel state load), and the dev sandbox's "
        f"{s['running_rss_kib']['median'] / 1024:.0f} MiB of processes add "
        f"{max(0.0, b['restore_engine'] - floor):.0f} ms to it. Trimming torpor's own steps "
        f"(~{around + rs['open_dir'] + rs['checkpoint_info']:.0f} ms together) cannot reach "
        "100 ms; most of runsc's fixed cost is setting up the sandbox (processes, chroot, "
        "seccomp), which a standby does ahead of time: the rounds restored into a standby "
        + (f"resume in {s['resume_standby_ms']['median']:.0f} ms (restore "
           f"{s['restore_standby_ms']['median']:.0f} ms), "
           f"{b['restore_engine'] - s['restore_standby_ms']['median']:.0f} ms less. "
           if s.get("resume_standby_ms") else "(not measured in this run). ")
        + "What remains is runsc loading the checkpoint (kernel state and memory, which grows "
        "with the sandbox) and the first command's start in it.",
        "",
        "On PostgreSQL+S3 every log append and lease update is a network round trip to the "
        "server, and the checkpoint metadata is read from the S3 API; without the raw hot "
        "copy the restore also fetches and decompresses the chunks, which is what the "
        "local hot copy saves on every normal resume.",
    ]


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for kind, style in zip(BACKENDS, ("o-", "s-"), strict=True):
        if kind not in data["backends"]:
            continue
        rows = data["backends"][kind]["rounds"]
        ax.plot([r["round"] for r in rows], [r["resume_ms"] for r in rows], style, label=kind)
        cold = [r for r in rows if r["cold"]]
        if cold:
            ax.plot([r["round"] for r in cold], [r["resume_ms"] for r in cold], "x", ms=10,
                    color="black")  # fmt: skip
    ax.axhline(200, color="red", ls="--", lw=1, label="target 200 ms")
    ax.axhline(100, color="gray", ls=":", lw=1, label="goal 100 ms")
    ax.set_xlabel("round (x: raw hot copy removed, restore from the store)")
    ax.set_ylabel("resume latency (ms)")
    ax.set_title("send -> first tool call in the restored dev sandbox")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="resume rounds, every other one "
                    "into a standby (default 20)")  # fmt: skip
    ap.add_argument("--no-standby", dest="standby", action="store_false",
                    help="no rounds into a standby")  # fmt: skip
    ap.add_argument("--cold-rounds", type=int, default=6,
                    help="extra rounds without the raw hot copy, half with older copies "
                    "here, half with nothing (default 6)")  # fmt: skip
    ap.add_argument("--creations", type=int, default=4, help="sessions created (default 4)")
    ap.add_argument("--pool", type=int, default=2, help="warm pool size (default 2; 0: skip)")
    ap.add_argument("--duration", type=float, default=30.0,
                    help="seconds per throughput phase (default 30)")  # fmt: skip
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--quick", action="store_true", help="3 rounds, 2 sessions, 8 s phases")
    ap.add_argument("--results", type=Path, default=RESULTS, help="output directory")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.cold_rounds = min(args.rounds, 3), min(args.cold_rounds, 2)
        args.creations, args.duration = min(args.creations, 2), min(args.duration, 8.0)
    args.workers = [1, 2]
    os.environ.setdefault("TORPOR_IMAGES", "/var/lib/torpor/images")  # not under the temp homes
    ImageStore(Path(os.environ["TORPOR_IMAGES"])).get("base")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = Path(tempfile.mkdtemp(prefix="torpor-bench-rt-"))
    started = time.monotonic()
    data: dict[str, Any] = {
        "argv": sys.argv[1:], "machine": machine_info(), "rounds": args.rounds,
        "cold_rounds": args.cold_rounds, "creations": args.creations,
        "duration": args.duration, "workers": args.workers, "backends": {},
        "pool": args.pool,
    }  # fmt: skip
    pg = subprocess.run(["sh", "-c", "ls /usr/lib/postgresql | sort -n | tail -1"],
                        capture_output=True, text=True).stdout.strip()  # fmt: skip
    data["postgres"] = pg or "?"
    try:
        console.print(f"[bold]torpor runtime benchmark[/] root={root} "
                      f"load={os.getloadavg()[0]:.2f}")  # fmt: skip
        for kind in args.backends.split(","):
            data["backends"][kind] = run_backend(kind, root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    data["total_seconds"] = time.monotonic() - started
    data["loadavg_end"] = os.getloadavg()
    if "sqlite+file" in data["backends"]:
        data["analysis"] = analysis(data["backends"])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "runtime.json").write_text(json.dumps(data, indent=1, default=str))
    if "sqlite+file" in data["backends"]:
        write_markdown(data, args.results / "runtime.md")
        for what, want, got, ok in targets(data["backends"]):
            console.print(f"  {'met   ' if ok else 'MISSED'} {what}: {got} (target {want})")
    plot(data, args.results / "runtime.png")
    console.print(f"done in {data['total_seconds']:.0f} s -> {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
