"""How TorporSaver stores one channel value (values.py), without a database: a list that
extends a remembered one is stored as what it appended, anything else whole, and a
value rebuilt from its rows is the value, whichever way the rows are decoded."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from torpor.integrations.langgraph.values import (
    MISSING,
    BrokenChain,
    Known,
    Remembered,
    ValueRow,
    decode,
    encode,
)

SERDE = JsonPlusSerializer()


def store(values: list[Any], full_every: int = 1000) -> dict[tuple[str, str], ValueRow]:
    """Encode successive versions of channel "c", as put does, each against the last."""
    rows: dict[tuple[str, str], ValueRow] = {}
    known = None
    for i, value in enumerate(values):
        row, known = encode(SERDE, "c", f"v{i:04d}", value, known, full_every)
        if row is not None:
            rows[("c", row.version)] = row
    return rows


@pytest.mark.parametrize("join", [True, False])
def test_a_growing_list_is_stored_as_appended_items_and_read_back(join: bool):
    msgs = [HumanMessage(f"m{i}", id=str(i)) if i % 2 else AIMessage(f"a{i}", id=str(i))
            for i in range(40)]
    versions = [msgs[:n] for n in range(1, 41)]
    rows = store(versions)
    assert [r.base for r in rows.values()] == [None] + [f"v{i:04d}" for i in range(39)]
    assert [r.depth for r in rows.values()] == list(range(40))
    assert {r.anchor for r in rows.values()} == {None, "v0000"}
    for i, value in enumerate(versions):
        got, head = decode(SERDE, rows, "c", f"v{i:04d}", join=join)
        assert got == value and head is rows[("c", f"v{i:04d}")]
    # one appended message costs its own bytes, not the list's
    assert len(rows[("c", "v0039")].data) < len(SERDE.dumps_typed(msgs[-1:])[1]) + 4


@pytest.mark.parametrize("sizes", [[3, 10, 20], [10, 70_000, 70_010]])
def test_joined_arrays_cross_the_header_sizes(sizes: list[int]):
    big = list(range(sizes[-1]))
    rows = store([big[:n] for n in sizes])
    for i, n in enumerate(sizes):
        assert decode(SERDE, rows, "c", f"v{i:04d}", join=True)[0] == big[:n]


def test_what_is_stored_whole():
    rows = store([[1, 2], [1, 2, 3], [9, 2, 3, 4], {"a": 1}, [5], [5, 6], MISSING, [5, 6, 7]])
    bases = {v: r.base for (_, v), r in rows.items()}
    assert bases == {"v0000": None, "v0001": "v0000",
                     "v0002": None,  # edited in the middle
                     "v0003": None,  # not a list (and no digest: nothing extends it)
                     "v0004": None, "v0005": "v0004",
                     # v0006: no value, no row; what was remembered is forgotten
                     "v0007": None}
    assert rows[("c", "v0003")].digest == b"" and rows[("c", "v0004")].digest
    assert decode(SERDE, rows, "c", "v0006") == (MISSING, None)
    assert decode(SERDE, rows, "c", "v0002")[0] == [9, 2, 3, 4]


def test_full_every_and_a_broken_chain():
    rows = store([list(range(n)) for n in range(1, 11)], full_every=3)
    assert [r.depth for r in rows.values()] == [0, 1, 2] * 3 + [0]
    assert decode(SERDE, rows, "c", "v0008", join=True)[0] == list(range(9))
    del rows[("c", "v0006")]
    with pytest.raises(BrokenChain, match="extends version v0006, which is not stored"):
        decode(SERDE, rows, "c", "v0008")


def test_a_list_is_not_appended_to_its_own_version_nor_to_items_that_differ():
    known = Known("v1", [1, 2], 0, b"d", "v1")
    assert encode(SERDE, "c", "v1", [1, 2, 3], known, 10)[0].base is None
    assert encode(SERDE, "c", "v2", [1, 3, 3], known, 10)[0].base is None
    assert encode(SERDE, "c", "v2", [1], known, 10)[0].base is None
    row, after = encode(SERDE, "c", "v2", [1, 2, 3], known, 10)
    assert row.base == "v1" and row.anchor == "v1"
    assert after == Known("v2", [1, 2, 3], 1, row.digest, "v1")


def test_remembered_is_a_bounded_lru():
    mem = Remembered(2)
    for key in ("a", "b", "c"):
        mem.set(("t", "", key), Known(key, [], 0, b"", key))
    assert mem.get(("t", "", "a")) is None and mem.get(("t", "", "b")) is not None
    mem.set(("u", "", "d"), Known("d", [], 0, b"", "d"))  # evicts c (b was used last)
    assert mem.get(("t", "", "c")) is None
    mem.forget("t")
    assert mem.get(("t", "", "b")) is None and mem.get(("u", "", "d")) is not None
