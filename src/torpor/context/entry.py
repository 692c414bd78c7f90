"""The context log's data model: Entry, its kinds, canonical JSON, the hash chain, validation.

Nothing here touches storage. Stores call `validate_batch` before they write anything and
`chain_hash` to link each entry to the one before it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

KINDS: frozenset[str] = frozenset({"message", "tool_call", "tool_result", "marker"})
ROLES: frozenset[str] = frozenset({"system", "developer", "user", "assistant", "tool", "torpor"})
HASH_VERSION = 1
GENESIS = ""  # prev_hash of seq 1


class ContextError(Exception):
    """Base class of every error the context log raises on purpose."""


class InvalidEntry(ContextError, ValueError):
    """An entry (or batch) was refused before anything was written."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        self.index = index
        prefix = f"entry #{index} of the batch: " if index is not None else ""
        super().__init__(prefix + message)


class StaleEpoch(ContextError):
    """An append carried an epoch that is not the session's current one; nothing was written."""

    def __init__(self, session: str, epoch: int, current: int) -> None:
        self.session, self.epoch, self.current = session, epoch, current
        if epoch < current:
            why = f"another writer acquired epoch {current}"
        else:
            why = f"epoch {epoch} was never acquired (current is {current})"
        super().__init__(f"session {session!r}: append with epoch {epoch} refused: {why}")


class BlobMissing(ContextError):
    """A payload stored in the blob store is gone or does not match its hash."""

    def __init__(self, key: str, where: str, detail: str = "not found") -> None:
        self.key, self.where = key, where
        super().__init__(f"blob {key} ({detail}) in {where}")


class UnknownSession(ContextError, KeyError):
    """The named session does not exist in this log."""

    def __init__(self, session: str) -> None:
        self.session = session
        super().__init__(f"unknown session {session!r}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                            allow_nan=False)


def canonical_text(value: Any) -> str:
    """The one text form of a JSON value: sorted keys, no spaces, UTF-8, no NaN."""
    return _ENCODER.encode(value)


def canonical(value: Any) -> bytes:
    """The bytes that hashing and blob keys are computed over (canonical_text, UTF-8)."""
    return _ENCODER.encode(value).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class BlobLoader(Protocol):
    def get(self, key: str) -> bytes: ...


@dataclass(frozen=True)
class BlobRef:
    """A payload field kept in the blob store: its content hash and size, loaded on first use."""

    key: str
    size: int
    store: BlobLoader | None = field(default=None, compare=False, repr=False)

    def load(self) -> Any:
        if self.store is None:
            raise BlobMissing(self.key, "no blob store configured")
        return json.loads(self.store.get(self.key))


class _Payload:
    """Descriptor for payload fields that may live in the blob store (rehydrated lazily)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return None  # the dataclass default
        value = obj.__dict__.get(self.slot)
        if isinstance(value, BlobRef):
            value = value.load()
            obj.__dict__[self.slot] = value
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = value


@dataclass(eq=False)
class Entry:
    """One record of a session's context.

    kind: message | tool_call | tool_result | marker. `content` is text, a list of structured
    parts (provider-native blocks), any JSON value for markers, or None. `arguments` is the
    JSON text of a tool call's arguments. `session`, `seq`, `epoch`, `created_at`,
    `prev_hash` and `hash` are filled in by the store on append.
    """

    kind: str = "message"
    role: str | None = None
    content: Any = _Payload()
    tool_call_id: str | None = None
    tool_name: str | None = None
    arguments: str | None = _Payload()  # type: ignore[assignment]
    usage: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    session: str = ""
    seq: int = 0
    epoch: int = 0
    created_at: str = ""
    prev_hash: str = ""
    hash: str = ""

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def message(cls, role: str, content: Any, **kw: Any) -> Entry:
        return cls(kind="message", role=role, content=content, **kw)

    @classmethod
    def tool_call(cls, call_id: str, name: str, arguments: str | dict[str, Any],
                  **kw: Any) -> Entry:
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        return cls(kind="tool_call", role="assistant", tool_call_id=call_id, tool_name=name,
                   arguments=arguments, **kw)

    @classmethod
    def tool_result(cls, call_id: str, content: Any, **kw: Any) -> Entry:
        return cls(kind="tool_result", role="tool", tool_call_id=call_id, content=content, **kw)

    @classmethod
    def marker(cls, name: str, **data: Any) -> Entry:
        """A marker: content {"marker": name, **data}. torpor's own are written through
        their classes in torpor.context.markers (SnapshotTaken(...).entry())."""
        return cls(kind="marker", role="torpor", content={"marker": name, **data})

    # -- payload access without loading blobs -------------------------------------------
    def raw(self, name: str) -> Any:
        """The stored value of `content` or `arguments`: a BlobRef if it was not loaded yet."""
        return self.__dict__.get("_" + name)

    def args(self) -> Any:
        """The tool call's arguments, parsed."""
        return None if self.arguments is None else json.loads(self.arguments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session, "seq": self.seq, "kind": self.kind, "role": self.role,
            "content": self.content, "tool_call_id": self.tool_call_id,
            "tool_name": self.tool_name, "arguments": self.arguments, "usage": self.usage,
            "meta": self.meta, "epoch": self.epoch, "created_at": self.created_at,
            "prev_hash": self.prev_hash, "hash": self.hash,
        }

    def same_content(self, other: Entry) -> bool:
        """True when both entries say the same thing (store-assigned fields ignored)."""
        return content_fields(self) == content_fields(other)

    @classmethod
    def _stored(cls, fields: dict[str, Any]) -> Entry:
        """Build an entry from store fields quickly (payloads already under `_content` and
        `_arguments`)."""
        e = cls.__new__(cls)
        e.__dict__.update(fields)
        return e

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def content_fields(e: Entry) -> dict[str, Any]:
    return {"kind": e.kind, "role": e.role, "content": e.content,
            "tool_call_id": e.tool_call_id, "tool_name": e.tool_name,
            "arguments": e.arguments, "usage": e.usage, "meta": e.meta}


def payload_digest(value: Any) -> str | None:
    """Hash of a payload field: the blob key when it sits in the blob store."""
    if isinstance(value, BlobRef):
        return value.key
    if value is None:
        return None
    return sha256_hex(canonical(value))


def chain_hash(e: Entry, prev_hash: str, content_digest: str | None | bool = False,
               arguments_digest: str | None | bool = False) -> str:
    """sha256 over the canonical JSON of the entry's content fields and the previous hash.

    Payload fields enter as their own sha256, so the chain can be checked without reading
    blobs, and does not change when a payload moves between the row and the blob store.
    Callers that already hold the payload digests may pass them.
    """
    if content_digest is False:
        content_digest = payload_digest(e.raw("content"))
    if arguments_digest is False:
        arguments_digest = payload_digest(e.raw("arguments"))
    doc = {
        "v": HASH_VERSION, "seq": e.seq, "kind": e.kind, "role": e.role,
        "content": content_digest, "tool_call_id": e.tool_call_id,
        "tool_name": e.tool_name, "arguments": arguments_digest,
        "usage": e.usage, "meta": e.meta, "epoch": e.epoch, "created_at": e.created_at,
        "prev": prev_hash,
    }
    return sha256_hex(canonical(doc))


def encode_field(value: Any, what: str, index: int) -> str:
    """canonical_text(value), or InvalidEntry naming the field when it is not JSON."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidEntry(f"{what} is not JSON-serialisable ({exc})", index=index) from None


def validate_entry(e: Any, index: int) -> None:
    """Refuse an entry that could not be stored or converted faithfully."""
    if not isinstance(e, Entry):
        raise InvalidEntry(f"expected an Entry, got {type(e).__name__}", index=index)
    if e.kind not in KINDS:
        raise InvalidEntry(
            f"unknown kind {e.kind!r} (expected one of {', '.join(sorted(KINDS))})", index=index)
    if e.role is not None and e.role not in ROLES:
        raise InvalidEntry(f"unknown role {e.role!r}", index=index)
    if e.kind == "message" and e.role is None:
        raise InvalidEntry("a message needs a role", index=index)
    if e.kind in ("tool_call", "tool_result") and not e.tool_call_id:
        raise InvalidEntry(f"a {e.kind} needs a tool_call_id", index=index)
    if e.kind == "tool_call":
        if not e.tool_name:
            raise InvalidEntry("a tool_call needs a tool_name", index=index)
        args = e.raw("arguments")
        if not isinstance(args, BlobRef):
            if not isinstance(args, str):
                raise InvalidEntry("tool_call arguments must be JSON text (a str)", index=index)
            try:
                json.loads(args)
            except ValueError as exc:
                raise InvalidEntry(
                    f"tool_call {e.tool_call_id!r} arguments are not JSON: {exc}", index=index
                ) from None
    elif e.raw("arguments") is not None:
        raise InvalidEntry(f"only a tool_call carries arguments, not a {e.kind}", index=index)
    if not isinstance(e.meta, dict):
        raise InvalidEntry("meta must be a dict", index=index)
    if e.usage is not None and not isinstance(e.usage, dict):
        raise InvalidEntry("usage must be a dict or None", index=index)


def validate_batch(entries: list[Entry]) -> list[str]:
    """Check every entry; return the tool_call ids that results in this batch need from
    earlier in the session (those not called earlier in the batch itself)."""
    if not entries:
        raise InvalidEntry("an append needs at least one entry")
    called: set[str] = set()
    needed: list[str] = []
    for i, e in enumerate(entries):
        validate_entry(e, i)
        if e.kind == "tool_call":
            called.add(e.tool_call_id or "")
        elif e.kind == "tool_result" and e.tool_call_id not in called:
            needed.append(e.tool_call_id or "")
    return needed
