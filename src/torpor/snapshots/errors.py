"""Exceptions raised by the snapshot store (not found, corrupt, wrong key)."""

from __future__ import annotations


class SnapshotError(Exception):
    """Base class of every snapshot store error."""


class SnapshotNotFound(SnapshotError, KeyError):
    """No snapshot with this id exists in the store."""

    def __init__(self, snapshot_id: str, store: str = "") -> None:
        self.snapshot_id = snapshot_id
        self.store = store
        where = f" in {store}" if store else ""
        super().__init__(f"snapshot {snapshot_id!r} not found{where}")

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0])


class SnapshotCorrupt(SnapshotError):
    """A chunk, pack, index or manifest failed verification or is missing."""

    def __init__(self, message: str, snapshot_id: str | None = None,
                 chunk_id: str | None = None) -> None:
        self.snapshot_id = snapshot_id
        self.chunk_id = chunk_id
        parts = []
        if snapshot_id:
            parts.append(f"snapshot {snapshot_id}")
        if chunk_id:
            parts.append(f"chunk {chunk_id}")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class SnapshotKeyError(SnapshotError):
    """The snapshot is encrypted with a key this store does not hold (or no key is set)."""


class ObjectMissing(SnapshotError):
    """Internal: an object is absent from the backend."""
