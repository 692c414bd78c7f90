"""A size-capped LRU cache on local disk for chunks, manifests and pack indexes of a
remote store, so that a restore on the machine that took (or last read) a snapshot
reads nothing from the network.

Chunks are kept in their stored form (compressed, and encrypted when the store has
a key), so the cache holds no plain data an at-rest key would protect; they are
verified on every read like any other chunk, and a bad entry is dropped and fetched
again. Chunks are appended to segment files of a few MiB (creating one file per
4 KiB chunk costs ~0.5 ms on the disks measured here, more than fetching it);
eviction drops the oldest segment, and a hit on a chunk in the older half of the
segments copies it forward, which makes the whole an approximate LRU. Manifests
and pack indexes are immutable and small; they are kept as files outside the cap.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

RECORD = struct.Struct("<32sI")  # chunk id, stored length; then the bytes


class ChunkCache:
    def __init__(self, root: str | os.PathLike[str], max_bytes: int,
                 segment_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(64 << 10, min(64 << 20, max_bytes // 8))
        self._lock = threading.Lock()
        self._index: dict[bytes, tuple[int, int, int]] = {}  # id -> segment, offset, length
        self._members: dict[int, list[bytes]] = {}
        self._sizes: dict[int, int] = {}
        self._fds: dict[int, int] = {}
        self._segdir = self.root / "segments"
        self._segdir.mkdir(parents=True, exist_ok=True)
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        for path in sorted(self._segdir.glob("*.seg")):
            self._scan(int(path.stem), path)
        self._active = max(self._sizes, default=-1) + 1
        self._open_segment(self._active)
        with self._lock:
            self._evict()

    @property
    def size(self) -> int:
        return sum(self._sizes.values())

    def _seg_path(self, seg: int) -> Path:
        return self._segdir / f"{seg:010d}.seg"

    def _scan(self, seg: int, path: Path) -> None:
        data = path.read_bytes()
        pos = 0
        members = []
        while pos + RECORD.size <= len(data):
            cid, length = RECORD.unpack_from(data, pos)
            if pos + RECORD.size + length > len(data):
                break
            self._index[cid] = (seg, pos + RECORD.size, length)
            members.append(cid)
            pos += RECORD.size + length
        if pos < len(data):  # a torn record from a crash: cut it off
            log.warning("chunk cache segment %s ends in a torn record: cut at %d of %d bytes",
                        path, pos, len(data))
            os.truncate(path, pos)
        self._members[seg] = members
        self._sizes[seg] = pos
        self._fds[seg] = os.open(path, os.O_RDWR)

    def _open_segment(self, seg: int) -> None:
        self._fds[seg] = os.open(self._seg_path(seg), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._members[seg] = []
        self._sizes[seg] = 0

    def get(self, name: str) -> bytes | None:
        cid = bytes.fromhex(name)
        with self._lock:
            where = self._index.get(cid)
            fd = self._fds.get(where[0]) if where else None
        if where is None or fd is None:
            return None
        seg, off, length = where
        try:
            data = os.pread(fd, length, off)
        except OSError as exc:  # a miss: the chunk is fetched from the store
            log.warning("chunk cache read of %s failed: %s", name, exc)
            return None
        if len(data) != length:
            return None
        with self._lock:
            segs = sorted(self._sizes)
            if len(segs) > 2 and seg in segs[: len(segs) // 2] and self._index.get(cid) == where:
                self._append(cid, data)  # keep it: copy forward
        return data

    def put(self, name: str, data: bytes) -> None:
        if len(data) + RECORD.size > self.max_bytes:
            return
        cid = bytes.fromhex(name)
        with self._lock:
            if cid in self._index:
                return
            self._append(cid, data)

    def _append(self, cid: bytes, data: bytes) -> None:
        if self._sizes[self._active] >= self.segment_bytes:
            self._active += 1
            self._open_segment(self._active)
        seg = self._active
        off = self._sizes[seg]
        os.write(self._fds[seg], RECORD.pack(cid, len(data)) + data)
        self._index[cid] = (seg, off + RECORD.size, len(data))
        self._members[seg].append(cid)
        self._sizes[seg] = off + RECORD.size + len(data)
        self._evict()

    def discard(self, name: str) -> None:
        with self._lock:
            self._index.pop(bytes.fromhex(name), None)

    def _evict(self) -> None:
        while sum(self._sizes.values()) > self.max_bytes and len(self._sizes) > 1:
            oldest = min(self._sizes)
            for cid in self._members.pop(oldest):
                if self._index.get(cid, (None,))[0] == oldest:
                    del self._index[cid]
            del self._sizes[oldest]
            os.close(self._fds.pop(oldest))
            self._seg_path(oldest).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    # immutable small objects (manifests, pack indexes), outside the cap
    def get_meta(self, key: str) -> bytes | None:
        try:
            return (self.root / "meta" / key.replace("/", "__")).read_bytes()
        except FileNotFoundError:
            return None

    def put_meta(self, key: str, data: bytes) -> None:
        self._write(self.root / "meta" / key.replace("/", "__"), data)

    def discard_meta(self, key: str) -> None:
        (self.root / "meta" / key.replace("/", "__")).unlink(missing_ok=True)
