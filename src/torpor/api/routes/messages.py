"""The routes that drive a session's turns: POST /v1/sessions/{sid}/messages queues a
user message (a worker runs the turn), and GET .../events follows the session's log live
as server-sent events, resumable by seq (Last-Event-ID)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from torpor.api.deps import Api, ApiState, Drive, DriveGet, auth_errors
from torpor.api.events import format_sse, is_wait_point
from torpor.api.schemas import (
    API_VERSION,
    MAX_SEQ,
    SEQ_FORM,
    SEQ_PATTERN,
    ApiError,
    MessageIn,
    SessionId,
    errors,
)
from torpor.context import UnknownSession
from torpor.runtime.db import SessionClosedError

BATCH = 200  # log entries read at a time by an event stream


async def _stream(api: ApiState, sid: str, start: int,
                  until: Literal["wait"] | None) -> AsyncIterator[str]:  # fmt: skip
    """The session's entries after `start` as server-sent events, waking up when a worker
    here notifies and every `poll` seconds (for entries written by other processes)."""
    rt, poll = api.runtime, api.poll
    item = api.notifier.subscribe(sid)
    ev = item[1]
    pos = start
    idle = 0.0
    try:
        yield ": torpor events\n\n"
        while True:
            ev.clear()
            try:
                batch = await run_in_threadpool(rt.log.read, sid, pos, BATCH)
            except UnknownSession:  # created a moment ago: its first entry is coming
                batch = []
            for e in batch:
                pos = e.seq
                api.metrics.sse_events.inc()
                yield format_sse(e)
                if until == "wait" and is_wait_point(e):
                    return
            if len(batch) == BATCH:
                continue
            if batch:
                idle = 0.0
                continue
            try:
                await asyncio.wait_for(ev.wait(), timeout=poll)
            except TimeoutError:
                idle += poll
                row = await run_in_threadpool(rt.db.get, sid)
                if row.state == "closed" and pos >= await run_in_threadpool(
                        api.session_head, sid):  # fmt: skip
                    return
                if idle >= 15:
                    idle = 0.0
                    yield ": keepalive\n\n"
    finally:
        api.notifier.unsubscribe(sid, item)


def router(auth: bool) -> APIRouter:
    r = APIRouter(prefix=f"/{API_VERSION}")
    AUTH = auth_errors(auth)

    @r.post("/sessions/{sid}/messages", status_code=202, tags=["messages"],
            responses=errors(*AUTH, 404, 409, 415, 422, 429))  # fmt: skip
    def post_message(
        sid: SessionId, body: MessageIn, p: Drive, api: Api,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Queue a user message; returns its turn id at once. A worker runs the turn; follow
        it on /events. Repeating a request with the same Idempotency-Key is a no-op that
        returns the same turn id."""
        rt, lim = api.runtime, api.limits
        row = api.row_of(p, sid)
        if len(body.text) > lim.max_message_chars:
            raise ApiError(413, f"message of {len(body.text)} characters is over the limit "
                                f"of {lim.max_message_chars}")  # fmt: skip
        if idempotency_key:  # a repeat (from any process) queues nothing: one turn, once
            earlier = rt.db.turn_for_key(sid, idempotency_key)
            if earlier is not None:
                return {"session": sid, "turn": earlier, "duplicate": True}
        if row.state == "closed":
            raise ApiError(409, f"session {sid} is closed")
        busy = row.state in ("running", "recovering", "retrying") or rt.db.unread(sid)
        if not busy and api.tokens.busy_sessions(row.tenant) >= lim.turns_per_tenant:
            raise ApiError(429, f"tenant already has {lim.turns_per_tenant} turns queued "
                                "or running, the limit: retry later",
                           headers={"Retry-After": "1"})  # fmt: skip
        try:
            turn, duplicate = rt.db.post_once(sid, body.text, key=idempotency_key)
        except SessionClosedError as e:
            raise ApiError(409, str(e)) from None
        if duplicate:
            return {"session": sid, "turn": turn, "duplicate": True}
        api.wake.set()
        return {"session": sid, "turn": turn, "duplicate": False}

    @r.get("/sessions/{sid}/events", tags=["events"],
           response_class=StreamingResponse,
           responses={200: {"content": {"text/event-stream": {}},
                            "description": "Server-sent events, id = log seq"},
                      **errors(*AUTH, 404, 422)})  # fmt: skip
    async def events(
        sid: SessionId, request: Request, p: DriveGet, api: Api,
        after: Annotated[int | None, Query(ge=0, le=MAX_SEQ,
                                           description="Start after this seq.")] = None,
        until: Annotated[Literal["wait"] | None,
                         Query(description="'wait': end at the next wait point")] = None,
        last_event_id: Annotated[str | None, Header(
            max_length=40, json_schema_extra={"pattern": SEQ_PATTERN},
            description="Start after this seq (a reconnecting EventSource sends it)")] = None,
    ) -> StreamingResponse:  # fmt: skip
        """The session's log as server-sent events (one per entry, `id:` = seq). Reconnect
        with Last-Event-ID to get exactly the entries after it."""
        await run_in_threadpool(api.row_of, p, sid)
        start = after or 0
        if last_event_id is not None:
            if not SEQ_FORM.fullmatch(last_event_id):  # the header's pattern
                raise ApiError(400, "Last-Event-ID must be a log seq (an integer)")
            start = max(start, int(last_event_id))
        return StreamingResponse(_stream(api, sid, start, until),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})  # fmt: skip

    return r
