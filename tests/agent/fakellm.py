"""A fake LLM HTTP server for tests: speaks the OpenAI chat-completions and Responses APIs and
the Anthropic Messages API (non-streaming) on 127.0.0.1, records every request, answers from a
scripted queue.

    fake = FakeLLM().start()
    fake.reply(text="hello", usage=(12, 3))
    fake.reply(tool_calls=[{"name": "shell", "arguments": {"command": "ls"}}])
    fake.error(429, headers={"retry-after": "2"})
    fake.reply(text="late", delay=5)        # provokes a client timeout
    ... OpenAI(base_url=fake.openai_url) / Anthropic(base_url=fake.anthropic_url) ...
    fake.requests[0].body                   # the JSON the SDK sent
    fake.stop()

Each queued reply is rendered in the format of the endpoint that takes it, so one queue serves
both APIs. An empty queue answers 500 "no scripted response left".
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPENAI_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"
ANTHROPIC_PATH = "/v1/messages"

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 529: "overloaded_error",
}


@dataclass
class Reply:
    """One scripted answer. status 200: a completion with `text` and/or `tool_calls`
    (each {"name", "arguments": dict or raw JSON text, "id" optional}); otherwise an error
    with `message`. `delay` seconds pass before anything is sent; `raw` replaces the body."""

    text: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: tuple[int, int] = (10, 5)
    status: int = 200
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    stop_reason: str | None = None
    raw: Any = None


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON (or the raw text if it was not JSON)


class FakeLLM:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> FakeLLM:
        fake = self

        class Handler(_Handler):
            owner = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a delay
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """base_url for the OpenAI SDK (it appends /chat/completions)."""
        return self.url + "/v1"

    @property
    def anthropic_url(self) -> str:
        """base_url for the Anthropic SDK (it appends /v1/messages)."""
        return self.url

    # -- scripting -------------------------------------------------------------------
    def push(self, reply: Reply) -> None:
        with self._lock:
            self._queue.append(reply)

    def reply(self, text: str | None = None, tool_calls: list[dict[str, Any]] | None = None,
              **kw: Any) -> None:
        self.push(Reply(text=text, tool_calls=list(tool_calls or []), **kw))

    def error(self, status: int, message: str = "", headers: dict[str, str] | None = None,
              **kw: Any) -> None:
        self.push(Reply(status=status, message=message or f"fake error {status}",
                        headers=dict(headers or {}), **kw))

    def bodies(self, path: str | None = None) -> list[Any]:
        return [r.body for r in self.requests if path is None or r.path == path]

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    # -- serving ---------------------------------------------------------------------
    def _next(self) -> tuple[Reply | None, int]:
        with self._lock:
            self._counter += 1
            return (self._queue.popleft() if self._queue else None), self._counter

    def _render(self, path: str, body: Any, reply: Reply,
                n: int) -> tuple[int, dict[str, str], Any]:
        if reply.raw is not None:
            return reply.status, reply.headers, reply.raw
        model = body.get("model", "fake") if isinstance(body, dict) else "fake"
        if path == OPENAI_PATH:
            if reply.status != 200:
                return reply.status, reply.headers, {"error": {
                    "message": reply.message, "type": "fake_error", "param": None,
                    "code": str(reply.status)}}
            return 200, reply.headers, _openai_completion(reply, model, n)
        if path == RESPONSES_PATH:
            if reply.status != 200:
                return reply.status, reply.headers, {"error": {
                    "message": reply.message, "type": "fake_error", "param": None,
                    "code": str(reply.status)}}
            return 200, reply.headers, _openai_response(reply, model, n)
        if reply.status != 200:
            kind = _ANTHROPIC_ERROR_TYPES.get(reply.status, "api_error")
            return reply.status, reply.headers, {"type": "error", "error": {
                "type": kind, "message": reply.message}}
        return 200, reply.headers, _anthropic_message(reply, model, n)


def _openai_completion(reply: Reply, model: str, n: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": tc.get("id", f"call_fake_{n}_{i}"), "type": "function",
             "function": {"name": tc["name"], "arguments": (
                 tc.get("arguments", {}) if isinstance(tc.get("arguments"), str)
                 else json.dumps(tc.get("arguments", {})))}}
            for i, tc in enumerate(reply.tool_calls)]
    finish = reply.stop_reason or ("tool_calls" if reply.tool_calls else "stop")
    inp, out = reply.usage
    return {"id": f"chatcmpl-fake-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": inp, "completion_tokens": out,
                      "total_tokens": inp + out}}


def _openai_response(reply: Reply, model: str, n: int) -> dict[str, Any]:
    """A Responses API `response` object: a message with the text, then the function calls."""
    output: list[dict[str, Any]] = []
    if reply.text:
        output.append({"type": "message", "id": f"msg_fake_{n}", "role": "assistant",
                       "status": "completed",
                       "content": [{"type": "output_text", "text": reply.text,
                                    "annotations": []}]})
    for i, tc in enumerate(reply.tool_calls):
        args = tc.get("arguments", {})
        output.append({"type": "function_call", "id": f"fc_fake_{n}_{i}",
                       "call_id": tc.get("id", f"call_fake_{n}_{i}"), "name": tc["name"],
                       "arguments": args if isinstance(args, str) else json.dumps(args),
                       "status": "completed"})
    inp, out = reply.usage
    return {"id": f"resp_fake_{n}", "object": "response", "created_at": int(time.time()),
            "model": model, "status": "completed", "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


def _anthropic_message(reply: Reply, model: str, n: int) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for i, tc in enumerate(reply.tool_calls):
        args = tc.get("arguments", {})
        content.append({"type": "tool_use", "id": tc.get("id", f"toolu_fake_{n}_{i}"),
                        "name": tc["name"],
                        "input": json.loads(args) if isinstance(args, str) else args})
    stop = reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")
    inp, out = reply.usage
    return {"id": f"msg_fake_{n}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": inp, "output_tokens": out}}


class _Handler(BaseHTTPRequestHandler):
    owner: FakeLLM
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep tests quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace")
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        path = self.path.split("?", 1)[0]
        fake = self.owner
        with fake._lock:
            fake.requests.append(Recorded("POST", path,
                                          {k.lower(): v for k, v in self.headers.items()}, body))
        if path not in (OPENAI_PATH, RESPONSES_PATH, ANTHROPIC_PATH):
            self._send(404, {}, {"error": {"message": f"no route {path}"}})
            return
        reply, n = fake._next()
        if reply is None:
            reply = Reply(status=500, message="fake LLM: no scripted response left")
        if reply.delay and fake._stopping.wait(reply.delay):
            return
        status, headers, payload = fake._render(path, body, reply, n)
        self._send(status, headers, payload)

    def _send(self, status: int, headers: dict[str, str], payload: Any) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer
