"""envd, E2B's in-sandbox daemon, served by torpor on the host: every call names its
sandbox with the `E2b-Sandbox-Id` header (the SDK's `E2B_SANDBOX_URL` routing), and acts
on it through the sandbox resource (torpor-init in the sandbox does the work, so nothing
of E2B's runs inside it and checkpoints stay whole).

`Envd` is the ASGI app of it: the caller and the sandbox are checked here for every call
(401 without a valid token, 502 for a sandbox that is not there, as E2B's proxy answers),
then REST (`GET /health`, `GET` and `POST /files`, below) or Connect-RPC (rpc.py).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import logging
import posixpath
import zlib
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from torpor.api.deps import ApiState
from torpor.api.e2b.common import SANDBOX_HEADER, E2BError, absolute, principal, tenant_of
from torpor.api.tokens import Principal
from torpor.runtime.sandboxes import (
    NoSuchSandbox,
    SandboxKilled,
    SandboxPaused,
    SandboxResourceError,
)
from torpor.runtime.sandboxes.live import LiveSandbox
from torpor.sandbox.engine import SandboxError, SandboxFileError, SandboxFileNotFound

RPC_PREFIXES = ("/process.Process/", "/filesystem.Filesystem/")
log = logging.getLogger("torpor.e2b")


class Caller:
    """Who calls envd, for which sandbox, as which user (None: the sandbox's own)."""

    def __init__(self, p: Principal, sid: str, user: str | None) -> None:
        self.principal, self.sid, self.user = p, sid, user

    @property
    def tenant(self) -> Any:
        return tenant_of(self.principal)


def basic_user(headers: Any) -> str | None:
    """The user of `Authorization: Basic base64("user:")`, as the SDK sends it when a
    command or file operation names one."""
    auth = headers.get("authorization") or ""
    if not auth.lower().startswith("basic "):
        return None
    try:
        user = base64.b64decode(auth[6:].strip(), validate=True).decode().split(":", 1)[0]
    except (binascii.Error, UnicodeDecodeError):
        return None
    return None if user in ("", "root") else user


def caller(api: ApiState, headers: Any) -> Caller:
    """The checked caller of an envd request (E2BError: 400, 401, 403, 502)."""
    sid = headers.get(SANDBOX_HEADER)
    if not sid:
        raise E2BError(400, "no sandbox named: send the E2b-Sandbox-Id header (set "
                            "E2B_SANDBOX_URL to this server)")  # fmt: skip
    p = principal(api, headers.get("x-access-token"), "X-Access-Token")
    try:
        row = api.runtime.sandboxes.row(sid, tenant=tenant_of(p))
    except NoSuchSandbox:
        raise E2BError(502, f"sandbox {sid} not found") from None
    if row.state == "killed":
        raise E2BError(502, f"sandbox {sid} not found (it was killed)")
    return Caller(p, sid, basic_user(headers))


def in_sandbox(api: ApiState, c: Caller, fn: Callable[[LiveSandbox], Any]) -> Any:
    """fn(the sandbox, live: resumed first if paused with auto_resume), as a call."""
    with api.runtime.sandboxes.use(c.sid, tenant=c.tenant) as sb:
        return fn(sb)


def _file_error(e: Exception, path: str) -> E2BError:
    if isinstance(e, SandboxFileNotFound):
        return E2BError(404, f"path not found: {path}")
    if isinstance(e, SandboxFileError):
        return E2BError(400, str(e))
    if isinstance(e, SandboxPaused):
        return E2BError(502, f"{e}: Sandbox.connect() resumes it")
    if isinstance(e, (SandboxKilled, NoSuchSandbox)):
        return E2BError(502, str(e))
    if isinstance(e, (SandboxResourceError, SandboxError)):
        return E2BError(500, str(e))
    log.exception("envd: unexpected error")
    return E2BError(500, f"internal error ({type(e).__name__})")


async def health(api: ApiState, c: Caller) -> Response:
    """204 while the sandbox runs; 502 when it is paused (nothing answers then)."""
    row = await run_in_threadpool(api.runtime.sandboxes.get, c.sid)
    return Response(status_code=204 if row.state == "running" else 502)


async def read_file(api: ApiState, c: Caller, request: Request) -> Response:
    path = absolute(request.query_params.get("path", ""),
                    request.query_params.get("username") or c.user)  # fmt: skip
    try:
        data = await run_in_threadpool(in_sandbox, api, c, lambda sb: sb.files.read(path))
    except Exception as e:  # noqa: BLE001 - each kind has its answer
        return _file_error(e, path).response()
    return Response(data, media_type="application/octet-stream")


async def _uploads(request: Request, path: str | None) -> list[tuple[str, bytes]]:
    """(path, data) of each file of a POST /files: one octet-stream body (at `path`,
    gzip-encoded or not), or multipart `file` parts (each at its file name, or at
    `path` when there is one part)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        if not path:
            raise E2BError(400, "an octet-stream upload needs the path parameter")
        data = await request.body()
        if request.headers.get("content-encoding", "").lower() == "gzip":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error):
                raise E2BError(400, "the body is not valid gzip") from None
        return [(path, data)]
    form = await request.form(max_files=10_000, max_fields=10_000)
    parts = [v for k, v in form.multi_items() if k == "file" and isinstance(v, UploadFile)]
    if not parts:
        raise E2BError(400, "no file part in the multipart body")
    out = []
    for part in parts:
        target = path if path and len(parts) == 1 else part.filename
        if not target:
            raise E2BError(400, "a file part without a name, and no path parameter")
        out.append((target, await part.read()))
    return out


async def write_files(api: ApiState, c: Caller, request: Request) -> Response:
    user = request.query_params.get("username") or c.user
    files = await _uploads(request, request.query_params.get("path"))
    written = [(absolute(p, user), data) for p, data in files]

    def write(sb: LiveSandbox) -> list[dict[str, str]]:
        for path, data in written:
            sb.files.write(path, data)
        return [{"name": posixpath.basename(p), "type": "file", "path": p} for p, _ in written]

    try:
        return JSONResponse(await run_in_threadpool(in_sandbox, api, c, write))
    except Exception as e:  # noqa: BLE001 - each kind has its answer
        return _file_error(e, written[0][0]).response()


class Envd:
    """The ASGI app of envd (see the module): REST here, RPC in `rpc`."""

    def __init__(self, api: ApiState, rpc: Any) -> None:
        self.api, self.rpc = api, rpc

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        try:
            c = await run_in_threadpool(caller, self.api, request.headers)
        except E2BError as e:
            await e.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = c
        path, method = scope["path"], scope["method"]
        if path.startswith(RPC_PREFIXES):
            await self.rpc(scope, receive, send)
            return
        try:
            if path == "/health" and method == "GET":
                resp = await health(self.api, c)
            elif path == "/files" and method == "GET":
                resp = await read_file(self.api, c, request)
            elif path == "/files" and method == "POST":
                resp = await write_files(self.api, c, request)
            else:
                raise E2BError(404, f"no such envd route: {method} {path}")
        except E2BError as e:
            resp = e.response()
        await resp(scope, receive, send)
