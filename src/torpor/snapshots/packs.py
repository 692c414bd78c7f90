"""Pack objects (many stored chunks back to back) and their index files.

A pack ``packs/<pack>.pack`` is the concatenation of stored chunks. Next to it,
``packs/<pack>.idx`` lists, for each chunk: id, offset and length in the pack, plain
length and flags; it is written after the pack, so a pack without an index is
garbage from an interrupted put. One chunk is read with one ranged GET.

Index format 2 (``TORPORIDX2``, written only when a pack holds delta chunks) adds,
after the entries, one ``(entry number, base chunk id)`` record per delta chunk;
format 1 indexes (no deltas) are still written and read as before.

Packs target 4 MiB: a 17.5 MB gVisor checkpoint that compresses to ~4.4 MB becomes
one or two objects rather than ~4,500 per-page objects (S3 charges and spends a
round trip per request), while one pack is still small enough to upload in one PUT
and for GC to rewrite cheaply.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from .backends import Backend, new_object_id
from .errors import ObjectMissing, SnapshotCorrupt

log = logging.getLogger(__name__)

PACK_TARGET = 4 * 1024 * 1024
IDX_MAGIC = b"TORPORIDX1\n"
IDX_MAGIC2 = b"TORPORIDX2\n"
FULL_EVERY = 300.0   # seconds: ChunkIndex.sync lists every pack at least this often
LIST_SLACK = 30.0    # seconds: how far before its last listing an incremental one reaches
LIST_EVERY = 1.0     # seconds: an incremental listing at most this often
ENTRY = struct.Struct("<32sQIIB")
DELTA_ENTRY = struct.Struct("<I32s")  # entry number, base chunk id


def pack_key(pack_id: str) -> str:
    return f"packs/{pack_id}.pack"


def idx_key(pack_id: str) -> str:
    return f"packs/{pack_id}.idx"


class Location(NamedTuple):
    """Where a chunk's stored bytes live."""

    pack: str
    offset: int
    length: int
    plain_len: int
    flags: int
    base: bytes | None = None  # id of the base chunk of a delta chunk


def encode_index(entries: list[tuple[bytes, Location]], key_id: str | None) -> bytes:
    kid = (key_id or "").encode().ljust(16, b"\0")
    deltas = [(n, loc.base) for n, (_cid, loc) in enumerate(entries) if loc.base]
    if deltas:
        head = IDX_MAGIC2 + struct.pack("<16sII", kid, len(entries), len(deltas))
    else:
        head = IDX_MAGIC + struct.pack("<16sI", kid, len(entries))
    body = b"".join(ENTRY.pack(cid, loc.offset, loc.length, loc.plain_len, loc.flags)
                    for cid, loc in entries)
    tail = b"".join(DELTA_ENTRY.pack(n, base) for n, base in deltas)
    data = head + body + tail
    return data + hashlib.sha256(data).digest()


def decode_index(pack_id: str, data: bytes) -> list[tuple[bytes, Location]]:
    v2 = data.startswith(IDX_MAGIC2)
    if len(data) < len(IDX_MAGIC) + 20 + 32 or not (v2 or data.startswith(IDX_MAGIC)):
        raise SnapshotCorrupt(f"pack index {pack_id} is truncated or not an index")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotCorrupt(f"pack index {pack_id} fails its checksum")
    ndelta = 0
    if v2:
        _key, count, ndelta = struct.unpack_from("<16sII", body, len(IDX_MAGIC2))
        start = len(IDX_MAGIC2) + 24
    else:
        _key, count = struct.unpack_from("<16sI", body, len(IDX_MAGIC))
        start = len(IDX_MAGIC) + 20
    end = start + count * ENTRY.size
    if len(body) != end + ndelta * DELTA_ENTRY.size:
        raise SnapshotCorrupt(f"pack index {pack_id} has a bad length")
    out = [(cid, Location(pack_id, off, length, plain, flags))
           for cid, off, length, plain, flags in ENTRY.iter_unpack(body[start:end])]
    for n, base in DELTA_ENTRY.iter_unpack(body[end:]):
        if n >= count:
            raise SnapshotCorrupt(f"pack index {pack_id} has a bad delta entry")
        cid, loc = out[n]
        out[n] = (cid, loc._replace(base=base))
    return out


class PackWriter:
    """Accumulates stored chunks and uploads a pack + index whenever it is full."""

    def __init__(self, backend: Backend, key_id: str | None, target: int = PACK_TARGET,
                 on_flush: Callable[[str, list[tuple[bytes, Location]]], None] | None = None
                 ) -> None:
        self.backend = backend
        self.key_id = key_id
        self.target = target
        self.on_flush = on_flush
        self._parts: list[bytes] = []
        self._entries: list[tuple[bytes, Location]] = []
        self._size = 0
        self._pack = new_object_id()
        self.packs_written: list[str] = []

    def add(self, cid: bytes, stored: bytes, plain_len: int, flags: int,
            base: bytes | None = None) -> Location:
        loc = Location(self._pack, self._size, len(stored), plain_len, flags, base)
        self._parts.append(stored)
        self._entries.append((cid, loc))
        self._size += len(stored)
        if self._size >= self.target:
            self.flush()
        return loc

    def flush(self) -> None:
        if not self._entries:
            return
        self.backend.put(pack_key(self._pack), b"".join(self._parts))
        self.backend.put(idx_key(self._pack), encode_index(self._entries, self.key_id))
        self.packs_written.append(self._pack)
        if self.on_flush:
            self.on_flush(self._pack, self._entries)
        self._parts, self._entries, self._size = [], [], 0
        self._pack = new_object_id()


class ChunkIndex:
    """The store-wide map chunk id -> Location, built from all pack indexes."""

    def __init__(self, backend: Backend,
                 idx_cache: Callable[[str], bytes | None] | None = None,
                 idx_cache_put: Callable[[str, bytes], None] | None = None,
                 run_all: Callable[[Callable[[str], bool], list[str]], object] | None = None
                 ) -> None:
        self.backend = backend
        # runs a function over many pack ids on the store's threads: a store of 10,000
        # packs is 10,000 index reads for a new process's first listing (one round trip
        # each on S3)
        self._run_all = run_all
        self._packs: dict[str, list[tuple[bytes, Location]]] = {}
        self._map: dict[bytes, Location] = {}
        self._lock = threading.Lock()
        self._idx_cache = idx_cache
        self._idx_cache_put = idx_cache_put
        self.refreshed = False
        self._sync_lock = threading.Lock()
        self._epoch: str | None = None  # the gc epoch read before the last full listing
        self._synced = False
        self._full_at = 0.0    # time.time() when the last full listing began
        self._listed_at = 0.0  # ... when the last listing (full or not) began

    def _put(self, cid: bytes, loc: Location) -> None:
        """Map cid to loc unless it has a location already; a full copy of a chunk
        replaces a delta copy (so a delta base always resolves to a full chunk)."""
        have = self._map.get(cid)
        if have is None or (have.base is not None and loc.base is None):
            self._map[cid] = loc

    def add(self, pack_id: str, entries: list[tuple[bytes, Location]]) -> None:
        with self._lock:
            self._packs[pack_id] = entries
            for cid, loc in entries:
                self._put(cid, loc)

    def _drop(self, gone: set[str]) -> None:
        with self._lock:
            for pack_id in gone:
                self._packs.pop(pack_id, None)
            self._map = {}
            for entries in self._packs.values():
                for cid, loc in entries:
                    self._put(cid, loc)

    def refresh(self) -> None:
        """Load pack indexes not seen yet; forget packs that disappeared."""
        now = time.time()
        present = set()
        for key, _mtime, _size in self.backend.list("packs/"):
            if key.endswith(".idx"):
                present.add(key[len("packs/"):-len(".idx")])
        with self._lock:
            known = set(self._packs)
        if known - present:
            self._drop(known - present)
        self._load_all(sorted(present - known))
        self.refreshed = True
        self._full_at = self._listed_at = now

    def sync(self, epoch: str | None) -> None:
        """Make the index fit for a put to reuse its chunks, without listing every pack
        each time: at 10,000 snapshots that listing was most of a put's time (on S3 a
        listing of 20,000 keys takes seconds) and filling a store grew quadratic.

        epoch: the gc epoch (markers.read_epoch), read after the put found no gc running.
        Safety: a gc changes it before deleting or rewriting a pack, so if it is the one
        read before the last full listing, every pack the index holds still exists;
        otherwise (or never synced) the index lists every pack again, forgetting the
        gone. Dedup: packs written since the last listing (by other stores; this one adds
        its own as it writes them) are found by listing only the keys after the pack ids
        of LIST_SLACK seconds before that listing (ids begin with their creation time,
        backends.new_object_id); a pack whose id is older still (a put longer than the
        slack, clocks apart by more) is found by the full listing done at least every
        FULL_EVERY seconds. Puts in a burst list at most every LIST_EVERY seconds (each
        listing returns the slack's packs again). Missing a pack costs dedup only, never
        correctness.
        """
        with self._sync_lock:
            now = time.time()
            if not self._synced or epoch != self._epoch or now - self._full_at >= FULL_EVERY:
                self.refresh()
                self._epoch, self._synced = epoch, True
                return
            if now - self._listed_at < LIST_EVERY:
                return
            after = pack_key(f"{max(0, int((self._listed_at - LIST_SLACK) * 1000)):012x}")
            self._listed_at = now
            listed = [key[len("packs/"):-len(".idx")] for key, _mtime, _size
                      in self.backend.list("packs/", start_after=after) if key.endswith(".idx")]
            self._load_all([p for p in listed if p not in self._packs])

    def _load_all(self, pack_ids: list[str]) -> None:
        if self._run_all is not None and len(pack_ids) > 1:
            self._run_all(self._load, pack_ids)
        else:
            for pack_id in pack_ids:
                self._load(pack_id)

    def _load(self, pack_id: str) -> bool:
        data = self._idx_cache(pack_id) if self._idx_cache else None
        if data is not None:
            try:
                self.add(pack_id, decode_index(pack_id, data))
                return True
            except SnapshotCorrupt as exc:  # a cached copy torn by a crash: read it again
                log.warning("cached index of pack %s is damaged (%s): reading it again",
                            pack_id, exc)
                data = None
        if data is None:
            try:
                data = self.backend.get(idx_key(pack_id))
            except ObjectMissing:
                return False  # deleted since the listing (by a gc)
            if self._idx_cache_put:
                self._idx_cache_put(pack_id, data)
        self.add(pack_id, decode_index(pack_id, data))
        return True

    def ensure(self, pack_ids: list[str]) -> None:
        """Load the indexes of these packs if not loaded yet (absent ones are skipped)."""
        with self._lock:
            todo = [p for p in pack_ids if p not in self._packs]
        self._load_all(todo)

    def entries(self, pack_id: str) -> list[tuple[bytes, Location]] | None:
        """A pack's index if loaded (None: not loaded). A pack's index never changes (pack
        ids are never reused), so a loaded one needs no second read."""
        with self._lock:
            return self._packs.get(pack_id)

    def get(self, cid: bytes) -> Location | None:
        with self._lock:
            return self._map.get(cid)

    def forget_packs(self, pack_ids: set[str]) -> None:
        """Forget deleted packs (the map is rebuilt once, not once a pack: at 6,000 packs
        deleted by one gc, once a pack was quadratic)."""
        if pack_ids:
            self._drop(pack_ids)
