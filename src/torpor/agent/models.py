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

from typing import Any

from .anthropic_model import AnthropicModel
from .model import (
    DEFAULT_ANTHROPIC_MAX_TOKENS,
    DEFAULT_CONTEXT_WINDOW,
    PROVIDERS,
    SCRIPT_FINISHED,
    Model,
    parse_arguments,
    parse_retry_after,
    retryable_status,
)
from .openai_model import OpenAIModel
from .scripted_model import ScriptedModel, ScriptError

__all__ = [
    "DEFAULT_ANTHROPIC_MAX_TOKENS", "DEFAULT_CONTEXT_WINDOW", "PROVIDERS", "SCRIPT_FINISHED",
    "AnthropicModel", "Model", "OpenAIModel", "ScriptError", "ScriptedModel", "open_model",
    "parse_arguments", "parse_retry_after", "retryable_status",
]  # fmt: skip


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
