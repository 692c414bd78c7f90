"""What the serving process does for the sandboxes it holds live, besides the calls: the
janitor's round (`sweep`: pause or kill the idle ones), `recover` at its start (the
records of sandboxes whose holder died say so), `shutdown` at its end (pause them all).
A part of `Sandboxes` (service.py), which it is mixed into."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from torpor.runtime.sandboxes.activity import FLUSH_EVERY
from torpor.runtime.sandboxes.records import SandboxRow
from torpor.sandbox.engine import SandboxError, SandboxNotFound

logger = logging.getLogger("torpor.sandboxes")


class Housekeeping:
    """Mixed into `Sandboxes`: it has the attributes and methods used here."""

    rt: Any
    records: Any
    activity: Any
    janitor: Any
    _pause_locked: Any
    _hold: Any
    _drop_pause_snapshot: Any
    _check_running: Any
    _lost: Any
    last_activity: Any

    def sweep(self, now: float | None = None) -> list[tuple[str, str]]:
        """The janitor's round: pause or kill (on_timeout) this process's live sandboxes
        idle past their timeout, and write their activity to their rows. Returns (id,
        what was done) for each acted on."""
        now = time.time() if now is None else now
        done = []
        for row in self.records.held_by(self.rt.process):
            last = self.last_activity(row)
            if last - row.last_activity >= FLUSH_EVERY:
                self.records.touch(row.id, last)
            if row.timeout is None or now - last < row.timeout or self.activity.busy(row.id):
                continue
            lock = self.activity.lock(row.id)
            if not lock.acquire(blocking=False):  # a call or a change is under way
                continue
            try:
                fresh = self.records.get(row.id)
                if fresh is None or fresh.version != row.version or \
                        self.activity.busy(row.id):  # fmt: skip
                    continue
                idle = f"idle for {now - last:.0f} s (its timeout: {row.timeout:g} s)"
                if row.on_timeout == "kill":
                    self._kill_idle(fresh, idle)
                else:
                    self._pause_locked(fresh, note=f"paused: {idle}")
                done.append((row.id, row.on_timeout))
            except Exception:
                logger.exception("sandbox %s: its idle %s failed", row.id, row.on_timeout)
            finally:
                lock.release()
        return done

    def _kill_idle(self, row: SandboxRow, idle: str) -> None:
        with contextlib.suppress(SandboxNotFound):
            self.rt.engine.remove(str(row.box), force=True)
        self._hold(row.id, False)
        for s in self.records.snapshots(row.id):
            if s.kind == "pause":
                self._drop_pause_snapshot(s.id)
        self.records.update(row, state="killed", box=None, process=None, snapshot=None,
                            killed_at=time.time(), note=f"killed: {idle}")  # fmt: skip

    def recover(self) -> list[SandboxRow]:
        """At a serving process's start (after its orphans were reaped): the rows of this
        machine's sandboxes whose holder died say so (see `_lost`). Returns those."""
        changed = []
        for row in self.records.running_on(self.rt.machine):
            if row.process == self.rt.process:
                continue
            with self.activity.lock(row.id):
                new = self._check_running(row)
            if new.state != "running":
                changed.append(new)
        return changed

    def shutdown(self) -> list[str]:
        """A serving process stops: the janitor stops and every sandbox it holds live is
        paused (a sandbox that cannot be is killed, its row saying why). Returns their
        ids."""
        self.janitor.stop()
        out = []
        for row in self.records.held_by(self.rt.process):
            with self.activity.lock(row.id):
                fresh = self.records.get(row.id)
                if fresh is None or fresh.state != "running":
                    continue
                try:
                    self._pause_locked(fresh, note="paused: its server stopped")
                except Exception as e:  # noqa: BLE001 - never leave it running
                    logger.warning("sandbox %s: pause at shutdown failed: %s", row.id, e)
                    with contextlib.suppress(SandboxError):
                        self.rt.engine.remove(str(fresh.box), force=True)
                    latest = self.records.get(row.id)
                    if latest is not None and latest.state == "running":
                        self._lost(latest, f"its server stopped and could not pause it ({e})")
                out.append(row.id)
        return out
