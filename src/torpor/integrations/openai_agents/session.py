"""`TorporSession`: the OpenAI Agents SDK's conversation memory (its `Session` protocol) on
torpor's context log, on SQLite or PostgreSQL.

    from agents import Agent, Runner
    from torpor.integrations.openai_agents import TorporSession

    session = TorporSession("user-42", "sqlite:////var/lib/app/context.db")  # or postgresql://
    await Runner.run(agent, "hi", session=session)
    await Runner.run(agent, "and then?", session=session)   # the first run's history is sent

How items are stored. Each item the SDK adds is one log entry, in the log's own kinds, so
`torpor log show` and `torpor.context.to_openai` read the conversation: a message item is
a `message` entry (its role and content; its other fields, such as `id`, `type` and
`status`, under `meta["openai_agents"]`), a `function_call` a `tool_call` entry, a
`function_call_output` a `tool_result` entry (one whose call is not in the session is kept
as below), and any other item (reasoning, hosted tool calls, ...) a `framework_item`
marker that holds it whole. `get_items` gives back the items the SDK added, equal to them.

The log is append-only, so `pop_item` and `clear_session` delete nothing: each appends a
`hidden` marker (`torpor.context.markers.Hidden`) naming the entries the session no
longer shows (pop: the last visible item's seq; clear: every entry up to the head), and
`get_items` leaves those out. The history stays in the log, hash-chained, for audit.

The session's log id is `session_id` (a log session of its own: do not share it with a
torpor runtime session). Writes use the session's current epoch, so a TorporSession is not
fenced against another writer: run one writer per session at a time, as with the SDK's
SQLite session across processes. The log is synchronous; the methods run it in a worker
thread (`asyncio.to_thread`). `get_items` reads the session's entries from the start
(the hidden markers may name any of them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from agents.memory import SessionSettings
from agents.memory.session_settings import resolve_session_limit

from torpor.context import ContextLog, Entry, InvalidEntry, UnknownSession, open_log
from torpor.context.entry import ROLES
from torpor.context.markers import FrameworkItem, Hidden, parse

NS = "openai_agents"  # the meta namespace and the framework name in markers
Item = dict[str, Any]


def to_entry(item: Item) -> Entry:
    """The log entry that stores one of the SDK's input items."""
    item = dict(item)
    kind = item.get("type")
    if kind == "function_call" and {"call_id", "name", "arguments"} <= item.keys():
        call_id, name, args = item.pop("call_id"), item.pop("name"), item.pop("arguments")
        return Entry.tool_call(call_id, name, args, meta={NS: item})
    if kind == "function_call_output" and "call_id" in item:
        call_id, output = item.pop("call_id"), item.pop("output", None)
        return Entry.tool_result(call_id, output, meta={NS: item})
    if kind in (None, "message") and item.get("role") in ROLES and "content" in item:
        role, content = item.pop("role"), item.pop("content")
        return Entry.message(role, content, meta={NS: item})
    return _whole(item)


def _whole(item: Item) -> Entry:
    return FrameworkItem(framework=NS, item=item).entry()


def to_item(e: Entry) -> Item | None:
    """The SDK's item stored by this entry (None for an entry that stores none)."""
    rest = e.meta.get(NS)
    if e.kind == "marker":
        m = parse(e)
        return dict(m.item) if isinstance(m, FrameworkItem) and m.framework == NS else None
    if not isinstance(rest, dict):
        return None  # not written by a TorporSession (a torpor runtime's own entry)
    if e.kind == "tool_call":
        return {**rest, "call_id": e.tool_call_id, "name": e.tool_name,
                "arguments": e.arguments}
    if e.kind == "tool_result":
        return {**rest, "call_id": e.tool_call_id, "output": e.content}
    return {**rest, "role": e.role, "content": e.content}


def visible(entries: Iterable[Entry]) -> list[tuple[int, Item]]:
    """(seq, item) of the items the session shows: stored items not hidden since."""
    shown: dict[int, Item] = {}
    for e in entries:
        m = parse(e)
        if isinstance(m, Hidden):
            for seq in m.seqs:
                shown.pop(seq, None)
            if m.through:
                shown = {s: i for s, i in shown.items() if s > m.through}
            continue
        item = to_item(e)
        if item is not None:
            shown[e.seq] = item
    return list(shown.items())


class TorporSession:
    """The Agents SDK's `Session` protocol on a torpor context log (see the module's
    docstring for how items, pop and clear are stored).

    session_id: the log's session id. log: a `ContextLog`, or its URL
    (`sqlite:///...`, `postgresql://...`; default `$TORPOR_LOG`, else TORPOR_HOME's
    context.db). session_settings: the SDK's settings (`limit`: how many of the latest
    items `get_items` returns by default).
    """

    def __init__(self, session_id: str, log: ContextLog | str | None = None, *,
                 session_settings: SessionSettings | None = None) -> None:
        if not isinstance(session_id, str) or not session_id:
            raise ValueError("session_id must be a non-empty string")
        self.session_id = session_id
        self.session_settings = session_settings or SessionSettings()
        self._owns = not isinstance(log, ContextLog)
        self.log = log if isinstance(log, ContextLog) else open_log(log)

    # -- the protocol -------------------------------------------------------------------
    async def get_items(self, limit: int | None = None) -> list[Item]:
        """The history, oldest first; the latest `limit` items (default: the settings')."""
        n = resolve_session_limit(limit, self.session_settings)
        items = [i for _, i in await asyncio.to_thread(self._visible)]
        if n is None:
            return items
        return items[-n:] if n > 0 else []

    async def add_items(self, items: list[Item]) -> None:
        """Append the items, in one atomic append."""
        if items:
            await asyncio.to_thread(self._append, [to_entry(i) for i in items])

    async def pop_item(self) -> Item | None:
        """Hide the most recent item and return it (None when the session shows none)."""
        return await asyncio.to_thread(self._pop)

    async def clear_session(self) -> None:
        """Hide every item so far (the log keeps them)."""
        await asyncio.to_thread(self._clear)

    def close(self) -> None:
        """Close the log if this session opened it (from a URL)."""
        if self._owns:
            self.log.close()

    # -- the log ------------------------------------------------------------------------
    def _visible(self) -> list[tuple[int, Item]]:
        try:
            return visible(self.log.iter(self.session_id))
        except UnknownSession:
            return []

    def _epoch(self) -> int:
        try:
            return self.log.session(self.session_id).epoch
        except UnknownSession:
            return 0  # the first append creates the session

    def _append(self, entries: list[Entry]) -> None:
        try:
            self.log.append(self.session_id, entries, epoch=self._epoch())
        except InvalidEntry as e:
            # a function_call_output whose call the session never saw: the log refuses a
            # tool_result without its call, so it is kept whole instead
            bad = entries[e.index] if e.index is not None else None
            if bad is None or bad.kind != "tool_result":
                raise
            fixed = [_whole(to_item(x) or {}) if x.kind == "tool_result"
                     and x.tool_call_id == bad.tool_call_id else x for x in entries]
            self._append(fixed)

    def _pop(self) -> Item | None:
        shown = self._visible()
        if not shown:
            return None
        seq, item = shown[-1]
        self._append([Hidden(seqs=[seq], by=f"{NS}.pop_item").entry()])
        return item

    def _clear(self) -> None:
        try:
            head = self.log.head_seq(self.session_id)
        except UnknownSession:
            return
        if head:
            self._append([Hidden(through=head, by=f"{NS}.clear_session").entry()])
