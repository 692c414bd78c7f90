"""One claimed session's turn as the steps of a turn share it (bring-up, recovery, the
agent loop's hooks, snapshots, wait point, retry, failure, cancel): the transcript, the
session's row, the sandbox's name, where events go, the outcome being built, and, once
the sandbox is up, the tools and the workspace they act on."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torpor.context import Entry, Marker, markers
from torpor.runtime.events import Event, event_of
from torpor.runtime.types import Cancelled, EventSink, LeaseLost, Policy, TurnOutcome

if TYPE_CHECKING:
    from torpor.agent.registry import ToolRegistry
    from torpor.runtime.db import SessionRow
    from torpor.runtime.parts import RuntimeParts
    from torpor.runtime.transcript import Transcript
    from torpor.runtime.workspace import SandboxWorkspace


@dataclass
class Turn:
    rt: RuntimeParts
    owner: str  # the worker holding the session's lease
    lease_ttl: float
    tr: Transcript
    row: SessionRow
    on_event: EventSink | None = None
    outcome: TurnOutcome = field(init=False)
    events: list[Event] = field(default_factory=list)
    # set once the sandbox is up (Worker._run)
    registry: ToolRegistry | None = None
    workspace: SandboxWorkspace | None = None
    own_id: str | None = None  # the engine's id of the sandbox this turn brought up
    # set by the lease's heartbeat: the lease went to another worker; a cancel was asked
    lost: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.outcome = TurnOutcome(session=self.row.id, state=self.row.state,
                                   events=self.events)  # fmt: skip

    @property
    def sid(self) -> str:
        return self.row.id

    @property
    def sandbox(self) -> str:
        """The session's sandbox's name in the engine."""
        return f"s-{self.row.id}"

    @property
    def policy(self) -> Policy:
        return Policy.from_json(self.row.policy)

    def emit(self, kind: str, **data: Any) -> None:
        """An event of the worker's own (no log entry: see runtime/events.py)."""
        self._emit(Event(str(kind), data, session=self.sid))

    def publish(self, e: Entry) -> None:
        """The event that reports an entry this turn wrote (as the SSE stream has it)."""
        self._emit(event_of(e, self.sid))

    def _emit(self, ev: Event) -> None:
        self.events.append(ev)
        if self.on_event:
            self.on_event(ev)

    def write(self, item: Entry | Marker, key: str | None = None) -> Entry:
        """Append one entry or marker (its event is `publish`ed when the step is done)."""
        return self.tr.write(item, key=key)

    def record(self, item: Entry | Marker, key: str | None = None) -> Entry:
        """Append one entry or marker and emit its event."""
        e = self.write(item, key=key)
        self.publish(e)
        return e

    def update(self, **fields: Any) -> bool:
        """Update the session's row as its lease holder (False: the lease is gone)."""
        return self.rt.db.update(self.sid, owner=self.owner, **fields)

    def release(self) -> None:
        """Let go of the lease, changing nothing else."""
        self.update(lease_owner=None, lease_until=None)

    def set_state(self, state: str) -> None:
        e = self.write(markers.State(state=state, worker=self.owner, epoch=self.tr.epoch))
        if not self.update(state=state):
            raise LeaseLost(f"worker {self.owner} lost the lease on {self.sid}")
        self.row.state = state
        self.publish(e)

    def check(self) -> None:
        """A safe point (between the loop's steps): stop if the lease is gone or the user
        cancelled."""
        if self.lost.is_set():
            raise LeaseLost(f"worker {self.owner} lost the lease on {self.sid}")
        if self.cancel.is_set():
            raise Cancelled(self.sid)

    def take_inbox(self) -> None:
        """Append the session's queued user messages (each once: idempotency keys)."""
        for inbox_id, text in self.rt.db.unread(self.sid):
            e = self.write(Entry.message("user", text), key=f"inbox-{inbox_id}")
            self.rt.db.consume([inbox_id])
            self.publish(e)
