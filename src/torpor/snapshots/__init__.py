"""The snapshot store: content-addressed, compressed, verified chunks behind a manifest.

Entry point: :func:`open_store` (``file:///path`` or ``s3://bucket/prefix``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from torpor.home import torpor_home

from .backends import Backend, FileBackend, S3Backend, parse_s3_url
from .cache import ChunkCache
from .codec import load_key
from .errors import SnapshotCorrupt, SnapshotError, SnapshotKeyError, SnapshotNotFound
from .gc import GCResult
from .manifest import SnapshotInfo
from .read import SnapshotReader
from .store import SnapshotStore

__all__ = [
    "GCResult", "SnapshotCorrupt", "SnapshotError", "SnapshotInfo", "SnapshotKeyError",
    "SnapshotNotFound", "SnapshotReader", "SnapshotStore", "default_store_url", "open_store",
]

DEFAULT_CACHE_BYTES = 2 << 30


def default_store_url() -> str:
    """TORPOR_SNAPSHOTS, else file://$TORPOR_HOME/snapshots."""
    return os.environ.get("TORPOR_SNAPSHOTS") or f"file://{torpor_home() / 'snapshots'}"


def _default_cache_dir(url: str) -> Path:
    base = os.environ.get("TORPOR_SNAPSHOT_CACHE")
    tag = hashlib.sha256(url.encode()).hexdigest()[:16]
    if base:
        return Path(base) / tag
    return torpor_home() / "cache" / "snapshots" / tag


def open_store(url: str | None = None, *, key: bytes | str | None = None,
               key_file: str | os.PathLike[str] | None = None, use_key_env: bool = True,
               cache_dir: str | os.PathLike[str] | None = None,
               cache_bytes: int | None = None, endpoint_url: str | None = None,
               region: str | None = None, access_key: str | None = None,
               secret_key: str | None = None, **options: Any) -> SnapshotStore:
    """Open a snapshot store.

    url: ``file:///path`` (or a plain path) or ``s3://bucket/prefix``, optionally with
    query options ``endpoint=``, ``region=``, ``cache_dir=``, ``cache_bytes=``,
    ``key_file=``. None means :func:`default_store_url`.
    key / key_file: AES-256 key (32 bytes raw, hex or base64) to encrypt new chunks and
    read encrypted snapshots; else TORPOR_SNAPSHOT_KEY / TORPOR_SNAPSHOT_KEY_FILE.
    cache_dir / cache_bytes: local LRU chunk cache of a remote store (default 2 GiB
    under $TORPOR_HOME/cache/snapshots, or $TORPOR_SNAPSHOT_CACHE); cache_bytes=0
    turns it off.
    Other options go to :class:`SnapshotStore` (page_chunks, pack_target, workers,
    stale_after, level).
    """
    url = url or default_store_url()
    backend: Backend
    if url.startswith("s3://"):
        bucket, prefix, q = parse_s3_url(url)
        backend = S3Backend(bucket, prefix, endpoint_url=endpoint_url or q.get("endpoint"),
                            region=region or q.get("region"), access_key=access_key,
                            secret_key=secret_key)
        if cache_bytes is None:
            cache_bytes = int(q.get("cache_bytes", DEFAULT_CACHE_BYTES))
        cache_dir = cache_dir or q.get("cache_dir")
        key_file = key_file or q.get("key_file")
    else:
        if url.startswith("file://"):
            parts = urlsplit(url)
            path = unquote(parts.path)
            q = dict(parse_qsl(parts.query))
            key_file = key_file or q.get("key_file")
        elif "://" in url:
            raise SnapshotError(f"unsupported snapshot store url {url!r} (file:// or s3://)")
        else:
            path = url
        backend = FileBackend(path)
        cache_bytes = 0
    cache = None
    if cache_bytes:
        cache = ChunkCache(cache_dir or _default_cache_dir(backend.url), cache_bytes)
    return SnapshotStore(backend, key=load_key(key, key_file, use_key_env), cache=cache,
                         **options)
