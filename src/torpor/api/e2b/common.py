"""What the E2B control plane and torpor's envd share: who a request comes from (a torpor
token as E2B's API key, or as the envd access token), the sandbox it names, errors in
E2B's shape (`{"code", "message"}` with the HTTP status), and the views of sandboxes and
files in E2B's JSON.

Tokens: the control plane takes `X-API-KEY: <a torpor token>` (the `sandboxes` scope).
The SDK sends envd's calls with only the sandbox's headers, and `X-Access-Token` when
the create (or connect) answer held an `envdAccessToken`: torpor returns the caller's own
token there, so that envd's calls carry it too and are checked the same way. With auth
off (no token exists, loopback only) anyone is let in, as on /v1.
"""

from __future__ import annotations

import os
import posixpath
import stat as st
from datetime import UTC, datetime
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from starlette.requests import Request
from starlette.responses import JSONResponse

from torpor.api.deps import ApiState
from torpor.api.tokens import Principal
from torpor.runtime.sandboxes import (
    EVERY_TENANT,
    NoSuchSandbox,
    SandboxKilled,
    SandboxPaused,
    SandboxResourceError,
    SandboxRow,
    Tenant,
    TenantOverQuota,
)
from torpor.sandbox.engine import (
    FileEntry,
    ProcessNotFound,
    ProcessStdinClosed,
    SandboxError,
    SandboxFileError,
    SandboxFileExists,
    SandboxFileNotFound,
)

# The envd version torpor speaks: the SDK gates features on it (e2b/envd/versions.py).
# 0.5.7: stdin on Start (0.3.0), no user sent unless asked (0.4.0), CloseStdin (0.5.2),
# octet-stream uploads (0.5.7). Not 0.6.2+: file metadata and watch extras are not served.
ENVD_VERSION = "0.5.7"
CLIENT_ID = "torpor"
SANDBOX_HEADER = "e2b-sandbox-id"
FAR = 253402300799.0  # 9999-12-31: the end of a sandbox that never times out


class E2BError(Exception):
    """An error answer: the HTTP status and E2B's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def response(self) -> JSONResponse:
        return JSONResponse({"code": self.status, "message": self.message},
                            status_code=self.status)  # fmt: skip


def connect_error(e: BaseException, what: str = "") -> ConnectError:
    """The Connect error of a failure in a sandbox (E2B's codes)."""
    if isinstance(e, ConnectError):
        return e
    if isinstance(e, E2BError):
        code = {400: Code.INVALID_ARGUMENT, 401: Code.UNAUTHENTICATED,
                403: Code.PERMISSION_DENIED, 404: Code.NOT_FOUND}.get(e.status, Code.UNAVAILABLE)
        return ConnectError(code, e.message)
    if isinstance(e, SandboxFileNotFound):
        return ConnectError(Code.NOT_FOUND, f"path not found: {what or e}")
    if isinstance(e, SandboxFileExists):
        return ConnectError(Code.ALREADY_EXISTS, str(e))
    if isinstance(e, SandboxFileError):
        return ConnectError(Code.INVALID_ARGUMENT if e.reason != "permission_denied"
                            else Code.PERMISSION_DENIED, str(e))  # fmt: skip
    if isinstance(e, ProcessNotFound):
        return ConnectError(Code.NOT_FOUND, str(e))
    if isinstance(e, ProcessStdinClosed):
        return ConnectError(Code.FAILED_PRECONDITION, str(e))
    if isinstance(e, SandboxPaused):  # (not UNAVAILABLE: the SDK would drop the message)
        return ConnectError(Code.FAILED_PRECONDITION, f"{e}: Sandbox.connect() resumes it")
    if isinstance(e, (SandboxKilled, NoSuchSandbox)):
        return ConnectError(Code.NOT_FOUND, str(e))
    if isinstance(e, TenantOverQuota):
        return ConnectError(Code.RESOURCE_EXHAUSTED, str(e))
    if isinstance(e, (SandboxResourceError, SandboxError)):
        return ConnectError(Code.INTERNAL, str(e))
    return ConnectError(Code.INTERNAL, f"internal error ({type(e).__name__})")


def principal(api: ApiState, token: str | None, header: str) -> Principal:
    """Who sends the request: the torpor token in `header` (401 without a valid one,
    403 without the sandboxes scope)."""
    if not api.auth:
        return Principal(tenant=None)
    if not token:
        raise E2BError(401, f"missing {header}: set E2B_API_KEY to a torpor token "
                            "(torpor token create --tenant NAME --scope sandboxes)")  # fmt: skip
    p = api.tokens.check(token.strip())
    if p is None:
        raise E2BError(401, "invalid or revoked API key")
    if "sandboxes" not in p.scopes:
        raise E2BError(403, "this token lacks the 'sandboxes' scope")
    return p


def tenant_of(p: Principal) -> Tenant:
    return EVERY_TENANT if p.all_tenants else p.tenant


def api_key(request: Request) -> str | None:
    return request.headers.get("x-api-key")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(min(t, FAR), UTC).isoformat().replace("+00:00", "Z")


def sandbox_json(row: SandboxRow, token: str | None) -> dict[str, Any]:
    """The `Sandbox` of a create or connect answer."""
    d: dict[str, Any] = {"templateID": row.image, "sandboxID": row.id, "clientID": CLIENT_ID,
                         "envdVersion": ENVD_VERSION}  # fmt: skip
    if token:
        d["envdAccessToken"] = token
    return d


def detail_json(row: SandboxRow, last_activity: float) -> dict[str, Any]:
    """A `SandboxDetail` / `ListedSandbox`: the sandbox as GET and list show it. Its end
    is when its idle timeout would act now (torpor's timeout counts from the last
    call)."""
    end = FAR if row.timeout is None else last_activity + row.timeout
    return {
        "templateID": row.image, "sandboxID": row.id, "clientID": CLIENT_ID,
        "startedAt": _iso(row.created_at), "endAt": _iso(end),
        "envdVersion": ENVD_VERSION, "cpuCount": os.cpu_count() or 1,
        "memoryMB": _memory_mb(), "diskSizeMB": 0, "state": row.state,
        "metadata": row.metadata,
        "lifecycle": {"autoResume": row.auto_resume, "onTimeout": row.on_timeout},
    }  # fmt: skip


def _memory_mb() -> int:
    """What a sandbox may use: the host's memory (torpor sets no limit by default)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError):
        return 0


# -- files --------------------------------------------------------------------------------

HOME = "/root"  # the default user's (root's) home: relative paths start there


def home_of(user: str | None) -> str:
    return HOME if user in (None, "", "root") else f"/home/{user}"


def absolute(path: str, user: str | None = None) -> str:
    """An envd path: absolute, or relative to the user's home."""
    if not path:
        raise E2BError(400, "a path is needed")
    if "\0" in path:
        raise E2BError(400, "invalid path: it holds a NUL byte")
    return posixpath.normpath(path if path.startswith("/") else
                              posixpath.join(home_of(user), path))  # fmt: skip


_TYPES = {"file": "FILE_TYPE_FILE", "dir": "FILE_TYPE_DIRECTORY", "symlink": "FILE_TYPE_SYMLINK"}
_MODE_TYPE = {"file": st.S_IFREG, "dir": st.S_IFDIR, "symlink": st.S_IFLNK}


def entry_json(e: FileEntry) -> dict[str, Any]:
    """An `EntryInfo` (filesystem.proto) in proto3 JSON: int64 as a string, the file
    type by its enum name, the time in RFC 3339."""
    mode = e.mode | _MODE_TYPE.get(e.type, 0)
    d: dict[str, Any] = {
        "name": e.name, "type": _TYPES.get(e.type, "FILE_TYPE_UNSPECIFIED"), "path": e.path,
        "size": str(e.size), "mode": e.mode, "permissions": st.filemode(mode),
        "owner": "root" if e.uid == 0 else str(e.uid),
        "group": "root" if e.gid == 0 else str(e.gid),
        "modifiedTime": datetime.fromtimestamp(e.mtime, UTC).isoformat().replace("+00:00", "Z"),
    }  # fmt: skip
    if e.link_target is not None:
        d["symlinkTarget"] = e.link_target
    return d
