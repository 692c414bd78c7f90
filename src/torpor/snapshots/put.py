"""Storing a snapshot: files cut into chunks, chunks the store already holds reused,
new ones compressed (a changed memory page as a delta against the parent's page when
that is smaller), packed, and the seek table and the info document written last.

The work is spread over the store's thread pool in segments of `SEGMENT` chunks, a
window of `WINDOW` chunks at a time (the delta bases of a window are fetched at once).
A put writes its marker first and reuses stored chunks only if no gc is running (the
GC protocol in store.py's docstring); the chunks it knows of are its store's chunk
index, brought up to date without listing every pack each time (ChunkIndex.sync).
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog import Catalog, check_id, new_snapshot_id
from .chunking import boundaries, chunk_kind
from .errors import SnapshotError, SnapshotNotFound
from .fetch import ChunkFetcher, cache_entry
from .manifest import (
    FORMAT,
    FORMAT_DELTA,
    WELL_KNOWN,
    FileTable,
    SnapshotInfo,
    encode_table,
    info_key,
    seal,
    table_key,
    unseal,
)
from .markers import live_markers, read_epoch, write_marker
from .packs import DELTA_ENTRY, ChunkIndex, Location, PackWriter
from .parts import StoreParts

log = logging.getLogger(__name__)

SEGMENT = 256          # chunks hashed/compressed per worker task during put
WINDOW = 4096          # chunks planned (and delta bases fetched) at a time during put
ANCHOR_REACH = 16      # pages searched each way for an unchanged neighbour (delta bases)

ParentPages = dict[str, tuple[str, FileTable]]  # file name -> (parent id, its seek table)
Encoded = tuple[bytes, int, bytes | None]       # stored bytes, flags, delta base


def collect_files(path: Path) -> tuple[list[tuple[str, Path]], bool]:
    """(name in the snapshot, path) of the files to store, and whether path is one file."""
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


class DeltaPlanner:
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
class _File:
    """One file being stored: its bytes, chunk bounds and ids, and the parent's file."""

    mm: mmap.mmap
    bounds: list[tuple[int, int]]
    cids: list[bytes]
    parent: tuple[str, FileTable] | None
    planner: DeltaPlanner | None


class PutJob:
    """The chunks of one put: which are new, how each new one is stored, where."""

    def __init__(self, parts: StoreParts, fetcher: ChunkFetcher, reuse: bool,
                 parent_pages: ParentPages) -> None:
        self.parts = parts
        self.fetcher = fetcher
        self.codec = parts.codec
        self.reuse = reuse
        self.parent_pages = parent_pages
        self.cache = parts.cache if parts.backend.remote else None
        self.writer = PackWriter(parts.backend, self.codec.key_id, parts.pack_target,
                                 parts.index.add)
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
            index = self.parts.index
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
        codec = self.codec
        bounds = boundaries(mm, kind)

        def hash_seg(seg: list[tuple[int, int]]) -> list[bytes]:
            return [codec.chunk_id(mm[off:off + ln]) for off, ln in seg]

        segs = [bounds[i:i + SEGMENT] for i in range(0, len(bounds), SEGMENT)]
        cids = [c for res in self.parts.tasks.bounded_map(hash_seg, segs) for c in res]
        pfile = self.parent_pages.get(name) if kind == "page" else None
        planner = DeltaPlanner(pfile[1], cids, self.parts.index) if pfile else None
        f = _File(mm, bounds, cids, pfile, planner)
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
            if todo:
                self._store_new(f, todo)

    def _delta_bases(self, f: _File, todo: list[int]
                     ) -> tuple[dict[int, list[bytes]], dict[bytes, bytes]]:
        """Candidate bases of the chunks to store (by index) and the bases' plain bytes."""
        if f.planner is None or f.parent is None:
            return {}, {}
        cands = {i: f.planner.bases(i) for i in todo}
        need = list(dict.fromkeys(b for bs in cands.values() for b in bs))
        if not need:
            return cands, {}
        try:
            return cands, self.fetcher.fetch(f.parent[0], need, self.codec)
        except SnapshotError as exc:
            log.warning("parent %s of a put is damaged (%s): its pages get no deltas",
                        f.parent[0], exc)
            return cands, {}

    def _encode(self, f: _File, cands: dict[int, list[bytes]], base_plain: dict[bytes, bytes],
                items: list[int]) -> list[Encoded]:
        """The stored form of chunks: compressed alone, or as a delta if that is smaller."""
        codec = self.codec
        out = []
        for i in items:
            off, ln = f.bounds[i]
            piece = f.mm[off:off + ln]
            stored, flags = codec.encode(f.cids[i], piece)
            best: Encoded = (stored, flags, None)
            for b in cands.get(i, ()):
                if b in base_plain:
                    d, dflags = codec.encode_delta(f.cids[i], piece, base_plain[b])
                    # a delta costs an index record more, and a base to read
                    if len(d) + DELTA_ENTRY.size < len(best[0]):
                        best = (d, dflags, b)
            out.append(best)
        return out

    def _store_new(self, f: _File, todo: list[int]) -> None:
        """Encode the chunks not in the store yet (in parallel) and pack them."""
        cands, base_plain = self._delta_bases(f, todo)

        def encode(items: list[int]) -> list[Encoded]:
            return self._encode(f, cands, base_plain, items)

        tsegs = [todo[k:k + SEGMENT] for k in range(0, len(todo), SEGMENT)]
        for tseg, res in zip(tsegs, self.parts.tasks.bounded_map(encode, tsegs), strict=True):
            for i, (stored, flags, base) in zip(tseg, res, strict=True):
                cid = f.cids[i]
                loc = self.known(cid)  # stored meanwhile by another put of this store?
                if loc is None:
                    loc = self.writer.add(cid, stored, f.bounds[i][1], flags, base)
                    self.written[cid] = loc
                    self.new_bytes += loc.length
                    self.new_deltas += base is not None
                    if self.cache is not None:
                        self.cache.put(cid.hex(), cache_entry(loc, stored))
                self._use(cid, loc)


class SnapshotWriter:
    """`put` of a store: see the module docstring."""

    def __init__(self, parts: StoreParts, catalog: Catalog, fetcher: ChunkFetcher) -> None:
        self.parts = parts
        self.catalog = catalog
        self.fetcher = fetcher

    def put(self, path: Path, meta: dict[str, Any], well: dict[str, str | None],
            snapshot_id: str | None) -> SnapshotInfo:
        """Store a file or a directory of files as a new snapshot. well: the well-known
        fields (engine, engine_version, image_digest, parent), None where not given."""
        t0 = time.perf_counter()
        parts = self.parts
        files, single = collect_files(path)
        sid = snapshot_id or new_snapshot_id()
        check_id(sid)
        if parts.backend.exists(info_key(sid)):
            raise SnapshotError(f"snapshot {sid} already exists")
        well = dict(well)
        for k in WELL_KNOWN:
            if well[k] is None and meta.get(k) is not None:
                well[k] = str(meta[k])
        marker = write_marker(parts.backend, "put")
        try:
            reuse = not live_markers(parts.backend, "gc", parts.stale_after)
            if reuse:  # the epoch is read after the gc markers (see ChunkIndex.sync)
                parts.index.sync(read_epoch(parts.backend))
            parent = well["parent"]
            job = PutJob(parts, self.fetcher, reuse,
                         self._delta_parent(parent) if reuse and parts.deltas and parent
                         else {})
            table: list[dict[str, Any]] = []
            for name, fpath in files:
                size = fpath.stat().st_size
                kind = chunk_kind(name, parts.page_chunks)
                chunks = job.add_file(name, fpath, size, kind)
                table.append({"name": name, "size": size, "chunker": kind,
                              "mode": fpath.stat().st_mode & 0o7777, "chunks": chunks})
            job.writer.flush()
            doc, tbytes = self._write_table(job, sid, table, single, well, meta)
            doc["seconds"] = round(time.perf_counter() - t0, 6)
            data = seal(doc)
            parts.backend.put(info_key(sid), data)  # commit point
            if parts.cache is not None:
                parts.cache.put_meta(table_key(sid), tbytes)
                parts.cache.put_meta(info_key(sid), data)
        finally:
            try:
                parts.backend.delete(marker)
            except Exception as exc:  # noqa: BLE001 - a stale marker only delays gc
                log.warning("could not remove put marker %s (gc waits for it until it "
                            "goes stale): %s", marker, exc)
        return SnapshotInfo.from_doc(unseal(sid, data))

    def _delta_parent(self, parent: str) -> ParentPages:
        """The parent's page files (name -> (parent id, seek table)) to take delta
        bases from; empty if the parent is gone, unreadable or under another key."""
        try:
            manifest = self.catalog.manifest(parent)
        except SnapshotNotFound:
            log.debug("parent %s of a put is gone: no page deltas", parent)
            return {}
        except (SnapshotError, ValueError) as exc:
            log.warning("parent %s of a put is unreadable (%s): no page deltas", parent, exc)
            return {}
        if manifest.key_id != self.parts.codec.key_id:
            return {}
        # the parent's packs, should a listing since the last full one have missed them
        # (written elsewhere lately): loaded now, after the gc check, like a listing's
        self.parts.index.ensure(manifest.packs)
        kinds = {f["name"]: f.get("chunker") for f in manifest.doc["files"]}
        return {ft.name: (manifest.id, ft) for ft in manifest.files
                if kinds.get(ft.name) == "page"}

    def _write_table(self, job: PutJob, sid: str, table: list[dict[str, Any]], single: bool,
                     well: dict[str, str | None], meta: dict[str, Any]
                     ) -> tuple[dict[str, Any], bytes]:
        """Write the seek table; returns the info document (but the time the put took)
        and the seek table's bytes."""
        parts = self.parts
        base_lens: dict[bytes, int] = {}
        pack_set = {loc.pack for loc in job.locs.values()}
        for base in set(job.bases_of.values()):
            bloc = parts.index.get(base)
            if bloc is None:  # bases are chosen among located chunks, so: a bug
                raise SnapshotError(f"delta base {base.hex()} vanished during put")
            pack_set.add(bloc.pack)
            if base not in job.unique:
                base_lens[base] = bloc.length
        tbytes = encode_table(table, sorted(pack_set))
        parts.backend.put(table_key(sid), tbytes)
        stored_bytes = sum(job.unique.values()) + sum(base_lens.values())
        codec = parts.codec
        return {
            "format": FORMAT_DELTA if job.bases_of else FORMAT, "id": sid,
            "created": time.time(),
            **well, "key_id": codec.key_id, "hash": codec.hash_name,
            "compression": f"zstd-{codec.level}/chunk" + ("+delta" if job.bases_of else ""),
            "logical_size": sum(f["size"] for f in table), "stored_bytes": stored_bytes,
            "new_bytes": job.new_bytes, "shared_bytes": stored_bytes - job.new_bytes,
            "chunk_count": job.chunk_count, "unique_chunks": len(job.unique),
            "single_file": single, "delta_chunks": len(job.bases_of),
            "new_delta_chunks": job.new_deltas, "base_chunks": len(base_lens),
            "packs": job.writer.packs_written,
            "table": "sha256:" + hashlib.sha256(tbytes).hexdigest(),
            "files": [{"name": f["name"], "size": f["size"], "chunker": f["chunker"],
                       "mode": f["mode"], "chunks": len(f["chunks"])} for f in table],
            "meta": meta,
        }, tbytes
