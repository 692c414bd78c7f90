"""A small Python client for torpor's HTTP API. A RemoteSession is a SessionLike, as the
in-process Session is: the same calls, returning the same types (TurnOutcome, SessionRow,
Entry, Event).

    c = Client("http://127.0.0.1:8420", token="tpk_...")
    s = c.create_session(model="openai:gpt-4o-mini")
    out = s.send("set up a repo")          # posts, then follows the events to the wait point
    for ev in s.events(after=0): ...       # the log as events, resumable by seq
    sb = c.sandboxes.create(image="base")  # a sandbox for your own loop (sandbox_client.py)
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from torpor.api.remote import ApiError, raise_for
from torpor.api.sandbox_client import Sandboxes
from torpor.context import Entry
from torpor.runtime.db import SessionRow
from torpor.runtime.events import Event, EventType
from torpor.runtime.types import EventSink, TurnOutcome

RemoteTurn = TurnOutcome  # what RemoteSession.send returned before it was a TurnOutcome


_raise = raise_for  # (its name before the clients shared it)


def session_row(view: dict[str, Any]) -> SessionRow:
    """The session record of the API's view of a session (which adds head_seq, busy)."""
    return SessionRow(**{k: v for k, v in view.items() if k in SessionRow.__dataclass_fields__})


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
        return r.json() if r.content else None

    @property
    def sandboxes(self) -> Sandboxes:
        """The server's sandbox resource: create, get, list (torpor.api.sandbox_client)."""
        return Sandboxes(self)

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

    def sessions(self, state: str | None = None) -> list[SessionRow]:
        """Every session the token may see (all pages), as Runtime.sessions gives them."""
        out: list[SessionRow] = []
        offset: int | None = 0
        while offset is not None:
            params: dict[str, Any] = {"offset": offset, "limit": 500}
            if state:
                params["state"] = state
            page = self.request("GET", "/v1/sessions", params=params)
            out.extend(session_row(d) for d in page["sessions"])
            offset = page["next_offset"]
        return out


class RemoteSession:
    """A session over HTTP; a SessionLike (torpor.runtime.types), as Session is."""

    def __init__(self, client: Client, sid: str) -> None:
        self.client = client
        self.id = sid

    def __repr__(self) -> str:
        return f"RemoteSession({self.id!r})"

    def _path(self, rest: str = "") -> str:
        return f"/v1/sessions/{self.id}{rest}"

    def view(self) -> dict[str, Any]:
        """The API's view of the session: its record plus `head_seq` and `busy`."""
        return self.client.request("GET", self._path())

    def info(self) -> SessionRow:
        return session_row(self.view())

    def post(self, text: str, *, idempotency_key: str | None = None) -> int:
        """Queue a user message; returns its turn id."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return int(self.client.request("POST", self._path("/messages"), json={"text": text},
                                       headers=headers)["turn"])  # fmt: skip

    def log(self) -> list[Entry]:
        out: list[Entry] = []
        after: int | None = 0
        while after is not None:
            page = self.client.request("GET", self._path("/log"),
                                       params={"after": after, "limit": 500})  # fmt: skip
            out.extend(Entry(**d) for d in page["entries"])
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

    def cancel(self) -> SessionRow:
        """Stop the running turn at its next safe point; returns the session's record
        (`cancel` still set: its worker has not reached a safe point yet)."""
        return session_row(self.client.request("POST", self._path("/cancel")))

    def close(self) -> SessionRow:
        """Close the session (a running turn is cancelled first); its record (state
        `closed`, or `cancel` still set while the turn runs on to its safe point)."""
        return session_row(self.client.request("POST", self._path("/close")))

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

    def send(self, text: str, *, on_event: EventSink | None = None,
             timeout: float = 600.0) -> TurnOutcome:  # fmt: skip
        """Post a message and follow the events until the turn's wait point."""
        for ev in self.stream(text, timeout=timeout):
            if ev.type == EventType.OUTCOME:
                outcome: TurnOutcome = ev["outcome"]
                return outcome
            if on_event:
                on_event(ev)
        raise AssertionError("unreachable: stream ends with its outcome")

    def stream(self, text: str, *, timeout: float = 600.0) -> Iterator[Event]:
        """`send` as a generator of the turn's events from the server's stream; the last
        one is the `outcome` event (ev["outcome"]: the TurnOutcome), as Session.stream."""
        head = int(self.view().get("head_seq", 0))
        turn = self.post(text)
        out = TurnOutcome(session=self.id, state="running", turn=turn)
        deadline = time.time() + timeout
        seen_user = done = False
        with contextlib.closing(self._turn_events(head, turn, deadline, timeout)) as evs:
            for ev in evs:
                out.events.append(ev)
                yield ev
                seen_user = seen_user or ev.type == EventType.USER
                if _settle(out, ev, seen_user):
                    done = True
                    break
        if not done:  # the server ended the stream (the session was closed)
            out.state = self.info().state
        yield Event(EventType.OUTCOME.value, {"outcome": out}, session=self.id)

    def _turn_events(self, head: int, turn: int, deadline: float,
                     timeout: float) -> Iterator[Event]:  # fmt: skip
        try:
            yield from self.events(after=head, deadline=deadline)
        except TimeoutError:
            raise TimeoutError(f"turn {turn} of {self.id} not done after {timeout} s") from None


def _settle(out: TurnOutcome, ev: Event, seen_user: bool) -> bool:
    """Take what one event of a turn says into its outcome; True once the turn ended."""
    d, t = ev.data, ev.type
    if t == EventType.ASSISTANT and seen_user:
        out.text = d.get("delta", "")
    elif t == EventType.SNAPSHOT and seen_user:
        out.snapshot, out.snapshot_bytes = d.get("snapshot"), int(d.get("bytes") or 0)
        out.snapshot_ms = float(d.get("ms") or 0)
    elif t == EventType.RESTORED:  # comes before the turn's user message
        out.restore_ms = float(d.get("ms") or 0)
    elif t == EventType.SANDBOX_WARM:  # no restore: the sandbox kept running
        out.restore_ms = 0.0
    elif t == EventType.RECOVERY and d.get("after_seq") is not None:  # a dead worker's
        out.recovered = True
    elif t == EventType.CANCELLED:
        out.cancelled = True
    elif t == EventType.RETRY_SCHEDULED and seen_user:
        out.state, out.wake_at, out.error = "retrying", d.get("wake_at"), None
        return True
    elif t == EventType.STATE and d.get("state") in ("waiting", "retrying", "closed") \
            and seen_user:  # fmt: skip
        out.state = d["state"]
        return True
    elif t == EventType.STATE and d.get("state") in ("closed", "failed"):
        out.state = d["state"]
        out.error = d.get("error")
        return True
    return False
