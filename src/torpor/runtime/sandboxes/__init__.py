"""The sandbox resource: durable sandboxes for a developer's own agent loop, with pause to
zero memory, resume, snapshots, forks and an idle timeout (service.py has the whole
story). `records.py` holds the rows, `live.py` the handle a call gets and the output
streams a checkpoint detaches, `activity.py` what the serving process knows of its live
sandboxes (locks, calls in flight, the janitor thread), `housekeeping.py` what it does
besides the calls (idle timeouts, recovery at start, pausing at shutdown), `errors.py`
the errors.

    rt = torpor.Runtime()
    sbx = rt.sandboxes.create(image="base")
    with rt.sandboxes.use(sbx.id) as sb:
        print(sb.exec("uname -a").text)
    rt.sandboxes.pause(sbx.id)
"""

from torpor.runtime.sandboxes.errors import (
    AlreadyPaused,
    HeldElsewhere,
    InvalidSandbox,
    LifecycleFailed,
    NoSuchImage,
    NoSuchSandbox,
    NoSuchSnapshot,
    SandboxKilled,
    SandboxPaused,
    SandboxResourceError,
    SandboxStateError,
    TenantOverQuota,
)
from torpor.runtime.sandboxes.live import LiveSandbox
from torpor.runtime.sandboxes.records import SandboxRow, SnapshotRow
from torpor.runtime.sandboxes.service import DEFAULT_TIMEOUT, EVERY_TENANT, Sandboxes, Tenant

__all__ = [
    "DEFAULT_TIMEOUT", "EVERY_TENANT", "AlreadyPaused", "HeldElsewhere", "InvalidSandbox",
    "LifecycleFailed", "LiveSandbox", "NoSuchImage", "NoSuchSandbox", "NoSuchSnapshot",
    "SandboxKilled", "SandboxPaused", "SandboxResourceError", "SandboxRow",
    "SandboxStateError", "Sandboxes", "SnapshotRow", "Tenant", "TenantOverQuota",
]
