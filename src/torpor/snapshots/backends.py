"""Object backends under the snapshot store: a local directory and S3-compatible storage.

A backend is a flat key -> bytes map with atomic whole-object writes, ranged reads,
listing by prefix (with modification times) and deletes. It counts its requests and
bytes so that tests and benchmarks can show what a read really fetched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torpor.files import write_atomic

from .errors import ObjectMissing, SnapshotError

log = logging.getLogger(__name__)


@dataclass
class Counters:
    """Integer counters updated from several threads; subclasses declare the fields."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def reset(self) -> None:
        with self._lock:
            for f in fields(self):
                if f.name != "_lock":
                    setattr(self, f.name, 0)


@dataclass
class BackendStats(Counters):
    """Request and byte counters of one backend."""

    gets: int = 0
    range_gets: int = 0
    puts: int = 0
    lists: int = 0
    deletes: int = 0
    heads: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    @property
    def requests(self) -> int:
        return self.gets + self.range_gets + self.puts + self.lists + self.deletes + self.heads

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in (
            "gets", "range_gets", "puts", "lists", "deletes", "heads",
            "bytes_read", "bytes_written")} | {"requests": self.requests}


class Backend:
    """Interface of an object backend. Keys use '/' as separator."""

    url: str
    remote: bool = False

    def __init__(self) -> None:
        self.stats = BackendStats()

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str, start_after: str | None = None
             ) -> Iterator[tuple[str, float, int]]:
        """Yield (key, modification time as epoch seconds, size) for keys under prefix
        (only those sorting after `start_after`, if given; in no particular order)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def delete_many(self, keys: list[str]) -> None:
        """Delete keys (missing ones are no error); an error leaves some undeleted."""
        for key in keys:
            self.delete(key)


class FileBackend(Backend):
    """Objects as files under a root directory; writes go to a temp file then rename."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = "file://" + str(self.root.resolve())

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad object key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        # The directory is synced too: a snapshot's info document (its commit point) must
        # not be there after a power cut while a pack it needs is not (they live in
        # different directories), nor vanish once put() has returned.
        write_atomic(self._path(key), data, sync_dir=True)
        self.stats.add(puts=1, bytes_written=len(data))

    def get(self, key: str) -> bytes:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        self.stats.add(gets=1, bytes_read=len(data))
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as fh:
                data = os.pread(fh.fileno(), length, offset)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        self.stats.add(range_gets=1, bytes_read=len(data))
        return data

    def exists(self, key: str) -> bool:
        self.stats.add(heads=1)
        return self._path(key).is_file()

    def list(self, prefix: str, start_after: str | None = None
             ) -> Iterator[tuple[str, float, int]]:
        self.stats.add(lists=1)
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.is_dir():
            return
        root = str(self.root)
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if start_after is not None and key <= start_after:
                    continue  # before the stat: a listing of the newest few stays cheap
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                yield key, st.st_mtime, st.st_size

    def delete(self, key: str) -> None:
        self.stats.add(deletes=1)
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


class S3Backend(Backend):
    """Objects in an S3 bucket under a prefix, through boto3.

    Endpoint, region and credentials come from the options, else from the usual
    AWS_* environment variables (AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE).
    """

    remote = True

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, session_token: str | None = None,
                 max_pool: int = 16) -> None:
        super().__init__()
        import boto3
        from botocore.config import Config
        from botocore.exceptions import ClientError

        # botocore is imported here, as boto3: only an S3 store loads them
        self._client_error: type[Exception] = ClientError
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL")
        region = region or os.environ.get("AWS_REGION") or os.environ.get(
            "AWS_DEFAULT_REGION") or "us-east-1"
        kwargs: dict[str, Any] = {"region_name": region}
        if endpoint_url:
            kwargs["endpoint_url"] = endpoint_url
        if access_key:
            kwargs["aws_access_key_id"] = access_key
            kwargs["aws_secret_access_key"] = secret_key
            if session_token:
                kwargs["aws_session_token"] = session_token
        cfg = Config(max_pool_connections=max_pool, retries={"max_attempts": 5, "mode": "standard"},
                     s3={"addressing_style": "path"} if endpoint_url else {})
        self.client = boto3.session.Session().client("s3", config=cfg, **kwargs)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _code(exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def _missing(self, exc: Exception) -> bool:
        return self._code(exc) in ("NoSuchKey", "404", "NotFound")

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        self.stats.add(puts=1, bytes_written=len(data))

    def get(self, key: str) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self._client_error as exc:
            if self._missing(exc):
                raise ObjectMissing(key) from None
            raise
        data = resp["Body"].read()
        self.stats.add(gets=1, bytes_read=len(data))
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                          Range=f"bytes={offset}-{offset + length - 1}")
        except self._client_error as exc:
            if self._missing(exc):
                raise ObjectMissing(key) from None
            if self._code(exc) == "InvalidRange":  # the range starts past the object's end
                log.debug("ranged read of %s at %d past its end", key, offset)
                return b""
            raise
        data = resp["Body"].read()
        self.stats.add(range_gets=1, bytes_read=len(data))
        return data

    def exists(self, key: str) -> bool:
        self.stats.add(heads=1)
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except self._client_error as exc:
            if self._missing(exc):
                return False
            raise

    def list(self, prefix: str, start_after: str | None = None
             ) -> Iterator[tuple[str, float, int]]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        more = {"StartAfter": self._key(start_after)} if start_after is not None else {}
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full, **more):
            self.stats.add(lists=1)
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:], obj["LastModified"].timestamp(), obj["Size"]

    def delete(self, key: str) -> None:
        self.stats.add(deletes=1)
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_many(self, keys: list[str]) -> None:
        """DeleteObjects, 1,000 keys a request (one round trip instead of 1,000)."""
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            self.stats.add(deletes=len(batch))
            resp = self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True})
            if resp.get("Errors"):
                err = resp["Errors"][0]
                raise SnapshotError(f"could not delete {len(resp['Errors'])} of {len(batch)} "
                                    f"objects, e.g. {err.get('Key')}: {err.get('Message')}")


def new_object_id() -> str:
    """A unique, roughly time-ordered id for packs and markers."""
    return f"{int(time.time() * 1000):012x}{uuid.uuid4().hex[:20]}"


def parse_s3_url(url: str) -> tuple[str, str, dict[str, str]]:
    """Split s3://bucket/prefix?endpoint=...&region=... into bucket, prefix, options."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise SnapshotError(f"not an s3:// url: {url!r}")
    return parts.netloc, parts.path.strip("/"), dict(parse_qsl(parts.query))
