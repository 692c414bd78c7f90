"""Deleting snapshots and collecting garbage: `delete` and `retain` remove info documents
and seek tables; `gc` then deletes the packs no snapshot references and rewrites
(repacks) those mostly dead, following the GC protocol of store.py's docstring.

At 10,000 snapshots a gc is some 20,000 small reads (every manifest, every pack index)
and as many deletes: the reads go through the store's thread pool (on S3 each is a
round trip) and the deletes in batches (S3's DeleteObjects takes 1,000 keys).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .backends import new_object_id
from .catalog import Catalog, check_id
from .errors import ObjectMissing, SnapshotCorrupt, SnapshotNotFound
from .manifest import Manifest, SnapshotInfo, info_key, table_key
from .markers import live_markers, new_epoch, scan_markers, write_marker
from .packs import Location, decode_index, encode_index, idx_key, pack_key
from .parts import StoreParts

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

Entries = list[tuple[bytes, Location]]


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
    kept_bytes: int = 0  # what the packs hold after it (live chunks, and dead ones in
    #                      packs mostly live)
    snapshots: int = 0  # manifests read
    dry_run: bool = False  # nothing deleted: the counts say what a gc would delete

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "deleted_packs", "deleted_bytes", "repacked_packs", "kept_packs", "live_chunks",
            "deleted_other", "waited_for", "seconds", "aborted", "kept_bytes", "snapshots",
            "dry_run")}


@dataclass
class _Candidates:
    """What existed when a gc started: the only objects it may delete."""

    packs: dict[str, int]  # pack id -> size of its .pack (0 if only its index was seen)
    with_idx: set[str]     # packs whose index was seen
    tables: list[str]      # seek table keys


class Collector:
    """`delete`, `retain` and `gc` of a store: see the module docstring."""

    def __init__(self, parts: StoreParts, catalog: Catalog) -> None:
        self.parts = parts
        self.catalog = catalog

    def delete(self, snapshot_id: str) -> None:
        """Remove a snapshot (its chunks go at the next gc)."""
        check_id(snapshot_id)
        backend, cache = self.parts.backend, self.parts.cache
        if not backend.exists(info_key(snapshot_id)):
            raise SnapshotNotFound(snapshot_id, backend.url)
        backend.delete(info_key(snapshot_id))
        backend.delete(table_key(snapshot_id))
        if cache is not None:
            cache.discard_meta(info_key(snapshot_id))
            cache.discard_meta(table_key(snapshot_id))

    def retain(self, keep_last: int, by: str, filter: dict[str, Any]) -> list[str]:
        """Keep the newest `keep_last` snapshots per value of meta[by]; delete the rest."""
        if keep_last < 0:
            raise ValueError("keep_last must be >= 0")
        groups: dict[str, list[SnapshotInfo]] = defaultdict(list)
        for info in self.catalog.list(filter):
            if by in info.meta:
                groups[str(info.meta[by])].append(info)
        deleted = []
        for infos in groups.values():
            old = infos[:len(infos) - keep_last] if keep_last else infos
            for info in old:
                self.delete(info.id)
                deleted.append(info.id)
        return deleted

    def gc(self, wait_timeout: float, repack_below: float, poll: float,
           on_wait: Callable[[], None] | None, dry_run: bool = False,
           on_phase: Callable[[str], None] | None = None) -> GCResult:
        """Delete chunks no manifest references; rewrite packs mostly dead (see
        SnapshotStore.gc). dry_run: delete nothing, write no marker, wait for no put; the
        result counts what a gc would delete now (packs an unfinished put is writing
        count as garbage: an estimate from above). on_phase: told what each phase is
        about to do (progress for a person: at 10,000 snapshots a gc takes a minute)."""
        t0 = time.perf_counter()
        res = GCResult(dry_run=dry_run)
        backend = self.parts.backend
        say = on_phase or (lambda _what: None)
        say("listing packs and seek tables")
        cands = self._candidates()
        marker = None if dry_run else write_marker(backend, "gc")
        try:
            if not dry_run and not self._wait_for_puts(res, wait_timeout, poll, on_wait, say):
                return res
            live = self._live_chunks(res, cands, dry_run, say)
            if live is None:
                return res
            indexes = self._read_indexes(res, cands, dry_run, say)
            # a delta copy of a live chunk keeps its base, whichever copy a reader finds
            live.update(loc.base for entries in indexes.values() if entries
                        for c, loc in entries if loc.base is not None and c in live)
            res.live_chunks = len(live)
            self._sweep(res, cands, indexes, live, repack_below, dry_run, say)
            for kind in ("put", "gc"):
                for key in [] if dry_run else scan_markers(backend, kind,
                                                           self.parts.stale_after)[1]:
                    log.info("removing stale %s marker %s (its writer died)", kind, key)
                    backend.delete(key)
        finally:
            if marker is not None:
                backend.delete(marker)
            res.seconds = round(time.perf_counter() - t0, 6)
        return res

    def _candidates(self) -> _Candidates:
        backend = self.parts.backend
        packs: dict[str, int] = {}
        with_idx: set[str] = set()
        for key, _m, size in backend.list("packs/"):
            pid = key[len("packs/"):].rsplit(".", 1)[0]
            if key.endswith(".pack"):
                packs[pid] = size
            elif key.endswith(".idx"):
                with_idx.add(pid)
                packs.setdefault(pid, 0)
        tables = [k for k, _m, _s in backend.list("snapshots/") if k.endswith(".table.zst")]
        return _Candidates(packs, with_idx, tables)

    def _wait_for_puts(self, res: GCResult, wait_timeout: float, poll: float,
                       on_wait: Callable[[], None] | None, say: Callable[[str], None]) -> bool:
        """Wait for the puts running now to end; False (and res.aborted) on timeout."""
        backend, stale_after = self.parts.backend, self.parts.stale_after
        running = live_markers(backend, "put", stale_after)
        res.waited_for = len(running)
        if running:
            say(f"waiting for {len(running)} running put(s) (at most {wait_timeout:g} s)")
        deadline = time.monotonic() + wait_timeout
        while running:
            if on_wait:
                on_wait()
            if time.monotonic() > deadline:
                res.aborted = f"{len(running)} put(s) still running after {wait_timeout}s"
                log.warning("gc aborted: %s", res.aborted)
                return False
            time.sleep(poll)
            still = set(live_markers(backend, "put", stale_after))
            running = [k for k in running if k in still]
        return True

    def _map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """fn over items on the store's threads, in order (here if already on one)."""
        tasks = self.parts.tasks
        if tasks.in_worker():
            return map(fn, items)
        return tasks.bounded_map(fn, list(items))

    def _live_chunks(self, res: GCResult, cands: _Candidates, dry_run: bool,
                     say: Callable[[str], None]) -> set[bytes] | None:  # fmt: skip
        """The chunks every snapshot references (delta bases included); deletes the seek
        tables of snapshots without an info document. None (and res.aborted) if a
        manifest cannot be read: nothing may be deleted then."""
        backend = self.parts.backend
        live: set[bytes] = set()
        ids = self.catalog.ids()
        say(f"reading {len(ids):,} manifests")

        def read(sid: str) -> Manifest | None:
            try:
                return self.catalog.manifest(sid, check=False, keep=False)
            except SnapshotNotFound:
                return None  # deleted since the listing

        try:
            for m in self._map(read, ids):
                if m is None:
                    continue
                res.snapshots += 1
                for ft in m.files:
                    live.update(ft.ids)
                    live.update(ft.bases.values())  # delta bases are needed to read
        except SnapshotCorrupt as exc:
            res.aborted = f"cannot read a manifest, nothing deleted: {exc}"
            log.warning("gc aborted: %s", res.aborted)
            return None
        idset = set(ids)
        for tkey in cands.tables:
            sid = tkey[len("snapshots/"):-len(".table.zst")]
            if sid not in idset and not backend.exists(info_key(sid)):
                if not dry_run:
                    backend.delete(tkey)
                res.deleted_other += 1
        return live

    def _read_indexes(self, res: GCResult, cands: _Candidates, dry_run: bool,
                      say: Callable[[str], None]) -> dict[str, Entries | None]:  # fmt: skip
        """The index of every candidate pack (None: unreadable); deletes the packs
        without an index (left by an interrupted put). The indexes the store's chunk index
        has loaded are not read again (at 10,000 packs, 10,000 GETs fewer)."""
        backend, known = self.parts.backend, self.parts.index

        def read(pid: str) -> Entries | None | Exception:
            entries = known.entries(pid)
            if entries is not None:
                return entries
            try:
                return decode_index(pid, backend.get(idx_key(pid)))
            except (ObjectMissing, SnapshotCorrupt) as exc:
                return exc

        indexes: dict[str, Entries | None] = {}
        orphans = []
        pids = sorted(cands.packs)
        say(f"reading the indexes of {len(pids):,} packs")
        for pid, got in zip(pids, self._map(read, pids), strict=True):
            if isinstance(got, ObjectMissing):
                if pid in cands.with_idx:
                    continue  # deleted meanwhile by another gc
                orphans.append(pack_key(pid))  # orphan of an interrupted put
                res.deleted_packs += 1
                res.deleted_bytes += cands.packs[pid]
            elif isinstance(got, Exception):
                log.warning("gc keeps pack %s: its index is unreadable (%s)", pid, got)
                indexes[pid] = None
            else:
                indexes[pid] = got
        if orphans and not dry_run:
            backend.delete_many(orphans)
        return indexes

    def _sweep(self, res: GCResult, cands: _Candidates, indexes: dict[str, Entries | None],
               live: set[bytes], repack_below: float, dry_run: bool,
               say: Callable[[str], None]) -> None:
        """Delete the packs with no live chunk, repack those mostly dead."""
        dead: list[str] = []
        repack: list[tuple[str, Entries]] = []
        for pid, entries in indexes.items():
            size = cands.packs[pid]
            if entries is None:
                res.kept_packs += 1  # an unreadable index: keep the pack
                res.kept_bytes += size
                continue
            keep = [(c, loc) for c, loc in entries if c in live]
            total = sum(loc.length for _c, loc in entries) or 1
            kept = sum(loc.length for _c, loc in keep)
            if not keep:
                dead.append(pid)
                res.deleted_packs += 1
                res.deleted_bytes += size
            elif kept / total < repack_below:
                repack.append((pid, keep))
                res.repacked_packs += 1
                res.deleted_bytes += total - kept
                res.kept_bytes += kept
            else:
                res.kept_packs += 1
                res.kept_bytes += size
        if dry_run or not (dead or repack):
            return
        backend = self.parts.backend
        say(f"deleting {len(dead):,} packs, rewriting {len(repack):,}")
        new_epoch(backend)  # before any pack goes: puts then list packs again (ChunkIndex.sync)
        for pid, keep in repack:
            self._repack(pid, keep)
        gone = dead + [pid for pid, _keep in repack]
        # every index before any pack: a pack without its index is an orphan the next gc
        # deletes, an index without its pack would offer chunks that are not there
        backend.delete_many([idx_key(p) for p in gone])
        backend.delete_many([pack_key(p) for p in gone])
        self.parts.index.forget_packs(set(gone))

    def _repack(self, pid: str, keep: Entries) -> None:
        """Write a pack's live chunks to a new pack (the caller deletes the old one)."""
        backend, index = self.parts.backend, self.parts.index
        data = backend.get(pack_key(pid))
        parts, entries, off = [], [], 0
        new = new_object_id()
        for cid, loc in keep:
            piece = data[loc.offset:loc.offset + loc.length]
            parts.append(piece)
            entries.append((cid, loc._replace(pack=new, offset=off)))
            off += loc.length
        backend.put(pack_key(new), b"".join(parts))
        backend.put(idx_key(new), encode_index(entries, self.parts.codec.key_id))
        index.add(new, entries)
