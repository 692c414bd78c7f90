"""The runtime's shared vocabulary: when to snapshot (`Policy`), what a turn ends with
(`TurnOutcome`), what a session is to its user whether in-process or over HTTP
(`SessionLike`), the errors a session's requests raise, and the timings every part of the
runtime (and the machines of a cluster) agree on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torpor.runtime.events import Event

if TYPE_CHECKING:
    from torpor.context import Entry
    from torpor.runtime.db import SessionRow

DEFAULT_LEASE_TTL = 15.0
CANCEL_POLL = 0.5  # how often a running turn looks for a cancel asked for in the database
# Several machines (docs/cluster.md): each one's heartbeat, and how long without one makes
# it gone; how long a new message waits for the machine that holds the session's latest
# snapshot before any machine may take it; how long a machine restoring a snapshot that
# another (live) machine is still uploading waits for that upload.
MACHINE_BEAT = 1.0
MACHINE_TTL = 10.0
AFFINITY_DELAY = 0.5
UPLOAD_WAIT = 300.0
WORKSPACE = "/work"  # a tmpfs in every session's sandbox (Runtime.sandbox_spec)


class SessionError(Exception):
    """A request that does not fit the session (busy, closed, no snapshot yet, ...)."""


class InvalidSession(SessionError, ValueError):
    """A session that could not run as asked (its model, image or a tool): refused when it
    is created, rather than failing at its first turn."""


class LeaseLost(Exception):
    """Another worker took the session (this one was too slow or presumed dead)."""


class Cancelled(Exception):
    """The user asked for the running turn to stop (Session.cancel, or close)."""


@dataclass
class Policy:
    """When to snapshot. Defaults: snapshot at every wait point, none mid-turn."""

    snapshot_every_calls: int = 0  # mid-turn snapshot every K tool calls (0: never)
    snapshot_every_seconds: float = 0.0  # ... or every T seconds of turn time (0: never)
    max_attempts: int = 8  # model failures in a row before the turn is given up
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    # Keep the sandbox running this long after a wait point, so that a quick reply does
    # not pay for a restore; it is snapshotted when the time is up (0: snapshot at once).
    # Only a worker that stays up (torpor worker / serve / a Runtime kept open) keeps it.
    warm_seconds: float = 0.0
    # Which of the session's wait-point snapshots stay (runtime/retention.py): "" for the
    # server's default (`torpor serve/worker --retention`, itself by default
    # last=3,hourly=24,daily=7: torpor.snapshots.retention), "all" to keep every one, or
    # a spec of its own. Older ones are deleted from the store as new ones are taken,
    # unless something still refers to them (a fork, a pin, an upload in flight); their
    # chunks are reclaimed by the next gc (automatic, or `torpor snapshot gc`).
    retention: str = ""
    # Keep only the newest N snapshots (0: `retention` decides); N > 0 is last=N alone.
    keep_snapshots: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Policy:
        known = {k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TurnOutcome:
    """How a turn ended: what Session.send and RemoteSession.send return."""

    session: str
    state: str  # waiting | retrying | failed | closed
    error: str | None = None  # why the session failed
    text: str = ""  # the model's last answer
    snapshot: str | None = None  # the wait point's snapshot
    snapshot_bytes: int = 0
    snapshot_ms: float = 0.0
    restore_ms: float | None = None  # None: a fresh (or warm) sandbox, no restore
    recovered: bool = False  # a dead worker's turn was recovered first
    cancelled: bool = False
    wake_at: float | None = None  # retrying: when
    events: list[Event] = field(default_factory=list)
    turn: int | None = None  # the message's turn (inbox) id

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "events": [e.to_json() for e in self.events]}


EventSink = Callable[[Event], None]


@runtime_checkable
class SessionLike(Protocol):
    """A session, in-process (torpor.Session) or over HTTP (torpor.api.client.RemoteSession):
    the same calls with the same types, so that code written against one runs on the
    other."""

    id: str

    def info(self) -> SessionRow:
        """The session's record (state, snapshots, lease, ...)."""
        ...

    def log(self) -> list[Entry]:
        """The whole context log."""
        ...

    def post(self, text: str) -> int:
        """Queue a user message for a worker; returns its turn (inbox) id."""
        ...

    def send(self, text: str, *, on_event: EventSink | None = None) -> TurnOutcome:
        """Post a message and follow the turn to its wait point."""
        ...

    def stream(self, text: str) -> Iterator[Event]:
        """`send` as a generator of events; the last is `outcome` (ev["outcome"])."""
        ...

    def fork(self, at: str | None = None) -> SessionLike:
        """A new session from snapshot `at` (default: the latest)."""
        ...

    def cancel(self) -> SessionRow:
        """Stop the running turn at its next safe point; the record (`cancel` still set:
        not acted on yet)."""
        ...

    def close(self) -> SessionRow:
        """Close the session (a running turn is cancelled first)."""
        ...
