"""The S3 backend against a real S3 API server on loopback, with the local chunk cache."""

from __future__ import annotations

import os

import pytest

from torpor.snapshots import SnapshotCorrupt, SnapshotKeyError, SnapshotNotFound, open_store

pytestmark = pytest.mark.s3


def test_snapshots_s3_round_trip_and_dedup(s3_bucket, tmp_path, checkpoint, data):
    store = open_store(f"s3://{s3_bucket}/team/a", cache_bytes=0, use_key_env=False)
    assert store.backend.remote and store.cache is None
    first = store.put(checkpoint, {"session": "s3"})
    data.mutate_checkpoint(checkpoint, seed=2)
    second = store.put(checkpoint, {"session": "s3"})
    assert second.new_bytes <= 0.10 * first.stored_bytes
    out = store.get(second.id, tmp_path / "out")
    assert data.tree_bytes(out) == data.tree_bytes(checkpoint)
    assert [i.id for i in store.list(session="s3")] == [first.id, second.id]
    # a few large objects per snapshot, not one per chunk
    import boto3
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket=s3_bucket, Prefix="team/a/")["Contents"]]
    assert all(k.startswith("team/a/") for k in keys)
    assert len([k for k in keys if k.endswith(".pack")]) <= 4
    store.delete(first.id)
    res = store.gc()
    assert res.aborted is None
    with pytest.raises(SnapshotNotFound):
        store.get(first.id, tmp_path / "x")
    assert data.tree_bytes(store.get(second.id, tmp_path / "o2")) == data.tree_bytes(checkpoint)


def test_snapshots_s3_cached_metadata_torn_by_a_crash_is_read_again(s3_bucket, tmp_path,
                                                                   checkpoint, data):  # fmt: skip
    # The chunk cache's copies of info documents and pack indexes are not fsynced: after a
    # power cut one may be empty or cut short. It is dropped and read from S3 again.
    url = f"s3://{s3_bucket}/t"
    cache = tmp_path / "cache"
    info = open_store(url, cache_bytes=0, use_key_env=False).put(checkpoint)
    # another machine reads it: the info document and the pack indexes are cached there
    open_store(url, cache_dir=cache, cache_bytes=64 << 20, use_key_env=False).get(
        info.id, tmp_path / "first")  # fmt: skip
    torn = [m for m in sorted((cache / "meta").iterdir()) if m.name.endswith((".json", ".idx"))]
    assert any(m.name.endswith(".idx") for m in torn) and any(
        m.name.endswith(".json") for m in torn)  # fmt: skip
    for m in torn:
        m.write_bytes(m.read_bytes()[: len(m.read_bytes()) // 3])
    again = open_store(url, cache_dir=cache, cache_bytes=64 << 20, use_key_env=False)
    out = again.get(info.id, tmp_path / "out")
    assert data.tree_bytes(out) == data.tree_bytes(checkpoint)
    again.put(checkpoint)  # and puts (which read every index) work too


def test_snapshots_s3_cache_cold_and_warm(s3_bucket, tmp_path, checkpoint, data):
    url = f"s3://{s3_bucket}/c"
    writer = open_store(url, cache_bytes=0, use_key_env=False)
    info = writer.put(checkpoint)
    cache = tmp_path / "cache"
    reader = open_store(url, cache_dir=cache, cache_bytes=64 << 20, use_key_env=False)

    reader.backend.stats.reset()
    out = reader.get(info.id, tmp_path / "cold")
    assert data.tree_bytes(out) == data.tree_bytes(checkpoint)
    cold = reader.backend.stats.as_dict()
    assert cold["range_gets"] >= 1 and cold["bytes_read"] > 0.9 * info.stored_bytes
    assert reader.stats.chunks_from_cache == 0

    # warm: a new process-like store on the same cache reads no chunk from the network
    again = open_store(url, cache_dir=cache, cache_bytes=64 << 20, use_key_env=False)
    again.backend.stats.reset()
    out = again.get(info.id, tmp_path / "warm")
    assert data.tree_bytes(out) == data.tree_bytes(checkpoint)
    warm = again.backend.stats.as_dict()
    assert warm["range_gets"] == 0 and warm["gets"] == 0 and warm["lists"] == 0
    assert warm["bytes_read"] == 0 and warm["heads"] <= 1  # only "does it still exist?"
    # every chunk but the all-zero page, which is never fetched: it is left as a hole
    assert again.stats.chunks_from_cache == info.unique_chunks - 1

    # random access is served from the cache too
    r = again.open(info.id, "pages.img")
    assert r.read(5000, 100) == (checkpoint / "pages.img").read_bytes()[5000:5100]
    assert again.backend.stats.range_gets == 0


def test_snapshots_s3_put_warms_the_cache(s3_bucket, tmp_path, checkpoint, data):
    store = open_store(f"s3://{s3_bucket}/w", cache_dir=tmp_path / "c",
                       cache_bytes=64 << 20, use_key_env=False)
    info = store.put(checkpoint)
    store.backend.stats.reset()
    store.get(info.id, tmp_path / "out")
    assert store.backend.stats.bytes_read == 0


def test_snapshots_s3_cache_is_capped_lru(s3_bucket, tmp_path, data):
    url = f"s3://{s3_bucket}/lru"
    src = data.make_checkpoint(tmp_path / "ck", seed=8, npages=1024)
    info = open_store(url, cache_bytes=0, use_key_env=False).put(src)
    cap = info.stored_bytes // 4
    store = open_store(url, cache_dir=tmp_path / "c", cache_bytes=cap, use_key_env=False)
    store.get(info.id, tmp_path / "out")
    assert 0 < store.cache.size <= cap
    on_disk = sum(p.stat().st_size for p in (tmp_path / "c" / "segments").glob("*"))
    assert on_disk <= cap
    # what is left in the cache is the most recently read part, and still serves reads
    again = open_store(url, cache_dir=tmp_path / "c", cache_bytes=cap, use_key_env=False)
    again.get(info.id, tmp_path / "out2")
    assert 0 < again.stats.chunks_from_cache < info.unique_chunks
    assert data.tree_bytes(tmp_path / "out2") == data.tree_bytes(src)


def test_snapshots_s3_corrupt_cache_entry_is_refetched(s3_bucket, tmp_path, checkpoint, data):
    url = f"s3://{s3_bucket}/cc"
    store = open_store(url, cache_dir=tmp_path / "c", cache_bytes=64 << 20, use_key_env=False)
    info = store.put(checkpoint)
    store.close()
    for p in (tmp_path / "c" / "segments").glob("*.seg"):
        raw = bytearray(p.read_bytes())
        for i in range(100, len(raw), 50):
            raw[i] ^= 0x20
        p.write_bytes(raw)
    fresh = open_store(url, cache_dir=tmp_path / "c", cache_bytes=64 << 20, use_key_env=False)
    out = fresh.get(info.id, tmp_path / "out")
    assert data.tree_bytes(out) == data.tree_bytes(checkpoint)
    assert fresh.stats.chunks_fetched > 0


def test_snapshots_s3_corrupt_object_detected(s3_bucket, tmp_path, checkpoint):
    import boto3

    url = f"s3://{s3_bucket}/bad"
    store = open_store(url, cache_bytes=0, use_key_env=False)
    info = store.put(checkpoint)
    s3 = boto3.client("s3")
    for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="bad/packs/")["Contents"]:
        if o["Key"].endswith(".pack"):
            body = bytearray(s3.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read())
            body[len(body) // 3] ^= 0x55
            s3.put_object(Bucket=s3_bucket, Key=o["Key"], Body=bytes(body))
    with pytest.raises(SnapshotCorrupt, match=info.id):
        store.get(info.id, tmp_path / "out")


def test_snapshots_s3_query_options(s3_bucket, s3_env, tmp_path, monkeypatch, checkpoint):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    store = open_store(f"s3://{s3_bucket}/q?endpoint={s3_env}&region=us-east-1&cache_bytes=0",
                       use_key_env=False)
    assert store.cache is None
    info = store.put(checkpoint / "pages_meta.img")
    assert store.open(info.id).read(0, 8) == (checkpoint / "pages_meta.img").read_bytes()[:8]


def test_snapshots_s3_encrypted_with_cache(s3_bucket, tmp_path, checkpoint, data):
    key = os.urandom(32)
    url = f"s3://{s3_bucket}/enc"
    store = open_store(url, key=key, cache_dir=tmp_path / "c", cache_bytes=64 << 20)
    info = store.put(checkpoint)
    store.close()
    needle = (checkpoint / "checkpoint.img").read_bytes()[:64]
    for seg in (tmp_path / "c" / "segments").glob("*.seg"):
        assert needle not in seg.read_bytes()  # the cache holds stored (encrypted) chunks
    again = open_store(url, key=key, cache_dir=tmp_path / "c", cache_bytes=64 << 20)
    again.backend.stats.reset()
    assert data.tree_bytes(again.get(info.id, tmp_path / "out")) == data.tree_bytes(checkpoint)
    assert again.backend.stats.bytes_read == 0
    with pytest.raises(SnapshotKeyError):
        open_store(url, key=os.urandom(32), cache_dir=tmp_path / "c",
                   cache_bytes=64 << 20).get(info.id, tmp_path / "x")
