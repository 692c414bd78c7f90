"""`script:PATH`: a JSONL file of assistant turns played back deterministically (tests,
demos, offline use), with scripted failures for the retry paths."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torpor.context import Entry

from .model import DEFAULT_CONTEXT_WINDOW, SCRIPT_FINISHED, Model, retryable_status, usage_of
from .types import ModelError, ModelTurn, ToolCall, ToolSpec


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
                             usage=usage_of(self.estimate_tokens(system, entries, tools),
                                          len(SCRIPT_FINISHED) // 4))
        calls = [ToolCall(id=f"call_{turn}_{i}", name=name, arguments=json.loads(json.dumps(
            args))) for i, (name, args) in enumerate(played.tool_calls)]
        usage = dict(played.usage) if played.usage is not None else usage_of(
            self.estimate_tokens(system, entries, tools),
            (len(played.text) + sum(len(json.dumps(a)) for _, a in played.tool_calls)) // 4)
        return ModelTurn(text=played.text, tool_calls=calls, usage=usage,
                         stop_reason="tool_use" if calls else "end_turn", model=self.name)
