"""Sandbox checkpoints kept in the snapshot store, with a local hot copy and background upload.

The sandbox engine only knows a small CheckpointStorage interface and the snapshot store
knows nothing of sandboxes; this adapter is where they meet.

- **Hot copy.** A checkpoint's raw files stay in TORPOR_HOME/checkpoint-cache (capped,
  least recently used out first). runsc reads the whole pages file at restore, so
  restoring from a raw local copy skips decompressing the snapshot on the critical path.
  Each file's size and XXH3-128 digest are recorded at the wait point, before it is
  acknowledged (hashed from a memory map: 3 ms for a 52 MB checkpoint; it catches
  truncation and corruption, not tampering: the store's content hashes remain the
  authority). The files are not fsynced (that would cost every wait point ~100 ms):
  every restore and the upload check them against the digests, and a damaged copy is
  dropped (a stored one is fetched again from the store).
- **Background upload.** `put` returns once the raw files are in the hot cache and
  queues the upload into the snapshot store (compressed, deduplicated, verified,
  optionally encrypted), so a wait point does not wait for compression. The upload is
  resumed by the next process that opens the cache if this one dies first, and
  `flush()` (also run at exit) waits for it. Until it is stored, a checkpoint exists on
  this machine only: a machine lost in that window, or a power cut that tears the
  copy, loses that snapshot, and the runtime falls back to the previous one, which is
  kept until a newer one is stored (the log is never lost).
- **Listeners.** `listeners` are called (checkpoint id, its metadata, its new bytes) on
  the uploading thread when an upload stores a checkpoint, so that the runtime counts
  them for their tenant's quota at once (runtime/quotas.note_stored); one that fails is
  logged, never stops the upload.
- **Fetching.** A checkpoint with no hot copy here is fetched from the store into the
  hot cache, with this machine's older hot copies of the same sandbox as seeds (the
  chunks they share are copied, only the changed pages fetched), and without an fsync
  (the digests are checked at each use). `prefetch` does the same ahead of a restore,
  for the machine that follows a session (runtime/prefetch.py).
- **Deleted elsewhere.** A stored hot copy whose snapshot left the store (retention or
  the scheduled gc deleted it, on any machine) is dropped by `drop_deleted`, which the
  runtime runs on every machine on the gc's schedule, instead of taking cache space
  until LRU eviction; one used in the last `grace` seconds is left for the next run.
- **Leftovers.** A checkpoint or a fetch is written in the cache's .staging area under
  a name that says which process writes it; what a crashed process left there is
  removed when the next storage is opened (torpor.files.sweep), never what a live one
  is still writing.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import mmap
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from torpor.files import sweep, writer_tag
from torpor.sandbox.checkpoints import CheckpointCorrupt, CheckpointNotFound, CheckpointOutdated
from torpor.sandbox.engine import CheckpointError
from torpor.snapshots import (
    SnapshotCorrupt,
    SnapshotError,
    SnapshotInfo,
    SnapshotNotFound,
    SnapshotStore,
)

log = logging.getLogger(__name__)

KIND = "sandbox-checkpoint"
DEFAULT_HOT_BYTES = 2 << 30
META = ".torpor-meta.json"  # in a hot copy: the checkpoint's metadata (pending upload)
STORED = ".stored"  # in a hot copy: it is in the snapshot store
UPLOAD_RETRIES = (1.0, 5.0, 20.0)  # pauses before an upload that failed is tried again
DROP_GRACE = 600.0  # a hot copy used this recently is not dropped by drop_deleted
SEEDS = 1  # older hot copies of the same sandbox a fetch copies shared chunks from


def _mapped(path: Path, digest: Callable[[Any], Any]) -> Any:
    """digest(the file's bytes), read through a memory map (no copies through Python).
    Hot copies are written once and renamed into place, never changed in place; the
    callers compare sizes first, so a truncated file is caught before it is mapped."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return digest(b"")
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            return digest(m)


def _xxh3(path: Path) -> str:
    return str(_mapped(path, xxhash.xxh3_128_hexdigest))


def _describe(d: Path) -> dict[str, dict[str, Any]]:
    return {
        f.name: {"size": f.stat().st_size, "xxh3": _xxh3(f)}
        for f in sorted(d.iterdir())
        if f.is_file() and not f.name.startswith(".")
    }


def _check_format(ckpt_id: str, files: Any) -> dict[str, dict[str, Any]]:
    """The checkpoint's recorded files, each with its size and XXH3 digest (what every
    `put` records); CheckpointOutdated for one whose metadata an older development build
    wrote (CRC-32 digests, or none), which this version cannot check before a restore."""
    if isinstance(files, dict) and files and all(
        isinstance(f, dict) and "xxh3" in f and "size" in f for f in files.values()
    ):
        return files
    raise CheckpointOutdated(
        f"checkpoint {ckpt_id} was made by an older development build of torpor (its "
        "files have no XXH3 digests to check them by); this version cannot restore it: "
        "remove it and take a new one"
    )


class SnapshotCheckpointStorage:
    def __init__(
        self,
        store: SnapshotStore,
        home: Path,
        *,
        hot_bytes: int = DEFAULT_HOT_BYTES,
        background: bool = True,
    ) -> None:
        self.store = store
        self.hot = home / "checkpoint-cache"
        self.hot_bytes = hot_bytes
        self.background = background
        (self.hot / ".staging").mkdir(parents=True, exist_ok=True)
        # Checkpoints and fetches a crashed process left half-written (never one a live
        # process is still writing: see torpor.files.sweep)
        sweep(self.hot / ".staging", "")
        self._queue: queue.Queue[str] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._errors: dict[str, str] = {}
        self._fetching: dict[str, threading.Lock] = {}  # checkpoint -> its fetch's lock
        self._thread: threading.Thread | None = None
        # called as each upload stores a checkpoint: (id, metadata, new bytes)
        self.listeners: list[Callable[[str, dict[str, Any], int], None]] = []
        if background:
            atexit.register(self.flush)
            for d in sorted(self.hot.iterdir()):  # uploads an earlier process left undone
                if (d / META).exists() and not (d / STORED).exists():
                    self._enqueue(d.name)

    # -- uploads -------------------------------------------------------------------------

    def _enqueue(self, ckpt_id: str) -> None:
        with self._lock:
            self._pending.add(ckpt_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._uploader, name="torpor-upload", daemon=True
                )
                self._thread.start()
        self._queue.put(ckpt_id)

    def _uploader(self) -> None:
        while True:
            try:
                ckpt_id = self._queue.get(timeout=5)
            except queue.Empty:
                with self._lock:
                    if not self._pending:
                        self._thread = None
                        return
                continue
            try:
                for attempt, pause in enumerate((*UPLOAD_RETRIES, None)):
                    try:
                        self._upload(ckpt_id)
                        self._errors.pop(ckpt_id, None)
                        break
                    except (CheckpointCorrupt, CheckpointOutdated) as e:  # trying again is futile
                        self._errors[ckpt_id] = str(e)
                        log.warning("checkpoint %s not uploaded: %s", ckpt_id, e)
                        break
                    except Exception as e:  # noqa: BLE001 - kept for flush() and the next process
                        self._errors[ckpt_id] = str(e)
                        more = f"; trying again in {pause:g} s" if pause is not None else ""
                        log.warning("uploading checkpoint %s failed (attempt %d): %s%s",
                                    ckpt_id, attempt + 1, e, more)  # fmt: skip
                        if pause is None:
                            break
                        time.sleep(pause)
            finally:
                with self._lock:
                    self._pending.discard(ckpt_id)
                    self._idle.notify_all()

    def _upload(self, ckpt_id: str) -> SnapshotInfo | None:
        d = self.hot / ckpt_id
        try:
            meta = json.loads((d / META).read_text())
        except FileNotFoundError:
            return None  # deleted meanwhile
        except ValueError:  # torn by a power cut: nothing to trust, and no other copy
            shutil.rmtree(d, ignore_errors=True)
            raise CheckpointCorrupt(f"checkpoint {ckpt_id}: its hot copy's metadata is "
                                    "damaged (torn by a crash?); dropped, never stored") from None
        # The files must be those the wait point recorded (sizes and XXH3 digests, taken
        # before the wait point was acknowledged): a copy torn by a power cut (its data
        # is never fsynced) is dropped, not stored as the truth. One of an older build's
        # format is left where it is (CheckpointOutdated says what to do).
        if not self._intact(d, _check_format(ckpt_id, meta.get("files"))):
            shutil.rmtree(d, ignore_errors=True)
            raise CheckpointCorrupt(f"checkpoint {ckpt_id}: its hot copy differs from what its "
                                    "wait point recorded (torn by a crash?); dropped, never "
                                    "stored")  # fmt: skip
        if self.store.exists(ckpt_id):
            info = self.store.info(ckpt_id)
        else:
            info = self.store.put(
                d,
                meta=meta,
                engine=meta.get("engine"),
                engine_version=meta.get("engine_version"),
                image_digest=meta.get("image_digest"),
                parent=meta.get("parent"),  # pages that changed since: stored as deltas
                snapshot_id=ckpt_id,
            )
            self._tell(ckpt_id, meta, info.new_bytes)
        (d / STORED).write_text(json.dumps({"new_bytes": info.new_bytes, "at": time.time()}))
        return info

    def _tell(self, ckpt_id: str, meta: dict[str, Any], new_bytes: int) -> None:
        for listener in list(self.listeners):
            try:
                listener(ckpt_id, meta, new_bytes)
            except Exception as e:  # noqa: BLE001 - a listener's trouble is not the upload's
                log.warning("checkpoint %s stored; telling %r failed: %s", ckpt_id,
                            listener, e)  # fmt: skip

    def has_hot_copy(self, ckpt_id: str) -> bool:
        """Is the checkpoint's raw copy on this machine (a restore then fetches nothing)?"""
        return bool(ckpt_id) and "/" not in ckpt_id and (self.hot / ckpt_id / META).exists()

    def stored(self, ckpt_id: str) -> bool:
        """Is the checkpoint in the snapshot store (its upload done)?"""
        if ckpt_id and "/" not in ckpt_id and (self.hot / ckpt_id / STORED).exists():
            return True
        try:
            return self.store.exists(ckpt_id)
        except SnapshotError as e:  # unreachable or unreadable: not known to be stored
            log.debug("cannot tell whether checkpoint %s is stored: %s", ckpt_id, e)
            return False

    def available(self, ckpt_id: str) -> bool:
        """Can this machine restore the checkpoint now: a hot copy here, or it is in the
        snapshot store (its info document is written last: a stored one is whole)?"""
        if self.has_hot_copy(ckpt_id):
            return True
        try:
            return self.store.exists(ckpt_id)
        except SnapshotError as e:
            log.debug("cannot tell whether checkpoint %s is stored: %s", ckpt_id, e)
            return False

    def wait_stored(self, ckpt_id: str, timeout: float | None = None) -> None:
        """Wait until one checkpoint's upload is done; CheckpointError if it failed (the
        hot copy stays, and a later process tries again) or is still running after
        `timeout` seconds. Once this returns, any machine can restore it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while ckpt_id in self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise CheckpointError(f"checkpoint {ckpt_id}: its upload into the "
                                          f"snapshot store still runs after {timeout} s")
                self._idle.wait(left)
        if not self.stored(ckpt_id):
            why = self._errors.get(ckpt_id, "not in the snapshot store")
            raise CheckpointError(f"checkpoint {ckpt_id} was not stored: {why}")

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued upload is done (or failed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise CheckpointError(f"uploads still running: {sorted(self._pending)}")
                self._idle.wait(left)

    # -- CheckpointStorage ---------------------------------------------------------------

    def staging_dir(self) -> Path:
        d = self.hot / ".staging" / f"{writer_tag()}{uuid.uuid4().hex}"
        d.mkdir()
        return d

    def put(self, ckpt_id: str, src_dir: Path, meta: dict[str, Any]) -> int:
        # The digests are taken here, before the wait point is acknowledged (~3 ms for a
        # 34 MiB checkpoint): the files are not fsynced (that would cost the wait point
        # ~100 ms), so after a power cut they may be torn, and the uploader and every
        # restore check them against these. The metadata appears with the directory's
        # rename; a copy without it is none, and one whose metadata a power cut tore is
        # dropped (never uploaded, never restored).
        files = _describe(src_dir)
        if "checkpoint.img" not in files:
            raise CheckpointError("engine wrote no checkpoint.img")
        meta = dict(meta, kind=KIND, files=files, size=sum(f["size"] for f in files.values()))
        (src_dir / META).write_text(json.dumps(meta))  # appears with the rename below
        os.rename(src_dir, self.hot / ckpt_id)
        if self.background:
            self._enqueue(ckpt_id)
            self._evict(keep=ckpt_id)
            return int(meta["size"])
        try:
            info = self._upload(ckpt_id)
        except SnapshotError as e:
            raise CheckpointError(f"storing checkpoint {ckpt_id} failed: {e}") from None
        self._evict(keep=ckpt_id)
        return info.new_bytes if info else 0

    def meta(self, ckpt_id: str) -> dict[str, Any]:
        try:
            return self._to_meta(self.store.info(ckpt_id))
        except SnapshotNotFound:
            pass
        except SnapshotError as e:
            raise CheckpointCorrupt(f"checkpoint {ckpt_id}: {e}") from None
        local = self._local_meta(ckpt_id)
        if local is None:
            raise CheckpointNotFound(f"no such checkpoint: {ckpt_id}")
        return local

    def _local_meta(self, ckpt_id: str) -> dict[str, Any] | None:
        if not ckpt_id or "/" in ckpt_id or ckpt_id.startswith("."):
            return None
        try:
            meta = json.loads((self.hot / ckpt_id / META).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # torn by a crash: no hot copy (see _upload)
            log.debug("hot copy %s has unreadable metadata: %s", ckpt_id, e)
            return None
        return dict(meta, id=ckpt_id, stored=False)

    def list(self) -> list[dict[str, Any]]:
        metas = {i.id: self._to_meta(i) for i in self.store.list(kind=KIND)}
        for d in self.hot.iterdir():
            if d.name not in metas and not d.name.startswith("."):
                local = self._local_meta(d.name)
                if local is not None:
                    metas[d.name] = local
        return sorted(metas.values(), key=lambda m: m.get("created", ""))

    def delete(self, ckpt_id: str) -> None:
        with self._lock:  # an upload in flight would store it again after the delete
            while ckpt_id in self._pending:
                self._idle.wait()
        found = False
        try:
            self.store.delete(ckpt_id)
            found = True
        except SnapshotNotFound:
            pass
        hot = self.hot / ckpt_id
        if not ckpt_id.startswith(".") and "/" not in ckpt_id and hot.exists():
            found = True
            shutil.rmtree(hot, ignore_errors=True)
        if not found:
            raise CheckpointNotFound(f"no such checkpoint: {ckpt_id}")

    def drop_deleted(self, grace: float | None = None,
                     keep: Callable[[str], bool] | None = None) -> list[str]:  # fmt: skip
        """Drop the hot copies of checkpoints that were stored and are in the store no
        more (deleted by retention or gc, maybe on another machine), unused for `grace`
        seconds, and that `keep` does not name (the runtime's: a session or sandbox still
        refers to it, so this copy may be the last one); returns their ids. A copy not
        stored yet (its upload pending: the only one there is) and one the store cannot
        be asked about now stay."""
        grace = DROP_GRACE if grace is None else grace
        now, dropped = time.time(), []
        for d in sorted(self.hot.iterdir()):
            if d.name.startswith(".") or not (d / STORED).exists():
                continue
            try:
                if now - d.stat().st_mtime < grace:
                    continue
                if self.store.exists(d.name) or (keep is not None and keep(d.name)):
                    continue
            except (FileNotFoundError, SnapshotError) as e:  # gone meanwhile; store away
                log.debug("not dropping hot copy %s: %s", d.name, e)
                continue
            with self._lock:
                if d.name in self._pending or d.name in self._fetching:
                    continue
            shutil.rmtree(d, ignore_errors=True)
            dropped.append(d.name)
        if dropped:
            log.info("dropped %d hot cop(ies) of deleted snapshots: %s", len(dropped),
                     ", ".join(dropped))  # fmt: skip
        return dropped

    def prefetch(self, ckpt_id: str) -> bool:
        """Bring a stored checkpoint into the hot cache ahead of a restore (a follower
        machine's, runtime/prefetch.py); False if it is not in the store (yet) or there
        is no hot cache."""
        if self.hot_bytes <= 0:
            return False
        if self.has_hot_copy(ckpt_id):
            return True
        try:
            if not self.store.exists(ckpt_id):
                return False
        except SnapshotError as e:  # the restore itself will say what is wrong
            log.debug("not prefetching checkpoint %s: %s", ckpt_id, e)
            return False
        path, temporary = self.open_dir(ckpt_id)
        if temporary:
            shutil.rmtree(path, ignore_errors=True)
        return not temporary

    def open_dir(self, ckpt_id: str) -> tuple[Path, bool]:
        # One fetch per checkpoint at a time in this process: a restore that comes while
        # a prefetch of the same checkpoint runs waits for it and uses its copy.
        with self._lock:
            lock = self._fetching.setdefault(ckpt_id, threading.Lock())
        with lock:
            try:
                return self._open_dir(ckpt_id)
            finally:
                with self._lock:
                    self._fetching.pop(ckpt_id, None)

    def _open_dir(self, ckpt_id: str) -> tuple[Path, bool]:
        meta = self.meta(ckpt_id)
        want = _check_format(ckpt_id, meta.get("files"))
        hot = self.hot / ckpt_id
        if hot.is_dir():
            if self._intact(hot, want):
                os.utime(hot)  # most recently used
                return hot, False
            if not meta.get("stored", True):
                raise CheckpointCorrupt(
                    f"checkpoint {ckpt_id} is damaged and was never stored elsewhere"
                )
            shutil.rmtree(hot, ignore_errors=True)  # damaged: fetch it again
        tmp = self.staging_dir()
        try:
            # Unsynced: the copy is checked against its digests whenever it is used.
            self.store.get(ckpt_id, tmp, seeds=self._seeds(meta), sync=False)
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
            (tmp / META).write_text(json.dumps({k: v for k, v in meta.items() if k != "stored"}))
            (tmp / STORED).write_text("{}")
            try:
                os.rename(tmp, hot)
            except OSError as e:  # another process on this machine put it there meanwhile
                log.debug("fetched checkpoint %s kept as a temporary copy: %s", ckpt_id, e)
                return tmp, True
            self._evict(keep=ckpt_id)
            return hot, False
        return tmp, True

    # -- helpers -------------------------------------------------------------------------

    def _seeds(self, meta: dict[str, Any], most: int = SEEDS) -> list[tuple[str, Path]]:
        """Stored hot copies of older checkpoints of the same sandbox, newest first and
        checked intact: a fetch copies the chunks they share instead of decoding them."""
        sandbox = meta.get("sandbox")
        if not sandbox:
            return []
        found = []
        for d in self.hot.iterdir():
            if d.name.startswith(".") or d.name == meta.get("id") or not (d / STORED).exists():
                continue
            local = self._local_meta(d.name)
            if local is not None and local.get("sandbox") == sandbox:
                found.append((str(local.get("created", "")), d, local))
        out = []
        for _created, d, local in sorted(found, key=lambda f: f[0], reverse=True):
            if self._intact(d, local.get("files", {})):
                out.append((d.name, d))
                if len(out) == most:
                    break
        return out

    @staticmethod
    def _intact(d: Path, want: dict[str, dict[str, Any]]) -> bool:
        """Are d's files those recorded (sizes, then XXH3 digests)? False for a record
        without them (see `_check_format`)."""
        if not want:
            return False
        for name, w in want.items():
            f = d / name
            try:
                if "xxh3" not in w or f.stat().st_size != w["size"]:
                    return False
                if _xxh3(f) != w["xxh3"]:
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
            stored=True,
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
            # The uploader thread writes its markers by temporary file and rename, and
            # another process may evict the same directory: files come and go meanwhile.
            try:
                size = 0
                for f in d.iterdir():
                    with contextlib.suppress(FileNotFoundError):
                        size += f.stat().st_size if f.is_file() else 0
                mtime = d.stat().st_mtime
            except FileNotFoundError:
                continue
            total += size
            stored = (d / STORED).exists()
            entries.append((mtime, d, size, stored))
        for _mtime, d, size, stored in sorted(entries):
            if total <= self.hot_bytes:
                break
            if d.name == keep or not stored:  # never drop the only copy of a checkpoint
                continue
            shutil.rmtree(d, ignore_errors=True)
            total -= size
