"""The database layer: connections, transactions, migrations and every SQL statement.

    db = open_database("sqlite:////var/lib/torpor/context.db")   # opened and migrated
    with db.read() as tx:
        row = runtime.session(tx, "ses-1")

Everything torpor keeps in a database (the context log, the runtime's sessions, inbox,
heartbeats, snapshots and copies, the API's tokens, LangGraph checkpoints, the sandbox
resource) lives in one SQLite file or one PostgreSQL database, and this package is the
only code that speaks SQL to it: `connection.py` (a `Database`: connections, write and
read transactions, the dialects), `schema.py` and `migrations.py` (the tables, one
ordered list of versioned migrations, one version table), and `queries/` (the
statements, as named functions grouped by table family: `log`, `runtime`, `tokens`,
`sandboxes`, `metrics`, `langgraph`). The packages above call those functions with a
transaction; they hold no SQL (a test reads the source to keep it so).

Why no SQLAlchemy Core and Alembic. torpor's statements are hand-tuned per database
(`FOR UPDATE SKIP LOCKED` for claims, a partial index for tool calls, `WITHOUT ROWID`
tables, `ON CONFLICT ... RETURNING` for idempotent posts, one `executemany` per log
append): in SQLAlchemy they would be `text()` strings or dialect-specific constructs,
so Core would add a layer and its per-statement cost on the append path without
writing them for us. Alembic earns its keep with ORM models to autogenerate from and
with branching revision graphs; torpor has neither, three tables families and a handful
of migrations, and needs what Alembic leaves to its user: an advisory lock so that two
servers starting on one PostgreSQL database migrate one after the other, and the
adoption of databases written before versioning. So the context log's own scheme (a
version table and an ordered list of migrations, applied in one transaction) is
extended to every table; it is about a hundred lines. Connection pooling for
PostgreSQL is psycopg_pool's, a well-kept library; SQLite's is a list and a lock.
"""

from __future__ import annotations

from .connection import Database, DatabaseError, Dialect, Tx, split_url
from .migrations import MIGRATIONS, SCHEMA_VERSION, SchemaTooNew, migrate, schema_version

__all__ = [
    "MIGRATIONS", "SCHEMA_VERSION", "Database", "DatabaseError", "Dialect", "SchemaTooNew",
    "Tx", "migrate", "open_database", "schema_version", "split_url",
]


def open_database(url: str, *, busy_timeout: float = 30.0, pool_min: int = 1,
                  pool_max: int = 8, timeout: float = 30.0, check: bool = False) -> Database:
    """A `Database` for the URL (options: see `Database`), migrated to `SCHEMA_VERSION`
    (see `migrations.py`); `SchemaTooNew` when a newer torpor wrote it."""
    db = Database(url, busy_timeout=busy_timeout, pool_min=pool_min, pool_max=pool_max,
                  timeout=timeout, check=check)
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db
