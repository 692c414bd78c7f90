"""The tables torpor keeps, as DDL per dialect: the context log's, the runtime's, the
API tokens', the LangGraph checkpointer's, the sandbox resource's, and the version
table. `migrations.py` says in which order they are made.

The text is the same on both databases except where a `{placeholder}` says otherwise:
`{big}` (SQLite: INTEGER, PostgreSQL: BIGINT), `{without_rowid}` (SQLite tables
clustered on their primary key), `{serial}` (an auto-numbered key), `{blob}` (bytes:
SQLite BLOB, PostgreSQL BYTEA).
"""

from __future__ import annotations

from .connection import Dialect

_FILL = {
    "sqlite": {"big": "INTEGER", "without_rowid": " WITHOUT ROWID", "serial": "INTEGER",
               "blob": "BLOB"},
    "postgres": {"big": "BIGINT", "without_rowid": "", "serial": "BIGSERIAL", "blob": "BYTEA"},
}


def ddl(statements: tuple[str, ...], dialect: Dialect) -> list[str]:
    """The statements with the dialect's fill-ins."""
    return [s.format(**_FILL[dialect.name]) for s in statements]


VERSION_TABLE = """CREATE TABLE IF NOT EXISTS torpor_schema (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""

# -- the context log (context/log.py) ------------------------------------------------------
CONTEXT_LOG = (
    """CREATE TABLE context_sessions (
        id TEXT PRIMARY KEY,
        epoch {big} NOT NULL DEFAULT 0,
        parent TEXT REFERENCES context_sessions(id),
        fork_seq {big} NOT NULL DEFAULT 0,
        head_seq {big} NOT NULL DEFAULT 0,
        head_hash TEXT NOT NULL DEFAULT '',
        bytes {big} NOT NULL DEFAULT 0,
        warned INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        closed_at TEXT
    )""",
    "CREATE INDEX context_sessions_parent ON context_sessions(parent)",
    "CREATE INDEX context_sessions_closed ON context_sessions(closed_at)",
    # content: canonical JSON, NULL when None or in the blob store; *_blob: 'sha256hex:size'
    # of a payload kept in the blob store. JSON is text, not jsonb, so the bytes that were
    # hashed are the bytes stored.
    """CREATE TABLE context_entries (
        session TEXT NOT NULL,
        seq {big} NOT NULL,
        kind TEXT NOT NULL,
        role TEXT,
        content TEXT,
        content_blob TEXT,
        tool_call_id TEXT,
        tool_name TEXT,
        arguments TEXT,
        arguments_blob TEXT,
        usage TEXT,
        meta TEXT NOT NULL,
        epoch {big} NOT NULL,
        created_at TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        size {big} NOT NULL,
        PRIMARY KEY (session, seq)
    ){without_rowid}""",
    """CREATE INDEX context_entries_call ON context_entries(session, tool_call_id)
        WHERE tool_call_id IS NOT NULL""",
    """CREATE TABLE context_idempotency (
        session TEXT NOT NULL,
        key TEXT NOT NULL,
        first_seq {big} NOT NULL,
        last_seq {big} NOT NULL,
        PRIMARY KEY (session, key)
    ){without_rowid}""",
)

# -- the runtime (runtime/db.py) -------------------------------------------------------------
# IF NOT EXISTS: torpor before the version table made these tables without recording a
# version; migration 2 adopts them (and adds the columns of RUNTIME_ADDED they lack).
RUNTIME = (
    """CREATE TABLE IF NOT EXISTS torpor_sessions (
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
        tenant TEXT,
        cancel TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS torpor_inbox (
        id {serial} PRIMARY KEY,
        session TEXT NOT NULL,
        text TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        consumed INTEGER NOT NULL,
        key TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS torpor_inbox_session ON torpor_inbox (session, consumed)",
    """CREATE TABLE IF NOT EXISTS torpor_heartbeats (
        process TEXT PRIMARY KEY,
        machine TEXT NOT NULL,
        host TEXT NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL,
        slots INTEGER NOT NULL,
        running INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS torpor_snapshots (
        id TEXT PRIMARY KEY,
        session TEXT NOT NULL,
        machine TEXT NOT NULL,
        process TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS torpor_snapshots_created ON torpor_snapshots (created_at)",
    """CREATE TABLE IF NOT EXISTS torpor_copies (
        snapshot TEXT NOT NULL,
        machine TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (snapshot, machine)
    )""",
)
# Columns that tables made by an older torpor lack: (table, column, type).
RUNTIME_ADDED = (
    ("torpor_sessions", "tenant", "TEXT"),
    ("torpor_sessions", "cancel", "TEXT"),  # NULL | 'cancel' | 'close' (requested)
    ("torpor_inbox", "key", "TEXT"),  # the Idempotency-Key the message was posted with
)
# One message per key and session, enforced by the database itself, so that two API
# processes posting the same key at once queue it once (NULL keys are distinct).
RUNTIME_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS torpor_inbox_key ON torpor_inbox (session, key)",
)

# -- API tokens (api/tokens.py) ----------------------------------------------------------------
TOKENS = (
    """CREATE TABLE IF NOT EXISTS torpor_tokens (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        scopes TEXT NOT NULL,
        hash TEXT NOT NULL,
        note TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    )""",
)

# -- storage: pins and named leases (runtime/retention.py, runtime/storage.py) -----------------
# A pin keeps a snapshot from retention's deletes until `until` (a machine fetching or
# restoring it, say: `holder` says who). A named lease is held by one process at a time
# across every machine sharing the database (the scheduled gc of one snapshot store).
# Usage: stored bytes per session, sandbox (of the sandbox resource) and tenant (kind
# 'session' | 'sandbox' | 'tenant'; kind 'store', name '': the whole store), as the last
# scheduled gc counted them (runtime/storage.account); `at`: when that count began.
STORAGE = (
    """CREATE TABLE torpor_pins (
        snapshot TEXT NOT NULL,
        holder TEXT NOT NULL,
        until DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (snapshot, holder)
    )""",
    """CREATE TABLE torpor_leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        until DOUBLE PRECISION NOT NULL,
        note TEXT
    )""",
    """CREATE TABLE torpor_usage (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        tenant TEXT,
        snapshots {big} NOT NULL,
        logical {big} NOT NULL,
        stored {big} NOT NULL,
        exclusive {big} NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (kind, name)
    )""",
    # What each new snapshot added to the store (its new bytes) since the last count, by
    # tenant: the quota on stored bytes reads the last count plus these (runtime/quotas.py).
    """CREATE TABLE torpor_usage_added (
        snapshot TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        bytes {big} NOT NULL,
        at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX torpor_usage_added_tenant ON torpor_usage_added (tenant, at)",
    # Per-tenant limits that replace the server's (`torpor quota set`): NULL, the server's
    # limit; 0, none. Tenant '' is the sessions and sandboxes made without a tenant.
    """CREATE TABLE torpor_quotas (
        tenant TEXT PRIMARY KEY,
        stored_bytes {big},
        snapshots {big},
        updated_at DOUBLE PRECISION NOT NULL
    )""",
)

# -- LangGraph checkpoints (integrations/langgraph/saver.py) ---------------------------------
# One row per checkpoint (without its channel values), one per (channel, version) a
# checkpoint brought in with a value, one per pending write. A value row either holds the
# whole value (base NULL) or, for a list that extends the list of an earlier version, only
# the items appended to it, with `base` the version it extends, `anchor` the version of
# the whole row the chain of such rows starts at (indexed: a read fetches a chain in one
# lookup) and `depth` the rows down to it; a list's `digest` chains the row's bytes to its
# base's (a writer checks it before it appends to a row it remembers; empty for other
# values). `type`: the serializer's type tag.
LANGGRAPH = (
    """CREATE TABLE langgraph_checkpoints (
        thread_id TEXT NOT NULL,
        checkpoint_ns TEXT NOT NULL,
        checkpoint_id TEXT NOT NULL,
        parent_id TEXT,
        run_id TEXT,
        type TEXT NOT NULL,
        checkpoint {blob} NOT NULL,
        metadata_type TEXT NOT NULL,
        metadata {blob} NOT NULL,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
    ){without_rowid}""",
    """CREATE INDEX langgraph_checkpoints_run ON langgraph_checkpoints(run_id)
        WHERE run_id IS NOT NULL""",
    """CREATE TABLE langgraph_values (
        thread_id TEXT NOT NULL,
        checkpoint_ns TEXT NOT NULL,
        channel TEXT NOT NULL,
        version TEXT NOT NULL,
        base TEXT,
        anchor TEXT,
        depth INTEGER NOT NULL,
        digest {blob} NOT NULL,
        type TEXT NOT NULL,
        data {blob},
        PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
    ){without_rowid}""",
    """CREATE INDEX langgraph_values_anchor ON langgraph_values(thread_id, checkpoint_ns,
        channel, anchor, depth) WHERE anchor IS NOT NULL""",
    """CREATE TABLE langgraph_writes (
        thread_id TEXT NOT NULL,
        checkpoint_ns TEXT NOT NULL,
        checkpoint_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        channel TEXT NOT NULL,
        type TEXT NOT NULL,
        data {blob},
        task_path TEXT NOT NULL,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
    ){without_rowid}""",
)

# -- sandboxes, the resource (runtime/sandboxes/) ------------------------------------------------
# One row per sandbox created through the resource (never deleted: a killed one stays, its
# state `killed`), and one per snapshot taken of one (a pause or a named snapshot).
# `version` is bumped by every change of state: each is a conditional UPDATE on it, so two
# processes that resume or pause one sandbox at once cannot both win.
SANDBOXES = (
    """CREATE TABLE torpor_sandboxes (
        id TEXT PRIMARY KEY,
        tenant TEXT,
        image TEXT NOT NULL,
        state TEXT NOT NULL,
        box TEXT,
        machine TEXT,
        process TEXT,
        snapshot TEXT,
        source TEXT,
        timeout DOUBLE PRECISION,
        on_timeout TEXT NOT NULL,
        auto_resume INTEGER NOT NULL,
        last_activity DOUBLE PRECISION NOT NULL,
        metadata TEXT NOT NULL,
        env TEXT NOT NULL,
        note TEXT,
        version {big} NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        paused_at DOUBLE PRECISION,
        killed_at DOUBLE PRECISION
    )""",
    "CREATE INDEX torpor_sandboxes_tenant ON torpor_sandboxes (tenant, state)",
    "CREATE INDEX torpor_sandboxes_holder ON torpor_sandboxes (process, state)",
    """CREATE TABLE torpor_sandbox_snapshots (
        id TEXT PRIMARY KEY,
        sandbox TEXT NOT NULL,
        tenant TEXT,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        bytes {big} NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX torpor_sandbox_snapshots_sandbox ON torpor_sandbox_snapshots (sandbox)",
)
