"""Where sandbox checkpoints are kept: a small put/get/list/delete interface by id.

A checkpoint is a directory of files written by the engine (for gVisor: checkpoint.img,
pages.img, pages_meta.img) plus JSON metadata. `LocalCheckpointStorage` keeps them in a
directory, each file with its SHA-256 so that a truncated or altered file is caught before
the engine is asked to restore it. The snapshot store (torpor.snapshots) replaces it with
content-addressed, compressed, deduplicated storage behind the same interface.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from torpor.files import fsync_dir, sweep, writer_tag
from torpor.sandbox.engine import CheckpointError

log = logging.getLogger(__name__)


class CheckpointNotFound(CheckpointError):
    pass


class CheckpointCorrupt(CheckpointError):
    pass


class CheckpointOutdated(CheckpointError):
    """A checkpoint in a format an older development build of torpor wrote, which this
    one cannot check or restore."""


class CheckpointStorage(Protocol):
    def put(self, ckpt_id: str, src_dir: Path, meta: dict[str, Any]) -> int:
        """Store the files of src_dir under ckpt_id (consuming src_dir); returns bytes stored."""

    def open_dir(self, ckpt_id: str) -> tuple[Path, bool]:
        """A verified local directory holding the checkpoint's files, and whether it is a
        temporary copy the caller must delete."""

    def meta(self, ckpt_id: str) -> dict[str, Any]: ...

    def list(self) -> list[dict[str, Any]]: ...

    def delete(self, ckpt_id: str) -> None: ...

    def staging_dir(self) -> Path:
        """An empty directory on the store's filesystem for the engine to write into."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()



class LocalCheckpointStorage:
    """Checkpoints as plain directories: ROOT/ID/{files..., meta.json}.

    A checkpoint becomes visible only once its directory is renamed into place, after its
    files and metadata are synced, so a crash mid-put leaves nothing half-made: only a
    directory in .staging, removed when the storage is next opened (once its writer is
    gone: a checkpoint runsc is still writing is left alone).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".staging").mkdir(exist_ok=True)
        sweep(self.root / ".staging", "")

    def staging_dir(self) -> Path:
        d = self.root / ".staging" / f"{writer_tag()}{uuid.uuid4().hex}"
        d.mkdir()
        return d

    def _dir(self, ckpt_id: str) -> Path:
        if not ckpt_id or "/" in ckpt_id or ckpt_id.startswith("."):
            raise CheckpointNotFound(f"no such checkpoint: {ckpt_id!r}")
        return self.root / ckpt_id

    def put(self, ckpt_id: str, src_dir: Path, meta: dict[str, Any]) -> int:
        final = self._dir(ckpt_id)
        if final.exists():
            raise CheckpointError(f"checkpoint {ckpt_id} already exists")
        files = {}
        size = 0
        for f in sorted(src_dir.iterdir()):
            if not f.is_file():
                continue
            files[f.name] = {"size": f.stat().st_size, "sha256": _sha256(f)}
            size += files[f.name]["size"]
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        if "checkpoint.img" not in files:
            raise CheckpointError("engine wrote no checkpoint.img")
        meta = dict(meta, id=ckpt_id, size=size, files=files)
        with open(src_dir / "meta.json", "w") as fh:
            json.dump(meta, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if src_dir.parent != self.root / ".staging":
            staged = self.staging_dir()
            staged.rmdir()
            shutil.move(src_dir, staged)
            src_dir = staged
        os.rename(src_dir, final)
        fsync_dir(self.root)
        return size

    def meta(self, ckpt_id: str) -> dict[str, Any]:
        path = self._dir(ckpt_id) / "meta.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointNotFound(f"no such checkpoint: {ckpt_id}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointCorrupt(f"checkpoint {ckpt_id}: metadata is unreadable") from None

    def open_dir(self, ckpt_id: str) -> tuple[Path, bool]:
        meta = self.meta(ckpt_id)
        d = self._dir(ckpt_id)
        if not meta.get("files"):  # every put records them
            raise CheckpointCorrupt(f"checkpoint {ckpt_id}: its metadata lists no files")
        for name, want in meta["files"].items():
            f = d / name
            if not f.is_file():
                raise CheckpointCorrupt(f"checkpoint {ckpt_id}: file {name} is missing")
            got_size = f.stat().st_size
            if got_size != want["size"]:
                raise CheckpointCorrupt(
                    f"checkpoint {ckpt_id}: {name} is {got_size} bytes, expected "
                    f"{want['size']} (truncated?)"
                )
            if _sha256(f) != want["sha256"]:
                raise CheckpointCorrupt(f"checkpoint {ckpt_id}: {name} fails its checksum")
        return d, False

    def list(self) -> list[dict[str, Any]]:
        out = []
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            try:
                out.append(self.meta(d.name))
            except CheckpointError as e:  # listed no more; opening it says the same
                log.warning("checkpoint %s left out of the listing: %s", d.name, e)
        out.sort(key=lambda m: m.get("created", ""))
        return out

    def delete(self, ckpt_id: str) -> None:
        d = self._dir(ckpt_id)
        if not d.exists():
            raise CheckpointNotFound(f"no such checkpoint: {ckpt_id}")
        trash = self.root / ".staging" / f"{writer_tag()}rm-{ckpt_id}-{time.time_ns()}"
        os.rename(d, trash)
        shutil.rmtree(trash, ignore_errors=True)
