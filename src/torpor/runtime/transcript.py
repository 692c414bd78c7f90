"""A session's context log as one worker sees it: read incrementally, written through
the worker's fencing epoch (an earlier holder's appends are refused)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from torpor.agent.loop import model_view
from torpor.context import Entry, Marker
from torpor.context.entry import now_iso
from torpor.runtime.besteffort import best_effort

if TYPE_CHECKING:
    from torpor.context import ContextLog


class Transcript:
    """The context log seen through one writer's epoch."""

    def __init__(self, log: ContextLog, session: str, epoch: int) -> None:
        self.log, self.session, self.epoch = log, session, epoch
        self._cache: list[Entry] = []
        self._mu = threading.Lock()
        self.restored: str | None = None  # the snapshot this turn's sandbox came from
        self.noted: set[str] = set()  # tool calls a recovery note already named as lost

    def entries(self) -> list[Entry]:
        # This worker is the session's only writer (fenced by its epoch), so reading just
        # what was appended since the last call keeps the cost of a step independent of
        # the session's length. The lock lets a prefetch thread fill the cache while the
        # worker appends (appending does not touch the cache).
        with self._mu:
            after = self._cache[-1].seq if self._cache else 0
            self._cache.extend(self.log.read(self.session, after=after))
            return list(self._cache)

    def prefetch(self) -> threading.Thread:
        """Read the log in a thread of its own, and load the payloads the model will be
        sent that sit in the blob store (large tool outputs: at 1,000 calls of 1 MB each
        that is ~100 MB and most of the time); join it before the next `entries`. A read
        that fails here is retried, and raises, in the next `entries`."""

        def read() -> None:
            with best_effort("reading the log ahead", level=logging.DEBUG):
                for e in model_view(self.entries()):
                    _ = e.content, e.arguments  # loaded once, kept in the cached entries

        t = threading.Thread(target=read, name=f"prefetch-{self.session}", daemon=True)
        t.start()
        return t

    def append(self, entries: list[Entry], key: str | None = None) -> list[int]:
        return self.log.append(self.session, entries, epoch=self.epoch, idempotency_key=key)

    def write(self, item: Entry | Marker, key: str | None = None) -> Entry:
        """Append one entry (or marker); returns the entry with its seq and session (and
        about the time it was written: the event a worker emits for it has it)."""
        e = item.entry() if isinstance(item, Marker) else item
        [e.seq] = self.append([e], key=key)
        e.session, e.created_at = self.session, now_iso()
        return e


def answer_open_calls(tr: Transcript, text: str) -> list[str]:
    """Give every tool call of the log that has no result one that says it did not run
    (every call needs a result before the model is asked again). Returns their ids."""
    entries = tr.entries()
    answered = {e.tool_call_id for e in entries if e.kind == "tool_result"}
    open_ = [e.tool_call_id or "" for e in entries
             if e.kind == "tool_call" and e.tool_call_id not in answered]  # fmt: skip
    for cid in open_:
        tr.append([Entry.tool_result(cid, text, meta={"is_error": True, "cancelled": True})],
                  key=f"cancel-{cid}")  # fmt: skip
    return open_
