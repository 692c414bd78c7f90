"""How a turn ends other than at its wait point: cancelled by the user (by the worker at
a safe point, or settled by the caller when no worker holds the session), failed in a
live worker, or stopped by a model failure with a durable retry timer."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING

from torpor.context import markers
from torpor.runtime.besteffort import best_effort
from torpor.runtime.transcript import Transcript, answer_open_calls
from torpor.runtime.turn import Turn
from torpor.runtime.waitpoint import (
    close_session,
    let_wait,
    snapshot,
    snapshot_and_remove,
    wait_point,
)
from torpor.sandbox.engine import SandboxError

if TYPE_CHECKING:
    from torpor.agent.types import ModelError
    from torpor.runtime.db import SessionRow
    from torpor.runtime.parts import RuntimeParts
    from torpor.runtime.types import TurnOutcome

logger = logging.getLogger("torpor.runtime")

NOT_RUN = "[torpor] not run: the user cancelled the turn"


def cancelled(turn: Turn) -> TurnOutcome:
    """The user cancelled the turn at a safe point: the command running then was
    stopped (SIGTERM through the workspace), calls that had not run get a result that
    says so, and the sandbox is snapshotted as at any wait point. A close asked for
    closes the session after that."""
    skipped = answer_open_calls(turn.tr, NOT_RUN)
    turn.record(markers.Cancelled(skipped=len(skipped), text=(
        "The user cancelled the turn: the command running then (if any) was stopped and "
        f"{len(skipped)} tool call(s) not yet run were skipped; the sandbox was "
        "snapshotted as it was.")))  # fmt: skip
    turn.outcome.cancelled = True
    try:
        running = turn.rt.engine.inspect(turn.sandbox).state == "running"
    except SandboxError:
        running = False
    if running:
        wait_point(turn)
    else:
        let_wait(turn)
    return turn.outcome


def settle_cancel(rt: RuntimeParts, owner: str, lease_ttl: float, sid: str, *,
                  close: bool = False) -> SessionRow | None:  # fmt: skip
    """Cancel (and close) a session that no live worker holds: a queued message is
    logged but not answered, a retry timer or a dead worker's turn is dropped (the
    sandbox continues from the last snapshot). None if a worker holds it (it sees
    the request in the database at its next safe point)."""
    row = rt.db.claim(sid, owner, lease_ttl)
    if row is None:
        return None
    tr = Transcript(rt.log, sid, rt.log.acquire(sid))
    pending = row.state in ("running", "recovering", "retrying") or bool(rt.db.unread(sid))
    if pending:
        Turn(rt, owner, lease_ttl, tr, row).take_inbox()
        skipped = answer_open_calls(tr, NOT_RUN)
        where = f"snapshot {row.snapshot}" if row.snapshot else "a fresh sandbox"
        tr.write(markers.Cancelled(skipped=len(skipped), text=(
            f"The user cancelled the turn before it ran on; the sandbox continues "
            f"from {where}.")))  # fmt: skip
        tr.write(markers.State(state="waiting"))
    state = "waiting" if pending else row.state
    rt.db.update(sid, owner=owner, state=state, attempt=0, error=None,
                 wake_at=None if pending else row.wake_at, cancel=None,
                 lease_owner=None, lease_until=None)  # fmt: skip
    if close:
        close_session(rt, tr, sid)
    return rt.db.get(sid)


def fail(turn: Turn, err: Exception) -> TurnOutcome:
    """An error raised in this (live) worker that no retry would mend: a configuration
    that broke after creation, a missing image, a tool that raised out of the loop.
    The session goes to `failed` with the error, once; recovery is for dead workers.
    Whatever the turn did to the sandbox is snapshotted, then the sandbox removed. A
    new message takes it back to work (one attempt per message, never a loop)."""
    message = f"{type(err).__name__}: {err}"
    logger.warning("session %s failed: %s", turn.sid, message)
    eng, out = turn.rt.engine, turn.outcome
    with best_effort("snapshot of failed session %s", turn.sid):
        if eng.inspect(turn.sandbox).state == "running":
            out.snapshot, out.snapshot_bytes, out.snapshot_ms = snapshot(
                turn, leave_running=False)
    with contextlib.suppress(SandboxError):
        eng.remove(turn.sandbox, force=True)
    error = turn.write(markers.Error(error=message, kind=type(err).__name__))
    failed = turn.write(markers.State(state="failed", error=message))
    turn.update(state="failed", attempt=0, wake_at=None, error=message, lease_owner=None,
                lease_until=None)  # fmt: skip
    turn.publish(error)
    turn.publish(failed)
    out.state, out.error = "failed", message
    return out


def schedule_retry(turn: Turn, err: ModelError) -> TurnOutcome:
    """The model failed: snapshot and free the sandbox as at a wait point, then set the
    session's durable retry timer (or, not retryable or out of attempts, let it wait with
    the error)."""
    policy = turn.policy
    attempt = turn.rt.db.get(turn.sid).attempt + 1
    snapshot_and_remove(turn)
    if not err.retryable or attempt >= policy.max_attempts:
        why = "not retryable" if not err.retryable else f"failed {attempt} times"
        gave_up = turn.write(markers.ModelError(error=str(err), status=err.status,
                                                attempts=attempt, gave_up=True))  # fmt: skip
        waiting = turn.write(markers.State(state="waiting"))
        turn.update(state="waiting", attempt=0, wake_at=None, error=f"model {why}: {err}",
                    lease_owner=None, lease_until=None)  # fmt: skip
        turn.publish(gave_up)
        turn.publish(waiting)
        turn.outcome.state = "waiting"
        return turn.outcome
    if err.retry_after is not None:
        delay = float(err.retry_after)
    else:
        delay = min(policy.backoff_max, policy.backoff_base * 2 ** (attempt - 1))
        delay *= 0.5 + secrets.randbelow(1000) / 1000  # jitter: 50-150 %
    wake = time.time() + delay
    retry = turn.write(markers.RetryScheduled(attempt=attempt, delay=round(delay, 3),
                                              wake_at=wake, error=str(err),
                                              status=err.status))  # fmt: skip
    turn.update(state="retrying", attempt=attempt, wake_at=wake, error=str(err),
                lease_owner=None, lease_until=None)  # fmt: skip
    turn.publish(retry)
    turn.outcome.state, turn.outcome.wake_at = "retrying", wake
    return turn.outcome
