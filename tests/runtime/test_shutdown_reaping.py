"""No leaked sandboxes: real `torpor serve` and `torpor worker` processes with a standby
(and, for the worker, a pool) and a session mid-turn, stopped with a real SIGTERM (they
exit 0 and leave no sandbox; the abandoned turn is recovered by the next process) and
killed with a real SIGKILL (their sandboxes stay, marked as orphans by `ps -a` and
`doctor`, and the next process removes them at its start)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import remove_home
from torpor.runtime.checkpoints import SnapshotCheckpointStorage
from torpor.runtime.core import Runtime
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore
from torpor.snapshots import open_store

TORPOR = [sys.executable, "-m", "torpor.cli.main"]


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """A home of its own: every sandbox in it is one these tests made."""
    h = Path(tempfile.mkdtemp(prefix="torpor-reap-home-"))
    yield h
    remove_home(h)


@pytest.fixture(scope="module")
def engine(home: Path) -> GVisorEngine:
    store = open_store(f"file://{home / 'snapshots'}")
    return GVisorEngine(home, images=ImageStore(),
                        checkpoints=SnapshotCheckpointStorage(store, home))  # fmt: skip


@pytest.fixture()
def rt(home: Path, engine: GVisorEngine, tmp_path: Path) -> Iterator[Runtime]:
    r = Runtime(db=f"sqlite:///{tmp_path / 'torpor.db'}", store=f"file://{home / 'snapshots'}",
                home=home, engine=engine)  # fmt: skip
    yield r
    r.close()


def shell(command: str) -> dict[str, Any]:
    return {"name": "shell", "arguments": {"command": command}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """One `torpor serve` or `torpor worker` process on the runtime's home and database."""

    def __init__(self, rt: Runtime, kind: str, log: Path, grace: float = 2) -> None:
        self.rt, self.kind, self.log = rt, kind, log
        env = dict(os.environ, TORPOR_HOME=str(rt.home), TORPOR_LOG=rt.db_url,
                   TORPOR_SNAPSHOTS=str(rt.store_url), TORPOR_IMAGES=str(ImageStore().root))
        args = (["serve", "--port", str(free_port()), "--workers", "1"] if kind == "serve"
                else ["worker", "--pool", "1", "--lease-ttl", "15"])  # fmt: skip
        with log.open("ab") as err:  # a file, not a pipe nobody reads
            self.p = subprocess.Popen([*TORPOR, *args, "--standby", "1", "--grace", str(grace)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=err)

    def output(self) -> str:
        return self.log.read_text()[-4000:]

    def signal(self, sig: int) -> int:
        self.p.send_signal(sig)
        try:
            return self.p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError(f"{self.kind} did not exit on {sig}:\n{self.output()}") from None

    def alive(self) -> None:
        assert self.p.poll() is None, f"{self.kind} exited {self.p.returncode}:\n{self.output()}"


def wait(what: str, cond: Callable[[], Any], proc: Proc, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        proc.alive()
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{proc.output()}"
        time.sleep(0.05)
    return got


def cli_json(rt: Runtime, *args: str) -> Any:
    env = dict(os.environ, TORPOR_HOME=str(rt.home), TORPOR_IMAGES=str(ImageStore().root),
               TORPOR_SNAPSHOTS=str(rt.store_url))  # fmt: skip
    r = subprocess.run([*TORPOR, *args, "--format", "json"], env=env, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def mid_turn(rt: Runtime, sid: str, proc: Proc) -> None:
    """Wait until the session's turn runs its `sleep`, and the process keeps a standby
    (and, a worker, a pooled sandbox) besides the session's sandbox."""
    s = rt.get_session(sid)
    wait("the tool call", lambda: any(e.kind == "tool_call" for e in s.log()), proc)
    kinds = {"session", "standby"} | ({"pool"} if proc.kind == "worker" else set())
    wait(f"sandboxes {kinds}", lambda: kinds <= {
        (i.owner or {}).get("kind") for i in rt.engine.list(all=True)
        if (i.owner or {}).get("pid") == proc.p.pid}, proc)  # fmt: skip


def long_turn(rt: Runtime, tmp_path: Path, seconds: int = 30) -> str:
    """A session whose turn runs a `seconds` command, then answers; posted to."""
    path = tmp_path / f"turns-{len(rt.sessions())}.jsonl"
    turns = [{"text": "one", "tool_calls": [shell(f"sleep {seconds}")]}, {"text": "answer"}]
    path.write_text("".join(json.dumps(t) + "\n" for t in turns))
    sid = rt.create_session(model=f"script:{path}").id
    rt.get_session(sid).post("go")
    return sid


@pytest.mark.parametrize("kind", ["worker", "serve"])
def test_sigterm_leaves_nothing_and_sigkill_is_reaped(kind: str, rt: Runtime, tmp_path: Path):
    log = tmp_path / f"{kind}.log"
    sid = long_turn(rt, tmp_path)

    # SIGTERM mid-turn: it exits 0 within the grace, and nothing of the home runs.
    proc = Proc(rt, kind, log)
    mid_turn(rt, sid, proc)
    t0 = time.monotonic()
    assert proc.signal(signal.SIGTERM) == 0, proc.output()
    stopped_in = time.monotonic() - t0
    assert rt.engine.list(all=True) == [], proc.output()
    assert stopped_in < 15, f"took {stopped_in:.1f} s to stop"
    row = rt.get_session(sid).info()
    assert row.state == "running" and row.lease_owner is None  # released: recovered next
    assert f"stopped before the turn of session {sid} finished" in proc.output()

    # The next process recovers the abandoned turn at once (no lease to wait for).
    proc = Proc(rt, kind, log)
    wait("the recovery", lambda: rt.get_session(sid).info().state == "waiting", proc)
    notes = [e for e in rt.get_session(sid).log()
             if e.kind == "marker" and e.content.get("marker") == "recovery_note"]  # fmt: skip
    assert notes, proc.output()

    # SIGKILL mid-turn: its sandboxes stay, every one an orphan for `ps -a` and `doctor`.
    mid_turn(rt, long_turn(rt, tmp_path), proc)  # a fresh start: the standby is not used
    killed = proc.p.pid
    assert proc.signal(signal.SIGKILL) == -signal.SIGKILL
    rows = cli_json(rt, "ps", "-a")
    assert len(rows) >= 2 and all(r["orphan"] and r["owner"]["pid"] == killed for r in rows)
    checks = {c["name"]: c for c in cli_json(rt, "doctor")}
    assert not checks["orphans"]["ok"] and "torpor rm -f" in checks["orphans"]["detail"]
    assert all(r["name"] in checks["orphans"]["detail"] for r in rows)

    # The next process removes them at its start; stopped, it leaves nothing either.
    proc = Proc(rt, kind, log)
    ready = "serving http" if kind == "serve" else "waiting for work"  # said after reaping
    wait("the reaping", lambda: proc.output().count(ready) == 3, proc)
    assert not [i for i in rt.engine.list(all=True) if (i.owner or {}).get("pid") == killed]
    assert proc.output().count("removed orphaned sandbox") == len(rows)
    assert proc.signal(signal.SIGTERM) == 0, proc.output()
    assert rt.engine.list(all=True) == [], proc.output()


@pytest.mark.parametrize("kind", ["worker", "serve"])
def test_sigterm_lets_a_turn_finish_within_the_grace(kind: str, rt: Runtime, tmp_path: Path):
    sid = long_turn(rt, tmp_path, seconds=2)
    proc = Proc(rt, kind, tmp_path / f"{kind}.log", grace=20)
    mid_turn(rt, sid, proc)
    assert proc.signal(signal.SIGTERM) == 0, proc.output()
    row = rt.get_session(sid).info()
    assert row.state == "waiting" and row.snapshot, proc.output()  # its wait point, as usual
    assert rt.engine.list(all=True) == [], proc.output()
    assert "stopped before the turn" not in proc.output()


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler of its own for SIGTERM (/proc's SigCgt mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt")),
                 16)  # fmt: skip
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("kind", ["worker", "serve"])
def test_sigterm_during_start_up_stops_it_cleanly(kind: str, rt: Runtime, tmp_path: Path):
    """A SIGTERM that comes while the process is still starting (its runtime opened, its
    orphans reaped, its server not yet listening) is neither lost nor fatal: from the
    moment the process catches SIGTERM at all, it exits 0 and leaves nothing. Before,
    the ready line came before the server's handlers, and a SIGTERM right after it
    killed the process (-15) without closing its runtime."""
    proc = Proc(rt, kind, tmp_path / f"{kind}.log")
    wait("a SIGTERM handler", lambda: catches_sigterm(proc.p.pid), proc, timeout=30)
    assert proc.signal(signal.SIGTERM) == 0, proc.output()
    assert rt.engine.list(all=True) == [], proc.output()
    ready = "serving http" if kind == "serve" else "waiting for work"
    proc = Proc(rt, kind, tmp_path / f"{kind}-2.log")  # and right after the ready line
    wait("the ready line", lambda: ready in proc.output(), proc)
    assert proc.signal(signal.SIGTERM) == 0, proc.output()
    assert rt.engine.list(all=True) == [], proc.output()
