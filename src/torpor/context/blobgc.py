"""Collecting the blobs no log entry refers to (after `torpor log prune` or a deleted
session): `collect_blobs(log)`.

Safe with concurrent writers by a grace period. A writer puts a blob (or puts it again:
`put` refreshes an existing blob's time) and then commits the row that refers to it,
within moments. The collector (1) notes the time and lists the blobs, (2) reads every
reference committed, (3) deletes a blob only if it is unreferenced and was last put more
than `grace` seconds before (1), looking at its time again just before deleting it. A blob
whose row is still committing was put within the grace period, so it stays. What is left:
a blob put again (by a writer that found it there) between that last look and the delete,
with its row committed after (2): one request's width; the writer's row then names a blob
that is gone (`torpor log verify` reports it). The default grace, an hour, is far longer
than any write.
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
    for key, mtime, size in listed:
        if key in wanted:
            res.referenced += 1
            res.kept_bytes += size
            continue
        if mtime > started - grace:
            res.young += 1
            res.kept_bytes += size
            continue
        if not dry_run:
            again = blobs.mtime(key)
            if again is None:
                continue  # deleted meanwhile (another collector)
            if again > started - grace:
                res.young += 1
                res.kept_bytes += size
                continue
            blobs.delete(key)
        res.deleted += 1
        res.deleted_bytes += size
    res.seconds = round(time.perf_counter() - t0, 6)
    if res.deleted:
        log.info("blob gc %s %d blob(s), %d bytes", "would delete" if dry_run else "deleted",
                 res.deleted, res.deleted_bytes)
    return res
