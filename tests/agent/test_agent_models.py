"""Model adapters through the real openai / anthropic SDKs against a local fake LLM server,
the scripted model, and open_model."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from torpor.agent.models import (
    PROVIDERS,
    SCRIPT_FINISHED,
    AnthropicModel,
    Model,
    OpenAIModel,
    ScriptedModel,
    ScriptError,
    open_model,
    parse_arguments,
    parse_retry_after,
)
from torpor.agent.types import ModelError, ModelTurn, ToolSpec
from torpor.context import Entry

from .fakellm import ANTHROPIC_PATH, OPENAI_PATH, FakeLLM

SHELL = ToolSpec("shell", "Run a shell command.", {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]})
READ = ToolSpec("read_file", "Read a file.", {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})


def openai_model(fake: FakeLLM, **kw: object) -> OpenAIModel:
    m = open_model("openai:gpt-4o-mini", base_url=fake.openai_url, api_key="sk-test", **kw)
    assert isinstance(m, OpenAIModel)
    return m


def anthropic_model(fake: FakeLLM, **kw: object) -> AnthropicModel:
    m = open_model("anthropic:claude-test-1", base_url=fake.anthropic_url,
                   api_key="sk-ant-test", **kw)
    assert isinstance(m, AnthropicModel)
    return m


def tool_round(call_id: str) -> list[Entry]:
    """user asks; assistant says something and calls shell; the result comes back."""
    return [
        Entry.message("user", "what is here?"),
        Entry.message("assistant", "Let me look."),
        Entry.tool_call(call_id, "shell", {"command": "ls -a"}),
        Entry.tool_result(call_id, "README.md\nsrc"),
    ]


def raised(model: Model, entries: list[Entry] | None = None, **kw: object) -> ModelError:
    with pytest.raises(ModelError) as info:
        model.complete(None, entries or [Entry.message("user", "hi")], [], **kw)
    return info.value


# -- OpenAI through the openai SDK -------------------------------------------------------

def test_openai_text_answer_usage_and_system_first(fake_llm: FakeLLM) -> None:
    model = openai_model(fake_llm)
    fake_llm.reply(text="Hello there.", usage=(42, 7))
    turn = model.complete("You are terse.", [Entry.message("user", "hi")], [])
    assert turn == ModelTurn(text="Hello there.", usage={"input_tokens": 42, "output_tokens": 7},
                             stop_reason="stop", model="gpt-4o-mini")
    [req] = fake_llm.requests
    assert req.path == OPENAI_PATH
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.headers.get("x-stainless-retry-count") in (None, "0")
    assert req.body["model"] == "gpt-4o-mini"
    assert req.body["messages"] == [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": "hi"}]
    assert "tools" not in req.body  # no empty tools list: some servers refuse it
    assert "stream" not in req.body or req.body["stream"] is False


def test_openai_no_system_prompt(fake_llm: FakeLLM) -> None:
    fake_llm.reply(text="ok")
    openai_model(fake_llm).complete(None, [Entry.message("user", "hi")], [])
    assert fake_llm.requests[0].body["messages"] == [{"role": "user", "content": "hi"}]


def test_openai_tool_calls_parsed(fake_llm: FakeLLM) -> None:
    fake_llm.reply(text=None, tool_calls=[
        {"id": "call_abc", "name": "shell", "arguments": {"command": "ls"}},
        {"id": "call_def", "name": "read_file", "arguments": '{"path": "a.txt"'},  # broken JSON
        {"id": "call_ghi", "name": "read_file", "arguments": ""},
    ])
    turn = openai_model(fake_llm).complete(None, [Entry.message("user", "go")], [SHELL, READ])
    assert turn.text == ""
    assert turn.stop_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == [
        ("call_abc", "shell", {"command": "ls"}),
        ("call_def", "read_file", {"_raw": '{"path": "a.txt"'}),
        ("call_ghi", "read_file", {}),
    ]
    assert fake_llm.requests[0].body["tools"] == [
        {"type": "function", "function": {"name": "shell", "description": SHELL.description,
                                          "parameters": SHELL.parameters}},
        {"type": "function", "function": {"name": "read_file", "description": READ.description,
                                          "parameters": READ.parameters}},
    ]


def test_openai_tool_round_trip_exact_request(fake_llm: FakeLLM) -> None:
    model = openai_model(fake_llm)
    fake_llm.reply(tool_calls=[{"id": "call_1", "name": "shell",
                                "arguments": {"command": "ls -a"}}], text="Let me look.")
    first = model.complete("sys", [Entry.message("user", "what is here?")], [SHELL])
    [call] = first.tool_calls
    # the loop stores the turn as one assistant message + its tool_call entries
    entries = [Entry.message("user", "what is here?"), Entry.message("assistant", first.text),
               Entry.tool_call(call.id, call.name, call.arguments),
               Entry.tool_result(call.id, "README.md\nsrc"),
               Entry.marker("snapshot_taken", snapshot="snap-1")]  # left out
    fake_llm.reply(text="A README and src.")
    second = model.complete("sys", entries, [SHELL])
    assert second.text == "A README and src."
    assert fake_llm.requests[1].body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "what is here?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "shell", "arguments": json.dumps({"command": "ls -a"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "README.md\nsrc"},
    ]


def test_openai_tools_only_turn_and_odd_results(fake_llm: FakeLLM) -> None:
    entries = [Entry.message("user", "go"), Entry.message("assistant", ""),
               Entry.tool_call("c1", "shell", {"command": "true"}),
               Entry.tool_call("c2", "shell", {"command": "stat"}),
               Entry.tool_result("c1", None), Entry.tool_result("c2", {"exit": 0})]
    fake_llm.reply(text="done")
    openai_model(fake_llm).complete(None, entries, [SHELL])
    msgs = fake_llm.requests[0].body["messages"]
    assert msgs[1]["content"] is None and len(msgs[1]["tool_calls"]) == 2
    assert msgs[2:] == [{"role": "tool", "tool_call_id": "c1", "content": ""},
                        {"role": "tool", "tool_call_id": "c2", "content": '{"exit": 0}'}]


def test_openai_options_reach_the_request(fake_llm: FakeLLM) -> None:
    fake_llm.reply(text="ok")
    openai_model(fake_llm, max_tokens=64, temperature=0.0,
                 extra_body={"top_k": 5}).complete(None, [Entry.message("user", "hi")], [])
    body = fake_llm.requests[0].body
    assert (body["max_tokens"], body["temperature"], body["top_k"]) == (64, 0.0, 5)


def test_openai_base_url_and_key_from_env(fake_llm: FakeLLM,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.openai_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    fake_llm.reply(text="from env")
    assert open_model("openai:m").complete(None, [Entry.message("user", "x")], []).text == \
        "from env"
    assert fake_llm.requests[0].headers["authorization"] == "Bearer sk-env"


def test_openai_local_server_needs_no_key(fake_llm: FakeLLM,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    fake_llm.reply(text="ollama says hi")
    model = open_model("openai:llama3", base_url=fake_llm.openai_url)
    assert model.complete(None, [Entry.message("user", "x")], []).text == "ollama says hi"
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        open_model("openai:gpt-4o")


@pytest.mark.parametrize("retry_after", ["2", "0.5"])
def test_openai_429_retry_after_seconds(fake_llm: FakeLLM, retry_after: str) -> None:
    fake_llm.error(429, "Rate limit reached", headers={"retry-after": retry_after})
    err = raised(openai_model(fake_llm))
    assert (err.retryable, err.status, err.retry_after) == (True, 429, float(retry_after))
    assert "Rate limit reached" in str(err)
    assert len(fake_llm.requests) == 1  # the SDK did not retry on its own


def test_openai_429_retry_after_http_date(fake_llm: FakeLLM) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    fake_llm.error(429, headers={"retry-after": format_datetime(when, usegmt=True)})
    err = raised(openai_model(fake_llm))
    assert err.retryable and err.retry_after is not None and 25 <= err.retry_after <= 31


@pytest.mark.parametrize("status", [500, 502, 503, 529, 408, 409])
def test_openai_retryable_statuses(fake_llm: FakeLLM, status: int) -> None:
    fake_llm.error(status, headers={"retry-after": "1"} if status == 503 else None)
    err = raised(openai_model(fake_llm))
    assert (err.retryable, err.status) == (True, status)
    assert err.retry_after == (1.0 if status == 503 else None)
    assert len(fake_llm.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_openai_client_errors_not_retryable(fake_llm: FakeLLM, status: int) -> None:
    fake_llm.error(status, "bad request: messages[3] is invalid")
    err = raised(openai_model(fake_llm))
    assert (err.retryable, err.status, err.retry_after) == (False, status, None)
    assert "messages[3] is invalid" in str(err)


def test_openai_timeout_is_retryable(fake_llm: FakeLLM) -> None:
    fake_llm.reply(text="too late", delay=3)
    t0 = time.monotonic()
    err = raised(openai_model(fake_llm), timeout=0.3)
    assert err.retryable and err.status is None and "timed out" in str(err)
    assert time.monotonic() - t0 < 2
    assert len(fake_llm.requests) == 1


def test_openai_client_timeout_option(fake_llm: FakeLLM) -> None:
    fake_llm.reply(text="too late", delay=3)
    err = raised(openai_model(fake_llm, timeout=0.3))
    assert err.retryable and "timed out" in str(err)


def test_openai_connection_refused_is_retryable(fake_llm: FakeLLM) -> None:
    url = fake_llm.openai_url
    fake_llm.stop()
    model = open_model("openai:m", base_url=url, api_key="k")
    err = raised(model, timeout=2)
    assert err.retryable and err.status is None


# -- Anthropic through the anthropic SDK -------------------------------------------------

def test_anthropic_text_answer_usage_and_system_param(fake_llm: FakeLLM) -> None:
    model = anthropic_model(fake_llm)
    fake_llm.reply(text="Hello there.", usage=(30, 4))
    turn = model.complete("You are terse.", [Entry.message("user", "hi")], [])
    assert turn == ModelTurn(text="Hello there.", usage={"input_tokens": 30, "output_tokens": 4},
                             stop_reason="end_turn", model="claude-test-1")
    [req] = fake_llm.requests
    assert req.path == ANTHROPIC_PATH
    assert "sk-ant-test" in (req.headers.get("x-api-key", "") + req.headers.get(
        "authorization", ""))
    assert "anthropic-version" in req.headers
    assert req.body["system"] == "You are terse."  # top level, not a message
    assert req.body["messages"] == [{"role": "user", "content": "hi"}]
    assert req.body["model"] == "claude-test-1"
    assert req.body["max_tokens"] == 8192
    assert "tools" not in req.body


def test_anthropic_no_system_prompt(fake_llm: FakeLLM) -> None:
    fake_llm.reply(text="ok")
    anthropic_model(fake_llm, max_tokens=100).complete(None, [Entry.message("user", "x")], [])
    body = fake_llm.requests[0].body
    assert "system" not in body and body["max_tokens"] == 100


def test_anthropic_tool_use_parsed(fake_llm: FakeLLM) -> None:
    fake_llm.reply(text="Looking.", tool_calls=[
        {"id": "toolu_1", "name": "shell", "arguments": {"command": "ls"}},
        {"id": "toolu_2", "name": "read_file", "arguments": {"path": "a.txt"}}])
    turn = anthropic_model(fake_llm).complete(None, [Entry.message("user", "go")], [SHELL, READ])
    assert turn.text == "Looking." and turn.stop_reason == "tool_use"
    assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == [
        ("toolu_1", "shell", {"command": "ls"}), ("toolu_2", "read_file", {"path": "a.txt"})]
    assert fake_llm.requests[0].body["tools"] == [
        {"name": "shell", "description": SHELL.description, "input_schema": SHELL.parameters},
        {"name": "read_file", "description": READ.description, "input_schema": READ.parameters},
    ]


def test_anthropic_tool_round_trip_exact_request(fake_llm: FakeLLM) -> None:
    model = anthropic_model(fake_llm)
    fake_llm.reply(text="Let me look.", tool_calls=[
        {"id": "toolu_1", "name": "shell", "arguments": {"command": "ls -a"}}])
    first = model.complete("sys", [Entry.message("user", "what is here?")], [SHELL])
    [call] = first.tool_calls
    entries = [Entry.message("user", "what is here?"), Entry.message("assistant", first.text),
               Entry.tool_call(call.id, call.name, call.arguments),
               Entry.tool_result(call.id, "README.md\nsrc"),
               Entry.marker("snapshot_taken", snapshot="snap-1")]
    fake_llm.reply(text="A README and src.")
    assert model.complete("sys", entries, [SHELL]).text == "A README and src."
    body = fake_llm.requests[1].body
    assert body["system"] == "sys"
    assert body["messages"] == [
        {"role": "user", "content": "what is here?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "shell",
             "input": {"command": "ls -a"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "README.md\nsrc"}]},
    ]


def test_anthropic_tools_only_turn_errors_and_empty_turns(fake_llm: FakeLLM) -> None:
    failed = Entry.tool_result("t2", "exit 1", meta={"is_error": True})
    entries = [Entry.message("user", "go"), Entry.message("assistant", ""),
               Entry.tool_call("t1", "shell", {"command": "true"}),
               Entry.tool_call("t2", "shell", {"command": "false"}),
               Entry.tool_result("t1", None), failed,
               Entry.message("assistant", ""),  # an empty final answer: the API refuses it
               Entry.message("user", "and now?")]
    fake_llm.reply(text="ok")
    anthropic_model(fake_llm).complete(None, entries, [SHELL])
    assert fake_llm.requests[0].body["messages"] == [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "shell", "input": {"command": "true"}},
            {"type": "tool_use", "id": "t2", "name": "shell", "input": {"command": "false"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": ""},
            {"type": "tool_result", "tool_use_id": "t2", "content": "exit 1",
             "is_error": True}]},
        {"role": "user", "content": "and now?"},
    ]
    assert failed.meta == {"is_error": True}  # the entry itself is untouched


def test_anthropic_429_retry_after(fake_llm: FakeLLM) -> None:
    fake_llm.error(429, "Number of request tokens has exceeded your rate limit",
                   headers={"retry-after": "7"})
    err = raised(anthropic_model(fake_llm))
    assert (err.retryable, err.status, err.retry_after) == (True, 429, 7.0)
    assert "rate limit" in str(err)
    assert len(fake_llm.requests) == 1


@pytest.mark.parametrize("status", [529, 500, 503, 408, 409])
def test_anthropic_retryable_statuses(fake_llm: FakeLLM, status: int) -> None:
    fake_llm.error(status, "Overloaded" if status == 529 else "")
    err = raised(anthropic_model(fake_llm))
    assert (err.retryable, err.status) == (True, status)
    assert len(fake_llm.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 413])
def test_anthropic_client_errors_not_retryable(fake_llm: FakeLLM, status: int) -> None:
    fake_llm.error(status, "messages: roles must alternate")
    err = raised(anthropic_model(fake_llm))
    assert (err.retryable, err.status) == (False, status)
    assert "roles must alternate" in str(err)


def test_anthropic_timeout_is_retryable(fake_llm: FakeLLM) -> None:
    fake_llm.reply(text="too late", delay=3)
    t0 = time.monotonic()
    err = raised(anthropic_model(fake_llm), timeout=0.3)
    assert err.retryable and err.status is None and "timed out" in str(err)
    assert time.monotonic() - t0 < 2


def test_anthropic_base_url_from_env(fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_llm.anthropic_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    fake_llm.reply(text="from env")
    assert open_model("anthropic:c").complete(None, [Entry.message("user", "x")], []).text == \
        "from env"


# -- helpers -------------------------------------------------------------------------------

def test_parse_arguments() -> None:
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments("") == {} and parse_arguments(None) == {}
    assert parse_arguments("{oops") == {"_raw": "{oops"}
    assert parse_arguments("[1, 2]") == {"_raw": "[1, 2]"}


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:10 GMT", now=now) == 10.0
    assert parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_estimate_tokens_grows_with_content(fake_llm: FakeLLM) -> None:
    model = openai_model(fake_llm)
    small = model.estimate_tokens(None, [Entry.message("user", "hi")], [])
    big = model.estimate_tokens("s" * 400, tool_round("c") + [
        Entry.message("user", "x" * 4000)], [SHELL])
    assert 0 < small < 20 and big > 1100


# -- ScriptedModel ---------------------------------------------------------------------------

def write_script(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "turns.jsonl"
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n"
                            for ln in lines))
    return path


def play(model: Model, entries: list[Entry]) -> ModelTurn:
    return model.complete("sys", entries, [SHELL])


def record(entries: list[Entry], turn: ModelTurn, results: str = "ok") -> None:
    """What the loop does with a turn: assistant message, tool calls, their results."""
    entries.append(Entry.message("assistant", turn.text))
    for c in turn.tool_calls:
        entries.append(Entry.tool_call(c.id, c.name, c.arguments))
    for c in turn.tool_calls:
        entries.append(Entry.tool_result(c.id, results))


def test_script_plays_turns_in_order_from_entries(tmp_path: Path) -> None:
    path = write_script(
        tmp_path,
        {"text": "Listing.", "tool_calls": [{"name": "shell", "arguments": {"command": "ls"}},
                                            {"name": "shell", "arguments": {"command": "pwd"}}]},
        "",
        "# a comment",
        {"tool_calls": [{"name": "read_file", "arguments": {"path": "a"}}]},
        {"text": "All done."})
    model = open_model(f"script:{path}")
    assert isinstance(model, ScriptedModel) and len(model) == 3
    entries = [Entry.message("user", "go")]
    t0 = play(model, entries)
    assert t0.text == "Listing." and t0.stop_reason == "tool_use" and t0.model == model.name
    assert [(c.id, c.name, c.arguments) for c in t0.tool_calls] == [
        ("call_0_0", "shell", {"command": "ls"}), ("call_0_1", "shell", {"command": "pwd"})]
    assert play(model, entries) == t0  # same entries, same turn: deterministic
    record(entries, t0)
    t1 = play(model, entries)
    assert t1.text == "" and [(c.id, c.name) for c in t1.tool_calls] == [("call_1_0", "read_file")]
    record(entries, t1)
    entries.append(Entry.marker("snapshot_taken", snapshot="s"))
    # a restarted worker: a new model object picks up at the right turn
    t2 = play(open_model(f"script:{path}"), entries)
    assert (t2.text, t2.tool_calls, t2.stop_reason) == ("All done.", [], "end_turn")
    assert set(t2.usage) == {"input_tokens", "output_tokens"}
    record(entries, t2)
    entries.append(Entry.message("user", "more?"))
    assert play(model, entries).text == SCRIPT_FINISHED


def test_script_error_lines_with_times(tmp_path: Path) -> None:
    path = write_script(
        tmp_path,
        {"text": "first"},
        {"error": {"status": 429, "retry_after": 0.2, "times": 3, "message": "slow down"}},
        {"error": {"status": 500}},
        {"text": "second"})
    model = ScriptedModel(path)
    entries = [Entry.message("user", "go")]
    assert play(model, entries).text == "first"  # errors sit at the next position only
    record(entries, play(model, entries))
    for _ in range(3):
        with pytest.raises(ModelError) as info:
            play(model, entries)
        err = info.value
        assert (err.retryable, err.status, err.retry_after) == (True, 429, 0.2)
        assert "slow down" in str(err) and "line 2" in str(err)
    with pytest.raises(ModelError) as info:
        play(model, entries)
    assert (info.value.status, info.value.retry_after, info.value.retryable) == (500, None, True)
    assert play(model, entries).text == "second"
    assert play(model, entries).text == "second"  # the errors are used up
    # counted in memory per model object: a fresh object fails again
    with pytest.raises(ModelError, match="slow down"):
        play(ScriptedModel(path), entries)


def test_script_non_retryable_error_and_trailing_errors(tmp_path: Path) -> None:
    path = write_script(tmp_path, {"error": {"status": 400, "message": "bad"}},
                        {"text": "a"}, {"error": {"status": 503, "times": 2}})
    model = ScriptedModel(path)
    with pytest.raises(ModelError) as info:
        play(model, [])
    assert not info.value.retryable and info.value.status == 400
    assert play(model, []).text == "a"
    entries: list[Entry] = []
    record(entries, ModelTurn(text="a"))
    for _ in range(2):
        with pytest.raises(ModelError):
            play(model, entries)
    assert play(model, entries).text == SCRIPT_FINISHED


def test_script_delay_and_timeout(tmp_path: Path) -> None:
    model = open_model(f"script:{write_script(tmp_path, {'text': 'hi'})}", delay=0.2)
    t0 = time.monotonic()
    assert play(model, []).text == "hi"
    assert time.monotonic() - t0 >= 0.2
    with pytest.raises(ModelError) as info:
        model.complete(None, [], [], timeout=0.05)
    assert info.value.retryable and "timed out" in str(info.value)


@pytest.mark.parametrize(("line", "why"), [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"txt": "typo"}', "unknown key"),
    ('{"text": 5}', "'text' must be a string"),
    ('{"tool_calls": {"name": "shell"}}', "must be a list"),
    ('{"tool_calls": [{"arguments": {}}]}', "needs a 'name'"),
    ('{"tool_calls": [{"name": "shell", "arguments": "ls"}]}', "arguments must be an object"),
    ('{"error": {"status": 99}}', "HTTP status"),
    ('{"error": {"status": 429, "times": 0}}', "times"),
    ('{"error": {"status": 429, "retry_after": "soon"}}', "retry_after"),
    ('{"error": "boom"}', "must be an object"),
])
def test_script_malformed_line_names_line_number(tmp_path: Path, line: str, why: str) -> None:
    path = write_script(tmp_path, {"text": "fine"}, "", line)
    with pytest.raises(ScriptError, match=rf"turns\.jsonl:3: .*{why}") as info:
        open_model(f"script:{path}")
    assert isinstance(info.value, ValueError)


def test_script_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="cannot read"):
        open_model(f"script:{tmp_path / 'nope.jsonl'}")


# -- open_model ------------------------------------------------------------------------------

def test_open_model_specs(fake_llm: FakeLLM, tmp_path: Path) -> None:
    o = open_model("openai:gpt-4o-mini", base_url=fake_llm.openai_url, api_key="k",
                   timeout=5)
    assert (o.name, o.model, o.context_window) == ("openai:gpt-4o-mini", "gpt-4o-mini", 128_000)
    a = open_model("Anthropic:claude-sonnet-4-5", base_url=fake_llm.anthropic_url,
                   api_key="k", context_window=50_000)
    assert isinstance(a, AnthropicModel)
    assert (a.name, a.context_window) == ("anthropic:claude-sonnet-4-5", 50_000)
    local = open_model("openai:qwen2.5:7b", base_url=fake_llm.openai_url, api_key="k")
    assert isinstance(local, OpenAIModel) and local.model == "qwen2.5:7b"  # Ollama-style tag
    path = write_script(tmp_path, {"text": "x"})
    s = open_model(f"script:{path}")
    assert isinstance(s, ScriptedModel) and s.name == f"script:{path}"
    assert s.context_window == 128_000


@pytest.mark.parametrize("spec, says", [
    ("gemini:pro", "unknown model provider 'gemini' in 'gemini:pro' (providers: "),
    ("gpt-4o", "model spec 'gpt-4o' should look like provider:name (providers: "),
    (":x", "model spec ':x' should look like provider:name (providers: "),
    ("openai:", "model spec 'openai:' names no model"),
])  # fmt: skip
def test_open_model_bad_specs(spec: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        open_model(spec)
    assert str(info.value).startswith(says)
    if "providers" in says:
        for p in PROVIDERS:
            assert p in str(info.value)


def test_open_model_unknown_option(fake_llm: FakeLLM) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        open_model("openai:m", base_url=fake_llm.openai_url, api_key="k", colour="blue")
