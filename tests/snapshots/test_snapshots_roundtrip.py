"""Round trips through the file store: files, checkpoint directories, random data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torpor.snapshots import SnapshotCorrupt, SnapshotNotFound, open_store


def test_snapshots_directory_round_trip(store, checkpoint, tmp_path, data):
    info = store.put(checkpoint, {"sandbox": "sb1", "session": "s1"}, engine="gvisor",
                     engine_version="20240729", image_digest="sha256:abc", parent=None)
    assert info.logical_size == sum(p.stat().st_size for p in checkpoint.iterdir())
    assert set(info.files) == {"checkpoint.img", "pages.img", "pages_meta.img"}
    assert 0 < info.stored_bytes < info.logical_size
    assert info.new_bytes == info.stored_bytes and info.shared_bytes == 0
    assert info.seconds > 0
    out = store.get(info.id, tmp_path / "restored")
    assert data.tree_bytes(out) == data.tree_bytes(checkpoint)

    got = store.info(info.id)
    assert got.engine == "gvisor" and got.engine_version == "20240729"
    assert got.image_digest == "sha256:abc" and got.meta["sandbox"] == "sb1"


def test_snapshots_single_file_round_trip(store, tmp_path):
    src = tmp_path / "mem.pages"
    src.write_bytes(os.urandom(3 * 4096 + 123))
    info = store.put(src, {"kind": "vm-memory"})
    assert info.single_file
    dest = store.get(info.id, tmp_path / "back.bin")
    assert dest.read_bytes() == src.read_bytes()
    # into a directory: keeps the stored name
    (tmp_path / "d").mkdir()
    assert store.get(info.id, tmp_path / "d").read_bytes() == src.read_bytes()
    assert (tmp_path / "d" / "mem.pages").exists()


def test_snapshots_empty_and_nested_files(store, tmp_path, data):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty").write_bytes(b"")
    (src / "sub" / "deeper" / "x.txt").write_bytes(b"hello\n" * 1000)
    info = store.put(src)
    out = store.get(info.id, tmp_path / "out")
    assert data.tree_bytes(out) == data.tree_bytes(src)


def test_snapshots_unknown_id(store, tmp_path):
    for bad in ("20990101T000000-deadbeef", "../../etc/passwd", ""):
        with pytest.raises(SnapshotNotFound) as exc:
            store.info(bad)
        with pytest.raises(SnapshotNotFound):
            store.get(bad, tmp_path / "x")
        with pytest.raises(SnapshotNotFound):
            store.open(bad)
        with pytest.raises(SnapshotNotFound):
            store.delete(bad)
    assert "not found" in str(exc.value)


def test_snapshots_list_filter_and_retention(store, tmp_path):
    src = tmp_path / "f.bin"
    ids = {}
    for session in ("a", "b"):
        for n in range(4):
            src.write_bytes(f"{session}{n}".encode() * 5000)
            ids[(session, n)] = store.put(src, {"session": session, "n": n}).id
    assert [i.id for i in store.list(session="a")] == [ids[("a", n)] for n in range(4)]
    assert [i.id for i in store.list({"session": "b", "n": 2})] == [ids[("b", 2)]]
    assert len(store.list()) == 8
    deleted = store.retain(2, by="session")
    assert sorted(deleted) == sorted(ids[(s, n)] for s in "ab" for n in (0, 1))
    assert [i.meta["n"] for i in store.list(session="a")] == [2, 3]
    store.delete(ids[("a", 3)])
    with pytest.raises(SnapshotNotFound):
        store.info(ids[("a", 3)])
    assert store.gc().aborted is None
    assert store.get(ids[("b", 3)], tmp_path / "o").read_bytes() == b"b3" * 5000


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(min_size=0, max_size=300_000),
       name=st.sampled_from(["pages.img", "checkpoint.img", "x.pages"]),
       repeat=st.integers(min_value=1, max_value=4))
def test_snapshots_random_round_trip(tmp_path_factory, blob, name, repeat):
    root = tmp_path_factory.mktemp("rt")
    store = open_store(str(root / "store"), use_key_env=False)
    src = root / name
    src.write_bytes(blob * repeat)
    info = store.put(src)
    assert store.get(info.id, root / "out").read_bytes() == blob * repeat
    if blob:
        with store.open(info.id) as r:
            mid = len(blob) * repeat // 2
            assert r.read(mid, 9999) == (blob * repeat)[mid:mid + 9999]
    store.close()


def test_snapshots_get_leaves_no_partial_file_on_error(store, checkpoint, tmp_path):
    info = store.put(checkpoint)
    for p in Path(store.backend.root, "packs").glob("*.pack"):
        p.write_bytes(b"\0" * p.stat().st_size)
    with pytest.raises(SnapshotCorrupt, match=info.id):
        store.get(info.id, tmp_path / "out")
    out = tmp_path / "out"
    names = {p.name for p in out.rglob("*")} if out.exists() else set()
    assert not names & {"pages.img", "checkpoint.img", "pages_meta.img"}
    assert not [n for n in names if ".part-" in n]
