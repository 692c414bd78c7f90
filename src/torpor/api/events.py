"""Server-sent events derived from a session's context log.

Every log entry becomes one event whose `id:` is the entry's seq, so a client that
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

from torpor.context import Entry

OUTPUT_LIMIT = 2000  # characters of a tool result carried by tool_call_finished

# marker name -> event type; markers not listed go out as type "marker"
MARKER_EVENTS = {
    "snapshot_taken": "snapshot",
    "session_restored": "restored",
    "retry_scheduled": "retry_scheduled",
    "recovery_note": "recovery",
    "state": "state",
}


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # provider-native blocks
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return json.dumps(content, ensure_ascii=False, default=str)


def event_for(e: Entry) -> tuple[str, dict[str, Any]]:
    """(event type, data) for one log entry."""
    base: dict[str, Any] = {"seq": e.seq, "at": e.created_at}
    if e.kind == "message":
        if e.role == "assistant":
            return "assistant", {**base, "delta": _text(e.content)}
        return e.role or "message", {**base, "text": _text(e.content)}
    if e.kind == "tool_call":
        return "tool_call_started", {**base, "id": e.tool_call_id, "name": e.tool_name,
                                     "arguments": e.arguments}  # fmt: skip
    if e.kind == "tool_result":
        out = _text(e.content)
        meta = e.meta or {}
        ms = meta.get("ms", meta.get("duration_ms"))
        return "tool_call_finished", {
            **base, "id": e.tool_call_id, "is_error": bool(meta.get("is_error")), "ms": ms,
            "output": out[:OUTPUT_LIMIT], "truncated": len(out) > OUTPUT_LIMIT,
            "output_chars": len(out),
        }  # fmt: skip
    c = dict(e.content) if isinstance(e.content, dict) else {"value": e.content}
    name = c.pop("marker", "marker")
    if "seq" in c:  # a snapshot's: the last log seq it covers
        c["covers_seq"] = c.pop("seq")
    kind = MARKER_EVENTS.get(name)
    if kind is None:
        return "marker", {**c, **base, "marker": name}
    return kind, {**c, **base}


def format_sse(e: Entry) -> str:
    kind, data = event_for(e)
    payload = json.dumps(data, ensure_ascii=False, default=str)
    return f"id: {e.seq}\nevent: {kind}\ndata: {payload}\n\n"


def is_wait_point(e: Entry) -> bool:
    """A state marker after which the session waits for its user (or failed, or is closed)."""
    c = e.content if e.kind == "marker" and isinstance(e.content, dict) else {}
    return c.get("marker") == "state" and c.get("state") in ("waiting", "failed", "closed")


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
