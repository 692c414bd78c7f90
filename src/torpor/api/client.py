"""A small Python client for torpor's HTTP API, shaped like the in-process one.

    c = Client("http://127.0.0.1:8420", token="tpk_...")
    s = c.create_session(model="openai:gpt-4o-mini")
    out = s.send("set up a repo")          # posts, then follows the events to the wait point
    for ev in s.events(after=0): ...       # the log as events, resumable by seq
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from torpor.runtime.events import Event


class ApiError(Exception):
    """The server answered with an error (status and its message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message


@dataclass
class RemoteTurn:
    """What `RemoteSession.send` returns: like the in-process TurnOutcome."""

    session: str
    turn: int
    state: str
    text: str = ""
    snapshot: str | None = None
    snapshot_bytes: int = 0
    snapshot_ms: float = 0.0
    restore_ms: float | None = None
    error: str | None = None  # why the session failed
    events: list[Event] = field(default_factory=list)


def _raise(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        msg = r.json().get("message") or r.text
    except ValueError:
        msg = r.text
    raise ApiError(r.status_code, str(msg))


def parse_sse(lines: Iterator[str], session: str | None = None) -> Iterator[Event]:
    """Events of a text/event-stream, one per blank-line-terminated block."""
    eid: int | None = None
    kind = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield Event(kind, json.loads("\n".join(data)), session=session, id=eid)
            eid, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            eid = int(value) if value.isdigit() else None
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)


class Client:
    """torpor over HTTP: `Client(base_url, token)`."""

    def __init__(self, base_url: str, token: str | None = None, *,
                 timeout: float = 30.0) -> None:  # fmt: skip
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ApiError(0, f"cannot reach {self.base_url}: {e}") from None
        _raise(r)
        return r.json()

    # -- sessions ----------------------------------------------------------------------

    def create_session(self, *, model: str, image: str = "base", system: str | None = None,
                       tools: list[str] | None = None,
                       policy: dict[str, Any] | None = None) -> RemoteSession:  # fmt: skip
        body: dict[str, Any] = {"model": model, "image": image}
        if system is not None:
            body["system"] = system
        if tools is not None:
            body["tools"] = tools
        if policy:
            body["policy"] = policy
        info = self.request("POST", "/v1/sessions", json=body)
        return RemoteSession(self, info["id"])

    def get_session(self, sid: str) -> RemoteSession:
        self.request("GET", f"/v1/sessions/{sid}")
        return RemoteSession(self, sid)

    def sessions(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every session the token may see (all pages)."""
        out: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            params: dict[str, Any] = {"offset": offset, "limit": 500}
            if state:
                params["state"] = state
            page = self.request("GET", "/v1/sessions", params=params)
            out.extend(page["sessions"])
            offset = page["next_offset"]
        return out


class RemoteSession:
    def __init__(self, client: Client, sid: str) -> None:
        self.client = client
        self.id = sid

    def __repr__(self) -> str:
        return f"RemoteSession({self.id!r})"

    def _path(self, rest: str = "") -> str:
        return f"/v1/sessions/{self.id}{rest}"

    def info(self) -> dict[str, Any]:
        return self.client.request("GET", self._path())

    def post(self, text: str, *, idempotency_key: str | None = None) -> int:
        """Queue a user message; returns its turn id."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return int(self.client.request("POST", self._path("/messages"), json={"text": text},
                                       headers=headers)["turn"])  # fmt: skip

    def log(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after: int | None = 0
        while after is not None:
            page = self.client.request("GET", self._path("/log"),
                                       params={"after": after, "limit": 500})  # fmt: skip
            out.extend(page["entries"])
            after = page["next_after"]
        return out

    def export(self, format: str = "openai") -> dict[str, Any]:
        return self.client.request("GET", self._path("/log/export"), params={"format": format})

    def snapshots(self) -> list[dict[str, Any]]:
        return self.client.request("GET", self._path("/snapshots"))["snapshots"]

    def fork(self, at: str | None = None) -> RemoteSession:
        body = {"snapshot": at} if at else {}
        info = self.client.request("POST", self._path("/fork"), json=body)
        return RemoteSession(self.client, info["id"])

    def cancel(self) -> dict[str, Any]:
        """Stop the running turn at its next safe point; returns the session's view
        (`cancel` still set: its worker has not reached a safe point yet)."""
        return self.client.request("POST", self._path("/cancel"))

    def close(self) -> dict[str, Any]:
        """Close the session (a running turn is cancelled first)."""
        return self.client.request("POST", self._path("/close"))

    def exec(self, argv: list[str], timeout: float = 30.0) -> dict[str, Any]:
        return self.client.request("POST", self._path("/sandbox/exec"),
                                   json={"argv": argv, "timeout": timeout})  # fmt: skip

    def events(self, after: int = 0, *, until: str | None = None, reconnect: bool = True,
               deadline: float | None = None) -> Iterator[Event]:  # fmt: skip
        """The session's log as events from seq `after` on; reconnects with Last-Event-ID
        when the connection drops (nothing is missed or repeated). With a deadline (a
        time.time()), raises TimeoutError once it has passed, events or not: the server's
        keepalives do not hold it off, and a silent stream is read in slices of at most
        5 s (then picked up again where it was)."""
        last = after

        def check_deadline() -> None:
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"no wait point of {self.id} before the deadline")

        def lines(r: httpx.Response) -> Iterator[str]:
            for line in r.iter_lines():  # keepalive comments included
                check_deadline()
                yield line

        while True:
            params: dict[str, Any] = {"after": last}
            if until:
                params["until"] = until
            read = None if deadline is None else max(0.05, min(5.0, deadline - time.time()))
            try:
                with self.client.http.stream(
                    "GET", self._path("/events"), params=params,
                    headers={"Last-Event-ID": str(last)}, timeout=httpx.Timeout(30, read=read),
                ) as r:  # fmt: skip
                    if r.status_code >= 400:
                        r.read()
                        _raise(r)
                    for ev in parse_sse(lines(r), self.id):
                        if ev.id is not None:
                            last = ev.id
                        yield ev
                return  # the server ended the stream (wait point asked for, or closed)
            except (httpx.TransportError, httpx.RemoteProtocolError):
                check_deadline()
                if not reconnect:
                    raise
                time.sleep(0.2)

    def send(self, text: str, *, on_event: Callable[[Event], None] | None = None,
             timeout: float = 600.0) -> RemoteTurn:  # fmt: skip
        """Post a message and follow the events until the turn's wait point."""
        head = int(self.info().get("head_seq", 0))
        turn = self.post(text)
        out = RemoteTurn(session=self.id, turn=turn, state="running")
        seen_user = False
        deadline = time.time() + timeout
        for ev in self._turn_events(head, turn, deadline, timeout):
            out.events.append(ev)
            if on_event:
                on_event(ev)
            d = ev.data
            if ev.type == "user":
                seen_user = True
            elif ev.type == "assistant" and seen_user:
                out.text = d.get("delta", "")
            elif ev.type == "snapshot" and seen_user:
                out.snapshot, out.snapshot_bytes = d.get("snapshot"), int(d.get("bytes") or 0)
                out.snapshot_ms = float(d.get("ms") or 0)
            elif ev.type == "restored":  # comes before the turn's user message
                out.restore_ms = float(d.get("ms") or 0)
            elif ev.type == "retry_scheduled" and seen_user:
                out.state = "retrying"
                return out
            elif ev.type == "state" and d.get("state") in ("waiting", "retrying", "closed") \
                    and seen_user:  # fmt: skip
                out.state = d["state"]
                return out
            elif ev.type == "state" and d.get("state") in ("closed", "failed"):
                out.state = d["state"]
                out.error = d.get("error")
                return out
        out.state = self.info()["state"]
        return out

    def _turn_events(self, head: int, turn: int, deadline: float,
                     timeout: float) -> Iterator[Event]:  # fmt: skip
        try:
            yield from self.events(after=head, deadline=deadline)
        except TimeoutError:
            raise TimeoutError(f"turn {turn} of {self.id} not done after {timeout} s") from None
