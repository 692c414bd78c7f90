"""Snapshots and wait points: checkpoint the sandbox into the store (mid-turn or at the
wait point), delete the older ones retention lets go (runtime/retention.py), let the
session wait (or close, when asked), or defer the wait point by keeping the sandbox warm."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from torpor.context import Entry, markers
from torpor.runtime import quotas, retention
from torpor.runtime.besteffort import best_effort
from torpor.runtime.turn import Turn
from torpor.runtime.types import LeaseLost, Policy
from torpor.sandbox.checkpoints import CheckpointNotFound
from torpor.sandbox.engine import CheckpointError, SandboxError

if TYPE_CHECKING:
    from torpor.runtime.parts import RuntimeParts
    from torpor.runtime.transcript import Transcript

log = logging.getLogger(__name__)


def snapshot(turn: Turn, *, leave_running: bool) -> tuple[str, int, float]:
    """Checkpoint the sandbox, record the snapshot (marker, holder, the session's row);
    returns (snapshot id, bytes, ms)."""
    rt, tr = turn.rt, turn.tr
    t0 = time.monotonic()
    ck = rt.engine.checkpoint(turn.sandbox, f"e{tr.epoch}-{secrets.token_hex(2)}",
                              leave_running=leave_running)  # fmt: skip
    ms = (time.monotonic() - t0) * 1000
    # which machine holds it (until its upload is done, the only copy)
    rt.db.record_snapshot(ck.id, tr.session, rt.machine, rt.process)
    seq = rt.log.head_seq(tr.session)
    taken = turn.write(markers.SnapshotTaken(snapshot=ck.id, seq=seq, bytes=ck.size,
                                             ms=round(ms, 1), mid_turn=leave_running,
                                             machine=rt.machine))  # fmt: skip
    row = rt.db.get(tr.session)
    schedule = retention.retention_for(Policy.from_json(row.policy), rt.retention)
    over = quotas.over_quota(rt.db, row.tenant, rt.quota)
    kept, drop = _kept(rt, tr.session, row.snapshots, ck.id,
                       quotas.ON_QUOTA if over else schedule)  # fmt: skip
    if not turn.update(snapshot=ck.id, snapshot_seq=seq, snapshots=kept):
        raise LeaseLost(f"worker {turn.owner} lost the lease on {tr.session}")
    for old in drop:
        drop_snapshot(rt, tr.session, old)
    if over is not None:  # which of them the schedule would have kept, and why they went
        extra = [d for d in drop if d in _kept_by(rt, [*row.snapshots, ck.id], schedule)]
        if extra:
            turn.write(markers.RetentionNote(deleted=extra, why=over.why + "; its sessions "
                                             "keep only their newest snapshot until it is "
                                             "under"))  # fmt: skip
    turn.publish(taken)  # once the row has it
    return ck.id, ck.size, ms


def _kept_by(rt: RuntimeParts, snaps: list[str], schedule: retention.Retention) -> set[str]:
    return set(retention.choose(snaps, retention.snapshot_times(rt.db, snaps), schedule)[0])


def _kept(rt: RuntimeParts, session: str, snapshots: list[str], new: str,
          schedule: retention.Retention) -> tuple[list[str], list[str]]:  # fmt: skip
    """The session's snapshots to keep and those to delete, `new` taken (runtime/
    retention.py: the schedule, then what must stay whatever it says)."""
    snaps = [*snapshots, new]
    kept, drop = retention.choose(snaps, retention.snapshot_times(rt.db, snaps), schedule)
    stored = rt.checkpoint_storage("stored")
    if drop and stored is not None and not any(stored(k) for k in kept):
        # None of the kept ones is in the store yet (the new one is uploading): the
        # newest that is stays, so that losing this machine (or a power cut) before
        # the upload leaves a snapshot to fall back to. It goes at a later wait point.
        kept, drop = [drop[-1], *kept], drop[:-1]
    stay = set(kept)
    for old in drop:
        hold = retention.held(rt.db, old, session, process=rt.process, stored=stored)
        if hold is not None and hold.transient:
            stay.add(old)  # looked at again at the next wait point
    return [s for s in snaps if s in stay], [s for s in drop if s not in stay]


def drop_snapshot(rt: RuntimeParts, session: str, snapshot: str) -> None:
    """Retention: delete a snapshot that fell out of the kept ones (unless another
    session now owns it: a fork starts from it)."""
    if rt.db.snapshot_in_use(snapshot, besides=session):
        return  # a fork starts from it
    try:
        rt.engine.remove_checkpoint(None, snapshot)
    except CheckpointNotFound:
        pass
    except CheckpointError as e:  # (the store unreachable, say): it stays in the store
        log.warning("retention could not delete snapshot %s of %s: %s", snapshot, session, e)
        return
    with best_effort("forgetting the records of snapshot %s", snapshot):
        retention.forget(rt.db, snapshot)  # (a record left behind: the next gc's)


def snapshot_and_remove(turn: Turn) -> None:
    """The sandbox's last snapshot of the turn, into the outcome; then the sandbox goes."""
    out = turn.outcome
    out.snapshot, out.snapshot_bytes, out.snapshot_ms = snapshot(turn, leave_running=False)
    with contextlib.suppress(SandboxError):
        turn.rt.engine.remove(turn.sandbox, force=True)  # nothing left running: no memory


def wait_point(turn: Turn) -> None:
    """Snapshot, remove the sandbox, let go: the session waits (or, if a close was
    asked for meanwhile, is closed). A cancel asked for is done: the turn ended."""
    snapshot_and_remove(turn)
    let_wait(turn)
    if turn.rt.standby_size > 0:  # ready for when this session (or another) resumes
        turn.rt.standbys(turn.row.image).refill()


def let_wait(turn: Turn) -> None:
    """The session waits for its user and the lease is let go; a close asked for is
    done first, under the lease (let go before it, a canceller that found the session
    free would close it too, and one of the two would write to a closed log)."""
    rt, sid = turn.rt, turn.sid
    asked = rt.db.cancel_requested(sid)
    waiting = turn.write(markers.State(state="waiting"))
    if asked == "close":
        turn.update(state="waiting", attempt=0, wake_at=None, error=None)
        turn.publish(waiting)
        turn.publish(close_session(rt, turn.tr, sid))  # (and lets go of the lease)
        turn.outcome.state = "closed"
        return
    turn.update(state="waiting", attempt=0, wake_at=None, error=None, lease_owner=None,
                lease_until=None, cancel=None)  # fmt: skip
    turn.publish(waiting)
    turn.outcome.state = "waiting"


def go_warm(turn: Turn, seconds: float, keep_warm: Callable[[str, float], None]) -> None:
    """A deferred wait point: the sandbox keeps running (and this worker keeps the
    lease) for `seconds`; then the janitor snapshots it. wake_at marks it warm."""
    until = time.time() + seconds
    waiting = turn.write(markers.State(state="waiting", warm_until=round(until, 3)))
    turn.update(state="waiting", attempt=0, wake_at=until, error=None,
                lease_until=until + turn.lease_ttl)  # fmt: skip
    keep_warm(turn.sid, until)
    turn.publish(waiting)
    turn.outcome.state = "waiting"


def close_session(rt: RuntimeParts, tr: Transcript, sid: str) -> Entry:
    """The session takes no more messages; its log stays (and is marked closed). Returns
    the `state` marker that says so."""
    closed = tr.write(markers.State(state="closed"))
    rt.db.update(sid, state="closed", lease_owner=None, lease_until=None, wake_at=None,
                 cancel=None)  # fmt: skip
    with best_effort("closing the log of session %s", sid):
        rt.log.close_session(sid)
    return closed
