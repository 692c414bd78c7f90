"""The context log: append-only, hash-chained, fenced session history (SQLite, PostgreSQL).

    log = open_log("sqlite:///var/lib/torpor/context.db")
    epoch = log.acquire("s1")
    log.append("s1", [Entry.message("user", "hi")], epoch=epoch)
"""

from __future__ import annotations

import os

from torpor.db import DatabaseError, SchemaTooNew, open_database, split_url
from torpor.home import torpor_home

from .blobs import BlobStore, FileBlobStore, open_blobs
from .convert import from_anthropic, from_openai, to_anthropic, to_openai
from .entry import (
    KINDS,
    BlobMissing,
    BlobRef,
    ContextError,
    Entry,
    InvalidEntry,
    StaleEpoch,
    UnknownSession,
    chain_hash,
)
from .log import DEFAULT_BLOB_THRESHOLD, ContextLog, SessionClosed, SessionInfo, VerifyResult
from .markers import MARKERS, Marker

__all__ = [
    "KINDS", "MARKERS", "BlobMissing", "BlobRef", "BlobStore", "ContextError", "ContextLog",
    "Entry", "Marker",
    "FileBlobStore", "InvalidEntry", "SessionClosed", "SessionInfo", "StaleEpoch",
    "UnknownSession", "VerifyResult", "chain_hash", "default_url", "from_anthropic",
    "from_openai", "open_blobs", "open_log", "to_anthropic", "to_openai",
]


def default_url() -> str:
    """$TORPOR_LOG, else sqlite:///$TORPOR_HOME/context.db (TORPOR_HOME: /var/lib/torpor)."""
    if os.environ.get("TORPOR_LOG"):
        return os.environ["TORPOR_LOG"]
    return f"sqlite:///{torpor_home() / 'context.db'}"


def open_log(url: str | None = None, *, blobs: str | BlobStore | None = None,
             blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
             warn_bytes: int | None = None) -> ContextLog:
    """Open (and migrate) a context log.

    url: `sqlite:///path/to/file.db` or `postgresql://user@host:port/db` (default
    `default_url()`). blobs: blob store URL or object for payloads over `blob_threshold`
    bytes; may also be given as a `blobs=` query parameter. Default: `<db file>.blobs/` next
    to a SQLite file, `$TORPOR_HOME/blobs` for PostgreSQL. warn_bytes: append a
    `size_warning` marker once a session grows past this many bytes.
    """
    url = url or default_url()
    bare, own = split_url(url)
    if blobs is None:
        blobs = own.get("blobs")
    store = open_blobs(blobs) if isinstance(blobs, str) else blobs
    try:
        db = open_database(bare, check=True)  # a writer outlives a server restart
    except SchemaTooNew as e:
        raise ContextError(str(e)) from e
    except DatabaseError as e:
        raise ValueError(f"{e}") from e
    if store is None:
        store = (FileBlobStore(db.path.with_name(db.path.name + ".blobs")) if db.path
                 else FileBlobStore(torpor_home() / "blobs"))
    return ContextLog(db, blobs=store, blob_threshold=blob_threshold, warn_bytes=warn_bytes)
