"""Sandboxes set up ahead of time: a small pool of pre-started sandboxes per image, so a
new session does not wait for a cold start, and standbys (see Engine.standby), so a
resumed session's restore does not wait for a sandbox to be set up.

A pooled sandbox is an ordinary running sandbox named `pool-<tag>-<hex>`, owned by the
process that keeps the pool (owner kind "pool", see torpor.sandbox.owners); taking one
renames it to the session's sandbox name and hands it to the session, and a background
thread starts a replacement. A pool counts, takes and drains only its own process's
sandboxes (two processes on one home keep a pool each); those left behind by a process
that died are orphans, removed by the next `torpor serve` or `torpor worker` at its start
(owners.reap_orphans). Standbys are owned the same way (kind "standby"). Each pooled
sandbox holds memory (a few MiB for the base image) while it waits: the size is a
trade-off, 0 turns the pool off.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from typing import Any

from torpor.sandbox import owners
from torpor.sandbox.engine import Engine, SandboxError, SandboxSpec

logger = logging.getLogger("torpor.runtime")


def _tag(image: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", image).strip("-")[:30] or "image"


class _Refilled:
    """Keeps `size` sandboxes of some kind ready; `refill` runs `_fill` in one background
    thread at a time, and `_stop_refilling` waits for it (0 turns it off)."""

    thread_name = "torpor-refill"

    def __init__(self, engine: Engine, size: int) -> None:
        self.engine, self.size = engine, size
        self._lock = threading.Lock()
        self._refilling = False
        self._thread: threading.Thread | None = None

    def _fill(self) -> None:
        raise NotImplementedError

    def refill(self) -> None:
        """Set up sandboxes in the background until `size` are ready."""
        if self.size <= 0:
            return
        with self._lock:
            if self._refilling:
                return
            self._refilling = True
            self._thread = threading.Thread(
                target=self._run_fill, name=self.thread_name, daemon=True
            )
            self._thread.start()

    def _run_fill(self) -> None:
        try:
            self._fill()
        except SandboxError as e:  # one is then set up when needed; the next refill tries again
            logger.warning("setting up %s failed: %s", self.thread_name.removeprefix("torpor-"),
                           e)  # fmt: skip
        finally:
            with self._lock:
                self._refilling = False

    def _stop_refilling(self) -> None:
        with self._lock:
            self.size, thread = 0, self._thread
        if thread is not None:
            thread.join()


class SandboxPool(_Refilled):
    thread_name = "torpor-pool"

    def __init__(self, engine: Engine, spec: SandboxSpec, size: int) -> None:
        super().__init__(engine, size)
        self.spec = spec
        self.prefix = f"pool-{_tag(spec.image)}-"
        self.hits = self.misses = 0

    def _ready(self) -> list[str]:
        me = owners.this_process("pool")
        return [
            i.name
            for i in self.engine.list()
            if i.name.startswith(self.prefix) and i.spec == self.spec
            and owners.same_process(i.owner, me)
        ]  # fmt: skip

    def take(self, name: str, *, owner: dict[str, Any] | None = None) -> bool:
        """Rename a ready sandbox to `name`, owned by `owner` from now on; False if none is
        ready (start one yourself)."""
        taken = False
        with self._lock:
            for candidate in self._ready():
                try:
                    self.engine.rename(candidate, name, owner=owner)
                except SandboxError:
                    continue  # taken by another process meanwhile
                taken = True
                break
            if taken:
                self.hits += 1
            else:
                self.misses += 1
        self.refill()
        return taken

    def _fill(self) -> None:
        while len(self._ready()) < self.size:
            self.engine.run(self.spec, name=f"{self.prefix}{secrets.token_hex(4)}",
                            owner=owners.this_process("pool"))  # fmt: skip

    def drain(self) -> None:
        """Stop refilling and remove every ready sandbox of this pool."""
        self._stop_refilling()
        for name in self._ready():
            try:
                self.engine.remove(name, force=True)
            except SandboxError as e:  # reaped at the next start (its owner is gone then)
                logger.warning("removing pooled sandbox %s failed: %s", name, e)


class StandbyPool(_Refilled):
    """Keeps `size` standby sandboxes for the spec sessions run (Runtime.sandbox_spec):
    `Engine.restore` of a session's snapshot loads into one. Refilled in the background
    when asked (at wait points, when the session is going idle); each standby holds the
    memory of an empty sandbox (~50 MiB here) while it waits. 0 turns it off."""

    thread_name = "torpor-standby"

    def __init__(self, engine: Engine, spec: SandboxSpec, size: int) -> None:
        super().__init__(engine, size)
        self.spec = spec

    def _fill(self) -> None:
        self.engine.standby(self.spec, self.size, owner=owners.this_process("standby"))

    def drain(self) -> None:
        """Stop refilling and remove this pool's (this process's) standbys."""
        self._stop_refilling()
        try:
            self.engine.standby(self.spec, 0, owner=owners.this_process("standby"))
        except SandboxError as e:  # reaped at the next start (its owner is gone then)
            logger.warning("removing standbys failed: %s", e)
