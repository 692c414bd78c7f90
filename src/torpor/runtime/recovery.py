"""Recovery, as pure functions over a session's log: what a dead worker or a lost snapshot
took with it (tool calls whose effects on the sandbox are gone, calls interrupted), the
recovery note that says so (its text and fields), and how many times in a row a turn was
cut short. No I/O here: the worker (runtime/bringup.py) appends the notes and re-runs."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from torpor.context import Entry, markers
from torpor.context.markers import RecoveryNote

# A session whose turns died this many times in a row (the worker gone each time, no wait
# point reached in between) fails with the last error instead of being recovered again.
MAX_RECOVERIES = 3


def snapshot_seqs(entries: list[Entry]) -> dict[str, int]:
    """Each snapshot of the log's `snapshot_taken` markers -> the log seq it was taken at."""
    return {m.snapshot: int(m.seq or e.seq)
            for e, m in markers.each(entries, markers.SnapshotTaken) if m.snapshot}


def lost_calls(entries: list[Entry], after: int, until: int) -> list[Entry]:
    """The answered tool calls logged after seq `after` and up to seq `until`: what a
    sandbox restored to the snapshot at `after` lost when the one at `until` was lost."""
    answered = {e.tool_call_id for e in entries if e.kind == "tool_result"}
    return [e for e in entries if e.kind == "tool_call" and after < e.seq <= until
            and e.tool_call_id in answered]  # fmt: skip


def recoveries_in_a_row(entries: list[Entry]) -> int:
    """How many times the current turn has been recovered after a dead worker: the recovery
    notes since the session last reached a wait point (or was sent a new message after
    failing)."""
    n = 0
    for e in reversed(entries):
        m = markers.parse(e)
        if isinstance(m, markers.State) and m.ends_turn:
            break
        if isinstance(m, RecoveryNote) and m.after_crash:
            n += 1
    return n


def too_many_recoveries(entries: list[Entry]) -> str | None:
    """Why the turn is not recovered again (MAX_RECOVERIES in a row), or None."""
    died = recoveries_in_a_row(entries)
    if died < MAX_RECOVERIES:
        return None
    return (f"the session's turn was cut short {died} times in a row (its worker stopped "
            "each time before a wait point); not trying again: send a new message to"
            " retry, or fork it from an earlier snapshot")  # fmt: skip


def calls_text(calls: list[Entry]) -> str:
    """Tool calls as a note names them: `name(arguments); ...`."""
    return "; ".join(f"{c.tool_name}({c.arguments})" for c in calls)


LOST = "Effects of these tool calls on the sandbox were lost and may need redoing: "


@dataclass(frozen=True)
class CrashRecovery:
    """What a worker that died mid-turn (or with the session's sandbox kept warm) left:
    the sandbox is back at `restored` (taken at log seq `after`; None: a fresh sandbox)."""

    restored: str | None
    after: int
    lost: list[Entry]  # answered calls after the snapshot: their effects are gone
    interrupted: list[Entry]  # calls with no result: they may or may not have run
    warm_lost: bool  # the worker was keeping the sandbox warm after the last turn

    @property
    def where(self) -> str:
        if self.restored:
            return f"the snapshot {self.restored} taken at log seq {self.after}"
        return "a fresh sandbox (there was no snapshot to restore)"

    @property
    def text(self) -> str:
        who = ("keeping this session's sandbox warm after its last turn" if self.warm_lost
               else "running this session")  # fmt: skip
        parts = [f"The worker {who} stopped before snapshotting it; the sandbox was "
                 f"restored to {self.where}."]  # fmt: skip
        if self.lost:
            parts.append(LOST + calls_text(self.lost) + ".")
        if self.interrupted:
            parts.append("These calls were interrupted: " + calls_text(self.interrupted) + ".")
        return " ".join(parts)

    def note(self) -> RecoveryNote:
        return RecoveryNote(text=self.text, snapshot=self.restored, after_seq=self.after,
                            lost=[c.tool_call_id or "" for c in self.lost],
                            interrupted=[c.tool_call_id or "" for c in self.interrupted])

    def interrupted_result(self) -> str:
        """The result an interrupted call that is not safe to re-run gets."""
        return (f"[torpor] interrupted by a worker crash: this call may or may not "
                f"have run, and the sandbox has since been restored to {self.where}.")


def crash_recovery(entries: list[Entry], *, restored: str | None, row_snapshot: str | None,
                   row_snapshot_seq: int | None, noted: Collection[str] = (),
                   warm_lost: bool = False) -> CrashRecovery:  # fmt: skip
    """The recovery of a turn whose worker died, the sandbox restored to `restored` (the
    snapshot this turn restored: an older one than the session's latest if that one was
    lost with its machine; None for a fresh sandbox). The row's snapshot seq counts for a
    snapshot whose marker is not in this log (a fork's). Calls in `noted` were already
    named as lost by a fallback note."""
    after = 0
    if restored:
        after = snapshot_seqs(entries).get(
            restored, (row_snapshot_seq or 0) if restored == row_snapshot else 0)
    calls = {e.tool_call_id: e for e in entries if e.kind == "tool_call" and e.seq > after}
    answered = {e.tool_call_id for e in entries if e.kind == "tool_result"}
    lost = [c for cid, c in calls.items() if cid in answered and cid not in noted]
    interrupted = [c for cid, c in calls.items() if cid not in answered]
    return CrashRecovery(restored, after, lost, interrupted, warm_lost)


@dataclass(frozen=True)
class Fallback:
    """The latest snapshot(s) could not be had (`failures`: "snapshot: why"); torpor did
    `what` instead, from `restored` (None: a fresh sandbox) taken at log seq `since`."""

    failures: list[str]
    what: str
    restored: str | None
    since: int
    lost: list[Entry]  # the calls between the restored snapshot and the newest failed one

    @property
    def text(self) -> str:
        text = ("The session's latest snapshot could not be restored ("
                + "; ".join(self.failures)
                + f"), so torpor {self.what}. Files and processes created after that point"
                " are gone; the conversation log is complete.")  # fmt: skip
        if self.lost:
            text += " " + LOST + calls_text(self.lost) + "."
        return text

    def note(self) -> RecoveryNote:
        return RecoveryNote(text=self.text, failures=self.failures, snapshot=self.restored,
                            since_seq=self.since, lost=[c.tool_call_id or "" for c in self.lost])


def fallback(entries: list[Entry], failures: list[str], what: str,
             restored: str | None) -> Fallback:  # fmt: skip
    """Say which snapshots could not be had, what was restored instead, and the tool
    calls whose effects on the sandbox went with them (those between the restored snapshot
    and the newest failed one)."""
    taken = snapshot_seqs(entries)
    after = taken.get(restored, 0) if restored else 0
    until = max((taken.get(f.split(":", 1)[0], 0) for f in failures), default=0)
    return Fallback(failures, what, restored, after, lost_calls(entries, after, until))
