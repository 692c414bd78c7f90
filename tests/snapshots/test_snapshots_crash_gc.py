"""Atomicity under kill -9, and garbage collection with concurrent writers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from torpor.snapshots import open_store
from torpor.snapshots.backends import FileBackend
from torpor.snapshots.store import SnapshotStore


def _pack_count(root: Path) -> int:
    return len(list((root / "packs").glob("*.pack")))


def test_snapshots_put_killed_mid_way_leaves_no_snapshot(tmp_path, checkpoint, data):
    root = tmp_path / "store"
    store = open_store(str(root), use_key_env=False)
    keep = store.put(checkpoint, {"n": "before"})
    big = tmp_path / "big"
    big.mkdir()
    (big / "pages.img").write_bytes(os.urandom(48 << 20))
    script = textwrap.dedent(f"""
        from torpor.snapshots import open_store
        s = open_store({str(root)!r}, pack_target=256 * 1024, workers=1, use_key_env=False)
        s.put({str(big)!r}, {{"n": "killed"}})
        print("FINISHED", flush=True)
    """)
    before = _pack_count(root)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while _pack_count(root) < before + 3:
        assert child.poll() is None, "put finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    out, _ = child.communicate()
    assert child.returncode == -signal.SIGKILL and b"FINISHED" not in out
    assert _pack_count(root) > before  # it did write packs...
    assert [i.meta["n"] for i in store.list()] == ["before"]  # ...but no snapshot
    restored = store.get(keep.id, tmp_path / "restored")
    assert data.tree_bytes(restored) == data.tree_bytes(checkpoint)
    # the dead writer's marker does not block gc; its packs are collected
    res = store.gc(wait_timeout=5)
    assert res.aborted is None and res.deleted_packs >= 3
    assert _pack_count(root) == before
    assert not list((root / "locks").glob("*"))
    assert data.tree_bytes(store.get(keep.id, tmp_path / "again")) == \
        data.tree_bytes(checkpoint)


def test_snapshots_gc_collects_only_unreferenced(store, tmp_path, data):
    a = data.make_checkpoint(tmp_path / "a", seed=1, npages=512)
    b = data.make_checkpoint(tmp_path / "b", seed=2, npages=512)
    ia, ib = store.put(a), store.put(b)
    root = Path(store.backend.root)
    size_before = sum(p.stat().st_size for p in (root / "packs").glob("*"))
    assert store.gc().deleted_packs == 0
    store.delete(ia.id)
    res = store.gc()
    # b shares the zero page with a: a's pack is rewritten or dropped
    assert res.deleted_packs + res.repacked_packs >= 1
    assert res.deleted_bytes > 0.8 * ia.new_bytes
    size_after = sum(p.stat().st_size for p in (root / "packs").glob("*"))
    assert size_after < size_before - 0.8 * ia.new_bytes
    assert data.tree_bytes(store.get(ib.id, tmp_path / "out")) == data.tree_bytes(b)


def test_snapshots_gc_repacks_mostly_dead_packs(tmp_path, data):
    store = open_store(str(tmp_path / "s"), use_key_env=False)
    ck = data.make_checkpoint(tmp_path / "ck", seed=4, npages=256)
    first = store.put(ck)
    data.mutate_checkpoint(ck, seed=5, pages_changed=4, state_edits=1)
    second = store.put(ck)
    store.delete(first.id)
    # the first pack holds mostly chunks the second snapshot shares: kept
    assert store.gc().repacked_packs == 0
    keep_new = store.put(ck)  # nothing new
    assert keep_new.new_bytes == 0
    store.delete(second.id)
    store.delete(keep_new.id)
    one = tmp_path / "one.pages"
    one.write_bytes((ck / "pages.img").read_bytes()[:8192])
    small = store.put(one)  # shares two pages with the first pack
    res = store.gc()
    assert res.repacked_packs >= 1
    assert store.get(small.id, tmp_path / "o").read_bytes() == one.read_bytes()


class PausingBackend(FileBackend):
    """A file backend that stops before writing a chosen key until released."""

    def __init__(self, root: Path, pause_prefix: str, op: str = "put") -> None:
        super().__init__(root)
        self.pause_prefix = pause_prefix
        self.op = op
        self.reached = threading.Event()
        self.release = threading.Event()

    def _maybe_pause(self, op: str, key: str) -> None:
        if op == self.op and key.startswith(self.pause_prefix) and not self.reached.is_set():
            self.reached.set()
            assert self.release.wait(20)

    def put(self, key: str, data: bytes) -> None:
        self._maybe_pause("put", key)
        super().put(key, data)

    def delete(self, key: str) -> None:
        self._maybe_pause("delete", key)
        super().delete(key)


def test_snapshots_gc_waits_for_a_running_put(tmp_path, data):
    """A put that reuses chunks of a deleted snapshot, running while gc starts."""
    root = tmp_path / "s"
    ck = data.make_checkpoint(tmp_path / "ck", seed=1, npages=512)
    plain = SnapshotStore(FileBackend(root))
    old = plain.put(ck)
    plain.delete(old.id)  # its chunks are now unreferenced
    writer = SnapshotStore(PausingBackend(root, "snapshots/"))
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("info", writer.put(ck)))
    t.start()
    assert writer.backend.reached.wait(10)  # the put has decided to reuse the old chunks
    gc_result = {}
    g = threading.Thread(target=lambda: gc_result.setdefault("r", plain.gc(wait_timeout=20)))
    g.start()
    time.sleep(0.3)
    assert g.is_alive()  # gc is waiting for the put
    writer.backend.release.set()
    t.join(10)
    g.join(10)
    assert result["info"].new_bytes == 0  # it did reuse
    assert gc_result["r"].waited_for == 1 and gc_result["r"].deleted_packs == 0
    out = plain.get(result["info"].id, tmp_path / "out")
    assert data.tree_bytes(out) == data.tree_bytes(ck)


def test_snapshots_put_during_gc_does_not_reuse_old_chunks(tmp_path, data):
    root = tmp_path / "s"
    ck = data.make_checkpoint(tmp_path / "ck", seed=1, npages=512)
    plain = SnapshotStore(FileBackend(root))
    old = plain.put(ck)
    plain.delete(old.id)
    gcs = SnapshotStore(PausingBackend(root, "packs/", op="delete"))
    gc_result = {}
    g = threading.Thread(target=lambda: gc_result.setdefault("r", gcs.gc()))
    g.start()
    # gc has written its marker, found no put running, read the manifests, and is
    # about to delete the old packs: a put now must not rely on them
    assert gcs.backend.reached.wait(10)
    info = plain.put(ck)
    assert info.new_bytes == info.stored_bytes
    gcs.backend.release.set()
    g.join(10)
    assert gc_result["r"].deleted_packs >= 1  # the old packs went
    out = plain.get(info.id, tmp_path / "out")
    assert data.tree_bytes(out) == data.tree_bytes(ck)
    assert plain.put(ck).new_bytes == 0  # with gc over, reuse is back


def test_snapshots_gc_stress_with_concurrent_writers(tmp_path, data):
    """Writers keep adding snapshots that share chunks while gc and deletes run."""
    root = tmp_path / "s"
    base = data.make_checkpoint(tmp_path / "ck", seed=3, npages=128, state_size=20_000)
    admin = SnapshotStore(FileBackend(root))
    stop = threading.Event()
    committed: list[tuple[str, dict[str, bytes]]] = []
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        s = SnapshotStore(FileBackend(root))
        ck = tmp_path / f"w{n}"
        shutil.copytree(base, ck)
        i = 0
        try:
            while not stop.is_set():
                data.mutate_checkpoint(ck, seed=n * 1000 + i, pages_changed=3, state_edits=1)
                info = s.put(ck, {"writer": n})
                committed.append((info.id, data.tree_bytes(ck)))
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 3
    gcs = waited = 0
    while time.monotonic() < deadline:
        admin.retain(2, by="writer")
        res = admin.gc(wait_timeout=10)
        assert res.aborted is None
        gcs += 1
        waited += res.waited_for
    stop.set()
    for t in threads:
        t.join(20)
    assert not errors, errors
    assert gcs >= 2 and len(committed) >= 4
    assert waited >= 1  # some gc did run while a put was under way
    admin.gc()
    alive = {i.id for i in admin.list()}
    assert alive
    for sid, files in committed:
        if sid in alive:
            assert data.tree_bytes(admin.get(sid, tmp_path / f"out-{sid}")) == files
