"""The routes that read a session's log: its entries a page at a time, the whole log as
OpenAI or Anthropic messages, and the snapshots (and restores) its markers record."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from torpor.api.deps import Api, ApiState, Drive, Limits, auth_errors
from torpor.api.schemas import API_VERSION, MAX_SEQ, SessionId, errors
from torpor.context import markers, to_anthropic, to_openai


def snapshots_of(api: ApiState, sid: str) -> list[dict[str, Any]]:
    """The session's snapshots from its log's markers, each with its restores."""
    out: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    for e in api.runtime.log.iter(sid):
        m = markers.parse(e)
        if isinstance(m, markers.SnapshotTaken):
            s = {"snapshot": m.snapshot, "log_seq": e.seq, "covers_seq": m.seq,
                 "bytes": m.bytes, "ms": m.ms, "mid_turn": m.mid_turn, "at": e.created_at,
                 "restores": []}  # fmt: skip
            out.append(s)
            by_id[m.snapshot] = s
        elif isinstance(m, markers.SessionRestored) and m.snapshot in by_id:
            by_id[m.snapshot]["restores"].append(
                {"log_seq": e.seq, "ms": m.ms, "at": e.created_at})
    return out


def router(auth: bool, limits: Limits) -> APIRouter:
    r = APIRouter(prefix=f"/{API_VERSION}")
    AUTH = auth_errors(auth)

    @r.get("/sessions/{sid}/log", tags=["log"], responses=errors(*AUTH, 404, 422))
    def read_log(
        sid: SessionId, p: Drive, api: Api,
        after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
        limit: Annotated[int, Query(ge=1, le=limits.max_page)] = 100,
    ) -> dict[str, Any]:
        """Log entries with seq > after, at most `limit`; `next_after` pages on."""
        api.row_of(p, sid)
        entries = api.runtime.log.read(sid, after=after, limit=limit)
        nxt = entries[-1].seq if len(entries) == limit else None
        return {"entries": [e.to_dict() for e in entries], "next_after": nxt}

    @r.get("/sessions/{sid}/log/export", tags=["log"],
           responses=errors(*AUTH, 404, 422))  # fmt: skip
    def export_log(
        sid: SessionId, p: Drive, api: Api, format: Literal["openai", "anthropic"] = "openai"
    ) -> dict[str, Any]:
        """The whole log as OpenAI chat messages or an Anthropic Messages payload."""
        api.row_of(p, sid)
        entries = list(api.runtime.log.iter(sid))
        if format == "openai":
            return {"format": "openai", "messages": to_openai(entries)}
        return {"format": "anthropic", **to_anthropic(entries)}

    @r.get("/sessions/{sid}/snapshots", tags=["snapshots"],
           responses=errors(*AUTH, 404, 422))  # fmt: skip
    def list_snapshots(sid: SessionId, p: Drive, api: Api) -> dict[str, Any]:
        """The session's snapshots with size and time, and the restores of each."""
        api.row_of(p, sid)
        return {"snapshots": snapshots_of(api, sid)}

    return r
