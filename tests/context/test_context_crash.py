"""Durability under real crashes: a writer process killed with SIGKILL mid-stream (SQLite and
PostgreSQL), and a PostgreSQL server stopped with `pg_ctl -m immediate` under a writer."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from datetime import datetime

import psycopg
import pytest

from torpor.context import Entry, StaleEpoch, open_log
from torpor.context.pgtemp import TempCluster

from .conftest import start_writer


class Acks:
    """Collects the writer's output lines on a thread: acknowledged (seq, i) pairs."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.acks: list[tuple[int, int]] = []
        self.retries = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            with self.lock:
                if parts[0] == "ack":
                    self.acks.append((int(parts[1]), int(parts[2])))
                elif parts[0] == "retry":
                    self.retries += 1

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.acks) >= n:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"writer acknowledged {len(self.acks)} < {n} appends; {err}")

    def kill9(self) -> list[tuple[int, int]]:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.thread.join(timeout=10)  # every line printed before the kill is an ack
        return list(self.acks)


def _check_after_crash(url: str, session: str, acks: list[tuple[int, int]]) -> None:
    assert acks, "the writer acknowledged nothing"
    with open_log(url) as log:
        entries = {e.seq: e for e in log.read(session)}
        for seq, i in acks:
            assert seq in entries, f"acknowledged seq {seq} is gone"
            assert entries[seq].content == f"n{i}" and entries[seq].meta == {"i": i}
        # no entry written twice, none skipped: content i sits at seq i + 1
        assert [e.meta["i"] for e in entries.values()] == list(range(len(entries)))
        res = log.verify(session)
        assert res.ok, res
        head = log.head_seq(session)
        # a new writer takes over: fences out the dead one, continues the sequence
        epoch = log.acquire(session)
        assert log.append(session, [Entry.message("user", "after crash")], epoch=epoch) == [
            head + 1]
        with pytest.raises(StaleEpoch):
            log.append(session, [Entry.message("user", "zombie")], epoch=epoch - 1)
        assert log.verify(session).ok


def _postmaster_start(pg: TempCluster) -> datetime:
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0]


def _crash_writer(url: str, session: str, acks_wanted: int) -> list[tuple[int, int]]:
    proc = start_writer(url, session)
    acks = Acks(proc)
    try:
        acks.wait_for(acks_wanted)
    finally:
        got = acks.kill9()
    return got


def test_sqlite_writer_killed_mid_stream(tmp_path):
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    got = _crash_writer(url, "crashy", 300)
    _check_after_crash(url, "crashy", got)


@pytest.mark.postgres
def test_postgres_client_killed_mid_stream(pg_url, tmp_path):
    url = f"{pg_url}?blobs=file://{tmp_path / 'blobs'}"
    got = _crash_writer(url, "crashy", 300)
    _check_after_crash(url, "crashy", got)


@pytest.mark.postgres
def test_postgres_server_immediate_restart_mid_stream(pg: TempCluster, pg_url, tmp_path):
    url = f"{pg_url}?blobs=file://{tmp_path / 'blobs'}"
    proc = start_writer(url, "restarty")
    acks = Acks(proc)
    try:
        acks.wait_for(150)
        started = _postmaster_start(pg)
        pg.pg_ctl("-m", "immediate", "stop")  # the server dies without a clean shutdown
        time.sleep(0.3)
        pg.start()  # crash recovery replays the WAL
        assert _postmaster_start(pg) > started  # a new server, after crash recovery
        before = len(acks.acks)
        acks.wait_for(before + 150)
    finally:
        got = acks.kill9()
    # the writer either got an error and retried with the same idempotency key, or the pool
    # held its call until the server was back; either way nothing is lost or doubled
    _check_after_crash(url, "restarty", got)
