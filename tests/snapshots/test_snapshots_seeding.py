"""Restoring a snapshot with older ones on local disk as seeds: shared chunks are copied
from them, only the others fetched, and the result is the same file byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.snapshots.conftest import make_checkpoint
from tests.snapshots.test_snapshots_delta import edit_pages
from torpor.snapshots import SnapshotStore
from torpor.snapshots.manifest import FileTable
from torpor.snapshots.seeding import plan

PAGE = 4096
ZERO = b"z" * 32


def table(ids: list[bytes], size: int = PAGE) -> FileTable:
    return FileTable("pages.img", size * len(ids),
                     [[i * size, size, cid.hex()] for i, cid in enumerate(ids)])  # fmt: skip


def cid(n: int) -> bytes:
    return n.to_bytes(32, "big")


def test_plan_copies_shared_runs_and_fetches_the_rest():
    seed = table([cid(1), cid(2), cid(3), cid(4)])
    target = table([cid(1), cid(2), cid(9), cid(4), ZERO])
    p = plan(target, [seed], frozenset({ZERO}))
    # pages 0-1 in one run, page 3 alone; page 2 is new; the zero page is a hole
    assert p.copies == [(0, 0, 0, 2 * PAGE), (0, 3 * PAGE, 3 * PAGE, PAGE)]
    assert p.fetch == [2]
    assert p.copied_bytes == 3 * PAGE


def test_plan_finds_shifted_pages_and_uses_the_first_seed_that_has_them():
    older = table([cid(7), cid(1)])
    newer = table([cid(1), cid(2), cid(3)])
    # two pages inserted at the front: everything after shifts by two pages
    target = table([cid(5), cid(6), cid(1), cid(2), cid(3), cid(7)])
    p = plan(target, [newer, older])
    assert p.copies == [(0, 2 * PAGE, 0, 3 * PAGE), (1, 5 * PAGE, 0, PAGE)]
    assert p.fetch == [0, 1]


def test_plan_without_seeds_fetches_everything_but_holes():
    target = table([cid(1), ZERO, cid(1)])
    p = plan(target, [], frozenset({ZERO}))
    assert p.copies == [] and p.fetch == [0, 2]


def test_get_with_a_seed_fetches_only_what_changed(store: SnapshotStore, tmp_path: Path):
    v1 = make_checkpoint(tmp_path / "v1", seed=3, npages=2048)
    s1 = store.put(v1).id
    v2 = tmp_path / "v2"
    edit_pages(v1, v2, seed=4, pages=30, insert_at=100)  # shifted pages, some changed
    s2 = store.put(v2, parent=s1).id

    plain = tmp_path / "plain"
    store.stats.reset()
    store.get(s2, plain)
    fetched_plain = store.stats.chunks_fetched

    seeded = tmp_path / "seeded"
    store.stats.reset()
    store.get(s2, seeded, seeds=[(s1, v1)], sync=False)
    for name in ("pages.img", "checkpoint.img", "pages_meta.img"):
        assert (seeded / name).read_bytes() == (v2 / name).read_bytes() == \
            (plain / name).read_bytes(), name  # fmt: skip
    assert store.stats.bytes_from_seeds > 0.5 * (v2 / "pages.img").stat().st_size
    # 30 edited + 2 inserted pages (and their delta bases) against ~1,500 without a seed
    assert store.stats.chunks_fetched < fetched_plain / 5, (store.stats.chunks_fetched,
                                                            fetched_plain)  # fmt: skip


def test_a_seed_that_is_unknown_or_the_wrong_size_is_ignored(store: SnapshotStore,
                                                             tmp_path: Path):  # fmt: skip
    v1 = make_checkpoint(tmp_path / "v1", seed=5, npages=256)
    s1 = store.put(v1).id
    v2 = tmp_path / "v2"
    edit_pages(v1, v2, seed=6, pages=5)
    s2 = store.put(v2, parent=s1).id
    short = tmp_path / "short"
    shutil.copytree(v1, short)
    with open(short / "pages.img", "r+b") as f:
        f.truncate(PAGE * 10)
    out = tmp_path / "out"
    store.stats.reset()
    store.get(s2, out, seeds=[("no-such-snapshot", v1), (s1, short), (s1, tmp_path / "gone")])
    assert (out / "pages.img").read_bytes() == (v2 / "pages.img").read_bytes()
    assert (out / "checkpoint.img").read_bytes() == (v2 / "checkpoint.img").read_bytes()
    # the short copy's other files are the right size and are used; its pages.img is not
    others = sum((short / n).stat().st_size for n in ("checkpoint.img", "pages_meta.img"))
    assert 0 < store.stats.bytes_from_seeds <= others
