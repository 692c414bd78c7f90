"""The Worker: claims sessions with work (a lease, fenced by a new epoch of the log) and
runs each turn: bring the sandbox up, recover a dead worker's turn, take the inbox, run
the agent loop with the lease renewed and cancels looked for, end at the wait point (or
a retry, a failure, a cancel). The steps live in bringup, waitpoint and endings; this
module holds the order they run in."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING

from torpor.agent.loop import LoopHooks, run_turn
from torpor.agent.registry import ToolRegistry
from torpor.agent.types import ModelError, ModelTurn, ToolCall, ToolResult
from torpor.context import StaleEpoch
from torpor.runtime import endings, events
from torpor.runtime.besteffort import best_effort
from torpor.runtime.bringup import bring_up, recover
from torpor.runtime.keepwarm import KeepWarm
from torpor.runtime.transcript import Transcript
from torpor.runtime.turn import Turn
from torpor.runtime.types import (
    CANCEL_POLL,
    DEFAULT_LEASE_TTL,
    MACHINE_TTL,
    Cancelled,
    EventSink,
    LeaseLost,
    SessionError,
    TurnOutcome,
)
from torpor.runtime.waitpoint import go_warm, snapshot, wait_point
from torpor.runtime.workspace import SandboxWorkspace
from torpor.sandbox.engine import SandboxError

if TYPE_CHECKING:
    from torpor.runtime.db import SessionRow
    from torpor.runtime.parts import RuntimeParts

logger = logging.getLogger("torpor.runtime")


class Worker:
    """Runs sessions' turns: takes a lease, restores, loops, snapshots, lets go."""

    def __init__(self, runtime: RuntimeParts, *, owner: str | None = None,
                 lease_ttl: float = DEFAULT_LEASE_TTL) -> None:  # fmt: skip
        self.rt = runtime
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.lease_ttl = lease_ttl
        self._mu = threading.Lock()
        self._session_locks: dict[str, threading.Lock] = {}
        self.warm = KeepWarm(runtime, self.owner, lease_ttl, self._lock_for)

    def _lock_for(self, sid: str) -> threading.Lock:
        with self._mu:
            return self._session_locks.setdefault(sid, threading.Lock())

    def cool(self, sid: str) -> None:
        """Snapshot a session's warm sandbox now (its wait point, deferred)."""
        self.warm.cool(sid)

    def cool_all(self) -> None:
        self.warm.cool_all()

    def busy(self) -> list[str]:
        """The sessions this worker is running a turn of (or snapshotting) right now."""
        with self._mu:
            return [sid for sid, lock in self._session_locks.items() if lock.locked()]

    # -- entry points ------------------------------------------------------------------

    def run_session(self, sid: str, *, on_event: EventSink | None = None) -> TurnOutcome:
        row = self.rt.db.claim(sid, self.owner, self.lease_ttl)
        if row is None:
            current = self.rt.db.get(sid)
            raise SessionError(
                f"session {sid} is busy: worker {current.lease_owner} holds it for "
                f"{max(0.0, (current.lease_until or 0) - time.time()):.1f} s more"
            )
        return self._process(row, on_event)

    def run_once(self, *, on_event: EventSink | None = None) -> TurnOutcome | None:
        """Claim any session with work and run it; None if there was nothing to do (or
        the process is shutting down: `Runtime.stopping`)."""
        if self.rt.stopping.is_set():
            return None
        row = self.rt.db.claim_any(self.owner, self.lease_ttl, machine=self.rt.machine,
                                   affinity=self.rt.affinity, machine_ttl=MACHINE_TTL)
        return None if row is None else self._process(row, on_event)

    def serve(self, stop: threading.Event, *, poll: float = 0.2,
              on_event: EventSink | None = None) -> None:  # fmt: skip
        while not stop.is_set():
            try:
                done = self.run_once(on_event=on_event)
            except (LeaseLost, StaleEpoch):
                done = None
            except Exception:  # the database went away, say: say so, wait, go on
                logger.exception("worker %s: claiming or running a turn failed", self.owner)
                done = None
                stop.wait(min(5.0, poll * 10))  # and do not spin on a persistent fault
            if done is None:
                stop.wait(poll)

    def settle_cancel(self, sid: str, *, close: bool = False) -> SessionRow | None:
        """Cancel (and close) a session that no live worker holds (endings.settle_cancel);
        None if a worker holds it."""
        return endings.settle_cancel(self.rt, self.owner, self.lease_ttl, sid, close=close)

    # -- one claimed session -----------------------------------------------------------

    def _process(self, row: SessionRow, on_event: EventSink | None) -> TurnOutcome:
        try:
            with self._lock_for(row.id):
                warm_here = self.warm.take(row.id)
                # Re-read under the lock: a janitor may have snapshotted it meanwhile.
                fresh = self.rt.db.get(row.id)
                self.rt.beat_now()  # busy now: other machines need not wait for this one
                return self._process_locked(fresh, on_event, warm_here)
        finally:
            self.rt.beat_now()  # free again: its sessions' next turns are left to it

    def _process_locked(self, row: SessionRow, on_event: EventSink | None,
                        warm_here: bool) -> TurnOutcome:  # fmt: skip
        rt, sid = self.rt, row.id
        epoch = rt.log.acquire(sid)  # fences off any earlier writer of this session
        turn = Turn(rt, self.owner, self.lease_ttl, Transcript(rt.log, sid, epoch), row,
                    on_event)  # fmt: skip
        stop_beat = self._lease_beat(turn)
        # A waiting session with a timer is a warm one: kept running by this worker, or
        # left behind by a worker that stopped before snapshotting it (its last turn's
        # effects on the sandbox are then lost, and the session recovers).
        warm = row.state == "waiting" and row.wake_at is not None
        warm_here = warm and warm_here and row.lease_owner == self.owner
        warm_lost = warm and not warm_here
        recovering = row.state in ("running", "recovering") or warm_lost
        due = row.state == "retrying" and (row.wake_at or 0) <= time.time()
        if not (recovering or due or rt.db.unread(sid)):
            stop_beat.set()
            if warm_here:  # nothing new: it stays warm, with its lease
                self.warm.keep(sid, row.wake_at or time.time())
            else:
                turn.release()
            return turn.outcome  # nothing to do: no message, no due retry, no broken turn
        try:
            return self._run(turn, recovering=recovering, warm_here=warm_here,
                             warm_lost=warm_lost)  # fmt: skip
        except Cancelled:
            return endings.cancelled(turn)
        except (LeaseLost, StaleEpoch):
            # Another worker has the session now: nothing here is ours to write. The
            # sandbox this worker brought up is removed (unless the new owner, on this
            # machine, has already replaced it with its own).
            self._remove_own_sandbox(turn)
            raise
        except Exception as e:  # noqa: BLE001 - a live worker's error fails the turn once
            return endings.fail(turn, e)
        finally:
            stop_beat.set()

    def _run(self, turn: Turn, *, recovering: bool, warm_here: bool,
             warm_lost: bool) -> TurnOutcome:  # fmt: skip
        rt, row, sid = self.rt, turn.row, turn.sid
        turn.set_state("recovering" if recovering else "running")
        model = rt.model(row.model)  # before any sandbox: a model that fails costs none
        turn.registry = self._registry(row)  # ... and so does a tool this worker lacks
        # The log is read while runsc restores the sandbox (a subprocess, so the two
        # overlap on separate cores): the turn then reads only what was appended since.
        prefetch = turn.tr.prefetch()
        try:
            turn.outcome.restore_ms = bring_up(turn, reuse=warm_here)
        finally:
            prefetch.join()
        turn.own_id = rt.engine.inspect(turn.sandbox).id
        turn.workspace = SandboxWorkspace(rt.engine, turn.sandbox, turn.cancel)
        if recovering:
            recover(turn, warm_lost=warm_lost)
            turn.outcome.recovered = True
            turn.set_state("running")
        turn.take_inbox()
        turn_started = time.monotonic()
        if rt.db.cancel_requested(sid):  # asked for before the turn began: no model call
            raise Cancelled(sid)
        try:
            final = run_turn(turn.tr, model, turn.registry, turn.workspace, system=row.system,
                             hooks=self._hooks(turn))  # fmt: skip
        except ModelError as e:
            return endings.schedule_retry(turn, e)
        turn.outcome.text = final.text
        turn.emit(events.EventType.TURN_FINISHED,
                  seconds=round(time.monotonic() - turn_started, 3))
        warm_seconds = turn.policy.warm_seconds
        if warm_seconds > 0 and not rt.db.cancel_requested(sid):
            go_warm(turn, warm_seconds, self.warm.keep)
        else:
            wait_point(turn)
        return turn.outcome

    def _hooks(self, turn: Turn) -> LoopHooks:
        """The agent loop's hooks: events, the safe points (lease lost, cancel asked), and
        mid-turn snapshots as the policy asks (every K calls, every T seconds)."""
        policy = turn.policy
        since = {"calls": 0, "at": time.monotonic()}  # since the last snapshot

        def on_tool_start(call: ToolCall) -> None:
            turn.check()
            turn.emit(events.EventType.TOOL_CALL_STARTED,
                      **events.tool_call_started(call.id, call.name, call.arguments))

        def on_tool_end(call: ToolCall, result: ToolResult) -> None:
            turn.emit(events.EventType.TOOL_CALL_FINISHED, name=call.name,
                      **events.tool_call_finished(call.id, result.content,
                                                  is_error=result.is_error,
                                                  ms=result.meta.get("ms")))  # fmt: skip
            turn.check()
            since["calls"] += 1
            by_calls = policy.snapshot_every_calls and (
                since["calls"] >= policy.snapshot_every_calls)
            by_time = policy.snapshot_every_seconds and (
                time.monotonic() - since["at"] >= policy.snapshot_every_seconds)
            if by_calls or by_time:
                snapshot(turn, leave_running=True)
                since.update(calls=0, at=time.monotonic())

        def on_model_turn(mt: ModelTurn, seconds: float) -> None:
            turn.check()
            turn.emit(events.EventType.ASSISTANT, delta=mt.text, tool_calls=len(mt.tool_calls),
                      ms=round(seconds * 1000, 1))  # fmt: skip

        return LoopHooks(on_model_turn, on_tool_start, on_tool_end)

    def _lease_beat(self, turn: Turn) -> threading.Event:
        """Start the turn's heartbeat: it renews the lease every third of its time to live
        (sets turn.lost if it went to another worker) and looks for a cancel every
        CANCEL_POLL seconds (asked for by any process, through the database; sets
        turn.cancel). Returns the event that stops it."""
        stop = threading.Event()
        db, sid, ttl = self.rt.db, turn.sid, self.lease_ttl

        def beat() -> None:
            due = time.monotonic() + ttl / 3
            while not stop.wait(min(CANCEL_POLL, ttl / 3)):
                if not turn.cancel.is_set():
                    with best_effort("cancel poll of session %s", sid):
                        if db.cancel_requested(sid):
                            turn.cancel.set()
                if time.monotonic() < due:
                    continue
                due = time.monotonic() + ttl / 3
                if not db.heartbeat(sid, self.owner, ttl):
                    turn.lost.set()
                    return

        threading.Thread(target=beat, daemon=True).start()
        return stop

    def _registry(self, row: SessionRow) -> ToolRegistry:
        if row.tools is None:
            return self.rt.tools
        return ToolRegistry([self.rt.tools.get(n) for n in row.tools])

    def _remove_own_sandbox(self, turn: Turn) -> None:
        """After a lost lease: remove the sandbox this worker brought up, unless the
        session's new worker (on this machine) has replaced it with its own already."""
        if turn.own_id is None:
            return
        with contextlib.suppress(SandboxError):
            if self.rt.engine.inspect(turn.sandbox).id == turn.own_id:
                self.rt.engine.remove(turn.own_id, force=True)
