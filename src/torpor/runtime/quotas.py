"""Per-tenant quotas on the snapshot store: a limit on the bytes a tenant's snapshots
store and one on how many it has (0: none), what each tenant uses now, and what to do
when it is over.

- **Limits.** The server's (`torpor serve|worker --tenant-stored-bytes/--tenant-snapshots`,
  `Runtime(quota=Quota(...))`) apply to every tenant, unless the tenant has its own in
  `torpor_quotas` (`torpor quota set TENANT`): each of its two limits replaces the
  server's when set (0: none for that tenant), else the server's stays (`effective`).
- **Snapshots** are counted now: the tenant's sessions' recorded wait-point snapshots plus
  its sandboxes' pause and named snapshots (the sandbox resource).
- **Stored bytes** are the last scheduled gc's count (runtime/storage.account, in
  `torpor_usage`) plus what each of the tenant's snapshots stored since added to the store
  (its new bytes, recorded as its upload finishes: `note_stored`, in
  `torpor_usage_added`). That is an upper bound (a snapshot deleted since still counts,
  and one stored while the count ran may count twice) that the next count corrects; it
  never reads a manifest.
- **Over a limit** (`over_quota`), a tenant makes no new sessions, forks, sandboxes or
  named sandbox snapshots (413 for bytes, 429 for snapshots, naming what to delete:
  `what_to_delete`); its sessions keep working, each keeping only its newest snapshot
  (`ON_QUOTA`, runtime/waitpoint.py), and a sandbox's pause is never refused (it would
  lose the sandbox's state): it says it is over instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torpor.db.queries import storage as q
from torpor.snapshots.retention import Retention

if TYPE_CHECKING:
    from torpor.runtime.db import RuntimeDB

log = logging.getLogger(__name__)

NO_TENANT = ""  # the tenant name of sessions and sandboxes made without one (no API tokens)
ON_QUOTA = Retention(last=1, hourly=0, daily=0)  # what a session over its quota keeps
WHAT = ("stored_bytes", "snapshots")
_FLAGS = {"stored_bytes": "--tenant-stored-bytes", "snapshots": "--tenant-snapshots"}


@dataclass(frozen=True)
class Quota:
    """Limits on a tenant's use of the snapshot store (0: none): stored bytes (the last
    count plus what was stored since) and snapshots (counted now)."""

    stored_bytes: int = 0
    snapshots: int = 0

    def __bool__(self) -> bool:
        return self.stored_bytes > 0 or self.snapshots > 0


@dataclass(frozen=True)
class TenantQuota:
    """A tenant's limits in effect: `quota`, and which of them are its own (`torpor quota
    set`) rather than the server's."""

    tenant: str
    quota: Quota
    own: frozenset[str] = frozenset()

    def source(self, what: str) -> str:
        if what in self.own:
            return "its own quota (`torpor quota set`)"
        return f"the server's quota ({_FLAGS[what]})"


@dataclass(frozen=True)
class OverQuota:
    what: str  # "stored_bytes" | "snapshots"
    have: int
    limit: int
    why: str

    @property
    def status(self) -> int:
        """The HTTP status of a request it refuses: 413 (bytes) or 429 (snapshots)."""
        return 413 if self.what == "stored_bytes" else 429


def tenant_key(tenant: str | None) -> str:
    return tenant or NO_TENANT


def _who(tenant: str | None) -> str:
    return f"tenant {tenant!r}" if tenant else "the sessions and sandboxes without a tenant"


# -- limits -------------------------------------------------------------------------------------

def effective(db: RuntimeDB, tenant: str | None, default: Quota) -> TenantQuota:
    """The tenant's limits: its own where it has them, else the server's `default`."""
    key = tenant_key(tenant)
    with db.database.read() as tx:
        row = q.quota_of(tx, key)
    if row is None:
        return TenantQuota(key, default)
    own = {w: int(v) for w, v in zip(WHAT, row, strict=True) if v is not None}
    return TenantQuota(key, Quota(**{**default.__dict__, **own}), frozenset(own))


def set_quota(db: RuntimeDB, tenant: str, *, stored_bytes: int | None = None,
              snapshots: int | None = None) -> tuple[int | None, int | None]:  # fmt: skip
    """Give the tenant limits of its own (0: none; None: leave that one as it is, the
    server's if never set); returns its (stored_bytes, snapshots) now (None: the
    server's)."""
    for v in (stored_bytes, snapshots):
        if v is not None and v < 0:
            raise ValueError(f"a quota is 0 (none) or more, not {v}")
    with db.database.write() as tx:
        row = q.quota_of(tx, tenant) or (None, None)
        got = (row[0] if stored_bytes is None else stored_bytes,
               row[1] if snapshots is None else snapshots)  # fmt: skip
        q.set_quota(tx, tenant, got[0], got[1], time.time())
    return got


def remove_quota(db: RuntimeDB, tenant: str) -> bool:
    """The tenant's limits go back to the server's; False: it had none of its own."""
    with db.database.write() as tx:
        return q.remove_quota(tx, tenant)


def own_quotas(db: RuntimeDB) -> list[tuple[str, int | None, int | None, float]]:
    """(tenant, stored_bytes, snapshots, updated_at) of every tenant with limits of its own
    (None: the server's)."""
    with db.database.read() as tx:
        return [(str(t), None if b is None else int(b), None if n is None else int(n),
                 float(at)) for t, b, n, at in q.quotas(tx)]  # fmt: skip


def known_tenants(db: RuntimeDB) -> list[str]:
    """Every tenant with sessions, sandboxes, a usage count, limits of its own or an API
    token."""
    with db.database.read() as tx:
        return q.known_tenants(tx)


# -- use ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TenantUse:
    """What a tenant uses of the snapshot store now (see the module)."""

    snapshots: int  # its sessions' and its sandboxes' snapshots, counted now
    counted_bytes: int  # stored bytes at the last count (0: not counted yet)
    added_bytes: int  # what its snapshots stored since added (an upper bound)
    counted_at: float | None  # when that count began (None: never)

    @property
    def stored_bytes(self) -> int:
        return self.counted_bytes + self.added_bytes


def snapshot_count(db: RuntimeDB, tenant: str | None) -> int:
    with db.database.read() as tx:
        return (q.tenant_snapshots(tx, tenant or None)
                + q.tenant_sandbox_snapshots(tx, tenant or None))  # fmt: skip


def stored_bytes(db: RuntimeDB, tenant: str | None) -> tuple[int, int, float | None]:
    """(counted, added since, when counted) of the tenant's stored bytes."""
    key = tenant_key(tenant)
    with db.database.read() as tx:
        rows = q.usage_rows(tx, "tenant", name=key)
        at = float(rows[0][7]) if rows else None
        return (int(rows[0][5]) if rows else 0, q.stored_since(tx, key, at or 0.0), at)


def tenant_use(db: RuntimeDB, tenant: str | None) -> TenantUse:
    counted, added, at = stored_bytes(db, tenant)
    return TenantUse(snapshot_count(db, tenant), counted, added, at)


def note_stored(db: RuntimeDB, snapshot: str, meta: dict[str, Any], new_bytes: int) -> None:
    """A snapshot's upload is done, adding `new_bytes` to the store: count them for the
    tenant of the session or sandbox it was taken of (`meta["sandbox"]`: `s-<session>`,
    or the sandbox resource's id), if this database has it. The checkpoint storage's
    listener (runtime/core.py), called on the uploading thread."""
    box = str(meta.get("sandbox") or "")
    if not box or new_bytes <= 0:
        return
    table, owner = (("torpor_sessions", box[2:]) if box.startswith("s-")
                    else ("torpor_sandboxes", box))  # fmt: skip
    with db.database.write() as tx:
        row = q.owner_tenant(tx, table, owner)
        if row is not None:
            q.add_stored(tx, snapshot, tenant_key(row[0]), new_bytes, time.time())


# -- over a limit ---------------------------------------------------------------------------------

def over_quota(db: RuntimeDB, tenant: str | None, quota: Quota) -> OverQuota | None:
    """Is the tenant over one of its limits (its own where it has them, else `quota`, the
    server's)? None: no."""
    limits = effective(db, tenant, quota)
    lim = limits.quota
    if not lim:
        return None
    who = _who(tenant)
    if lim.snapshots > 0:
        n = snapshot_count(db, tenant)
        if n > lim.snapshots:
            return OverQuota("snapshots", n, lim.snapshots,
                             f"{who} has {n} snapshots, over its quota of {lim.snapshots} "
                             f"({limits.source('snapshots')})")  # fmt: skip
    if lim.stored_bytes > 0:
        counted, added, _ = stored_bytes(db, tenant)
        if counted + added > lim.stored_bytes:
            since = f" ({counted:,} at the last count + {added:,} stored since)" if added \
                else ""  # fmt: skip
            return OverQuota("stored_bytes", counted + added, lim.stored_bytes,
                             f"{who} stores {counted + added:,} bytes of snapshots{since}, "
                             f"over its quota of {lim.stored_bytes:,} "
                             f"({limits.source('stored_bytes')})")  # fmt: skip
    return None


def what_to_delete(db: RuntimeDB, tenant: str | None, most: int = 3) -> str:
    """The tenant's largest sessions and sandboxes (as last counted; before any count,
    those with the most snapshots), and how to delete their snapshots: what an answer
    refusing a request over quota says to do."""
    with db.database.read() as tx:
        rows = {k: q.usage_rows(tx, k, tenant=tenant_key(tenant))[:most]
                for k in ("session", "sandbox")}  # fmt: skip
        counts = q.most_snapshots(tx, tenant or None, most)
    cols = {c: i for i, c in enumerate(q.USAGE_COLUMNS)}
    named = {k: [f"{r[cols['name']]} ({int(r[cols['stored']]):,} bytes, "
                 f"{r[cols['snapshots']]} snapshots)" for r in rows[k]]
             or [f"{r[0]} ({r[1]} snapshots)" for r in counts[k]]
             for k in rows}  # fmt: skip
    parts = []
    if named["session"]:
        parts.append(f"Largest sessions: {', '.join(named['session'])}; close those you are "
                     "done with and delete their snapshots (`torpor snapshot rm`)")
    if named["sandbox"]:
        parts.append(f"Largest sandboxes: {', '.join(named['sandbox'])}; delete snapshots you "
                     "no longer need (DELETE /v1/sandboxes/{id}/snapshots/{snapshot}) or "
                     "kill sandboxes you are done with")
    return "; ".join(parts) or ("Close sessions and kill sandboxes you are done with, and "
                                "delete their snapshots")


def refusal(over: OverQuota, what: str, db: RuntimeDB, tenant: str | None) -> str:
    """The message of a request refused over quota (`what`: what it would have made)."""
    return (f"{over.why}: no new {what} until it is under (its sessions keep only their "
            f"newest snapshot meanwhile). {what_to_delete(db, tenant)}")


def quota_json(db: RuntimeDB, tenant: str | None, default: Quota) -> dict[str, Any]:
    """A tenant's limits, what it uses and what is left (the API's usage view): per limit
    `limit` (None: none), `used`, `left` (None: no limit), `from` ('tenant': its own,
    'server')."""
    limits, use = effective(db, tenant, default), tenant_use(db, tenant)
    out: dict[str, Any] = {"tenant": limits.tenant,
                           "counted_bytes": use.counted_bytes, "added_bytes": use.added_bytes,
                           "counted_at": use.counted_at}  # fmt: skip
    for what, used in (("stored_bytes", use.stored_bytes), ("snapshots", use.snapshots)):
        limit = getattr(limits.quota, what)
        out[what] = {"limit": limit or None, "used": used,
                     "left": max(0, limit - used) if limit else None,
                     "from": "tenant" if what in limits.own else "server"}  # fmt: skip
    return out
