"""Fetching chunks: where each chunk lives (the pack index), the chunk cache of a remote
store first, then ranged reads of the packs, coalesced, in parallel; every chunk is
verified against its id, and a delta chunk is decoded once its base is in.

`ChunkFetcher.fetch` is the one way the store's other parts (restores, random reads,
verify, the delta bases of a put) and the seekable export read chunks.

A chunk's record in the cache is its stored form with a small header (`cache_entry`):
flags, plain length, and a delta's base id. A record that fails its check is dropped
and the chunk fetched again.
"""

from __future__ import annotations

import logging
import struct
from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

from .catalog import Catalog
from .codec import FLAG_DELTA, Codec
from .errors import ObjectMissing, SnapshotCorrupt
from .packs import Location, pack_key
from .parts import StoreParts

log = logging.getLogger(__name__)

MAX_RUN = 8 << 20      # largest coalesced ranged read
# Chunks of one pack this close together are fetched in one ranged read, the bytes between
# them read and dropped: a request costs ~10-50 ms on S3 (more on a loaded moto), 1 MiB
# of transfer less. A snapshot's chunks lie in the packs of every wait point that
# stored one of them, so a restore with nothing local made ~380 reads of ~90 KB.
MAX_GAP = 1 << 20
CACHE_HEAD = struct.Struct("<BI")  # cached chunk: flags, plain length, [base id,] stored

Run = tuple[str, list[tuple[bytes, Location]]]  # a pack and chunks read in one request


class Pending(NamedTuple):
    """A delta chunk read, waiting for its base to be decoded."""

    cid: bytes
    stored: bytes
    flags: int
    plain_len: int
    base: bytes
    cached: bool  # read from the chunk cache (a bad one is fetched again)


def cache_entry(loc: Location, stored: bytes) -> bytes:
    """A chunk's local-cache record: flags, plain length, the base id of a delta, bytes."""
    return CACHE_HEAD.pack(loc.flags, loc.plain_len) + (loc.base or b"") + stored


def coalesce(locs: dict[bytes, Location]) -> list[Run]:
    """Group chunks into ranged reads: per pack, by offset, a new read where the gap to
    the previous chunk exceeds MAX_GAP or the read would exceed MAX_RUN."""
    by_pack: dict[str, list[tuple[bytes, Location]]] = defaultdict(list)
    for cid, loc in locs.items():
        by_pack[loc.pack].append((cid, loc))
    runs: list[Run] = []
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
    return runs


class ChunkFetcher:
    """Reads chunks of the store's snapshots (see the module docstring)."""

    def __init__(self, parts: StoreParts, catalog: Catalog) -> None:
        self.parts = parts
        self.catalog = catalog

    def fetch(self, snapshot_id: str, cids: list[bytes], codec: Codec | None = None
              ) -> dict[bytes, bytes]:
        """The plain bytes of chunks of a snapshot, verified against their ids: from the
        chunk cache where it has them, else by coalesced ranged reads of their packs.

        codec: the snapshot's (Catalog.codec_for), if the caller has it already."""
        if codec is None:
            codec = self.catalog.codec_for(self.catalog.manifest(snapshot_id))
        return self._fetch(snapshot_id, codec, cids)

    def locate(self, snapshot_id: str, cids: Iterable[bytes]) -> dict[bytes, Location]:
        """Where each chunk is stored; SnapshotCorrupt for one no pack index lists."""
        index = self.parts.index
        out: dict[bytes, Location] = {}
        missing = []
        if not index.refreshed:
            manifest = self.catalog.cached(snapshot_id)
            if manifest is not None and manifest.packs:
                index.ensure(manifest.packs)  # where its chunks were at put time
            else:
                index.refresh()
        for cid in cids:
            loc = index.get(cid)
            if loc is None:
                missing.append(cid)
            else:
                out[cid] = loc
        if missing:
            index.refresh()
            for cid in missing:
                loc = index.get(cid)
                if loc is None:
                    raise SnapshotCorrupt("chunk is missing from the store", snapshot_id,
                                          cid.hex())
                out[cid] = loc
        return out

    def _use_cache(self) -> bool:
        """Chunks are cached in front of a remote store only."""
        return self.parts.cache is not None and self.parts.backend.remote

    def _fetch(self, snapshot_id: str, codec: Codec, cids: list[bytes],
               bases_only: bool = False) -> dict[bytes, bytes]:
        """Plain bytes of chunks, verified. Reads cache first, coalesces ranged reads.

        Delta chunks are decoded after their bases are fetched (one more round, for
        all of them at once); a base must be a full chunk (`bases_only`)."""
        out: dict[bytes, bytes] = {}
        deltas: list[Pending] = []
        todo = self._from_cache(snapshot_id, codec, cids, out, deltas)
        if todo:
            self._fetch_stored(snapshot_id, codec, todo, out, deltas)
        if not deltas:
            return out
        if bases_only:
            raise SnapshotCorrupt("a delta chunk's base is itself a delta chunk",
                                  snapshot_id, deltas[0].cid.hex())
        need = list(dict.fromkeys(d.base for d in deltas))
        have = {b: out[b] for b in need if b in out}
        have.update(self._fetch(snapshot_id, codec, [b for b in need if b not in have],
                                bases_only=True))
        for d in deltas:
            try:
                out[d.cid] = codec.decode(d.cid, d.stored, d.flags, d.plain_len, snapshot_id,
                                          have[d.base])
            except SnapshotCorrupt as exc:
                if not d.cached:
                    raise
                log.warning("dropped a damaged chunk cache entry (%s): fetching it again", exc)
                assert self.parts.cache is not None
                self.parts.cache.discard(d.cid.hex())
                out.update(self._fetch(snapshot_id, codec, [d.cid]))
                continue
            self.parts.stats.add(chunks_decoded=1)
        return out

    def _from_cache(self, snapshot_id: str, codec: Codec, cids: list[bytes],
                    out: dict[bytes, bytes], deltas: list[Pending]) -> list[bytes]:
        """Decode into `out` the chunks the cache holds (delta ones into `deltas`);
        returns the others, to fetch from the store."""
        cache = self.parts.cache
        if cache is None or not self._use_cache():
            return list(cids)
        stats = self.parts.stats
        todo = []
        bad = 0
        for cid in cids:
            entry = cache.get(cid.hex())
            if entry is not None and len(entry) >= CACHE_HEAD.size:
                flags, plain_len = CACHE_HEAD.unpack_from(entry)
                body = entry[CACHE_HEAD.size:]
                if flags & FLAG_DELTA and len(body) > 32:
                    stats.add(chunks_from_cache=1)
                    deltas.append(Pending(cid, body[32:], flags, plain_len, body[:32], True))
                    continue
                try:
                    out[cid] = codec.decode(cid, body, flags, plain_len, snapshot_id)
                    stats.add(chunks_from_cache=1, chunks_decoded=1)
                    continue
                except SnapshotCorrupt:
                    cache.discard(cid.hex())
                    bad += 1
            todo.append(cid)
        if bad:
            log.warning("dropped %d damaged chunk cache entries of %s: fetching them again",
                        bad, snapshot_id)
        return todo

    def _fetch_stored(self, snapshot_id: str, codec: Codec, todo: list[bytes],
                      out: dict[bytes, bytes], deltas: list[Pending],
                      retry: bool = True) -> None:
        """Fetch chunks from their packs: full ones decoded into `out`, delta ones
        appended to `deltas` (decoded by the caller once their bases are in)."""
        runs = coalesce(self.locate(snapshot_id, todo))
        tasks = self.parts.tasks

        def read(run: Run) -> tuple[dict[bytes, bytes], list[Pending]]:
            return self._read_run(snapshot_id, codec, run)

        try:
            if len(runs) == 1 or tasks.in_worker():
                results = [read(r) for r in runs]
            else:
                results = tasks.map(read, runs)
        except ObjectMissing as exc:
            if not retry:
                raise SnapshotCorrupt(f"object {exc} is missing", snapshot_id) from None
            log.info("%s is gone (a gc may have repacked it): reading the pack indexes again",
                     exc)
            self.parts.index.refresh()
            self._fetch_stored(snapshot_id, codec, todo, out, deltas, retry=False)
            return
        for got, pend in results:
            out.update(got)
            deltas.extend(pend)

    def _read_run(self, snapshot_id: str, codec: Codec, run: Run
                  ) -> tuple[dict[bytes, bytes], list[Pending]]:
        """One ranged read: its full chunks decoded, its delta chunks pending."""
        pack, items = run
        stats = self.parts.stats
        cache = self.parts.cache if self._use_cache() else None
        start = items[0][1].offset
        end = items[-1][1].offset + items[-1][1].length
        data = self.parts.backend.get_range(pack_key(pack), start, end - start)
        stats.add(fetch_requests=1, bytes_fetched=len(data), chunks_fetched=len(items))
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
                pend.append(Pending(cid, stored, loc.flags, loc.plain_len, loc.base, False))
            else:
                got[cid] = codec.decode(cid, stored, loc.flags, loc.plain_len, snapshot_id)
                stats.add(chunks_decoded=1)
            if cache is not None:
                cache.put(cid.hex(), cache_entry(loc, stored))
        return got, pend
