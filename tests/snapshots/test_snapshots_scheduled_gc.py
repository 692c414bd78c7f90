"""The scheduled gc (runtime/storage.py) on the file and S3 backends: one process per
store at a time under a lease in the database, while a writer keeps adding snapshots and
log entries with blobs and deleting old ones; nothing a snapshot or an entry still refers
to is ever lost, and the garbage goes. Also the blob collector on its own, and what the
lease leaves for /metrics. No root."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from torpor.context import Entry, open_log
from torpor.context.blobgc import collect_blobs
from torpor.runtime.db import RuntimeDB
from torpor.runtime.storage import ScheduledGC, statuses
from torpor.snapshots import open_store


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(snapshot store URL, blob store URL) on one backend."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}", f"file://{tmp_path / 'blobs'}"
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/snaps", f"s3://{bucket}/blobs"


def big(i: int, salt: str = "") -> str:
    return f"{salt}payload {i} " + "x" * 400


def test_one_process_at_a_time_collects_while_a_writer_writes(urls, tmp_path, data) -> None:
    store_url, blob_url = urls
    db_url = f"sqlite:///{tmp_path / 'torpor.db'}"
    db = RuntimeDB(db_url)
    clog = open_log(db_url, blobs=blob_url, blob_threshold=256)
    writer_store = open_store(store_url, cache_bytes=0, use_key_env=False)
    gcs = [ScheduledGC(db, open_store(store_url, cache_bytes=0, use_key_env=False), clog,
                       f"machine-{m}:1:aa", every=3600, blob_grace=0.5)
           for m in "ab"]  # two machines sharing the store and the database  # fmt: skip
    active, most, ran = [0], [0], [0, 0]
    lock = threading.Lock()
    for g in gcs:  # count the gcs running at once
        real = g.store.gc

        def counted(*a: Any, _real: Any = real, **kw: Any) -> Any:
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            try:
                time.sleep(0.05)  # (long enough for the other to try meanwhile)
                return _real(*a, **kw)
            finally:
                with lock:
                    active[0] -= 1

        g.store.gc = counted  # type: ignore[method-assign]
    stop = threading.Event()
    errors: list[BaseException] = []
    committed: dict[str, dict[str, bytes]] = {}
    live_sessions: list[str] = []

    def writer() -> None:
        ck = tmp_path / "ck"
        shutil.copytree(data.make_checkpoint(tmp_path / "base", seed=5, npages=96), ck)
        i = 0
        try:
            while not stop.is_set():
                data.mutate_checkpoint(ck, seed=i, pages_changed=3, state_edits=1)
                info = writer_store.put(ck, {"session": "w"})
                committed[info.id] = data.tree_bytes(ck)
                writer_store.retain(2, by="session")  # what retention does
                sid = f"log-{i}"
                clog.append(sid, [Entry.message("user", big(i)),
                                  Entry.message("user", big(i % 3, "shared "))],
                            epoch=clog.acquire(sid))  # fmt: skip
                live_sessions.append(sid)
                if len(live_sessions) > 3:  # `torpor log prune`: its blobs are garbage
                    clog.delete_session(live_sessions.pop(0))
                i += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def collector(k: int) -> None:
        try:
            while not stop.is_set():
                if gcs[k].run_once(force=True) is not None:
                    ran[k] += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=collector, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert most[0] == 1  # never two at once, across the two "machines"
    assert sum(ran) >= 3 and len(committed) >= 4
    time.sleep(0.6)  # past the blob grace period
    last = gcs[0].run_once(force=True)
    assert last is not None and last["error"] is None
    # everything still referred to reads back whole
    alive = writer_store.ids()
    assert len(alive) == 2
    for sid in alive:
        assert data.tree_bytes(writer_store.get(sid, tmp_path / f"out-{sid}")) == committed[sid]
    for sid in live_sessions:
        assert clog.verify(sid).ok
    # and the garbage is gone: nothing left to free
    assert writer_store.gc(dry_run=True).deleted_bytes == 0
    assert collect_blobs(clog, grace=0, dry_run=True).deleted == 0
    st = gcs[1].status()
    assert st.runs == sum(ran) + 1 and st.freed_bytes > 0 and st.holder is None
    assert st.last is not None and st.last["blobs"]["deleted"] >= 0
    assert [s.store for s in statuses(db)] == [writer_store.url]
    clog.close()
    db.close()


def test_a_run_is_due_only_every_so_often_and_not_while_another_holds_the_lease(
        tmp_path, data) -> None:  # fmt: skip
    db_url = f"sqlite:///{tmp_path / 'torpor.db'}"
    db = RuntimeDB(db_url)
    store = open_store(f"file://{tmp_path / 'store'}", use_key_env=False)
    a = ScheduledGC(db, store, None, "a", every=3600)
    b = ScheduledGC(db, store, None, "b", every=3600, lease_ttl=30)
    first = a.run_once()
    assert first is not None and first["error"] is None and first["by"] == "a"
    assert a.run_once() is None and b.run_once() is None  # not due for an hour
    assert b._take()  # b holds the lease (a run of its own, say)
    assert a.run_once(force=True) is None  # a may not run meanwhile
    assert a.status().holder == "b"
    b.lease_ttl = -1  # b died: its lease has run out
    assert b._take()
    assert a.run_once(force=True) is not None
    assert a.status().runs == 2


def test_blob_gc_deletes_unreferenced_old_blobs_only(tmp_path: Path) -> None:
    with open_log(f"sqlite:///{tmp_path / 'c.db'}", blobs=f"file://{tmp_path / 'b'}",
                  blob_threshold=100) as clog:  # fmt: skip
        for sid in ("keep", "gone"):
            clog.append(sid, [Entry.message("user", big(1, sid)),
                              Entry.message("user", big(2, "both"))],
                        epoch=clog.acquire(sid))  # fmt: skip
        clog.delete_session("gone")
        dry = collect_blobs(clog, grace=0, dry_run=True)
        assert (dry.blobs, dry.referenced, dry.deleted) == (3, 2, 1)
        assert collect_blobs(clog, grace=3600).young == 1  # put a moment ago: stays
        assert len(list(clog.blobs.list())) == 3  # type: ignore[union-attr]
        done = collect_blobs(clog, grace=0)
        assert done.deleted == 1 and done.deleted_bytes == dry.deleted_bytes
        assert len(list(clog.blobs.list())) == 2  # type: ignore[union-attr]
        assert clog.verify("keep").ok
        # a blob put again (a new entry with the same payload) is young again
        old = [k for k, _t, _s in clog.blobs.list()]  # type: ignore[union-attr]
        for k in old:
            os.utime(clog.blobs._path(k), (1, 1))  # type: ignore[union-attr]
        clog.append("new", [Entry.message("user", big(2, "both"))],
                    epoch=clog.acquire("new"))  # fmt: skip
        assert min(t for _k, t, _s in clog.blobs.list()) == 1  # type: ignore[union-attr]
        assert max(t for _k, t, _s in clog.blobs.list()) > time.time() - 60  # type: ignore[union-attr]


def test_a_blob_put_again_as_the_gc_deletes_it_is_put_back_before_its_row_commits(
        url: str, tmp_path: Path) -> None:  # fmt: skip
    # The race the blob lock closes, made to happen: the collector has found a blob
    # unreferenced and old, and a writer puts it again (a new entry with the same payload)
    # right after the collector's last look at it, then commits its row while the
    # collector deletes it. The row must not name a deleted blob.
    with open_log(url + ("&" if "?" in url else "?") + f"blobs=file://{tmp_path / 'b'}",
                  blob_threshold=100) as clog:  # fmt: skip
        clog.append("old", [Entry.message("user", big(1, "shared"))], epoch=clog.acquire("old"))
        clog.delete_session("old")  # its blob is garbage now
        blobs = clog.blobs
        assert blobs is not None
        (key,) = [k for k, _t, _s in blobs.list()]
        os.utime(blobs._path(key), (1, 1))  # type: ignore[attr-defined]  (put long ago)
        real_mtime = blobs.mtime
        writer: list[threading.Thread] = []
        errors: list[BaseException] = []

        epoch = clog.acquire("new")

        def append_again() -> None:
            try:
                clog.append("new", [Entry.message("user", big(1, "shared"))], epoch=epoch)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def mtime_then_writer(k: str) -> float | None:
            got = real_mtime(k)  # the collector's last look: old
            if not writer:  # the writer puts it again now, and commits when it can
                writer.append(threading.Thread(target=append_again))
                writer[0].start()
                time.sleep(0.5)  # (its put is done, its commit waits for the lock)
            return got

        blobs.mtime = mtime_then_writer  # type: ignore[method-assign]
        done = collect_blobs(clog, grace=60)
        blobs.mtime = real_mtime  # type: ignore[method-assign]
        writer[0].join(30)
        assert not errors, errors
        assert done.deleted == 1  # it was deleted ...
        assert blobs.has(key)  # ... and put back by the writer before its row committed
        assert clog.verify("new").ok
        assert [e.content for e in clog.read("new")] == [big(1, "shared")]
