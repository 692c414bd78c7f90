"""Reading a stored snapshot: whole, into files (`get`, with older local copies as
seeds), chunk by chunk to check it (`verify`), or by random access (`SnapshotReader`).

A restored file is written to a temporary name next to its target, in place: ranges
shared with a seed copied in the kernel, the other chunks fetched in groups of
`GROUP_BYTES` in parallel; all-zero pages are left as holes. It gets its final name
only once complete.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from pathlib import Path

from . import seeding
from .catalog import Catalog
from .chunking import PAGE_SIZE
from .codec import Codec
from .errors import SnapshotCorrupt, SnapshotNotFound
from .fetch import ChunkFetcher
from .manifest import FileTable, Manifest
from .parts import StoreParts

log = logging.getLogger(__name__)

GROUP_BYTES = 8 << 20  # plain bytes per parallel task during get
VERIFY_STEP = 2048     # chunks per parallel task during verify

Seeds = Sequence[tuple[str, str | os.PathLike[str]]]


class SnapshotReader:
    """Random access to one file of a stored snapshot; fetches only covering chunks."""

    def __init__(self, fetcher: ChunkFetcher, manifest: Manifest, table: FileTable,
                 codec: Codec, keep_chunks: int = 64) -> None:
        self.fetcher = fetcher
        self.manifest = manifest
        self.table = table
        self.codec = codec
        self.name = table.name
        self.size = table.size
        self._recent: OrderedDict[bytes, bytes] = OrderedDict()
        self._keep = keep_chunks
        self._lock = threading.Lock()

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
            got = self.fetcher.fetch(self.manifest.id, missing, self.codec)
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


def write_all(fd: int, writes: list[tuple[int, bytes]]) -> None:
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


def copy_ranges(fd: int, seeds: list[int], copies: list[tuple[int, int, int, int]]) -> None:
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


def fetch_groups(table: FileTable, fetch: list[int]) -> tuple[
        dict[bytes, list[int]], list[list[bytes]]]:  # fmt: skip
    """For the chunks of table at indexes `fetch`: the offsets of each distinct chunk,
    and the distinct chunks in groups of about GROUP_BYTES (one parallel task each)."""
    where: dict[bytes, list[int]] = defaultdict(list)
    length: dict[bytes, int] = {}
    for i in fetch:
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
    return where, groups


class SnapshotRestorer:
    """`get`, `verify` and `open` of a store: see the module docstring."""

    def __init__(self, parts: StoreParts, catalog: Catalog, fetcher: ChunkFetcher) -> None:
        self.parts = parts
        self.catalog = catalog
        self.fetcher = fetcher

    def open(self, snapshot_id: str, name: str | None = None) -> SnapshotReader:
        """A reader over the snapshot's one file, or over its file `name`."""
        manifest = self.catalog.manifest(snapshot_id)
        codec = self.catalog.codec_for(manifest)
        return SnapshotReader(self.fetcher, manifest, manifest.file(name), codec)

    def verify(self, snapshot_id: str) -> int:
        """Read and check every chunk of a snapshot; returns how many distinct chunks."""
        manifest = self.catalog.manifest(snapshot_id)
        codec = self.catalog.codec_for(manifest)
        ids = list(dict.fromkeys(cid for ft in manifest.files for cid in ft.ids))
        groups = [ids[i:i + VERIFY_STEP] for i in range(0, len(ids), VERIFY_STEP)]
        self.parts.tasks.map(lambda g: self.fetcher.fetch(manifest.id, g, codec), groups)
        return len(ids)

    def get(self, snapshot_id: str, dest_path: str | os.PathLike[str], seeds: Seeds,
            sync: bool) -> Path:
        """Restore a snapshot to dest_path (see SnapshotStore.get)."""
        manifest = self.catalog.manifest(snapshot_id)
        codec = self.catalog.codec_for(manifest)
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

    def _seed_files(self, seeds: Seeds) -> dict[str, list[tuple[FileTable, Path]]]:
        """File name -> (seek table, local path) of the usable seeds, in the given order."""
        out: dict[str, list[tuple[FileTable, Path]]] = defaultdict(list)
        for sid, where in seeds:
            try:
                seed = self.catalog.manifest(sid)
            except (SnapshotNotFound, SnapshotCorrupt) as exc:
                log.info("seed %s not used: %s", sid, exc)
                continue
            root = Path(where)
            for table in seed.files:
                path = root / table.name if root.is_dir() else root
                try:
                    size = path.stat().st_size
                except OSError as exc:
                    log.info("seed file %s not used: %s", path, exc)
                    continue
                if size == table.size:
                    out[table.name].append((table, path))
                else:
                    log.info("seed file %s not used: %d bytes, its snapshot says %d",
                             path, size, table.size)
        return out

    def _restore_file(self, manifest: Manifest, codec: Codec, table: FileTable,
                      target: Path, seeds: list[tuple[FileTable, Path]], sync: bool) -> None:
        tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
        holes: frozenset[bytes] = frozenset()
        if table.lengths and all(ln == PAGE_SIZE for ln in table.lengths[:-1]):
            holes = frozenset({codec.chunk_id(bytes(PAGE_SIZE)),
                               codec.chunk_id(bytes(table.lengths[-1]))})
        seed_fds: list[tuple[FileTable, int]] = []
        for seed_table, path in seeds:  # opened first: a cache may evict it meanwhile
            try:
                seed_fds.append((seed_table, os.open(path, os.O_RDONLY)))
            except OSError as exc:
                log.info("seed file %s not used: %s", path, exc)
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
        where, groups = fetch_groups(table, plan.fetch)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, table.size)
            if plan.copies:
                copy_ranges(fd, [f for _, f in seeds], plan.copies)
                self.parts.stats.add(bytes_from_seeds=plan.copied_bytes)

            def restore(cids: list[bytes]) -> None:
                got = self.fetcher.fetch(manifest.id, cids, codec)
                writes = []
                for cid in cids:
                    data = got[cid]
                    if holes or data.count(0) != len(data):
                        writes.extend((off, data) for off in where[cid])
                write_all(fd, writes)

            if len(groups) <= 1:
                for g in groups:
                    restore(g)
            else:
                self.parts.tasks.map(restore, groups)
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
