"""Lossless conversion between log entries and OpenAI / Anthropic message formats, checked
with hypothesis, both in memory and through a real SQLite log."""

from __future__ import annotations

import itertools
import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torpor.context import Entry, from_anthropic, from_openai, open_log, to_anthropic, to_openai

_ids = itertools.count()

text = st.text(max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12)
    | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=4)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids)}"


# -- OpenAI -------------------------------------------------------------------------------

@st.composite
def openai_conversations(draw: st.DrawFn) -> list[dict]:
    msgs: list[dict] = []
    if draw(st.booleans()):
        msgs.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(text)})
    for _ in range(draw(st.integers(0, 4))):
        user: dict = {"role": "user", "content": draw(
            text | st.lists(st.builds(lambda t: {"type": "text", "text": t}, text), max_size=2))}
        if draw(st.booleans()):
            user["name"] = draw(st.text("abcxyz", min_size=1, max_size=5))
        msgs.append(user)
        asst: dict = {"role": "assistant", "content": draw(st.none() | text)}
        calls = []
        for _ in range(draw(st.integers(0, 3))):
            args = json.dumps(draw(json_objects), indent=draw(st.sampled_from([None, 2])))
            calls.append({"id": _id("call"), "type": "function",
                          "function": {"name": draw(st.sampled_from(["shell", "read", "w"])),
                                       "arguments": args}})
        if calls or draw(st.booleans()):
            asst["tool_calls"] = calls
        if draw(st.booleans()):
            asst["refusal"] = None
        msgs.append(asst)
        for c in draw(st.permutations(calls)):
            msgs.append({"role": "tool", "tool_call_id": c["id"], "content": draw(text)})
    return msgs


@pytest.fixture(scope="module")
def sqlite_log(tmp_path_factory):
    with open_log(f"sqlite:///{tmp_path_factory.mktemp('conv') / 'c.db'}",
                  blob_threshold=200) as log:
        yield log


@settings(max_examples=150, deadline=None)
@given(openai_conversations())
def test_openai_round_trip_in_memory(msgs):
    assert to_openai(from_openai(msgs)) == msgs


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(openai_conversations())
def test_openai_round_trip_through_the_log(sqlite_log, msgs):
    entries = from_openai(msgs)
    session = uuid.uuid4().hex
    if entries:
        sqlite_log.append(session, entries, epoch=0)
        assert sqlite_log.verify(session).ok
        assert to_openai(sqlite_log.read(session)) == msgs


# -- Anthropic ----------------------------------------------------------------------------

text_block = st.builds(lambda t: {"type": "text", "text": t}, text)
image_block = st.builds(lambda d: {"type": "image", "source": {"type": "base64",
                                                              "media_type": "image/png",
                                                              "data": d}}, text)


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict:
    body: dict = {}
    if draw(st.booleans()):
        body["system"] = draw(text | st.lists(text_block, min_size=1, max_size=2))
    msgs: list[dict] = []
    for _ in range(draw(st.integers(0, 4))):
        msgs.append({"role": "user", "content": draw(
            text | st.lists(text_block | image_block, max_size=3))})
        uses = []
        for _ in range(draw(st.integers(0, 3))):
            b = {"type": "tool_use", "id": _id("toolu"),
                 "name": draw(st.sampled_from(["bash", "edit"])), "input": draw(json_objects)}
            if draw(st.booleans()):
                b["cache_control"] = {"type": "ephemeral"}
            uses.append(b)
        if uses:
            others = draw(st.lists(text_block, max_size=2))
            content = draw(st.permutations(others + uses))
        else:
            content = draw(text | st.lists(text_block, max_size=2))
        msgs.append({"role": "assistant", "content": content})
        if uses:
            results = []
            for u in draw(st.permutations(uses)):
                r: dict = {"type": "tool_result", "tool_use_id": u["id"]}
                if draw(st.booleans()):
                    r["content"] = draw(text | st.lists(text_block, max_size=2))
                if draw(st.booleans()):
                    r["is_error"] = draw(st.booleans())
                results.append(r)
            extra = draw(st.lists(text_block, max_size=1))
            msgs.append({"role": "user", "content": draw(st.permutations(results + extra))})
    body["messages"] = msgs
    return body


@settings(max_examples=150, deadline=None)
@given(anthropic_requests())
def test_anthropic_round_trip_in_memory(body):
    assert to_anthropic(from_anthropic(body)) == body


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(anthropic_requests())
def test_anthropic_round_trip_through_the_log(sqlite_log, body):
    entries = from_anthropic(body)
    session = uuid.uuid4().hex
    if entries:
        sqlite_log.append(session, entries, epoch=0)
        assert to_anthropic(sqlite_log.read(session)) == body


# -- across formats -----------------------------------------------------------------------

def test_openai_conversation_exports_as_anthropic():
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "shell", "arguments": '{"cmd": "ls"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "a.txt\nb.txt"},
        {"role": "assistant", "content": "Two files."},
    ]
    body = to_anthropic(from_openai(msgs))
    assert body == {"system": "be brief", "messages": [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "c1", "name": "shell", "input": {"cmd": "ls"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "a.txt\nb.txt"}]},
        {"role": "assistant", "content": "Two files."},
    ]}


def test_anthropic_conversation_exports_as_openai():
    body = {"system": "sys", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "bash", "input": {"c": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": "ok"}]},
    ]}
    msgs = to_openai(from_anthropic(body))
    assert msgs[0] == {"role": "system", "content": "sys"}
    assert msgs[2]["tool_calls"][0]["function"] == {"name": "bash", "arguments": '{"c": 1}'}
    assert msgs[3] == {"role": "tool", "tool_call_id": "t1", "content": "ok"}
    assert len(msgs) == 4


def test_markers_are_left_out_of_both_formats():
    entries = [Entry.message("user", "hi"), Entry.marker("snapshot_taken", id="snap1")]
    assert to_openai(entries) == [{"role": "user", "content": "hi"}]
    assert to_anthropic(entries) == {"messages": [{"role": "user", "content": "hi"}]}
