"""Keep-warm sandboxes (Policy.warm_seconds): after a turn the sandbox keeps running, and
its worker keeps the lease, so that a quick reply needs no restore; a janitor thread
snapshots it (the wait point, deferred) when its time is up or a cancel is asked for."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from torpor.runtime.besteffort import best_effort
from torpor.runtime.transcript import Transcript
from torpor.runtime.turn import Turn
from torpor.runtime.types import CANCEL_POLL
from torpor.runtime.waitpoint import wait_point
from torpor.sandbox.engine import SandboxError

if TYPE_CHECKING:
    from torpor.runtime.parts import RuntimeParts

logger = logging.getLogger("torpor.runtime")


class KeepWarm:
    """The sessions one worker keeps warm, and the janitor that cools them."""

    def __init__(self, rt: RuntimeParts, owner: str, lease_ttl: float,
                 lock_for: Callable[[str], threading.Lock]) -> None:  # fmt: skip
        self.rt, self.owner, self.lease_ttl = rt, owner, lease_ttl
        self._lock_for = lock_for  # the worker's lock of a session (held by a running turn)
        self._mu = threading.Lock()
        self._warm: dict[str, float] = {}  # session -> when its warm sandbox is snapshotted
        self._janitor: threading.Thread | None = None

    def keep(self, sid: str, until: float) -> None:
        with self._mu:
            self._warm[sid] = until
            if self._janitor is None:
                self._janitor = threading.Thread(target=self._janitor_loop,
                                                 name="torpor-warm", daemon=True)  # fmt: skip
                self._janitor.start()

    def take(self, sid: str) -> bool:
        """Stop keeping a session warm (its next turn uses the sandbox); True if it was."""
        with self._mu:
            return self._warm.pop(sid, None) is not None

    def sessions(self) -> list[str]:
        with self._mu:
            return list(self._warm)

    def janitor_running(self) -> bool:
        with self._mu:
            return self._janitor is not None

    def _janitor_loop(self) -> None:
        """Runs while some session is warm; ends when none is (keep starts a new one), so
        a worker that is dropped without rt.close() leaves no thread polling a database
        that may be closed by then."""
        looked = 0.0
        while True:
            time.sleep(0.2)
            with self._mu:
                if not self._warm:
                    self._janitor = None
                    return
                warm = dict(self._warm)
            due = [sid for sid, until in warm.items() if until <= time.time()]
            if time.monotonic() - looked >= CANCEL_POLL:  # a cancel or close asked for
                looked = time.monotonic()
                with best_effort("cancel poll of warm sessions"):
                    due += [sid for sid in warm
                            if sid not in due and self.rt.db.cancel_requested(sid)]  # fmt: skip
            for sid in due:
                try:
                    self.cool(sid)
                except Exception:  # its next turn finds the sandbox lost and recovers
                    logger.exception("keep-warm: snapshotting session %s failed", sid)

    def cool(self, sid: str) -> None:
        """Snapshot a session's warm sandbox now (its wait point, deferred)."""
        with self._mu:
            if sid not in self._warm:
                return  # (and a turn running now, which holds the session's lock, is not
                # waited for)
        with self._lock_for(sid):
            if not self.take(sid):
                return
            row = self.rt.db.claim(sid, self.owner, self.lease_ttl)
            if row is None or row.state != "waiting" or row.wake_at is None:
                return
            tr = Transcript(self.rt.log, sid, self.rt.log.acquire(sid))
            turn = Turn(self.rt, self.owner, self.lease_ttl, tr, row)
            try:
                wait_point(turn)
            except SandboxError:
                # The sandbox is gone (removed or crashed): let go, and leave the session
                # marked warm so that its next turn recovers from the last snapshot.
                turn.release()

    def cool_all(self) -> None:
        for sid in self.sessions():
            self.cool(sid)
