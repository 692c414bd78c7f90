"""One scenario run through both kinds of session, the in-process Session and the HTTP
client's RemoteSession: both are a SessionLike and answer with the same types (TurnOutcome,
SessionRow, Entry, Event), with the same event names and fields for the same log entries.
Real sandboxes and a real server (tests/api/conftest.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.api.conftest import Server, make_runtime, shell
from torpor.api.client import Client
from torpor.context import Entry, markers
from torpor.runtime.core import Runtime
from torpor.runtime.db import SessionRow
from torpor.runtime.events import Event, event_of
from torpor.runtime.types import SessionLike, TurnOutcome
from torpor.sandbox.gvisor import GVisorEngine

Make = Callable[[str], SessionLike]


@pytest.fixture(params=["in-process", "over-http"])
def make_session(request: pytest.FixtureRequest, server: Server, api_home: Path,
                 api_engine: GVisorEngine, tmp_path: Path) -> Iterator[Make]:  # fmt: skip
    """A factory of sessions (model spec -> session) of one kind."""
    if request.param == "in-process":  # a runtime of its own: the server's workers
        rt: Runtime = make_runtime(api_home, api_engine, tmp_path / "local.db")  # never see
        yield lambda model: rt.create_session(model=model)
        rt.close()
        for row in rt.sessions():
            with contextlib.suppress(Exception):
                api_engine.remove(f"s-{row.id}", force=True)
    else:
        with Client(server.url, server.token("t-protocol")) as c:
            yield lambda model: c.create_session(model=model)


def without_time(ev: Event) -> dict[str, object]:
    return {k: v for k, v in ev.data.items() if k != "at"}


def test_the_same_scenario_through_session_and_remote_session(make_session: Make, script):
    model = script([
        {"text": "starting", "tool_calls": [shell("mkdir -p /work; echo 41 > /work/n")]},
        {"text": "first done"},
        {"text": "reading", "tool_calls": [shell("cat /work/n")]},
        {"text": "second done"},
    ])  # fmt: skip
    s = make_session(model)
    assert isinstance(s, SessionLike)
    seen: list[Event] = []
    out = s.send("start", on_event=seen.append)
    assert isinstance(out, TurnOutcome) and out.session == s.id and out.turn is not None
    assert (out.state, out.text, out.restore_ms, out.recovered) == ("waiting", "first done",
                                                                    None, False)
    assert out.snapshot and out.snapshot_bytes > 0 and out.snapshot_ms > 0
    assert seen and all(isinstance(e, Event) and e.session == s.id for e in seen)
    assert [e.type for e in out.events] == [e.type for e in seen]
    kinds = [e.type for e in seen]
    for kind in ("sandbox_started", "tool_call_started", "tool_call_finished", "snapshot"):
        assert kind in kinds, kinds
    assert kinds.index("tool_call_started") < kinds.index("snapshot")
    assert seen[-1].type == "state" and seen[-1]["state"] == "waiting"
    snap = next(e for e in seen if e.type == "snapshot")
    assert snap["snapshot"] == out.snapshot and snap["bytes"] == out.snapshot_bytes
    log = s.log()
    assert all(isinstance(e, Entry) for e in log)
    # an event that reports a log entry is that entry's event, whoever sent it
    by_seq = {e.seq: e for e in log}
    reported = [e for e in seen if e.id is not None]
    assert {e.type for e in reported} >= {"state", "sandbox_started", "snapshot", "user"}
    for ev in reported:
        assert without_time(ev) == without_time(event_of(by_seq[ev.id])), ev.type

    evs = list(s.stream("read"))
    assert evs[-1].type == "outcome"
    second = evs[-1]["outcome"]
    assert isinstance(second, TurnOutcome) and second.text == "second done"
    assert second.restore_ms is not None and second.restore_ms > 0
    assert "restored" in [e.type for e in evs]
    results = [str(e.content) for e in s.log() if e.kind == "tool_result"]
    assert results[-1].strip().endswith("41")

    info = s.info()
    assert isinstance(info, SessionRow)
    assert (info.id, info.state, info.snapshot) == (s.id, "waiting", second.snapshot)
    taken = [m.snapshot for _, m in markers.each(s.log(), markers.SnapshotTaken)]
    assert taken == [out.snapshot, second.snapshot]

    child = s.fork(out.snapshot)
    assert isinstance(child, SessionLike) and child.id != s.id
    crow = child.info()
    assert (crow.parent, crow.snapshot, crow.state) == (s.id, out.snapshot, "waiting")

    row = s.cancel()  # nothing running: done at once
    assert isinstance(row, SessionRow) and row.state == "waiting" and row.cancel is None
    row = s.close()
    assert isinstance(row, SessionRow) and row.state == "closed"
    assert s.info().state == "closed" and child.close().state == "closed"
