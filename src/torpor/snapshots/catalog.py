"""The store's catalog of snapshots: snapshot ids, their info documents and manifests
(read through the chunk cache of a remote store), listing, and the codec that reads
each snapshot.

An info document is the commit point of a snapshot (manifest.py); a cached copy is
checked against the store (does it still exist?) unless the caller says not to, and a
cached copy torn by a crash is dropped and read again. Loaded manifests are kept (the
last 16) so that the chunk fetcher can look up which packs held a snapshot's chunks.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from .codec import Codec
from .errors import ObjectMissing, SnapshotCorrupt, SnapshotKeyError, SnapshotNotFound
from .manifest import (
    WELL_KNOWN,
    FileTable,
    Manifest,
    SnapshotInfo,
    decode_table,
    info_key,
    table_key,
    unseal,
)
from .parts import StoreParts

log = logging.getLogger(__name__)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
KEEP_MANIFESTS = 16


def check_id(snapshot_id: str) -> None:
    """Raise SnapshotNotFound for a string that cannot be a snapshot id (e.g. a path)."""
    if not isinstance(snapshot_id, str) or not ID_RE.match(snapshot_id):
        raise SnapshotNotFound(str(snapshot_id))


def new_snapshot_id() -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{stamp}-{os.urandom(4).hex()}"


class Catalog:
    """Info documents and manifests of the snapshots of one store."""

    def __init__(self, parts: StoreParts) -> None:
        self.parts = parts
        self._manifests: dict[str, Manifest] = {}

    def info_doc(self, snapshot_id: str, check: bool = True) -> dict[str, Any]:
        """The verified info document of a snapshot. check: a copy in the chunk cache
        is used only if the store still has the snapshot (one HEAD request)."""
        check_id(snapshot_id)
        backend, cache = self.parts.backend, self.parts.cache
        key = info_key(snapshot_id)
        data = None
        if cache is not None and backend.remote:
            data = cache.get_meta(key)
            if data is not None and check and not backend.exists(key):
                cache.discard_meta(key)
                raise SnapshotNotFound(snapshot_id, backend.url)
        if data is None:
            try:
                data = backend.get(key)
            except ObjectMissing:
                raise SnapshotNotFound(snapshot_id, backend.url) from None
            doc = unseal(snapshot_id, data)
            if cache is not None and backend.remote:
                cache.put_meta(key, data)
            return doc
        try:
            return unseal(snapshot_id, data)
        except SnapshotCorrupt as exc:  # a cached copy torn by a crash (not fsynced)
            log.warning("cached info document of %s is damaged (%s): reading it again",
                        snapshot_id, exc)
            assert cache is not None
            cache.discard_meta(key)
            return self.info_doc(snapshot_id, check=False)

    def manifest(self, snapshot_id: str, check: bool = True, keep: bool = True) -> Manifest:
        """The verified info document and seek table of a snapshot. keep: remember it
        among the last loaded (not thread-safe: gc, reading every manifest from several
        threads, does not)."""
        doc = self.info_doc(snapshot_id, check)
        backend, cache = self.parts.backend, self.parts.cache
        tkey = table_key(snapshot_id)
        tdata = cache.get_meta(tkey) if cache is not None else None
        if tdata is None:
            try:
                tdata = backend.get(tkey)
            except ObjectMissing:
                raise SnapshotCorrupt("seek table is missing", snapshot_id) from None
            if cache is not None and backend.remote:
                cache.put_meta(tkey, tdata)
        try:
            files, packs = decode_table(snapshot_id, tdata, doc["table"])
        except SnapshotCorrupt:
            if cache is not None:
                cache.discard_meta(tkey)
            raise
        manifest = Manifest(doc, [FileTable(f["name"], f["size"], f["chunks"]) for f in files],
                            packs)
        if not keep:
            return manifest
        if len(self._manifests) > KEEP_MANIFESTS:
            self._manifests.pop(next(iter(self._manifests)))
        self._manifests[snapshot_id] = manifest
        return manifest

    def cached(self, snapshot_id: str) -> Manifest | None:
        """The manifest of a snapshot if it was loaded lately (no I/O)."""
        return self._manifests.get(snapshot_id)

    def codec_for(self, manifest: Manifest) -> Codec:
        """The codec that reads a snapshot: the store's, or none for one stored
        unencrypted; SnapshotKeyError if the snapshot needs a key the store lacks."""
        codec = self.parts.codec
        kid = manifest.key_id
        if kid is None:
            return Codec(None, codec.level)
        if codec.key_id is None:
            raise SnapshotKeyError(
                f"snapshot {manifest.id} is encrypted (key id {kid}) and no key is configured "
                "(set TORPOR_SNAPSHOT_KEY or TORPOR_SNAPSHOT_KEY_FILE)")
        if kid != codec.key_id:
            raise SnapshotKeyError(
                f"snapshot {manifest.id} was encrypted with key id {kid}, "
                f"but the configured key has id {codec.key_id}")
        return codec

    def info(self, snapshot_id: str) -> SnapshotInfo:
        return SnapshotInfo.from_doc(self.info_doc(snapshot_id))

    def exists(self, snapshot_id: str) -> bool:
        try:
            check_id(snapshot_id)
        except SnapshotNotFound:
            return False
        return self.parts.backend.exists(info_key(snapshot_id))

    def ids(self) -> list[str]:
        out = []
        for key, _mtime, _size in self.parts.backend.list("snapshots/"):
            if key.endswith(".json"):
                out.append(key[len("snapshots/"):-len(".json")])
        return sorted(out)

    def list(self, want: dict[str, Any]) -> list[SnapshotInfo]:
        """Snapshots, oldest first, whose meta (or engine/parent/...) match every filter."""
        out = []
        for sid in self.ids():
            try:
                doc = self.info_doc(sid, check=False)
            except SnapshotNotFound:
                continue  # deleted since the listing
            info = SnapshotInfo.from_doc(doc)
            ok = True
            for k, v in want.items():
                have = info.meta.get(k, doc.get(k) if k in WELL_KNOWN else None)
                if have != v and str(have) != str(v):
                    ok = False
                    break
            if ok:
                out.append(info)
        out.sort(key=lambda i: (i.created, i.id))
        return out
