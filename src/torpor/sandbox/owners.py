"""Who owns a sandbox, whether that owner still lives, and reaping the orphans.

Every sandbox torpor starts records its owner in its record (`SandboxInfo.owner`):

    {"kind": "session" | "sandbox" | "standby" | "pool" | "runtime" | "user",
     "pid": 4242, "start_time": 123456, "boot": "<boot id>", "host": "vm",
     "session": "ses-...",            # session: for kind "session" only
     "sandbox": "sbx-..."}            # sandbox: for kind "sandbox" only

`kind` says what the sandbox is for: a session's turn, a sandbox of the sandbox resource
held live by a serving process (torpor.runtime.sandboxes: "sandbox"), a standby or a
pooled sandbox kept by a worker, anything else a runtime process starts ("runtime"), or
a user's own (`torpor run`, `torpor restore`, an engine used directly: "user", never
reaped). `pid`,
`start_time` (field 22 of /proc/PID/stat: clock ticks after boot) and `boot` (the
kernel's boot id) name one process: a pid reused by another process, or by one after a
reboot, does not pass for it. `host` keeps another machine's records (a TORPOR_HOME on
shared storage) from being judged here.

An owner is *gone* when, on this host, the process it names no longer runs (or is a
zombie), or the machine rebooted since. A sandbox whose owner is gone is an *orphan*:
nothing will ever snapshot or remove it. `reap_orphans` removes them; `torpor serve` and
`torpor worker` call it at start, `torpor ps -a` marks them, `torpor doctor` lists them.
A sandbox without an owner (an engine that records none) is never taken for an orphan.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torpor.sandbox.engine import SandboxError, SandboxNotFound

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from torpor.sandbox.engine import Engine, SandboxInfo

OwnerKind = Literal["session", "sandbox", "standby", "pool", "runtime", "user"]
OwnerState = Literal["alive", "gone", "elsewhere", "user", "unknown"]
KINDS = ("session", "sandbox", "standby", "pool", "runtime", "user")
PROC = Path("/proc")


def start_time(pid: int, proc: Path = PROC) -> int | None:
    """The process's start time (clock ticks after boot), or None if there is no such
    process or it is a zombie (dead, not yet reaped by its parent)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the name, in parentheses, may hold spaces
    try:
        state, ticks = fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None
    return None if state in ("Z", "X") else ticks


def boot_id(proc: Path = PROC) -> str | None:
    try:
        return (proc / "sys" / "kernel" / "random" / "boot_id").read_text().strip() or None
    except OSError:
        return None


@functools.cache
def _host() -> str:
    return socket.gethostname()


@functools.cache
def _me(pid: int) -> tuple[int | None, str | None]:
    return start_time(pid), boot_id()


def this_process(kind: str, *, session: str | None = None,
                 sandbox: str | None = None) -> dict[str, Any]:  # fmt: skip
    """An owner record naming this process (looked up once per pid: cheap to call)."""
    if kind not in KINDS:
        raise ValueError(f"unknown owner kind {kind!r}: use one of {KINDS}")
    pid = os.getpid()
    ticks, boot = _me(pid)
    owner: dict[str, Any] = {"kind": kind, "pid": pid, "start_time": ticks, "boot": boot,
                             "host": _host()}  # fmt: skip
    if session is not None:
        owner["session"] = session
    if sandbox is not None:
        owner["sandbox"] = sandbox
    return owner


def same_process(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two owner records name the same process (whatever their kinds)."""
    if not a or not b:
        return False
    keys = ("pid", "start_time", "boot", "host")
    return all(a.get(k) == b.get(k) for k in keys)


def owner_state(owner: dict[str, Any] | None, *, host: str | None = None,
                proc: Path = PROC) -> OwnerState:  # fmt: skip
    """What is known of the owner: "alive", its process runs; "gone", it does not (on
    this host), or the host rebooted since; "elsewhere", recorded on another host, not
    judged here; "user", a user's own sandbox (never an orphan); "unknown", no owner
    recorded (an engine that records none) or one without a pid."""
    if not owner:
        return "unknown"
    if owner.get("kind") == "user":
        return "user"
    if owner.get("host") != (host if host is not None else _host()):
        return "elsewhere"
    boot = boot_id(proc)
    if owner.get("boot") and boot and owner["boot"] != boot:
        return "gone"  # no process outlives a reboot
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return "unknown"
    ticks = start_time(pid, proc)
    if ticks is None:
        return "gone"
    if owner.get("start_time") is not None and ticks != owner["start_time"]:
        return "gone"  # the pid was reused by another process
    return "alive"


def is_orphan(owner: dict[str, Any] | None) -> bool:
    return owner_state(owner) == "gone"


def describe(owner: dict[str, Any] | None) -> str:
    """A short text for `ps`: 'session ses-1a2b (pid 4242)', 'pool (pid 4242)', 'user'."""
    if not owner:
        return "-"
    kind = str(owner.get("kind", "?"))
    if kind == "user":
        return "user"
    of = owner.get("session") or owner.get("sandbox")
    what = f"{kind} {of}" if of else kind
    return f"{what} (pid {owner.get('pid', '?')})"


def orphans(engine: Engine) -> list[SandboxInfo]:
    """The engine's sandboxes (in any state) whose owner is gone."""
    return [i for i in engine.list(all=True) if is_orphan(i.owner)]


def reap_orphans(engine: Engine) -> list[SandboxInfo]:
    """Remove every sandbox of the engine's home whose owner is gone (running ones are
    killed: nothing will snapshot them). Each is checked again under its lock, so one that
    a live process took over meanwhile (a standby claimed, a pooled sandbox renamed) is
    kept. Returns the records of those removed."""
    removed = []
    for info in orphans(engine):
        try:
            gone = engine.reap(info.id)
        except SandboxNotFound:  # removed by someone else meanwhile
            continue
        except SandboxError as e:  # runsc failed: the next reaper tries again
            log.warning("cannot reap orphan sandbox %s (%s): %s", info.name, info.id, e)
            continue
        if gone is not None:
            removed.append(gone)
    return removed
