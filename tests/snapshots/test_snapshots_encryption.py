"""AES-256-GCM per chunk: round trip, key id in the manifest, wrong key, dedup per key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torpor.snapshots import SnapshotCorrupt, SnapshotError, SnapshotKeyError, open_store


@pytest.fixture
def key_a(tmp_path):
    p = tmp_path / "a.key"
    p.write_bytes(os.urandom(32).hex().encode() + b"\n")
    return p


def test_snapshots_encrypted_round_trip(tmp_path, checkpoint, key_a, data):
    store = open_store(str(tmp_path / "s"), key_file=key_a)
    info = store.put(checkpoint)
    assert info.key_id == store.key_id and info.key_id
    out = store.get(info.id, tmp_path / "out")
    assert data.tree_bytes(out) == data.tree_bytes(checkpoint)
    # no plain text of the state file in any pack
    needle = (checkpoint / "checkpoint.img").read_bytes()[:64]
    for pack in Path(tmp_path / "s", "packs").glob("*.pack"):
        assert needle not in pack.read_bytes()


def test_snapshots_wrong_key_and_no_key(tmp_path, checkpoint, key_a, monkeypatch):
    info = open_store(str(tmp_path / "s"), key_file=key_a).put(checkpoint)
    other = open_store(str(tmp_path / "s"), key=os.urandom(32))
    with pytest.raises(SnapshotKeyError, match="key id"):
        other.get(info.id, tmp_path / "out")
    with pytest.raises(SnapshotKeyError):
        other.open(info.id, "pages.img")
    monkeypatch.delenv("TORPOR_SNAPSHOT_KEY", raising=False)
    monkeypatch.delenv("TORPOR_SNAPSHOT_KEY_FILE", raising=False)
    none = open_store(str(tmp_path / "s"))
    with pytest.raises(SnapshotKeyError, match="no key is configured"):
        none.get(info.id, tmp_path / "out")
    # metadata stays readable without the key
    assert none.info(info.id).key_id == info.key_id


def test_snapshots_key_from_env(tmp_path, checkpoint, monkeypatch):
    key = os.urandom(32)
    monkeypatch.setenv("TORPOR_SNAPSHOT_KEY", key.hex())
    s = open_store(str(tmp_path / "s"))
    info = s.put(checkpoint)
    assert info.key_id == s.key_id
    monkeypatch.delenv("TORPOR_SNAPSHOT_KEY")
    keyfile = tmp_path / "raw.key"
    keyfile.write_bytes(key)
    monkeypatch.setenv("TORPOR_SNAPSHOT_KEY_FILE", str(keyfile))
    assert open_store(str(tmp_path / "s")).open(info.id, "pages.img").read(0, 10) == \
        (checkpoint / "pages.img").read_bytes()[:10]


def test_snapshots_dedup_within_one_key_only(tmp_path, checkpoint):
    k1, k2 = os.urandom(32), os.urandom(32)
    s1 = open_store(str(tmp_path / "s"), key=k1)
    s2 = open_store(str(tmp_path / "s"), key=k2)
    a = s1.put(checkpoint)
    assert s1.put(checkpoint).new_bytes == 0
    b = s2.put(checkpoint)
    assert b.new_bytes == b.stored_bytes and b.shared_bytes == 0
    assert a.key_id != b.key_id


def test_snapshots_tampered_ciphertext(tmp_path, checkpoint):
    s = open_store(str(tmp_path / "s"), key=os.urandom(32))
    info = s.put(checkpoint)
    for pack in Path(tmp_path / "s", "packs").glob("*.pack"):
        raw = bytearray(pack.read_bytes())
        raw[len(raw) // 2] ^= 1
        pack.write_bytes(raw)
    with pytest.raises(SnapshotCorrupt, match="decryption failed"):
        s.get(info.id, tmp_path / "out")


def test_snapshots_bad_key_material(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("too short")
    with pytest.raises(SnapshotError, match="32 bytes"):
        open_store(str(tmp_path / "s"), key_file=bad)
