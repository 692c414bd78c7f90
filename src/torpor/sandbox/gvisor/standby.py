"""Standby sandboxes: created ahead of time so that a restore only loads its checkpoint.

A standby is a sandbox record whose runsc container was created (`runsc create`: sandbox
and gofer processes started, root filesystem set up) but never started. `runsc restore`
of a checkpoint into such a container only loads the checkpoint: measured here, ~65 ms
instead of ~150 ms for a restore that creates the container too. A checkpoint fits a
standby made for the same spec, image digest and platform (the container's
configuration is fixed at create time); standby/KEY/ID lists the unused ones, and
claiming one is unlinking its entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torpor.sandbox import owners
from torpor.sandbox.engine import SandboxInfo, SandboxSpec
from torpor.sandbox.gvisor.records import ID_RE, Records, now
from torpor.sandbox.gvisor.runsc import Driver

log = logging.getLogger(__name__)


class Standbys:
    """The standbys of one engine's sandboxes."""

    def __init__(self, records: Records, driver: Driver) -> None:
        self.records = records
        self.driver = driver
        self.misses: list[str] = []  # the last 20 standbys taken but not used
        self._lock = threading.Lock()

    def dir(self, spec: SandboxSpec, digest: str) -> Path:
        """standby/KEY: the unused standbys that fit checkpoints of this kind."""
        raw = json.dumps([spec.to_json(), digest, self.driver.platform], sort_keys=True)
        return self.records.home / "standby" / hashlib.sha256(raw.encode()).hexdigest()[:16]

    def dead(self, info: SandboxInfo) -> str | None:
        """None if runsc still records the container as created and its sandbox process
        lives (runsc's state file does not notice a sandbox killed from outside), else
        why not."""
        hint = self.driver.status_hint(info.id)
        if hint != "created":
            return f"runsc records it as {hint or 'nothing'}"
        return self.driver.why_dead(info)

    def unlist(self, info: SandboxInfo) -> None:
        (self.dir(info.spec, info.image_digest) / info.id).unlink(missing_ok=True)

    def add(self, info: SandboxInfo) -> None:
        """Make info (a standby just created) available to restores."""
        d = self.dir(info.spec, info.image_digest)
        d.mkdir(parents=True, exist_ok=True)
        (d / info.id).touch()

    def note_miss(self, info: SandboxInfo, why: str) -> None:
        """A standby was taken but could not be used (the restore then went the usual
        way): kept for whoever wonders why a restore was slow (`misses`)."""
        log.info("standby %s not used: %s", info.id, why)
        with self._lock:
            self.misses.append(f"{now()} standby {info.id}: {why}")
            del self.misses[:-20]

    def claim(
        self,
        spec: SandboxSpec,
        image_digest: str,
        name: str | None,
        owner: dict[str, Any] | None,
        discard: Callable[[SandboxInfo], None],
    ) -> SandboxInfo | None:
        """Take an unused standby that fits checkpoints of `spec` on the image at
        `image_digest`, renamed to `name` and owned by `owner` from now on (caller holds
        the global lock). None if there is none; one whose container is gone is discarded
        (by `discard`)."""
        d = self.dir(spec, image_digest)
        if not d.is_dir():
            return None
        if name is not None:
            self.records.check_free_name(name)
        for entry in sorted(d.iterdir()):
            try:
                entry.unlink()
            except FileNotFoundError:
                continue  # another process took it
            info = self.records.load(entry.name) if ID_RE.fullmatch(entry.name) else None
            if info is None or info.state != "standby":
                continue
            dead = self.dead(info)  # killed, or the host restarted
            if dead:
                self.note_miss(info, dead)
                discard(info)
                continue
            info.owner = owner if owner is not None else info.owner
            self.records.rename(info, name or f"sb-{info.id[:6]}")
            return info
        return None

    def survey(
        self, spec: SandboxSpec, image_digest: str, count: int, owner: dict[str, Any] | None
    ) -> tuple[list[SandboxInfo], list[SandboxInfo]]:
        """The standbys of this kind: (those to keep, at most `count` of `owner`'s (all
        owners' without one), and those to remove: the extra ones and the dead ones).
        Another live process's standbys are its own to count."""
        d = self.dir(spec, image_digest)
        ready: list[SandboxInfo] = []
        extra: list[SandboxInfo] = []
        for entry in sorted(d.iterdir()) if d.is_dir() else []:
            info = self.records.load(entry.name) if ID_RE.fullmatch(entry.name) else None
            if info is None or info.state != "standby":
                entry.unlink(missing_ok=True)
                continue
            dead = self.dead(info)
            mine = owner is None or owners.same_process(info.owner, owner)
            if dead or (mine and len(ready) >= count):
                if dead:
                    self.note_miss(info, f"found dead when counting: {dead}")
                extra.append(info)
            elif mine:
                ready.append(info)
        return ready, extra
