"""What the serving process knows of its live sandboxes between calls: a lock per sandbox
(held while it changes state), the calls in flight, the time of the last one, and the
janitor thread that pauses or kills the sandboxes idle past their timeout.

Activity is kept in memory and written to the sandbox's row by the janitor (at most every
`FLUSH_EVERY` seconds): a call costs no database write. The janitor of the process that
holds a sandbox live is the only one that acts on its timeout, so its memory is the truth;
the row's `last_activity` is for the other processes that read it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

logger = logging.getLogger("torpor.sandboxes")

FLUSH_EVERY = 5.0  # seconds between writes of a sandbox's last activity to its row
SWEEP_EVERY = 1.0  # seconds between two looks of the janitor


class Activity:
    """Per-sandbox locks, calls in flight and last activity, in this process."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._inflight: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def lock(self, sid: str) -> threading.Lock:
        """The sandbox's lock: held while it is created, resumed, paused, snapshotted or
        killed, and while a call finds it live (not while the call runs)."""
        with self._mu:
            return self._locks.setdefault(sid, threading.Lock())

    def begin(self, sid: str) -> None:
        with self._mu:
            self._inflight[sid] = self._inflight.get(sid, 0) + 1
            self._last[sid] = time.time()

    def end(self, sid: str) -> None:
        with self._mu:
            self._inflight[sid] = max(0, self._inflight.get(sid, 1) - 1)
            self._last[sid] = time.time()

    @contextlib.contextmanager
    def call(self, sid: str) -> Iterator[None]:
        self.begin(sid)
        try:
            yield
        finally:
            self.end(sid)

    def touch(self, sid: str, at: float | None = None) -> None:
        with self._mu:
            self._last[sid] = max(self._last.get(sid, 0.0), time.time() if at is None else at)

    def busy(self, sid: str) -> bool:
        with self._mu:
            return self._inflight.get(sid, 0) > 0

    def last(self, sid: str) -> float:
        with self._mu:
            return self._last.get(sid, 0.0)

    def forget(self, sid: str) -> None:
        """The sandbox is no longer live here (paused, killed, lost)."""
        with self._mu:
            self._last.pop(sid, None)
            if not self._inflight.get(sid):
                self._inflight.pop(sid, None)


class Janitor:
    """A thread that calls `sweep()` every `every` seconds until stopped."""

    def __init__(self, sweep: Callable[[], object], every: float = SWEEP_EVERY) -> None:
        self._sweep, self.every = sweep, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="torpor-sandbox-janitor",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._sweep()
            except Exception:  # the next sweep tries again
                logger.exception("sandbox janitor: sweep failed")
