"""The Session: the user's handle on one durable session (`rt.create_session(...)`):
post and send messages, stream a turn's events, fork from a snapshot, cancel a turn,
close the session."""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Protocol

from torpor.context import Entry, markers
from torpor.runtime.db import SessionRow
from torpor.runtime.events import Event, EventType
from torpor.runtime.parts import RuntimeParts
from torpor.runtime.types import EventSink, SessionError, TurnOutcome
from torpor.runtime.worker import Worker


class SessionRuntime(RuntimeParts, Protocol):
    """What a Session uses of its Runtime: the parts, and the runtime's own worker."""

    def worker(self) -> Worker: ...


class Session:
    def __init__(self, runtime: SessionRuntime, sid: str) -> None:
        self.runtime = runtime
        self.id = sid

    def __repr__(self) -> str:
        return f"Session({self.id!r})"

    def info(self) -> SessionRow:
        return self.runtime.db.get(self.id)

    def log(self) -> list[Entry]:
        return self.runtime.log.read(self.id)

    def post(self, text: str) -> int:
        """Queue a user message durably (a worker will pick it up); returns its inbox id."""
        return self.runtime.db.post(self.id, text)

    def send(self, text: str, *, on_event: EventSink | None = None) -> TurnOutcome:
        """Queue a user message and run the turn in this process until its wait point."""
        turn = self.post(text)
        outcome = self.runtime.worker().run_session(self.id, on_event=on_event)
        outcome.turn = turn
        return outcome

    async def asend(self, text: str, *, on_event: EventSink | None = None) -> TurnOutcome:
        """`send` for asyncio code: the turn runs in a thread, the event loop stays free."""
        import asyncio

        return await asyncio.to_thread(self.send, text, on_event=on_event)

    def stream(self, text: str) -> Iterator[Event]:
        """`send` as a generator of events (tool calls, snapshot, state, ...) as they
        happen; the last one is the `outcome` event (ev["outcome"]: the TurnOutcome)."""
        q: queue.Queue[Event | BaseException] = queue.Queue()

        def run() -> None:
            try:
                outcome = self.send(text, on_event=q.put)
                q.put(Event(EventType.OUTCOME.value, {"outcome": outcome}, session=self.id))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                q.put(e)

        threading.Thread(target=run, name=f"torpor-turn-{self.id}", daemon=True).start()
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.type == EventType.OUTCOME:
                return

    def resume(self, *, on_event: EventSink | None = None) -> TurnOutcome:
        """Run whatever work the session has (a due retry, a turn cut short)."""
        return self.runtime.worker().run_session(self.id, on_event=on_event)

    def fork(self, at: str | None = None, *, id: str | None = None) -> Session:
        """A new session whose log is this one's up to snapshot `at` (default: the latest)
        and whose sandbox starts from that snapshot."""
        rt = self.runtime
        row = self.info()
        snap = at or row.snapshot
        if snap is None:
            raise SessionError(f"session {self.id} has no snapshot to fork from yet")
        seq = None
        for e, m in markers.each(self.log(), markers.SnapshotTaken):
            if m.snapshot == snap:
                seq = e.seq
        if seq is None:
            raise SessionError(f"snapshot {snap} is not one of session {self.id}'s")
        new = id or f"ses-{secrets.token_hex(6)}"
        rt.log.fork(self.id, seq, new)
        rt.db.create(
            SessionRow(
                id=new, state="waiting", image=row.image, model=row.model, system=row.system,
                tools=row.tools, policy=row.policy, snapshot=snap, snapshot_seq=seq,
                snapshots=[snap], parent=self.id, tenant=row.tenant,
            )
        )  # fmt: skip
        epoch = rt.log.acquire(new)
        rt.log.append(
            new,
            [markers.Fork(parent=self.id, snapshot=snap, at_seq=seq,
                          text=f"it continues from snapshot {snap} (log seq {seq}); "
                               "the two sessions diverge from here").entry()],
            epoch=epoch,
        )  # fmt: skip
        return Session(rt, new)

    def close(self, *, wait: float = 60.0) -> SessionRow:
        """Close the session: its log stays, it takes no more messages. A running turn is
        cancelled first (see cancel); raises SessionError if that takes over `wait`
        seconds (the close stays asked for: the worker closes it at its safe point)."""
        row = self.cancel(close=True, wait=wait)
        if row.state != "closed":
            raise SessionError(
                f"session {self.id} is still running a turn after {wait:g} s; it will be "
                "closed when the turn reaches its next safe point"
            )
        return row

    def cancel(self, *, wait: float = 0.0, close: bool = False) -> SessionRow:
        """Stop the session's turn at its next safe point: the running tool call is
        stopped, what happened is logged, the sandbox is snapshotted, the session waits
        (close: and is then closed). A queued message is logged but not answered; a retry
        timer is dropped. Waits up to `wait` seconds for the worker running the turn to
        act; returns the session's row (`cancel` still set: not acted on yet)."""
        rt = self.runtime
        if rt.db.get(self.id).state == "closed":
            return rt.db.get(self.id)
        rt.worker().cool(self.id)  # a sandbox this runtime keeps warm is snapshotted first
        canceller = Worker(rt, owner=f"cancel-{secrets.token_hex(4)}")
        done = canceller.settle_cancel(self.id, close=close)
        if done is not None:
            return done  # no worker held it: done here and now
        rt.db.request_cancel(self.id, "close" if close else "cancel")
        deadline = time.monotonic() + wait
        while True:
            row = rt.db.get(self.id)
            if row.state == "closed" or (row.cancel is None and not close):
                return row  # its worker acted on it (a close: until it is closed)
            if not (row.lease_owner and (row.lease_until or 0) > time.time()):
                # the turn ended (or its worker died) before it saw the request
                done = canceller.settle_cancel(self.id, close=close)
                if done is not None:
                    return done
            if time.monotonic() >= deadline:
                return row
            time.sleep(0.05)
