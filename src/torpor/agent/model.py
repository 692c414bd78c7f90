"""The model interface the agent loop calls (`Model`: one request, one `ModelTurn`, or a
`ModelError` that says whether a retry may help), and what every provider's adapter
shares: the conversation's entries, JSON arguments, HTTP errors turned into ModelErrors,
Retry-After, token usage. The adapters are in openai_model.py, anthropic_model.py and
scripted_model.py; `torpor.agent.models.open_model` picks one by the spec's provider."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from torpor.context import Entry

from .types import ModelError, ModelTurn, ToolSpec

PROVIDERS: tuple[str, ...] = ("openai", "anthropic", "script")
DEFAULT_CONTEXT_WINDOW: dict[str, int] = {
    "openai": 128_000,
    "anthropic": 200_000,
    "script": 128_000,
}
DEFAULT_ANTHROPIC_MAX_TOKENS = 8192
SCRIPT_FINISHED = "(script finished)"
CONVERSATION_KINDS = ("message", "tool_call", "tool_result")


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
            if e.kind not in CONVERSATION_KINDS:
                continue
            overhead += 4
            chars += text_len(e.content)
            if e.kind == "tool_call":
                chars += len(e.tool_name or "") + len(e.arguments or "")
        for t in tools:
            overhead += 8
            chars += len(t.name) + len(t.description) + len(json.dumps(t.parameters))
        return chars // 4 + overhead

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} window={self.context_window}>"




# -- shared helpers ----------------------------------------------------------------------

def text_len(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    return len(json.dumps(content, ensure_ascii=False, default=str))


def conversation(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if e.kind in CONVERSATION_KINDS]


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


def status_error(model: str, status: int, headers: Any, detail: str) -> ModelError:
    retry_after = None
    if headers is not None:
        retry_after = parse_retry_after(headers.get("retry-after"))
        if retry_after is None and headers.get("retry-after-ms"):
            ms = parse_retry_after(headers.get("retry-after-ms"))
            retry_after = None if ms is None else ms / 1000
    return ModelError(f"{model}: HTTP {status}: {detail}", retryable=retryable_status(status),
                      retry_after=retry_after, status=status)


def sdk_error(model: str, exc: Exception, sdk: Any, timeout: float | None) -> ModelError:
    """ModelError for an exception raised by the openai or anthropic SDK (same shapes)."""
    if isinstance(exc, sdk.APIStatusError):
        body = getattr(exc, "body", None)
        detail = str(exc)
        if isinstance(body, dict):  # anthropic: the whole body; openai: body["error"]
            err = body.get("error", body)
            if isinstance(err, dict) and err.get("message"):
                detail = str(err["message"])
        return status_error(model, exc.status_code, exc.response.headers, detail)
    if isinstance(exc, sdk.APITimeoutError):
        after = f" after {timeout:g} s" if timeout is not None else ""
        return ModelError(f"{model}: request timed out{after}", retryable=True)
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        why = f": {cause}" if cause else ""
        return ModelError(f"{model}: connection error{why}", retryable=True)
    return ModelError(f"{model}: {type(exc).__name__}: {exc}", retryable=False)


def tool_result_content(content: Any) -> Any:
    """Tool result content both APIs accept: text, or a list of provider-native parts."""
    if content is None:
        return ""
    if isinstance(content, str | list):
        return content
    return json.dumps(content, ensure_ascii=False)


def usage_of(input_tokens: int | None, output_tokens: int | None) -> dict[str, int]:
    return {"input_tokens": int(input_tokens or 0), "output_tokens": int(output_tokens or 0)}


# -- OpenAI-compatible -------------------------------------------------------------------
