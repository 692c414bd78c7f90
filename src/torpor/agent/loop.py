"""The agent loop: ask the model, log its answer, run its tool calls, log the results.

It repeats until the model answers without tool calls, which is a wait point: the agent
yields to its user. The loop knows nothing of durability: it reads and appends through a
`Transcript` (the runtime binds one to the context log and a fencing epoch), and a model
failure simply propagates (the runtime decides to retry later). Every tool call is logged
before it runs and its result after, so a crash in between is visible in the log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torpor.agent.models import Model
from torpor.agent.tools import ToolRegistry, Workspace
from torpor.agent.types import ModelTurn, ToolCall, ToolResult
from torpor.context import Entry, markers

COMPACT_AT = 0.8  # compact when a request would use this share of the context window
KEEP_AFTER_COMPACTION = 0.4  # ... keeping recent entries worth this share
SUMMARY_SHARE = 0.2  # ... and a summary of the rest worth at most this share


class Transcript(Protocol):
    def entries(self) -> list[Entry]: ...

    def append(self, entries: list[Entry], key: str | None = None) -> list[int]: ...


@dataclass
class LoopHooks:
    """Optional callbacks: progress for people, heartbeats and snapshot policy for the
    runtime. A hook may raise to stop the loop (e.g. the lease was lost)."""

    on_model_turn: Callable[[ModelTurn, float], None] | None = None
    on_tool_start: Callable[[ToolCall], None] | None = None
    on_tool_end: Callable[[ToolCall, ToolResult], None] | None = None


def marker_note(e: Entry) -> str | None:
    """The text a model should see for a torpor marker, or None to hide it."""
    return markers.model_note(e)


def latest_summary(entries: list[Entry]) -> tuple[str | None, int]:
    """The text of the newest summary marker and the last seq it covers ((None, 0): none)."""
    for e in reversed(entries):
        m = markers.of(e, markers.Summary)
        if m is not None:
            return str(m.text), int(m.upto_seq)
    return None, 0


def model_view(entries: list[Entry]) -> list[Entry]:
    """What the model is sent: messages, tool calls and results, plus notes for markers
    that concern it; if the log was compacted, the latest summary and every entry after
    the last one it covers (the kept tail precedes the summary marker in the log)."""
    summary, upto = latest_summary(entries)
    start = 0
    if summary is not None:
        while start < len(entries) and entries[start].seq <= upto:
            start += 1
    view: list[Entry] = []
    if summary is not None:
        note = f"[torpor] Summary of the earlier conversation:\n{summary}"
        view.append(Entry.message("user", note))
    for e in entries[start:]:
        if e.kind == "marker":
            note = marker_note(e)
            if note:
                view.append(Entry.message("user", note))
            continue
        view.append(e)
    return view


def _short(value: Any, n: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"


def summarize(entries: list[Entry]) -> str:
    """A mechanical summary of entries being compacted away: who said what, which tools
    ran with what outcome. Written by hand because it must cost nothing and never fail;
    a model-written summary can be appended as a later marker by a caller that wants one."""
    lines = []
    for e in entries:
        if e.kind == "message" and e.role in ("user", "assistant") and e.content:
            lines.append(f"- {e.role}: {_short(e.content)}")
        elif e.kind == "tool_call":
            lines.append(f"- tool call {e.tool_name}({_short(e.arguments or '', 120)})")
        elif e.kind == "tool_result":
            err = " (error)" if (e.meta or {}).get("is_error") else ""
            lines.append(f"  result{err}: {_short(e.content, 120)}")
    return "\n".join(lines)


def bounded(text: str, limit: int) -> str:
    """The newest lines of `text` that fit in `limit` characters, saying how many older
    lines were left out."""
    if len(text) <= limit:
        return text
    lines, kept, size = text.split("\n"), [], 0
    while lines and size + len(lines[-1]) + 1 <= limit - 60:
        size += len(lines[-1]) + 1
        kept.append(lines.pop())
    return "\n".join([f"[... {len(lines)} earlier lines omitted]", *reversed(kept)])


def maybe_compact(
    transcript: Transcript, model: Model, system: str | None, tools: ToolRegistry
) -> list[Entry]:
    """Return the model view, first appending a summary marker if the view would not
    fit the model's context window. The log is never rewritten. A new summary folds in
    the previous one and is itself kept within SUMMARY_SHARE of the window, so a session
    of any length fits."""
    entries = transcript.entries()
    view = model_view(entries)
    specs = tools.specs()
    budget = model.context_window
    if model.estimate_tokens(system, view, specs) <= COMPACT_AT * budget:
        return view
    # Keep the newest entries worth KEEP_AFTER_COMPACTION of the window, cutting only just
    # before a user message so that no tool call is separated from its result; what came
    # before (since the previous summary) joins the summary.
    previous, covered = latest_summary(entries)
    real = [e for e in entries if e.kind != "marker" and e.seq > covered]
    keep_from = len(real)
    for i in range(len(real) - 1, -1, -1):
        if model.estimate_tokens(None, real[i:], []) > KEEP_AFTER_COMPACTION * budget:
            break
        if real[i].kind == "message" and real[i].role == "user":
            keep_from = i
    if keep_from == 0 or keep_from >= len(real):
        return view  # nothing sensible to cut
    dropped, upto = real[:keep_from], real[keep_from - 1].seq
    text = summarize(dropped) if previous is None else previous + "\n" + summarize(dropped)
    # ~4 characters per token, as Model.estimate_tokens counts
    text = bounded(text, int(SUMMARY_SHARE * budget * 4))
    transcript.append([markers.Summary(upto_seq=upto, text=text, entries=len(dropped)).entry()])
    return model_view(transcript.entries())


def run_turn(
    transcript: Transcript,
    model: Model,
    tools: ToolRegistry,
    workspace: Workspace,
    *,
    system: str | None = None,
    hooks: LoopHooks | None = None,
    max_steps: int = 200,
) -> ModelTurn:
    """Run the loop until the model stops calling tools; returns its final answer."""
    hooks = hooks or LoopHooks()
    for step in range(max_steps):
        view = maybe_compact(transcript, model, system, tools)
        t0 = time.monotonic()
        turn = model.complete(system, view, tools.specs())
        if hooks.on_model_turn:
            hooks.on_model_turn(turn, time.monotonic() - t0)
        batch = [
            Entry.message(
                "assistant",
                turn.text,
                usage=turn.usage or None,
                meta={"model": turn.model, "stop_reason": turn.stop_reason},
            )
        ]
        batch += [Entry.tool_call(c.id, c.name, c.arguments) for c in turn.tool_calls]
        seqs = transcript.append(batch)
        if not turn.tool_calls:
            return turn
        for call in turn.tool_calls:
            if hooks.on_tool_start:
                hooks.on_tool_start(call)
            result = tools.run(call.name, call.arguments, workspace)
            transcript.append(
                [
                    Entry.tool_result(
                        call.id,
                        result.content,
                        meta={"is_error": result.is_error, **result.meta},
                    )
                ],
                key=f"result-{call.id}-{seqs[0]}",
            )
            if hooks.on_tool_end:
                hooks.on_tool_end(call, result)
        if step == max_steps - 1:
            transcript.append([markers.StepLimit(steps=max_steps).entry()])
    return turn
