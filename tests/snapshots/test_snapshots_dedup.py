"""Dedup across snapshots: a second checkpoint after a small change stores few new bytes."""

from __future__ import annotations

import shutil

from torpor.snapshots import open_store


def test_snapshots_second_snapshot_small_change(store, checkpoint, tmp_path, data):
    first = store.put(checkpoint, {"session": "s"})
    data.mutate_checkpoint(checkpoint, seed=7, pages_changed=20, state_edits=3)
    second = store.put(checkpoint, {"session": "s"}, parent=first.id)
    assert second.parent == first.id
    assert second.shared_bytes + second.new_bytes == second.stored_bytes
    # 20 of 1024 pages changed, state edited in 3 places: the goal is <= 10 %
    assert second.new_bytes <= 0.10 * first.stored_bytes, (first, second)
    assert second.shared_bytes >= 0.85 * second.stored_bytes
    out = store.get(second.id, tmp_path / "out")
    assert data.tree_bytes(out) == data.tree_bytes(checkpoint)


def test_snapshots_identical_put_stores_nothing_new(store, checkpoint):
    a = store.put(checkpoint)
    b = store.put(checkpoint)
    assert b.new_bytes == 0 and b.shared_bytes == a.stored_bytes
    assert b.id != a.id


def test_snapshots_repeated_pages_stored_once(store, tmp_path):
    page = bytes(range(256)) * 16
    src = tmp_path / "pages.img"
    src.write_bytes(page * 500 + bytes(4096) * 500)
    info = store.put(src)
    assert info.chunk_count == 1000 and info.unique_chunks == 2
    assert info.stored_bytes < 1000  # two chunks, compressed


def test_snapshots_page_dedup_beats_cdc_on_scattered_changes(tmp_path, data):
    """Page-granular chunking of pages.img (default) against content-defined chunking."""
    results = {}
    for page_chunks in (True, False):
        ck = data.make_checkpoint(tmp_path / f"ck{page_chunks}", seed=3, npages=2048)
        s = open_store(str(tmp_path / f"store{page_chunks}"), page_chunks=page_chunks,
                       use_key_env=False)
        a = s.put(ck)
        data.mutate_checkpoint(ck, seed=9, pages_changed=40, state_edits=2)
        b = s.put(ck)
        results[page_chunks] = (a.stored_bytes, b.new_bytes)
        s.close()
        shutil.rmtree(ck)
    assert results[True][1] < results[False][1] / 2, results
