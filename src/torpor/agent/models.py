"""Model adapters: the one call the agent loop makes to an LLM, for every provider.

A Model turns (system prompt, log entries, tool specs) into one ModelTurn, or raises ModelError
saying whether the failure is worth retrying. Providers:

- `openai:NAME` — any OpenAI-compatible chat-completions server through the official `openai`
  SDK (OpenAI, vLLM, Ollama, llama.cpp server: set base_url / OPENAI_BASE_URL);
- `anthropic:NAME` — the Anthropic Messages API through the official `anthropic` SDK;
- `script:PATH` — a JSONL file of assistant turns played back deterministically (tests, demos,
  offline use).

The SDKs' own retries are off (max_retries=0): the runtime retries durably, on a timer that
survives restarts, so a model call here is always exactly one HTTP request.

    model = open_model("openai:gpt-4o-mini", base_url="http://127.0.0.1:8000/v1")
    turn = model.complete("You are terse.", entries, tools, timeout=60)
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from torpor.context import Entry, to_anthropic, to_openai

from .types import ModelError, ModelTurn, ToolCall, ToolSpec

PROVIDERS: tuple[str, ...] = ("openai", "anthropic", "script")
DEFAULT_CONTEXT_WINDOW: dict[str, int] = {
    "openai": 128_000,
    "anthropic": 200_000,
    "script": 128_000,
}
DEFAULT_ANTHROPIC_MAX_TOKENS = 8192
SCRIPT_FINISHED = "(script finished)"
_CONVERSATION_KINDS = ("message", "tool_call", "tool_result")


class Model(ABC):
    """One LLM behind a uniform call. `name` is the spec it was opened with
    ("openai:gpt-4o-mini"); `context_window` is its budget in tokens."""

    name: str
    context_window: int
    extra_body: dict[str, Any] | None = None

    def _configure(self, provider: str, model: str, *, context_window: int | None,
                   max_tokens: int | None, temperature: float | None,
                   extra_body: dict[str, Any] | None, timeout: float | None) -> None:
        """The settings the SDK-backed providers share."""
        self.model = model
        self.name = f"{provider}:{model}"
        self.context_window = context_window or DEFAULT_CONTEXT_WINDOW[provider]
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.extra_body = dict(extra_body or {})
        self.timeout = timeout

    @staticmethod
    def _client_options(api_key: str | None, base_url: str | None,
                        timeout: float | None) -> dict[str, Any]:
        """SDK client options: retries are torpor's (durable timers), not the SDK's."""
        kw: dict[str, Any] = {"max_retries": 0}
        for k, v in (("api_key", api_key), ("base_url", base_url), ("timeout", timeout)):
            if v is not None:
                kw[k] = v
        return kw

    def _call_options(self, timeout: float | None) -> dict[str, Any]:
        """Per-call SDK options shared by the providers: timeout and extra body fields."""
        kw: dict[str, Any] = {}
        if timeout is not None:
            kw["timeout"] = timeout
        if self.extra_body:
            kw["extra_body"] = self.extra_body
        return kw

    @abstractmethod
    def complete(self, system: str | None, entries: list[Entry], tools: list[ToolSpec], *,
                 timeout: float | None = None) -> ModelTurn:
        """The model's next turn for this conversation. `entries` are message, tool_call and
        tool_result entries (markers are skipped); an assistant turn is one assistant
        `message` entry followed by its `tool_call` entries. Raises ModelError."""

    def estimate_tokens(self, system: str | None, entries: list[Entry],
                        tools: list[ToolSpec]) -> int:
        """A cheap over-the-thumb token count of a request: characters / 4, plus a little per
        message. Good enough to decide when to compact; not a tokenizer."""
        chars = len(system or "")
        overhead = 0
        for e in entries:
            if e.kind not in _CONVERSATION_KINDS:
                continue
            overhead += 4
            chars += _text_len(e.content)
            if e.kind == "tool_call":
                chars += len(e.tool_name or "") + len(e.arguments or "")
        for t in tools:
            overhead += 8
            chars += len(t.name) + len(t.description) + len(json.dumps(t.parameters))
        return chars // 4 + overhead

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} window={self.context_window}>"


def open_model(spec: str, **options: Any) -> Model:
    """The model for `provider:name`, e.g. "openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5",
    "script:/path/turns.jsonl". Options go to the provider's class (base_url, api_key,
    timeout, context_window, max_tokens, temperature, extra_body; delay for scripts)."""
    provider, sep, rest = spec.partition(":")
    provider = provider.strip().lower()
    if not sep or not provider:
        raise ValueError(f"model spec {spec!r} should look like provider:name "
                         f"(providers: {', '.join(PROVIDERS)})")
    if provider not in PROVIDERS:
        raise ValueError(f"unknown model provider {provider!r} in {spec!r} "
                         f"(providers: {', '.join(PROVIDERS)})")
    if not rest.strip():
        raise ValueError(f"model spec {spec!r} names no model")
    if provider == "openai":
        return OpenAIModel(rest, **options)
    if provider == "anthropic":
        return AnthropicModel(rest, **options)
    return ScriptedModel(rest, **options)


# -- shared helpers ----------------------------------------------------------------------

def _text_len(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    return len(json.dumps(content, ensure_ascii=False, default=str))


def _conversation(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if e.kind in _CONVERSATION_KINDS]


def parse_arguments(text: str | None) -> dict[str, Any]:
    """Tool call arguments as a dict: "" or None is {}, anything that is not a JSON object
    is {"_raw": text}."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def retryable_status(status: int) -> bool:
    """429, 408, 409 and every 5xx (incl. Anthropic's 529 overloaded) are worth retrying."""
    return status in (408, 409, 429) or status >= 500


def _status_error(model: str, status: int, headers: Any, detail: str) -> ModelError:
    retry_after = None
    if headers is not None:
        retry_after = parse_retry_after(headers.get("retry-after"))
        if retry_after is None and headers.get("retry-after-ms"):
            ms = parse_retry_after(headers.get("retry-after-ms"))
            retry_after = None if ms is None else ms / 1000
    return ModelError(f"{model}: HTTP {status}: {detail}", retryable=retryable_status(status),
                      retry_after=retry_after, status=status)


def _sdk_error(model: str, exc: Exception, sdk: Any, timeout: float | None) -> ModelError:
    """ModelError for an exception raised by the openai or anthropic SDK (same shapes)."""
    if isinstance(exc, sdk.APIStatusError):
        body = getattr(exc, "body", None)
        detail = str(exc)
        if isinstance(body, dict):  # anthropic: the whole body; openai: body["error"]
            err = body.get("error", body)
            if isinstance(err, dict) and err.get("message"):
                detail = str(err["message"])
        return _status_error(model, exc.status_code, exc.response.headers, detail)
    if isinstance(exc, sdk.APITimeoutError):
        after = f" after {timeout:g} s" if timeout is not None else ""
        return ModelError(f"{model}: request timed out{after}", retryable=True)
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        why = f": {cause}" if cause else ""
        return ModelError(f"{model}: connection error{why}", retryable=True)
    return ModelError(f"{model}: {type(exc).__name__}: {exc}", retryable=False)


def _tool_result_content(content: Any) -> Any:
    """Tool result content both APIs accept: text, or a list of provider-native parts."""
    if content is None:
        return ""
    if isinstance(content, str | list):
        return content
    return json.dumps(content, ensure_ascii=False)


def _usage(input_tokens: int | None, output_tokens: int | None) -> dict[str, int]:
    return {"input_tokens": int(input_tokens or 0), "output_tokens": int(output_tokens or 0)}


# -- OpenAI-compatible -------------------------------------------------------------------

class OpenAIModel(Model):
    """chat.completions through the `openai` SDK. Without an API key (api_key option,
    OPENAI_API_KEY) a base_url is required: local servers get a placeholder key."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float | None = None, context_window: int | None = None,
                 max_tokens: int | None = None, temperature: float | None = None,
                 extra_body: dict[str, Any] | None = None) -> None:
        import openai

        self._configure("openai", model, context_window=context_window, max_tokens=max_tokens,
                        temperature=temperature, extra_body=extra_body, timeout=timeout)
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        if api_key is None:
            if base_url is None:
                raise ValueError(f"{self.name}: no API key: set OPENAI_API_KEY (or "
                                 "OPENAI_BASE_URL for a local server) where turns run, or "
                                 "pass api_key= (base_url=) to the model")
            api_key = "not-needed"  # vLLM, Ollama, llama.cpp ignore it
        self.base_url = base_url
        self._sdk = openai
        self._client = openai.OpenAI(**self._client_options(api_key, base_url, timeout))

    def request(self, system: str | None, entries: list[Entry],
                tools: list[ToolSpec]) -> dict[str, Any]:
        """The chat.completions request body (without stream/timeout)."""
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        for m in to_openai(_conversation(entries)):
            if m.get("role") == "assistant" and m.get("tool_calls") and m.get("content") == "":
                m["content"] = None  # an assistant turn that only called tools
            if m.get("role") == "tool":
                m["content"] = _tool_result_content(m.get("content"))
            messages.append(m)
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in tools]
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    def complete(self, system: str | None, entries: list[Entry], tools: list[ToolSpec], *,
                 timeout: float | None = None) -> ModelTurn:
        body = self.request(system, entries, tools)
        kw = self._call_options(timeout)
        try:
            resp = self._client.chat.completions.create(**body, **kw)
        except self._sdk.OpenAIError as exc:
            raise _sdk_error(self.name, exc, self._sdk,
                             timeout if timeout is not None else self.timeout) from exc
        if not resp.choices:
            raise ModelError(f"{self.name}: the response had no choices", retryable=False)
        choice = resp.choices[0]
        msg = choice.message
        calls: list[ToolCall] = []
        for i, tc in enumerate(msg.tool_calls or []):
            fn = getattr(tc, "function", None)
            if fn is None:  # a non-function (custom) tool call: not ours
                continue
            calls.append(ToolCall(id=tc.id or f"call_{uuid.uuid4().hex[:12]}_{i}",
                                  name=fn.name, arguments=parse_arguments(fn.arguments)))
        usage = resp.usage
        return ModelTurn(
            text=msg.content or "", tool_calls=calls,
            usage=_usage(usage.prompt_tokens if usage else 0,
                         usage.completion_tokens if usage else 0),
            stop_reason=choice.finish_reason or "", model=resp.model or self.model)


# -- Anthropic ---------------------------------------------------------------------------

def _empty(content: Any) -> bool:
    return content is None or content == "" or content == []


class AnthropicModel(Model):
    """messages.create through the `anthropic` SDK; the system prompt goes in `system`."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float | None = None, context_window: int | None = None,
                 max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS,
                 temperature: float | None = None,
                 extra_body: dict[str, Any] | None = None) -> None:
        import anthropic

        self._configure("anthropic", model, context_window=context_window,
                        max_tokens=max_tokens, temperature=temperature, extra_body=extra_body,
                        timeout=timeout)
        base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        api_key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
        if api_key is None and not os.environ.get("ANTHROPIC_AUTH_TOKEN"):
            if base_url is None:  # refused now, as OpenAIModel does, not at the first turn
                raise ValueError(f"{self.name}: no API key: set ANTHROPIC_API_KEY (or "
                                 "ANTHROPIC_BASE_URL for a local server) where turns run, or "
                                 "pass api_key= (base_url=) to the model")
            api_key = "not-needed"  # a local or proxy server
        self.base_url = base_url
        self._sdk = anthropic
        self._client = anthropic.Anthropic(**self._client_options(api_key, base_url, timeout))

    def request(self, system: str | None, entries: list[Entry],
                tools: list[ToolSpec]) -> dict[str, Any]:
        """The messages.create request body (without stream/timeout)."""
        conversation = _conversation(entries)
        failed = {e.tool_call_id for e in conversation
                  if e.kind == "tool_result" and e.meta.get("is_error") is True}
        converted = to_anthropic(conversation)
        messages: list[dict[str, Any]] = []
        for m in converted["messages"]:
            if m.get("role") == "assistant" and _empty(m.get("content")):
                continue  # the API refuses empty assistant turns; user turns merge
            if isinstance(m.get("content"), list):
                m["content"] = [_anthropic_block(b, failed) for b in m["content"]]
            messages.append(m)
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens,
                                "messages": messages}
        log_system = converted.get("system")
        if system and log_system:
            body["system"] = ([{"type": "text", "text": system}]
                              + [b for b in _system_blocks(log_system)])
        elif system:
            body["system"] = system
        elif log_system:
            body["system"] = log_system
        if tools:
            body["tools"] = [{"name": t.name, "description": t.description,
                              "input_schema": t.parameters} for t in tools]
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    def complete(self, system: str | None, entries: list[Entry], tools: list[ToolSpec], *,
                 timeout: float | None = None) -> ModelTurn:
        body = self.request(system, entries, tools)
        kw = self._call_options(timeout)
        try:
            resp = self._client.messages.create(**body, **kw)
        except self._sdk.AnthropicError as exc:
            raise _sdk_error(self.name, exc, self._sdk,
                             timeout if timeout is not None else self.timeout) from exc
        except TypeError as exc:  # e.g. no credentials could be resolved
            raise ModelError(f"{self.name}: {exc}", retryable=False) from exc
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in resp.content or []:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                args = block.input
                calls.append(ToolCall(id=block.id, name=block.name, arguments=(
                    dict(args) if isinstance(args, dict)
                    else {"_raw": json.dumps(args, default=str)})))
        u = resp.usage
        input_tokens = 0
        if u is not None:  # all prompt tokens, cached or not, like OpenAI's prompt_tokens
            input_tokens = (u.input_tokens or 0) + (
                getattr(u, "cache_creation_input_tokens", 0) or 0) + (
                getattr(u, "cache_read_input_tokens", 0) or 0)
        return ModelTurn(text="".join(texts), tool_calls=calls,
                         usage=_usage(input_tokens, u.output_tokens if u else 0),
                         stop_reason=resp.stop_reason or "", model=resp.model or self.model)


def _system_blocks(system: Any) -> list[Any]:
    if isinstance(system, str):
        return [{"type": "text", "text": system}] if system else []
    return list(system or [])


def _anthropic_block(block: Any, failed: set[str | None]) -> Any:
    """Content blocks the API accepts: tool_result content never null or a bare JSON value,
    `is_error` set when the result entry's meta says {"is_error": true}, tool_use input
    always an object."""
    if not isinstance(block, dict):
        return block
    block = dict(block)  # may be the entry's own content: never change the log
    if block.get("type") == "tool_result":
        if "content" in block:
            block["content"] = _tool_result_content(block["content"])
        if block.get("tool_use_id") in failed and "is_error" not in block:
            block["is_error"] = True
    elif block.get("type") == "tool_use" and not isinstance(block.get("input"), dict):
        block["input"] = {"_raw": json.dumps(block.get("input"))}
    return block


# -- scripted ----------------------------------------------------------------------------

class ScriptError(ValueError):
    """A script file line that cannot be played (names the file and line number)."""


@dataclass(frozen=True)
class _ScriptTurn:
    line: int
    text: str
    tool_calls: list[tuple[str, dict[str, Any]]]
    usage: dict[str, int] | None


@dataclass(frozen=True)
class _ScriptFailure:
    line: int
    status: int
    times: int
    retry_after: float | None
    message: str
    retryable: bool


_TURN_KEYS = {"text", "tool_calls", "usage"}
_ERROR_KEYS = {"status", "retry_after", "times", "message", "retryable"}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_SCRIPT_CALL_ID = re.compile(r"call_(\d+)_\d+")


class ScriptedModel(Model):
    """Plays a JSONL file of assistant turns, one per line:

        {"text": "Let me look.", "tool_calls": [{"name": "shell", "arguments": {"command": "ls"}}]}
        {"error": {"status": 429, "retry_after": 0.2, "times": 3, "message": "slow down"}}
        {"text": "Done."}

    The turn played is the number of assistant `message` entries already in `entries`, so a
    restarted worker continues where the log left off. An error line makes the next `times`
    calls at the position of the turn after it raise ModelError (counted per model object),
    then that turn plays. Tool call ids are `call_<turn>_<i>`. Past the last line the model
    answers "(script finished)". Blank lines and lines starting with `#` are skipped.
    """

    def __init__(self, path: str | os.PathLike[str], *, delay: float = 0.0,
                 context_window: int | None = None) -> None:
        self.path = Path(path)
        self.name = f"script:{path}"
        self.context_window = context_window or DEFAULT_CONTEXT_WINDOW["script"]
        self.delay = float(delay)
        self._positions, self._tail = self._load()
        self._failed: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many turns the script holds."""
        return len(self._positions)

    # -- loading ---------------------------------------------------------------------
    def _fail(self, line: int, why: str) -> ScriptError:
        return ScriptError(f"{self.path}:{line}: {why}")

    def _load(self) -> tuple[list[tuple[list[_ScriptFailure], _ScriptTurn]],
                             list[_ScriptFailure]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScriptError(f"{self.path}: cannot read the script: {exc}") from None
        positions: list[tuple[list[_ScriptFailure], _ScriptTurn]] = []
        failures: list[_ScriptFailure] = []
        for n, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                raise self._fail(n, f"not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise self._fail(n, f"expected a JSON object, got {type(obj).__name__}")
            if "error" in obj:
                failures.append(self._parse_error(n, obj))
            else:
                positions.append((failures, self._parse_turn(n, obj)))
                failures = []
        return positions, failures

    def _parse_error(self, n: int, obj: dict[str, Any]) -> _ScriptFailure:
        if set(obj) != {"error"}:
            raise self._fail(n, "an error line holds only the key 'error'")
        err = obj["error"]
        if not isinstance(err, dict):
            raise self._fail(n, "'error' must be an object")
        unknown = set(err) - _ERROR_KEYS
        if unknown:
            raise self._fail(n, f"unknown error key(s) {sorted(unknown)} "
                                f"(allowed: {sorted(_ERROR_KEYS)})")
        status = err.get("status", 500)
        times = err.get("times", 1)
        retry_after = err.get("retry_after")
        message = err.get("message", f"scripted error {status}")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise self._fail(n, f"error status must be an HTTP status code, got {status!r}")
        if not isinstance(times, int) or isinstance(times, bool) or times < 1:
            raise self._fail(n, f"error times must be an integer >= 1, got {times!r}")
        if retry_after is not None and (not _number(retry_after) or retry_after < 0):
            raise self._fail(n, f"error retry_after must be seconds >= 0, got {retry_after!r}")
        if not isinstance(message, str):
            raise self._fail(n, "error message must be a string")
        retryable = err.get("retryable", retryable_status(status))
        if not isinstance(retryable, bool):
            raise self._fail(n, "error retryable must be true or false")
        return _ScriptFailure(n, status, times, None if retry_after is None else float(
            retry_after), message, retryable)

    def _parse_turn(self, n: int, obj: dict[str, Any]) -> _ScriptTurn:
        unknown = set(obj) - _TURN_KEYS
        if unknown:
            raise self._fail(n, f"unknown key(s) {sorted(unknown)} (a turn has "
                                "'text' and/or 'tool_calls'; an error line has 'error')")
        if "text" not in obj and "tool_calls" not in obj:
            raise self._fail(n, "a turn needs 'text' and/or 'tool_calls'")
        text = obj.get("text", "")
        if not isinstance(text, str):
            raise self._fail(n, "'text' must be a string")
        calls_raw = obj.get("tool_calls", [])
        if not isinstance(calls_raw, list):
            raise self._fail(n, "'tool_calls' must be a list")
        calls: list[tuple[str, dict[str, Any]]] = []
        for i, c in enumerate(calls_raw):
            if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
                raise self._fail(n, f"tool_calls[{i}] needs a 'name' string")
            if set(c) - {"name", "arguments"}:
                raise self._fail(n, f"tool_calls[{i}] has unknown key(s) "
                                    f"{sorted(set(c) - {'name', 'arguments'})}")
            args = c.get("arguments", {})
            if not isinstance(args, dict):
                raise self._fail(n, f"tool_calls[{i}].arguments must be an object")
            calls.append((c["name"], args))
        usage = obj.get("usage")
        if usage is not None and not (isinstance(usage, dict) and all(
                isinstance(v, int) for v in usage.values())):
            raise self._fail(n, "'usage' must be an object of integers")
        return _ScriptTurn(n, text, calls, usage)

    # -- playing ---------------------------------------------------------------------
    def turn_index(self, entries: list[Entry]) -> int:
        """Which turn `entries` are at: the number of assistant messages already in them.
        After a compaction the model is sent a summary and the recent tail only, so the
        count starts over; the ids of the script's own tool calls (`call_<turn>_<i>`) in
        the tail still say where it is: that turn, plus the assistant messages after it."""
        count = sum(1 for e in entries if e.kind == "message" and e.role == "assistant")
        for i in range(len(entries) - 1, -1, -1):
            e = entries[i]
            m = _SCRIPT_CALL_ID.fullmatch(e.tool_call_id or "") if e.kind == "tool_call" else None
            if m:
                after = sum(1 for x in entries[i + 1:] if x.kind == "message"
                            and x.role == "assistant")  # fmt: skip
                return max(count, int(m.group(1)) + 1 + after)
        return count

    def complete(self, system: str | None, entries: list[Entry], tools: list[ToolSpec], *,
                 timeout: float | None = None) -> ModelTurn:
        if self.delay > 0:
            if timeout is not None and timeout < self.delay:
                time.sleep(max(0.0, timeout))
                raise ModelError(f"{self.name}: request timed out after {timeout:g} s",
                                 retryable=True)
            time.sleep(self.delay)
        turn = self.turn_index(entries)
        if turn < len(self._positions):
            failures, played = self._positions[turn]
        else:
            failures, played = self._tail, None
        with self._lock:
            for k, f in enumerate(failures):
                used = self._failed.get((turn, k), 0)
                if used < f.times:
                    self._failed[(turn, k)] = used + 1
                    raise ModelError(
                        f"{self.name}: HTTP {f.status}: {f.message} (script line {f.line}, "
                        f"{used + 1} of {f.times})", retryable=f.retryable,
                        retry_after=f.retry_after, status=f.status)
        if played is None:
            return ModelTurn(text=SCRIPT_FINISHED, stop_reason="end_turn", model=self.name,
                             usage=_usage(self.estimate_tokens(system, entries, tools),
                                          len(SCRIPT_FINISHED) // 4))
        calls = [ToolCall(id=f"call_{turn}_{i}", name=name, arguments=json.loads(json.dumps(
            args))) for i, (name, args) in enumerate(played.tool_calls)]
        usage = dict(played.usage) if played.usage is not None else _usage(
            self.estimate_tokens(system, entries, tools),
            (len(played.text) + sum(len(json.dumps(a)) for _, a in played.tool_calls)) // 4)
        return ModelTurn(text=played.text, tool_calls=calls, usage=usage,
                         stop_reason="tool_use" if calls else "end_turn", model=self.name)
