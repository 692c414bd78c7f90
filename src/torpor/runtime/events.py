"""A session's events, one name per thing: the same names and fields in the runtime (a
worker's events to Session.send's on_event and Session.stream), the HTTP API's
server-sent events (api/events.py streams the log through `event_of`), the Python client
(RemoteSession), the CLI and the dashboard.

Most events report a log entry: a user or assistant message, a tool call, its result, or
one of torpor's markers (context/markers.py: each has its event, FOR_MARKER). Their data
are the entry's fields plus its `seq` and `at`, and `id` is its seq, whether the event
came from a worker in this process or over SSE. A marker torpor does not define streams
as `marker` (with its name in `marker`). A few events happen in a worker only, with no
entry: `awaiting_upload`, `turn_finished` and `outcome` (the last of Session.stream); the
worker's `assistant` and tool call events come as the loop runs, before their entries'
seqs are known (id None), with a few fields of their own (`tool_calls`, `ms`, `name`).

Names that changed (issue 16): the runtime's `recovered` is `recovery` and its `warm` is
`sandbox_warm`; over SSE, the markers sandbox_started, sandbox_warm, upload_awaited,
cancelled, error, model_error, fork, summary, step_limit and size_warning used to come as
`marker` events and now have their own names.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from torpor.context import Entry, markers


class EventType(StrEnum):
    USER = "user"  # a user message: text
    ASSISTANT = "assistant"  # the model's answer: delta (its whole text)
    TOOL_CALL_STARTED = "tool_call_started"  # id, name, arguments (JSON text)
    TOOL_CALL_FINISHED = "tool_call_finished"  # id, is_error, ms, output, truncated, ...
    STATE = "state"  # the state marker: state (running, waiting, ...)
    SNAPSHOT = "snapshot"  # snapshot_taken: snapshot, bytes, ms, mid_turn, covers_seq
    RESTORED = "restored"  # session_restored: snapshot, ms, standby, hot
    SANDBOX_STARTED = "sandbox_started"  # a fresh sandbox: image, ms, pooled
    SANDBOX_WARM = "sandbox_warm"  # the warm sandbox reused: sandbox
    AWAITING_UPLOAD = "awaiting_upload"  # (worker only) snapshot, machine
    UPLOAD_AWAITED = "upload_awaited"  # snapshot, machine, ms
    RECOVERY = "recovery"  # recovery_note: text, lost, interrupted or failures, ...
    RETRY_SCHEDULED = "retry_scheduled"  # attempt, delay, wake_at, error, status
    MODEL_ERROR = "model_error"  # error, status, attempts, gave_up
    ERROR = "error"  # the turn failed: error, kind
    CANCELLED = "cancelled"  # skipped, text
    FORK = "fork"  # parent, snapshot, at_seq, text
    SUMMARY = "summary"  # upto_seq, text, entries
    STEP_LIMIT = "step_limit"  # steps
    SIZE_WARNING = "size_warning"  # bytes, limit, entries
    HIDDEN = "hidden"  # a framework's pop or clear: the entries its view no longer shows
    FRAMEWORK_ITEM = "framework_item"  # a framework's item kept whole (OpenAI Agents SDK)
    RETENTION_NOTE = "retention_note"  # deleted (snapshot ids), why (a tenant's quota)
    TURN_FINISHED = "turn_finished"  # (worker only) seconds
    OUTCOME = "outcome"  # (Session.stream's last) outcome: the TurnOutcome
    MARKER = "marker"  # a marker torpor does not define: marker (its name), its fields


# every marker torpor defines -> its event (tests/runtime/test_events.py: all of them)
FOR_MARKER: dict[type[markers.Marker], EventType] = {
    markers.State: EventType.STATE,
    markers.SnapshotTaken: EventType.SNAPSHOT,
    markers.SessionRestored: EventType.RESTORED,
    markers.SandboxStarted: EventType.SANDBOX_STARTED,
    markers.SandboxWarm: EventType.SANDBOX_WARM,
    markers.UploadAwaited: EventType.UPLOAD_AWAITED,
    markers.RecoveryNote: EventType.RECOVERY,
    markers.RetryScheduled: EventType.RETRY_SCHEDULED,
    markers.ModelError: EventType.MODEL_ERROR,
    markers.Error: EventType.ERROR,
    markers.Cancelled: EventType.CANCELLED,
    markers.Fork: EventType.FORK,
    markers.Summary: EventType.SUMMARY,
    markers.StepLimit: EventType.STEP_LIMIT,
    markers.SizeWarning: EventType.SIZE_WARNING,
    markers.Hidden: EventType.HIDDEN,
    markers.FrameworkItem: EventType.FRAMEWORK_ITEM,
    markers.RetentionNote: EventType.RETENTION_NOTE,
}
_BY_NAME = {cls.NAME: kind for cls, kind in FOR_MARKER.items()}
OUTPUT_LIMIT = 2000  # characters of a tool result carried by tool_call_finished


@dataclass(frozen=True)
class Event(Mapping[str, Any]):
    """One thing that happened in a session. It also reads as a mapping of `type`,
    `session`, `t` and its data's fields (ev["type"], ev["ms"], ev.get("state")), as the
    runtime's events did when they were dicts."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    session: str | None = None
    id: int | None = None  # the log seq of the entry it reports (the SSE id), if known
    t: float = field(default_factory=time.time)  # when it happened (or arrived)

    def _view(self) -> dict[str, Any]:
        return {"type": self.type, "session": self.session, "t": self.t, **self.data}

    def __getitem__(self, key: str) -> Any:
        return self._view()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "session": self.session, "t": self.t,
                "data": self.data}  # fmt: skip


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # provider-native blocks
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return json.dumps(content, ensure_ascii=False, default=str)


def tool_call_started(call_id: str | None, name: str | None,
                      arguments: str | dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """The data of a tool_call_started event: `arguments` as the call's JSON text (as
    the log has it)."""
    if isinstance(arguments, dict):
        arguments = Entry.tool_call(call_id or "", name or "", arguments).arguments
    return {"id": call_id, "name": name, "arguments": arguments}


def tool_call_finished(call_id: str | None, content: Any, *, is_error: bool,
                       ms: float | None) -> dict[str, Any]:  # fmt: skip
    """The data of a tool_call_finished event: the output's first OUTPUT_LIMIT characters."""
    out = _text(content)
    return {"id": call_id, "is_error": is_error, "ms": ms, "output": out[:OUTPUT_LIMIT],
            "truncated": len(out) > OUTPUT_LIMIT, "output_chars": len(out)}  # fmt: skip


def marker_event(e: Entry) -> tuple[str, dict[str, Any]]:
    """(type, fields) of a marker entry's event."""
    c, name = markers.fields_of(e), markers.name_of(e) or "marker"
    if name == markers.SnapshotTaken.NAME and "seq" in c:  # the last log seq it covers
        c["covers_seq"] = c.pop("seq")
    kind = _BY_NAME.get(name)
    if kind is None:
        return EventType.MARKER.value, {**c, "marker": name}
    return kind.value, c


def event_of(e: Entry, session: str | None = None) -> Event:
    """The event that reports a log entry (what the SSE stream sends for it)."""
    base: dict[str, Any] = {"seq": e.seq, "at": e.created_at}
    if e.kind == "message":
        if e.role == "assistant":
            kind, data = EventType.ASSISTANT.value, {"delta": _text(e.content)}
        else:
            kind, data = e.role or "message", {"text": _text(e.content)}
    elif e.kind == "tool_call":
        kind = EventType.TOOL_CALL_STARTED.value
        data = tool_call_started(e.tool_call_id, e.tool_name, e.arguments)
    elif e.kind == "tool_result":
        meta = e.meta or {}
        kind = EventType.TOOL_CALL_FINISHED.value
        data = tool_call_finished(e.tool_call_id, e.content, is_error=bool(meta.get("is_error")),
                                  ms=meta.get("ms", meta.get("duration_ms")))  # fmt: skip
    else:
        kind, data = marker_event(e)
    fields = {**data, **base} if e.kind == "marker" else {**base, **data}
    return Event(kind, fields, session=session or e.session or None, id=e.seq or None)
