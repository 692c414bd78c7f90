"""Keeping the likely next machine's hot copy warm: a follower fetches each new snapshot.

A session's next turn goes to the machine that took its latest snapshot (affinity) while
that machine is alive and has a free slot; when it is busy or gone, the turn goes to
another machine, which restores from the snapshot store: about three times slower than a
restore from the raw hot copy, because every chunk is fetched and decoded. So for each
session one other live machine, its *follower*, fetches every new snapshot of it into
its own hot cache as soon as the upload is done, and records that it holds a copy
(`torpor_copies`); affinity counts it as a holder, so a turn the first machine cannot
take goes to the follower and restores from a hot copy there.

The follower is chosen by rendezvous hashing over the live machines other than the one
that took the snapshot: every machine computes the same choice from the heartbeats
alone, and a machine joining or leaving moves only the sessions it wins or held. A
follower's fetch is cheap after the first one: the store copies the chunks a snapshot
shares with the follower's older copy of the same sandbox (`SnapshotStore.get` seeds)
and fetches only the pages that changed (~0.25 MiB per wait point of the reference dev
sandbox). What it costs: one more hot copy of each session in the cluster (the cache is
capped and least recently used copies go first), and the fetch's CPU on the follower.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

PREFETCH_POLL = 0.5  # seconds between looks at the snapshots other machines took
LOOKBACK = 120.0  # how old a snapshot may be and still be fetched ahead

logger = logging.getLogger("torpor.runtime")


def follower(session: str, machines: list[str], taker: str) -> str | None:
    """The machine that keeps a copy of session's snapshots besides the taker (rendezvous
    hashing: the live machine with the highest hash of session and machine)."""
    others = [m for m in machines if m != taker]
    if not others:
        return None
    return max(others, key=lambda m: hashlib.blake2b(f"{session}\0{m}".encode(),
                                                      digest_size=8).digest())  # fmt: skip


class Prefetcher:
    """The follower's loop: look for new snapshots, fetch those this machine follows.

    db: the runtime database (snapshots_since, live_machines, record_copy); fetch(id)
    brings a checkpoint into this machine's hot cache (False while it is not stored
    yet); has_copy(id) says whether it is here already.

    Each look reads the sessions' latest snapshots of the last `lookback` seconds
    (rather than those after the last one seen: machines' clocks differ, and a snapshot
    is recorded a moment before its session points at it), so a machine that becomes a
    session's follower later (the previous one died) fetches its latest one too."""

    def __init__(self, db: Any, machine: str, fetch: Callable[[str], bool],
                 has_copy: Callable[[str], bool], *, machine_ttl: float,
                 lookback: float = LOOKBACK,
                 on_copy: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.db, self.machine = db, machine
        self.fetch, self.has_copy = fetch, has_copy
        self.on_copy = on_copy  # called with the session once a copy of it is recorded
        self.machine_ttl, self.lookback = machine_ttl, lookback
        self.done: dict[str, float] = {}  # snapshots fetched (or found here): when
        self.fetched = 0

    def step(self) -> int:
        """One look: returns how many snapshots it fetched."""
        now = time.time()
        rows = [r for r in self.db.snapshots_since(now - self.lookback)
                if r[2] != self.machine and r[0] not in self.done]  # fmt: skip
        for snap, at in list(self.done.items()):
            if at < now - 2 * self.lookback:
                del self.done[snap]
        if not rows:
            return 0
        live = self.db.live_machines(self.machine_ttl)
        fetched = 0
        for snap, session, taker, _at in rows:
            if follower(session, live, taker) != self.machine:
                continue
            here = self.has_copy(snap)
            if here or self.fetch(snap):  # else: not stored yet; looked at again next time
                self.db.record_copy(snap, self.machine)
                self.done[snap] = now
                fetched += 0 if here else 1
                if self.on_copy is not None:
                    self.on_copy(session)
        self.fetched += fetched
        return fetched

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(PREFETCH_POLL):
            try:
                self.step()
            except Exception:  # a background helper: log, go on
                logger.exception("prefetching snapshots failed; trying again in 5 s")
                stop.wait(5)
