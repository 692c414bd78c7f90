"""The runtime's own tables: sessions (state, lease, durable timer, snapshots) and the inbox.

They live in the same database as the context log (SQLite file or PostgreSQL), next to
its tables. Every change of ownership is one conditional UPDATE, so two workers can never
both hold a session: with SQLite that is the database's write lock, with PostgreSQL the
row lock of the UPDATE (claims of "any work" use FOR UPDATE SKIP LOCKED). No other
coordination is used.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

SCHEMA_LOCK = 0x746F72706F7273  # pg_advisory_xact_lock key held while creating tables
STATES = ("created", "running", "waiting", "retrying", "recovering", "failed", "closed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS torpor_sessions (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    image TEXT NOT NULL,
    model TEXT NOT NULL,
    system TEXT,
    tools TEXT NOT NULL,
    policy TEXT NOT NULL,
    snapshot TEXT,
    snapshot_seq BIGINT,
    snapshots TEXT NOT NULL,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    wake_at DOUBLE PRECISION,
    attempt INTEGER NOT NULL,
    parent TEXT,
    error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    tenant TEXT
);
CREATE TABLE IF NOT EXISTS torpor_inbox (
    id {serial} PRIMARY KEY,
    session TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    consumed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS torpor_inbox_session ON torpor_inbox (session, consumed);
CREATE TABLE IF NOT EXISTS torpor_heartbeats (
    process TEXT PRIMARY KEY,
    machine TEXT NOT NULL,
    host TEXT NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    slots INTEGER NOT NULL,
    running INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS torpor_snapshots (
    id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    machine TEXT NOT NULL,
    process TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS torpor_snapshots_created ON torpor_snapshots (created_at);
CREATE TABLE IF NOT EXISTS torpor_copies (
    snapshot TEXT NOT NULL,
    machine TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (snapshot, machine)
);
"""


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


_COLS = (
    "id, state, image, model, system, tools, policy, snapshot, snapshot_seq, snapshots, "
    "lease_owner, lease_until, wake_at, attempt, parent, error, created_at, updated_at, tenant, "
    "cancel"
)


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
    """SQLite (one machine) or PostgreSQL (many) behind the same few statements."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlparse(url)
        self.kind = "postgres" if parsed.scheme.startswith("postgres") else "sqlite"
        self._local = threading.local()
        if self.kind == "sqlite":
            self.path = Path(unquote(parsed.path))
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            from psycopg_pool import ConnectionPool

            self._pool = ConnectionPool(url.split("?")[0], min_size=1, max_size=8, open=True)
        serial = "INTEGER" if self.kind == "sqlite" else "BIGSERIAL"
        with self.tx() as cur:
            self.lock_schema(cur)
            for stmt in _SCHEMA.format(serial=serial).split(";"):
                if stmt.strip():
                    cur.execute(stmt)
            self._migrate(cur)

    # Columns added after a database was created: (table, column, type). Each is added
    # once (ALTER TABLE ... ADD COLUMN); an index that needs it is created after.
    _ADDED = (
        ("torpor_sessions", "tenant", "TEXT"),
        ("torpor_sessions", "cancel", "TEXT"),  # NULL | 'cancel' | 'close' (requested)
        ("torpor_inbox", "key", "TEXT"),  # the Idempotency-Key the message was posted with
    )

    def _migrate(self, cur: Any) -> None:
        for table, column, kind in self._ADDED:
            if self.kind == "sqlite":
                cur.execute(f"PRAGMA table_info({table})")
                have = {r[1] for r in cur.fetchall()}
            else:  # look first: ALTER TABLE locks the table even when it changes nothing
                cur.execute("SELECT column_name FROM information_schema.columns WHERE "
                            "table_schema = current_schema() AND table_name = %s",
                            (table,))  # fmt: skip
                have = {r[0] for r in cur.fetchall()}
            if column not in have:  # (PostgreSQL: two processes may both get here)
                exists = " IF NOT EXISTS" if self.kind == "postgres" else ""
                cur.execute(f"ALTER TABLE {table} ADD COLUMN{exists} {column} {kind}")
        # One message per key and session, enforced by the database itself, so that two
        # API processes posting the same key at once queue it once (NULL keys are distinct).
        cur.execute("CREATE UNIQUE INDEX IF NOT EXISTS torpor_inbox_key "
                    "ON torpor_inbox (session, key)")  # fmt: skip
        # Keys kept in a table of their own before (torpor_idempotency) move to the inbox.
        if self.kind == "sqlite":
            cur.execute("SELECT 1 FROM sqlite_master WHERE name = 'torpor_idempotency'")
            old = cur.fetchone() is not None
        else:
            cur.execute("SELECT to_regclass('torpor_idempotency') IS NOT NULL")
            old = bool(cur.fetchone()[0])
        if old:
            cur.execute("UPDATE torpor_inbox SET key = (SELECT k.key FROM torpor_idempotency k "
                        "WHERE k.session = torpor_inbox.session AND k.turn = torpor_inbox.id) "
                        "WHERE key IS NULL")  # fmt: skip
            cur.execute("DROP TABLE torpor_idempotency")

    def lock_schema(self, cur: Any) -> None:
        """Serialize schema changes of processes starting at once (two servers on one
        PostgreSQL: CREATE TABLE IF NOT EXISTS is not safe against a concurrent one);
        SQLite's write transaction already is."""
        if self.kind == "postgres":
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))

    def _sql(self, sql: str) -> str:
        return sql.replace("%s", "?") if self.kind == "sqlite" else sql

    @contextmanager
    def tx(self) -> Iterator[Any]:
        """A write transaction; yields a cursor whose execute() takes %s placeholders."""
        if self.kind == "sqlite":
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=30000")
                self._local.conn = conn
            cur = _Cursor(conn.cursor(), self._sql)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        else:
            with self._pool.connection() as conn, conn.transaction():
                yield _Cursor(conn.cursor(), self._sql)

    def close(self) -> None:
        if self.kind == "postgres":
            self._pool.close()
        else:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
                self._local.conn = None

    # ---------------------------------------------------------------- sessions

    def create(self, row: SessionRow) -> None:
        now = time.time()
        with self.tx() as cur:
            cur.execute(
                f"INSERT INTO torpor_sessions ({_COLS}) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (row.id, row.state, row.image, row.model, row.system, json.dumps(row.tools),
                 json.dumps(row.policy), row.snapshot, row.snapshot_seq,
                 json.dumps(row.snapshots), None, None, None, 0, row.parent, None, now, now,
                 row.tenant, None),
            )  # fmt: skip

    def get(self, sid: str) -> SessionRow:
        with self.tx() as cur:
            cur.execute(f"SELECT {_COLS} FROM torpor_sessions WHERE id = %s", (sid,))
            r = cur.fetchone()
        if r is None:
            raise SessionNotFound(sid)
        return _row(r)

    def list(self, state: str | None = None, tenant: str | None = None) -> list[SessionRow]:
        where, params = [], []
        if state:
            where.append("state = %s")
            params.append(state)
        if tenant is not None:
            where.append("tenant = %s")
            params.append(tenant)
        sql = f"SELECT {_COLS} FROM torpor_sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.tx() as cur:
            cur.execute(sql + " ORDER BY created_at", params)
            return [_row(r) for r in cur.fetchall()]

    def update(self, sid: str, *, owner: str | None = None, **values: Any) -> bool:
        """Set columns; when owner is given, only while that owner holds the lease.
        Returns False if the row did not match (lease lost)."""
        for k in ("tools", "policy", "snapshots"):
            if k in values:
                values[k] = json.dumps(values[k])
        values["updated_at"] = time.time()
        sets = ", ".join(f"{k} = %s" for k in values)
        sql = f"UPDATE torpor_sessions SET {sets} WHERE id = %s"
        params: list[Any] = [*values.values(), sid]
        if owner is not None:
            sql += " AND lease_owner = %s"
            params.append(owner)
        with self.tx() as cur:
            cur.execute(sql, params)
            return cur.rowcount == 1

    def snapshot_in_use(self, snapshot: str, *, besides: str) -> bool:
        """Does a session other than `besides` (a fork, say) still name this snapshot?"""
        like = "%" + json.dumps(snapshot) + "%"
        with self.tx() as cur:
            cur.execute(
                "SELECT 1 FROM torpor_sessions WHERE id <> %s AND (snapshot = %s OR "
                "snapshots LIKE %s) LIMIT 1",
                (besides, snapshot, like),
            )
            return cur.fetchone() is not None

    # ---------------------------------------------------------------- leases, queue

    def claim(self, sid: str, owner: str, ttl: float) -> SessionRow | None:
        """Take the session's lease if nobody holds a live one."""
        now = time.time()
        with self.tx() as cur:
            cur.execute(
                "UPDATE torpor_sessions SET lease_owner = %s, lease_until = %s, updated_at = %s "
                "WHERE id = %s AND state != 'closed' "
                "AND (lease_owner IS NULL OR lease_until < %s OR lease_owner = %s)",
                (owner, now + ttl, now, sid, now, owner),
            )
            if cur.rowcount != 1:
                return None
            cur.execute(f"SELECT {_COLS} FROM torpor_sessions WHERE id = %s", (sid,))
            return _row(cur.fetchone())

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
        lock = " FOR UPDATE SKIP LOCKED" if self.kind == "postgres" else ""
        mine, params = "", [now, owner, now]
        # the machines with a hot copy of a session's latest snapshot: the one that took
        # it, and those that fetched it ahead (runtime/prefetch.py)
        holders = ("(SELECT p.machine AS machine FROM torpor_snapshots p WHERE p.id = "
                   "s.snapshot UNION SELECT c.machine FROM torpor_copies c WHERE "
                   "c.snapshot = s.snapshot)")  # fmt: skip
        if machine is not None and affinity > 0:
            # (a holder's free slots: over its processes whose heartbeat is fresh)
            mine = (
                f"AND (%s IN {holders} OR NOT EXISTS (SELECT 1 FROM {holders} hm "
                "  WHERE hm.machine <> %s AND (SELECT COALESCE(SUM(h.slots - h.running), 0) "
                "    FROM torpor_heartbeats h WHERE h.machine = hm.machine "
                "    AND h.heartbeat_at > %s) > 0) "
                "  OR EXISTS (SELECT 1 FROM torpor_inbox i WHERE i.session = s.id "
                "    AND i.consumed = 0 AND i.created_at <= %s)) "
            )
            params += [machine, machine, now - machine_ttl, now - affinity]
        order = "updated_at"
        if machine is not None:
            order = f"CASE WHEN %s IN {holders} THEN 0 ELSE 1 END, updated_at"
            params.append(machine)
        with self.tx() as cur:
            cur.execute(
                "SELECT id FROM torpor_sessions s WHERE state NOT IN ('closed', 'failed') "
                "AND (lease_owner IS NULL OR lease_until < %s OR lease_owner = %s) "
                # wake_at is a retry's timer; on a waiting session it only says when a
                # warm sandbox gets snapshotted, and does not hold the session back.
                "AND (wake_at IS NULL OR wake_at <= %s OR state = 'waiting') "
                "AND (state IN ('running', 'recovering', 'retrying') OR EXISTS ("
                "  SELECT 1 FROM torpor_inbox i WHERE i.session = s.id AND i.consumed = 0)) "
                f"{mine}ORDER BY {order} LIMIT 1{lock}",
                params,
            )
            r = cur.fetchone()
            if r is None:
                return None
            cur.execute(
                "UPDATE torpor_sessions SET lease_owner = %s, lease_until = %s, updated_at = %s "
                "WHERE id = %s",
                (owner, now + ttl, now, r[0]),
            )
            cur.execute(f"SELECT {_COLS} FROM torpor_sessions WHERE id = %s", (r[0],))
            return _row(cur.fetchone())

    # ---------------------------------------------------------------- machines

    def beat(self, process: str, machine: str, host: str, *, slots: int, running: int,
             at: float | None = None) -> None:  # fmt: skip
        """Say that `process` (of `machine`) is alive, with `slots` turns it can run at
        once and `running` it runs (at: when, default now)."""
        now = time.time() if at is None else at
        with self.tx() as cur:
            cur.execute(
                "INSERT INTO torpor_heartbeats (process, machine, host, heartbeat_at, slots, "
                "running) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (process) DO UPDATE SET "
                "heartbeat_at = excluded.heartbeat_at, slots = excluded.slots, "
                "running = excluded.running",
                (process, machine, host, now, slots, running),
            )

    def forget_process(self, process: str) -> None:
        """A process that stopped cleanly (its uploads done): nobody waits for it."""
        with self.tx() as cur:
            cur.execute("DELETE FROM torpor_heartbeats WHERE process = %s", (process,))

    def process_alive(self, process: str, ttl: float) -> bool:
        with self.tx() as cur:
            cur.execute("SELECT 1 FROM torpor_heartbeats WHERE process = %s AND "
                        "heartbeat_at > %s", (process, time.time() - ttl))  # fmt: skip
            return cur.fetchone() is not None

    def record_snapshot(self, snapshot: str, session: str, machine: str, process: str) -> None:
        """Snapshot `snapshot` of `session` was taken on `machine` by `process` (which
        holds its hot copy there, and uploads it)."""
        with self.tx() as cur:
            cur.execute("INSERT INTO torpor_snapshots (id, session, machine, process, "
                        "created_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (snapshot, session, machine, process, time.time()))  # fmt: skip

    def record_copy(self, snapshot: str, machine: str) -> None:
        """`machine` has a hot copy of `snapshot`, fetched ahead of a turn that may come
        to it (affinity then counts it as a holder)."""
        with self.tx() as cur:
            cur.execute("INSERT INTO torpor_copies (snapshot, machine, at) VALUES "
                        "(%s, %s, %s) ON CONFLICT DO NOTHING",
                        (snapshot, machine, time.time()))  # fmt: skip

    def snapshot_copies(self, snapshot: str) -> list[str]:
        """The machines that fetched a copy of `snapshot` ahead (besides its taker)."""
        with self.tx() as cur:
            cur.execute("SELECT machine FROM torpor_copies WHERE snapshot = %s ORDER BY at",
                        (snapshot,))  # fmt: skip
            return [str(r[0]) for r in cur.fetchall()]

    def snapshots_since(self, since: float) -> list[tuple[str, str, str, float]]:
        """(snapshot, session, machine, created_at) recorded after `since`, oldest first,
        where the snapshot is still its session's latest."""
        with self.tx() as cur:
            cur.execute("SELECT p.id, p.session, p.machine, p.created_at FROM torpor_snapshots "
                        "p JOIN torpor_sessions s ON s.id = p.session AND s.snapshot = p.id "
                        "WHERE p.created_at > %s AND s.state NOT IN ('closed', 'failed') "
                        "ORDER BY p.created_at", (since,))  # fmt: skip
            return [(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in cur.fetchall()]

    def live_machines(self, ttl: float) -> list[str]:
        """Machines with a process whose heartbeat is fresher than ttl seconds."""
        with self.tx() as cur:
            cur.execute("SELECT DISTINCT machine FROM torpor_heartbeats WHERE heartbeat_at > %s",
                        (time.time() - ttl,))  # fmt: skip
            return sorted(str(r[0]) for r in cur.fetchall())

    def snapshot_holder(self, snapshot: str) -> tuple[str, str] | None:
        """(machine, process) that took the snapshot, if recorded."""
        with self.tx() as cur:
            cur.execute("SELECT machine, process FROM torpor_snapshots WHERE id = %s",
                        (snapshot,))  # fmt: skip
            r = cur.fetchone()
        return None if r is None else (str(r[0]), str(r[1]))

    def heartbeat(self, sid: str, owner: str, ttl: float) -> bool:
        with self.tx() as cur:
            cur.execute(
                "UPDATE torpor_sessions SET lease_until = %s WHERE id = %s AND lease_owner = %s",
                (time.time() + ttl, sid, owner),
            )
            return cur.rowcount == 1

    def next_wake(self) -> float | None:
        """When the earliest retry timer fires (for a worker deciding how long to sleep)."""
        with self.tx() as cur:
            cur.execute(
                "SELECT MIN(wake_at) FROM torpor_sessions WHERE state = 'retrying'"
            )
            r = cur.fetchone()
        return r[0] if r else None

    # ---------------------------------------------------------------- inbox

    def post(self, sid: str, text: str, *, key: str | None = None) -> int:
        return self.post_once(sid, text, key=key)[0]

    def post_once(self, sid: str, text: str, *, key: str | None = None) -> tuple[int, bool]:
        """Queue a user message; returns (inbox id, duplicate). With a key, the message and
        its key are one row under a unique (session, key) index, written in one
        transaction: a second post with the key (from any process) queues nothing and
        gets the first one's id. A post clears a cancel asked for before it."""
        with self.tx() as cur:
            cur.execute("SELECT state FROM torpor_sessions WHERE id = %s", (sid,))
            r = cur.fetchone()
            if r is None:
                raise SessionNotFound(sid)
            if key is not None:
                earlier = self._keyed(cur, sid, key)
                if earlier is not None:
                    return earlier, True
            if r[0] == "closed":
                raise SessionClosedError(f"session {sid} is closed")
            cur.execute(
                "INSERT INTO torpor_inbox (session, text, created_at, consumed, key) "
                "VALUES (%s, %s, %s, 0, %s) ON CONFLICT DO NOTHING RETURNING id",
                (sid, text, time.time(), key),
            )
            got = cur.fetchone()
            if got is None:  # a concurrent post with the key committed first
                earlier = self._keyed(cur, sid, key or "")
                if earlier is None:
                    raise RuntimeError(f"message with key {key!r} neither queued nor found")
                return earlier, True
            new_state = ", state = 'waiting'" if r[0] == "failed" else ""  # the user's retry
            cur.execute(f"UPDATE torpor_sessions SET cancel = NULL{new_state} WHERE id = %s",
                        (sid,))  # fmt: skip
            return int(got[0]), False

    def turn_for_key(self, sid: str, key: str) -> int | None:
        """The inbox id of the message posted to the session with this Idempotency-Key."""
        with self.tx() as cur:
            return self._keyed(cur, sid, key)

    @staticmethod
    def _keyed(cur: Any, sid: str, key: str) -> int | None:
        cur.execute("SELECT id FROM torpor_inbox WHERE session = %s AND key = %s", (sid, key))
        r = cur.fetchone()
        return None if r is None else int(r[0])

    # ---------------------------------------------------------------- cancel

    def request_cancel(self, sid: str, what: str = "cancel") -> SessionRow:
        """Ask the worker running the session's turn to stop it at its next safe point
        ('close': and then close the session). Returns the row as it is now."""
        with self.tx() as cur:
            cur.execute("UPDATE torpor_sessions SET cancel = %s, updated_at = %s "
                        "WHERE id = %s AND state != 'closed'",
                        (what, time.time(), sid))  # fmt: skip
            cur.execute(f"SELECT {_COLS} FROM torpor_sessions WHERE id = %s", (sid,))
            r = cur.fetchone()
        if r is None:
            raise SessionNotFound(sid)
        return _row(r)

    def cancel_requested(self, sid: str) -> str | None:
        with self.tx() as cur:
            cur.execute("SELECT cancel FROM torpor_sessions WHERE id = %s", (sid,))
            r = cur.fetchone()
        return None if r is None else r[0]

    # ---------------------------------------------------------------- inbox (reading)

    def unread(self, sid: str) -> list[tuple[int, str]]:
        with self.tx() as cur:
            cur.execute(
                "SELECT id, text FROM torpor_inbox WHERE session = %s AND consumed = 0 "
                "ORDER BY id",
                (sid,),
            )
            return [(int(i), t) for i, t in cur.fetchall()]

    def consume(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.tx() as cur:
            for i in ids:
                cur.execute("UPDATE torpor_inbox SET consumed = 1 WHERE id = %s", (i,))


class _Cursor:
    def __init__(self, cur: Any, translate: Any) -> None:
        self._cur = cur
        self._translate = translate

    def execute(self, sql: str, params: Any = ()) -> None:
        self._cur.execute(self._translate(sql), params)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount
