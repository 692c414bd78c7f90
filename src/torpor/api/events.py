"""Server-sent events derived from a session's context log.

Every log entry becomes one event (runtime/events.py: the names and fields, the same as a
worker's events in-process) whose `id:` is the entry's seq, so a client that
reconnects with `Last-Event-ID: N` gets exactly the entries after N: nothing is missed and
nothing is sent twice. Workers in the server's process wake the streams at once through
`Notifier`; writes by other processes (a `torpor worker` elsewhere) are seen by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

from torpor.context import Entry, markers
from torpor.runtime.events import OUTPUT_LIMIT, event_of

__all__ = ["OUTPUT_LIMIT", "Notifier", "event_for", "format_sse", "is_wait_point"]


def event_for(e: Entry) -> tuple[str, dict[str, Any]]:
    """(event type, data) for one log entry (runtime/events.py names them)."""
    ev = event_of(e)
    return ev.type, ev.data


def format_sse(e: Entry) -> str:
    kind, data = event_for(e)
    payload = json.dumps(data, ensure_ascii=False, default=str)
    return f"id: {e.seq}\nevent: {kind}\ndata: {payload}\n\n"


def is_wait_point(e: Entry) -> bool:
    """A state marker after which the session waits for its user (or failed, or is closed)."""
    m = markers.of(e, markers.State)
    return m is not None and m.ends_turn


class Notifier:
    """Wakes the event streams of a session when a worker in this process wrote to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def subscribe(self, sid: str) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        item = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.setdefault(sid, set()).add(item)
        return item

    def unsubscribe(self, sid: str, item: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            subs = self._waiters.get(sid)
            if subs is not None:
                subs.discard(item)
                if not subs:
                    del self._waiters[sid]

    def notify(self, sid: str) -> None:
        with self._lock:
            subs = list(self._waiters.get(sid, ()))
        for loop, ev in subs:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(ev.set)
