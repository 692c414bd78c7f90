"""Stored bytes per group of snapshots (torpor.snapshots.usage): logical, stored,
exclusive and shared, checked against what deleting a group and a gc actually free."""

from __future__ import annotations

import shutil

from torpor.snapshots import open_store
from torpor.snapshots.usage import usage


def test_usage_per_group_and_what_deleting_one_frees(tmp_path, data) -> None:
    store = open_store(f"file://{tmp_path / 'store'}", use_key_env=False)
    base = data.make_checkpoint(tmp_path / "base", seed=1, npages=256)
    ids: dict[str, list[str]] = {"a": [], "b": []}
    for g, seed in (("a", 10), ("b", 20)):
        ck = tmp_path / f"ck-{g}"
        shutil.copytree(base, ck)  # both start from the same pages: shared chunks
        for i in range(3):
            data.mutate_checkpoint(ck, seed=seed + i, pages_changed=30)
            ids[g].append(store.put(ck, {"session": g}).id)
    store.put(data.make_checkpoint(tmp_path / "other", seed=99, npages=16), {"x": 1})

    got = usage(store, lambda sid, meta: meta.get("session"))
    a, b = got.groups["a"], got.groups["b"]
    assert got.snapshots == 7 and set(got.groups) == {"a", "b"}  # the 7th: no group
    assert a.snapshots == b.snapshots == 3
    assert a.logical == sum(store.info(i).logical_size for i in ids["a"])
    assert 0 < a.exclusive < a.referenced and a.shared == b.shared > 0
    assert got.live_bytes <= got.pack_bytes
    assert a.referenced + b.referenced - a.shared < got.live_bytes  # (+ the 7th's chunks)
    for sid in ids["a"]:
        store.delete(sid)
    freed = store.gc(repack_below=1.01).deleted_bytes  # (repack every pack not all live)
    assert abs(freed - a.exclusive) <= 0.02 * a.exclusive, (freed, a.exclusive)
    after = usage(store, lambda sid, meta: meta.get("session"))
    assert set(after.groups) == {"b"}
    assert after.groups["b"].referenced == b.referenced
    # what it shared with "a" is its own now (a chunk or two it shares with the 7th stays)
    assert b.exclusive < after.groups["b"].exclusive <= b.referenced
    assert after.groups["b"].exclusive > b.referenced - 0.01 * b.referenced
