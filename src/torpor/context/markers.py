"""The markers torpor writes into a session's log about the session itself: log entries of
kind "marker", role "torpor", content {"marker": NAME, ...fields}. One dataclass per kind
with its fields: `SnapshotTaken(snapshot=..., ...).entry()` writes one, `parse(entry)`
reads one back (None for an entry that is not a marker torpor defines: a message, a tool
call, someone else's marker). A field missing from an entry (an older log's) reads as its
default; an `optional()` field is left out of the entry while it is None.

Every marker name torpor writes is defined here (tests/context/test_markers.py checks the
source tree); other names are allowed in a log and read as unknown (`parse` -> None).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .entry import Entry

_OPTIONAL = "torpor_optional"


def optional(default: Any = None) -> Any:
    """A field written only when it is not None."""
    return field(default=default, metadata={_OPTIONAL: True})


def _list() -> Any:
    return field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Marker:
    NAME: ClassVar[str] = ""
    SEEN_BY_MODEL: ClassVar[bool] = False  # the model is sent its model_note()

    def fields(self) -> dict[str, Any]:
        """The marker's content without its name, as it is written."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get(_OPTIONAL):
                continue
            out[f.name] = value
        return out

    def entry(self) -> Entry:
        """The log entry that records this marker."""
        return Entry.marker(self.NAME, **self.fields())

    def model_note(self) -> str | None:
        """The text the model is sent for this marker (None: the model does not see it)."""
        return None


M = TypeVar("M", bound=Marker)
BY_NAME: dict[str, type[Marker]] = {}  # marker name -> its class


def _kind(cls: type[M]) -> type[M]:
    BY_NAME[cls.NAME] = cls
    return cls


@_kind
@dataclass(frozen=True, kw_only=True)
class State(Marker):
    """A lifecycle transition (created, running, waiting, retrying, recovering, failed,
    closed), also in the session's row."""

    NAME = "state"
    state: str = ""
    worker: str | None = optional()  # who runs the turn now, and its epoch
    epoch: int | None = optional()
    warm_until: float | None = optional()  # waiting with the sandbox kept warm until then
    error: str | None = optional()  # failed: why
    image: str | None = optional()  # created: with this image and model
    model: str | None = optional()

    @property
    def ends_turn(self) -> bool:
        """After it the session waits for its user (or failed, or is closed)."""
        return self.state in ("waiting", "failed", "closed")


@_kind
@dataclass(frozen=True, kw_only=True)
class SnapshotTaken(Marker):
    NAME = "snapshot_taken"
    snapshot: str = ""
    seq: int | None = None  # the last log seq it covers
    bytes: int = 0
    ms: float = 0.0
    mid_turn: bool = False
    machine: str | None = None  # the machine that took it (its hot copy is there)


@_kind
@dataclass(frozen=True, kw_only=True)
class SessionRestored(Marker):
    NAME = "session_restored"
    snapshot: str = ""
    ms: float = 0.0
    standby: bool = False  # into a standby sandbox
    hot: bool | None = None  # from this machine's hot copy (else from the store)


@_kind
@dataclass(frozen=True, kw_only=True)
class SandboxStarted(Marker):
    """A fresh sandbox from the image (no snapshot yet, or none could be restored)."""

    NAME = "sandbox_started"
    image: str = ""
    ms: float = 0.0
    pooled: bool = False  # taken from the pool of pre-started sandboxes


@_kind
@dataclass(frozen=True, kw_only=True)
class SandboxWarm(Marker):
    """The turn runs in the sandbox this worker kept running since the last one."""

    NAME = "sandbox_warm"
    sandbox: str = ""


@_kind
@dataclass(frozen=True, kw_only=True)
class UploadAwaited(Marker):
    """A restore waited for another machine's upload of the snapshot."""

    NAME = "upload_awaited"
    snapshot: str = ""
    machine: str = ""
    ms: float = 0.0


@_kind
@dataclass(frozen=True, kw_only=True)
class RecoveryNote(Marker):
    """What torpor lost and did instead: after a dead worker (`after_seq`, `interrupted`)
    or when the latest snapshot(s) could not be restored (`failures`, `since_seq`). The
    model sees its text."""

    NAME = "recovery_note"
    SEEN_BY_MODEL = True
    text: str = ""
    snapshot: str | None = None  # the snapshot the sandbox was restored to (None: fresh)
    lost: list[str] = _list()  # tool calls whose effects on the sandbox are gone
    after_seq: int | None = optional()  # dead worker: the restored snapshot's log seq
    interrupted: list[str] | None = optional()  # dead worker: calls with no result
    failures: list[str] | None = optional()  # fallback: "snapshot: why" for each one
    since_seq: int | None = optional()  # fallback: the restored snapshot's log seq

    @property
    def after_crash(self) -> bool:
        """A dead worker's recovery (not a fallback to an older snapshot)."""
        return self.after_seq is not None

    def model_note(self) -> str | None:
        return f"[torpor] {self.text}"


@_kind
@dataclass(frozen=True, kw_only=True)
class Cancelled(Marker):
    NAME = "cancelled"
    SEEN_BY_MODEL = True
    skipped: int = 0  # tool calls not run
    text: str = ""

    def model_note(self) -> str | None:
        return f"[torpor] {self.text}"


@_kind
@dataclass(frozen=True, kw_only=True)
class Error(Marker):
    """The turn failed in a live worker (the session is `failed`)."""

    NAME = "error"
    error: str = ""
    kind: str = ""  # the exception's type


@_kind
@dataclass(frozen=True, kw_only=True)
class ModelError(Marker):
    """The model failed and torpor gave up on it for this turn."""

    NAME = "model_error"
    error: str = ""
    status: int | None = None
    attempts: int = 0
    gave_up: bool = True


@_kind
@dataclass(frozen=True, kw_only=True)
class RetryScheduled(Marker):
    NAME = "retry_scheduled"
    attempt: int = 0
    delay: float = 0.0
    wake_at: float = 0.0
    error: str = ""
    status: int | None = None


@_kind
@dataclass(frozen=True, kw_only=True)
class Fork(Marker):
    """The first entry of a fork's own log (after the parent's shared prefix)."""

    NAME = "fork"
    SEEN_BY_MODEL = True
    parent: str = ""
    snapshot: str = ""
    at_seq: int = 0
    text: str = ""

    def model_note(self) -> str | None:
        return f"[torpor] This session is a fork of session {self.parent}: {self.text}"


@_kind
@dataclass(frozen=True, kw_only=True)
class Summary(Marker):
    """The agent loop's summary of the entries before `upto_seq` (the context window)."""

    NAME = "summary"
    upto_seq: int = 0
    text: str = ""
    entries: int = 0


@_kind
@dataclass(frozen=True, kw_only=True)
class StepLimit(Marker):
    NAME = "step_limit"
    steps: int = 0


@_kind
@dataclass(frozen=True, kw_only=True)
class SizeWarning(Marker):
    """The session's log grew past the log's warn_bytes (written once, by the log)."""

    NAME = "size_warning"
    bytes: int = 0
    limit: int = 0
    entries: int = 0


@_kind
@dataclass(frozen=True, kw_only=True)
class Hidden(Marker):
    """Earlier entries an agent framework's view of the session no longer shows (the log
    keeps them): `seqs` by number (OpenAI Agents' `pop_item`), or every entry up to
    `through` (its `clear_session`). `by` names the operation."""

    NAME = "hidden"
    seqs: list[int] = _list()
    through: int = 0
    by: str = ""


@_kind
@dataclass(frozen=True, kw_only=True)
class FrameworkItem(Marker):
    """An item of an agent framework's history that is no message, tool call or tool
    result (OpenAI Agents' reasoning items, hosted tool calls, ...), kept whole."""

    NAME = "framework_item"
    framework: str = ""
    item: Any = None


@_kind
@dataclass(frozen=True, kw_only=True)
class RetentionNote(Marker):
    """A wait point deleted older snapshots its retention schedule would have kept (its
    tenant is over a storage quota): which ones, and why."""

    NAME = "retention_note"
    deleted: list[str] = _list()
    why: str = ""


# Every marker name torpor writes (others are allowed in a log).
MARKERS: frozenset[str] = frozenset(BY_NAME)


def name_of(e: Entry) -> str | None:
    """The marker name of a marker entry (torpor's or not); None for other entries."""
    if e.kind != "marker":
        return None
    c = e.content
    return str(c.get("marker", "marker")) if isinstance(c, dict) else "marker"


def fields_of(e: Entry) -> dict[str, Any]:
    """A marker entry's fields, its name left out (any marker, torpor's or not; a content
    that is not an object comes as {"value": content})."""
    c = e.content
    if not isinstance(c, dict):
        return {"value": c}
    return {k: v for k, v in c.items() if k != "marker"}


def parse(e: Entry) -> Marker | None:
    """The marker torpor defines that this entry records, or None."""
    if e.kind != "marker" or not isinstance(e.content, dict):
        return None
    cls = BY_NAME.get(str(e.content.get("marker")))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in e.content.items() if k in names})


def of(e: Entry, kind: type[M]) -> M | None:
    """The marker of one kind this entry records, or None (not parsed unless it is one)."""
    if e.kind != "marker" or not isinstance(e.content, dict) \
            or e.content.get("marker") != kind.NAME:  # fmt: skip
        return None
    m = parse(e)
    assert isinstance(m, kind)
    return m


def model_note(e: Entry) -> str | None:
    """The text the model is sent for this entry if it is a marker the model sees (a
    recovery note, a cancel, a fork); None otherwise. Cheap for every other entry: the
    loop asks at every step for every marker of the log."""
    cls = BY_NAME.get(name_of(e) or "")
    if cls is None or not cls.SEEN_BY_MODEL:
        return None
    m = parse(e)
    return None if m is None else m.model_note()


def each(entries: Iterable[Entry], kind: type[M]) -> Iterator[tuple[Entry, M]]:
    """(entry, marker) for every marker of one kind, in log order."""
    for e in entries:
        m = of(e, kind)
        if m is not None:
            yield e, m
