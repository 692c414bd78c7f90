"""Migrations on both databases: a fresh database gets every table at the current
version, a database written by torpor 0.1.0 (before the database layer) is adopted and
works, a newer one is refused, and servers starting at once migrate once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.db.legacy import HEAD_HASH, TOKEN, run_sql, write_legacy
from torpor.api.tokens import TokenStore
from torpor.context import ContextError, Entry, open_log
from torpor.db import MIGRATIONS, SCHEMA_VERSION, SchemaTooNew, open_database, schema_version
from torpor.db.migrations import LEGACY_GUARD
from torpor.runtime.db import RuntimeDB, SessionRow


def schema_of(url: str) -> dict[str, object]:
    """Tables with their columns (name, type, not null), and index names."""
    if url.startswith("sqlite"):
        tables = [r[0] for r in run_sql(url, "SELECT name FROM sqlite_master WHERE "
                                              "type = 'table' ORDER BY name")]
        cols = {t: sorted((r[1], r[2], r[3]) for r in run_sql(url, f"PRAGMA table_info({t})"))
                for t in tables}
        indexes = run_sql(url, "SELECT name FROM sqlite_master WHERE type = 'index' AND "
                               "name NOT LIKE 'sqlite_autoindex%'")
    else:
        cols = {}
        for t, c, kind, null in run_sql(url, "SELECT table_name, column_name, data_type, "
                                             "is_nullable FROM information_schema.columns "
                                             "WHERE table_schema = 'public'"):
            cols.setdefault(t, []).append((c, kind, null))
        cols = {t: sorted(v) for t, v in cols.items()}
        indexes = run_sql(url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
    cols.pop("context_schema", None)  # the legacy version table, kept as a guard
    return {"columns": cols,
            "indexes": sorted(r[0] for r in indexes if not r[0].startswith("context_schema"))}


def test_fresh_database_gets_every_table_at_the_current_version(url: str):
    db = open_database(url)
    try:
        assert schema_version(db) == SCHEMA_VERSION == MIGRATIONS[-1].version
    finally:
        db.close()
    got = schema_of(url)
    assert set(got["columns"]) == {
        "torpor_schema", "context_sessions", "context_entries", "context_idempotency",
        "torpor_sessions", "torpor_inbox", "torpor_heartbeats", "torpor_snapshots",
        "torpor_copies", "torpor_tokens", "langgraph_checkpoints", "langgraph_values",
        "langgraph_writes", "torpor_sandboxes", "torpor_sandbox_snapshots", "torpor_pins",
        "torpor_leases", "torpor_usage", "torpor_usage_added", "torpor_quotas"}
    assert {"context_entries_call", "torpor_inbox_key", "torpor_inbox_session",
            "torpor_snapshots_created", "torpor_sandboxes_tenant", "torpor_sandboxes_holder",
            "torpor_sandbox_snapshots_sandbox", "torpor_usage_added_tenant"} <= set(got["indexes"])
    versions = run_sql(url, "SELECT version, name FROM torpor_schema ORDER BY version")
    assert versions == [(m.version, m.name) for m in MIGRATIONS]
    # opening again applies nothing
    open_database(url).close()
    assert len(run_sql(url, "SELECT version FROM torpor_schema")) == len(MIGRATIONS)


def test_a_database_of_torpor_0_1_0_opens_and_works(url: str, tmp_path: Path):
    write_legacy(url)
    with open_log(url + ("?" if "?" not in url else "&") + f"blobs=file://{tmp_path}/b") as log:
        assert log.schema_version() == SCHEMA_VERSION
        # the log: its entries read back whole, the chain verifies and goes on
        assert [e.content for e in log.read("ses-legacy")] == ["hello", None, "hi\n", "done"]
        assert log.session("ses-legacy").head_hash == HEAD_HASH
        assert log.verify("ses-legacy").ok
        assert log.append("ses-legacy", [Entry.message("user", "again")], epoch=1,
                          idempotency_key="k1") == [1, 2, 3, 4]  # the key is remembered
        epoch = log.acquire("ses-legacy")
        assert log.append("ses-legacy", [Entry.message("user", "later")], epoch=epoch) == [5]
        assert log.verify("ses-legacy").ok
    rdb = RuntimeDB(url)
    try:
        row = rdb.get("ses-legacy")
        assert (row.tenant, row.state, row.snapshots, row.cancel) == (
            "acme", "waiting", ["snap-1"], None)
        assert rdb.post_once("ses-legacy", "queued message", key="idem-1") == (1, True)
        assert rdb.unread("ses-legacy") == [(1, "queued message")]
        assert rdb.snapshot_holder("snap-1") == ("m1", "proc-1")
        assert rdb.snapshot_copies("snap-1") == ["m2"]
        claimed = rdb.claim_any("w1", 30.0)
        assert claimed is not None and claimed.id == "ses-legacy"
        rdb.create(SessionRow(id="ses-new", state="waiting", image="base", model="m",
                              system=None, tools=None, policy={}, snapshot=None,
                              snapshot_seq=None, tenant="acme"))
        assert rdb.post_once("ses-new", "hi", key="idem-1")[1] is False  # keys per session
        tokens = TokenStore(rdb)
        who = tokens.check(TOKEN)
        assert who is not None and who.tenant == "acme" and who.scopes == {"admin", "drive"}
        assert tokens.open_sessions("acme") == 2 and tokens.busy_sessions("acme") == 2
    finally:
        rdb.close()
    # adopted: the same tables, columns and indexes as a database made fresh now
    fresh = url.replace("torpor.db", "fresh.db") if url.startswith("sqlite") else None
    if fresh is not None:
        open_database(fresh).close()
        assert schema_of(url) == schema_of(fresh)
    assert [r[0] for r in run_sql(url, "SELECT version FROM torpor_schema ORDER BY version")
            ] == [m.version for m in MIGRATIONS]
    # torpor 0.1.0 reads its version from context_schema: now it refuses the database
    assert max(r[0] for r in run_sql(url, "SELECT version FROM context_schema")) == LEGACY_GUARD


def test_adopted_postgres_schema_equals_a_fresh_one(pg):
    legacy, fresh = pg.url(pg.create_db()), pg.url(pg.create_db())
    write_legacy(legacy)
    open_database(legacy).close()
    open_database(fresh).close()
    assert schema_of(legacy) == schema_of(fresh)


def test_older_runtime_tables_are_adopted(tmp_path: Path):
    """Tables of a torpor before tenants, cancels and keys in the inbox: the columns are
    added, and the keys of the old torpor_idempotency table move to their messages."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    run_sql(url, "CREATE TABLE torpor_sessions (id TEXT PRIMARY KEY, state TEXT NOT NULL, "
                 "image TEXT NOT NULL, model TEXT NOT NULL, system TEXT, tools TEXT NOT NULL, "
                 "policy TEXT NOT NULL, snapshot TEXT, snapshot_seq BIGINT, snapshots TEXT "
                 "NOT NULL, lease_owner TEXT, lease_until DOUBLE PRECISION, wake_at DOUBLE "
                 "PRECISION, attempt INTEGER NOT NULL, parent TEXT, error TEXT, created_at "
                 "DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)")
    run_sql(url, "INSERT INTO torpor_sessions VALUES ('s', 'waiting', 'base', 'm', NULL, "
                 "'null', '{}', NULL, NULL, '[]', NULL, NULL, NULL, 0, NULL, NULL, 1, 1)")
    run_sql(url, "CREATE TABLE torpor_inbox (id INTEGER PRIMARY KEY, session TEXT NOT NULL, "
                 "text TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
                 "consumed INTEGER NOT NULL)")
    run_sql(url, "INSERT INTO torpor_inbox VALUES (7, 's', 'hello', 1, 0)")
    run_sql(url, "CREATE TABLE torpor_idempotency (session TEXT NOT NULL, key TEXT NOT NULL, "
                 "turn BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
                 "PRIMARY KEY (session, key))")
    run_sql(url, "INSERT INTO torpor_idempotency VALUES ('s', 'the-key', 7, 1)")
    rdb = RuntimeDB(url)
    try:
        assert rdb.turn_for_key("s", "the-key") == 7
        assert rdb.post_once("s", "hello", key="the-key") == (7, True)
        assert rdb.get("s").tenant is None and rdb.get("s").cancel is None
    finally:
        rdb.close()
    assert run_sql(url, "SELECT name FROM sqlite_master WHERE name = 'torpor_idempotency'") == []


def test_a_newer_database_is_refused(url: str):
    open_database(url).close()
    run_sql(url, "INSERT INTO torpor_schema VALUES (99, 'from the future', 'x')")
    with pytest.raises(SchemaTooNew, match=r"version 99 is newer than this torpor "
                                           rf"understands \({SCHEMA_VERSION}\); upgrade"):
        open_database(url)
    with pytest.raises(SchemaTooNew, match="newer"):
        RuntimeDB(url)
    with pytest.raises(ContextError, match="newer"):
        open_log(url)


def test_a_newer_legacy_database_is_refused(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'torpor.db'}"
    write_legacy(url)
    run_sql(url, "INSERT INTO context_schema VALUES (2, 'a later 0.x')")
    with pytest.raises(SchemaTooNew, match="version 2 is newer"):
        open_database(url)
    assert run_sql(url, "SELECT name FROM sqlite_master WHERE name = 'torpor_schema'") == []


def test_processes_starting_at_once_migrate_once(url: str):
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            open_database(url).close()
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(r[0] for r in run_sql(url, "SELECT version FROM torpor_schema")) == [
        m.version for m in MIGRATIONS]
