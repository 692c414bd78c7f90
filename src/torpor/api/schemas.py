"""The shapes the HTTP API declares in /openapi.json and checks: the request bodies, the
forms (patterns) of the values it takes, and the error body with `errors()`, the
`responses=` helper every route uses to say which error statuses it can answer."""

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
)
from starlette.exceptions import HTTPException

from torpor.agent.models import PROVIDERS
from torpor.runtime.db import STATES

API_VERSION = "v1"
MAX_SEQ = (1 << 63) - 1  # log seqs are 64-bit integers in the databases


class ApiError(HTTPException):
    """An HTTP error with a message for the client."""


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    """An error answer: the ErrorOut body with this status."""
    return JSONResponse({"message": message, "status": status, **extra}, status_code=status)


# -- error bodies: what /openapi.json says each operation can answer --------------------

class ErrorOut(BaseModel):
    """Every error answer (the body of `_error`): `message` says what is wrong and often
    how to fix it, `status` repeats the HTTP status; some add fields (`errors`: each
    problem of an invalid request)."""

    model_config = ConfigDict(extra="allow")
    message: str = Field(..., min_length=1)
    status: int = Field(..., ge=400, le=599)


_ERROR_WHY: dict[int, str] = {
    400: "Malformed request: the JSON body, Content-Length or a header",
    401: "No token, or an invalid or revoked one (WWW-Authenticate: Bearer)",
    403: "The token lacks the scope this needs",
    404: "No such session (or another tenant's), or nothing of that name in it",
    409: "Not possible in the session's present state",
    413: "The request body, or a message, is over the server's limit; or the tenant "
         "stores more snapshot bytes than its quota (the message names its largest "
         "sessions)",
    415: "The request body is not JSON",
    422: "Invalid request: the message (and `errors`) say what is wrong",
    429: "Over a tenant's limit (open sessions, turns, stored snapshots): close "
         "sessions, or retry later (Retry-After)",
    500: "Internal error (the server logs it)",
    503: "Not ready",
}
# Any request can get these whatever its route: from guard.Guard (413 for a body over the
# limit; 400 for a malformed Content-Length, unless the HTTP server refused it already)
# and from the handler of unexpected exceptions (500).
_ANY_ROUTE = (400, 413, 500)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` declaring these error statuses and _ANY_ROUTE's, each with
    the ErrorOut body (a route's own 422 replaces FastAPI's default one, whose body is
    not ours)."""
    return {s: {"model": ErrorOut, "description": _ERROR_WHY[s]}
            for s in sorted({*statuses, *_ANY_ROUTE})}  # fmt: skip


# close and cancel: the turn has not stopped within CANCEL_WAIT (the body is the session)
ACCEPTED: dict[str, Any] = {
    "model": dict[str, Any],
    "description": "Asked for: the worker running the turn stops it at its next safe point "
                   "(the session's `cancel` is set until then)"}  # fmt: skip


# -- forms the server checks, as patterns in the schema ---------------------------------

def _any_case(word: str) -> str:
    """`word` as a regex that ignores case: JSON Schema patterns (ECMA-262) have no flags."""
    assert word.isalnum(), word
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


# provider:name as open_model reads it: a provider it knows (in any case), a colon, a name.
# The name is printable ASCII, without a space at either end. The classes are spelled out
# because `.`, `\s` and `\S` differ between the regex engines that read these patterns
# (Python's, pydantic's, and JSON Schema's ECMA-262 in clients).
MODEL_PATTERN = (rf"^(?:{'|'.join(_any_case(p) for p in PROVIDERS)}):"
                 r"[!-~](?:[ -~]*[!-~])?$")  # fmt: skip
_MODEL_FORM = re.compile(MODEL_PATTERN)
# An image name, reference or digest prefix (ImageStore.get): no spaces, no control
# characters; printable ASCII, as image references are.
IMAGE_PATTERN = r"^[!-~]+$"
# A log seq as the events stream's Last-Event-ID header (checked in the handler: 400);
# at most 18 digits, so that every value it allows is a 64-bit integer.
SEQ_PATTERN = r"^[0-9]{1,18}$"
SEQ_FORM = re.compile(SEQ_PATTERN)


def _model_form(spec: str) -> str:
    # the pattern's check with a message that says how to mend it (pydantic's own names
    # only the pattern)
    if not _MODEL_FORM.fullmatch(spec):
        raise ValueError(f"model {spec!r} should look like provider:name, e.g. "
                         f"openai:gpt-4o-mini (providers: {', '.join(PROVIDERS)})")  # fmt: skip
    return spec


# -- request bodies --------------------------------------------------------------------

class _Body(BaseModel):
    # strict: a value of another JSON type than the schema's is refused (lax pydantic
    # takes `false` for an integer 0, "1" for 1), so the schema is exactly what is accepted
    model_config = ConfigDict(extra="forbid", strict=True)


def _integral(v: Any) -> Any:
    # JSON Schema's integer is a number without a fraction: 3.0 is one (strict pydantic
    # refuses it), `true` is not
    return int(v) if isinstance(v, float) and v.is_integer() else v


JsonInt = Annotated[int, BeforeValidator(_integral)]


# (stricter than Retention.parse, which takes any order: every string this pattern takes,
# the parser takes too)
RETENTION_PATTERN = r"^(|all|last=0*[1-9][0-9]{0,5}(,hourly=[0-9]{1,6})?(,daily=[0-9]{1,6})?)$"


class PolicyIn(_Body):
    snapshot_every_calls: JsonInt = Field(0, ge=0, le=1_000_000)
    snapshot_every_seconds: float = Field(0.0, ge=0, le=86_400)
    max_attempts: JsonInt = Field(8, ge=1, le=1000)
    backoff_base: float = Field(1.0, ge=0, le=3600)
    backoff_max: float = Field(300.0, ge=0, le=86_400)
    keep_snapshots: JsonInt = Field(0, ge=0, le=1_000_000,
                                    description="Keep only the newest N snapshots (0: "
                                                "`retention` decides).")  # fmt: skip
    retention: str = Field("", max_length=100, pattern=RETENTION_PATTERN,
                           description="Which wait-point snapshots stay: '' (the server's "
                                       "default), 'all', or last=N[,hourly=N][,daily=N] "
                                       "(N >= 1 for last; see docs/snapshots.md).")  # fmt: skip


class SessionIn(_Body):
    model: Annotated[str, AfterValidator(_model_form)] = Field(
        ..., min_length=3, max_length=1000, json_schema_extra={"pattern": MODEL_PATTERN},
        description="provider:name, e.g. openai:gpt-4o-mini, anthropic:claude-sonnet-4-5 "
                    "or script:PATH (when the server takes scripts); the provider must be "
                    "configured on the server (a key or a base URL)")  # fmt: skip
    image: str = Field("base", min_length=1, max_length=200, pattern=IMAGE_PATTERN,
                       description="An image of the server's (`torpor images`): a name or "
                                   "a digest prefix")  # fmt: skip
    system: str | None = Field(None, max_length=200_000)
    tools: list[Annotated[str, Field(max_length=200)]] | None = Field(None, max_length=200)
    policy: PolicyIn | None = None


class MessageIn(_Body):
    text: str = Field(..., min_length=1, description="The user's message.")


class ForkIn(_Body):
    snapshot: str | None = Field(None, max_length=200,
                                 description="Snapshot id (default: the latest).")


class ExecIn(_Body):
    argv: list[Annotated[str, Field(max_length=100_000)]] = Field(..., min_length=1,
                                                                  max_length=1000)
    timeout: float = Field(30.0, gt=0, le=600)
    workdir: str | None = Field(None, max_length=4096)


class StateName(StrEnum):
    created = "created"
    running = "running"
    waiting = "waiting"
    retrying = "retrying"
    recovering = "recovering"
    failed = "failed"
    closed = "closed"


assert {s.value for s in StateName} == set(STATES)

SessionId = Annotated[str, Field(min_length=1, max_length=200)]


# -- sandboxes (/v1/sandboxes) -------------------------------------------------------------

# Text that becomes a command's argument, environment or path: anything but a NUL byte
# (which no argv or path can hold).
NO_NUL = "^[^\u0000]*$"
_Text = Annotated[str, Field(max_length=100_000, pattern=NO_NUL)]
_Meta = Annotated[dict[Annotated[str, Field(max_length=200)],
                       Annotated[str, Field(max_length=10_000)]], Field(max_length=100)]
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")


def _env_names(env: dict[str, str]) -> dict[str, str]:
    bad = [k for k in env if not ENV_NAME.fullmatch(k)]
    if bad:
        raise ValueError(f"invalid environment variable name {bad[0]!r}: letters, digits "
                         "and '_', not starting with a digit")  # fmt: skip
    return env


# environment variables: a name as a shell takes it (propertyNames: pydantic would write a
# patternProperties, which lets any other name through), any value without a NUL
_Env = Annotated[dict[str, _Text], AfterValidator(_env_names), WithJsonSchema({
    "type": "object", "maxProperties": 500,
    "propertyNames": {"pattern": f"^{ENV_NAME.pattern}$"},
    "additionalProperties": {"type": "string", "maxLength": 100_000, "pattern": NO_NUL}}),
    Field(max_length=500)]
Command = Annotated[Annotated[str, Field(min_length=1, max_length=100_000, pattern=NO_NUL)]
                    | list[_Text], Field(
    description="A string runs with /bin/sh -c; a list is the argv as it is")]
SandboxId = Annotated[str, Field(min_length=1, max_length=200)]
SNAPSHOT_NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"


class OnTimeout(StrEnum):
    pause = "pause"
    kill = "kill"


OnTimeoutName = Literal["pause", "kill"]  # (in bodies: strict models take no enum values)
EncodingName = Literal["utf-8", "base64"]


class SandboxStateName(StrEnum):
    running = "running"
    paused = "paused"
    killed = "killed"


class SandboxIn(_Body):
    image: str = Field("base", min_length=1, max_length=200, pattern=IMAGE_PATTERN,
                       description="An image of the server's (`torpor images`)")
    snapshot: str | None = Field(None, min_length=1, max_length=300,
                                 description="Start from this snapshot of one of the "
                                             "tenant's sandboxes instead (its image wins)")
    timeout: float | None = Field(300.0, gt=0, le=30 * 86_400,
                                  description="Idle seconds before on_timeout (null: never)")
    on_timeout: OnTimeoutName = "pause"
    auto_resume: bool = Field(True, description="A call to it while paused resumes it first")
    metadata: _Meta = Field(default_factory=dict)
    env: _Env = Field(default_factory=dict, description="Given to every command")


class SandboxSettingsIn(_Body):
    """What a PATCH changes: the fields it names (timeout null: never time out; another
    null: unchanged)."""

    timeout: float | None = Field(None, gt=0, le=30 * 86_400)
    on_timeout: OnTimeoutName | None = None
    auto_resume: bool | None = None
    metadata: _Meta | None = None


class SandboxOut(BaseModel):
    id: str
    tenant: str | None
    image: str
    state: SandboxStateName
    timeout: float | None
    on_timeout: OnTimeout
    auto_resume: bool
    metadata: dict[str, str]
    snapshot: str | None = Field(description="The snapshot it resumes from (paused)")
    source: str | None = Field(description="The snapshot it was created from")
    machine: str | None
    note: str | None = Field(description="What happened to it that was not asked for")
    last_activity: float
    created_at: float
    updated_at: float
    paused_at: float | None
    killed_at: float | None
    resumed: bool | None = Field(None, description="resume: whether it was paused")


class SandboxListOut(BaseModel):
    sandboxes: list[SandboxOut]
    total: int
    next_offset: int | None


class SnapshotIn(_Body):
    name: str | None = Field(None, pattern=SNAPSHOT_NAME_PATTERN)


class SnapshotOut(BaseModel):
    id: str
    sandbox: str
    name: str
    kind: str = Field(description="pause (the one a paused sandbox resumes from) or snapshot")
    bytes: int
    created_at: float


class SnapshotListOut(BaseModel):
    snapshots: list[SnapshotOut]


class SandboxForkIn(_Body):
    snapshot: str | None = Field(None, min_length=1, max_length=300,
                                 description="One of its snapshots (default: one taken now)")


class Encoding(StrEnum):
    utf8 = "utf-8"
    base64 = "base64"


class SandboxExecIn(_Body):
    cmd: Command
    env: _Env = Field(default_factory=dict)
    cwd: str | None = Field(None, min_length=1, max_length=4096, pattern=NO_NUL)
    user: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL)
    timeout: float = Field(60.0, gt=0, le=86_400, description="Seconds; then it is stopped")
    stdin: str | None = Field(None, max_length=1 << 20, description="Fed to its stdin")
    encoding: EncodingName = Field("utf-8", description="Of the output lines' data "
                                   "(utf-8: invalid bytes replaced; base64: exact)")


class ProcessIn(_Body):
    cmd: Command
    env: _Env = Field(default_factory=dict)
    cwd: str | None = Field(None, min_length=1, max_length=4096, pattern=NO_NUL)
    user: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL)
    stdin: bool = Field(False, description="Keep its stdin open for POST .../stdin")


class ProcessOut(BaseModel):
    id: int
    pid: int | None
    state: str
    exit_code: int | None
    command: str


class ProcessListOut(BaseModel):
    processes: list[ProcessOut]


class ProcessOutputOut(BaseModel):
    stdout: str
    stderr: str
    encoding: Encoding
    state: str
    exit_code: int | None


class SignalIn(_Body):
    signal: str = Field("KILL", pattern=r"^(SIG)?[A-Z0-9]{1,10}$|^[0-9]{1,2}$",
                        description="A name (KILL, TERM, INT, HUP) or a number")


# standard base64 with its padding (what `base64.b64decode(..., validate=True)` takes)
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class StdinText(_Body):
    data: str = Field("", max_length=1 << 20, description="Written as utf-8")
    encoding: Literal["utf-8"] = "utf-8"
    close: bool = Field(False, description="Then close it: the process reads EOF")


class StdinBase64(_Body):
    data: str = Field("", max_length=1 << 20, pattern=BASE64, description="The bytes, base64")
    encoding: Literal["base64"]
    close: bool = Field(False, description="Then close it: the process reads EOF")


# two shapes, so that the document says what `data` must be for each encoding
StdinIn = StdinText | StdinBase64


class FileOut(BaseModel):
    name: str
    path: str
    type: str = Field(description="file, dir, symlink or other")
    size: int
    mode: int
    mtime: float
    uid: int
    gid: int
    link_target: str | None


class FileListOut(BaseModel):
    entries: list[FileOut]


ABS_PATH = "^/[^\u0000]*$"


class MkdirIn(_Body):
    path: str = Field(..., min_length=1, max_length=4096, pattern=ABS_PATH)
    parents: bool = True
    mode: JsonInt = Field(0o755, ge=0, le=0o7777)


class MkdirOut(BaseModel):
    created: bool


class MoveIn(_Body):
    src: str = Field(..., min_length=1, max_length=4096, pattern=ABS_PATH)
    dst: str = Field(..., min_length=1, max_length=4096, pattern=ABS_PATH)


# the lines of an NDJSON stream (exec, a process's output followed)
NDJSON = "application/x-ndjson"
STREAM_DOC: dict[str, Any] = {
    "description": "NDJSON, one JSON object per line as the output comes: "
                   '{"type": "stdout" | "stderr", "data": ...} (data in the asked '
                   'encoding), then one last line: {"type": "exit", "exit_code": N}, '
                   '{"type": "timeout", "exit_code": 124, "message": ...} or '
                   '{"type": "error", "message": ..., "status": N}',
    "content": {NDJSON: {"schema": {"type": "string"}}},
}
