"""The shapes the HTTP API declares in /openapi.json and checks: the request bodies, the
forms (patterns) of the values it takes, and the error body with `errors()`, the
`responses=` helper every route uses to say which error statuses it can answer."""

import re
from enum import StrEnum
from typing import Annotated, Any

from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
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
