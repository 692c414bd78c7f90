"""The /v1/sandboxes routes of a sandbox's files (`sandboxes` scope): read and write (the
file's bytes as they are), list, stat, remove, mkdir, move. A call to a paused sandbox
resumes it first when its auto_resume is on (else 409)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from torpor.api.deps import Api, SandboxUser, auth_errors
from torpor.api.routes.sandbox_io import BINARY, call_in
from torpor.api.sandbox_calls import file_view
from torpor.api.schemas import (
    ABS_PATH,
    API_VERSION,
    FileListOut,
    FileOut,
    MkdirIn,
    MkdirOut,
    MoveIn,
    SandboxId,
    errors,
)
from torpor.runtime.sandboxes.live import LiveSandbox

Path = Annotated[str, Query(min_length=1, max_length=4096, pattern=ABS_PATH,
                            description="An absolute path in the sandbox")]  # fmt: skip


def router(auth: bool) -> APIRouter:
    r = APIRouter(prefix=f"/{API_VERSION}/sandboxes/{{sid}}", tags=["sandboxes"])
    AUTH = auth_errors(auth)
    # -- files ----------------------------------------------------------------------------

    @r.get("/files", response_class=Response,
           responses={200: {"content": BINARY, "description": "The file's bytes"},
                      **errors(*AUTH, 404, 409, 422)})  # fmt: skip
    def read_file(sid: SandboxId, path: Path, p: SandboxUser, api: Api) -> Response:
        """A regular file's contents."""
        data = call_in(api, p, sid, lambda sb: sb.files.read(path))
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

        return await run_in_threadpool(call_in, api, p, sid, write)

    @r.delete("/files", status_code=204, response_class=Response,
              responses=errors(*AUTH, 404, 409, 422))  # fmt: skip
    def remove_file(sid: SandboxId, path: Path, p: SandboxUser, api: Api,
                    recursive: bool = False) -> Response:  # fmt: skip
        """Remove a file, a link or an empty directory (`recursive`: any directory)."""
        call_in(api, p, sid, lambda sb: sb.files.remove(path, recursive=recursive))
        return Response(status_code=204)

    @r.get("/files/list", response_model=FileListOut, responses=errors(*AUTH, 404, 409, 422))
    def list_files(sid: SandboxId, path: Path, p: SandboxUser, api: Api,
                   depth: Annotated[int, Query(ge=1, le=20)] = 1) -> dict[str, Any]:  # fmt: skip
        """A directory's entries, sorted by name, down to `depth` levels."""
        entries = call_in(api, p, sid, lambda sb: sb.files.list(path, depth=depth))
        return {"entries": [file_view(e) for e in entries]}

    @r.get("/files/stat", response_model=FileOut, responses=errors(*AUTH, 404, 409, 422))
    def stat_file(sid: SandboxId, path: Path, p: SandboxUser, api: Api,
                  follow: bool = False) -> dict[str, Any]:  # fmt: skip
        """What is at `path` (the link itself unless `follow`)."""
        return file_view(call_in(api, p, sid, lambda sb: sb.files.stat(path, follow=follow)))

    @r.post("/files/mkdir", response_model=MkdirOut,
            responses=errors(*AUTH, 404, 409, 415, 422))  # fmt: skip
    def make_dir(sid: SandboxId, body: MkdirIn, p: SandboxUser, api: Api) -> dict[str, Any]:
        """Create a directory (`created`: false if it was there already, with parents)."""
        created = call_in(api, p, sid, lambda sb: sb.files.mkdir(body.path, parents=body.parents,
                                                             mode=body.mode))  # fmt: skip
        return {"created": created}

    @r.post("/files/move", status_code=204, response_class=Response,
            responses=errors(*AUTH, 404, 409, 415, 422))  # fmt: skip
    def move_file(sid: SandboxId, body: MoveIn, p: SandboxUser, api: Api) -> Response:
        """Rename `src` to `dst` (replacing a file there)."""
        call_in(api, p, sid, lambda sb: sb.files.move(body.src, body.dst))
        return Response(status_code=204)

    return r
