"""The snapshot store: put/get/open/info/list/delete/gc over a file or S3 backend.

Layout of a store (same keys on both backends)::

    snapshots/<id>.json        summary manifest, checksummed; written last (commit point)
    snapshots/<id>.table.zst   seek table: per file, ordered [offset, length, chunk id]
    packs/<pack>.pack          stored chunks back to back (~4 MiB)
    packs/<pack>.idx           chunk id -> offset, length, plain length, flags, base
                               (a delta chunk's base: see codec.py and _DeltaPlanner)
    locks/put-<n>.json         a put in progress (GC waits for it)
    locks/gc-<n>.json          a GC in progress (puts then do not reuse older chunks)

GC protocol, safe with concurrent writers on strongly consistent storage:
GC (1) lists packs (the only candidates), (2) writes its gc marker, (3) waits for
the puts whose markers it then sees, (4) reads every manifest, (5) deletes candidate
packs with no referenced chunk and rewrites mostly-dead ones. A put (a) writes its
marker, (b) looks for gc markers, and only when it sees none (c) reuses chunks
already in the store. Either GC sees the put's marker and waits for its manifest, or
the put sees the GC and writes all its chunks into new packs, which are not
candidates. Chunks written after a GC started are therefore never collected.
The base of a delta chunk is reused like any deduplicated chunk, and the seek
table names it, so GC counts it as referenced.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import re
import socket
import struct
import threading
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import seeding
from .backends import Backend, Counters, new_object_id
from .cache import ChunkCache
from .chunking import PAGE_SIZE, boundaries, chunk_kind
from .codec import FLAG_DELTA, Codec
from .errors import (
    ObjectMissing,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotKeyError,
    SnapshotNotFound,
)
from .manifest import (
    FORMAT,
    FORMAT_DELTA,
    WELL_KNOWN,
    FileTable,
    Manifest,
    SnapshotInfo,
    decode_table,
    encode_table,
    info_key,
    seal,
    table_key,
    unseal,
)
from .packs import (
    DELTA_ENTRY,
    PACK_TARGET,
    ChunkIndex,
    Location,
    PackWriter,
    decode_index,
    encode_index,
    idx_key,
    pack_key,
)

T = TypeVar("T")
R = TypeVar("R")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SEGMENT = 256          # chunks hashed/compressed per worker task during put
MAX_RUN = 8 << 20      # largest coalesced ranged read
# Chunks of one pack this close together are fetched in one ranged read, the bytes between
# them read and dropped: a request costs ~10-50 ms on S3 (more on a loaded moto), 1 MiB
# of transfer less. A snapshot's chunks lie in the packs of every wait point that
# stored one of them, so a restore with nothing local made ~380 reads of ~90 KB.
MAX_GAP = 1 << 20
GROUP_BYTES = 8 << 20  # plain bytes per parallel task during get
CACHE_HEAD = struct.Struct("<BI")  # cached chunk: flags, plain length, [base id,] stored
WINDOW = 4096          # chunks planned (and delta bases fetched) at a time during put
ANCHOR_REACH = 16      # pages searched each way for an unchanged neighbour (delta bases)


def _cache_entry(loc: Location, stored: bytes) -> bytes:
    """A chunk's local-cache record: flags, plain length, the base id of a delta, bytes."""
    return CACHE_HEAD.pack(loc.flags, loc.plain_len) + (loc.base or b"") + stored


def _write_all(fd: int, writes: list[tuple[int, bytes]]) -> None:
    """pwrite each (offset, data), with one pwritev per run of adjacent pieces (a
    restore writes ~8,000 4 KiB pages: one call each cost ~50 ms)."""
    writes.sort(key=lambda w: w[0])
    i = 0
    while i < len(writes):
        off, data = writes[i]
        bufs, end = [data], off + len(data)
        i += 1
        while i < len(writes) and writes[i][0] == end and len(bufs) < 1024:  # IOV_MAX
            bufs.append(writes[i][1])
            end += len(writes[i][1])
            i += 1
        done = os.pwritev(fd, bufs, off)
        if done != end - off:  # short write (rare): finish it plainly
            rest = b"".join(bufs)[done:]
            while rest:
                n = os.pwrite(fd, rest, off + done)
                rest, done = rest[n:], done + n


def _copy_ranges(fd: int, seeds: list[int], copies: list[tuple[int, int, int, int]]) -> None:
    """Copy (seed, dest offset, seed offset, length) ranges from open seed files into
    fd, in the kernel where it can (copy_file_range), else through a buffer."""
    for s, dst, src, ln in copies:
        while ln > 0:
            try:
                n = os.copy_file_range(seeds[s], fd, ln, src, dst)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                n = 0
            if n <= 0:  # unsupported here, or the seed is shorter than planned
                data = os.pread(seeds[s], min(ln, 8 << 20), src)
                if not data:
                    raise SnapshotCorrupt(f"a seed file ended before offset {src}")
                n = os.pwrite(fd, data, dst)
            dst, src, ln = dst + n, src + n, ln - n


class _DeltaPlanner:
    """Candidate delta bases for the new pages of a page file, from the parent's same file.

    A page that changed is compared with the parent's page (1) at the same offset and
    (2) at the offset implied by the nearest unchanged page before and after it (a
    page found exactly once in the parent): gVisor's pages file holds only allocated
    memory, so an allocation or a free between two checkpoints shifts everything
    after it. The base is always a full chunk: a parent page stored as a delta is
    replaced by its own base, so decoding any chunk needs at most one other chunk.
    """

    def __init__(self, parent: FileTable, cids: list[bytes], index: ChunkIndex) -> None:
        self.pids = parent.ids
        seen: dict[bytes, int] = {}
        for i, cid in enumerate(self.pids):
            seen[cid] = -1 if cid in seen else i
        self.ppos = {cid: i for cid, i in seen.items() if i >= 0}
        self.cids = cids
        self.index = index

    def bases(self, i: int) -> list[bytes]:
        pos = [i]
        for step in (-1, 1):
            k = i + step
            while 0 <= k < len(self.cids) and abs(k - i) <= ANCHOR_REACH:
                p = self.ppos.get(self.cids[k])
                if p is not None:
                    pos.append(p + i - k)
                    break
                k += step
        out: list[bytes] = []
        for p in dict.fromkeys(pos):
            if not 0 <= p < len(self.pids):
                continue
            base = self.pids[p]
            loc = self.index.get(base)
            if loc is not None and loc.base is not None:
                base = loc.base
                loc = self.index.get(base)
            if loc is not None and loc.base is None and base not in out:
                out.append(base)
        return out


@dataclass
class ReadStats(Counters):
    """What reads cost: chunks fetched from the backend or cache, and decoded."""

    chunks_fetched: int = 0
    chunks_from_cache: int = 0
    chunks_decoded: int = 0
    bytes_fetched: int = 0
    fetch_requests: int = 0
    bytes_from_seeds: int = 0


@dataclass
class GCResult:
    """What a gc() run did."""

    deleted_packs: int = 0
    deleted_bytes: int = 0
    repacked_packs: int = 0
    kept_packs: int = 0
    live_chunks: int = 0
    deleted_other: int = 0
    waited_for: int = 0
    seconds: float = 0.0
    aborted: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "deleted_packs", "deleted_bytes", "repacked_packs", "kept_packs", "live_chunks",
            "deleted_other", "waited_for", "seconds", "aborted")}


def _check_id(snapshot_id: str) -> None:
    if not isinstance(snapshot_id, str) or not ID_RE.match(snapshot_id):
        raise SnapshotNotFound(str(snapshot_id))


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_snapshot_id() -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{stamp}-{os.urandom(4).hex()}"


def _collect_files(path: Path) -> tuple[list[tuple[str, Path]], bool]:
    if path.is_file():
        return [(path.name, path)], True
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or directory: {path}")
    files = []
    for p in sorted(path.rglob("*")):
        if p.is_symlink():
            raise SnapshotError(f"symlinks are not stored: {p}")
        if p.is_file():
            files.append((p.relative_to(path).as_posix(), p))
    return files, False


class _PutJob:
    """The chunks of one put: which are new, how each new one is stored, where."""

    def __init__(self, store: SnapshotStore, reuse: bool,
                 parent_pages: dict[str, tuple[str, FileTable]]) -> None:
        self.store = store
        self.codec = store.codec
        self.reuse = reuse
        self.parent_pages = parent_pages
        self.cache = store.cache if store.backend.remote else None
        self.writer = PackWriter(store.backend, self.codec.key_id, store.pack_target,
                                 store.index.add)
        self.written: dict[bytes, Location] = {}
        self.unique: dict[bytes, int] = {}       # chunk -> stored length
        self.locs: dict[bytes, Location] = {}
        self.bases_of: dict[bytes, bytes] = {}   # delta chunk -> its base
        self.new_bytes = 0
        self.new_deltas = 0
        self.chunk_count = 0

    def known(self, cid: bytes) -> Location | None:
        """Where the store already holds a usable copy of a chunk (None: store it)."""
        loc = self.written.get(cid)
        if loc is None and self.reuse:
            index = self.store.index
            loc = index.get(cid)
            if loc is not None and loc.base is not None:
                bloc = index.get(loc.base)
                if bloc is None or bloc.base is not None:
                    return None  # a delta whose base is gone: store it anew
        return loc

    def _use(self, cid: bytes, loc: Location) -> None:
        self.unique[cid] = loc.length
        self.locs[cid] = loc
        if loc.base is not None:
            self.bases_of[cid] = loc.base

    def add_file(self, name: str, fpath: Path, size: int, kind: str) -> list[list[Any]]:
        """Store a file's new chunks; returns its seek-table entries."""
        entries: list[tuple[int, int, bytes]] = []
        if size:
            with open(fpath, "rb") as fh, \
                    mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                self._add_chunks(mm, name, kind, entries)
        chunks: list[list[Any]] = []
        for off, ln, cid in entries:
            base = self.bases_of.get(cid)
            chunks.append([off, ln, cid.hex()] if base is None
                          else [off, ln, cid.hex(), base.hex()])
        return chunks

    def _add_chunks(self, mm: mmap.mmap, name: str, kind: str,
                    entries: list[tuple[int, int, bytes]]) -> None:
        store, codec = self.store, self.codec
        bounds = boundaries(mm, kind)

        def hash_seg(seg: list[tuple[int, int]]) -> list[bytes]:
            return [codec.chunk_id(mm[off:off + ln]) for off, ln in seg]

        segs = [bounds[i:i + SEGMENT] for i in range(0, len(bounds), SEGMENT)]
        cids = [c for res in store._bounded_map(hash_seg, segs) for c in res]
        pfile = self.parent_pages.get(name) if kind == "page" else None
        planner = _DeltaPlanner(pfile[1], cids, store.index) if pfile else None
        planned: set[bytes] = set()
        for w0 in range(0, len(bounds), WINDOW):
            todo: list[int] = []
            for i in range(w0, min(w0 + WINDOW, len(bounds))):
                cid = cids[i]
                self.chunk_count += 1
                entries.append((bounds[i][0], bounds[i][1], cid))
                if cid in self.unique or cid in planned:
                    continue
                loc = self.known(cid)
                if loc is None:
                    planned.add(cid)
                    todo.append(i)
                else:
                    self._use(cid, loc)
            if not todo:
                continue
            cands: dict[int, list[bytes]] = {}
            base_plain: dict[bytes, bytes] = {}
            if planner is not None and pfile is not None:
                cands = {i: planner.bases(i) for i in todo}
                need = list(dict.fromkeys(b for bs in cands.values() for b in bs))
                if need:
                    try:
                        base_plain = store._fetch(pfile[0], codec, need)
                    except SnapshotError:
                        base_plain = {}  # a damaged parent: no deltas for these pages

            def encode(items: list[int], cands: dict[int, list[bytes]] = cands,
                       base_plain: dict[bytes, bytes] = base_plain
                       ) -> list[tuple[bytes, int, bytes | None]]:
                out = []
                for i in items:
                    off, ln = bounds[i]
                    piece = mm[off:off + ln]
                    stored, flags = codec.encode(cids[i], piece)
                    best: tuple[bytes, int, bytes | None] = (stored, flags, None)
                    for b in cands.get(i, ()):
                        if b in base_plain:
                            d, dflags = codec.encode_delta(cids[i], piece, base_plain[b])
                            # a delta costs an index record more, and a base to read
                            if len(d) + DELTA_ENTRY.size < len(best[0]):
                                best = (d, dflags, b)
                    out.append(best)
                return out

            tsegs = [todo[k:k + SEGMENT] for k in range(0, len(todo), SEGMENT)]
            for tseg, res in zip(tsegs, store._bounded_map(encode, tsegs), strict=True):
                for i, (stored, flags, base) in zip(tseg, res, strict=True):
                    cid = cids[i]
                    loc = self.known(cid)  # stored meanwhile by another put of this store?
                    if loc is None:
                        loc = self.writer.add(cid, stored, bounds[i][1], flags, base)
                        self.written[cid] = loc
                        self.new_bytes += loc.length
                        self.new_deltas += base is not None
                        if self.cache is not None:
                            self.cache.put(cid.hex(), _cache_entry(loc, stored))
                    self._use(cid, loc)


class SnapshotReader:
    """Random access to one file of a stored snapshot; fetches only covering chunks."""

    def __init__(self, store: SnapshotStore, manifest: Manifest, table: FileTable,
                 codec: Codec, keep_chunks: int = 64) -> None:
        self.store = store
        self.manifest = manifest
        self.table = table
        self.codec = codec
        self.name = table.name
        self.size = table.size
        self._recent: OrderedDict[bytes, bytes] = OrderedDict()
        self._keep = keep_chunks
        self._lock = threading.Lock()

    def chunk_bounds(self, offset: int) -> tuple[int, int]:
        """(start, length) of the chunk holding byte `offset`."""
        idx = self.table.covering(offset, 1)
        if not idx:
            raise ValueError(f"offset {offset} outside {self.name} (size {self.size})")
        i = idx[0]
        return self.table.offsets[i], self.table.lengths[i]

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be >= 0")
        idxs = self.table.covering(offset, length)
        if not idxs:
            return b""
        ids = [self.table.ids[i] for i in idxs]
        with self._lock:
            have = {cid: self._recent[cid] for cid in ids if cid in self._recent}
        missing = [cid for cid in dict.fromkeys(ids) if cid not in have]
        if missing:
            got = self.store._fetch(self.manifest.id, self.codec, missing)
            have.update(got)
            with self._lock:
                for cid in missing:
                    self._recent[cid] = got[cid]
                    self._recent.move_to_end(cid)
                while len(self._recent) > self._keep:
                    self._recent.popitem(last=False)
        first = self.table.offsets[idxs[0]]
        data = b"".join(have[cid] for cid in ids)
        end = min(offset + length, self.size)
        return data[offset - first:end - first]

    def close(self) -> None:
        self._recent.clear()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SnapshotStore:
    """A snapshot store over one backend (see the module docstring for the layout)."""

    def __init__(self, backend: Backend, *, key: bytes | None = None,
                 cache: ChunkCache | None = None, page_chunks: bool = True,
                 pack_target: int = PACK_TARGET, workers: int | None = None,
                 stale_after: float = 3600.0, level: int = 3, deltas: bool = True) -> None:
        self.backend = backend
        self.deltas = deltas
        self.codec = Codec(key, level)
        self.cache = cache
        self.page_chunks = page_chunks
        self.pack_target = pack_target
        self.workers = workers or min(8, (os.cpu_count() or 2) * 2)
        self.stale_after = stale_after
        self.stats = ReadStats()
        self.index = ChunkIndex(
            backend,
            (lambda p: cache.get_meta(idx_key(p))) if cache else None,
            (lambda p, d: cache.put_meta(idx_key(p), d)) if cache else None)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._manifests: dict[str, Manifest] = {}

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def key_id(self) -> str | None:
        return self.codec.key_id

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="torpor-snap")
            return self._pool

    def _submit(self, fn: Callable[[T], R], item: T) -> Future[R]:
        """Executor.submit; once the interpreter is shutting down (concurrent.futures
        refuses new work before atexit handlers, such as the checkpoint storage's final
        flush, have run) the call runs here and now instead."""
        try:
            return self._executor().submit(fn, item)
        except RuntimeError:
            done: Future[R] = Future()
            try:
                done.set_result(fn(item))
            except BaseException as e:  # noqa: BLE001 - re-raised by result()
                done.set_exception(e)
            return done

    def _pmap(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """Executor.map into a list (see _submit)."""
        return [f.result() for f in [self._submit(fn, item) for item in items]]

    def _bounded_map(self, fn: Callable[[T], R], items: list[T]) -> Iterator[R]:
        """Like Executor.map, in order, with at most 2 tasks per worker in flight."""
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(self._submit(fn, item))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> SnapshotStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- markers
    def _write_marker(self, kind: str) -> str:
        key = f"locks/{kind}-{new_object_id()}.json"
        body = {"started": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        self.backend.put(key, json.dumps(body).encode())
        return key

    def _markers(self, kind: str) -> list[str]:
        """Keys of live (not stale) markers of a kind."""
        return self._scan_markers(kind)[0]

    def _scan_markers(self, kind: str) -> tuple[list[str], list[str]]:
        """(live, stale) marker keys of a kind ("put" or "gc")."""
        live, stale = [], []
        for key, _mtime, _size in self.backend.list("locks/"):
            if not key.startswith(f"locks/{kind}-"):
                continue
            try:
                body = json.loads(self.backend.get(key))
                started = float(body["started"])
            except ObjectMissing:
                continue
            except (ValueError, KeyError, TypeError):
                stale.append(key)
                continue
            if time.time() - started >= self.stale_after:
                stale.append(key)
            elif body.get("host") == socket.gethostname() and not _pid_alive(body.get("pid")):
                stale.append(key)  # its writer died on this machine (e.g. kill -9)
            else:
                live.append(key)
        return live, stale

    # -------------------------------------------------------------------- put
    def put(self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None, *,
            engine: str | None = None, engine_version: str | None = None,
            image_digest: str | None = None, parent: str | None = None,
            snapshot_id: str | None = None) -> SnapshotInfo:
        """Store a file or a directory of files as a new snapshot."""
        t0 = time.perf_counter()
        meta = dict(meta or {})
        files, single = _collect_files(Path(path))
        sid = snapshot_id or new_snapshot_id()
        _check_id(sid)
        if self.backend.exists(info_key(sid)):
            raise SnapshotError(f"snapshot {sid} already exists")
        well = {"engine": engine, "engine_version": engine_version,
                "image_digest": image_digest, "parent": parent}
        for k in WELL_KNOWN:
            if well[k] is None and meta.get(k) is not None:
                well[k] = str(meta[k])
        marker = self._write_marker("put")
        try:
            reuse = not self._markers("gc")
            if reuse:
                self.index.refresh()
            job = _PutJob(self, reuse,
                          self._delta_parent(well["parent"])
                          if reuse and self.deltas and well["parent"] else {})
            table: list[dict[str, Any]] = []
            logical = 0
            for name, fpath in files:
                size = fpath.stat().st_size
                logical += size
                kind = chunk_kind(name, self.page_chunks)
                chunks = job.add_file(name, fpath, size, kind)
                table.append({"name": name, "size": size, "chunker": kind,
                              "mode": fpath.stat().st_mode & 0o7777, "chunks": chunks})
            job.writer.flush()
            base_lens: dict[bytes, int] = {}
            pack_set = {loc.pack for loc in job.locs.values()}
            for base in set(job.bases_of.values()):
                bloc = self.index.get(base)
                if bloc is None:  # bases are chosen among located chunks, so: a bug
                    raise SnapshotError(f"delta base {base.hex()} vanished during put")
                pack_set.add(bloc.pack)
                if base not in job.unique:
                    base_lens[base] = bloc.length
            packs = sorted(pack_set)
            tbytes = encode_table(table, packs)
            tdigest = "sha256:" + hashlib.sha256(tbytes).hexdigest()
            self.backend.put(table_key(sid), tbytes)
            stored_bytes = sum(job.unique.values()) + sum(base_lens.values())
            codec = self.codec
            doc = {
                "format": FORMAT_DELTA if job.bases_of else FORMAT, "id": sid,
                "created": time.time(),
                **well, "key_id": codec.key_id, "hash": codec.hash_name,
                "compression": f"zstd-{codec.level}/chunk" + ("+delta" if job.bases_of else ""),
                "logical_size": logical, "stored_bytes": stored_bytes,
                "new_bytes": job.new_bytes, "shared_bytes": stored_bytes - job.new_bytes,
                "chunk_count": job.chunk_count, "unique_chunks": len(job.unique),
                "single_file": single, "delta_chunks": len(job.bases_of),
                "new_delta_chunks": job.new_deltas, "base_chunks": len(base_lens),
                "packs": job.writer.packs_written, "table": tdigest,
                "files": [{"name": f["name"], "size": f["size"], "chunker": f["chunker"],
                           "mode": f["mode"], "chunks": len(f["chunks"])} for f in table],
                "meta": meta, "seconds": round(time.perf_counter() - t0, 6),
            }
            data = seal(doc)
            self.backend.put(info_key(sid), data)  # commit point
            if self.cache is not None:
                self.cache.put_meta(table_key(sid), tbytes)
                self.cache.put_meta(info_key(sid), data)
        finally:
            with contextlib.suppress(Exception):  # a stale marker only delays GC
                self.backend.delete(marker)
        return SnapshotInfo.from_doc(unseal(sid, data))

    def _delta_parent(self, parent: str) -> dict[str, tuple[str, FileTable]]:
        """The parent's page files (name -> (parent id, seek table)) to take delta
        bases from; empty if the parent is gone, unreadable or under another key."""
        try:
            manifest = self._manifest(parent)
        except (SnapshotError, ValueError):
            return {}
        if manifest.key_id != self.codec.key_id:
            return {}
        kinds = {f["name"]: f.get("chunker") for f in manifest.doc["files"]}
        return {ft.name: (manifest.id, ft) for ft in manifest.files
                if kinds.get(ft.name) == "page"}

    # --------------------------------------------------------------- manifests
    def _info_doc(self, snapshot_id: str, check: bool = True) -> dict[str, Any]:
        _check_id(snapshot_id)
        key = info_key(snapshot_id)
        data = None
        if self.cache is not None and self.backend.remote:
            data = self.cache.get_meta(key)
            if data is not None and check and not self.backend.exists(key):
                self.cache.discard_meta(key)
                raise SnapshotNotFound(snapshot_id, self.url)
        if data is None:
            try:
                data = self.backend.get(key)
            except ObjectMissing:
                raise SnapshotNotFound(snapshot_id, self.url) from None
            doc = unseal(snapshot_id, data)
            if self.cache is not None and self.backend.remote:
                self.cache.put_meta(key, data)
            return doc
        try:
            return unseal(snapshot_id, data)
        except SnapshotCorrupt:  # a cached copy torn by a crash (not fsynced): read it again
            assert self.cache is not None
            self.cache.discard_meta(key)
            return self._info_doc(snapshot_id, check=False)

    def _manifest(self, snapshot_id: str, check: bool = True) -> Manifest:
        doc = self._info_doc(snapshot_id, check)
        tkey = table_key(snapshot_id)
        tdata = self.cache.get_meta(tkey) if self.cache is not None else None
        if tdata is None:
            try:
                tdata = self.backend.get(tkey)
            except ObjectMissing:
                raise SnapshotCorrupt("seek table is missing", snapshot_id) from None
            if self.cache is not None and self.backend.remote:
                self.cache.put_meta(tkey, tdata)
        try:
            files, packs = decode_table(snapshot_id, tdata, doc["table"])
        except SnapshotCorrupt:
            if self.cache is not None:
                self.cache.discard_meta(tkey)
            raise
        manifest = Manifest(doc, [FileTable(f["name"], f["size"], f["chunks"]) for f in files],
                            packs)
        if len(self._manifests) > 16:
            self._manifests.pop(next(iter(self._manifests)))
        self._manifests[snapshot_id] = manifest
        return manifest

    def _codec_for(self, manifest: Manifest) -> Codec:
        kid = manifest.key_id
        if kid is None:
            return Codec(None, self.codec.level)
        if self.codec.key_id is None:
            raise SnapshotKeyError(
                f"snapshot {manifest.id} is encrypted (key id {kid}) and no key is configured "
                "(set TORPOR_SNAPSHOT_KEY or TORPOR_SNAPSHOT_KEY_FILE)")
        if kid != self.codec.key_id:
            raise SnapshotKeyError(
                f"snapshot {manifest.id} was encrypted with key id {kid}, "
                f"but the configured key has id {self.codec.key_id}")
        return self.codec

    # ------------------------------------------------------------------ fetch
    def _locate(self, snapshot_id: str, cids: Iterable[bytes]) -> dict[bytes, Location]:
        out: dict[bytes, Location] = {}
        missing = []
        if not self.index.refreshed:
            manifest = self._manifests.get(snapshot_id)
            if manifest is not None and manifest.packs:
                self.index.ensure(manifest.packs)  # where its chunks were at put time
            else:
                self.index.refresh()
        for cid in cids:
            loc = self.index.get(cid)
            if loc is None:
                missing.append(cid)
            else:
                out[cid] = loc
        if missing:
            self.index.refresh()
            for cid in missing:
                loc = self.index.get(cid)
                if loc is None:
                    raise SnapshotCorrupt("chunk is missing from the store", snapshot_id,
                                          cid.hex())
                out[cid] = loc
        return out

    def fetch_chunks(self, snapshot_id: str, cids: list[bytes]) -> dict[bytes, bytes]:
        """The plain bytes of chunks of a snapshot, verified against their ids: from the
        chunk cache where it has them, else by coalesced ranged reads of their packs."""
        return self._fetch(snapshot_id, self._codec_for(self._manifest(snapshot_id)), cids)

    def _fetch(self, snapshot_id: str, codec: Codec, cids: list[bytes],
               _retry: bool = True, _bases: bool = False) -> dict[bytes, bytes]:
        """Plain bytes of chunks, verified. Reads cache first, coalesces ranged reads.

        Delta chunks are decoded after their bases are fetched (one more round, for
        all of them at once); a base must be a full chunk (`_bases`)."""
        out: dict[bytes, bytes] = {}
        todo = []
        # delta chunks waiting for their base: cid, stored, flags, plain len, base, cached
        deltas: list[tuple[bytes, bytes, int, int, bytes, bool]] = []
        use_cache = self.cache is not None and self.backend.remote
        for cid in cids:
            if use_cache:
                assert self.cache is not None
                entry = self.cache.get(cid.hex())
                if entry is not None and len(entry) >= CACHE_HEAD.size:
                    flags, plain_len = CACHE_HEAD.unpack_from(entry)
                    body = entry[CACHE_HEAD.size:]
                    if flags & FLAG_DELTA and len(body) > 32:
                        self.stats.add(chunks_from_cache=1)
                        deltas.append((cid, body[32:], flags, plain_len, body[:32], True))
                        continue
                    try:
                        out[cid] = codec.decode(cid, body, flags, plain_len, snapshot_id)
                        self.stats.add(chunks_from_cache=1, chunks_decoded=1)
                        continue
                    except SnapshotCorrupt:
                        self.cache.discard(cid.hex())
            todo.append(cid)
        if todo:
            self._fetch_stored(snapshot_id, codec, todo, out, deltas, _retry)
        if deltas:
            if _bases:
                cid = deltas[0][0]
                raise SnapshotCorrupt("a delta chunk's base is itself a delta chunk",
                                      snapshot_id, cid.hex())
            need = list(dict.fromkeys(d[4] for d in deltas))
            have = {b: out[b] for b in need if b in out}
            have.update(self._fetch(snapshot_id, codec, [b for b in need if b not in have],
                                    _bases=True))
            for cid, stored, flags, plain_len, base, cached in deltas:
                try:
                    out[cid] = codec.decode(cid, stored, flags, plain_len, snapshot_id,
                                            have[base])
                except SnapshotCorrupt:
                    if not cached:
                        raise
                    assert self.cache is not None
                    self.cache.discard(cid.hex())  # a bad cache entry: fetch it again
                    out.update(self._fetch(snapshot_id, codec, [cid], _bases=_bases))
                    continue
                self.stats.add(chunks_decoded=1)
        return out

    def _fetch_stored(self, snapshot_id: str, codec: Codec, todo: list[bytes],
                      out: dict[bytes, bytes],
                      deltas: list[tuple[bytes, bytes, int, int, bytes, bool]],
                      _retry: bool) -> None:
        """Fetch chunks from their packs: full ones decoded into `out`, delta ones
        appended to `deltas` (decoded by the caller once their bases are in)."""
        use_cache = self.cache is not None and self.backend.remote
        locs = self._locate(snapshot_id, todo)
        by_pack: dict[str, list[tuple[bytes, Location]]] = defaultdict(list)
        for cid in todo:
            by_pack[locs[cid].pack].append((cid, locs[cid]))
        runs: list[tuple[str, list[tuple[bytes, Location]]]] = []
        for pack, items in by_pack.items():
            items.sort(key=lambda it: it[1].offset)
            run: list[tuple[bytes, Location]] = []
            for it in items:
                if run and (it[1].offset - (run[-1][1].offset + run[-1][1].length) > MAX_GAP
                            or it[1].offset + it[1].length - run[0][1].offset > MAX_RUN):
                    runs.append((pack, run))
                    run = []
                run.append(it)
            if run:
                runs.append((pack, run))

        def fetch_run(r: tuple[str, list[tuple[bytes, Location]]]
                      ) -> tuple[dict[bytes, bytes],
                                 list[tuple[bytes, bytes, int, int, bytes, bool]]]:
            pack, items = r
            start = items[0][1].offset
            end = items[-1][1].offset + items[-1][1].length
            data = self.backend.get_range(pack_key(pack), start, end - start)
            self.stats.add(fetch_requests=1, bytes_fetched=len(data), chunks_fetched=len(items))
            got = {}
            pend = []
            for cid, loc in items:
                stored = data[loc.offset - start:loc.offset - start + loc.length]
                if len(stored) != loc.length:
                    raise SnapshotCorrupt(f"pack {pack} is truncated", snapshot_id, cid.hex())
                if loc.base is not None or loc.flags & FLAG_DELTA:
                    if loc.base is None or not loc.flags & FLAG_DELTA:
                        raise SnapshotCorrupt(f"pack index {pack} has a delta entry without "
                                              "a base (or a base without the delta flag)",
                                              snapshot_id, cid.hex())
                    pend.append((cid, stored, loc.flags, loc.plain_len, loc.base, False))
                else:
                    got[cid] = codec.decode(cid, stored, loc.flags, loc.plain_len, snapshot_id)
                    self.stats.add(chunks_decoded=1)
                if use_cache:
                    assert self.cache is not None
                    self.cache.put(cid.hex(), _cache_entry(loc, stored))
            return got, pend

        try:
            if len(runs) == 1 or threading.current_thread().name.startswith("torpor-snap"):
                results = [fetch_run(r) for r in runs]
            else:
                results = self._pmap(fetch_run, runs)
        except ObjectMissing as exc:
            if not _retry:
                raise SnapshotCorrupt(f"object {exc} is missing", snapshot_id) from None
            self.index.refresh()  # a GC may have repacked; look again once
            self._fetch_stored(snapshot_id, codec, todo, out, deltas, _retry=False)
            return
        for got, pend in results:
            out.update(got)
            deltas.extend(pend)

    # -------------------------------------------------------------------- get
    def get(self, snapshot_id: str, dest_path: str | os.PathLike[str], *,
            seeds: Sequence[tuple[str, str | os.PathLike[str]]] = (),
            sync: bool = True) -> Path:
        """Restore a snapshot to dest_path (a file for a one-file snapshot, else a directory).

        Chunks are fetched in parallel, verified, and written in place; all-zero pages
        are left as holes. Files appear under their final names only once complete.

        seeds: (snapshot id, where that snapshot's files are on local disk, intact) of
        older snapshots; chunks they share with this one are copied from them instead
        of fetched and decoded (see `seeding`). A seed the store does not know, or
        whose file sizes differ from its manifest, is ignored.
        sync: fsync the files before they get their names (off for a cache that checks
        its files' digests before use).
        """
        manifest = self._manifest(snapshot_id)
        codec = self._codec_for(manifest)
        dest = Path(dest_path)
        single = manifest.doc.get("single_file", False)
        if single and dest.is_dir():
            dest = dest / manifest.files[0].name
        seed_files = self._seed_files(seeds)
        targets = []
        for table in manifest.files:
            target = dest if single else dest / table.name
            target.parent.mkdir(parents=True, exist_ok=True)
            targets.append((table, target))
        for table, target in targets:
            self._restore_file(manifest, codec, table, target,
                               seed_files.get(table.name, []), sync)
        return dest

    def _seed_files(self, seeds: Sequence[tuple[str, str | os.PathLike[str]]]
                    ) -> dict[str, list[tuple[FileTable, Path]]]:
        """File name -> (seek table, local path) of the usable seeds, in the given order."""
        out: dict[str, list[tuple[FileTable, Path]]] = defaultdict(list)
        for sid, where in seeds:
            try:
                seed = self._manifest(sid)
            except (SnapshotNotFound, SnapshotCorrupt):
                continue
            root = Path(where)
            for table in seed.files:
                path = root / table.name if root.is_dir() else root
                with contextlib.suppress(OSError):
                    if path.stat().st_size == table.size:
                        out[table.name].append((table, path))
        return out

    def _restore_file(self, manifest: Manifest, codec: Codec, table: FileTable,
                      target: Path, seeds: list[tuple[FileTable, Path]] | None = None,
                      sync: bool = True) -> None:
        tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
        holes: frozenset[bytes] = frozenset()
        if table.lengths and all(ln == PAGE_SIZE for ln in table.lengths[:-1]):
            holes = frozenset({codec.chunk_id(bytes(PAGE_SIZE)),
                               codec.chunk_id(bytes(table.lengths[-1]))})
        seed_fds: list[tuple[FileTable, int]] = []
        for seed_table, path in seeds or []:  # opened first: a cache may evict it meanwhile
            with contextlib.suppress(OSError):
                seed_fds.append((seed_table, os.open(path, os.O_RDONLY)))
        try:
            self._rebuild(manifest, codec, table, tmp, seed_fds, holes, sync)
        finally:
            for _, sfd in seed_fds:
                os.close(sfd)
        mode = next((f.get("mode") for f in manifest.doc["files"] if f["name"] == table.name),
                    None)
        if mode:
            os.chmod(tmp, mode)
        os.replace(tmp, target)

    def _rebuild(self, manifest: Manifest, codec: Codec, table: FileTable, tmp: Path,
                 seeds: list[tuple[FileTable, int]], holes: frozenset[bytes],
                 sync: bool) -> None:
        """Write table's file to tmp: ranges copied from seeds, the rest fetched."""
        plan = seeding.plan(table, [t for t, _ in seeds], holes)
        where: dict[bytes, list[int]] = defaultdict(list)
        length: dict[bytes, int] = {}
        for i in plan.fetch:
            cid = table.ids[i]
            where[cid].append(table.offsets[i])
            length[cid] = table.lengths[i]
        groups: list[list[bytes]] = []
        group: list[bytes] = []
        gsize = 0
        for cid in where:
            group.append(cid)
            gsize += length[cid]
            if gsize >= GROUP_BYTES:
                groups.append(group)
                group, gsize = [], 0
        if group:
            groups.append(group)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, table.size)
            if plan.copies:
                _copy_ranges(fd, [f for _, f in seeds], plan.copies)
                self.stats.add(bytes_from_seeds=plan.copied_bytes)

            def restore(cids: list[bytes]) -> None:
                got = self._fetch(manifest.id, codec, cids)
                writes = []
                for cid in cids:
                    data = got[cid]
                    if holes or data.count(0) != len(data):
                        writes.extend((off, data) for off in where[cid])
                _write_all(fd, writes)

            if len(groups) <= 1:
                for g in groups:
                    restore(g)
            else:
                self._pmap(restore, groups)
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)

    def verify(self, snapshot_id: str) -> int:
        """Read and check every chunk of a snapshot; returns how many distinct chunks."""
        manifest = self._manifest(snapshot_id)
        codec = self._codec_for(manifest)
        ids = list(dict.fromkeys(cid for ft in manifest.files for cid in ft.ids))
        step = 2048
        groups = [ids[i:i + step] for i in range(0, len(ids), step)]
        self._pmap(lambda g: self._fetch(manifest.id, codec, g), groups)
        return len(ids)

    # ------------------------------------------------------------------- open
    def open(self, snapshot_id: str, name: str | None = None) -> SnapshotReader:
        """A reader over the snapshot's one file, or over its file `name`."""
        manifest = self._manifest(snapshot_id)
        codec = self._codec_for(manifest)
        return SnapshotReader(self, manifest, manifest.file(name), codec)

    # ------------------------------------------------------------- info, list
    def info(self, snapshot_id: str) -> SnapshotInfo:
        return SnapshotInfo.from_doc(self._info_doc(snapshot_id))

    def exists(self, snapshot_id: str) -> bool:
        try:
            _check_id(snapshot_id)
        except SnapshotNotFound:
            return False
        return self.backend.exists(info_key(snapshot_id))

    def ids(self) -> list[str]:
        out = []
        for key, _mtime, _size in self.backend.list("snapshots/"):
            if key.endswith(".json"):
                out.append(key[len("snapshots/"):-len(".json")])
        return sorted(out)

    def list(self, filter: dict[str, Any] | None = None, **kw: Any) -> list[SnapshotInfo]:
        """Snapshots, oldest first, whose meta (or engine/parent/...) match every filter."""
        want = dict(filter or {}, **kw)
        out = []
        for sid in self.ids():
            try:
                doc = self._info_doc(sid, check=False)
            except SnapshotNotFound:
                continue
            info = SnapshotInfo.from_doc(doc)
            ok = True
            for k, v in want.items():
                have = info.meta.get(k, doc.get(k) if k in WELL_KNOWN else None)
                if have != v and str(have) != str(v):
                    ok = False
                    break
            if ok:
                out.append(info)
        out.sort(key=lambda i: (i.created, i.id))
        return out

    # ------------------------------------------------------- delete, retention
    def delete(self, snapshot_id: str) -> None:
        """Remove a snapshot (its chunks go at the next gc)."""
        _check_id(snapshot_id)
        if not self.backend.exists(info_key(snapshot_id)):
            raise SnapshotNotFound(snapshot_id, self.url)
        self.backend.delete(info_key(snapshot_id))
        self.backend.delete(table_key(snapshot_id))
        if self.cache is not None:
            self.cache.discard_meta(info_key(snapshot_id))
            self.cache.discard_meta(table_key(snapshot_id))

    def retain(self, keep_last: int, by: str = "session", **filter: Any) -> list[str]:
        """Keep the newest `keep_last` snapshots per value of meta[by]; delete the rest."""
        if keep_last < 0:
            raise ValueError("keep_last must be >= 0")
        groups: dict[str, list[SnapshotInfo]] = defaultdict(list)
        for info in self.list(filter):
            if by in info.meta:
                groups[str(info.meta[by])].append(info)
        deleted = []
        for infos in groups.values():
            old = infos[:len(infos) - keep_last] if keep_last else infos
            for info in old:
                self.delete(info.id)
                deleted.append(info.id)
        return deleted

    # --------------------------------------------------------------------- gc
    def gc(self, *, wait_timeout: float = 600.0, repack_below: float = 0.5,
           poll: float = 0.05, on_wait: Callable[[], None] | None = None) -> GCResult:
        """Delete chunks no manifest references; rewrite packs mostly dead.

        Safe with concurrent puts (see the module docstring). Waits up to
        `wait_timeout` seconds for puts already running; if they do not finish, it
        deletes nothing and reports why in `aborted`.
        """
        t0 = time.perf_counter()
        res = GCResult()
        listing = list(self.backend.list("packs/"))
        cand_packs: dict[str, int] = {}
        with_idx: set[str] = set()
        for key, _m, size in listing:
            pid = key[len("packs/"):].rsplit(".", 1)[0]
            if key.endswith(".pack"):
                cand_packs[pid] = size
            elif key.endswith(".idx"):
                with_idx.add(pid)
                cand_packs.setdefault(pid, 0)
        cand_tables = [k for k, _m, _s in self.backend.list("snapshots/")
                       if k.endswith(".table.zst")]
        marker = self._write_marker("gc")
        try:
            running = self._markers("put")
            res.waited_for = len(running)
            deadline = time.monotonic() + wait_timeout
            while running:
                if on_wait:
                    on_wait()
                if time.monotonic() > deadline:
                    res.aborted = f"{len(running)} put(s) still running after {wait_timeout}s"
                    return res
                time.sleep(poll)
                still = set(self._markers("put"))
                running = [k for k in running if k in still]
            live: set[bytes] = set()
            ids = self.ids()
            for sid in ids:
                try:
                    m = self._manifest(sid, check=False)
                except SnapshotNotFound:
                    continue
                except SnapshotCorrupt as exc:
                    res.aborted = f"cannot read a manifest, nothing deleted: {exc}"
                    return res
                for ft in m.files:
                    live.update(ft.ids)
                    live.update(ft.bases.values())  # delta bases are needed to read
            idset = set(ids)
            for tkey in cand_tables:
                sid = tkey[len("snapshots/"):-len(".table.zst")]
                if sid not in idset and not self.backend.exists(info_key(sid)):
                    self.backend.delete(tkey)
                    res.deleted_other += 1
            indexes: dict[str, list[tuple[bytes, Location]] | None] = {}
            for pid, size in sorted(cand_packs.items()):
                try:
                    indexes[pid] = decode_index(pid, self.backend.get(idx_key(pid)))
                except ObjectMissing:
                    if pid in with_idx:
                        continue  # deleted meanwhile by another gc
                    self.backend.delete(pack_key(pid))  # orphan of an interrupted put
                    res.deleted_packs += 1
                    res.deleted_bytes += size
                except SnapshotCorrupt:
                    indexes[pid] = None
            # a delta copy of a live chunk keeps its base, whichever copy a reader finds
            live.update(loc.base for entries in indexes.values() if entries
                        for c, loc in entries if loc.base is not None and c in live)
            res.live_chunks = len(live)
            for pid, entries in indexes.items():
                size = cand_packs[pid]
                if entries is None:
                    res.kept_packs += 1  # an unreadable index: keep the pack
                    continue
                keep = [(c, loc) for c, loc in entries if c in live]
                total = sum(loc.length for _c, loc in entries) or 1
                if not keep:
                    self.backend.delete(idx_key(pid))
                    self.backend.delete(pack_key(pid))
                    self.index.forget_pack(pid)
                    res.deleted_packs += 1
                    res.deleted_bytes += size
                elif sum(loc.length for _c, loc in keep) / total < repack_below:
                    self._repack(pid, keep)
                    res.repacked_packs += 1
                    res.deleted_bytes += total - sum(loc.length for _c, loc in keep)
                else:
                    res.kept_packs += 1
            for kind in ("put", "gc"):
                for key in self._scan_markers(kind)[1]:
                    self.backend.delete(key)  # stale: its writer or gc died
        finally:
            self.backend.delete(marker)
            res.seconds = round(time.perf_counter() - t0, 6)
        return res

    def _repack(self, pid: str, keep: list[tuple[bytes, Location]]) -> None:
        data = self.backend.get(pack_key(pid))
        parts, entries, off = [], [], 0
        new = new_object_id()
        for cid, loc in keep:
            piece = data[loc.offset:loc.offset + loc.length]
            parts.append(piece)
            entries.append((cid, loc._replace(pack=new, offset=off)))
            off += loc.length
        self.backend.put(pack_key(new), b"".join(parts))
        self.backend.put(idx_key(new), encode_index(entries, self.codec.key_id))
        self.index.add(new, entries)
        self.backend.delete(idx_key(pid))
        self.backend.delete(pack_key(pid))
        self.index.forget_pack(pid)

    # ----------------------------------------------------------------- export
    def export(self, snapshot_id: str, name: str | None, out: str | os.PathLike[str]) -> Path:
        """Write one stored file in the Zstandard seekable format."""
        from .seekable import write_seekable

        manifest = self._manifest(snapshot_id)
        codec = self._codec_for(manifest)
        table = manifest.file(name)
        return write_seekable(lambda ids: self.fetch_chunks(manifest.id, ids), codec, table,
                              Path(out))  # fmt: skip
