"""The snapshot store: put/get/open/info/list/delete/gc over a file or S3 backend.

`SnapshotStore` is a facade over the store's parts, which share one `StoreParts`
(parts.py): the catalog of snapshots (catalog.py), the chunk fetcher (fetch.py), the
writer with page deltas (put.py), the reader and restorer (read.py), the collector
(gc.py, with the markers of markers.py), and the seekable export (seekable.py).

Layout of a store (same keys on both backends)::

    snapshots/<id>.json        summary manifest, checksummed; written last (commit point)
    snapshots/<id>.table.zst   seek table: per file, ordered [offset, length, chunk id]
    packs/<pack>.pack          stored chunks back to back (~4 MiB)
    packs/<pack>.idx           chunk id -> offset, length, plain length, flags, base
                               (a delta chunk's base: see codec.py and put.DeltaPlanner)
    locks/put-<n>.json         a put in progress (GC waits for it)
    locks/gc-<n>.json          a GC in progress (puts then do not reuse older chunks)
    gc/epoch.json              changed by a GC before it deletes a pack (see below)

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
A put reuses the chunks of its chunk index, which need not list every pack each time
(ChunkIndex.sync): GC writes a new epoch before its first pack deletion, and a put,
after (b), compares the epoch with the one read before its index last listed every
pack; if it changed, the index lists them all again, dropping the packs gone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

from .backends import Backend
from .cache import ChunkCache
from .catalog import Catalog
from .codec import Codec
from .fetch import ChunkFetcher
from .gc import Collector, GCResult
from .manifest import Manifest, SnapshotInfo
from .packs import PACK_TARGET, ChunkIndex, idx_key
from .parts import ReadStats, StoreParts, TaskPool
from .put import SnapshotWriter
from .read import Seeds, SnapshotReader, SnapshotRestorer
from .seekable import write_seekable

__all__ = ["GCResult", "ReadStats", "SnapshotReader", "SnapshotStore"]

V = TypeVar("V")


class _Shared(Generic[V]):
    """An attribute of the store kept in its StoreParts, so that every part sees a
    change made through the store (e.g. `store.cache = None`)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> _Shared[V]: ...
    @overload
    def __get__(self, obj: SnapshotStore, owner: type) -> V: ...
    def __get__(self, obj: SnapshotStore | None, owner: type) -> V | _Shared[V]:
        if obj is None:
            return self
        value: V = getattr(obj.parts, self.name)
        return value

    def __set__(self, obj: SnapshotStore, value: V) -> None:
        setattr(obj.parts, self.name, value)


class SnapshotStore:
    """A snapshot store over one backend (see the module docstring for the layout)."""

    backend: _Shared[Backend] = _Shared()
    codec: _Shared[Codec] = _Shared()
    cache: _Shared[ChunkCache | None] = _Shared()
    index: _Shared[ChunkIndex] = _Shared()
    stats: _Shared[ReadStats] = _Shared()
    page_chunks: _Shared[bool] = _Shared()
    pack_target: _Shared[int] = _Shared()
    deltas: _Shared[bool] = _Shared()
    stale_after: _Shared[float] = _Shared()

    def __init__(self, backend: Backend, *, key: bytes | None = None,
                 cache: ChunkCache | None = None, page_chunks: bool = True,
                 pack_target: int = PACK_TARGET, workers: int | None = None,
                 stale_after: float = 3600.0, level: int = 3, deltas: bool = True) -> None:
        tasks = TaskPool(workers or min(8, (os.cpu_count() or 2) * 2))
        index = ChunkIndex(
            backend,
            (lambda p: cache.get_meta(idx_key(p))) if cache else None,
            (lambda p, d: cache.put_meta(idx_key(p), d)) if cache else None,
            lambda fn, ids: list(map(fn, ids)) if tasks.in_worker() else tasks.map(fn, ids))
        self.parts = StoreParts(
            backend=backend, codec=Codec(key, level), cache=cache, index=index, tasks=tasks,
            page_chunks=page_chunks, pack_target=pack_target, deltas=deltas,
            stale_after=stale_after)
        self.catalog = Catalog(self.parts)
        self.fetcher = ChunkFetcher(self.parts, self.catalog)
        self._writer = SnapshotWriter(self.parts, self.catalog, self.fetcher)
        self._restorer = SnapshotRestorer(self.parts, self.catalog, self.fetcher)
        self._collector = Collector(self.parts, self.catalog)

    @property
    def url(self) -> str:
        return self.parts.backend.url

    @property
    def key_id(self) -> str | None:
        return self.parts.codec.key_id

    @property
    def workers(self) -> int:
        return self.parts.tasks.workers

    def close(self) -> None:
        self.parts.tasks.close()
        if self.parts.cache is not None:
            self.parts.cache.close()

    def __enter__(self) -> SnapshotStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- put, get
    def put(self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None, *,
            engine: str | None = None, engine_version: str | None = None,
            image_digest: str | None = None, parent: str | None = None,
            snapshot_id: str | None = None) -> SnapshotInfo:
        """Store a file or a directory of files as a new snapshot."""
        well = {"engine": engine, "engine_version": engine_version,
                "image_digest": image_digest, "parent": parent}
        return self._writer.put(Path(path), dict(meta or {}), well, snapshot_id)

    def get(self, snapshot_id: str, dest_path: str | os.PathLike[str], *,
            seeds: Seeds = (), sync: bool = True) -> Path:
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
        return self._restorer.get(snapshot_id, dest_path, seeds, sync)

    def verify(self, snapshot_id: str) -> int:
        """Read and check every chunk of a snapshot; returns how many distinct chunks."""
        return self._restorer.verify(snapshot_id)

    def open(self, snapshot_id: str, name: str | None = None) -> SnapshotReader:
        """A reader over the snapshot's one file, or over its file `name`."""
        return self._restorer.open(snapshot_id, name)

    def fetch_chunks(self, snapshot_id: str, cids: list[bytes]) -> dict[bytes, bytes]:
        """The plain bytes of chunks of a snapshot, verified against their ids: from the
        chunk cache where it has them, else by coalesced ranged reads of their packs."""
        return self.fetcher.fetch(snapshot_id, cids)

    def export(self, snapshot_id: str, name: str | None, out: str | os.PathLike[str]) -> Path:
        """Write one stored file in the Zstandard seekable format."""
        manifest = self.catalog.manifest(snapshot_id)
        codec = self.catalog.codec_for(manifest)
        return write_seekable(lambda ids: self.fetcher.fetch(manifest.id, ids, codec), codec,
                              manifest.file(name), Path(out))  # fmt: skip

    # ------------------------------------------------------------- info, list
    def info(self, snapshot_id: str) -> SnapshotInfo:
        return self.catalog.info(snapshot_id)

    def info_doc(self, snapshot_id: str) -> dict[str, Any]:
        """A snapshot's whole info document (every field put wrote, not only SnapshotInfo's)."""
        return self.catalog.info_doc(snapshot_id)

    def manifest(self, snapshot_id: str) -> Manifest:
        """A snapshot's info document and seek tables (which chunk is where in each file)."""
        return self.catalog.manifest(snapshot_id)

    def exists(self, snapshot_id: str) -> bool:
        return self.catalog.exists(snapshot_id)

    def ids(self) -> list[str]:
        return self.catalog.ids()

    def list(self, filter: dict[str, Any] | None = None, **kw: Any) -> list[SnapshotInfo]:
        """Snapshots, oldest first, whose meta (or engine/parent/...) match every filter."""
        return self.catalog.list(dict(filter or {}, **kw))

    # ------------------------------------------------------- delete, retention, gc
    def delete(self, snapshot_id: str) -> None:
        """Remove a snapshot (its chunks go at the next gc)."""
        self._collector.delete(snapshot_id)

    def retain(self, keep_last: int, by: str = "session", **filter: Any) -> list[str]:
        """Keep the newest `keep_last` snapshots per value of meta[by]; delete the rest."""
        return self._collector.retain(keep_last, by, filter)

    def gc(self, *, wait_timeout: float = 600.0, repack_below: float = 0.5,
           poll: float = 0.05, on_wait: Callable[[], None] | None = None,
           dry_run: bool = False, on_phase: Callable[[str], None] | None = None) -> GCResult:
        """Delete chunks no manifest references; rewrite packs mostly dead.

        Safe with concurrent puts (see the module docstring). Waits up to
        `wait_timeout` seconds for puts already running; if they do not finish, it
        deletes nothing and reports why in `aborted`. dry_run: only count what it would
        delete (no marker, no wait, nothing deleted). on_phase(what): told as each phase
        starts (listing, waiting for puts, reading manifests and pack indexes, deleting).
        """
        return self._collector.gc(wait_timeout, repack_below, poll, on_wait, dry_run,
                                  on_phase)
