"""Durable file writes shared by the stores: a file appears whole or not at all; and the
sweep of what writers that crashed left behind."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"  # write_atomic's temporary files, and the tagged names below
LEFTOVER_AGE = 60.0  # seconds after which an untagged temporary name is a leftover


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, sync_dir: bool = False) -> None:
    """Write data to a temporary file next to `path`, fsync it and rename it into place
    (and, with sync_dir, fsync the directory so the rename itself survives a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def syncfs(path: Path) -> None:
    """Flush everything written to the filesystem that holds `path` (a whole tree just
    unpacked, say) to its disk: syncfs(2), one call instead of an fsync per file.
    Python's os module has no syncfs (os.sync flushes every filesystem), hence ctypes;
    where libc lacks it, os.sync."""
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "syncfs"):
            os.sync()
        elif libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- leftovers

_TAG_RE = re.compile(r"(\d+)-([0-9a-f]{8})-([0-9a-f]{8})-")


@functools.cache
def _machine() -> tuple[str, str]:
    """(this boot, this host), 8 hex digits each."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    except OSError:
        boot = "0" * 8
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()
    return boot[:8], host[:8]


def writer_tag() -> str:
    """'PID-BOOT-HOST-': what the name of a temporary file or directory that lives longer
    than a moment (a checkpoint being written, an image being unpacked) starts with,
    after its prefix, so that `sweep` can tell whether its writer still runs: this
    process, this boot of this machine (a TORPOR_HOME on shared storage holds other
    machines' too)."""
    boot, host = _machine()
    return f"{os.getpid()}-{boot}-{host}-"


def _writer_gone(pid: int, boot: str, host: str) -> bool | None:
    """Whether the writer a tag names is gone; None if it is another machine's."""
    this_boot, this_host = _machine()
    if host != this_host:
        return None
    if boot != this_boot:
        return True  # no process outlives a reboot
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_leftover(path: Path, prefix: str = TMP_PREFIX, *,
                min_age: float = LEFTOVER_AGE) -> bool:  # fmt: skip
    """Whether `path`, a temporary file or tree whose name starts with `prefix`, was left
    by a writer that crashed: if its name goes on with a writer's tag (`writer_tag`),
    once that writer is gone (or the machine rebooted since); else once it is older
    than `min_age` seconds (such writers, write_atomic's, take milliseconds). A writer at
    work never has its file taken for one."""
    if not path.name.startswith(prefix):
        return False
    m = _TAG_RE.match(path.name, len(prefix))
    if m is not None:
        return bool(_writer_gone(int(m.group(1)), m.group(2), m.group(3)))
    try:
        return time.time() - path.lstat().st_mtime > min_age
    except FileNotFoundError:
        return False


def sweep(directory: Path, prefix: str = TMP_PREFIX, *,
          min_age: float = LEFTOVER_AGE) -> list[str]:  # fmt: skip
    """Remove the leftovers (`is_leftover`) among the entries of `directory` whose name
    starts with `prefix`, files or trees. Returns the names removed."""
    removed: list[str] = []
    try:
        entries = sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for path in entries:
        if not is_leftover(path, prefix, min_age=min_age):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # removed by someone else meanwhile
        except OSError as e:
            log.warning("cannot remove %s, left by a writer that crashed: %s", path, e)
            continue
        log.info("removed %s, left by a writer that crashed", path)
        removed.append(path.name)
    return removed
