"""Conversion between log entries and the OpenAI chat-completions / Anthropic Messages formats.

Mapping (both ways):
- a message is one `message` entry; content is kept as given (text or provider-native parts);
- an assistant's tool calls (`tool_calls` / `tool_use` blocks) are `tool_call` entries that
  follow their assistant `message` entry;
- tool results (`tool` messages / `tool_result` blocks) are `tool_result` entries;
- markers are torpor's own and are left out of both formats.

Whatever a format carries that the entry model has no field for (extra keys, the position of
a tool_use block between text blocks, ...) is kept in `meta["openai"]` / `meta["anthropic"]`,
so `to_openai(from_openai(m)) == m` and `to_anthropic(from_anthropic(p)) == p`.
"""

from __future__ import annotations

import json
from typing import Any

from .entry import Entry

OpenAIMessage = dict[str, Any]


def _meta(ns: str, **kv: Any) -> dict[str, Any]:
    kv = {k: v for k, v in kv.items() if v}
    return {ns: kv} if kv else {}


def _ns(e: Entry, ns: str) -> dict[str, Any]:
    value = e.meta.get(ns)
    return value if isinstance(value, dict) else {}


# -- OpenAI chat completions -------------------------------------------------------------

def from_openai(messages: list[OpenAIMessage]) -> list[Entry]:
    """Entries for an OpenAI chat-completions message list."""
    out: list[Entry] = []
    for m in messages:
        role = m["role"]
        absent = [] if "content" in m else ["content"]
        if role == "tool":
            extra = {k: v for k, v in m.items() if k not in ("role", "content", "tool_call_id")}
            out.append(Entry.tool_result(m["tool_call_id"], m.get("content"),
                                         meta=_meta("openai", extra=extra, absent=absent)))
            continue
        extra = {k: v for k, v in m.items() if k not in ("role", "content", "tool_calls")}
        calls = m.get("tool_calls")
        flags = {"empty_tool_calls": True} if calls == [] else {}
        out.append(Entry.message(role, m.get("content"),
                                 meta=_meta("openai", extra=extra, absent=absent, **flags)))
        for tc in calls or []:
            fn = tc.get("function", {})
            tc_extra = {k: v for k, v in tc.items() if k not in ("id", "type", "function")}
            fn_extra = {k: v for k, v in fn.items() if k not in ("name", "arguments")}
            type_ = tc.get("type", "function")
            out.append(Entry.tool_call(
                tc["id"], fn["name"], fn["arguments"],
                meta=_meta("openai", extra=tc_extra, function_extra=fn_extra,
                           type=None if type_ == "function" else type_,
                           no_type="type" not in tc)))
    return out


def to_openai(entries: list[Entry]) -> list[OpenAIMessage]:
    """An OpenAI chat-completions message list for these entries (markers left out)."""
    out: list[OpenAIMessage] = []
    open_assistant: OpenAIMessage | None = None  # the message tool calls attach to
    for e in entries:
        if e.kind == "tool_call":
            if open_assistant is None:
                open_assistant = {"role": "assistant", "content": None}
                out.append(open_assistant)
            m = _ns(e, "openai")
            fn: dict[str, Any] = {"name": e.tool_name, "arguments": e.arguments}
            fn.update(m.get("function_extra", {}))
            tc: dict[str, Any] = {"id": e.tool_call_id}
            if not m.get("no_type"):
                tc["type"] = m.get("type", "function")
            tc["function"] = fn
            tc.update(m.get("extra", {}))
            open_assistant.setdefault("tool_calls", []).append(tc)
            continue
        open_assistant = None
        m = _ns(e, "openai")
        if e.kind == "tool_result":
            msg: OpenAIMessage = {"role": "tool", "tool_call_id": e.tool_call_id,
                                  "content": e.content}
        elif e.kind == "message":
            a = _ns(e, "anthropic")
            if a.get("tool_result_at") and e.content == []:
                continue  # only held the place of tool_result blocks, now tool messages
            msg = {"role": e.role, "content": e.content}
            if e.role == "assistant":
                open_assistant = msg
                if m.get("empty_tool_calls"):
                    msg["tool_calls"] = []
        else:
            continue
        if "content" in m.get("absent", []) and msg.get("content") is None:
            del msg["content"]
        msg.update(m.get("extra", {}))
        out.append(msg)
    return out


# -- Anthropic Messages ------------------------------------------------------------------

def from_anthropic(payload: dict[str, Any] | list[dict[str, Any]]) -> list[Entry]:
    """Entries for an Anthropic Messages request: `{"system": ..., "messages": [...]}` or
    just the messages list."""
    if isinstance(payload, list):
        payload = {"messages": payload}
    out: list[Entry] = []
    if "system" in payload:
        out.append(Entry.message("system", payload["system"]))
    for m in payload["messages"]:
        role, content = m["role"], m["content"]
        extra = {k: v for k, v in m.items() if k not in ("role", "content")}
        if not isinstance(content, list):
            out.append(Entry.message(role, content, meta=_meta("anthropic", extra=extra)))
            continue
        if role == "assistant":
            at = [i for i, b in enumerate(content) if b.get("type") == "tool_use"]
            kept = [b for b in content if b.get("type") != "tool_use"]
            out.append(Entry.message(role, kept,
                                     meta=_meta("anthropic", extra=extra, tool_use_at=at)))
            for i in at:
                b = content[i]
                b_extra = {k: v for k, v in b.items() if k not in ("type", "id", "name", "input")}
                out.append(Entry.tool_call(b["id"], b["name"],
                                           json.dumps(b["input"], ensure_ascii=False),
                                           meta=_meta("anthropic", extra=b_extra)))
        else:
            at = [i for i, b in enumerate(content) if b.get("type") == "tool_result"]
            for i in at:
                b = content[i]
                b_extra = {k: v for k, v in b.items()
                           if k not in ("type", "tool_use_id", "content")}
                out.append(Entry.tool_result(
                    b["tool_use_id"], b.get("content"),
                    meta=_meta("anthropic", extra=b_extra,
                               absent=[] if "content" in b else ["content"])))
            kept = [b for b in content if b.get("type") != "tool_result"]
            out.append(Entry.message(role, kept,
                                     meta=_meta("anthropic", extra=extra, tool_result_at=at)))
    return out


def _blocks(content: Any) -> list[Any]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content)


def _place(base: list[Any], blocks: list[Any], at: list[int] | None) -> list[Any]:
    if at and len(at) == len(blocks):
        merged = list(base)
        for i, b in sorted(zip(at, blocks, strict=True), key=lambda p: p[0]):
            merged.insert(i, b)
        return merged
    return base + blocks


def to_anthropic(entries: list[Entry]) -> dict[str, Any]:
    """An Anthropic Messages request body (`system` only when there is one, `messages`)."""
    systems = [e for e in entries if e.kind == "message" and e.role in ("system", "developer")]
    body: dict[str, Any] = {}
    if len(systems) == 1:
        body["system"] = systems[0].content
    elif systems:
        body["system"] = [b for e in systems for b in _blocks(e.content)]
    messages: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []  # tool_result blocks waiting for their user message
    asst: tuple[Entry | None, list[dict[str, Any]]] | None = None

    def flush_assistant() -> None:
        nonlocal asst
        if asst is None:
            return
        base, uses = asst
        asst = None
        a = _ns(base, "anthropic") if base else {}
        if not uses:
            content: Any = base.content if base else []
        else:
            content = _place(_blocks(base.content if base else None), uses, a.get("tool_use_at"))
        msg = {"role": "assistant", "content": content}
        msg.update(a.get("extra", {}))
        messages.append(msg)

    def flush_results(anchor: Entry | None = None) -> None:
        nonlocal pending
        if anchor is not None:
            a = _ns(anchor, "anthropic")
            content: Any = _place(_blocks(anchor.content), pending, a.get("tool_result_at"))
            msg = {"role": "user", "content": content}
            msg.update(a.get("extra", {}))
            messages.append(msg)
        elif pending:
            messages.append({"role": "user", "content": pending})
        pending = []

    for e in entries:
        if e.kind == "marker" or (e.kind == "message" and e.role in ("system", "developer")):
            continue
        if e.kind == "tool_call":
            flush_results()
            if asst is None:
                asst = (None, [])
            a = _ns(e, "anthropic")
            block = {"type": "tool_use", "id": e.tool_call_id, "name": e.tool_name,
                     "input": e.args()}
            block.update(a.get("extra", {}))
            asst[1].append(block)
            continue
        flush_assistant()
        if e.kind == "tool_result":
            a = _ns(e, "anthropic")
            block = {"type": "tool_result", "tool_use_id": e.tool_call_id}
            if not ("content" in a.get("absent", []) and e.content is None):
                block["content"] = e.content
            block.update(a.get("extra", {}))
            pending.append(block)
            continue
        a = _ns(e, "anthropic")
        if e.role == "user" and a.get("tool_result_at") and len(a["tool_result_at"]) == len(
                pending):
            flush_results(anchor=e)
            continue
        flush_results()
        if e.role == "assistant":
            asst = (e, [])
            continue
        msg = {"role": e.role, "content": e.content}
        msg.update(a.get("extra", {}))
        messages.append(msg)
    flush_assistant()
    flush_results()
    body["messages"] = messages
    return body
