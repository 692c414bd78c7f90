"""Start and stop of the long-running commands (`torpor worker`, `torpor serve`).

At start: the sandboxes of the home whose owner is gone are removed, one line each on
stderr. On SIGTERM or SIGINT: no more turns are claimed, running ones get `--grace`
seconds, then the rest is abandoned (to be recovered by another worker) and the runtime
closed, so the process leaves no sandbox behind and exits 0 (torpor.runtime.shutdown).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import typer

from torpor.runtime.shutdown import DEFAULT_GRACE

AffinityOpt = typer.Option(0.5, "--affinity", help="Seconds a new message waits for the "
                           "machine that holds the session's latest snapshot (its hot copy) "
                           "before this process may take it (0: at once).")  # fmt: skip
PrefetchOpt = typer.Option(True, "--prefetch/--no-prefetch", help="Fetch each new snapshot "
                           "of the sessions this machine follows (one other live machine per "
                           "session) into its hot cache ahead, so a turn their machine cannot "
                           "take resumes here from a hot copy (PostgreSQL only).")  # fmt: skip


def _retention(spec: str | None) -> str | None:
    from torpor.snapshots.retention import Retention, RetentionError

    try:
        return Retention.parse(spec).spec if spec else spec
    except RetentionError as e:
        raise typer.BadParameter(str(e)) from None


RetentionOpt = typer.Option(None, "--retention", envvar="TORPOR_RETENTION",
                            callback=_retention, help="Which wait-point snapshots of each "
                            "session stay, unless its policy says otherwise: 'all', or "
                            "last=N,hourly=N,daily=N (default last=3,hourly=24,daily=7: the "
                            "newest 3, then the newest of each of the 24 latest hours and 7 "
                            "latest days that have one; see docs/snapshots.md).")  # fmt: skip
GcEveryOpt = typer.Option(3600.0, "--gc-every", min=0, help="Seconds between scheduled "
                          "garbage collections of the snapshot store and the log's blobs "
                          "(one process per store runs each, under a lease in the database; "
                          "0: none here).")  # fmt: skip
QuotaBytesOpt = typer.Option(0, "--tenant-stored-bytes", min=0, help="Per-tenant quota on "
                             "stored snapshot bytes (the scheduled gc's count plus what was "
                             "stored since; 0: none), unless the tenant has its own (`torpor "
                             "quota set`). Over it, new sessions, forks, sandboxes and sandbox "
                             "snapshots are refused (413) and its sessions keep only their "
                             "newest snapshot.")  # fmt: skip
QuotaSnapshotsOpt = typer.Option(0, "--tenant-snapshots", min=0, help="Per-tenant quota on "
                                 "stored snapshots, its sessions' and sandboxes' (0: none), "
                                 "unless the tenant has its own (`torpor quota set`). Over it, "
                                 "new sessions, forks, sandboxes and sandbox snapshots are "
                                 "refused (429) and its sessions keep only their newest "
                                 "snapshot.")  # fmt: skip
ClosedDaysOpt = typer.Option(7.0, "--closed-snapshot-days", min=0, help="Days a closed "
                             "session's snapshots are kept before the scheduled gc deletes "
                             "them (its log stays; 0: kept for good).")  # fmt: skip
GraceOpt = typer.Option(DEFAULT_GRACE, "--grace", help="On SIGTERM/SIGINT, seconds the "
                        "running turns get to finish; then they are left to another worker "
                        "to recover from their last snapshot (their sandboxes "
                        "removed).")  # fmt: skip
LogLevelOpt = typer.Option("info", "--log-level", help="What torpor logs to stderr: debug, "
                           "info, warning or error (default: TORPOR_LOG_LEVEL, else "
                           "info).", envvar="TORPOR_LOG_LEVEL")  # fmt: skip
LOG_LEVELS = ("debug", "info", "warning", "error")


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler on sys.stderr as it is when a record is logged, not when the handler was
    made (the stdlib's own such handler, logging._StderrHandler, is private): a caller
    that swaps sys.stderr (click's test runner) never leaves it writing to a closed one."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(level: str) -> None:
    """torpor's loggers (torpor.*) to stderr at `level`, one line each with its time."""
    if level.lower() not in LOG_LEVELS:
        raise typer.BadParameter(f"{level!r}: use one of {', '.join(LOG_LEVELS)}",
                                 param_hint="--log-level")  # fmt: skip
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(asctime)s torpor %(levelname)s %(name)s: "
                                           "%(message)s"))  # fmt: skip
    root = logging.getLogger("torpor")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def reap(rt: Any) -> None:
    """Remove the home's orphaned sandboxes (owner gone), saying so on stderr."""
    from torpor.runtime.shutdown import reap_at_start
    from torpor.sandbox.owners import describe

    for info in reap_at_start(rt):
        sys.stderr.write(f"torpor: removed orphaned sandbox {info.name} ({info.state}; owner "
                         f"{describe(info.owner)} is gone)\n")  # fmt: skip


def recover_sandboxes(rt: Any) -> None:
    """After `reap`: the sandbox resource's rows of sandboxes whose holder died say so
    (paused at their last snapshot, or killed), one line each on stderr."""
    for row in rt.sandboxes.recover():
        sys.stderr.write(f"torpor: sandbox {row.id} was lost with the process that held it: "
                         f"{row.state} ({row.note})\n")  # fmt: skip


def say_abandoned(sessions: list[str]) -> None:
    for sid in sessions:
        sys.stderr.write(f"torpor: stopped before the turn of session {sid} finished: its "
                         "sandbox was removed; the next worker recovers it from its last "
                         "snapshot\n")  # fmt: skip


class StopOnSignal:
    """From the moment it is made, SIGTERM and SIGINT set `stop` instead of killing the
    process (made first thing in a command, so that a signal during start-up stops it
    cleanly too); `run` then runs the command's work until it returns or a signal came."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.signalled = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, *_: Any) -> None:
        self.signalled.set()
        self.stop.set()
        # A second Ctrl-C quits at once (what is left running is reaped by the next start).
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def run(self, work: Callable[[], Any]) -> bool:
        """Run `work` in a thread until it returns or a signal sets `stop` (the signals
        are handled in this, the main, thread meanwhile). Re-raises what `work` raised
        unless a signal came; returns whether one did."""
        failure: list[BaseException] = []

        def target() -> None:
            try:
                work()
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                failure.append(e)

        t = threading.Thread(target=target, name="torpor-work", daemon=True)
        t.start()
        while t.is_alive() and not self.stop.wait(0.2):
            pass
        if failure and not self.signalled.is_set():
            raise failure[0]
        return self.signalled.is_set()
