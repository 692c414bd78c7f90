"""Sandbox records: each sandbox's `sandbox.json` (its `SandboxInfo`), the index of names,
and the locks that serialise what happens to a sandbox.

    sandboxes/ID/sandbox.json   the record (what `ps`/`inspect` show); the truth,
                                written whole or not at all (fsynced, then renamed)
    sandboxes/ID/lock           flock: exclusive to change the sandbox, shared to use it
    names/NAME                  the id of the sandbox called NAME: a hint, checked
                                against the record it points to (never synced)
    .names.lock                 the global lock: names and owners change under it

Nothing here runs runsc: a record says what torpor last recorded, and the engine
reconciles it with runsc when it matters (see `runsc.Driver.reconcile`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torpor.files import TMP_PREFIX, sweep, write_atomic, writer_tag
from torpor.sandbox.engine import (
    SandboxConflict,
    SandboxError,
    SandboxInfo,
    SandboxNotFound,
    SandboxSpec,
    check_name,
)

log = logging.getLogger(__name__)

ID_RE = re.compile(r"[0-9a-f]{12}")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class SandboxOutdated(SandboxError):
    """A sandbox record written by an older development build of torpor, whose sandbox
    this one cannot run; it can only be removed (`GVisorEngine.remove(force=True)`)."""

    def __init__(self, message: str, *, sid: str, name: str | None) -> None:
        super().__init__(message)
        self.sid = sid
        self.name = name


def outdated(data: dict[str, Any]) -> str | None:
    """Why a record (sandbox.json's data) was written by an older development build of
    torpor whose sandboxes this one cannot run, or None. Those builds made sandboxes whose
    init answered only `runsc exec` (`channel` false), kept init's state on the overlay
    (`init_tmpfs` false), or recorded no owner; every sandbox of this one has the host
    channel and the tmpfs, and an owner."""
    if data.get("channel") is False:
        return "without the host channel to its init"
    if data.get("init_tmpfs") is False:
        return "with its init's state on the root overlay"
    if not data.get("owner"):
        return "without an owner"
    return None


class Records:
    """The sandbox records under `home` (TORPOR_HOME)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.sandboxes_dir = home / "sandboxes"
        self.names_dir = home / "names"
        self._warned: set[str] = set()  # outdated records warned of

    def dir(self, sid: str) -> Path:
        return self.sandboxes_dir / sid

    def save(self, info: SandboxInfo) -> None:
        """Write info's record whole (fsynced before its rename: a power cut leaves this
        record or the one before, never a torn one, which would lose the sandbox). The
        directory is not synced: the record before is as good after a power cut, when
        nothing runs any more (see `runsc.Driver.reconcile`)."""
        write_atomic(self.dir(info.id) / "sandbox.json",
                     json.dumps(info.to_json(), indent=1).encode())  # fmt: skip

    def sweep(self, sid: str | None = None) -> None:
        """Remove the temporary files crashed writers left: of the names index, or (with
        `sid`) in that sandbox's directory and its host channel's."""
        if sid is None:
            sweep(self.names_dir)
            return
        sweep(self.dir(sid))
        sweep(self.dir(sid) / "ctl", ".token-")

    def load(self, sid: str) -> SandboxInfo | None:
        """The record of sandbox `sid`, None if there is none (or it is unreadable);
        SandboxOutdated for a record an older development build wrote."""
        try:
            data = json.loads((self.dir(sid) / "sandbox.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        why = outdated(data)
        if why is None:
            try:
                return SandboxInfo.from_json(data)
            except (KeyError, TypeError, ValueError) as e:
                why = f"a record format this version does not know: {e!r}"
        raise SandboxOutdated(
            f"sandbox {data.get('name', sid)} ({sid}) was made by an older development build "
            f"of torpor ({why}); this version cannot use it: remove it with `torpor rm -f "
            f"{sid}` and start a new one (its checkpoints are refused too)",
            sid=sid,
            name=data["name"] if isinstance(data.get("name"), str) else None,
        )

    def all(self) -> list[SandboxInfo]:
        """Every readable record; those of older development builds are left out (a
        warning names them and says how to remove them)."""
        out = []
        for d in sorted(self.sandboxes_dir.iterdir()):
            try:
                info = self.load(d.name) if d.is_dir() else None
            except SandboxOutdated as e:
                if e.sid not in self._warned:  # once per process: `all` is called often
                    self._warned.add(e.sid)
                    log.warning("%s", e)
                continue
            if info is not None:
                out.append(info)
        return out

    # ---------------------------------------------------------------- names

    def index_name(self, info: SandboxInfo, old_name: str | None = None) -> None:
        """names/NAME holds the sandbox's id, so finding it by name is one file read.
        Written (and removed) under the global lock, by rename; only a hint: `find` checks
        it against sandbox.json and falls back to reading every record."""
        self.names_dir.mkdir(exist_ok=True)
        if old_name is not None:
            self.unindex_name(old_name, info.id)
        tmp = self.names_dir / f"{TMP_PREFIX}{writer_tag()}{threading.get_ident()}-{info.name}"
        tmp.write_text(info.id)
        os.replace(tmp, self.names_dir / info.name)

    def unindex_name(self, name: str, sid: str) -> None:
        path = self.names_dir / name
        try:
            if path.read_text().strip() == sid:
                path.unlink()
        except FileNotFoundError:
            pass  # never indexed, or already gone
        except OSError as e:  # a stale hint is harmless: find checks what it points to
            log.debug("cannot unindex name %s of sandbox %s: %s", name, sid, e)

    def find(self, ref: str) -> SandboxInfo:
        """The record of the sandbox `ref` names: its name, its id, or a unique prefix of
        at least 4 characters of its id."""
        # The common cases in one or two file reads: an exact id, or an indexed name.
        if ID_RE.fullmatch(ref):
            info = self.load(ref)
            if info is not None:
                return info
        if "/" not in ref and not ref.startswith("."):
            try:
                sid = (self.names_dir / ref).read_text().strip()
            except OSError:
                sid = ""
            info = self.load(sid) if ID_RE.fullmatch(sid) else None
            if info is not None and info.name == ref:
                return info
        everything = self.all()
        for info in everything:
            if ref in (info.name, info.id):
                return info
        matches = [i for i in everything if len(ref) >= 4 and i.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        raise SandboxNotFound(f"no such sandbox: {ref}")

    def check_free_name(self, name: str) -> None:
        check_name(name)
        if any(i.name == name for i in self.all()):
            raise SandboxConflict(f"the name {name} is already in use by another sandbox")

    def create(
        self, spec: SandboxSpec, image_digest: str, name: str | None, owner: dict[str, Any]
    ) -> SandboxInfo:
        """Reserve a name and an id, recording the owner at once, so that no reaper ever
        sees the record without one (caller holds the global lock)."""
        if name is not None:
            self.check_free_name(name)
        sid = secrets.token_hex(6)
        info = SandboxInfo(
            id=sid,
            name=name or f"sb-{sid[:6]}",
            state="created",
            spec=spec,
            image_digest=image_digest,
            created=now(),
            owner=owner,
        )
        self.dir(sid).mkdir(parents=True)
        self.save(info)
        self.index_name(info)
        return info

    def rename(self, info: SandboxInfo, new_name: str) -> None:
        """Record `info` (whose lock and the global lock the caller holds) under
        `new_name`, which the caller checked is free."""
        old = info.name
        info.name = new_name
        self.save(info)
        self.index_name(info, old_name=old)

    # ---------------------------------------------------------------- locks

    @contextlib.contextmanager
    def global_lock(self) -> Iterator[None]:
        with open(self.home / ".names.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def lock(self, ref: str, *, exclusive: bool = True) -> Iterator[SandboxInfo]:
        """Find a sandbox and hold its lock; yields its record as read under the lock."""
        info = self.find(ref)
        try:
            f = open(self.dir(info.id) / "lock", "a")  # noqa: SIM115 - held for the with-block
        except FileNotFoundError:
            raise SandboxNotFound(f"no such sandbox: {ref}") from None
        with f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            fresh = self.load(info.id)
            if fresh is None:
                raise SandboxNotFound(f"no such sandbox: {ref}")
            yield fresh
