"""envd's Connect-RPC services, `process.Process` and `filesystem.Filesystem`, with the JSON
codec the E2B SDK uses (unary calls: application/json; server streams:
application/connect+json envelopes, the last one the end of the stream with its error).

The framing, envelopes, deadlines, errors and end-of-stream frames are the `connectrpc`
library's (its ASGI server); torpor gives it its own endpoints without generated protobuf
code: a codec of plain JSON objects (`DictCodec`), whose fields are written in proto3's
JSON form by hand (camelCase, bytes in base64, int64 as strings, enums by name). The
messages are those of e2b-dev/infra's packages/envd/spec/{process,filesystem}.proto.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Awaitable, Callable
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from connectrpc.server import ConnectASGIApplication, Endpoint
from starlette.concurrency import run_in_threadpool

from torpor.api.deps import ApiState
from torpor.api.e2b.common import E2BError, absolute, connect_error, entry_json
from torpor.api.e2b.envd import Caller, in_sandbox
from torpor.api.e2b.process import Processes
from torpor.runtime.sandboxes.live import LiveSandbox

Message = dict[str, Any]
# the caller of the request being served: set by `Rpc` for each request (a contextvar, so
# that concurrent requests each see their own)
_CALLERS: contextvars.ContextVar[Caller] = contextvars.ContextVar("torpor_envd_caller")


class DictCodec:
    """Connect's `json` codec over plain dicts: what the SDK's JSON codec sends and
    reads, without message classes."""

    def name(self) -> str:
        return "json"

    def encode(self, message: Message) -> bytes:
        return json.dumps(message, separators=(",", ":")).encode()

    def decode(self, data: bytes | bytearray, message_class: type) -> Message:
        if not data:
            return {}
        try:
            msg = json.loads(data)
        except ValueError:
            raise ConnectError(Code.INVALID_ARGUMENT, "the message is not valid JSON") from None
        if not isinstance(msg, dict):
            raise ConnectError(Code.INVALID_ARGUMENT, "the message is not a JSON object")
        return msg


class Filesystem:
    """filesystem.Filesystem: Stat, MakeDir, Move, ListDir, Remove."""

    def __init__(self, api: ApiState) -> None:
        self.api = api

    async def _in(self, fn: Callable[[LiveSandbox], Any], what: str = "") -> Any:
        c = _CALLERS.get()
        try:
            return await run_in_threadpool(in_sandbox, self.api, c, fn)
        except Exception as e:  # noqa: BLE001 - each kind has its code
            raise connect_error(e, what) from None

    @staticmethod
    def _path(req: Message, key: str = "path") -> str:
        try:
            return absolute(str(req.get(key) or ""), _CALLERS.get().user)
        except E2BError as e:
            raise ConnectError(Code.INVALID_ARGUMENT, e.message) from None

    async def stat(self, req: Message, ctx: Any) -> Message:
        path = self._path(req)
        return {"entry": entry_json(await self._in(lambda sb: sb.files.stat(path), path))}

    async def make_dir(self, req: Message, ctx: Any) -> Message:
        path = self._path(req)

        def mkdir(sb: LiveSandbox) -> Any:
            if not sb.files.mkdir(path, parents=True):
                raise ConnectError(Code.ALREADY_EXISTS, f"directory already exists: {path}")
            return sb.files.stat(path)

        return {"entry": entry_json(await self._in(mkdir, path))}

    async def move(self, req: Message, ctx: Any) -> Message:
        src, dst = self._path(req, "source"), self._path(req, "destination")

        def move(sb: LiveSandbox) -> Any:
            sb.files.move(src, dst)
            return sb.files.stat(dst)

        return {"entry": entry_json(await self._in(move, src))}

    async def list_dir(self, req: Message, ctx: Any) -> Message:
        path = self._path(req)
        depth = req.get("depth") or 1
        if not isinstance(depth, int) or not 1 <= depth <= 100:
            raise ConnectError(Code.INVALID_ARGUMENT, "depth: 1 or more")
        entries = await self._in(lambda sb: sb.files.list(path, depth=depth), path)
        return {"entries": [entry_json(e) for e in entries]}

    async def remove(self, req: Message, ctx: Any) -> Message:
        path = self._path(req)
        await self._in(lambda sb: sb.files.remove(path, recursive=True), path)
        return {}


Unary = Callable[[Message, Any], Awaitable[Message]]


def _method(service: str, name: str) -> MethodInfo[Message, Message]:
    return MethodInfo(name=name, service_name=service, input=dict, output=dict,
                      idempotency_level=IdempotencyLevel.UNKNOWN)  # fmt: skip


def _endpoints(fs: Filesystem, procs: Processes) -> dict[str, Any]:
    unary = {
        ("filesystem.Filesystem", "Stat"): fs.stat,
        ("filesystem.Filesystem", "MakeDir"): fs.make_dir,
        ("filesystem.Filesystem", "Move"): fs.move,
        ("filesystem.Filesystem", "ListDir"): fs.list_dir,
        ("filesystem.Filesystem", "Remove"): fs.remove,
        ("process.Process", "List"): procs.list,
        ("process.Process", "SendSignal"): procs.send_signal,
        ("process.Process", "SendInput"): procs.send_input,
        ("process.Process", "CloseStdin"): procs.close_stdin,
    }
    streams = {("process.Process", "Start"): procs.start,
               ("process.Process", "Connect"): procs.connect}
    out: dict[str, Any] = {f"/{s}/{n}": Endpoint.unary(_method(s, n), fn)
                           for (s, n), fn in unary.items()}  # fmt: skip
    out.update({f"/{s}/{n}": Endpoint.server_stream(_method(s, n), fn)
                for (s, n), fn in streams.items()})
    return out


class Rpc(ConnectASGIApplication[Any]):
    """Both services in one Connect ASGI app; the caller (checked by envd.Envd) is in the
    request's scope."""

    path = "/"

    def __init__(self, api: ApiState) -> None:
        fs, procs = Filesystem(api), Processes(api, _CALLERS)
        super().__init__(service=None, endpoints=lambda _svc: _endpoints(fs, procs),
                         codecs=[DictCodec()], compressions=[])  # fmt: skip

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        token = _CALLERS.set(scope["state"]["caller"])
        try:
            await super().__call__(scope, receive, send)
        finally:
            _CALLERS.reset(token)
