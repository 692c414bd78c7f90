"""The /v1/sandboxes routes into a running sandbox (`sandboxes` scope): a command with its
output streamed (NDJSON, see torpor.api.sandbox_calls for why), background processes
(start, list, output, stdin, signals), and files (read, write, list, stat, remove, mkdir,
move). A call to a paused sandbox resumes it first when its auto_resume is on (else 409),
and counts as activity for its idle timeout."""

import base64
import contextlib
import threading
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from torpor.api.deps import Api, ApiState, SandboxUser, auth_errors
from torpor.api.sandbox_calls import (
    Emit,
    answering,
    encode,
    file_view,
    from_thread,
    ndjson,
    process_view,
    tenant_of,
)
from torpor.api.schemas import (
    ABS_PATH,
    API_VERSION,
    NDJSON,
    STREAM_DOC,
    ApiError,
    Encoding,
    FileListOut,
    FileOut,
    MkdirIn,
    MkdirOut,
    MoveIn,
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
from torpor.runtime.sandboxes.service import LiveSandbox
from torpor.sandbox.handle import Process

Path = Annotated[str, Query(min_length=1, max_length=4096, pattern=ABS_PATH,
                            description="An absolute path in the sandbox")]  # fmt: skip
BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _live(api: ApiState, p: Principal, sid: str,
          stack: contextlib.ExitStack) -> LiveSandbox:  # fmt: skip
    """The sandbox live (resumed if need be), held until `stack` closes."""
    with answering():
        return stack.enter_context(api.runtime.sandboxes.use(sid, tenant=tenant_of(p)))


def _in(api: ApiState, p: Principal, sid: str, fn: Callable[[LiveSandbox], Any]) -> Any:
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
        return _in(api, p, sid, lambda sb: _process(sb, sb.spawn(
            body.cmd, env=body.env, cwd=body.cwd, user=body.user, stdin=body.stdin).id))

    @r.get("/processes", response_model=ProcessListOut, responses=errors(*AUTH, 404, 409, 422))
    def list_processes(sid: SandboxId, p: SandboxUser, api: Api) -> dict[str, Any]:
        """The processes started in it (commands and background ones), running or exited."""
        return {"processes": [process_view(i) for i in _in(api, p, sid,
                                                           lambda sb: sb.processes())]}

    @r.get("/processes/{pid}", response_model=ProcessOut,
           responses=errors(*AUTH, 404, 409, 422))  # fmt: skip
    def get_process(sid: SandboxId, pid: int, p: SandboxUser, api: Api) -> dict[str, Any]:
        return _in(api, p, sid, lambda sb: _process(sb, pid))

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

        return _in(api, p, sid, read)

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

        return _in(api, p, sid, kill)

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

        _in(api, p, sid, write)
        return Response(status_code=204)

    # -- files ----------------------------------------------------------------------------

    @r.get("/files", response_class=Response,
           responses={200: {"content": BINARY, "description": "The file's bytes"},
                      **errors(*AUTH, 404, 409, 422)})  # fmt: skip
    def read_file(sid: SandboxId, path: Path, p: SandboxUser, api: Api) -> Response:
        """A regular file's contents."""
        data = _in(api, p, sid, lambda sb: sb.files.read(path))
        return Response(data, media_type="application/octet-stream")

    @r.put("/files", response_model=FileOut, responses=errors(*AUTH, 404, 409, 413, 422),
           openapi_extra={"requestBody": {"content": BINARY, "required": True}})  # fmt: skip
    async def write_file(sid: SandboxId, path: Path, request: Request, p: SandboxUser,
                         api: Api, mode: Annotated[int, Query(ge=0, le=0o7777)] = 0o644,
                         ) -> dict[str, Any]:  # fmt: skip
        """Create or replace a file with the request's body (any content type; missing
        parent directories are created)."""
        data = await request.body()

        def write(sb: LiveSandbox) -> dict[str, Any]:
            sb.files.write(path, data, mode=mode)
            return file_view(sb.files.stat(path))

        return await run_in_threadpool(_in, api, p, sid, write)

    @r.delete("/files", status_code=204, response_class=Response,
              responses=errors(*AUTH, 404, 409, 422))  # fmt: skip
    def remove_file(sid: SandboxId, path: Path, p: SandboxUser, api: Api,
                    recursive: bool = False) -> Response:  # fmt: skip
        """Remove a file, a link or an empty directory (`recursive`: any directory)."""
        _in(api, p, sid, lambda sb: sb.files.remove(path, recursive=recursive))
        return Response(status_code=204)

    @r.get("/files/list", response_model=FileListOut, responses=errors(*AUTH, 404, 409, 422))
    def list_files(sid: SandboxId, path: Path, p: SandboxUser, api: Api,
                   depth: Annotated[int, Query(ge=1, le=20)] = 1) -> dict[str, Any]:  # fmt: skip
        """A directory's entries, sorted by name, down to `depth` levels."""
        entries = _in(api, p, sid, lambda sb: sb.files.list(path, depth=depth))
        return {"entries": [file_view(e) for e in entries]}

    @r.get("/files/stat", response_model=FileOut, responses=errors(*AUTH, 404, 409, 422))
    def stat_file(sid: SandboxId, path: Path, p: SandboxUser, api: Api,
                  follow: bool = False) -> dict[str, Any]:  # fmt: skip
        """What is at `path` (the link itself unless `follow`)."""
        return file_view(_in(api, p, sid, lambda sb: sb.files.stat(path, follow=follow)))

    @r.post("/files/mkdir", response_model=MkdirOut,
            responses=errors(*AUTH, 404, 409, 415, 422))  # fmt: skip
    def make_dir(sid: SandboxId, body: MkdirIn, p: SandboxUser, api: Api) -> dict[str, Any]:
        """Create a directory (`created`: false if it was there already, with parents)."""
        created = _in(api, p, sid, lambda sb: sb.files.mkdir(body.path, parents=body.parents,
                                                             mode=body.mode))  # fmt: skip
        return {"created": created}

    @r.post("/files/move", status_code=204, response_class=Response,
            responses=errors(*AUTH, 404, 409, 415, 422))  # fmt: skip
    def move_file(sid: SandboxId, body: MoveIn, p: SandboxUser, api: Api) -> Response:
        """Rename `src` to `dst` (replacing a file there)."""
        _in(api, p, sid, lambda sb: sb.files.move(body.src, body.dst))
        return Response(status_code=204)

    return r
