"""The routes into a session's sandbox, for humans debugging (`exec` scope): run a
command, read a file. While a turn runs they use its live sandbox; otherwise a throwaway
restore of the latest snapshot, whose changes are discarded."""

import base64
import logging
import secrets
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query

from torpor.api.deps import Api, ApiState, Exec, auth_errors
from torpor.api.schemas import API_VERSION, ApiError, ExecIn, SessionId, errors
from torpor.runtime.db import SessionRow
from torpor.sandbox.engine import SandboxError
from torpor.sandbox.handle import Sandbox

log = logging.getLogger("torpor.api")

OUTPUT_LIMIT = 64 * 1024  # bytes of stdout/stderr (exec) or file content returned


def in_sandbox(api: ApiState, row: SessionRow, fn: Callable[[Sandbox], Any]) -> Any:
    """Run fn(sandbox) on the session's live sandbox while a turn runs, else on a
    throwaway restore of its latest snapshot (changes there are discarded). fn runs
    once: when it fails in the live sandbox, that is the answer (a command that timed
    out there may have done its work; it is never run a second time elsewhere)."""
    eng = api.runtime.engine
    if row.lease_owner and (row.lease_until or 0) > time.time():
        try:
            live = Sandbox.get(f"s-{row.id}", engine=eng)
            running = live.state == "running"
        except SandboxError:
            running = False  # between a restore and the next: look at the snapshot
        if running:
            return fn(live)
    if not row.snapshot:
        raise ApiError(409, f"session {row.id} has no sandbox to look at yet (no "
                            "snapshot: send it a message first)")  # fmt: skip
    try:
        throwaway = Sandbox.restore(row.snapshot, engine=eng,
                                    name=f"dbg-{row.id}-{secrets.token_hex(3)}")  # fmt: skip
    except SandboxError as e:
        raise ApiError(409, f"cannot restore snapshot {row.snapshot}: {e}") from None
    try:
        return fn(throwaway)
    finally:
        try:
            throwaway.kill()
        except SandboxError as e:  # reaped with this process's other orphans otherwise
            log.warning("removing the debugging sandbox %s failed: %s", throwaway.ref, e)


def router(auth: bool) -> APIRouter:
    r = APIRouter(prefix=f"/{API_VERSION}")
    AUTH = auth_errors(auth)

    @r.post("/sessions/{sid}/sandbox/exec", tags=["sandbox"],
            responses=errors(*AUTH, 404, 409, 415, 422))  # fmt: skip
    def sandbox_exec(sid: SessionId, body: ExecIn, p: Exec, api: Api) -> dict[str, Any]:
        """Run a command in the session's sandbox (for humans debugging; `exec` scope).
        On a waiting session it runs in a throwaway restore of the latest snapshot."""
        row = api.row_of(p, sid)

        def run(sb: Sandbox) -> Any:
            return sb.exec(body.argv, cwd=body.workdir, timeout=body.timeout)

        try:
            r = in_sandbox(api, row, run)
        except SandboxError as e:
            raise ApiError(409, f"exec failed: {e}") from None
        return {"exit_code": r.exit_code,
                "stdout": r.stdout[:OUTPUT_LIMIT].decode(errors="replace"),
                "stderr": r.stderr[:OUTPUT_LIMIT].decode(errors="replace"),
                "truncated": max(len(r.stdout), len(r.stderr)) > OUTPUT_LIMIT}  # fmt: skip

    @r.get("/sessions/{sid}/sandbox/file", tags=["sandbox"],
           responses=errors(*AUTH, 404, 409, 422))  # fmt: skip
    def sandbox_file(sid: SessionId, p: Exec, api: Api,
                     path: Annotated[str, Query(
                         min_length=1, max_length=4096, json_schema_extra={"pattern": "^/"},
                         description="An absolute path (checked below: 422)")]
                     ) -> dict[str, Any]:  # fmt: skip
        """Read a file from the session's sandbox (`exec` scope)."""
        row = api.row_of(p, sid)
        if not path.startswith("/"):
            raise ApiError(422, "path must be absolute")
        max_bytes = api.limits.file_bytes
        try:
            data: bytes = in_sandbox(api, row, lambda sb: sb.files.read(path))
        except (SandboxError, OSError) as e:
            raise ApiError(404, f"cannot read {path}: {e}") from None
        cut = data[:max_bytes]
        try:
            text, enc = cut.decode(), "utf-8"
        except UnicodeDecodeError:
            text, enc = base64.b64encode(cut).decode(), "base64"
        return {"path": path, "size": len(data), "truncated": len(data) > max_bytes,
                "encoding": enc, "content": text}  # fmt: skip

    return r
