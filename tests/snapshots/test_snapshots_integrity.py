"""Verification on read: corrupt chunks, packs, indexes and manifests raise SnapshotCorrupt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torpor.snapshots import SnapshotCorrupt, SnapshotNotFound
from torpor.snapshots.packs import decode_index


def _packs(store) -> list[Path]:
    return sorted(Path(store.backend.root, "packs").glob("*.pack"))


def _first_chunk(store, snapshot_id: str, name: str) -> tuple[str, int, int]:
    """(chunk id hex, offset in its pack, pack path) of the first chunk of a file."""
    reader = store.open(snapshot_id, name)
    cid = reader.table.ids[0]
    for pack in _packs(store):
        idx = pack.with_suffix(".idx")
        for c, loc in decode_index(pack.stem, idx.read_bytes()):
            if c == cid:
                return cid.hex(), loc.offset, pack
    raise AssertionError("chunk not found")


def test_snapshots_flipped_byte_in_chunk(store, checkpoint, tmp_path):
    info = store.put(checkpoint)
    cid, offset, pack = _first_chunk(store, info.id, "checkpoint.img")
    raw = bytearray(pack.read_bytes())
    raw[offset + 10] ^= 0x40
    pack.write_bytes(raw)
    with pytest.raises(SnapshotCorrupt) as exc:
        store.get(info.id, tmp_path / "out")
    assert info.id in str(exc.value) and cid in str(exc.value)
    assert exc.value.snapshot_id == info.id and exc.value.chunk_id == cid
    with pytest.raises(SnapshotCorrupt):
        store.open(info.id, "checkpoint.img").read(0, 100)
    # a file whose chunks are intact still reads
    assert store.open(info.id, "pages_meta.img").read(0, 16) == \
        (checkpoint / "pages_meta.img").read_bytes()[:16]


def test_snapshots_truncated_pack(store, checkpoint, tmp_path):
    info = store.put(checkpoint)
    for pack in _packs(store):
        pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
    with pytest.raises(SnapshotCorrupt, match=info.id):
        store.get(info.id, tmp_path / "out")


def test_snapshots_missing_pack_is_reported(store, checkpoint, tmp_path):
    info = store.put(checkpoint)
    for pack in _packs(store):
        pack.unlink()
    with pytest.raises(SnapshotCorrupt, match="missing"):
        store.get(info.id, tmp_path / "out")


def test_snapshots_missing_chunk_is_reported(store, checkpoint, tmp_path):
    info = store.put(checkpoint)
    for pack in _packs(store):
        pack.unlink()
        pack.with_suffix(".idx").unlink()
    with pytest.raises(SnapshotCorrupt, match="chunk .* missing") as exc:
        store.get(info.id, tmp_path / "out")
    assert exc.value.snapshot_id == info.id and exc.value.chunk_id


def test_snapshots_corrupt_pack_index(store, checkpoint, tmp_path):
    info = store.put(checkpoint)
    idx = next(Path(store.backend.root, "packs").glob("*.idx"))
    raw = bytearray(idx.read_bytes())
    raw[40] ^= 1
    idx.write_bytes(raw)
    fresh = type(store)(store.backend)
    with pytest.raises(SnapshotCorrupt, match="index"):
        fresh.get(info.id, tmp_path / "out")


def test_snapshots_tampered_manifest(store, checkpoint):
    info = store.put(checkpoint, {"tenant": "a"})
    path = Path(store.backend.root, "snapshots", f"{info.id}.json")
    doc = json.loads(path.read_bytes())
    doc["meta"]["tenant"] = "b"
    path.write_text(json.dumps(doc))
    with pytest.raises(SnapshotCorrupt, match="manifest checksum"):
        store.info(info.id)
    path.write_bytes(b"{not json")
    with pytest.raises(SnapshotCorrupt, match=info.id):
        store.open(info.id, "pages.img")


def test_snapshots_tampered_seek_table(store, checkpoint):
    info = store.put(checkpoint)
    table = Path(store.backend.root, "snapshots", f"{info.id}.table.zst")
    raw = bytearray(table.read_bytes())
    raw[-5] ^= 0xFF
    table.write_bytes(raw)
    with pytest.raises(SnapshotCorrupt, match="seek table"):
        store.open(info.id, "pages.img")
    table.unlink()
    with pytest.raises(SnapshotCorrupt, match="seek table is missing"):
        store.open(info.id, "pages.img")
    assert store.info(info.id).id == info.id  # the summary alone still reads


def test_snapshots_other_snapshots_survive_corruption(store, tmp_path, data):
    a = data.make_checkpoint(tmp_path / "a", seed=1, npages=64)
    b = data.make_checkpoint(tmp_path / "b", seed=2, npages=64)
    ia = store.put(a)
    ib = store.put(b)
    Path(store.backend.root, "snapshots", f"{ia.id}.json").write_bytes(b"garbage")
    with pytest.raises(SnapshotCorrupt):
        store.info(ia.id)
    out = store.get(ib.id, tmp_path / "out")
    assert data.tree_bytes(out) == data.tree_bytes(b)
    with pytest.raises(SnapshotNotFound):
        store.info("20000101T000000-00000000")
