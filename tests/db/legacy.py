"""A database as torpor 0.1.0 (before the database layer) wrote it: the context log's
tables versioned in `context_schema` (v1), the runtime's and the tokens' tables made with
CREATE TABLE IF NOT EXISTS and columns added by ALTER TABLE, unversioned; and a few rows
(one session with a turn in the log, a queued message with an Idempotency-Key, a
heartbeat, a snapshot and its copy, a token). The DDL is the text of that release's
`context/sqlite.py`, `context/postgres.py`, `runtime/db.py` and `api/tokens.py`, the
rows what its code wrote (`sqlite3 .dump` of a demo database)."""

from __future__ import annotations

import sqlite3

import psycopg

TOKEN = "tpk_12825dcb_27HiTxbBlVfhTGEkkZTlf54tDjPdKc8t"  # the token the rows hold
HEAD_HASH = "1484187b5aee1ea27ce571f7a77ecb15689f30824e163aeec29213b1a3e13475"


def _context_v1(big: str, without_rowid: str) -> list[str]:
    return [
        "CREATE TABLE context_schema (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        f"""CREATE TABLE context_sessions (
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
        f"""CREATE TABLE context_entries (
            session TEXT NOT NULL, seq {big} NOT NULL, kind TEXT NOT NULL, role TEXT,
            content TEXT, content_blob TEXT, tool_call_id TEXT, tool_name TEXT,
            arguments TEXT, arguments_blob TEXT, usage TEXT, meta TEXT NOT NULL,
            epoch {big} NOT NULL, created_at TEXT NOT NULL, prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL, size {big} NOT NULL,
            PRIMARY KEY (session, seq)
        ){without_rowid}""",
        """CREATE INDEX context_entries_call ON context_entries(session, tool_call_id)
            WHERE tool_call_id IS NOT NULL""",
        f"""CREATE TABLE context_idempotency (
            session TEXT NOT NULL, key TEXT NOT NULL, first_seq {big} NOT NULL,
            last_seq {big} NOT NULL, PRIMARY KEY (session, key)
        ){without_rowid}""",
        "INSERT INTO context_schema VALUES (1, '2026-12-06T07:33:48.149551Z')",
    ]


def _runtime(serial: str, if_not_exists: str) -> list[str]:
    return [
        """CREATE TABLE IF NOT EXISTS torpor_sessions (
            id TEXT PRIMARY KEY, state TEXT NOT NULL, image TEXT NOT NULL,
            model TEXT NOT NULL, system TEXT, tools TEXT NOT NULL, policy TEXT NOT NULL,
            snapshot TEXT, snapshot_seq BIGINT, snapshots TEXT NOT NULL, lease_owner TEXT,
            lease_until DOUBLE PRECISION, wake_at DOUBLE PRECISION, attempt INTEGER NOT NULL,
            parent TEXT, error TEXT, created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL, tenant TEXT)""",
        f"""CREATE TABLE IF NOT EXISTS torpor_inbox (
            id {serial} PRIMARY KEY, session TEXT NOT NULL, text TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, consumed INTEGER NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS torpor_inbox_session ON torpor_inbox (session, consumed)",
        """CREATE TABLE IF NOT EXISTS torpor_heartbeats (
            process TEXT PRIMARY KEY, machine TEXT NOT NULL, host TEXT NOT NULL,
            heartbeat_at DOUBLE PRECISION NOT NULL, slots INTEGER NOT NULL,
            running INTEGER NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS torpor_snapshots (
            id TEXT PRIMARY KEY, session TEXT NOT NULL, machine TEXT NOT NULL,
            process TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS torpor_snapshots_created ON torpor_snapshots (created_at)",
        """CREATE TABLE IF NOT EXISTS torpor_copies (
            snapshot TEXT NOT NULL, machine TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (snapshot, machine))""",
        f"ALTER TABLE torpor_sessions ADD COLUMN{if_not_exists} cancel TEXT",
        f"ALTER TABLE torpor_inbox ADD COLUMN{if_not_exists} key TEXT",
        "CREATE UNIQUE INDEX IF NOT EXISTS torpor_inbox_key ON torpor_inbox (session, key)",
        """CREATE TABLE IF NOT EXISTS torpor_tokens (
            id TEXT PRIMARY KEY, tenant TEXT NOT NULL, scopes TEXT NOT NULL,
            hash TEXT NOT NULL, note TEXT, created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION)""",
    ]


ROWS = [
    "INSERT INTO context_sessions VALUES('ses-legacy',1,NULL,0,4,"
    f"'{HEAD_HASH}',73,0,'2026-12-06T07:33:48.157017Z','2026-12-06T07:33:48.159632Z',NULL)",
    "INSERT INTO context_entries VALUES('ses-legacy',1,'message','user','\"hello\"',NULL,NULL,"
    "NULL,NULL,NULL,NULL,'{}',1,'2026-12-06T07:33:48.159632Z','',"
    "'bfc7e17f3fdd0ade4154378f0e683c88461017e51b55439c863ac4b7cc131e4e',9)",
    "INSERT INTO context_entries VALUES('ses-legacy',2,'tool_call','assistant',NULL,NULL,'c1',"
    "'shell','{\"cmd\": \"echo hi\"}',NULL,NULL,'{}',1,'2026-12-06T07:33:48.159632Z',"
    "'bfc7e17f3fdd0ade4154378f0e683c88461017e51b55439c863ac4b7cc131e4e',"
    "'a0327a91fb1eb0fb4518a2eb0737d655a4713ec4714285a3e0fee9d1c62e495c',26)",
    "INSERT INTO context_entries VALUES('ses-legacy',3,'tool_result','tool','\"hi\\n\"',NULL,"
    "'c1',NULL,NULL,NULL,NULL,'{}',1,'2026-12-06T07:33:48.159632Z',"
    "'a0327a91fb1eb0fb4518a2eb0737d655a4713ec4714285a3e0fee9d1c62e495c',"
    "'6ab6ee5b181d5efd3e38309b096ffd2b23d33ff81a413ca67a222c8c2636e35f',8)",
    "INSERT INTO context_entries VALUES('ses-legacy',4,'message','assistant','\"done\"',NULL,"
    "NULL,NULL,NULL,NULL,'{\"input\":3,\"output\":1}','{}',1,'2026-12-06T07:33:48.159632Z',"
    "'6ab6ee5b181d5efd3e38309b096ffd2b23d33ff81a413ca67a222c8c2636e35f',"
    f"'{HEAD_HASH}',30)",
    "INSERT INTO context_idempotency VALUES('ses-legacy','k1',1,4)",
    "INSERT INTO torpor_sessions VALUES('ses-legacy','waiting','base','scripted:x',NULL,"
    "'null','{}','snap-1',4,'[\"snap-1\"]',NULL,NULL,NULL,0,NULL,NULL,1796542428.2009098529,"
    "1796542428.2009098529,'acme',NULL)",
    "INSERT INTO torpor_inbox (session, text, created_at, consumed, key) VALUES("
    "'ses-legacy','queued message',1796542428.2049248218,0,'idem-1')",
    "INSERT INTO torpor_heartbeats VALUES('proc-1','m1','host1',1796542428.205366373,2,0)",
    "INSERT INTO torpor_snapshots VALUES('snap-1','ses-legacy','m1','proc-1',"
    "1796542428.2070116997)",
    "INSERT INTO torpor_copies VALUES('snap-1','m2',1796542428.212845087)",
    "INSERT INTO torpor_tokens VALUES('12825dcb','acme','[\"admin\", \"drive\"]',"
    "'eadfafec9460c67d3d63de4dd4767bc8bc4c29258705f97b31b725f48887ff45','legacy',"
    "1796542428.2183239459,NULL)",
]


def write_legacy(url: str) -> None:
    """Make the 0.1.0 database at `url` (an empty SQLite file or PostgreSQL database)."""
    if url.startswith("sqlite"):
        statements = _context_v1("INTEGER", " WITHOUT ROWID") + _runtime("INTEGER", "") + ROWS
        con = sqlite3.connect(url.removeprefix("sqlite:///"))
        con.execute("PRAGMA journal_mode=WAL")
        for sql in statements:
            con.execute(sql)
        con.commit()
        con.close()
    else:
        statements = (_context_v1("BIGINT", "") + _runtime("BIGSERIAL", " IF NOT EXISTS")
                      + ROWS)
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            for sql in statements:
                conn.execute(sql)


def run_sql(url: str, sql: str) -> list[tuple]:
    """One statement outside torpor's code (to look at or tamper with a database)."""
    if url.startswith("sqlite"):
        con = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = con.execute(sql).fetchall()
            con.commit()
            return rows
        finally:
            con.close()
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []
