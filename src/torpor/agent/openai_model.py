"""`openai:NAME`: any OpenAI-compatible chat-completions server through the official
`openai` SDK (OpenAI, vLLM, Ollama, llama.cpp server: set base_url / OPENAI_BASE_URL)."""

from __future__ import annotations

import os
import uuid
from typing import Any

from torpor.context import Entry, to_openai

from .model import Model, conversation, parse_arguments, sdk_error, tool_result_content, usage_of
from .types import ModelError, ModelTurn, ToolCall, ToolSpec


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
        for m in to_openai(conversation(entries)):
            if m.get("role") == "assistant" and m.get("tool_calls") and m.get("content") == "":
                m["content"] = None  # an assistant turn that only called tools
            if m.get("role") == "tool":
                m["content"] = tool_result_content(m.get("content"))
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
            raise sdk_error(self.name, exc, self._sdk,
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
            usage=usage_of(usage.prompt_tokens if usage else 0,
                         usage.completion_tokens if usage else 0),
            stop_reason=choice.finish_reason or "", model=resp.model or self.model)


# -- Anthropic ---------------------------------------------------------------------------
