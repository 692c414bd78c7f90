"""What a store's snapshots take, grouped (by session, by tenant, ...): `usage(store, group)`.

Per group (its snapshots: `group(snapshot id, info meta)` names the group, None leaves a
snapshot out):
- logical: what its snapshots restore to (the sum of their files' sizes);
- referenced: the stored (compressed) bytes of the distinct chunks its snapshots name,
  delta bases included: what keeping them costs, each chunk counted once per group;
- exclusive: of those, the chunks no other group's snapshot names: about what deleting
  the group would free at the next gc;
- shared: referenced - exclusive (chunks it shares with other groups: the base image's
  pages, a fork's origin).
The store's own total (`StoreUsage`) is the bytes of its packs, live or not (what a gc
has not reclaimed yet is the difference from the referenced bytes of all groups).

It reads every manifest and pack index (as a gc does): a report or a scheduled job, not
something to do per request.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import SnapshotNotFound
from .store import SnapshotStore


@dataclass
class Usage:
    snapshots: int = 0
    logical: int = 0
    referenced: int = 0
    exclusive: int = 0

    @property
    def shared(self) -> int:
        return self.referenced - self.exclusive

    def to_json(self) -> dict[str, int]:
        return {"snapshots": self.snapshots, "logical": self.logical,
                "stored": self.referenced, "exclusive": self.exclusive,
                "shared": self.shared}  # fmt: skip


@dataclass
class StoreUsage:
    snapshots: int = 0
    pack_bytes: int = 0  # every pack, live or not
    live_bytes: int = 0  # the distinct chunks some snapshot names
    groups: dict[str, Usage] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots, "pack_bytes": self.pack_bytes,
                "live_bytes": self.live_bytes,
                "groups": {k: v.to_json() for k, v in sorted(self.groups.items())}}


Grouping = Callable[[str, dict[str, Any]], str | None]


def usage(store: SnapshotStore, group: Grouping) -> StoreUsage:
    """See the module docstring."""
    return usages(store, {"": group})[""]


def usages(store: SnapshotStore, groupings: dict[str, Grouping]) -> dict[str, StoreUsage]:
    """`usage` under several groupings at once (the manifests and indexes read once)."""
    store.index.refresh()
    snaps: list[tuple[str, dict[str, Any], int, set[bytes]]] = []
    for sid in store.ids():
        try:
            m = store.manifest(sid)
        except SnapshotNotFound:
            continue  # deleted since the listing
        ids: set[bytes] = set()
        for ft in m.files:
            ids.update(ft.ids)
            ids.update(ft.bases.values())
        snaps.append((sid, dict(m.doc.get("meta") or {}), int(m.doc.get("logical_size", 0)),
                      ids))  # fmt: skip
    length: dict[bytes, int] = {}
    for _sid, _meta, _size, ids in snaps:
        for cid in ids:
            if cid not in length:
                loc = store.index.get(cid)
                length[cid] = loc.length if loc else 0
    pack_bytes = sum(size for key, _m, size in store.backend.list("packs/")
                     if key.endswith(".pack"))  # fmt: skip
    return {name: _grouped(snaps, length, group, pack_bytes)
            for name, group in groupings.items()}  # fmt: skip


def _grouped(snaps: list[tuple[str, dict[str, Any], int, set[bytes]]],
             length: dict[bytes, int], group: Grouping, pack_bytes: int) -> StoreUsage:  # fmt: skip
    out = StoreUsage(snapshots=len(snaps), pack_bytes=pack_bytes,
                     live_bytes=sum(length.values()))  # fmt: skip
    chunks_of: dict[str, set[bytes]] = defaultdict(set)
    owners: dict[bytes, set[str]] = defaultdict(set)
    for sid, meta, size, ids in snaps:
        g = group(sid, meta)
        for cid in ids:
            owners[cid].add(g or "")
        if g is None:
            continue
        u = out.groups.setdefault(g, Usage())
        u.snapshots += 1
        u.logical += size
        chunks_of[g] |= ids
    for g, ids in chunks_of.items():
        u = out.groups[g]
        u.referenced = sum(length[c] for c in ids)
        u.exclusive = sum(length[c] for c in ids if len(owners[c]) == 1)
    return out
