"""What a put knows of the store's chunks without listing every pack (ChunkIndex.sync),
and gc at scale: batched deletes on S3, packs deleted by a gc elsewhere never reused."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from torpor.snapshots import open_store, packs
from torpor.snapshots.backends import FileBackend
from torpor.snapshots.errors import SnapshotNotFound
from torpor.snapshots.markers import write_marker
from torpor.snapshots.store import SnapshotStore


class ListingBackend(FileBackend):
    """A file backend that records, for each listing of packs/, the keys it returned."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listings: list[tuple[str | None, list[str]]] = []

    def list(self, prefix: str, start_after: str | None = None
             ) -> Iterator[tuple[str, float, int]]:
        got = list(super().list(prefix, start_after))
        if prefix == "packs/":
            self.listings.append((start_after, [k for k, _m, _s in got]))
        return iter(got)


def _packs_of(store: SnapshotStore, sid: str) -> set[str]:
    return set(store.manifest(sid).packs)


def test_snapshots_put_lists_only_new_packs_yet_dedups_against_them(
        tmp_path, data, monkeypatch):
    monkeypatch.setattr(packs, "LIST_EVERY", 0.0)
    monkeypatch.setattr(packs, "LIST_SLACK", 0.0)
    root = tmp_path / "s"
    other = SnapshotStore(FileBackend(root))  # another machine writing to the store
    old = [other.put(data.make_checkpoint(tmp_path / f"o{i}", seed=10 + i, npages=64))
           for i in range(4)]
    old_packs = set().union(*(_packs_of(other, i.id) for i in old))
    mine = SnapshotStore(ListingBackend(root))
    mine.put(data.make_checkpoint(tmp_path / "a", seed=1, npages=64))
    assert mine.backend.listings[-1][0] is None  # a first put lists every pack
    ck = data.make_checkpoint(tmp_path / "b", seed=2, npages=256)
    theirs = other.put(ck)  # written after mine last listed
    again = mine.put(ck)
    after, keys = mine.backend.listings[-1]
    assert after is not None  # no full listing...
    assert not {k for k in keys if k.endswith(".idx")} & {f"packs/{p}.idx" for p in old_packs}
    assert again.new_bytes == 0  # ...yet the other machine's new pack was found and reused
    assert _packs_of(mine, again.id) == _packs_of(other, theirs.id)
    assert data.tree_bytes(other.get(again.id, tmp_path / "out")) == data.tree_bytes(ck)


def test_snapshots_put_never_reuses_a_pack_a_gc_elsewhere_deleted(tmp_path, data, monkeypatch):
    monkeypatch.setattr(packs, "LIST_EVERY", 0.0)
    root = tmp_path / "s"
    mine = SnapshotStore(FileBackend(root))
    ck = data.make_checkpoint(tmp_path / "ck", seed=3, npages=256)
    first = mine.put(ck)  # my index now knows its packs
    other = SnapshotStore(FileBackend(root))
    other.delete(first.id)
    res = other.gc()
    assert res.deleted_packs >= 1  # the packs my index knows are gone
    second = mine.put(ck)
    assert second.new_bytes == second.stored_bytes > 0  # stored anew, nothing dangling
    assert _packs_of(mine, second.id) <= {p.stem for p in (root / "packs").glob("*.pack")}
    assert data.tree_bytes(other.get(second.id, tmp_path / "out")) == data.tree_bytes(ck)
    assert mine.put(ck).new_bytes == 0  # and reuse is back


def test_snapshots_put_seeing_a_gc_marker_writes_new_packs(tmp_path, data):
    store = SnapshotStore(FileBackend(tmp_path / "s"))
    ck = data.make_checkpoint(tmp_path / "ck", seed=4, npages=128)
    first = store.put(ck)
    marker = write_marker(store.backend, "gc")
    during = store.put(ck)
    assert during.new_bytes == during.stored_bytes > 0
    assert not _packs_of(store, during.id) & _packs_of(store, first.id)
    store.backend.delete(marker)
    assert store.put(ck).new_bytes == 0


def test_snapshots_gc_on_s3_deletes_in_batches(s3_bucket, tmp_path, data, monkeypatch):
    store = open_store(f"s3://{s3_bucket}/gcb", cache_bytes=0, use_key_env=False,
                       pack_target=16 * 1024)
    ck = data.make_checkpoint(tmp_path / "ck", seed=5, npages=512)
    gone = store.put(ck)
    keep = store.put(data.make_checkpoint(tmp_path / "k", seed=6, npages=64))
    dead = _packs_of(store, gone.id) - _packs_of(store, keep.id)
    assert len(dead) > 5
    store.delete(gone.id)
    one_by_one: list[str] = []
    single = store.backend.delete
    monkeypatch.setattr(store.backend, "delete", lambda k: (one_by_one.append(k), single(k)))
    res = store.gc()
    assert res.aborted is None and res.deleted_packs >= len(dead)
    # DeleteObjects requests, not one DELETE per object
    assert not [k for k in one_by_one if k.startswith("packs/")]
    left = {k for k, _m, _s in store.backend.list("packs/")}
    assert not left & ({f"packs/{p}.pack" for p in dead} | {f"packs/{p}.idx" for p in dead})
    assert data.tree_bytes(store.get(keep.id, tmp_path / "o")) == data.tree_bytes(
        tmp_path / "k")
    with pytest.raises(SnapshotNotFound):
        store.get(gone.id, tmp_path / "x")


def test_snapshots_new_store_reads_every_pack_index_on_its_threads(tmp_path, data):
    """A new process's first put knows every pack (dedup against all of them), and reads
    their indexes on the store's thread pool, not one after the other."""
    root = tmp_path / "s"
    other = SnapshotStore(FileBackend(root))
    cks = [data.make_checkpoint(tmp_path / f"c{i}", seed=20 + i, npages=32) for i in range(6)]
    for ck in cks:
        other.put(ck)

    class ThreadsBackend(FileBackend):
        threads: set[str] = set()

        def get(self, key: str) -> bytes:
            if key.endswith(".idx"):
                self.threads.add(threading.current_thread().name)
            return super().get(key)

    fresh = SnapshotStore(ThreadsBackend(root))
    assert all(fresh.put(ck).new_bytes == 0 for ck in cks)
    assert any(n.startswith("torpor-snap") for n in ThreadsBackend.threads)
