"""Snapshot manifests: the summary document (the commit point) and the seek table.

A snapshot's manifest is two JSON documents:

* ``snapshots/<id>.json`` — id, creation time, engine, engine version, image digest,
  parent, key id, sizes, file list and caller metadata, plus the SHA-256 of the
  seek table and a checksum of itself. It is written last: a snapshot exists once
  (and only once) this object exists.
* ``snapshots/<id>.table.zst`` — zstd-compressed JSON: for each file, the ordered
  chunk list ``[[offset, length, chunk-id-hex], ...]``; a delta chunk's entry has a
  fourth element, the id of its base chunk, so that GC keeps the base alive (a
  snapshot that has delta chunks has format ``torpor-snapshot/2``, which older
  readers refuse with "unknown manifest format"). This is the seek table. It
  also names the packs that held the snapshot's chunks when it was written, so a
  reader loads only those pack indexes (a GC repack since then is found by a full
  index refresh on a miss).
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

import pyzstd

from .errors import SnapshotCorrupt

FORMAT = "torpor-snapshot/1"
FORMAT_DELTA = "torpor-snapshot/2"  # the seek table names delta bases
FORMATS = (FORMAT, FORMAT_DELTA)
WELL_KNOWN = ("engine", "engine_version", "image_digest", "parent")


def info_key(snapshot_id: str) -> str:
    return f"snapshots/{snapshot_id}.json"


def table_key(snapshot_id: str) -> str:
    return f"snapshots/{snapshot_id}.table.zst"


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def seal(doc: dict[str, Any]) -> bytes:
    """Serialise a summary document with its own checksum."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    body["checksum"] = "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()
    return json.dumps(body, sort_keys=True, indent=1).encode()


def unseal(snapshot_id: str, data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
        claimed = doc.pop("checksum")
    except (ValueError, KeyError, AttributeError, TypeError):
        raise SnapshotCorrupt("manifest is not valid JSON with a checksum", snapshot_id) from None
    if claimed != "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest():
        raise SnapshotCorrupt("manifest checksum mismatch", snapshot_id)
    if doc.get("format") not in FORMATS:
        raise SnapshotCorrupt(f"unknown manifest format {doc.get('format')!r}", snapshot_id)
    doc["checksum"] = claimed
    return doc


def encode_table(files: list[dict[str, Any]], packs: list[str]) -> bytes:
    return pyzstd.compress(_canonical({"files": files, "packs": packs}), 3)


def decode_table(snapshot_id: str, data: bytes, digest: str
                 ) -> tuple[list[dict[str, Any]], list[str]]:
    """(files, packs holding the chunks at put time) of a verified seek table."""
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise SnapshotCorrupt("seek table checksum mismatch", snapshot_id)
    try:
        doc = json.loads(pyzstd.decompress(data))
        return doc["files"], doc.get("packs", [])
    except (ValueError, KeyError, pyzstd.ZstdError):
        raise SnapshotCorrupt("seek table does not decode", snapshot_id) from None


@dataclass
class SnapshotInfo:
    """What the store knows about one snapshot (returned by put, info and list)."""

    id: str
    logical_size: int
    stored_bytes: int
    new_bytes: int
    shared_bytes: int
    seconds: float
    created: float
    meta: dict[str, Any] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    engine: str | None = None
    engine_version: str | None = None
    image_digest: str | None = None
    parent: str | None = None
    key_id: str | None = None
    chunk_count: int = 0
    unique_chunks: int = 0
    single_file: bool = False

    @property
    def shared_fraction(self) -> float:
        return self.shared_bytes / self.stored_bytes if self.stored_bytes else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "created": self.created, "logical_size": self.logical_size,
            "stored_bytes": self.stored_bytes, "new_bytes": self.new_bytes,
            "shared_bytes": self.shared_bytes, "seconds": round(self.seconds, 6),
            "engine": self.engine, "engine_version": self.engine_version,
            "image_digest": self.image_digest, "parent": self.parent, "key_id": self.key_id,
            "files": dict(self.files), "chunk_count": self.chunk_count,
            "unique_chunks": self.unique_chunks, "single_file": self.single_file,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> SnapshotInfo:
        return cls(
            id=doc["id"], logical_size=doc["logical_size"], stored_bytes=doc["stored_bytes"],
            new_bytes=doc["new_bytes"], shared_bytes=doc["shared_bytes"],
            seconds=doc["seconds"], created=doc["created"], meta=doc.get("meta", {}),
            files={f["name"]: f["size"] for f in doc["files"]},
            engine=doc.get("engine"), engine_version=doc.get("engine_version"),
            image_digest=doc.get("image_digest"), parent=doc.get("parent"),
            key_id=doc.get("key_id"), chunk_count=doc.get("chunk_count", 0),
            unique_chunks=doc.get("unique_chunks", 0),
            single_file=doc.get("single_file", False),
        )


class FileTable:
    """The seek table of one file: sorted chunk offsets -> (length, chunk id)."""

    def __init__(self, name: str, size: int, chunks: list[list[Any]]) -> None:
        self.name = name
        self.size = size
        self.offsets = [c[0] for c in chunks]
        self.lengths = [c[1] for c in chunks]
        self.ids = [bytes.fromhex(c[2]) for c in chunks]
        # delta chunk id -> its base chunk id, as recorded at put time
        self.bases = {bytes.fromhex(c[2]): bytes.fromhex(c[3]) for c in chunks if len(c) > 3}

    def covering(self, offset: int, length: int) -> range:
        """Indexes of the chunks that cover [offset, offset+length)."""
        if length <= 0 or offset >= self.size or not self.offsets:
            return range(0)
        end = min(offset + length, self.size)
        first = bisect_right(self.offsets, offset) - 1
        last = bisect_right(self.offsets, end - 1) - 1
        return range(max(first, 0), last + 1)


@dataclass
class Manifest:
    """A loaded, verified manifest."""

    doc: dict[str, Any]
    files: list[FileTable]
    packs: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.doc["id"])

    @property
    def key_id(self) -> str | None:
        return self.doc.get("key_id")

    def file(self, name: str | None) -> FileTable:
        if name is None:
            if len(self.files) != 1:
                names = ", ".join(f.name for f in self.files)
                raise ValueError(f"snapshot {self.id} holds several files ({names}); "
                                 "name one")
            return self.files[0]
        for f in self.files:
            if f.name == name:
                return f
        raise FileNotFoundError(f"snapshot {self.id} has no file {name!r}")
