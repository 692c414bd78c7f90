"""Delta chunks: a changed page stored as a zstd delta against the parent's page."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from torpor.snapshots import SnapshotCorrupt, SnapshotKeyError, open_store
from torpor.snapshots.codec import FLAG_AES, FLAG_DELTA
from torpor.snapshots.manifest import FORMAT, FORMAT_DELTA, seal
from torpor.snapshots.packs import IDX_MAGIC, IDX_MAGIC2, decode_index

PAGE = 4096


def edit_pages(src: Path, dst: Path, seed: int, pages: int = 40, insert_at: int | None = None,
               replace: int = 0) -> list[int]:
    """Copy a checkpoint and change a few bytes in `pages` non-zero pages (optionally
    inserting two new pages first, which shifts every later page, and overwriting
    `replace` other pages whole); returns the page numbers (in dst) edited."""
    shutil.copytree(src, dst)
    rnd = random.Random(seed)
    raw = bytearray((dst / "pages.img").read_bytes())
    if insert_at is not None:
        raw[insert_at * PAGE:insert_at * PAGE] = rnd.randbytes(2 * PAGE)
    n = len(raw) // PAGE
    busy = [p for p in range(n) if any(raw[p * PAGE:(p + 1) * PAGE])]
    picked = rnd.sample(busy, pages + replace)
    changed = sorted(picked[:pages])
    for p in picked[pages:]:
        raw[p * PAGE:(p + 1) * PAGE] = rnd.randbytes(PAGE)
    for p in changed:
        for _ in range(3):
            at = p * PAGE + rnd.randrange(PAGE - 4)
            raw[at:at + 4] = rnd.randbytes(4)
    (dst / "pages.img").write_bytes(raw)
    return changed


def _entries(root: Path) -> dict[bytes, tuple[Path, object]]:
    out = {}
    for idx in Path(root, "packs").glob("*.idx"):
        for cid, loc in decode_index(idx.stem, idx.read_bytes()):
            out[cid] = (idx.with_suffix(".pack"), loc)
    return out


def _pair(tmp_path: Path, data, store, **kw):
    a = data.make_checkpoint(tmp_path / "a", seed=3, npages=512)
    changed = edit_pages(a, tmp_path / "b", seed=4, **kw)
    ia = store.put(a)
    ib = store.put(tmp_path / "b", parent=ia.id)
    return a, tmp_path / "b", ia, ib, changed


def test_snapshots_delta_round_trip_and_size(store, tmp_path, data):
    a, b, ia, ib, changed = _pair(tmp_path, data, store)
    doc = store.info_doc(ib.id)
    assert doc["format"] == FORMAT_DELTA and doc["new_delta_chunks"] >= len(changed) - 2
    assert store.info_doc(ia.id)["format"] == FORMAT  # no deltas: format 1, as before
    # the same pair without deltas costs several times more
    plain = open_store(str(tmp_path / "plain"), use_key_env=False, deltas=False)
    pa = plain.put(a)
    pb = plain.put(b, parent=pa.id)
    assert plain.info_doc(pb.id)["format"] == FORMAT
    assert ib.new_bytes * 3 < pb.new_bytes
    # the bases are counted in what the snapshot needs (stored), not in what it added
    assert ib.stored_bytes >= pb.stored_bytes - pb.new_bytes + ib.new_bytes
    out = store.get(ib.id, tmp_path / "out")
    assert data.tree_bytes(out) == data.tree_bytes(b)
    assert store.verify(ib.id) == ib.unique_chunks
    # random access to a changed page fetches the delta and its base, nothing more
    fresh = open_store(str(store.backend.root), use_key_env=False)
    reader = fresh.open(ib.id, "pages.img")
    want = (b / "pages.img").read_bytes()
    p = changed[len(changed) // 2]
    assert reader.read(p * PAGE + 100, 200) == want[p * PAGE + 100:p * PAGE + 300]
    assert fresh.stats.chunks_decoded == 2 and fresh.stats.chunks_fetched == 2
    # the seek table names each delta's base; the pack index agrees
    entries = _entries(Path(store.backend.root))
    table = store.manifest(ib.id).file("pages.img")
    assert table.bases
    for cid, base in table.bases.items():
        loc = entries[cid][1]
        assert loc.base == base and loc.flags & FLAG_DELTA
        assert entries[base][1].base is None  # a base is always a full chunk


def test_snapshots_delta_shifted_pages_use_neighbours(store, tmp_path, data):
    """Two pages inserted near the start shift every later page: the same-offset page
    of the parent is then unrelated, the neighbour-anchored one is the right base."""
    _a, b, _ia, ib, changed = _pair(tmp_path, data, store, insert_at=5)
    doc = store.info_doc(ib.id)
    assert doc["new_delta_chunks"] >= len(changed) - 4
    assert ib.new_bytes < 0.1 * ib.stored_bytes
    assert data.tree_bytes(store.get(ib.id, tmp_path / "out")) == data.tree_bytes(b)


def test_snapshots_delta_of_delta_uses_the_full_base(store, tmp_path, data):
    a = data.make_checkpoint(tmp_path / "a", seed=3, npages=256)
    edit_pages(a, tmp_path / "b", seed=4)
    edit_pages(tmp_path / "b", tmp_path / "c", seed=5, pages=120)
    ia = store.put(a)
    ib = store.put(tmp_path / "b", parent=ia.id)
    ic = store.put(tmp_path / "c", parent=ib.id)
    entries = _entries(Path(store.backend.root))
    a_ids = set(store.manifest(ia.id).file("pages.img").ids)
    bases = store.manifest(ic.id).file("pages.img").bases
    assert bases and all(entries[base][1].base is None for base in bases.values())
    assert set(bases.values()) <= a_ids  # deltas of deltas resolve to a's pages
    assert data.tree_bytes(store.get(ic.id, tmp_path / "out")) == \
        data.tree_bytes(tmp_path / "c")


def _flip(pack: Path, loc, at: int = 0) -> None:
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + min(at, loc.length - 1)] ^= 0x10
    pack.write_bytes(raw)


def test_snapshots_corrupt_delta_is_reported(store, tmp_path, data):
    _a, _b, ia, ib, _changed = _pair(tmp_path, data, store)
    entries = _entries(Path(store.backend.root))
    table = store.manifest(ib.id).file("pages.img")
    cid = next(iter(table.bases))
    pack, loc = entries[cid]
    _flip(pack, loc, loc.length // 2)
    fresh = open_store(str(store.backend.root), use_key_env=False)
    with pytest.raises(SnapshotCorrupt) as exc:
        fresh.get(ib.id, tmp_path / "out")
    assert exc.value.chunk_id == cid.hex() and exc.value.snapshot_id == ib.id
    assert cid.hex() in str(exc.value)
    p = table.ids.index(cid)
    with pytest.raises(SnapshotCorrupt) as exc:
        fresh.open(ib.id, "pages.img").read(p * PAGE, PAGE)
    assert exc.value.chunk_id == cid.hex()
    fresh.get(ia.id, tmp_path / "a-out")  # the parent does not use the delta: intact


def test_snapshots_corrupt_base_is_reported(store, tmp_path, data):
    _a, _b, _ia, ib, _changed = _pair(tmp_path, data, store)
    entries = _entries(Path(store.backend.root))
    table = store.manifest(ib.id).file("pages.img")
    cid, base = next(iter(table.bases.items()))
    pack, loc = entries[base]
    _flip(pack, loc, 7)
    fresh = open_store(str(store.backend.root), use_key_env=False)
    with pytest.raises(SnapshotCorrupt) as exc:
        fresh.open(ib.id, "pages.img").read(table.ids.index(cid) * PAGE, 16)
    assert exc.value.chunk_id == base.hex()


def test_snapshots_delta_index_entry_lost_base(store, tmp_path, data):
    """A pack index that claims a delta chunk is full (no base) fails decoding."""
    _a, _b, _ia, ib, _changed = _pair(tmp_path, data, store)
    table = store.manifest(ib.id).file("pages.img")
    cid = next(iter(table.bases))
    fresh = open_store(str(store.backend.root), use_key_env=False)
    fresh.index.refresh()
    loc = fresh.index.get(cid)
    # another pack index lists the chunk, at the same place, as a full chunk
    fresh.index.add("lost-base", [(cid, loc._replace(base=None))])
    assert fresh.index.get(cid).base is None
    with pytest.raises(SnapshotCorrupt) as exc:
        fresh.open(ib.id, "pages.img").read(table.ids.index(cid) * PAGE, 16)
    assert exc.value.chunk_id == cid.hex()


def test_snapshots_gc_keeps_bases_of_live_deltas(store, tmp_path, data):
    _a, b, ia, ib, _changed = _pair(tmp_path, data, store, replace=10)
    bases = set(store.manifest(ib.id).file("pages.img").bases.values())
    a_only = set(store.manifest(ia.id).file("pages.img").ids) - \
        set(store.manifest(ib.id).file("pages.img").ids) - bases
    store.delete(ia.id)
    res = store.gc(repack_below=1.0)  # rewrite every pack that holds a dead chunk
    assert res.aborted is None and res.repacked_packs >= 1
    left = _entries(Path(store.backend.root))
    assert bases <= set(left)              # the bases the live deltas need stay
    assert a_only and not a_only & set(left)  # the parent's other changed pages went
    fresh = open_store(str(store.backend.root), use_key_env=False)
    assert data.tree_bytes(fresh.get(ib.id, tmp_path / "out")) == data.tree_bytes(b)
    assert fresh.verify(ib.id) == ib.unique_chunks
    store.delete(ib.id)
    store.gc()
    assert not list(Path(store.backend.root, "packs").glob("*.pack"))


def test_snapshots_gc_keeps_base_of_a_reused_delta(store, tmp_path, data):
    """A snapshot that dedups against a delta chunk names its base too."""
    _a, b, ia, ib, _changed = _pair(tmp_path, data, store)
    again = store.put(b)  # no parent: every chunk already stored, deltas included
    assert again.new_bytes == 0
    assert store.manifest(again.id).file("pages.img").bases == \
        store.manifest(ib.id).file("pages.img").bases
    store.delete(ia.id)
    store.delete(ib.id)
    store.gc(repack_below=1.0)
    fresh = open_store(str(store.backend.root), use_key_env=False)
    assert data.tree_bytes(fresh.get(again.id, tmp_path / "out")) == data.tree_bytes(b)


def test_snapshots_delta_encrypted(tmp_path, data):
    key = os.urandom(32)
    store = open_store(str(tmp_path / "s"), key=key)
    _a, b, _ia, ib, _changed = _pair(tmp_path, data, store)
    assert store.info_doc(ib.id)["new_delta_chunks"] > 0
    entries = _entries(tmp_path / "s")
    bases = store.manifest(ib.id).file("pages.img").bases
    for cid in bases:
        assert entries[cid][1].flags & FLAG_AES and entries[cid][1].flags & FLAG_DELTA
    fresh = open_store(str(tmp_path / "s"), key=key)
    assert data.tree_bytes(fresh.get(ib.id, tmp_path / "out")) == data.tree_bytes(b)
    with pytest.raises(SnapshotKeyError):
        open_store(str(tmp_path / "s"), key=os.urandom(32)).get(ib.id, tmp_path / "x")
    # a parent under another key gives no deltas (and no error)
    other = open_store(str(tmp_path / "s"), key=os.urandom(32))
    ic = other.put(b, parent=ib.id)
    assert other.info_doc(ic.id)["format"] == FORMAT
    assert data.tree_bytes(other.get(ic.id, tmp_path / "out2")) == data.tree_bytes(b)


def test_snapshots_delta_parent_missing_or_deltas_off(store, tmp_path, data):
    a = data.make_checkpoint(tmp_path / "a", seed=3, npages=128)
    edit_pages(a, tmp_path / "b", seed=4, pages=10)
    info = store.put(tmp_path / "b", parent="20000101T000000-00000000")
    assert store.info_doc(info.id)["format"] == FORMAT
    assert data.tree_bytes(store.get(info.id, tmp_path / "out")) == \
        data.tree_bytes(tmp_path / "b")


def test_snapshots_delta_formats_and_old_stores(store, tmp_path, data):
    """Packs without deltas keep index format 1 and manifests format 1 (what older
    versions wrote and read); an unknown manifest format is a clear error."""
    old = open_store(str(tmp_path / "old"), use_key_env=False, deltas=False)
    a = data.make_checkpoint(tmp_path / "a", seed=3, npages=128)
    edit_pages(a, tmp_path / "b", seed=4, pages=10)
    ia = old.put(a)
    ib = old.put(tmp_path / "b", parent=ia.id)
    for idx in Path(tmp_path / "old", "packs").glob("*.idx"):
        assert idx.read_bytes().startswith(IDX_MAGIC)
    # read by a store with deltas on, then extended with a delta snapshot
    new = open_store(str(tmp_path / "old"), use_key_env=False)
    assert data.tree_bytes(new.get(ib.id, tmp_path / "o1")) == data.tree_bytes(tmp_path / "b")
    edit_pages(tmp_path / "b", tmp_path / "c", seed=6, pages=10)
    ic = new.put(tmp_path / "c", parent=ib.id)
    assert new.info_doc(ic.id)["format"] == FORMAT_DELTA
    magics = {idx.read_bytes()[:len(IDX_MAGIC)]
              for idx in Path(tmp_path / "old", "packs").glob("*.idx")}
    assert magics == {IDX_MAGIC, IDX_MAGIC2}
    assert data.tree_bytes(new.get(ic.id, tmp_path / "o2")) == data.tree_bytes(tmp_path / "c")
    # a future format is refused by name
    path = Path(tmp_path / "old", "snapshots", f"{ic.id}.json")
    doc = json.loads(path.read_bytes())
    doc["format"] = "torpor-snapshot/9"
    path.write_bytes(seal(doc))
    with pytest.raises(SnapshotCorrupt, match="unknown manifest format"):
        new.info(ic.id)


def test_snapshots_delta_export_seekable(store, tmp_path, data):
    pyzstd = pytest.importorskip("pyzstd")
    _a, b, _ia, ib, _changed = _pair(tmp_path, data, store)
    out = store.export(ib.id, "pages.img", tmp_path / "pages.zst")
    with pyzstd.SeekableZstdFile(out) as fh:
        assert fh.read() == (b / "pages.img").read_bytes()


@pytest.mark.s3
def test_snapshots_delta_s3_with_cache(s3_bucket, tmp_path, data):
    url = f"s3://{s3_bucket}/d"
    cache = tmp_path / "cache"
    writer = open_store(url, cache_dir=cache, cache_bytes=64 << 20, use_key_env=False)
    _a, b, _ia, ib, _changed = _pair(tmp_path, data, writer)
    assert writer.info_doc(ib.id)["new_delta_chunks"] > 0
    cold = open_store(url, cache_bytes=0, use_key_env=False)
    assert data.tree_bytes(cold.get(ib.id, tmp_path / "cold")) == data.tree_bytes(b)
    # warm: the machine that took it restores it from its cache, deltas included
    warm = open_store(url, cache_dir=cache, cache_bytes=64 << 20, use_key_env=False)
    warm.backend.stats.reset()
    assert data.tree_bytes(warm.get(ib.id, tmp_path / "warm")) == data.tree_bytes(b)
    assert warm.backend.stats.bytes_read == 0
    # a damaged cached delta is dropped and fetched again from S3
    cid = next(iter(warm.manifest(ib.id).file("pages.img").bases))
    hit = False
    for seg in (cache / "segments").glob("*.seg"):
        raw = bytearray(seg.read_bytes())
        at = raw.find(cid)
        if at >= 0:
            length = int.from_bytes(raw[at + 32:at + 36], "little")
            raw[at + 36 + length - 1] ^= 0x01
            seg.write_bytes(raw)
            hit = True
    assert hit
    again = open_store(url, cache_dir=cache, cache_bytes=64 << 20, use_key_env=False)
    again.backend.stats.reset()
    assert data.tree_bytes(again.get(ib.id, tmp_path / "again")) == data.tree_bytes(b)
    assert 0 < again.backend.stats.bytes_read < ib.stored_bytes
