"""The markers of the GC protocol (see store.py's docstring): `locks/put-<n>.json` while
a put runs, `locks/gc-<n>.json` while a gc runs.

A marker is live until it is `stale_after` seconds old, or until its writer, on this
machine, is seen dead (a kill -9 leaves its marker behind); gc deletes stale markers.

`gc/epoch.json` is the gc epoch: a gc writes a new one before it deletes a pack, so
a put that finds it unchanged since its chunk index last listed every pack knows that
each pack the index holds is still there (ChunkIndex.sync).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from .backends import Backend, new_object_id
from .errors import ObjectMissing

log = logging.getLogger(__name__)


EPOCH_KEY = "gc/epoch.json"


def read_epoch(backend: Backend) -> str | None:
    """The gc epoch (None: no gc has deleted a pack from this store yet)."""
    try:
        return backend.get(EPOCH_KEY).decode()
    except ObjectMissing:
        return None


def new_epoch(backend: Backend) -> None:
    """Change the gc epoch: a gc does it before it deletes (or rewrites) any pack."""
    backend.put(EPOCH_KEY, new_object_id().encode())


def write_marker(backend: Backend, kind: str) -> str:
    """Write a marker of a kind ("put" or "gc"); returns its key."""
    key = f"locks/{kind}-{new_object_id()}.json"
    body = {"started": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
    backend.put(key, json.dumps(body).encode())
    return key


def live_markers(backend: Backend, kind: str, stale_after: float) -> list[str]:
    """Keys of live (not stale) markers of a kind."""
    return scan_markers(backend, kind, stale_after)[0]


def scan_markers(backend: Backend, kind: str, stale_after: float
                 ) -> tuple[list[str], list[str]]:
    """(live, stale) marker keys of a kind ("put" or "gc")."""
    live, stale = [], []
    for key, _mtime, _size in backend.list("locks/"):
        if not key.startswith(f"locks/{kind}-"):
            continue
        try:
            body = json.loads(backend.get(key))
            started = float(body["started"])
        except ObjectMissing:
            continue  # removed since the listing: its put or gc is over
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("marker %s is unreadable (%s): taken as stale", key, exc)
            stale.append(key)
            continue
        if time.time() - started >= stale_after:
            stale.append(key)
        elif body.get("host") == socket.gethostname() and not pid_alive(body.get("pid")):
            stale.append(key)  # its writer died on this machine (e.g. kill -9)
        else:
            live.append(key)
    return live, stale


def pid_alive(pid: object) -> bool:
    """False only for a process id that names no process here (anything else: alive)."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
