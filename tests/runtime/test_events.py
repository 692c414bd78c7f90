"""One vocabulary of events (runtime/events.py): every marker torpor defines has its own
event, the names are the ones the SSE stream, the client, the CLI and the dashboard use,
and an Event reads both as an object and as the mapping the runtime's events used to be.
Pure: no sandbox, no database."""

from __future__ import annotations

import re
from pathlib import Path

from torpor.context import Entry, markers
from torpor.runtime.events import FOR_MARKER, OUTPUT_LIMIT, Event, EventType, event_of

DASHBOARD = Path(__file__).resolve().parents[2] / "src/torpor/api/dashboard/dashboard.js"
WORKER_ONLY = {EventType.AWAITING_UPLOAD, EventType.TURN_FINISHED, EventType.OUTCOME}


def test_every_defined_marker_has_its_own_event():
    assert set(FOR_MARKER) == set(markers.BY_NAME.values())
    kinds = list(FOR_MARKER.values())
    assert len(kinds) == len(set(kinds)), "two markers share an event name"
    for cls, kind in FOR_MARKER.items():
        ev = event_of(cls().entry())
        assert ev.type == kind and ev.type != EventType.MARKER, cls.NAME
    # the names that changed in issue 16 are gone for good
    assert {"recovered", "warm"}.isdisjoint(set(EventType))
    assert EventType.RECOVERY == "recovery" and EventType.SANDBOX_WARM == "sandbox_warm"


def test_an_entrys_event_carries_its_fields_seq_and_time():
    e = markers.SnapshotTaken(snapshot="ck", seq=7, bytes=10, ms=5.0, machine="m1").entry()
    e.seq, e.session, e.created_at = 9, "ses-x", "2026-01-01T00:00:00Z"
    ev = event_of(e)
    assert (ev.type, ev.id, ev.session) == ("snapshot", 9, "ses-x")
    assert ev.data == {"snapshot": "ck", "covers_seq": 7, "bytes": 10, "ms": 5.0,
                       "mid_turn": False, "machine": "m1", "seq": 9,
                       "at": "2026-01-01T00:00:00Z"}  # fmt: skip
    other = Entry.marker("my_own", x=1)
    assert (event_of(other).type, event_of(other).data["marker"]) == ("marker", "my_own")
    big = Entry.tool_result("c1", "y" * (OUTPUT_LIMIT + 1), meta={"is_error": False})
    d = event_of(big).data
    assert d["truncated"] and d["output_chars"] == OUTPUT_LIMIT + 1


def test_an_event_reads_as_an_object_and_as_a_mapping():
    ev = Event("restored", {"snapshot": "ck", "ms": 30.0, "id": "not-the-seq"}, session="s",
               id=4, t=12.5)  # fmt: skip
    assert ev.type == "restored" and ev.data["ms"] == 30.0 and ev.id == 4
    assert ev["type"] == "restored" and ev["ms"] == 30.0 and ev["session"] == "s"
    assert ev["t"] == 12.5 and ev.get("standby") is None and "snapshot" in ev
    assert ev["id"] == "not-the-seq"  # a tool call's id, as the dict events had it
    assert dict(ev) == {"type": "restored", "session": "s", "t": 12.5, "snapshot": "ck",
                        "ms": 30.0, "id": "not-the-seq"}  # fmt: skip
    assert ev.to_json()["data"] == ev.data and ev.to_json()["id"] == 4


def test_the_dashboard_renders_every_event_the_stream_sends():
    js = DASHBOARD.read_text()
    block = js[js.index("const render = {"):js.index("};", js.index("const render = {"))]
    rendered = set(re.findall(r"^\s{4}(\w+):", block, re.M))
    streamed = {str(k) for k in EventType} - {str(k) for k in WORKER_ONLY}
    assert streamed <= rendered, f"the dashboard does not render {streamed - rendered}"
