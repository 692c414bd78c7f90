"""Restoring a snapshot from older ones already on local disk: which byte ranges to copy.

A machine that took or restored an older snapshot of the same sandbox still has its
files (its hot copy). Two checkpoints a wait point apart share ~97 % of their pages, so
copying the shared chunks from that copy (in the kernel, `copy_file_range`) and fetching
only the others turns a restore that fetches and decodes every chunk into one that
decodes a few hundred. `plan` decides, from the two seek tables alone, which ranges are
copied and which chunks are fetched; it is pure, so it is tested without a store.

A seed is trusted as the caller vouches for it: the files of that snapshot, checked
intact (the runtime checks each hot copy's size and XXH3 digest before it offers it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .manifest import FileTable


@dataclass
class SeedPlan:
    """How one file of a snapshot is rebuilt: ranges copied from seeds, chunks fetched."""

    copies: list[tuple[int, int, int, int]] = field(default_factory=list)
    """(seed index, destination offset, seed offset, length), coalesced into runs."""
    fetch: list[int] = field(default_factory=list)
    """Indexes into the target table of the chunks to fetch from the store."""

    @property
    def copied_bytes(self) -> int:
        return sum(c[3] for c in self.copies)


def plan(target: FileTable, seeds: list[FileTable], holes: frozenset[bytes] = frozenset()
         ) -> SeedPlan:  # fmt: skip
    """Which of target's chunks come from which seed, and which must be fetched.

    A chunk is found in a seed by its id (content hash), wherever it sits there: memory
    allocated or freed between two checkpoints shifts the pages after it. The first
    seed that holds a chunk supplies it. Chunks whose id is in `holes` (the all-zero
    page) are neither copied nor fetched: the file is created sparse.
    """
    where: dict[bytes, tuple[int, int, int]] = {}
    for s, seed in enumerate(seeds):
        for off, ln, cid in zip(seed.offsets, seed.lengths, seed.ids, strict=True):
            where.setdefault(cid, (s, off, ln))
    out = SeedPlan()
    copies = out.copies
    for i, (off, ln, cid) in enumerate(zip(target.offsets, target.lengths, target.ids,
                                           strict=True)):  # fmt: skip
        if cid in holes:
            continue
        found = where.get(cid)
        if found is None or found[2] != ln:
            out.fetch.append(i)
            continue
        s, soff, _ = found
        if copies:
            ps, pdst, psrc, pln = copies[-1]
            if ps == s and pdst + pln == off and psrc + pln == soff:
                copies[-1] = (s, pdst, psrc, pln + ln)
                continue
        copies.append((s, off, soff, ln))
    return out
