"""Collecting the blobs no log entry refers to (after `torpor log prune` or a deleted
session): `collect_blobs(log)`.

Safe with concurrent writers, by a lock. The collector (1) notes the time and lists the
blobs, (2) reads every reference committed, and (3) for those unreferenced and last put
more than `grace` seconds before (1), takes the blob lock exclusively, reads the
references again and deletes those still unreferenced and not put again since
(`ContextLog.delete_unreferenced_blobs`). A writer puts a blob (again, for one already
there: `put` refreshes its time) and then, in the transaction that commits the row
naming it, takes the blob lock shared and checks that the blob is there, putting it back
if the collector deleted it meanwhile (`ContextLog._blobs_there`). Either the writer's
commit comes before the collector's second look (the reference is seen: the blob stays),
or the writer's check comes after the delete (the blob is put back): no committed row
names a deleted blob (tests/snapshots/test_snapshots_scheduled_gc.py races them). The
lock is a PostgreSQL advisory lock (db/queries/log.py: `lock_blobs`); on SQLite a write
transaction excludes every other already. The grace period (default an hour) only
spares the work of deleting blobs a writer is about to name.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from .log import ContextLog

log = logging.getLogger(__name__)

GRACE = 3600.0


@dataclass
class BlobGCResult:
    blobs: int = 0  # in the store when it started
    referenced: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    kept_bytes: int = 0
    young: int = 0  # unreferenced but put within the grace period: kept
    seconds: float = 0.0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def collect_blobs(clog: ContextLog, *, grace: float = GRACE,
                  dry_run: bool = False) -> BlobGCResult:  # fmt: skip
    """Delete the blobs no entry refers to (see the module docstring); dry_run: only
    count them."""
    t0 = time.perf_counter()
    res = BlobGCResult(dry_run=dry_run)
    blobs = clog.blobs
    if blobs is None:
        return res
    started = time.time()
    listed = list(blobs.list())
    wanted = clog.blob_keys()
    res.blobs = len(listed)
    candidates: dict[str, int] = {}
    for key, mtime, size in listed:
        if key in wanted:
            res.referenced += 1
            res.kept_bytes += size
        elif mtime > started - grace:
            res.young += 1
            res.kept_bytes += size
        else:
            candidates[key] = size
    gone = (set(candidates) if dry_run else
            set(clog.delete_unreferenced_blobs(list(candidates), started - grace)))
    for key, size in candidates.items():
        if key in gone:
            res.deleted += 1
            res.deleted_bytes += size
        else:  # referred to or put again since the listing (or gone already)
            res.young += 1
            res.kept_bytes += size
    res.seconds = round(time.perf_counter() - t0, 6)
    if res.deleted:
        log.info("blob gc %s %d blob(s), %d bytes", "would delete" if dry_run else "deleted",
                 res.deleted, res.deleted_bytes)
    return res
