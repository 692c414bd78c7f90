"""TorporSession: the OpenAI Agents SDK (0.24) runs with it as its memory, on SQLite and
PostgreSQL, against a fake Responses API server: a second run sends the first run's
history; pop and clear hide items and the log keeps them; items come back equal."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from agents import Agent, Runner, function_tool, set_tracing_disabled
from agents.memory import Session, SessionSettings
from agents.models.openai_responses import OpenAIResponsesModel
from openai import AsyncOpenAI

from tests.agent.fakellm import RESPONSES_PATH, FakeLLM
from torpor.context import open_log
from torpor.context.markers import Hidden, parse
from torpor.integrations.openai_agents import TorporSession

set_tracing_disabled(True)  # no trace export (it would go to the network)


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as f:
        yield f


def model(fake: FakeLLM) -> OpenAIResponsesModel:
    client = AsyncOpenAI(base_url=fake.openai_url, api_key="test", max_retries=0)
    return OpenAIResponsesModel(model="fake-model", openai_client=client)


def sent_inputs(fake: FakeLLM) -> list[list[dict[str, Any]]]:
    return [b["input"] for b in fake.bodies(RESPONSES_PATH)]


def texts(items: list[dict[str, Any]]) -> list[str]:
    """The text of each message item (user input is a string, output a list of parts)."""
    out = []
    for i in items:
        c = i.get("content")
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list):
            out.append("".join(p.get("text", "") for p in c))
    return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_it_is_the_sdks_session(url: str):
    s = TorporSession("proto", url)
    assert isinstance(s, Session)
    s.close()


def test_a_runner_keeps_history_across_runs_and_tool_calls(url: str, fake: FakeLLM):
    calls = []

    @function_tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        calls.append((a, b))
        return a + b

    async def both() -> None:
        agent = Agent(name="calc", instructions="Be brief.", model=model(fake), tools=[add])
        fake.reply(tool_calls=[{"name": "add", "arguments": {"a": 2, "b": 3},
                                "id": "call_1"}])
        fake.reply(text="2 + 3 = 5")
        session = TorporSession("conv-1", url)
        r1 = await Runner.run(agent, "What is 2 + 3?", session=session)
        assert r1.final_output == "2 + 3 = 5" and calls == [(2, 3)]
        session.close()

        # a new TorporSession on the same log (another process would do the same)
        fake.reply(text="You asked about 2 + 3.")
        again = TorporSession("conv-1", url)
        r2 = await Runner.run(agent, "What did I ask?", session=again)
        assert r2.final_output == "You asked about 2 + 3."
        again.close()

    run(both())
    third = sent_inputs(fake)[2]
    kinds = [i.get("type", "message") for i in third]
    assert kinds == ["message", "function_call", "function_call_output", "message", "message"]
    assert texts([third[0], third[3], third[4]]) == ["What is 2 + 3?", "2 + 3 = 5",
                                                    "What did I ask?"]
    assert third[1]["name"] == "add" and third[2]["output"] == "5"
    assert third[1]["call_id"] == third[2]["call_id"] == "call_1"

    # the items are stored in the log's own kinds
    log = open_log(url)
    entries = log.read("conv-1")
    assert [e.kind for e in entries] == ["message", "tool_call", "tool_result", "message",
                                         "message", "message"]
    assert entries[1].tool_name == "add" and entries[2].content == "5"
    log.close()


def test_items_come_back_equal_whatever_their_type(url: str):
    items: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "hello", "annotations": []}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text",
                                                         "text": "thinking"}]},
        {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f",
         "arguments": "{\"x\": 1}", "status": "completed"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "function_call_output", "call_id": "never-called", "output": "orphan"},
        {"role": "user", "content": "x" * 100_000},  # a large payload: a blob in the log
    ]
    s = TorporSession("items", url)
    run(s.add_items(items[:4]))
    run(s.add_items(items[4:]))
    assert run(s.get_items()) == items
    assert run(s.get_items(limit=2)) == items[-2:]
    assert run(s.get_items(limit=0)) == []
    s.close()
    limited = TorporSession("items", url, session_settings=SessionSettings(limit=1))
    assert run(limited.get_items()) == items[-1:]
    limited.close()


def test_pop_and_clear_hide_items_and_the_log_keeps_them(url: str):
    s = TorporSession("edits", url)
    assert run(s.pop_item()) is None  # an empty session
    run(s.clear_session())
    run(s.add_items([{"role": "user", "content": f"m{i}"} for i in range(4)]))
    assert run(s.pop_item()) == {"role": "user", "content": "m3"}
    assert run(s.pop_item()) == {"role": "user", "content": "m2"}
    assert texts(run(s.get_items())) == ["m0", "m1"]
    run(s.add_items([{"role": "user", "content": "m4"}]))
    assert texts(run(s.get_items())) == ["m0", "m1", "m4"]
    run(s.clear_session())
    assert run(s.get_items()) == [] and run(s.pop_item()) is None
    run(s.add_items([{"role": "user", "content": "after"}]))
    assert texts(run(s.get_items())) == ["after"]

    log = open_log(url)
    entries = log.read("edits")
    assert texts([{"content": e.content} for e in entries if e.kind == "message"]) == [
        "m0", "m1", "m2", "m3", "m4", "after"]
    hidden = [parse(e) for e in entries if isinstance(parse(e), Hidden)]
    assert [(h.seqs, h.through, h.by) for h in hidden] == [
        ([4], 0, "openai_agents.pop_item"), ([3], 0, "openai_agents.pop_item"),
        ([], 7, "openai_agents.clear_session")]
    assert log.verify("edits").ok
    log.close()
    s.close()


def test_a_runner_after_pop_sends_what_is_left(url: str, fake: FakeLLM):
    async def runs() -> None:
        agent = Agent(name="a", model=model(fake))
        s = TorporSession("undo", url)
        fake.reply(text="first answer")
        await Runner.run(agent, "first", session=s)
        fake.reply(text="second answer")
        await Runner.run(agent, "second", session=s)
        assert texts([await s.pop_item()]) == ["second answer"]
        assert texts([await s.pop_item()]) == ["second"]
        fake.reply(text="third answer")
        await Runner.run(agent, "third", session=s)
        s.close()

    run(runs())
    assert texts(sent_inputs(fake)[2]) == ["first", "first answer", "third"]


def test_a_chat_completions_model_keeps_history_too(url: str, fake: FakeLLM):
    """The same session under the SDK's Chat Completions model: the second run's request
    carries the first exchange, as chat messages."""
    from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel

    from tests.agent.fakellm import OPENAI_PATH

    async def runs() -> None:
        client = AsyncOpenAI(base_url=fake.openai_url, api_key="test", max_retries=0)
        agent = Agent(name="chat", model=OpenAIChatCompletionsModel(
            model="fake-model", openai_client=client))
        s = TorporSession("chat-1", url)
        fake.reply(text="Paris.")
        await Runner.run(agent, "Capital of France?", session=s)
        fake.reply(text="About 2 million.")
        r = await Runner.run(agent, "Its population?", session=s)
        assert r.final_output == "About 2 million."
        s.close()

    run(runs())
    messages = fake.bodies(OPENAI_PATH)[1]["messages"]
    assert [(m["role"], m["content"] if isinstance(m["content"], str) else
             "".join(p.get("text", "") for p in m["content"])) for m in messages] == [
        ("user", "Capital of France?"), ("assistant", "Paris."), ("user", "Its population?")]
