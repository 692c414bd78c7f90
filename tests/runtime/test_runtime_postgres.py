"""The runtime on PostgreSQL + S3: what many workers on many machines rely on.

A real throwaway PostgreSQL cluster (initdb + pg_ctl) holds the log, the sessions, the
leases and the queue; moto's standalone S3 server on loopback holds the snapshots; workers
are separate `torpor worker` processes on a real gVisor engine sharing one TORPOR_HOME.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from torpor.context.pgtemp import TempCluster, server_bindir
from torpor.runtime.checkpoints import SnapshotCheckpointStorage
from torpor.runtime.core import Runtime, wait_for
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore
from torpor.snapshots import open_store

pytestmark = pytest.mark.skipif(server_bindir() is None, reason="no PostgreSQL server binaries")

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}


def shell(command: str, **kw: Any) -> dict[str, Any]:
    return {"name": "shell", "arguments": {"command": command, **kw}}


def markers(entries: list[Any], name: str) -> list[dict[str, Any]]:
    return [e.content for e in entries if e.kind == "marker" and isinstance(e.content, dict)
            and e.content.get("marker") == name]  # fmt: skip


def kinds(entries: list[Any], kind: str, role: str | None = None) -> list[Any]:
    return [e for e in entries if e.kind == kind and (role is None or e.role == role)]


@pytest.fixture(scope="session")
def s3(s3_endpoint: str) -> Iterator[str]:
    """The shared S3 server (tests/conftest.py); AWS_* set for this process and children."""
    import boto3

    url = s3_endpoint
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": url}.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(k, raising=False)
        boto3.client("s3").create_bucket(Bucket="torpor-rt")
        yield url


@pytest.fixture()
def pgrt(pg: TempCluster, s3: str, rt_home: Path) -> Iterator[Runtime]:
    """A Runtime on a fresh PostgreSQL database and a fresh S3 prefix."""
    db = pg.url(pg.create_db())
    store_url = f"s3://torpor-rt/{uuid.uuid4().hex[:8]}"
    engine = GVisorEngine(rt_home, images=ImageStore(),
                          checkpoints=SnapshotCheckpointStorage(open_store(store_url), rt_home))
    ImageStore().build_base()
    rt = Runtime(db=db, store=store_url, home=rt_home, engine=engine)
    yield rt
    for row in rt.sessions():
        with contextlib.suppress(Exception):
            engine.remove(f"s-{row.id}", force=True)
    rt.close()


@pytest.fixture()
def script(tmp_path: Path):  # type: ignore[no-untyped-def]
    import json

    def make(turns: list[dict[str, Any]], name: str = "turns.jsonl") -> str:
        path = tmp_path / name
        path.write_text("".join(json.dumps(t) + "\n" for t in turns))
        return f"script:{path}"

    return make


class Workers:
    """`torpor worker` processes on the runtime's database and store."""

    def __init__(self, rt: Runtime, logs: Path) -> None:
        self.rt, self.logs = rt, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, TORPOR_HOME=str(self.rt.home), TORPOR_IMAGES=str(ImageStore().root))
        log = self.logs / f"worker-{len(self.procs)}.log"
        with log.open("wb") as err:  # a file, not a pipe nobody reads (it would fill up)
            p = subprocess.Popen(
                [sys.executable, "-m", "torpor.cli.main", "worker", "--db", self.rt.db_url,
                 "--store", str(self.rt.store_url), *args],
                env=env, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        p.log = log  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def output(self) -> str:
        return "\n".join(f"--- {p.log.name}:\n{p.log.read_text()[-3000:]}"  # type: ignore[attr-defined]
                         for p in self.procs)  # fmt: skip

    def alive(self) -> None:
        for p in self.procs:
            if p.returncode is None and p.poll() is not None and p.returncode not in (0, -9):
                raise AssertionError(self.output())

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture()
def workers(pgrt: Runtime, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(pgrt, tmp_path)
    yield w
    w.stop()


def settle(rt: Runtime, workers: Workers, sids: list[str], timeout: float = 90) -> None:
    """Until every session waits with nothing unread."""
    deadline = time.time() + timeout
    for sid in sids:
        while rt.db.unread(sid):
            workers.alive()
            assert time.time() < deadline, f"{sid} still unread\n{workers.output()}"
            time.sleep(0.1)
        wait_for(rt, sid, timeout=max(1.0, deadline - time.time()))


def test_turn_wait_point_and_resume(pgrt: Runtime, script):
    model = script([
        {"text": "writing", "tool_calls": [shell("echo kept > /root/f; echo $((6*7))")]},
        {"text": "written"},
        {"text": "reading", "tool_calls": [shell("cat /root/f")]},
        {"text": "read"},
    ])  # fmt: skip
    s = pgrt.create_session(model=model)
    t1 = s.send("write")
    assert t1.state == "waiting" and t1.snapshot and t1.text == "written"
    assert s.info().state == "waiting" and s.info().lease_owner is None
    assert all(i.name != f"s-{s.id}" for i in pgrt.engine.list())  # nothing left running
    t2 = s.send("read")
    assert t2.restore_ms is not None and t2.text == "read"
    entries = s.log()
    assert "kept" in str(kinds(entries, "tool_result")[-1].content)
    assert len(markers(entries, "snapshot_taken")) == 2
    assert len(markers(entries, "session_restored")) == 1
    assert pgrt.log.verify(s.id)
    # The snapshots are in the S3 bucket, under this runtime's prefix.
    import boto3

    prefix = str(pgrt.store_url).split("/", 3)[3]
    listed = boto3.client("s3").list_objects_v2(Bucket="torpor-rt", Prefix=prefix)
    assert listed.get("KeyCount", 0) > 0


def test_two_worker_processes_drain_four_sessions(pgrt: Runtime, workers: Workers, script):
    sessions = []
    for i in range(4):
        model = script([
            {"text": f"s{i} first", "tool_calls": [shell(f"echo {i} >> /root/n; sleep 0.3")]},
            {"text": f"answer {i}.1"},
            {"text": f"s{i} second", "tool_calls": [shell(f"echo {i} >> /root/n; cat /root/n")]},
            {"text": f"answer {i}.2"},
        ], name=f"s{i}.jsonl")  # fmt: skip
        sessions.append(pgrt.create_session(model=model))
    sids = [s.id for s in sessions]
    for s in sessions:
        s.post("first")
    workers.start("--lease-ttl", "5")
    workers.start("--lease-ttl", "5")
    settle(pgrt, workers, sids)
    for s in sessions:
        s.post("second")  # resumed from a snapshot, possibly by the other process
    settle(pgrt, workers, sids)
    owners = set()
    for i, s in enumerate(sessions):
        entries = s.log()
        answers = [e.content for e in kinds(entries, "message", "assistant")]
        assert answers == [f"s{i} first", f"answer {i}.1", f"s{i} second", f"answer {i}.2"]
        assert [e.content for e in kinds(entries, "message", "user")] == ["first", "second"]
        calls = kinds(entries, "tool_call")
        res = kinds(entries, "tool_result")
        assert len(calls) == 2 and sorted(r.tool_call_id for r in res) == sorted(
            c.tool_call_id for c in calls)
        out = [ln.strip() for ln in str(res[-1].content).splitlines() if ln.strip().isdigit()]
        assert out == [str(i), str(i)], res[-1].content  # its own sandbox, kept across turns
        assert not markers(entries, "recovery_note")
        assert pgrt.log.verify(s.id)
        owners |= {m["worker"] for m in markers(entries, "state") if m.get("worker")}
    assert len(owners) == 2, owners  # both processes did work


def test_two_workers_racing_for_one_session(pgrt: Runtime, workers: Workers, script):
    model = script([{"text": "working", "tool_calls": [shell("sleep 1; echo done")]},
                    {"text": "finished"}])  # fmt: skip
    s = pgrt.create_session(model=model)
    # The lease itself: eight concurrent claims, on eight connections, one winner.
    barrier = threading.Barrier(8)
    won: list[Any] = []

    def claim(n: int) -> None:
        barrier.wait()
        won.append(pgrt.db.claim(s.id, f"racer-{n}", 0.5))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([r for r in won if r is not None]) == 1
    deadline = time.time() + 10
    while (pgrt.db.get(s.id).lease_until or 0) > time.time():  # until that lease expires
        assert time.time() < deadline, "the winner's 0.5 s lease never expired"
        time.sleep(0.05)
    # Two worker processes, both polling before the message comes, race for it: each
    # sees it queued, one claims it. (Both are alive throughout, so they did overlap.)
    a, b = workers.start("--lease-ttl", "5"), workers.start("--lease-ttl", "5")
    deadline = time.time() + 60
    while not all("waiting for work" in p.log.read_text() for p in (a, b)):  # type: ignore[attr-defined]
        workers.alive()
        assert time.time() < deadline, workers.output()
        time.sleep(0.05)
    s.post("go")
    wait_for(pgrt, s.id, timeout=90)
    assert a.poll() is None and b.poll() is None, workers.output()
    entries = s.log()
    assert len(kinds(entries, "tool_call")) == 1
    assert len(kinds(entries, "tool_result")) == 1
    assert [e.content for e in kinds(entries, "message", "user")] == ["go"]
    assert [e.content for e in kinds(entries, "message", "assistant")] == ["working", "finished"]
    assert len(markers(entries, "snapshot_taken")) == 1
    assert pgrt.log.verify(s.id)


def test_kill_9_mid_tool_call_is_recovered_by_another_worker(
    pgrt: Runtime, workers: Workers, script
):
    model = script([
        {"text": "setup", "tool_calls": [shell("echo kept > /root/state")]}, {"text": "ok"},
        {"text": "long", "tool_calls": [shell("sleep 60; echo late", timeout=120)]},
        {"text": "recovered", "tool_calls": [shell("cat /root/state")]}, {"text": "done"},
    ])  # fmt: skip
    s = pgrt.create_session(model=model)
    assert s.send("setup").state == "waiting"
    s.post("run the long thing")
    victim = workers.start("--lease-ttl", "2")
    deadline = time.time() + 60
    while not any(e.kind == "tool_call" and "sleep 60" in (e.arguments or "") for e in s.log()):
        assert victim.poll() is None, workers.output()
        assert time.time() < deadline, "the long tool call never started"
        time.sleep(0.1)
    time.sleep(0.5)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    acknowledged = [(e.seq, e.hash) for e in s.log()]
    workers.start("--lease-ttl", "2")
    deadline = time.time() + 90
    while not markers(s.log(), "recovery_note") or s.info().state != "waiting":
        workers.alive()
        assert time.time() < deadline, f"no worker recovered the session\n{workers.output()}"
        time.sleep(0.2)
    wait_for(pgrt, s.id)
    entries = s.log()
    assert [(e.seq, e.hash) for e in entries][: len(acknowledged)] == acknowledged  # none lost
    note = markers(entries, "recovery_note")[-1]
    assert note["interrupted"] and s.info().snapshot_seq is not None
    interrupted = [e for e in entries
                   if e.kind == "tool_result" and (e.meta or {}).get("interrupted")]  # fmt: skip
    assert len(interrupted) == 1
    assert "kept" in str(kinds(entries, "tool_result")[-1].content)
    assert kinds(entries, "message", "assistant")[-1].content == "done"
    assert pgrt.log.verify(s.id)
