"""The snapshot store: put/get/open/info/list/delete/gc over a file or S3 backend.

Layout of a store (same keys on both backends)::

    snapshots/<id>.json        summary manifest, checksummed; written last (commit point)
    snapshots/<id>.table.zst   seek table: per file, ordered [offset, length, chunk id]
    packs/<pack>.pack          stored chunks back to back (~4 MiB)
    packs/<pack>.idx           chunk id -> offset, length, plain length, flags
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
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .backends import Backend, Counters, new_object_id
from .cache import ChunkCache
from .chunking import boundaries, chunk_kind
from .codec import Codec
from .errors import (
    ObjectMissing,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotKeyError,
    SnapshotNotFound,
)
from .manifest import (
    FORMAT,
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
GROUP_BYTES = 8 << 20  # plain bytes per parallel task during get
CACHE_HEAD = struct.Struct("<BI")  # cached chunk: flags, plain length, stored bytes


@dataclass
class ReadStats(Counters):
    """What reads cost: chunks fetched from the backend or cache, and decoded."""

    chunks_fetched: int = 0
    chunks_from_cache: int = 0
    chunks_decoded: int = 0
    bytes_fetched: int = 0
    fetch_requests: int = 0


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
                 stale_after: float = 3600.0, level: int = 3) -> None:
        self.backend = backend
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

    def _bounded_map(self, fn: Callable[[T], R], items: list[T]) -> Iterator[R]:
        """Like Executor.map, in order, with at most 2 tasks per worker in flight."""
        ex = self._executor()
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(ex.submit(fn, item))
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
            written: dict[bytes, Location] = {}

            def on_flush(pack_id: str, entries: list[tuple[bytes, Location]]) -> None:
                self.index.add(pack_id, entries)

            writer = PackWriter(self.backend, self.codec.key_id, self.pack_target, on_flush)
            table: list[dict[str, Any]] = []
            unique: dict[bytes, int] = {}
            locs: dict[bytes, Location] = {}
            new_bytes = 0
            chunk_count = 0
            logical = 0
            codec = self.codec
            cache = self.cache if self.backend.remote else None

            def known(cid: bytes) -> Location | None:
                loc = written.get(cid)
                if loc is None and reuse:
                    loc = self.index.get(cid)
                return loc

            for name, fpath in files:
                kind = chunk_kind(name, self.page_chunks)
                size = fpath.stat().st_size
                logical += size
                chunks: list[list[Any]] = []
                if size:
                    with open(fpath, "rb") as fh, \
                            mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                        bounds = boundaries(mm, kind)

                        def work(seg: list[tuple[int, int]], mm: mmap.mmap = mm
                                 ) -> list[tuple[bytes, tuple[bytes, int] | None]]:
                            out = []
                            for off, ln in seg:
                                piece = mm[off:off + ln]
                                cid = codec.chunk_id(piece)
                                out.append((cid, None if known(cid) or cid in unique
                                            else codec.encode(cid, piece)))
                            return out

                        segs = [bounds[i:i + SEGMENT] for i in range(0, len(bounds), SEGMENT)]
                        results = self._bounded_map(work, segs)
                        for seg, res in zip(segs, results, strict=True):
                            for (off, ln), (cid, enc) in zip(seg, res, strict=True):
                                chunk_count += 1
                                chunks.append([off, ln, cid.hex()])
                                if cid in unique:
                                    continue
                                loc = known(cid)
                                if loc is None:
                                    if enc is None:  # raced with an index update
                                        enc = codec.encode(cid, mm[off:off + ln])
                                    stored, flags = enc
                                    loc = writer.add(cid, stored, ln, flags)
                                    written[cid] = loc
                                    new_bytes += loc.length
                                    if cache is not None:
                                        cache.put(cid.hex(),
                                                  CACHE_HEAD.pack(flags, ln) + stored)
                                unique[cid] = loc.length
                                locs[cid] = loc
                table.append({"name": name, "size": size, "chunker": kind,
                              "mode": fpath.stat().st_mode & 0o7777, "chunks": chunks})
            writer.flush()
            packs = sorted({loc.pack for loc in locs.values()})
            tbytes = encode_table(table, packs)
            tdigest = "sha256:" + hashlib.sha256(tbytes).hexdigest()
            self.backend.put(table_key(sid), tbytes)
            stored_bytes = sum(unique.values())
            doc = {
                "format": FORMAT, "id": sid, "created": time.time(),
                **well, "key_id": codec.key_id, "hash": codec.hash_name,
                "compression": f"zstd-{codec.level}/chunk",
                "logical_size": logical, "stored_bytes": stored_bytes, "new_bytes": new_bytes,
                "shared_bytes": stored_bytes - new_bytes, "chunk_count": chunk_count,
                "unique_chunks": len(unique), "single_file": single,
                "packs": writer.packs_written, "table": tdigest,
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
        return unseal(snapshot_id, data)

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

    def _fetch(self, snapshot_id: str, codec: Codec, cids: list[bytes],
               _retry: bool = True) -> dict[bytes, bytes]:
        """Plain bytes of chunks, verified. Reads cache first, coalesces ranged reads."""
        out: dict[bytes, bytes] = {}
        todo = []
        use_cache = self.cache is not None and self.backend.remote
        for cid in cids:
            if use_cache:
                assert self.cache is not None
                entry = self.cache.get(cid.hex())
                if entry is not None and len(entry) >= CACHE_HEAD.size:
                    flags, plain_len = CACHE_HEAD.unpack_from(entry)
                    try:
                        out[cid] = codec.decode(cid, entry[CACHE_HEAD.size:], flags, plain_len,
                                                snapshot_id)
                        self.stats.add(chunks_from_cache=1, chunks_decoded=1)
                        continue
                    except SnapshotCorrupt:
                        self.cache.discard(cid.hex())
            todo.append(cid)
        if not todo:
            return out
        locs = self._locate(snapshot_id, todo)
        by_pack: dict[str, list[tuple[bytes, Location]]] = defaultdict(list)
        for cid in todo:
            by_pack[locs[cid].pack].append((cid, locs[cid]))
        runs: list[tuple[str, list[tuple[bytes, Location]]]] = []
        for pack, items in by_pack.items():
            items.sort(key=lambda it: it[1].offset)
            run: list[tuple[bytes, Location]] = []
            for it in items:
                if run and (it[1].offset != run[-1][1].offset + run[-1][1].length
                            or it[1].offset + it[1].length - run[0][1].offset > MAX_RUN):
                    runs.append((pack, run))
                    run = []
                run.append(it)
            if run:
                runs.append((pack, run))

        def fetch_run(r: tuple[str, list[tuple[bytes, Location]]]) -> dict[bytes, bytes]:
            pack, items = r
            start = items[0][1].offset
            end = items[-1][1].offset + items[-1][1].length
            data = self.backend.get_range(pack_key(pack), start, end - start)
            self.stats.add(fetch_requests=1, bytes_fetched=len(data), chunks_fetched=len(items))
            got = {}
            for cid, loc in items:
                stored = data[loc.offset - start:loc.offset - start + loc.length]
                if len(stored) != loc.length:
                    raise SnapshotCorrupt(f"pack {pack} is truncated", snapshot_id, cid.hex())
                got[cid] = codec.decode(cid, stored, loc.flags, loc.plain_len, snapshot_id)
                self.stats.add(chunks_decoded=1)
                if use_cache:
                    assert self.cache is not None
                    self.cache.put(cid.hex(), CACHE_HEAD.pack(loc.flags, loc.plain_len) + stored)
            return got

        try:
            if len(runs) == 1 or threading.current_thread().name.startswith("torpor-snap"):
                for r in runs:
                    out.update(fetch_run(r))
            else:
                for got in self._executor().map(fetch_run, runs):
                    out.update(got)
        except ObjectMissing as exc:
            if not _retry:
                raise SnapshotCorrupt(f"object {exc} is missing", snapshot_id) from None
            self.index.refresh()  # a GC may have repacked; look again once
            out.update(self._fetch(snapshot_id, codec, [c for c in todo if c not in out],
                                   _retry=False))
        return out

    # -------------------------------------------------------------------- get
    def get(self, snapshot_id: str, dest_path: str | os.PathLike[str]) -> Path:
        """Restore a snapshot to dest_path (a file for a one-file snapshot, else a directory).

        Chunks are fetched in parallel, verified, and written in place; all-zero chunks
        are left as holes. Files appear under their final names only once complete.
        """
        manifest = self._manifest(snapshot_id)
        codec = self._codec_for(manifest)
        dest = Path(dest_path)
        single = manifest.doc.get("single_file", False)
        if single and dest.is_dir():
            dest = dest / manifest.files[0].name
        targets = []
        for table in manifest.files:
            target = dest if single else dest / table.name
            target.parent.mkdir(parents=True, exist_ok=True)
            targets.append((table, target))
        for table, target in targets:
            self._restore_file(manifest, codec, table, target)
        return dest

    def _restore_file(self, manifest: Manifest, codec: Codec, table: FileTable,
                      target: Path) -> None:
        tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
        where: dict[bytes, list[int]] = defaultdict(list)
        length: dict[bytes, int] = {}
        for off, ln, cid in zip(table.offsets, table.lengths, table.ids, strict=True):
            where[cid].append(off)
            length[cid] = ln
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

            def restore(cids: list[bytes]) -> None:
                got = self._fetch(manifest.id, codec, cids)
                for cid in cids:
                    data = got[cid]
                    if data.count(0) != len(data):
                        for off in where[cid]:
                            os.pwrite(fd, data, off)

            if len(groups) <= 1:
                for g in groups:
                    restore(g)
            else:
                list(self._executor().map(restore, groups))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        mode = next((f.get("mode") for f in manifest.doc["files"] if f["name"] == table.name),
                    None)
        if mode:
            os.chmod(tmp, mode)
        os.replace(tmp, target)

    def verify(self, snapshot_id: str) -> int:
        """Read and check every chunk of a snapshot; returns how many distinct chunks."""
        manifest = self._manifest(snapshot_id)
        codec = self._codec_for(manifest)
        ids = list(dict.fromkeys(cid for ft in manifest.files for cid in ft.ids))
        step = 2048
        groups = [ids[i:i + step] for i in range(0, len(ids), step)]
        for _ in self._executor().map(lambda g: self._fetch(manifest.id, codec, g), groups):
            pass
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
            res.live_chunks = len(live)
            idset = set(ids)
            for tkey in cand_tables:
                sid = tkey[len("snapshots/"):-len(".table.zst")]
                if sid not in idset and not self.backend.exists(info_key(sid)):
                    self.backend.delete(tkey)
                    res.deleted_other += 1
            for pid, size in sorted(cand_packs.items()):
                try:
                    entries = decode_index(pid, self.backend.get(idx_key(pid)))
                except ObjectMissing:
                    if pid in with_idx:
                        continue  # deleted meanwhile by another gc
                    self.backend.delete(pack_key(pid))  # orphan of an interrupted put
                    res.deleted_packs += 1
                    res.deleted_bytes += size
                    continue
                except SnapshotCorrupt:
                    res.kept_packs += 1
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
            entries.append((cid, Location(new, off, loc.length, loc.plain_len, loc.flags)))
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
        return write_seekable(self, manifest, codec, table, Path(out))
