"""The /v1/sandboxes routes that run commands in a sandbox (`sandboxes` scope): a command
with its output streamed (NDJSON, see torpor.api.sandbox_calls for why), and background
processes (start, list, output, stdin, signals); its files are in sandbox_files.py. A
call to a paused sandbox resumes it first when its auto_resume is on (else 409), and
counts as activity for its idle timeout."""

import base64
import contextlib
import threading
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from torpor.api.deps import Api, ApiState, SandboxUser, auth_errors
from torpor.api.sandbox_calls import (
    Emit,
    answering,
    encode,
    from_thread,
    ndjson,
    process_view,
    tenant_of,
)
from torpor.api.schemas import (
    API_VERSION,
    NDJSON,
    STREAM_DOC,
    ApiError,
    Encoding,
    ProcessIn,
    ProcessListOut,
    ProcessOut,
    ProcessOutputOut,
    SandboxExecIn,
    SandboxId,
    SignalIn,
    StdinIn,
    errors,
)
from torpor.api.tokens import Principal
from torpor.runtime.sandboxes.live import LiveSandbox
from torpor.sandbox.handle import Process

BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _live(api: ApiState, p: Principal, sid: str,
          stack: contextlib.ExitStack) -> LiveSandbox:  # fmt: skip
    """The sandbox live (resumed if need be), held until `stack` closes."""
    with answering():
        return stack.enter_context(api.runtime.sandboxes.use(sid, tenant=tenant_of(p)))


def call_in(api: ApiState, p: Principal, sid: str, fn: Callable[[LiveSandbox], Any]) -> Any:
    """fn(the live sandbox), a call of the sandbox, its errors answered."""
    with contextlib.ExitStack() as stack, answering():
        return fn(_live(api, p, sid, stack))


def _process(sb: LiveSandbox, pid: int) -> dict[str, Any]:
    return process_view(Process(sb, pid).info())


async def _streamed(api: ApiState, p: Principal, sid: str, encoding: str,
                    work: Callable[[LiveSandbox, Emit, threading.Event], Any],
                    end: Callable[[Any], dict[str, Any]]) -> StreamingResponse:  # fmt: skip
    """An NDJSON response of what work(sandbox, emit, cancel) emits, run in a thread with
    the sandbox held live meanwhile; an error before it starts is the answer's status."""
    stack = contextlib.ExitStack()
    sb = await run_in_threadpool(_live, api, p, sid, stack)

    def run(emit: Emit, cancel: threading.Event) -> Any:
        with stack:
            return work(sb, emit, cancel)

    return StreamingResponse(ndjson(from_thread(run), encoding, end), media_type=NDJSON)


def router(auth: bool) -> APIRouter:
    r = APIRouter(prefix=f"/{API_VERSION}/sandboxes/{{sid}}", tags=["sandboxes"])
    AUTH = auth_errors(auth)

    # -- commands -----------------------------------------------------------------------

    @r.post("/exec", response_class=StreamingResponse,
            responses={200: STREAM_DOC, **errors(*AUTH, 404, 409, 415, 422)})  # fmt: skip
    async def exec_command(sid: SandboxId, body: SandboxExecIn, p: SandboxUser,
                           api: Api) -> StreamingResponse:  # fmt: skip
        """Run a command to its end, its output streamed as it comes (NDJSON lines), then
        its exit code. Past `timeout` seconds it is stopped (TERM, then KILL) and the
        last line says so. A client that goes away stops it."""

        def work(sb: LiveSandbox, emit: Emit, cancel: threading.Event) -> int:
            return sb.exec(body.cmd, env=body.env, cwd=body.cwd, user=body.user,
                           timeout=body.timeout, stdin=body.stdin, cancel=cancel,
                           on_stdout=lambda b: emit("stdout", b),
                           on_stderr=lambda b: emit("stderr", b), capture=False).exit_code

        return await _streamed(api, p, sid, body.encoding, work,
                               lambda code: {"type": "exit", "exit_code": code})

    # -- background processes -----------------------------------------------------------

    @r.post("/processes", status_code=201, response_model=ProcessOut,
            responses=errors(*AUTH, 404, 409, 415, 422))  # fmt: skip
    def start_process(sid: SandboxId, body: ProcessIn, p: SandboxUser,
                      api: Api) -> dict[str, Any]:  # fmt: skip
        """Start a command in the background: it survives pauses, and its output is kept
        until the sandbox goes. `stdin`: keep its stdin open for POST .../stdin."""
        return call_in(api, p, sid, lambda sb: _process(sb, sb.spawn(
            body.cmd, env=body.env, cwd=body.cwd, user=body.user, stdin=body.stdin).id))

    @r.get("/processes", response_model=ProcessListOut, responses=errors(*AUTH, 404, 409, 422))
    def list_processes(sid: SandboxId, p: SandboxUser, api: Api) -> dict[str, Any]:
        """The processes started in it (commands and background ones), running or exited."""
        return {"processes": [process_view(i) for i in call_in(api, p, sid,
                                                           lambda sb: sb.processes())]}

    @r.get("/processes/{pid}", response_model=ProcessOut,
           responses=errors(*AUTH, 404, 409, 422))  # fmt: skip
    def get_process(sid: SandboxId, pid: int, p: SandboxUser, api: Api) -> dict[str, Any]:
        return call_in(api, p, sid, lambda sb: _process(sb, pid))

    @r.get("/processes/{pid}/output", response_model=ProcessOutputOut,
           responses=errors(*AUTH, 404, 409, 422))  # fmt: skip
    def process_output(sid: SandboxId, pid: int, p: SandboxUser, api: Api,
                       encoding: Encoding = Encoding.utf8) -> dict[str, Any]:  # fmt: skip
        """Everything it printed so far (stdout and stderr apart)."""

        def read(sb: LiveSandbox) -> dict[str, Any]:
            out, err = Process(sb, pid).output()
            info = Process(sb, pid).info()
            return {"stdout": encode(out, encoding.value), "stderr": encode(err, encoding.value),
                    "encoding": encoding.value, "state": info.state,
                    "exit_code": info.exit_code}  # fmt: skip

        return call_in(api, p, sid, read)

    @r.get("/processes/{pid}/output/stream", response_class=StreamingResponse,
           responses={200: STREAM_DOC, **errors(*AUTH, 404, 409, 422)})  # fmt: skip
    async def follow_output(sid: SandboxId, pid: int, p: SandboxUser, api: Api,
                            encoding: Encoding = Encoding.utf8) -> StreamingResponse:  # fmt: skip
        """Its output from the start, as NDJSON lines as it comes, until it exits (the
        last line: its exit code). A client that goes away stops following (the process
        goes on)."""

        def work(sb: LiveSandbox, emit: Emit, cancel: threading.Event) -> int | None:
            return api.runtime.sandboxes.follow(sb, pid, on_stdout=lambda b: emit("stdout", b),
                                                on_stderr=lambda b: emit("stderr", b),
                                                cancel=cancel)  # fmt: skip

        return await _streamed(api, p, sid, encoding.value, work,
                               lambda code: {"type": "exit", "exit_code": code})

    @r.post("/processes/{pid}/kill", response_model=ProcessOut,
            responses=errors(*AUTH, 404, 409, 415, 422))  # fmt: skip
    def kill_process(sid: SandboxId, pid: int, p: SandboxUser, api: Api,
                     body: Annotated[SignalIn | None, Body()] = None
                     ) -> dict[str, Any]:  # fmt: skip
        """Send it (its process group) a signal, KILL by default."""

        def kill(sb: LiveSandbox) -> dict[str, Any]:
            Process(sb, pid).kill(body.signal if body else "KILL")
            return _process(sb, pid)

        return call_in(api, p, sid, kill)

    @r.post("/processes/{pid}/stdin", status_code=204, response_class=Response,
            responses=errors(*AUTH, 404, 409, 415, 422))  # fmt: skip
    def write_stdin(sid: SandboxId, pid: int, body: StdinIn, p: SandboxUser,
                    api: Api) -> Response:  # fmt: skip
        """Write to its stdin (started with `stdin`), then close it if asked."""
        try:
            data = base64.b64decode(body.data, validate=True) if body.encoding == "base64" \
                else body.data.encode()  # fmt: skip
        except ValueError:
            raise ApiError(422, "invalid request: data: not base64") from None

        def write(sb: LiveSandbox) -> None:
            proc = Process(sb, pid)
            if data or not body.close:
                proc.write(data)
            if body.close:
                proc.close_stdin()

        call_in(api, p, sid, write)
        return Response(status_code=204)

    return r
