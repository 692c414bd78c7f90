"""`anthropic:NAME`: the Anthropic Messages API through the official `anthropic` SDK."""

from __future__ import annotations

import json
import os
from typing import Any

from torpor.context import Entry, to_anthropic

from .model import (
    DEFAULT_ANTHROPIC_MAX_TOKENS,
    Model,
    conversation,
    sdk_error,
    tool_result_content,
    usage_of,
)
from .types import ModelError, ModelTurn, ToolCall, ToolSpec


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
        convo = conversation(entries)
        failed = {e.tool_call_id for e in convo
                  if e.kind == "tool_result" and e.meta.get("is_error") is True}
        converted = to_anthropic(convo)
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
            raise sdk_error(self.name, exc, self._sdk,
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
                         usage=usage_of(input_tokens, u.output_tokens if u else 0),
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
            block["content"] = tool_result_content(block["content"])
        if block.get("tool_use_id") in failed and "is_error" not in block:
            block["is_error"] = True
    elif block.get("type") == "tool_use" and not isinstance(block.get("input"), dict):
        block["input"] = {"_raw": json.dumps(block.get("input"))}
    return block


# -- scripted ----------------------------------------------------------------------------
