"""How one channel value is stored: whole, or as what it appended to an earlier version.

A LangGraph channel such as `messages` (the `add_messages` reducer) holds a list that
grows by a few items per step, and LangGraph hands its saver the whole list at each new
version. `encode` stores a list that starts with the list of a version this process
wrote or read before (`Known`) as only the items after it, plus that version as its
`base`; anything else (another type, a list edited in the middle, nothing known) is
stored whole. `decode` rebuilds a value from its row and the rows it extends.

Pure: rows in, rows out; the saver (`saver.py`) reads and writes them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # a channel with no value (not the same as a value of None)


class Serde(Protocol):
    """LangGraph's serializer protocol (the part used here)."""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]: ...

    def loads_typed(self, data: tuple[str, bytes]) -> Any: ...


@dataclass(frozen=True)
class ValueRow:
    """One row of the values table (`torpor.db.queries.langgraph.VALUE_COLUMNS`)."""

    channel: str
    version: str
    base: str | None  # None: `data` is the whole value; else the items appended to it
    anchor: str | None  # the version of the whole row its chain starts at (None: whole)
    depth: int  # rows below this one down to a whole value
    digest: bytes  # a list's: hash of the row's type and data, chained to its base's
    type: str
    data: bytes | None

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> ValueRow:
        channel, version, base, anchor, depth, digest, type_, data = row
        return cls(channel, version, base, anchor, int(depth), bytes(digest), type_,
                   None if data is None else bytes(data))

    @property
    def chain(self) -> str:
        """The version of the whole row of its chain (its own, for a whole row)."""
        return self.anchor if self.anchor is not None else self.version


def chain_digest(base: bytes, type_: str, data: bytes | None) -> bytes:
    h = hashlib.blake2b(base, digest_size=16)
    h.update(type_.encode())
    h.update(b"\0")
    h.update(data or b"")
    return h.digest()


@dataclass(frozen=True)
class Known:
    """A list value this process wrote or read at a version, with its row's depth and
    digest: what the next version of the channel may be stored against."""

    version: str
    items: list[Any]
    depth: int
    digest: bytes
    anchor: str  # the version of the whole row of its chain


def _extends(value: list[Any], known: Known) -> bool:
    """Does `value` start with the items of `known`? Compared item by item with `==`,
    which for the same objects (LangGraph hands back the objects it was given) is an
    identity check."""
    n = len(known.items)
    if len(value) < n:
        return False
    try:
        return bool(value[:n] == known.items)
    except Exception:  # items whose == is not a bool (arrays): store it whole
        return False


def encode(serde: Serde, channel: str, version: str, value: Any, known: Known | None,
           full_every: int) -> tuple[ValueRow | None, Known | None]:
    """The row for `value` at `version` (None for no value: no row is stored, as reading
    a version without a row gives no value), and what to remember of it (None: not a
    list).

    Appended items only when `value` is a list extending `known` and the chain of rows
    below stays under `full_every`; the whole value otherwise. Only lists, which a later
    row may extend, get a digest."""
    if value is MISSING:
        return None, None
    if type(value) is not list:
        type_, data = serde.dumps_typed(value)
        return ValueRow(channel, version, None, None, 0, b"", type_, data), None
    if (known is not None and known.version != version and known.depth + 1 < full_every
            and _extends(value, known)):
        type_, data = serde.dumps_typed(value[len(known.items):])
        row = ValueRow(channel, version, known.version, known.anchor, known.depth + 1,
                       chain_digest(known.digest, type_, data), type_, data)
    else:
        type_, data = serde.dumps_typed(value)
        row = ValueRow(channel, version, None, None, 0, chain_digest(b"", type_, data),
                       type_, data)
    return row, Known(version, list(value), row.depth, row.digest, row.chain)


class BrokenChain(Exception):
    """A stored value's row extends a row that is not there."""


def decode(serde: Serde, rows: Mapping[tuple[str, str], ValueRow], channel: str,
           version: str, *, join: bool = False) -> tuple[Any, ValueRow | None]:
    """(the value of `channel` at `version`, its row) from rows keyed by (channel,
    version) that hold it and every row it extends; (MISSING, None) when it has no row or
    no value. join: the serializer's "msgpack" type is plain MessagePack (LangGraph's
    JsonPlusSerializer), so a list's rows can be decoded as one array."""
    head = row = rows.get((channel, version))
    if row is None:
        return MISSING, None
    appended: list[ValueRow] = []
    while row.base is not None:
        appended.append(row)
        below = rows.get((channel, row.base))
        if below is None or len(appended) > head.depth:  # (more rows than it said: a loop)
            raise BrokenChain(f"value of channel {channel!r} at version {version} extends "
                              f"version {row.base}, which is not stored")
        row = below
    rows_ = [row, *reversed(appended)]
    if join and appended and all(r.type == "msgpack" for r in rows_):
        joined = _join_arrays([r.data or b"" for r in rows_])
        if joined is not None:  # one decoding of the whole list, as a whole row's
            return serde.loads_typed(("msgpack", joined)), head
    value = serde.loads_typed((row.type, row.data or b""))
    if appended:
        value = list(value)
        for r in rows_[1:]:
            value.extend(serde.loads_typed((r.type, r.data or b"")))
    return value, head


def _array(data: bytes) -> tuple[int, int] | None:
    """(item count, header length) of a MessagePack array, None if `data` is not one."""
    if not data:
        return None
    first = data[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F, 1
    if first == 0xDC and len(data) >= 3:
        return int.from_bytes(data[1:3], "big"), 3
    if first == 0xDD and len(data) >= 5:
        return int.from_bytes(data[1:5], "big"), 5
    return None


def _join_arrays(blobs: list[bytes]) -> bytes | None:
    """One MessagePack array of the items of several (a list and what was appended to
    it), so that the serializer decodes it in one call, not one per row (the call costs
    more than a row's few items). Written by hand: it is a header rewrite, and the
    serializer (LangGraph's JsonPlusSerializer) has no streaming decoder to feed."""
    count, bodies = 0, []
    for blob in blobs:
        head = _array(blob)
        if head is None:
            return None
        count += head[0]
        bodies.append(memoryview(blob)[head[1]:])
    if count < 16:
        header = bytes([0x90 | count])
    elif count < 1 << 16:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return header + b"".join(bodies)


class Remembered:
    """The `Known` list of the latest version of each channel this process wrote or read,
    by (thread, namespace, channel): a bounded LRU (it holds references to the items,
    which the graph holds anyway while the thread runs), safe across threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._known: OrderedDict[tuple[str, str, str], Known] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> Known | None:
        with self._lock:
            known = self._known.get(key)
            if known is not None:
                self._known.move_to_end(key)
            return known

    def set(self, key: tuple[str, str, str], known: Known | None) -> None:
        with self._lock:
            if known is None or self.size <= 0:
                self._known.pop(key, None)
                return
            self._known[key] = known
            self._known.move_to_end(key)
            while len(self._known) > self.size:
                self._known.popitem(last=False)

    def forget(self, thread_id: str) -> None:
        with self._lock:
            for key in [k for k in self._known if k[0] == thread_id]:
                del self._known[key]
