"""A small pool of pre-started sandboxes per image, so a new session does not wait for a
cold start.

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
