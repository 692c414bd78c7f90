"""Reads take no write lock: with another process's writer holding SQLite's write lock
(BEGIN IMMEDIATE), the runtime's and the log's reads return at once and see the last
committed state, while writes wait for the lock as they must."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from torpor.api.tokens import TokenStore
from torpor.context import ContextLog, Entry, open_log
from torpor.runtime.db import RuntimeDB, SessionRow

QUICK = 2.0  # a read that waited for the lock would wait the busy timeout (30 s)


def in_thread(fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
    """(finished within timeout, its result or exception)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return (not t.is_alive(), out[0] if out else None)


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[tuple[str, RuntimeDB, ContextLog]]:
    url = f"sqlite:///{tmp_path / 'torpor.db'}"
    rdb, log = RuntimeDB(url), open_log(url)
    rdb.create(SessionRow(id="s1", state="waiting", image="base", model="m", system=None,
                          tools=None, policy={}, snapshot=None, snapshot_seq=None))
    log.append("s1", [Entry.message("user", "committed")], epoch=0)
    yield url, rdb, log
    rdb.close()
    log.close()


@pytest.fixture
def writer(opened: tuple[str, RuntimeDB, ContextLog]) -> Iterator[sqlite3.Connection]:
    """Another connection holding the write lock, with changes it has not committed."""
    con = sqlite3.connect(opened[0].removeprefix("sqlite:///"), isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    con.execute("UPDATE torpor_sessions SET state = 'running' WHERE id = 's1'")
    con.execute("UPDATE context_sessions SET head_seq = 99 WHERE id = 's1'")
    yield con
    con.execute("ROLLBACK")
    con.close()


def test_reads_do_not_wait_for_a_writer(opened, writer):
    _url, rdb, log = opened
    tokens = TokenStore(rdb)
    reads = {
        "RuntimeDB.get": lambda: rdb.get("s1").state,
        "RuntimeDB.list": lambda: [r.state for r in rdb.list()],
        "RuntimeDB.unread": lambda: rdb.unread("s1"),
        "ContextLog.read": lambda: [e.content for e in log.read("s1")],
        "ContextLog.session": lambda: log.session("s1").head_seq,
        "TokenStore.any": tokens.any,
    }
    want = {"RuntimeDB.get": "waiting", "RuntimeDB.list": ["waiting"], "RuntimeDB.unread": [],
            "ContextLog.read": ["committed"], "ContextLog.session": 1, "TokenStore.any": False}
    for name, read in reads.items():
        t0 = time.monotonic()
        done, got = in_thread(read, QUICK)
        assert done, f"{name} waited for the writer's lock"
        assert got == want[name], (name, got)  # the last committed state
        assert time.monotonic() - t0 < QUICK


def test_writes_wait_for_the_writer(opened, writer):
    _url, rdb, log = opened
    done, _ = in_thread(lambda: rdb.update("s1", state="closed"), 0.5)
    assert not done  # queued behind the lock ...
    writer.execute("ROLLBACK")
    writer.execute("BEGIN")  # (the fixture's ROLLBACK needs a transaction to end)
    deadline = time.monotonic() + 10
    while rdb.get("s1").state != "closed":  # ... and done once it is released
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert log.append("s1", [Entry.message("user", "after")], epoch=0) == [2]
