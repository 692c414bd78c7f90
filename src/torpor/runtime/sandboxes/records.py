"""The sandbox resource's records: a `SandboxRow` per sandbox, a `SnapshotRow` per snapshot
taken of one, and `SandboxRecords`, their reads and writes (the statements are in
`torpor.db.queries.sandboxes`).

A row is the truth about a sandbox that outlives any process: its tenant, image and
settings, its state (running, paused or killed), who holds it live (the engine sandbox
`box`, on `machine`, held by the serving `process`), the snapshot it resumes from, and a
`note` saying what happened to it when that was not asked for (its process died, ...).
Every change of state is conditional on the row's `version` (`update` returns False when
another process changed it first).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torpor.db.queries import sandboxes as q
from torpor.runtime.db import RuntimeDB

SandboxState = Literal["running", "paused", "killed"]
OnTimeout = Literal["pause", "kill"]
STATES: tuple[SandboxState, ...] = ("running", "paused", "killed")
ON_TIMEOUT: tuple[OnTimeout, ...] = ("pause", "kill")


@dataclass
class SandboxRow:
    id: str
    tenant: str | None
    image: str
    state: SandboxState
    box: str | None = None  # the engine sandbox holding it live (state running)
    machine: str | None = None  # where it runs (running), or was paused (its hot copy)
    process: str | None = None  # the serving process that holds it live
    snapshot: str | None = None  # the snapshot it resumes from (paused)
    source: str | None = None  # the snapshot it was created from, if any
    timeout: float | None = 300.0  # idle seconds before on_timeout (None: never)
    on_timeout: OnTimeout = "pause"
    auto_resume: bool = True  # a call to it while paused resumes it first
    last_activity: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # given to every command
    note: str | None = None  # what happened to it that was not asked for
    version: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    paused_at: float | None = None
    killed_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SnapshotRow:
    id: str  # the checkpoint's id in the engine's storage (the snapshot store)
    sandbox: str
    tenant: str | None
    name: str
    kind: Literal["pause", "snapshot"]
    bytes: int  # its size (the checkpoint's files)
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _sandbox(r: tuple[Any, ...]) -> SandboxRow:
    d = dict(zip(q.SANDBOX_COLUMNS, r, strict=True))
    d["metadata"] = json.loads(d["metadata"])
    d["env"] = json.loads(d["env"])
    d["auto_resume"] = bool(d["auto_resume"])
    return SandboxRow(**d)


def _snapshot(r: tuple[Any, ...]) -> SnapshotRow:
    return SnapshotRow(**dict(zip(q.SNAPSHOT_COLUMNS, r, strict=True)))


class SandboxRecords:
    """The sandboxes' and their snapshots' rows in the runtime's database."""

    def __init__(self, db: RuntimeDB) -> None:
        self._read, self._write = db.database.read, db.database.write

    def insert(self, row: SandboxRow) -> None:
        now = time.time()
        row.created_at = row.updated_at = row.created_at or now
        row.last_activity = row.last_activity or now
        d = row.to_json()
        d.update(metadata=json.dumps(row.metadata), env=json.dumps(row.env),
                 auto_resume=int(row.auto_resume))  # fmt: skip
        with self._write() as tx:
            q.insert_sandbox(tx, [d[c] for c in q.SANDBOX_COLUMNS])

    def get(self, sid: str) -> SandboxRow | None:
        with self._read() as tx:
            r = q.sandbox(tx, sid)
        return None if r is None else _sandbox(r)

    def list(self, tenant: str | None, *, every_tenant: bool = False,
             state: str | None = None) -> list[SandboxRow]:  # fmt: skip
        with self._read() as tx:
            return [_sandbox(r) for r in q.sandboxes(tx, tenant=tenant,
                                                      every_tenant=every_tenant, state=state)]

    def update(self, row: SandboxRow, **values: Any) -> SandboxRow | None:
        """Change the row as `row` saw it (its version); the new row, or None when another
        process changed it meanwhile."""
        values["updated_at"] = time.time()
        for k in ("metadata", "env"):
            if k in values:
                values[k] = json.dumps(values[k])
        if "auto_resume" in values:
            values["auto_resume"] = int(values["auto_resume"])
        with self._write() as tx:
            if not q.update_sandbox(tx, row.id, values, version=row.version):
                return None
            r = q.sandbox(tx, row.id)
        return None if r is None else _sandbox(r)

    def touch(self, sid: str, at: float) -> None:
        with self._write() as tx:
            q.touch(tx, sid, at)

    def held_by(self, process: str) -> list[SandboxRow]:
        with self._read() as tx:
            return [_sandbox(r) for r in q.held_by(tx, process)]

    def running_on(self, machine: str) -> list[SandboxRow]:
        with self._read() as tx:
            return [_sandbox(r) for r in q.running_on(tx, machine)]

    def running_count(self, tenant: str | None) -> int:
        with self._read() as tx:
            return q.running_count(tx, tenant)

    # -- snapshots -------------------------------------------------------------------------

    def add_snapshot(self, snap: SnapshotRow) -> None:
        d = snap.to_json()
        with self._write() as tx:
            q.insert_snapshot(tx, [d[c] for c in q.SNAPSHOT_COLUMNS])

    def snapshot(self, snap: str) -> SnapshotRow | None:
        with self._read() as tx:
            r = q.snapshot(tx, snap)
        return None if r is None else _snapshot(r)

    def snapshots(self, sid: str) -> list[SnapshotRow]:
        with self._read() as tx:
            return [_snapshot(r) for r in q.snapshots_of(tx, sid)]

    def remove_snapshot(self, snap: str) -> None:
        with self._write() as tx:
            q.delete_snapshot(tx, snap)
