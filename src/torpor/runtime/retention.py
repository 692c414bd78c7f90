"""Retention of a session's wait-point snapshots: which ones a wait point deletes.

`choose` (pure) applies the session's schedule (torpor.snapshots.retention: `Policy.
retention`, else the server's `--retention`, else last=3,hourly=24,daily=7; or
`Policy.keep_snapshots` N > 0, the newest N) to the session's list. The wait point then
keeps, whatever the schedule says:
- the session's newest snapshot in the store, while none it keeps is stored yet (the new
  one still uploading: losing this machine must leave one to fall back to);
- any snapshot something else refers to (`held`): another session's (a fork starts from
  it; it leaves this session's list but is not deleted: that session deletes it when it
  lets go of it), a pin (`torpor_pins`: a machine fetching it ahead of a restore), one another
  live process took and has not stored yet (its upload would bring it back after the
  delete), and whatever a registered `PinSource` says (the hook for other resources
  that refer to snapshots, e.g. paused sandboxes: `PIN_SOURCES.append(...)`). Those
  transient ones stay in the list, and are looked at again at the next wait point.

Snapshots that are not a session's wait-point snapshots (named checkpoints made with
`torpor sandbox checkpoint`, a sandbox's pause) are never in a session's list, so
retention never deletes them. Their chunks stay as long as their manifests do (gc keeps
every chunk any manifest in the store names).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torpor.db.queries import storage as q
from torpor.runtime.quotas import ON_QUOTA as ON_QUOTA  # (the quotas' home is quotas.py)
from torpor.runtime.quotas import OverQuota as OverQuota
from torpor.runtime.quotas import Quota as Quota
from torpor.runtime.quotas import over_quota as over_quota
from torpor.runtime.types import MACHINE_TTL, Policy
from torpor.snapshots import SnapshotError, SnapshotNotFound
from torpor.snapshots.retention import Retention, RetentionError, select

if TYPE_CHECKING:
    from torpor.runtime.db import RuntimeDB
    from torpor.snapshots import SnapshotStore

log = logging.getLogger(__name__)

LISTED = 16  # keep-everything: how many of the newest a session's row lists
PIN_TTL = 600.0  # how long a pin taken for a fetch or a restore lasts at most
UNLISTED_GRACE = 600.0  # a snapshot no session lists is left alone this long (its wait
#                         point records it a moment before the session's row names it)


def retention_for(policy: Policy, server_default: str = "") -> Retention:
    """The schedule a session's snapshots follow."""
    if policy.keep_snapshots > 0:
        return Retention(last=policy.keep_snapshots, hourly=0, daily=0)
    return Retention.parse(policy.retention or server_default)


def choose(snapshots: list[str], times: dict[str, float],
           retention: Retention) -> tuple[list[str], list[str]]:  # fmt: skip
    """(kept, dropped), each in the list's order (oldest first). A snapshot without a
    recorded time counts as older than every one with a time. Keep-everything lists the
    newest `LISTED` and drops none (the rest stay in the store)."""
    if retention.keep_all:
        return snapshots[-LISTED:], []
    first = min(times.values(), default=0.0)
    keep = select([(s, times.get(s, first - 1.0)) for s in snapshots], retention)
    return [s for s in snapshots if s in keep], [s for s in snapshots if s not in keep]


# -- what refers to a snapshot ----------------------------------------------------------------

@dataclass(frozen=True)
class Hold:
    """Why a snapshot must not be deleted now; `transient`: look again later (it stays in
    the session's list), else another owner has it (it leaves the list, undeleted)."""

    why: str
    transient: bool = True


# (database, snapshot, the session whose wait point asks) -> a Hold, or None
PinSource = Callable[["RuntimeDB", str, str], Hold | None]


def _other_session(db: RuntimeDB, snapshot: str, session: str) -> Hold | None:
    if db.snapshot_in_use(snapshot, besides=session):
        return Hold("another session (a fork) starts from it", transient=False)
    return None


def _pinned(db: RuntimeDB, snapshot: str, session: str) -> Hold | None:
    with db.database.read() as tx:
        holder = q.pin_holder(tx, snapshot, time.time())
    return None if holder is None else Hold(f"pinned by {holder}")


PIN_SOURCES: list[PinSource] = [_other_session, _pinned]


def held(db: RuntimeDB, snapshot: str, session: str, *, process: str,
         stored: Callable[[str], bool] | None) -> Hold | None:  # fmt: skip
    """Why `snapshot` must stay (None: it may go)."""
    for source in PIN_SOURCES:
        hold = source(db, snapshot, session)
        if hold is not None:
            return hold
    holder = db.snapshot_holder(snapshot)
    if (holder is not None and holder[1] != process and stored is not None
            and not stored(snapshot) and db.process_alive(holder[1], MACHINE_TTL)):
        return Hold(f"{holder[1]} on machine {holder[0]} is still uploading it")
    return None


def snapshot_times(db: RuntimeDB, ids: list[str]) -> dict[str, float]:
    with db.database.read() as tx:
        return {str(r[0]): float(r[1]) for r in q.snapshot_times(tx, ids)}


def named(db: RuntimeDB, snapshot: str) -> bool:
    """Does a session (its latest or listed snapshots) or a sandbox still name it?"""
    with db.database.read() as tx:
        return q.snapshot_named(tx, snapshot)


def forget(db: RuntimeDB, snapshot: str) -> None:
    """Its records (who took it, who holds copies, pins) go with it."""
    with db.database.write() as tx:
        q.forget_snapshot(tx, snapshot)


def delete(db: RuntimeDB, store: SnapshotStore, snapshot: str, whose: str) -> bool:
    """Delete a snapshot from the store (gone already: fine) and then its records; False,
    with a warning, when the store cannot delete it now (it is looked at again later)."""
    try:
        store.delete(snapshot)
    except SnapshotNotFound:
        pass
    except SnapshotError as e:
        log.warning("could not delete snapshot %s %s: %s", snapshot, whose, e)
        return False
    forget(db, snapshot)
    return True


def pin(db: RuntimeDB, snapshot: str, holder: str, ttl: float = PIN_TTL) -> None:
    """Keep `snapshot` from retention's deletes for `ttl` seconds (or until `unpin`)."""
    with db.database.write() as tx:
        q.pin(tx, snapshot, holder, time.time() + ttl)


def unpin(db: RuntimeDB, snapshot: str, holder: str) -> None:
    with db.database.write() as tx:
        q.unpin(tx, snapshot, holder)


def finish_deletes(db: RuntimeDB, store: SnapshotStore, server_default: str, process: str,
                   grace: float = UNLISTED_GRACE) -> list[str]:  # fmt: skip
    """Delete the snapshots a wait point let go of but did not delete (a crash between
    the session's row update and the delete, or a store unreachable then): recorded
    snapshots their session lists no more, under a schedule that deletes (not keep-
    everything), older than `grace`, and that nothing holds. Returns their ids."""
    with db.database.read() as tx:
        rows = q.unlisted_snapshots(tx, time.time() - grace)
    done = []
    for snap, session, policy in rows:
        try:
            if retention_for(Policy.from_json(json.loads(policy)), server_default).keep_all:
                continue
        except (RetentionError, ValueError):
            continue
        if held(db, snap, session, process=process, stored=store.exists) is not None:
            continue
        if delete(db, store, snap, f"of {session}"):
            done.append(snap)
    if done:
        log.info("deleted %d snapshot(s) retention had let go of: %s", len(done),
                 ", ".join(done))
    return done


# -- closed sessions ------------------------------------------------------------------------------

CLOSED_DAYS = 7.0  # default: a closed session's snapshots stay this long (0: for good)


def expire_closed(db: RuntimeDB, store: SnapshotStore, days: float, process: str,
                  now: float | None = None) -> list[str]:  # fmt: skip
    """Delete the snapshots of sessions closed more than `days` ago (0: none); their logs
    stay, and their rows name no snapshot any more (a fork from one is refused). A
    snapshot another session still names (a fork's origin) stays: that session owns it
    now. Returns the sessions done."""
    if days <= 0:
        return []
    now = time.time() if now is None else now
    with db.database.read() as tx:
        rows = q.closed_sessions(tx, now - days * 86400)
    done = []
    for sid, latest, listed in rows:
        with db.database.read() as tx:
            snaps = set(q.recorded_of(tx, sid)) | set(json.loads(listed or "[]"))
        snaps |= {latest} if latest else set()
        left = False
        for snap in sorted(snaps):
            hold = held(db, snap, sid, process=process, stored=store.exists)
            if hold is not None:  # a fork's origin (the fork deletes it when it lets go of
                left = left or hold.transient  # it), or pinned: looked at again next time
                continue
            if not delete(db, store, snap, f"of closed session {sid}"):
                left = True
        if not left:
            with db.database.write() as tx:
                q.drop_session_snapshots(tx, sid, now)
            done.append(sid)
    if done:
        log.info("deleted the snapshots of %d session(s) closed over %g days ago", len(done),
                 days)  # fmt: skip
    return done
