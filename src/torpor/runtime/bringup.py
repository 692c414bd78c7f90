"""Bringing a session's sandbox up for a turn: the warm one this worker kept, else the
latest snapshot (waiting for another machine's upload of it, falling back to older ones
with a recovery note), else a fresh sandbox (from the pool when there is one); and after
a dead worker, the recovery: the note that says what was lost, and safe re-runs."""

from __future__ import annotations

import contextlib
import time

from torpor.context import Entry, markers
from torpor.runtime import recovery
from torpor.runtime.events import EventType
from torpor.runtime.turn import Turn
from torpor.runtime.types import MACHINE_TTL, SessionError
from torpor.sandbox import owners
from torpor.sandbox.engine import SandboxError


def bring_up(turn: Turn, *, reuse: bool = False) -> float | None:
    """Restore the latest snapshot (falling back to earlier ones), else start fresh.
    Returns the restore time in ms, or None for a fresh sandbox."""
    rt, row, name = turn.rt, turn.row, turn.sandbox
    eng = rt.engine
    owner = owners.this_process("session", session=row.id)  # reaped if this process dies
    if reuse:  # kept warm by this worker since the last turn
        with contextlib.suppress(SandboxError):
            if eng.inspect(name).state == "running":
                turn.record(markers.SandboxWarm(sandbox=name))
                return 0.0
    # A sandbox left by an earlier worker (one that died mid-turn) is in an unknown
    # state: the session always continues from its last snapshot.
    with contextlib.suppress(SandboxError):
        eng.remove(name, force=True)
    failures = []
    if rt.standby_size > 0:
        rt.standbys(row.image)  # the first time: set one up for the next resume
    for snap in [*reversed(row.snapshots)] if row.snapshots else []:
        why = await_upload(turn, snap)
        if why is not None:
            failures.append(f"{snap}: {why}")
            continue
        has_hot = rt.checkpoint_storage("has_hot_copy")
        hot = bool(has_hot and has_hot(snap))
        t0 = time.monotonic()
        try:
            info = eng.restore(snap, name=name, owner=owner)
        except SandboxError as e:  # corrupt, missing, or no longer fits this engine
            failures.append(f"{snap}: {e}")
            with contextlib.suppress(SandboxError):
                eng.remove(name, force=True)
            continue
        ms = (time.monotonic() - t0) * 1000
        turn.tr.restored = snap
        turn.record(markers.SessionRestored(snapshot=snap, ms=round(ms, 1),
                                            standby=info.from_standby, hot=hot))  # fmt: skip
        if failures:
            note_fallback(turn, failures, f"restored the older snapshot {snap}", snap)
        return ms
    t0 = time.monotonic()
    pooled = rt.pool_size > 0 and rt.pool(row.image).take(name, owner=owner)
    if not pooled:
        eng.run(rt.sandbox_spec(row.image), name=name, owner=owner)
    ms = (time.monotonic() - t0) * 1000
    turn.record(markers.SandboxStarted(image=row.image, ms=round(ms, 1), pooled=bool(pooled)))
    if failures:
        note_fallback(turn, failures, f"started a fresh sandbox from image {row.image}", None)
    return None


def await_upload(turn: Turn, snap: str) -> str | None:
    """Before restoring a snapshot another machine took: wait until that machine has
    uploaded it, while its heartbeat says it is alive (bounded by upload_wait). Returns
    why the snapshot cannot be had (its machine is gone, or too slow), or None."""
    rt = turn.rt
    found = rt.db.snapshot_holder(snap)
    available = rt.checkpoint_storage("available")
    if found is None or found[0] == rt.machine or available is None:
        return None  # taken here (or before holders were recorded)
    holder, process = found
    t0, waited = time.monotonic(), False
    while not available(snap):
        if not rt.db.process_alive(process, MACHINE_TTL):
            return (f"the machine {holder} that took it stopped before uploading it "
                    f"(its process {process} is gone, and its hot copy with it)")  # fmt: skip
        if time.monotonic() - t0 > rt.upload_wait:
            return f"machine {holder} had not uploaded it after {rt.upload_wait:g} s"
        if not waited:
            turn.emit(EventType.AWAITING_UPLOAD, snapshot=snap, machine=holder)
            waited = True
        time.sleep(0.05)
    if waited:
        ms = round((time.monotonic() - t0) * 1000, 1)
        turn.record(markers.UploadAwaited(snapshot=snap, machine=holder, ms=ms))
    return None


def note_fallback(turn: Turn, failures: list[str], what: str, restored: str | None) -> None:
    """The latest snapshot(s) could not be had: a recovery note says which, what was
    restored instead, and the tool calls whose effects on the sandbox went with them."""
    fb = recovery.fallback(turn.tr.entries(), failures, what, restored)
    turn.tr.noted.update(c.tool_call_id or "" for c in fb.lost)
    turn.record(fb.note())


def recover(turn: Turn, *, warm_lost: bool = False) -> None:
    """A worker died mid-turn. The sandbox is back at the last snapshot: say what
    happened after it, and re-run interrupted calls only where that is safe."""
    entries = turn.tr.entries()
    why = recovery.too_many_recoveries(entries)
    if why is not None:
        raise SessionError(why)
    rec = recovery.crash_recovery(
        entries, restored=turn.tr.restored, row_snapshot=turn.row.snapshot,
        row_snapshot_seq=turn.row.snapshot_seq, noted=turn.tr.noted, warm_lost=warm_lost)
    turn.record(rec.note())
    registry, ws = turn.registry, turn.workspace
    assert registry is not None and ws is not None  # the sandbox is up
    for c in rec.interrupted:
        tool_ok = c.tool_name in {s.name for s in registry.specs()}
        if tool_ok and registry.get(c.tool_name or "").safe_to_rerun:
            result = registry.run(c.tool_name or "", c.args() or {}, ws)
            content, meta = result.content, {"is_error": result.is_error, "rerun": True}
        else:
            content = rec.interrupted_result()
            meta = {"is_error": True, "interrupted": True}
        turn.write(Entry.tool_result(c.tool_call_id or "", content, meta=meta),
                   key=f"recover-{c.tool_call_id}")  # fmt: skip
