"""The runtime's own tables: sessions (state, lease, durable timer, snapshots), the inbox,
and the machines' heartbeats, snapshots and copies.

They live in the same database as the context log (SQLite file or PostgreSQL), next to
its tables; their statements and migrations belong to the database layer
(`torpor.db.queries.runtime`). Every change of ownership is one conditional UPDATE in a
write transaction, so two workers can never both hold a session: with SQLite that is the
database's write lock, with PostgreSQL the row lock of the UPDATE (claims of "any work"
use FOR UPDATE SKIP LOCKED). No other coordination is used. Reads run in read
transactions, which take no lock: a session's row can be read while a worker writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torpor.db import Tx, open_database
from torpor.db.queries import runtime as q

STATES = ("created", "running", "waiting", "retrying", "recovering", "failed", "closed")


@dataclass
class SessionRow:
    id: str
    state: str
    image: str
    model: str
    system: str | None
    tools: list[str] | None
    policy: dict[str, Any]
    snapshot: str | None
    snapshot_seq: int | None
    snapshots: list[str] = field(default_factory=list)
    lease_owner: str | None = None
    lease_until: float | None = None
    wake_at: float | None = None
    attempt: int = 0
    parent: str | None = None
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    tenant: str | None = None
    cancel: str | None = None  # a cancel ('cancel') or close ('close') asked for, not done

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _row(r: tuple[Any, ...]) -> SessionRow:
    (sid, state, image, model, system, tools, policy, snapshot, snapshot_seq, snapshots,
     owner, until, wake, attempt, parent, error, created, updated, tenant, cancel) = r  # fmt: skip
    return SessionRow(
        id=sid, state=state, image=image, model=model, system=system,
        tools=json.loads(tools), policy=json.loads(policy), snapshot=snapshot,
        snapshot_seq=snapshot_seq, snapshots=json.loads(snapshots), lease_owner=owner,
        lease_until=until, wake_at=wake, attempt=attempt, parent=parent, error=error,
        created_at=created, updated_at=updated, tenant=tenant, cancel=cancel,
    )  # fmt: skip


class SessionClosedError(Exception):
    pass


class SessionNotFound(KeyError):
    def __str__(self) -> str:
        return f"no such session: {self.args[0]}"


class RuntimeDB:
    """The runtime's tables in a SQLite file (one machine) or PostgreSQL (many)."""

    def __init__(self, url: str) -> None:
        self.database = open_database(url)
        self.url = url
        self.kind = self.database.kind
        if self.database.path is not None:
            self.path: Path = self.database.path
        self._read = self.database.read
        self._write = self.database.write

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        """A write transaction, for the named statements of `torpor.db.queries`."""
        with self.database.write() as tx:
            yield tx

    def close(self) -> None:
        self.database.close()

    def ping(self) -> None:
        """Raises unless the database answers."""
        with self._read() as tx:
            q.ping(tx)

    # ---------------------------------------------------------------- sessions

    def create(self, row: SessionRow) -> None:
        now = time.time()
        with self._write() as tx:
            q.insert_session(tx, (
                row.id, row.state, row.image, row.model, row.system, json.dumps(row.tools),
                json.dumps(row.policy), row.snapshot, row.snapshot_seq,
                json.dumps(row.snapshots), None, None, None, 0, row.parent, None, now, now,
                row.tenant, None))  # fmt: skip

    def get(self, sid: str) -> SessionRow:
        with self._read() as tx:
            r = q.session(tx, sid)
        if r is None:
            raise SessionNotFound(sid)
        return _row(r)

    def list(self, state: str | None = None, tenant: str | None = None) -> list[SessionRow]:
        with self._read() as tx:
            rows = q.sessions(tx, state=state, tenant=tenant)
        return [_row(r) for r in rows]

    def update(self, sid: str, *, owner: str | None = None, **values: Any) -> bool:
        """Set columns; when owner is given, only while that owner holds the lease.
        Returns False if the row did not match (lease lost)."""
        for k in ("tools", "policy", "snapshots"):
            if k in values:
                values[k] = json.dumps(values[k])
        values["updated_at"] = time.time()
        with self._write() as tx:
            return q.update_session(tx, sid, values, owner=owner)

    def snapshot_in_use(self, snapshot: str, *, besides: str) -> bool:
        """Does a session other than `besides` (a fork, say) still name this snapshot?"""
        like = "%" + json.dumps(snapshot) + "%"
        with self._read() as tx:
            return q.snapshot_named(tx, snapshot, like, besides=besides)

    # ---------------------------------------------------------------- leases, queue

    def claim(self, sid: str, owner: str, ttl: float) -> SessionRow | None:
        """Take the session's lease if nobody holds a live one."""
        now = time.time()
        with self._write() as tx:
            if not q.take_lease(tx, sid, owner, now + ttl, now):
                return None
            r = q.session(tx, sid)
        return None if r is None else _row(r)

    def claim_any(self, owner: str, ttl: float, *, machine: str | None = None,
                  affinity: float = 0.0, machine_ttl: float = 10.0) -> SessionRow | None:
        """Claim one session that has work: unread messages, a turn cut short by a dead
        worker (lease expired while running or recovering), or a retry timer that fired.

        Affinity (`machine` given, `affinity` > 0): sessions whose latest snapshot this
        machine took come first; a new message to a session whose latest snapshot another
        machine holds is left to that machine for `affinity` seconds after it was posted,
        unless that machine is gone (no heartbeat for `machine_ttl` s) or has no free
        slot."""
        now = time.time()
        with self._write() as tx:
            sid = q.session_with_work(tx, owner, now, machine=machine, affinity=affinity,
                                      machine_ttl=machine_ttl)
            if sid is None:
                return None
            q.set_lease(tx, sid, owner, now + ttl, now)
            r = q.session(tx, sid)
        return None if r is None else _row(r)

    # ---------------------------------------------------------------- machines

    def beat(self, process: str, machine: str, host: str, *, slots: int, running: int,
             at: float | None = None) -> None:  # fmt: skip
        """Say that `process` (of `machine`) is alive, with `slots` turns it can run at
        once and `running` it runs (at: when, default now)."""
        with self._write() as tx:
            q.beat(tx, process, machine, host, time.time() if at is None else at, slots,
                   running)

    def forget_process(self, process: str) -> None:
        """A process that stopped cleanly (its uploads done): nobody waits for it."""
        with self._write() as tx:
            q.forget_process(tx, process)

    def process_alive(self, process: str, ttl: float) -> bool:
        with self._read() as tx:
            return q.process_alive(tx, process, time.time() - ttl)

    def record_snapshot(self, snapshot: str, session: str, machine: str, process: str) -> None:
        """Snapshot `snapshot` of `session` was taken on `machine` by `process` (which
        holds its hot copy there, and uploads it)."""
        with self._write() as tx:
            q.record_snapshot(tx, snapshot, session, machine, process, time.time())

    def record_copy(self, snapshot: str, machine: str) -> None:
        """`machine` has a hot copy of `snapshot`, fetched ahead of a turn that may come
        to it (affinity then counts it as a holder)."""
        with self._write() as tx:
            q.record_copy(tx, snapshot, machine, time.time())

    def snapshot_copies(self, snapshot: str) -> list[str]:
        """The machines that fetched a copy of `snapshot` ahead (besides its taker)."""
        with self._read() as tx:
            return q.snapshot_copies(tx, snapshot)

    def snapshots_since(self, since: float) -> list[tuple[str, str, str, float]]:
        """(snapshot, session, machine, created_at) recorded after `since`, oldest first,
        where the snapshot is still its session's latest."""
        with self._read() as tx:
            rows = q.snapshots_since(tx, since)
        return [(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    def live_machines(self, ttl: float) -> list[str]:
        """Machines with a process whose heartbeat is fresher than ttl seconds."""
        with self._read() as tx:
            return sorted(q.live_machines(tx, time.time() - ttl))

    def snapshot_holder(self, snapshot: str) -> tuple[str, str] | None:
        """(machine, process) that took the snapshot, if recorded."""
        with self._read() as tx:
            r = q.snapshot_holder(tx, snapshot)
        return None if r is None else (str(r[0]), str(r[1]))

    def heartbeat(self, sid: str, owner: str, ttl: float) -> bool:
        with self._write() as tx:
            return q.extend_lease(tx, sid, owner, time.time() + ttl)

    def next_wake(self) -> float | None:
        """When the earliest retry timer fires (for a worker deciding how long to sleep)."""
        with self._read() as tx:
            return q.next_wake(tx)

    # ---------------------------------------------------------------- inbox

    def post(self, sid: str, text: str, *, key: str | None = None) -> int:
        return self.post_once(sid, text, key=key)[0]

    def post_once(self, sid: str, text: str, *, key: str | None = None) -> tuple[int, bool]:
        """Queue a user message; returns (inbox id, duplicate). With a key, the message and
        its key are one row under a unique (session, key) index, written in one
        transaction: a second post with the key (from any process) queues nothing and
        gets the first one's id. A post clears a cancel asked for before it."""
        with self._write() as tx:
            state = q.session_state(tx, sid)
            if state is None:
                raise SessionNotFound(sid)
            if key is not None:
                earlier = q.message_with_key(tx, sid, key)
                if earlier is not None:
                    return int(earlier), True
            if state == "closed":
                raise SessionClosedError(f"session {sid} is closed")
            got = q.queue_message(tx, sid, text, time.time(), key)
            if got is None:  # a concurrent post with the key committed first
                earlier = q.message_with_key(tx, sid, key or "")
                if earlier is None:
                    raise RuntimeError(f"message with key {key!r} neither queued nor found")
                return int(earlier), True
            q.clear_cancel(tx, sid, retry=state == "failed")  # a failed one: the user's retry
            return int(got), False

    def turn_for_key(self, sid: str, key: str) -> int | None:
        """The inbox id of the message posted to the session with this Idempotency-Key."""
        with self._read() as tx:
            found = q.message_with_key(tx, sid, key)
        return None if found is None else int(found)

    # ---------------------------------------------------------------- cancel

    def request_cancel(self, sid: str, what: str = "cancel") -> SessionRow:
        """Ask the worker running the session's turn to stop it at its next safe point
        ('close': and then close the session). Returns the row as it is now."""
        with self._write() as tx:
            q.set_cancel(tx, sid, what, time.time())
            r = q.session(tx, sid)
        if r is None:
            raise SessionNotFound(sid)
        return _row(r)

    def cancel_requested(self, sid: str) -> str | None:
        with self._read() as tx:
            return q.cancel_requested(tx, sid)

    # ---------------------------------------------------------------- inbox (reading)

    def unread(self, sid: str) -> list[tuple[int, str]]:
        with self._read() as tx:
            return [(int(i), t) for i, t in q.unread(tx, sid)]

    def consume(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._write() as tx:
            q.consume(tx, ids)
