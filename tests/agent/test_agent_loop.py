"""The agent loop on its own (no sandbox): compaction of a long conversation, seen through
what the model is actually sent (the openai SDK against the fake server)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from torpor.agent.loop import run_turn
from torpor.agent.models import open_model
from torpor.agent.tools import Tool, ToolRegistry
from torpor.context import Entry

from .fakellm import OPENAI_PATH, FakeLLM


class MemoryTranscript:
    """An append-only list standing in for the context log."""

    def __init__(self) -> None:
        self.log: list[Entry] = []

    def entries(self) -> list[Entry]:
        return list(self.log)

    def append(self, entries: list[Entry], key: str | None = None) -> list[int]:
        seqs = []
        for e in entries:
            self.log.append(dataclasses.replace(e, seq=len(self.log) + 1))
            seqs.append(len(self.log))
        return seqs


def echo(_workspace: Any, text: str) -> str:
    return text


TOOLS = ToolRegistry([Tool("echo", "Echo the text.", {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}, echo)])


def test_a_long_conversation_is_compacted_and_the_log_kept_whole(fake_llm: FakeLLM) -> None:
    model = open_model("openai:gpt-4o-mini", base_url=fake_llm.openai_url, api_key="sk-test",
                       context_window=2000)  # fmt: skip
    tr = MemoryTranscript()
    for turn in range(12):  # each turn: a user message, a tool call with ~1 KB, an answer
        tr.append([Entry.message("user", f"turn {turn}: echo something long")])
        long = f"t{turn} " + "x" * 1000
        fake_llm.reply(tool_calls=[{"name": "echo", "arguments": {"text": long}}])
        fake_llm.reply(text=f"done {turn}")
        out = run_turn(tr, model, TOOLS, workspace=None, system="be brief")  # type: ignore[arg-type]
        assert out.text == f"done {turn}"
    sent = [r.body for r in fake_llm.requests if r.path == OPENAI_PATH]
    summaries = [e for e in tr.log if e.kind == "marker" and e.content.get("marker") == "summary"]
    assert summaries, "12 turns of ~1 KB each never triggered compaction in a 2,000-token window"
    # the log is never rewritten: every turn's messages, calls and results are still there
    assert sum(1 for e in tr.log if e.kind == "tool_result") == 12
    assert [e.seq for e in tr.log] == list(range(1, len(tr.log) + 1))
    # the model got the summary plus the recent tail, within its window, not the whole log
    last = sent[-1]["messages"]
    texts = [m.get("content") or "" for m in last]
    summary = next(t for t in texts if "Summary of the earlier conversation" in t)
    assert "tool call echo" in summary and "turn 8" in summary  # what was dropped, in brief
    assert "turn 11: echo something long" in texts
    assert not any(t.startswith("turn 0:") for t in texts), "old turns were sent again in full"
    assert sum(len(str(m)) for m in last) < 4 * 2000
    assert summaries[-1].content["upto_seq"] < len(tr.log)


def test_compaction_stays_within_the_window_however_long_the_session(fake_llm: FakeLLM) -> None:
    # Each compaction folds the previous summary into the new one; the summary itself is
    # bounded, so a session of any length keeps fitting its window (a summary of every
    # entry since the start would outgrow the window after a few dozen turns).
    window = 2000
    model = open_model("openai:gpt-4o-mini", base_url=fake_llm.openai_url, api_key="sk-test",
                       context_window=window)  # fmt: skip
    tr = MemoryTranscript()
    turns = 60
    for turn in range(turns):
        tr.append([Entry.message("user", f"turn {turn}: echo something long")])
        long = f"t{turn} " + "x" * 1000
        fake_llm.reply(tool_calls=[{"name": "echo", "arguments": {"text": long}}])
        fake_llm.reply(text=f"done {turn}")
        run_turn(tr, model, TOOLS, workspace=None, system="be brief")  # type: ignore[arg-type]
    sent = [r.body for r in fake_llm.requests if r.path == OPENAI_PATH]
    assert len(sent) == 2 * turns
    sizes = [len(json.dumps(b["messages"])) for b in sent]
    assert max(sizes) < 4 * window, f"a request of {max(sizes)} chars for a {window}-token window"
    summaries = [e.content for e in tr.log if e.kind == "marker"
                 and e.content.get("marker") == "summary"]  # fmt: skip
    assert len(summaries) >= 3
    last = summaries[-1]["text"]
    assert len(last) <= 0.25 * 4 * window
    assert f"turn {turns - 3}" in last or f"turn {turns - 2}" in last  # the newest survive
    assert "earlier lines omitted" in last  # and it says what it left out
    assert sum(1 for e in tr.log if e.kind == "tool_result") == turns  # the log is whole


def test_a_scripted_model_keeps_its_place_across_compactions(tmp_path) -> None:
    # The scripted model plays turn N for a view holding N assistant messages; after a
    # compaction the view holds only the recent tail, and the ids of its own tool calls
    # (call_<turn>_<i>) must keep it from playing earlier turns again.
    turns = 30
    lines = []
    for t in range(turns):
        lines.append(json.dumps({"text": f"step {t}", "tool_calls": [
            {"name": "echo", "arguments": {"text": f"t{t} " + "y" * 1000}}]}))
        lines.append(json.dumps({"text": f"done {t}"}))
    script = tmp_path / "turns.jsonl"
    script.write_text("\n".join(lines) + "\n")
    model = open_model(f"script:{script}", context_window=2000)
    tr = MemoryTranscript()
    for t in range(turns):
        tr.append([Entry.message("user", f"turn {t}")])
        out = run_turn(tr, model, TOOLS, workspace=None)  # type: ignore[arg-type]
        assert out.text == f"done {t}"
    assert any(e.kind == "marker" and e.content.get("marker") == "summary" for e in tr.log)
    calls = [e.tool_call_id for e in tr.log if e.kind == "tool_call"]
    assert calls == [f"call_{2 * t}_0" for t in range(turns)]
