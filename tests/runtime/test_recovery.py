"""Recovery as pure functions over a log (runtime/recovery.py): what a dead worker or a
lost snapshot took with it, and the notes that say so. No root, no sandbox, no database:
entries built in memory with the seqs a log would give them."""

from __future__ import annotations

from torpor.context import Entry
from torpor.runtime import recovery


def log(*entries: Entry) -> list[Entry]:
    for i, e in enumerate(entries, 1):
        e.seq = i
    return list(entries)


def call(cid: str, command: str) -> Entry:
    return Entry.tool_call(cid, "shell", {"command": command})


def result(cid: str) -> Entry:
    return Entry.tool_result(cid, "ok")


def snap(name: str, seq: int) -> Entry:
    return Entry.marker("snapshot_taken", snapshot=name, seq=seq, bytes=1, ms=1.0)


def state(s: str) -> Entry:
    return Entry.marker("state", state=s)


def test_snapshot_seqs_are_the_seq_each_snapshot_covers():
    entries = log(Entry.message("user", "hi"), snap("a", 1), call("c1", "ls"), result("c1"),
                  Entry.marker("snapshot_taken", snapshot="b"))  # fmt: skip
    # "b" has no seq of its own: the marker's position stands for it
    assert recovery.snapshot_seqs(entries) == {"a": 1, "b": 5}


def test_a_crash_after_a_snapshot_loses_answered_calls_and_interrupts_open_ones():
    entries = log(
        Entry.message("user", "go"),           # 1
        call("c0", "echo 0"), result("c0"),    # 2, 3: before the snapshot: kept
        snap("s1", 3),                         # 4
        call("c1", "echo 1"), result("c1"),    # 5, 6: answered after it: lost
        call("c2", "sleep 30"),                # 7: no result: interrupted
    )  # fmt: skip
    rec = recovery.crash_recovery(entries, restored="s1", row_snapshot="s1",
                                  row_snapshot_seq=3)  # fmt: skip
    assert rec.after == 3
    assert [c.tool_call_id for c in rec.lost] == ["c1"]
    assert [c.tool_call_id for c in rec.interrupted] == ["c2"]
    note = rec.note().fields()  # as the recovery_note marker is written
    assert note["snapshot"] == "s1" and note["after_seq"] == 3
    assert note["lost"] == ["c1"] and note["interrupted"] == ["c2"]
    assert "restored to the snapshot s1 taken at log seq 3" in note["text"]
    assert 'lost and may need redoing: shell({"command": "echo 1"})' in note["text"]
    assert 'interrupted: shell({"command": "sleep 30"})' in note["text"]
    assert "echo 0" not in note["text"]
    assert "may or may not have run" in rec.interrupted_result()


def test_a_crash_without_a_snapshot_names_a_fresh_sandbox_and_everything_since_seq_0():
    entries = log(Entry.message("user", "go"), call("c1", "make"), result("c1"))
    rec = recovery.crash_recovery(entries, restored=None, row_snapshot=None,
                                  row_snapshot_seq=None, warm_lost=True)  # fmt: skip
    assert rec.after == 0 and [c.tool_call_id for c in rec.lost] == ["c1"]
    assert rec.note().snapshot is None and rec.note().interrupted == []
    assert "a fresh sandbox" in rec.text and "keeping this session's sandbox warm" in rec.text


def test_a_forks_snapshot_counts_from_the_rows_seq_and_noted_calls_are_not_named_twice():
    # a fork's log holds no snapshot_taken marker for the snapshot it starts from
    entries = log(Entry.message("user", "a"), call("c1", "x"), result("c1"),
                  call("c2", "y"), result("c2"), call("c3", "z"), result("c3"))  # fmt: skip
    rec = recovery.crash_recovery(entries, restored="f", row_snapshot="f", row_snapshot_seq=3,
                                  noted={"c3"})  # fmt: skip
    assert rec.after == 3 and [c.tool_call_id for c in rec.lost] == ["c2"]
    # a snapshot that is neither in the log nor the row's: counted from seq 0
    other = recovery.crash_recovery(entries, restored="g", row_snapshot="f",
                                    row_snapshot_seq=3)  # fmt: skip
    assert other.after == 0 and len(other.lost) == 3


def test_a_fallback_names_the_calls_between_the_restored_and_the_lost_snapshot():
    entries = log(
        call("c1", "one"), result("c1"), snap("s1", 2),    # 1-3
        call("c2", "two"), result("c2"), snap("s2", 5),    # 4-6
        call("c3", "three"), result("c3"),                 # 7, 8: after s2, not lost by it
    )  # fmt: skip
    fb = recovery.fallback(entries, ["s2: corrupt"], "restored the older snapshot s1", "s1")
    note = fb.note().fields()
    assert note["since_seq"] == 2 and note["lost"] == ["c2"] and note["snapshot"] == "s1"
    assert note["failures"] == ["s2: corrupt"] and "after_seq" not in note
    assert note["text"].startswith("The session's latest snapshot could not be restored "
                                   "(s2: corrupt), so torpor restored the older snapshot s1.")
    assert 'shell({"command": "two"})' in note["text"] and "three" not in note["text"]
    fresh = recovery.fallback(entries, ["s1: gone", "s2: gone"], "started a fresh sandbox",
                              None)  # fmt: skip
    assert fresh.since == 0 and [c.tool_call_id for c in fresh.lost] == ["c1", "c2"]


def test_recoveries_in_a_row_count_crash_notes_since_the_last_wait_point():
    def note() -> Entry:
        return Entry.marker("recovery_note", text="x", after_seq=3)

    fallback = Entry.marker("recovery_note", text="older snapshot", failures=["a"])
    assert recovery.recoveries_in_a_row(log(state("waiting"), note(), note())) == 2
    assert recovery.recoveries_in_a_row(log(note(), state("failed"), fallback, note())) == 1
    died = log(*[note() for _ in range(recovery.MAX_RECOVERIES)])
    assert recovery.too_many_recoveries(died) is not None
    assert "cut short 3 times in a row" in (recovery.too_many_recoveries(died) or "")
    assert recovery.too_many_recoveries(died[1:]) is None
