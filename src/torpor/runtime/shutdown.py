"""Stopping a worker process (`torpor worker`, `torpor serve`) without leaving sandboxes.

On SIGTERM or SIGINT the process:

1. claims no more turns (`Runtime.stopping`; `Worker.run_once` then finds nothing);
2. lets the turns it is running finish, for at most `grace` seconds;
3. abandons the turns still running then: their log is fenced (a new epoch, so whatever
   the turn's thread still tries to write is refused), their lease released at once (the
   session stays `running`, so the next worker to look, here or elsewhere, recovers it
   from its last snapshot with a recovery note, as after a crash, without waiting for
   the lease to expire) and their sandboxes removed;
4. closes the runtime: warm sandboxes are snapshotted (`Worker.cool_all`), pools and
   standbys drained, snapshot uploads flushed.

So nothing it started runs after it exits. A process killed with SIGKILL cannot do any
of this: its sandboxes stay behind as orphans (their owner is gone, see
torpor.sandbox.owners) and the next `torpor worker` or `torpor serve` of the home removes
them at its start (`reap_at_start`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING

from torpor.runtime.besteffort import best_effort
from torpor.sandbox import owners
from torpor.sandbox.engine import SandboxError, SandboxInfo

if TYPE_CHECKING:
    from torpor.runtime.core import Runtime

DEFAULT_GRACE = 5.0  # seconds running turns get to finish (Docker's stop waits 10 s)
_abandon_lock = threading.Lock()


def running_turns(rt: Runtime) -> list[tuple[str, str]]:
    """(worker owner, session) of every turn this runtime's workers are running now."""
    return [(w.owner, sid) for w in rt.workers for sid in w.busy()]


def wait_for_turns(rt: Runtime, grace: float) -> bool:
    """Wait up to `grace` seconds for the running turns to finish; True if they did."""
    deadline = time.monotonic() + grace
    while running_turns(rt):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def abandon(rt: Runtime, worker: str, sid: str) -> None:
    """Give up a turn this process runs: fence its log, release its lease, remove its
    sandbox (if it is still this process's), so that another worker recovers it."""
    with best_effort("fencing the log of session %s", sid):
        rt.log.acquire(sid)  # the turn's thread can write nothing more
    with best_effort("releasing the lease of session %s", sid):
        rt.db.update(sid, owner=worker, lease_owner=None, lease_until=None)
    name, me = f"s-{sid}", owners.this_process("session")
    with contextlib.suppress(SandboxError):
        info = rt.engine.inspect(name)
        if owners.same_process(info.owner, me):
            rt.engine.remove(info.id, force=True)


def abandon_running_turns(rt: Runtime) -> list[str]:
    """`abandon` every turn still running; returns their sessions."""
    with _abandon_lock:
        turns = running_turns(rt)
        for worker, sid in turns:
            abandon(rt, worker, sid)
        return [sid for _, sid in turns]


def shutdown(rt: Runtime, grace: float = DEFAULT_GRACE) -> list[str]:
    """Stop taking turns, let running ones finish for `grace` seconds, abandon the rest,
    then close the runtime (warm sandboxes snapshotted, pools and standbys removed).
    Returns the sessions whose turns were abandoned."""
    rt.stopping.set()
    abandoned = [] if wait_for_turns(rt, grace) else abandon_running_turns(rt)
    rt.close(drain_pools=True)
    return abandoned


def reap_at_start(rt: Runtime) -> list[SandboxInfo]:
    """Remove the sandboxes of this home whose owner is gone (a process killed before it
    could clean up). Returns their records."""
    return owners.reap_orphans(rt.engine)
