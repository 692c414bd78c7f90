"""Sandbox checkpoints kept in the snapshot store.

The sandbox engine only knows a small CheckpointStorage interface and the snapshot store
knows nothing of sandboxes; this adapter is where they meet. A checkpoint goes into the
store (content-addressed, compressed, deduplicated, verified, optionally encrypted), and a
raw copy of recent checkpoints stays in a local hot cache (TORPOR_HOME/checkpoint-cache,
capped, least recently used out first): runsc reads the whole pages file at restore, so
restoring from a raw local copy skips decompressing the whole snapshot on the critical
path. A hot copy is checked against the SHA-256 recorded at checkpoint time before use; a
damaged or missing one is replaced from the store.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from torpor.sandbox.checkpoints import CheckpointCorrupt, CheckpointNotFound
from torpor.sandbox.engine import CheckpointError
from torpor.snapshots import (
    SnapshotCorrupt,
    SnapshotError,
    SnapshotInfo,
    SnapshotNotFound,
    SnapshotStore,
)

KIND = "sandbox-checkpoint"
DEFAULT_HOT_BYTES = 2 << 30


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class SnapshotCheckpointStorage:
    def __init__(
        self, store: SnapshotStore, home: Path, *, hot_bytes: int = DEFAULT_HOT_BYTES
    ) -> None:
        self.store = store
        self.hot = home / "checkpoint-cache"
        self.hot_bytes = hot_bytes
        (self.hot / ".staging").mkdir(parents=True, exist_ok=True)

    # -- CheckpointStorage ---------------------------------------------------------------

    def staging_dir(self) -> Path:
        d = self.hot / ".staging" / uuid.uuid4().hex
        d.mkdir()
        return d

    def put(self, ckpt_id: str, src_dir: Path, meta: dict[str, Any]) -> int:
        files = {
            f.name: {"size": f.stat().st_size, "sha256": _sha256(f)}
            for f in sorted(src_dir.iterdir())
            if f.is_file()
        }
        if "checkpoint.img" not in files:
            raise CheckpointError("engine wrote no checkpoint.img")
        try:
            info = self.store.put(
                src_dir,
                meta=dict(meta, kind=KIND, files=files),
                engine=meta.get("engine"),
                engine_version=meta.get("engine_version"),
                image_digest=meta.get("image_digest"),
                snapshot_id=ckpt_id,
            )
        except SnapshotError as e:
            shutil.rmtree(src_dir, ignore_errors=True)
            raise CheckpointError(f"storing checkpoint {ckpt_id} failed: {e}") from None
        if self.hot_bytes > 0:
            os.rename(src_dir, self.hot / ckpt_id)
            self._evict(keep=ckpt_id)
        else:
            shutil.rmtree(src_dir, ignore_errors=True)
        return info.new_bytes

    def meta(self, ckpt_id: str) -> dict[str, Any]:
        try:
            return self._to_meta(self.store.info(ckpt_id))
        except SnapshotNotFound:
            raise CheckpointNotFound(f"no such checkpoint: {ckpt_id}") from None
        except SnapshotError as e:
            raise CheckpointCorrupt(f"checkpoint {ckpt_id}: {e}") from None

    def list(self) -> list[dict[str, Any]]:
        return [self._to_meta(i) for i in self.store.list(kind=KIND)]

    def delete(self, ckpt_id: str) -> None:
        try:
            self.store.delete(ckpt_id)
        except SnapshotNotFound:
            raise CheckpointNotFound(f"no such checkpoint: {ckpt_id}") from None
        shutil.rmtree(self.hot / ckpt_id, ignore_errors=True)

    def open_dir(self, ckpt_id: str) -> tuple[Path, bool]:
        meta = self.meta(ckpt_id)
        want: dict[str, dict[str, Any]] = meta.get("files", {})
        hot = self.hot / ckpt_id
        if hot.is_dir():
            if self._intact(hot, want):
                os.utime(hot)  # most recently used
                return hot, False
            shutil.rmtree(hot, ignore_errors=True)  # damaged: fetch it again
        tmp = self.staging_dir()
        try:
            self.store.get(ckpt_id, tmp)
        except SnapshotNotFound:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointNotFound(f"no such checkpoint: {ckpt_id}") from None
        except SnapshotCorrupt as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointCorrupt(f"checkpoint {ckpt_id} is corrupt: {e}") from None
        except SnapshotError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"checkpoint {ckpt_id}: {e}") from None
        if not self._intact(tmp, want):
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointCorrupt(f"checkpoint {ckpt_id}: files differ from the recorded ones")
        if self.hot_bytes > 0 and not hot.exists():
            os.rename(tmp, hot)
            self._evict(keep=ckpt_id)
            return hot, False
        return tmp, True

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _intact(d: Path, want: dict[str, dict[str, Any]]) -> bool:
        for name, w in want.items():
            f = d / name
            try:
                if f.stat().st_size != w["size"] or _sha256(f) != w["sha256"]:
                    return False
            except OSError:
                return False
        return True

    @staticmethod
    def _to_meta(info: SnapshotInfo) -> dict[str, Any]:
        m = dict(info.meta)
        m.update(
            id=info.id,
            size=info.logical_size,
            stored_bytes=info.stored_bytes,
            new_bytes=info.new_bytes,
            shared_bytes=info.shared_bytes,
        )
        return m

    def _evict(self, keep: str) -> None:
        entries = []
        total = 0
        for d in self.hot.iterdir():
            if d.name.startswith(".") or not d.is_dir():
                continue
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            total += size
            entries.append((d.stat().st_mtime, d, size))
        for _mtime, d, size in sorted(entries):
            if total <= self.hot_bytes:
                break
            if d.name == keep:
                continue
            shutil.rmtree(d, ignore_errors=True)
            total -= size
