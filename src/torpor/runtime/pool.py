"""Sandboxes set up ahead of time: a small pool of pre-started sandboxes per image, so a
new session does not wait for a cold start, and standbys (see Engine.standby), so a
resumed session's restore does not wait for a sandbox to be set up.

A pooled sandbox is an ordinary running sandbox named `pool-<tag>-<hex>`; taking one
renames it to the session's sandbox name, and a background thread starts a replacement.
Pooled sandboxes left behind by a process that died are adopted by the next pool for the
same image. Each pooled sandbox holds memory (a few MiB for the base image) while it
waits: the size is a trade-off, 0 turns the pool off.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading

from torpor.sandbox.engine import Engine, SandboxError, SandboxSpec


def _tag(image: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", image).strip("-")[:30] or "image"


class SandboxPool:
    def __init__(self, engine: Engine, image: str, size: int) -> None:
        self.engine, self.image, self.size = engine, image, size
        self.prefix = f"pool-{_tag(image)}-"
        self._lock = threading.Lock()
        self._refilling = False
        self.hits = self.misses = 0

    def _ready(self) -> list[str]:
        return [
            i.name
            for i in self.engine.list()
            if i.name.startswith(self.prefix) and i.spec.image == self.image
        ]

    def take(self, name: str) -> bool:
        """Rename a ready sandbox to `name`; False if none is ready (start one yourself)."""
        taken = False
        with self._lock:
            for candidate in self._ready():
                try:
                    self.engine.rename(candidate, name)
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

    def refill(self) -> None:
        """Start sandboxes in the background until `size` are ready."""
        if self.size <= 0:
            return
        with self._lock:
            if self._refilling:
                return
            self._refilling = True
        threading.Thread(target=self._refill, name="torpor-pool", daemon=True).start()

    def _refill(self) -> None:
        try:
            while len(self._ready()) < self.size:
                self.engine.run(
                    SandboxSpec(image=self.image), name=f"{self.prefix}{secrets.token_hex(4)}"
                )
        except SandboxError:
            pass  # the next take() starts cold and tries again
        finally:
            with self._lock:
                self._refilling = False

    def drain(self) -> None:
        """Remove every ready sandbox of this pool."""
        for name in self._ready():
            with contextlib.suppress(SandboxError):
                self.engine.remove(name, force=True)


class StandbyPool:
    """Keeps `size` standby sandboxes for an image's default spec (what sessions run):
    `Engine.restore` of a session's snapshot loads into one. Refilled in the background
    when asked (at wait points, when the session is going idle); each standby holds the
    memory of an empty sandbox (~50 MiB here) while it waits. 0 turns it off."""

    def __init__(self, engine: Engine, image: str, size: int) -> None:
        self.engine, self.spec, self.size = engine, SandboxSpec(image=image), size
        self._lock = threading.Lock()
        self._refilling = False
        self._thread: threading.Thread | None = None

    def refill(self) -> None:
        if self.size <= 0:
            return
        with self._lock:
            if self._refilling:
                return
            self._refilling = True
            self._thread = threading.Thread(
                target=self._refill, name="torpor-standby", daemon=True
            )
            self._thread.start()

    def _refill(self) -> None:
        try:
            self.engine.standby(self.spec, self.size)
        except SandboxError:
            pass  # restores go the usual way; the next refill tries again
        finally:
            with self._lock:
                self._refilling = False

    def drain(self) -> None:
        """Stop refilling and remove this pool's standbys."""
        with self._lock:
            self.size, thread = 0, self._thread
        if thread is not None:
            thread.join()
        with contextlib.suppress(SandboxError):
            self.engine.standby(self.spec, 0)
