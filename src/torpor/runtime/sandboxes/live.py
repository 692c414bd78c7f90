"""A sandbox of the resource while a call holds it live: `LiveSandbox`, the handle a call
gets (its commands get the sandbox's env), and `Followers`, the streams of processes'
output that a checkpoint must not wait for: a snapshot detaches them and they follow on
after it; a pause or a kill ends them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torpor.runtime.sandboxes.errors import SandboxKilled, SandboxPaused
from torpor.runtime.sandboxes.records import SandboxRow
from torpor.sandbox.engine import Engine, OutputCallback, SandboxError
from torpor.sandbox.handle import Process, Sandbox


class LiveSandbox(Sandbox):
    """A sandbox of the resource, live for one call (`Sandboxes.use`): a `Sandbox` handle
    whose commands get the sandbox's env (a command's own env wins)."""

    def __init__(self, ref: str, *, engine: Any, env: Mapping[str, str],
                 sandbox_id: str = "") -> None:  # fmt: skip
        super().__init__(ref, engine=engine)
        self.env = dict(env)
        self.sandbox_id = sandbox_id  # the resource's id (`ref` is its engine sandbox's)

    def _with(self, env: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
        if env is None:
            return self.env
        given = env if isinstance(env, Mapping) else dict(e.split("=", 1) for e in env)
        return {**self.env, **given}

    def exec(self, cmd: str | Sequence[str], *, env: Any = None, **kw: Any) -> Any:
        return super().exec(cmd, env=self._with(env), **kw)

    def spawn(self, cmd: str | Sequence[str], *, env: Any = None, **kw: Any) -> Process:
        return super().spawn(cmd, env=self._with(env), **kw)


class Followers:
    """The output followers of each sandbox. `settle(sid)` waits for a checkpoint of the
    sandbox to be done (it takes and lets go of the sandbox's lock, which the checkpoint
    holds) and returns its row as it then is."""

    def __init__(self, engine: Callable[[], Engine],
                 settle: Callable[[str], SandboxRow]) -> None:  # fmt: skip
        self._engine, self._settle = engine, settle
        self._mu = threading.Lock()
        self._attempts: dict[str, set[threading.Event]] = {}

    def detach(self, sid: str) -> None:
        """Before a checkpoint: the sandbox's followers let go of it."""
        with self._mu:
            for attempt in self._attempts.get(sid, ()):
                attempt.set()

    def follow(self, sb: LiveSandbox, process: int, *, on_stdout: OutputCallback | None = None,
               on_stderr: OutputCallback | None = None,
               cancel: threading.Event | None = None) -> int | None:  # fmt: skip
        """`Process.stream` of one of a live sandbox's processes (its output from the
        start, until it exits or `cancel` is set; its exit code, None if cancelled) that
        does not hold the sandbox against a checkpoint: a snapshot detaches it and it
        follows on after, skipping what it passed on; a pause or a kill ends it with
        SandboxPaused or SandboxKilled (the process goes on once resumed)."""
        sid = sb.sandbox_id
        cancel = cancel or threading.Event()
        seen = {"out": 0, "err": 0}
        while True:
            attempt = threading.Event()
            skip = dict(seen)
            with self._mu:
                self._attempts.setdefault(sid, set()).add(attempt)
            try:
                code = Process(sb, process).stream(
                    on_stdout=_passed("out", on_stdout, skip, seen),
                    on_stderr=_passed("err", on_stderr, skip, seen), cancel=[cancel, attempt])
            except SandboxError:
                if not attempt.is_set():
                    raise
                code = None
            finally:
                with self._mu:
                    self._attempts.get(sid, set()).discard(attempt)
            if cancel.is_set() or not attempt.is_set():
                return code
            row = self._settle(sid)  # (held by the checkpoint that detached it)
            if row.state == "paused":
                raise SandboxPaused(f"sandbox {sid} was paused: its processes go on when it "
                                    "is resumed")  # fmt: skip
            if row.state != "running":
                why = f" ({row.note})" if row.note else ""
                raise SandboxKilled(f"sandbox {sid} was killed{why}")
            sb = LiveSandbox(str(row.box), engine=self._engine(), env=row.env, sandbox_id=sid)


def _passed(kind: str, cb: OutputCallback | None, skip: dict[str, int],
            seen: dict[str, int]) -> OutputCallback:  # fmt: skip
    """An output callback that drops the first `skip[kind]` bytes (passed on already)."""

    def on(chunk: bytes) -> None:
        cut = min(skip[kind], len(chunk))
        skip[kind] -= cut
        if chunk[cut:]:
            seen[kind] += len(chunk) - cut
            if cb is not None:
                cb(chunk[cut:])

    return on
