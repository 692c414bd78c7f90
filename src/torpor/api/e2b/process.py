"""envd's `process.Process` service on torpor: Start (a stream: the start event with the
pid, the output as it comes, keepalives, the end with the exit code), Connect (the same
for a running process, from now on), List, SendSignal, SendInput, CloseStdin.

Every process is a background process of torpor-init (`Sandbox.spawn`), with its stdin
kept open when the request asks for it: it survives the stream (the SDK's background
commands, `commands.connect`), pauses and resumes, and takes input from any later call.
Its output is followed from init's files (`Process.stream`); once a stream has seen it
end, its files are dropped (`Process.forget`), as envd forgets a finished process. The
pid is the process's pid in the sandbox.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import contextvars
import signal as signals
from collections.abc import AsyncIterator
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from starlette.concurrency import run_in_threadpool

from torpor.api.deps import ApiState
from torpor.api.e2b.common import E2BError, absolute, connect_error, home_of
from torpor.api.e2b.envd import Caller
from torpor.api.sandbox_calls import Emit, from_thread
from torpor.runtime.sandboxes.live import LiveSandbox
from torpor.sandbox.handle import Process, ProcessInfo

Message = dict[str, Any]
KEEPALIVE = 30.0  # seconds between keepalive events of a quiet stream (at most)
_SIGNALS = {"SIGNAL_SIGKILL": "KILL", "SIGNAL_SIGTERM": "TERM", 9: "KILL", 15: "TERM"}
_GO_NAMES = {signals.SIGKILL: "killed", signals.SIGTERM: "terminated",
             signals.SIGINT: "interrupt", signals.SIGHUP: "hangup"}  # fmt: skip


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def end_event(code: int | None) -> Message:
    """The end event, as envd (Go) reports an exit: a process killed by a signal (init:
    128+N) has exit code -1 and the status `signal: killed`."""
    code = -1 if code is None else code
    status = f"exit status {code}"
    if code > 128 and (name := _GO_NAMES.get(signals.Signals(code - 128) if code - 128 in
                                             signals.valid_signals() else None)):
        code, status = -1, f"signal: {name}"
    return {"event": {"end": {"exitCode": code, "exited": True, "status": status}}}


def _internal(p: ProcessInfo) -> bool:
    """torpor's own helpers (a `logs -f` following output, a file transfer)."""
    return p.command.startswith("/.torpor/")


def _config(cmd: str, args: list[str], envs: dict[str, str], cwd: str | None) -> Message:
    d: Message = {"cmd": cmd, "args": args, "envs": envs}
    if cwd:
        d["cwd"] = cwd
    return d


def _strings(value: Any, what: str) -> Any:
    ok = (isinstance(value, list) and all(isinstance(v, str) for v in value)) or (
        isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                        for k, v in value.items()))  # fmt: skip
    if not ok:
        raise ConnectError(Code.INVALID_ARGUMENT, f"{what}: strings")
    if any("\0" in v for v in (value if isinstance(value, list) else value.values())):
        raise ConnectError(Code.INVALID_ARGUMENT, f"{what}: a NUL byte")
    return value


class Processes:
    """The process service for one envd app; `callers` holds each request's caller."""

    def __init__(self, api: ApiState, callers: contextvars.ContextVar[Caller]) -> None:
        self.api, self.callers = api, callers
        # what List reports of the processes started here: (sandbox, init id) -> config, tag
        self.started: dict[tuple[str, int], tuple[Message, str | None]] = {}
        # the streams following each process (Start's, Connect's), and those seen to end:
        # the last stream to let go of an ended process forgets it, not the first to see
        # the end (the others would lose its exit code, or wait for it forever)
        self.following: collections.Counter[tuple[str, int]] = collections.Counter()
        self.ended: set[tuple[str, int]] = set()

    # -- helpers ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _live(self) -> AsyncIterator[tuple[Caller, LiveSandbox]]:
        """The caller's sandbox live (resumed if need be) for the length of the block."""
        c = self.callers.get()
        stack = contextlib.ExitStack()
        try:
            sb = await run_in_threadpool(stack.enter_context,
                                         self.api.runtime.sandboxes.use(c.sid, tenant=c.tenant))
        except Exception as e:  # noqa: BLE001 - each kind has its code
            raise connect_error(e) from None
        try:
            yield c, sb
        finally:
            await run_in_threadpool(stack.close)

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except ConnectError:
            raise
        except Exception as e:  # noqa: BLE001 - each kind has its code
            raise connect_error(e) from None

    def _find(self, c: Caller, sb: LiveSandbox, selector: Any) -> ProcessInfo:
        """The running process a ProcessSelector names ({"pid": N} or {"tag": T})."""
        if not isinstance(selector, dict) or not ({"pid", "tag"} & set(selector)):
            raise ConnectError(Code.INVALID_ARGUMENT, "process: a pid or a tag")
        running = [p for p in sb.processes() if p.running and not _internal(p)]
        if "tag" in selector:
            ids = {i for (s, i), (_cfg, tag) in self.started.items()
                   if s == c.sid and tag == selector["tag"]}  # fmt: skip
            found = [p for p in running if p.id in ids]
        else:
            found = [p for p in running if p.pid == selector["pid"]]
        if not found:
            what = f"tag {selector['tag']}" if "tag" in selector else f"pid {selector['pid']}"
            raise ConnectError(Code.NOT_FOUND, f"process with {what} not found")
        return found[-1]

    @staticmethod
    def _keepalive(ctx: Any) -> float:
        try:
            asked = float(ctx.request_headers.get("keepalive-ping-interval") or KEEPALIVE)
        except ValueError:
            asked = KEEPALIVE
        return max(1.0, min(asked, KEEPALIVE))

    async def _follow(self, c: Caller, sb: LiveSandbox, pid_id: int, keepalive: float,
                      skip: tuple[int, int] = (0, 0)) -> AsyncIterator[Message]:  # fmt: skip
        """Data events of the process's output (past the first `skip` bytes of each
        stream), keepalives when quiet, then its end event (and its files dropped)."""
        left = {"stdout": skip[0], "stderr": skip[1]}

        def work(emit: Emit, cancel: Any) -> int | None:
            return self.api.runtime.sandboxes.follow(sb, pid_id,
                                                     on_stdout=lambda b: emit("stdout", b),
                                                     on_stderr=lambda b: emit("stderr", b),
                                                     cancel=cancel)  # fmt: skip

        key = (c.sid, pid_id)
        self.following[key] += 1
        try:
            async for kind, value in from_thread(work, idle=keepalive):
                if kind == "idle":
                    yield {"event": {"keepalive": {}}}
                elif kind in left:
                    cut = min(left[kind], len(value))
                    left[kind] -= cut
                    if value[cut:]:
                        yield {"event": {"data": {kind: _b64(value[cut:])}}}
                elif kind == "raised":
                    raise connect_error(value)
                else:
                    self.ended.add(key)
                    yield end_event(value)
        finally:
            self.following[key] -= 1
            if not self.following[key]:
                del self.following[key]
                if key in self.ended:
                    self.ended.discard(key)
                    self.started.pop(key, None)
                    with contextlib.suppress(Exception):  # (a later List does not show it)
                        await run_in_threadpool(Process(sb, pid_id).forget)

    # -- the service -----------------------------------------------------------------------

    async def start(self, req: Message, ctx: Any) -> AsyncIterator[Message]:
        proc = req.get("process") or {}
        cmd = proc.get("cmd")
        if not isinstance(cmd, str) or not cmd or "\0" in cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd: the program to run")
        args = _strings(proc.get("args") or [], "process.args")
        envs = _strings(proc.get("envs") or {}, "process.envs")
        if req.get("pty"):
            raise ConnectError(Code.UNIMPLEMENTED, "a PTY is not served by torpor's envd")
        stdin = req.get("stdin", True) is not False  # absent: true (process.proto)
        tag = req.get("tag") if isinstance(req.get("tag"), str) else None
        async with self._live() as (c, sb):
            try:
                cwd = absolute(proc["cwd"], c.user) if proc.get("cwd") else home_of(c.user)
            except E2BError as e:
                raise ConnectError(Code.INVALID_ARGUMENT, e.message) from None

            def spawn() -> tuple[int, int]:
                p = sb.spawn([cmd, *args], env=envs, cwd=cwd, user=c.user, stdin=stdin)
                return p.id, p.info().pid or 0

            pid_id, pid = await self._call(spawn)
            self.started[(c.sid, pid_id)] = (_config(cmd, args, envs, proc.get("cwd")), tag)
            yield {"event": {"start": {"pid": pid}}}
            async for ev in self._follow(c, sb, pid_id, self._keepalive(ctx)):
                yield ev

    async def connect(self, req: Message, ctx: Any) -> AsyncIterator[Message]:
        async with self._live() as (c, sb):
            info = await self._call(self._find, c, sb, req.get("process"))
            out, err = await self._call(Process(sb, info.id).output)
            yield {"event": {"start": {"pid": info.pid or 0}}}
            async for ev in self._follow(c, sb, info.id, self._keepalive(ctx),
                                         skip=(len(out), len(err))):  # fmt: skip
                yield ev

    async def list(self, req: Message, ctx: Any) -> Message:
        async with self._live() as (c, sb):
            procs = await self._call(sb.processes)
        out = []
        for p in procs:
            if not p.running or _internal(p):
                continue
            config, tag = self.started.get((c.sid, p.id), (None, None))
            if config is None:
                words = p.command.split(" ")
                config = _config(words[0], words[1:], {}, None)
            info: Message = {"config": config, "pid": p.pid or 0}
            if tag is not None:
                info["tag"] = tag
            out.append(info)
        return {"processes": out}

    async def send_signal(self, req: Message, ctx: Any) -> Message:
        sig = _SIGNALS.get(req.get("signal"))  # type: ignore[arg-type]
        if sig is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "signal: SIGNAL_SIGTERM or SIGNAL_SIGKILL")
        async with self._live() as (c, sb):
            info = await self._call(self._find, c, sb, req.get("process"))
            await self._call(Process(sb, info.id).kill, sig)
        return {}

    async def send_input(self, req: Message, ctx: Any) -> Message:
        given = req.get("input") or {}
        if "pty" in given:
            raise ConnectError(Code.UNIMPLEMENTED, "a PTY is not served by torpor's envd")
        try:
            data = base64.b64decode(given.get("stdin") or "", validate=True)
        except (binascii.Error, TypeError):
            raise ConnectError(Code.INVALID_ARGUMENT, "input.stdin: base64") from None
        async with self._live() as (c, sb):
            info = await self._call(self._find, c, sb, req.get("process"))
            await self._call(Process(sb, info.id).write, data)
        return {}

    async def close_stdin(self, req: Message, ctx: Any) -> Message:
        async with self._live() as (c, sb):
            info = await self._call(self._find, c, sb, req.get("process"))
            await self._call(Process(sb, info.id).close_stdin)
        return {}
