"""Scheduled garbage collection, every `every` seconds: the wait-point snapshots retention
let go of but a crash kept from being deleted (runtime/retention.finish_deletes), those
of sessions closed more than `closed_days` ago (expire_closed; their logs stay), the
snapshot store's packs no snapshot references (the store's GC protocol, safe with
concurrent puts on file and S3: snapshots/store.py) and the context log's blobs no entry
references (context/blobgc.py); then it counts what the store holds per session,
sandbox and tenant (`account`, torpor.snapshots.usage) into `torpor_usage`, which the
API's /v1/usage and session views, the quotas (runtime/quotas.py) and /metrics read
(`recorded_usage`).

One process per snapshot store runs it at a time, whatever machine it is on: several
machines share one bucket, so the guard is a named lease in the database
(`torpor_leases`, name `gc:<store url>`), not a local lock. Every process that runs
sessions (`torpor serve`, `torpor worker`) looks every `poll` seconds; the first to take
the lease when a run is due runs it, extending the lease while it works. When it is done
it lets the lease expire and leaves in its note the run's result and the running totals
(when, what it freed, how long it took), which the next holder reads to know whether a run
is due, and which `/metrics` reports (`statuses`). A holder that dies
mid-run leaves a lease that expires after `lease_ttl`; the next run starts over (the
store's protocol needs nothing finished: a gc cut short deleted only what was garbage).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torpor.context.blobgc import GRACE, collect_blobs
from torpor.db.queries import storage as q
from torpor.runtime import retention
from torpor.runtime.quotas import NO_TENANT
from torpor.snapshots.usage import StoreUsage, usages

if TYPE_CHECKING:
    from torpor.context import ContextLog
    from torpor.runtime.db import RuntimeDB
    from torpor.snapshots import SnapshotStore

log = logging.getLogger(__name__)

GC_EVERY = 3600.0  # default seconds between scheduled runs
GC_LEASE_TTL = 60.0  # the lease lasts this long without being extended
GC_PREFIX = "gc:"


def lease_name(store_url: str) -> str:
    return GC_PREFIX + store_url


@dataclass
class GCStatus:
    """What the last scheduled gc of a store left in its lease's note."""

    store: str
    holder: str | None  # the process running one now (None: none)
    last: dict[str, Any] | None  # the last run: at, seconds, snapshots, blobs, error
    runs: int = 0
    freed_bytes: int = 0  # packs and blobs, over every run

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _status(name: str, row: tuple[Any, ...] | None, now: float) -> GCStatus:
    store = name[len(GC_PREFIX):]
    if row is None:
        return GCStatus(store=store, holder=None, last=None)
    owner, until, note = row
    doc = json.loads(note) if note else {}
    return GCStatus(store=store, holder=owner if float(until) > now else None,
                    last=doc.get("last"), runs=int(doc.get("runs", 0)),
                    freed_bytes=int(doc.get("freed_bytes", 0)))  # fmt: skip


def statuses(db: RuntimeDB) -> list[GCStatus]:
    """The scheduled gc's status of every store this database's processes collect."""
    now = time.time()
    with db.database.read() as tx:
        rows = q.named_leases(tx, GC_PREFIX)
    return [_status(str(r[0]), tuple(r[1:]), now) for r in rows]


# -- accounting ----------------------------------------------------------------------------------

def account(db: RuntimeDB, store: SnapshotStore) -> dict[str, StoreUsage]:
    """Stored bytes per session, per sandbox of the sandbox resource and per tenant
    (torpor.snapshots.usage: logical, stored, exclusive, shared). A snapshot is a
    session's (known from torpor_snapshots, else from the sandbox it was taken of,
    `s-<session>`) or a sandbox's (its pause and named snapshots: torpor_sandbox_snapshots,
    else the sandbox it was taken of); either counts for their tenant. Others (a
    `torpor sandbox checkpoint`, say) count in the store's total only. Reads every
    manifest and pack index."""
    with db.database.read() as tx:
        recorded = {str(r[0]): str(r[1]) for r in q.snapshot_sessions(tx)}
        tenants = {str(r[0]): r[1] for r in q.session_tenants(tx)}
        boxed = {str(r[0]): str(r[1]) for r in q.sandbox_snapshot_owners(tx)}
        box_tenants = {str(r[0]): r[1] for r in q.sandbox_tenants(tx)}

    def session(sid: str, meta: dict[str, Any]) -> str | None:
        if sid in recorded:
            return recorded[sid]
        box = str(meta.get("sandbox") or "")
        return box[2:] if box.startswith("s-") and box[2:] in tenants else None

    def sandbox(sid: str, meta: dict[str, Any]) -> str | None:
        if sid in boxed:
            return boxed[sid]
        box = str(meta.get("sandbox") or "")
        return box if sid not in recorded and box in box_tenants else None

    def tenant(sid: str, meta: dict[str, Any]) -> str | None:
        owner = session(sid, meta)
        if owner is not None:
            return str(tenants.get(owner) or NO_TENANT)
        box = sandbox(sid, meta)
        return None if box is None else str(box_tenants.get(box) or NO_TENANT)

    return usages(store, {"session": session, "sandbox": sandbox, "tenant": tenant})


def record_usage(db: RuntimeDB, got: dict[str, StoreUsage], at: float | None = None) -> None:
    """Replace the usage rows (what the API's views, the quotas and /metrics read) with
    `got`, a count that began at `at` (default now): what was stored before then is in
    it, so its record in torpor_usage_added goes (runtime/quotas.py)."""
    with db.database.read() as tx:
        owners = {"session": {str(r[0]): r[1] for r in q.session_tenants(tx)},
                  "sandbox": {str(r[0]): r[1] for r in q.sandbox_tenants(tx)}}
    now = time.time() if at is None else at
    rows: list[tuple[Any, ...]] = []
    for kind, u in got.items():
        for name, g in u.groups.items():
            tenant = (owners[kind].get(name) or NO_TENANT) if kind in owners else name
            rows.append((kind, name, tenant, g.snapshots, g.logical, g.referenced,
                         g.exclusive, now))  # fmt: skip
    total = next(iter(got.values()), None)
    if total is not None:  # the store's row: stored = every pack's bytes, exclusive = live
        rows.append(("store", "", None, total.snapshots, 0, total.pack_bytes,
                     total.live_bytes, now))  # fmt: skip
    with db.database.write() as tx:
        q.replace_usage(tx, rows)
        q.drop_stored_before(tx, now)


def usage_json(row: tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(q.USAGE_COLUMNS, row, strict=True))
    d["shared"] = int(d["stored"]) - int(d["exclusive"])
    return d


def recorded_usage(db: RuntimeDB, kind: str, *, tenant: str | None = None,
                   name: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The usage rows the last scheduled gc wrote (logical, stored, exclusive, shared
    bytes, snapshots, when), of a kind ('session', 'tenant', 'store')."""
    with db.database.read() as tx:
        return [usage_json(r) for r in q.usage_rows(tx, kind, tenant=tenant, name=name)]


class ScheduledGC:
    """Runs the gc of one snapshot store (and the log's blobs) when due, under the lease."""

    def __init__(self, db: RuntimeDB, store: SnapshotStore, clog: ContextLog | None,
                 owner: str, *, every: float = GC_EVERY, lease_ttl: float = GC_LEASE_TTL,
                 blob_grace: float = GRACE, retention: str = "",
                 closed_days: float = 0.0) -> None:  # fmt: skip
        self.db, self.store, self.clog, self.owner = db, store, clog, owner
        self.retention = retention  # the server's default schedule (finish_deletes)
        self.closed_days = closed_days  # closed sessions' snapshots go after (0: never)
        self.every, self.lease_ttl, self.blob_grace = every, lease_ttl, blob_grace
        self.name = lease_name(store.url)

    def status(self) -> GCStatus:
        with self.db.database.read() as tx:
            return _status(self.name, q.named_lease(tx, self.name), time.time())

    def _take(self) -> bool:
        now = time.time()
        with self.db.database.write() as tx:
            return q.take_named_lease(tx, self.name, self.owner, now + self.lease_ttl, now)

    def run_once(self, *, force: bool = False) -> dict[str, Any] | None:
        """Run a gc if one is due (or `force`) and no other process runs one; returns the
        run's result (None: nothing run)."""
        if not self._take():
            return None
        note: str | None = None
        try:
            st = self.status()
            if not force and st.last and time.time() - float(st.last["at"]) < self.every:
                return None
            last = self._run()
            note = json.dumps({"last": last, "runs": st.runs + 1,
                               "freed_bytes": st.freed_bytes + last["freed_bytes"]})
            return last
        finally:
            with self.db.database.write() as tx:
                q.end_named_lease(tx, self.name, self.owner, note)

    def _run(self) -> dict[str, Any]:
        stop = threading.Event()
        keeper = threading.Thread(target=self._keep, args=(stop,), name="torpor-gc-lease",
                                  daemon=True)  # fmt: skip
        keeper.start()
        t0 = time.monotonic()
        out: dict[str, Any] = {"by": self.owner, "error": None}
        try:
            # first, what a wait point let go of but a crash kept it from deleting
            out["unlisted_deleted"] = len(retention.finish_deletes(
                self.db, self.store, self.retention, self.owner))
            out["closed_sessions_expired"] = len(retention.expire_closed(
                self.db, self.store, self.closed_days, self.owner))
            snaps = self.store.gc(wait_timeout=600.0, on_phase=lambda what: log.info(
                "scheduled gc of %s: %s", self.store.url, what))
            out["snapshots"] = snaps.as_dict()
            freed = snaps.deleted_bytes
            if snaps.aborted:
                out["error"] = f"snapshot store: {snaps.aborted}"
            if self.clog is not None and self.clog.blobs is not None:
                blobs = collect_blobs(self.clog, grace=self.blob_grace)
                out["blobs"] = blobs.as_dict()
                freed += blobs.deleted_bytes
            counted_from = time.time()  # (what is stored from now on may count twice)
            used = account(self.db, self.store)
            record_usage(self.db, used, at=counted_from)
            out["stored_bytes"] = used["session"].pack_bytes
        except Exception as e:  # a background job: say why, try again at the next one
            log.warning("scheduled gc of %s failed: %s", self.store.url, e)
            out["error"] = str(e) or type(e).__name__
            freed = out.get("snapshots", {}).get("deleted_bytes", 0)
        finally:
            stop.set()
            keeper.join(5)
        out.update(at=time.time(), seconds=round(time.monotonic() - t0, 3), freed_bytes=freed)
        log.info("scheduled gc of %s freed %d bytes in %.1f s", self.store.url, freed,
                 out["seconds"])
        return out

    def _keep(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease_ttl / 3):
            try:
                if not self._take():
                    log.warning("scheduled gc of %s: another process took its lease",
                                self.store.url)
                    return  # (it goes on: two gcs at once are safe, only wasteful)
            except Exception as e:  # noqa: BLE001 - the database away for a moment
                log.warning("scheduled gc: extending its lease failed: %s", e)

    def run(self, stop: threading.Event, *, poll: float | None = None) -> None:
        """Look every `poll` seconds (default: a tenth of `every`, 1 s to 5 min) until
        `stop` is set."""
        poll = poll if poll is not None else min(300.0, max(1.0, self.every / 10))
        while not stop.wait(poll):
            try:
                self.run_once()
            except Exception:  # a background helper: log, go on
                log.exception("scheduled gc of %s failed", self.store.url)
