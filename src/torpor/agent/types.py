"""The small vocabulary shared by models, tools and the loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolSpec:
    """A tool as a model sees it: name, description, JSON Schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]  # parsed; a call whose JSON did not parse has {"_raw": text}


@dataclass
class ModelTurn:
    """One model answer: text and/or tool calls. No tool calls means the agent yields to
    its user: a wait point."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)  # input_tokens, output_tokens
    stop_reason: str = ""
    model: str = ""


class ModelError(Exception):
    """A model call failed. retryable: rate limits, 5xx, timeouts, connection errors;
    retry_after: what the server asked for, in seconds, if it said."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


@dataclass
class ToolResult:
    content: str
    is_error: bool = False
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. exit_code, truncated, ms
