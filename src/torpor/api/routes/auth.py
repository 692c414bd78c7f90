"""The /v1/whoami route: the tenant, scopes and token id of the request's token."""

from typing import Any

from fastapi import APIRouter, Request

from torpor.api.deps import auth_errors, principal
from torpor.api.schemas import API_VERSION, errors


def router(auth: bool) -> APIRouter:
    r = APIRouter(prefix=f"/{API_VERSION}")

    @r.get("/whoami", tags=["auth"], responses=errors(*auth_errors(auth)[:1]))
    def whoami(request: Request) -> dict[str, Any]:
        # the header is read here, not taken as a parameter: then the document declares no
        # 422 (FastAPI's default for routes with parameters), which this cannot answer
        p = principal(request, request.headers.get("authorization"))
        return {"tenant": p.tenant, "scopes": sorted(p.scopes), "token": p.token_id}

    return r
