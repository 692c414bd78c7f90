"""Content-addressed blob store for large context payloads (tool outputs, long messages).

A blob's key is the sha256 of its bytes, so storing the same payload twice keeps one copy and
every read is checked against its key. `open_blobs(url)` picks the backend: `file:///dir`
(or a plain path) or `s3://bucket/prefix?endpoint=...&region=...` (the snapshot store's URL
forms); other schemes plug in by subclassing `BlobStore` and registering in `BACKENDS`.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlparse

from torpor.files import write_atomic

from .entry import BlobMissing, sha256_hex


class BlobStore(ABC):
    """Put bytes, get them back by their sha256. Implementations must make `put` durable
    before returning: the row that refers to a blob is committed right after."""

    url: str

    @abstractmethod
    def put(self, data: bytes) -> str:
        """Store `data`; return its key (sha256 hex). Storing an existing blob is a no-op."""

    @abstractmethod
    def _read(self, key: str) -> bytes | None:
        """The stored bytes, or None when the blob is absent."""

    @abstractmethod
    def has(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self) -> Iterator[tuple[str, float, int]]:
        """(key, last written or put again (unix time), size) of every blob."""

    @abstractmethod
    def mtime(self, key: str) -> float | None:
        """When the blob was last written or put again (None: absent)."""

    def get(self, key: str) -> bytes:
        data = self._read(key)
        if data is None:
            raise BlobMissing(key, self.url)
        if sha256_hex(data) != key:
            raise BlobMissing(key, self.url, "content does not match its hash")
        return data


class FileBlobStore(BlobStore):
    """Blobs as files `<root>/<key[:2]>/<key>`, written via a temp file, fsync and rename."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = self.root.resolve().as_uri() if self.root.is_absolute() else str(self.root)

    def _path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key[:2] / key

    def put(self, data: bytes) -> str:
        key = sha256_hex(data)
        path = self._path(key)
        if path.exists():
            # put again: its time says it is wanted now (blobgc leaves blobs put within
            # its grace period alone, referenced or not: their rows may be committing)
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)
                return key
        write_atomic(path, data, sync_dir=True)
        return key

    def _read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def has(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self._path(key).unlink()

    def list(self) -> Iterator[tuple[str, float, int]]:
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                if len(f.name) == 64 and f.name.startswith(sub.name):  # (not a temp file)
                    with contextlib.suppress(FileNotFoundError):
                        st = f.stat()
                        yield f.name, st.st_mtime, st.st_size

    def mtime(self, key: str) -> float | None:
        try:
            return self._path(key).stat().st_mtime
        except FileNotFoundError:
            return None



class S3BlobStore(BlobStore):
    """Blobs as objects `<prefix>/<key[:2]>/<key>` in an S3-compatible bucket (boto3).

    URL: `s3://bucket/prefix?endpoint=http://host:port&region=...`; endpoint, region and
    credentials otherwise come from the usual AWS_* environment variables. A successful
    PutObject is durable, so `put` returns once it is acknowledged.
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        endpoint_url = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                        or os.environ.get("AWS_ENDPOINT_URL"))
        region = (region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                  or "us-east-1")
        cfg = Config(retries={"max_attempts": 5, "mode": "standard"},
                     s3={"addressing_style": "path"} if endpoint_url else {})
        self.client = boto3.session.Session().client(
            "s3", region_name=region, endpoint_url=endpoint_url, config=cfg)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _name(self, key: str) -> str:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a blob key: {key!r}")
        name = f"{key[:2]}/{key}"
        return f"{self.prefix}/{name}" if self.prefix else name

    @staticmethod
    def _absent(exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in ("NoSuchKey", "404", "NotFound")

    def put(self, data: bytes) -> str:
        # Always put, also a blob already there: its LastModified says it is wanted now
        # (blobgc leaves blobs put within its grace period alone: their rows may be
        # committing). One request either way (a HEAD first would be one too).
        key = sha256_hex(data)
        self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)
        return key

    def _read(self, key: str) -> bytes | None:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
        except Exception as exc:
            if self._absent(exc):
                return None
            raise
        return resp["Body"].read()

    def has(self, key: str) -> bool:
        return self.mtime(key) is not None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def list(self) -> Iterator[tuple[str, float, int]]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix):  # fmt: skip
            for obj in page.get("Contents", []):
                key = obj["Key"][len(prefix):].rpartition("/")[2]
                if len(key) == 64:
                    yield key, obj["LastModified"].timestamp(), int(obj["Size"])

    def mtime(self, key: str) -> float | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except Exception as exc:
            if self._absent(exc):
                return None
            raise
        return float(head["LastModified"].timestamp())


def _s3_factory(url: str) -> BlobStore:
    parsed = urlparse(url)
    if not parsed.netloc:
        raise ValueError(f"S3 blob URL must be s3://bucket[/prefix], got {url!r}")
    opts = dict(parse_qsl(parsed.query))
    return S3BlobStore(parsed.netloc, parsed.path, endpoint_url=opts.get("endpoint"),
                       region=opts.get("region"))


def _file_factory(url: str) -> BlobStore:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"file blob URL must be file:///absolute/path, got {url!r}")
    return FileBlobStore(unquote(parsed.path))


BACKENDS: dict[str, Callable[[str], BlobStore]] = {"file": _file_factory, "s3": _s3_factory}


def open_blobs(url: str | os.PathLike[str]) -> BlobStore:
    """Open a blob store from a URL (`file:///dir`, `s3://bucket/prefix`) or a directory."""
    url = os.fspath(url)
    scheme = urlparse(url).scheme
    if scheme in ("", "file") and not url.startswith("file:"):
        return FileBlobStore(url)
    factory = BACKENDS.get(scheme)
    if factory is None:
        raise ValueError(
            f"no blob store backend for {scheme!r} URLs (have: {', '.join(sorted(BACKENDS))})")
    return factory(url)
