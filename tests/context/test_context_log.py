"""Context log behaviour on both stores: append/read/tail, fencing, idempotency, validation,
forks, verify and tampering, blobs, size warnings, migrations, concurrent writers."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest

from torpor.context import (
    BlobMissing,
    ContextError,
    Entry,
    InvalidEntry,
    SessionClosed,
    StaleEpoch,
    UnknownSession,
    open_log,
)
from torpor.db import SCHEMA_VERSION


def _turn(i: int) -> list[Entry]:
    return [Entry.message("user", f"question {i}"),
            Entry.tool_call(f"call-{i}", "shell", {"cmd": f"echo {i}"}),
            Entry.tool_result(f"call-{i}", f"{i}\n"),
            Entry.message("assistant", f"answer {i}", usage={"input": 10, "output": 3})]


def _tamper(url: str, sql: str) -> None:
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        db.execute(sql.replace("%s", "?"))
        db.commit()
        db.close()
    else:
        with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
            conn.execute(sql)


def test_append_read_tail_head(log):
    epoch = log.acquire("s1")
    assert log.append("s1", _turn(1), epoch=epoch) == [1, 2, 3, 4]
    assert log.append("s1", _turn(2), epoch=epoch) == [5, 6, 7, 8]
    entries = log.read("s1")
    assert [e.seq for e in entries] == list(range(1, 9))
    assert entries[1].kind == "tool_call" and entries[1].args() == {"cmd": "echo 1"}
    assert entries[3].usage == {"input": 10, "output": 3}
    assert entries[0].prev_hash == "" and entries[1].prev_hash == entries[0].hash
    assert all(e.epoch == epoch and e.created_at for e in entries)
    assert [e.content for e in log.read("s1", after=6, limit=2)] == ["2\n", "answer 2"]
    assert [e.seq for e in log.tail("s1", 3)] == [6, 7, 8]
    assert [e.seq for e in log.tail("s1", 100)] == list(range(1, 9))
    assert log.head_seq("s1") == 8
    with pytest.raises(UnknownSession):
        log.read("nope")


def test_stale_epoch_refused_and_nothing_written(log):
    old = log.acquire("s")
    log.append("s", _turn(1), epoch=old)
    new = log.acquire("s")
    assert new == old + 1
    with pytest.raises(StaleEpoch) as err:
        log.append("s", _turn(2), epoch=old)
    assert err.value.current == new and "another writer" in str(err.value)
    assert log.head_seq("s") == 4
    with pytest.raises(StaleEpoch):
        log.append("s", _turn(2), epoch=new + 5)
    with pytest.raises(StaleEpoch):
        log.append("fresh", _turn(1), epoch=3)
    assert log.append("s", _turn(2), epoch=new) == [5, 6, 7, 8]


def test_idempotent_retry_returns_original_seqs(log):
    e = log.acquire("s")
    first = log.append("s", _turn(1), epoch=e, idempotency_key="turn-1")
    again = log.append("s", _turn(1), epoch=e, idempotency_key="turn-1")
    assert first == again == [1, 2, 3, 4]
    assert log.head_seq("s") == 4
    assert log.append("s", _turn(2), epoch=e, idempotency_key="turn-2") == [5, 6, 7, 8]


@pytest.mark.parametrize("bad,msg", [
    (Entry(kind="thought", role="assistant", content="hm"), "unknown kind 'thought'"),
    (Entry.tool_result("never-called", "x"), "no earlier tool_call"),
    (Entry(kind="tool_call", role="assistant", tool_call_id="c", tool_name="f",
           arguments="{not json"), "arguments are not JSON"),
    (Entry.message("user", {"x": {1, 2}}), "not JSON-serialisable"),
    (Entry(kind="message", content="no role"), "needs a role"),
])
def test_invalid_entries_refused_before_writing(log, bad, msg):
    e = log.acquire("s")
    log.append("s", _turn(1), epoch=e)
    with pytest.raises(InvalidEntry, match=msg):
        log.append("s", [Entry.message("user", "fine"), bad], epoch=e)
    assert log.head_seq("s") == 4
    assert log.verify("s").ok


def test_tool_result_may_follow_call_in_same_batch_or_earlier(log):
    e = log.acquire("s")
    log.append("s", [Entry.tool_call("c1", "f", "{}")], epoch=e)
    log.append("s", [Entry.tool_result("c1", "late result")], epoch=e)
    assert [x.kind for x in log.read("s")] == ["tool_call", "tool_result"]


def test_verify_names_first_tampered_seq(log, store_url):
    e = log.acquire("s")
    for i in range(3):
        log.append("s", _turn(i), epoch=e)
    assert log.verify("s").ok and log.verify("s").checked == 12
    _tamper(store_url, "UPDATE context_entries SET content = '\"rm -rf /\"' "
                       "WHERE session = 's' AND seq = 7")
    bad = log.verify("s")
    assert not bad.ok and bad.first_bad_seq == 7 and "altered" in bad.reason
    _tamper(store_url, "DELETE FROM context_entries WHERE session = 's' AND seq = 3")
    assert log.verify("s").first_bad_seq == 3


def test_verify_finds_a_deleted_last_entry(log, store_url):
    e = log.acquire("s")
    log.append("s", _turn(1), epoch=e)
    _tamper(store_url, "DELETE FROM context_entries WHERE session = 's' AND seq = 4")
    res = log.verify("s")
    assert not res.ok and res.first_bad_seq == 4


def test_fork_shares_prefix_and_diverges(log, store_url):
    e = log.acquire("main")
    log.append("main", _turn(1) + _turn(2), epoch=e)
    child = log.fork("main", 4, new_session="alt")
    assert child == "alt" and log.head_seq("alt") == 4
    assert [x.content for x in log.read("alt")] == [x.content for x in log.read("main", limit=4)]
    assert log.append("alt", [Entry.message("user", "other path")], epoch=0) == [5]
    log.append("main", [Entry.message("user", "main path")], epoch=e)
    assert log.read("alt")[-1].content == "other path"
    assert log.read("main")[-1].content == "main path"
    # a fork of a fork, at a point inside the shared prefix
    grand = log.fork("alt", 2)
    assert [x.seq for x in log.read(grand)] == [1, 2]
    assert log.append(grand, [Entry.tool_result("call-1", "again")], epoch=0) == [3]
    assert log.verify("alt").ok and log.verify(grand).ok and log.verify("main").ok
    # the prefix is not copied: the fork owns only its own rows
    if store_url.startswith("sqlite"):
        db = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        (n,) = db.execute("SELECT COUNT(*) FROM context_entries WHERE session='alt'").fetchone()
        db.close()
        assert n == 1
    with pytest.raises(ContextError, match="parent of forks"):
        log.delete_session("main")
    with pytest.raises(ValueError):
        log.fork("main", 99)


def test_large_payloads_go_to_blobs_and_load_lazily(store_url, tmp_path):
    with open_log(store_url, blob_threshold=1024) as log:
        e = log.acquire("s")
        big = "line of output\n" * 5000
        log.append("s", [Entry.tool_call("c", "cat", {"path": "x" * 2000}),
                         Entry.tool_result("c", big)], epoch=e)
        call, res = log.read("s")
        ref = res.raw("content")
        assert ref.size > 1024 and len(ref.key) == 64  # still a reference, nothing loaded
        assert res.content == big  # loaded on first use
        assert call.args() == {"path": "x" * 2000}
        assert log.size("s")[1] > len(big)
        root = log.blobs.root
        assert log.verify("s").ok
        shutil.rmtree(root)
        root.mkdir()
        fresh = log.read("s")[1]
        with pytest.raises(BlobMissing, match=ref.key):
            _ = fresh.content
        res2 = log.verify("s")
        assert not res2.ok and res2.first_bad_seq == 1 and "arguments" in res2.reason
        assert "not found" in res2.reason


def test_size_warning_marker_once(store_url):
    with open_log(store_url, warn_bytes=3000) as log:
        e = log.acquire("s")
        seqs = []
        for i in range(40):
            seqs += log.append("s", [Entry.message("user", f"{i}: " + "y" * 200)], epoch=e)
        entries = log.read("s")
        markers = [x for x in entries if x.kind == "marker"]
        assert len(markers) == 1
        assert markers[0].content["marker"] == "size_warning"
        assert markers[0].content["limit"] == 3000
        assert markers[0].seq not in seqs
        assert len(entries) == 41 and log.verify("s").ok
        info = log.session("s")
        assert info.warned and info.bytes > 3000


def test_sessions_listing_close_and_delete(log):
    for name in ("a1", "a2", "b1"):
        log.append(name, [Entry.message("user", name)], epoch=0)
    assert [s.id for s in log.sessions()] == ["a1", "a2", "b1"]
    assert [s.id for s in log.sessions(prefix="a")] == ["a1", "a2"]
    log.close_session("a2")
    assert [s.id for s in log.sessions(closed=True)] == ["a2"]
    assert [s.id for s in log.sessions(closed=False)] == ["a1", "b1"]
    assert [s.id for s in log.sessions(closed_before="9999-01-01")] == ["a2"]
    assert log.sessions(closed_before="2000-01-01") == []
    with pytest.raises(SessionClosed):
        log.append("a2", [Entry.message("user", "late")], epoch=0)
    log.delete_session("a2")
    assert [s.id for s in log.sessions()] == ["a1", "b1"]


def test_schema_is_versioned_and_reopen_is_idempotent(store_url):
    with open_log(store_url) as log:
        assert log.schema_version() == SCHEMA_VERSION
        log.append("s", [Entry.message("user", "kept")], epoch=0)
    with open_log(store_url) as log:
        assert log.schema_version() == SCHEMA_VERSION
        assert log.read("s")[0].content == "kept"


def test_newer_schema_refused(store_url):
    open_log(store_url).close()
    _tamper(store_url, "INSERT INTO torpor_schema VALUES (99, 'future', 'x')")
    with pytest.raises(ContextError, match="newer"):
        open_log(store_url)


def test_two_workers_fenced(store_url):
    """Two workers with their own connections both think they own the session: only the one
    that acquired last can write, and the loser's whole batch is refused."""
    with open_log(store_url) as a, open_log(store_url) as b:
        ea = a.acquire("s")
        a.append("s", _turn(1), epoch=ea)
        eb = b.acquire("s")
        with pytest.raises(StaleEpoch):
            a.append("s", _turn(2), epoch=ea)
        assert b.append("s", _turn(2), epoch=eb) == [5, 6, 7, 8]
        assert [e.epoch for e in a.read("s")] == [ea] * 4 + [eb] * 4
        assert a.verify("s").ok


def test_concurrent_writers_never_interleave_or_gap(store_url):
    """Several writers (own connections) append to one session at once: seqs stay 1..N with
    no gaps or duplicates, every batch is contiguous, and the chain verifies."""
    logs = [open_log(store_url) for _ in range(4)]
    try:
        got: dict[int, list[list[int]]] = {i: [] for i in range(4)}
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for j in range(15):
                    batch = [Entry.message("user", f"w{i}-{j}-{k}") for k in range(3)]
                    got[i].append(logs[i].append("shared", batch, epoch=0))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        all_seqs = sorted(s for per in got.values() for b in per for s in b)
        assert all_seqs == list(range(1, 181))
        for per in got.values():
            for b in per:
                assert b == list(range(b[0], b[0] + 3))
        entries = logs[0].read("shared")
        for per_writer in got.values():
            for b in per_writer:
                texts = [entries[s - 1].content for s in b]
                assert len({t.rsplit("-", 1)[0] for t in texts}) == 1
        assert logs[0].verify("shared").ok
    finally:
        for lg in logs:
            lg.close()


def test_sqlite_append_is_on_disk_settings(tmp_path):
    log = open_log(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        with log.db.write() as tx:  # the settings an append runs under
            assert tx.value("PRAGMA journal_mode") == "wal"
            assert tx.value("PRAGMA synchronous") == 2  # FULL
    finally:
        log.close()


def test_bad_urls():
    with pytest.raises(ValueError, match="unsupported"):
        open_log("mysql://x")
    with pytest.raises(ValueError, match="no blob store backend"):
        open_log("sqlite:////tmp/x.db", blobs="gopher://x")


def test_missing_blob_dir_is_created(tmp_path: Path):
    with open_log(f"sqlite:///{tmp_path / 'deep' / 'c.db'}") as log:
        log.append("s", [Entry.message("user", "z" * 70_000)], epoch=0)
        assert (tmp_path / "deep" / "c.db.blobs").is_dir()
        assert log.read("s")[0].content == "z" * 70_000
