"""How the chunk fetcher groups chunks into ranged reads (pure: no store)."""

from __future__ import annotations

from torpor.snapshots.fetch import MAX_GAP, MAX_RUN, coalesce
from torpor.snapshots.packs import Location


def cid(n: int) -> bytes:
    return n.to_bytes(32, "big")


def test_coalesce_joins_near_chunks_of_a_pack_and_splits_at_gaps_and_size():
    locs = {
        cid(1): Location("a", 0, 100, 4096, 1),
        cid(2): Location("a", 100 + MAX_GAP, 100, 4096, 1),        # gap of MAX_GAP: joined
        cid(3): Location("a", 201 + 2 * MAX_GAP, 100, 4096, 1),    # one byte more: new read
        cid(4): Location("b", 50, 10, 4096, 1),                    # another pack
        cid(5): Location("c", 0, MAX_RUN - 10, 4096, 1),
        cid(6): Location("c", MAX_RUN - 10, 10, 4096, 1),          # a read of MAX_RUN: joined
        cid(7): Location("c", MAX_RUN, 1, 4096, 1),                # one byte more: new read
    }
    runs = [(pack, [c for c, _ in items]) for pack, items in coalesce(locs)]
    assert runs == [("a", [cid(1), cid(2)]), ("a", [cid(3)]), ("b", [cid(4)]),
                    ("c", [cid(5), cid(6)]), ("c", [cid(7)])]


def test_coalesce_orders_a_run_by_offset():
    locs = {cid(1): Location("p", 500, 10, 10, 0), cid(2): Location("p", 0, 10, 10, 0)}
    assert [[c for c, _ in items] for _, items in coalesce(locs)] == [[cid(2), cid(1)]]
