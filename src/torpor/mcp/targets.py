"""Targets for the MCP tools on torpor's engine sandboxes (`torpor.sandbox.Sandbox`): one
sandbox by reference, the resolver of `torpor mcp --sandbox` (this machine's engine) and
`SessionSandbox`, the sandbox of `torpor mcp --session` (a torpor session's)."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from torpor.sandbox.engine import Engine, SandboxError
from torpor.sandbox.handle import Sandbox

from .server import Resolver, Target


def engine_target(sb: Sandbox, label: str | None = None) -> Target:
    """The target of one engine sandbox: snapshots are its checkpoints, restore and fork
    make new sandboxes of the same engine."""
    eng = sb.engine

    def snapshot(name: str | None) -> str:
        return sb.checkpoint(name, leave_running=True).id

    def restore(snap: str) -> str:
        return Sandbox.restore(snap, engine=eng).id

    def fork() -> str:
        return sb.fork().id

    return Target(label or f"sandbox {sb.ref}", sb, snapshot, restore, fork)


def engine_resolver(engine: Engine, default: str | None) -> Resolver:
    """Sandboxes of `engine` by id or name; `default` when a tool names none."""

    @contextlib.contextmanager
    def resolve(name: str | None, headers: Mapping[str, str] | None) -> Iterator[Target]:
        ref = name or default
        if not ref:
            raise LookupError("name a sandbox (the `sandbox` argument)")
        yield engine_target(Sandbox.get(ref, engine=engine))

    return resolve


class SessionSandbox:
    """`torpor mcp --session ID`: a torpor session's sandbox. While a turn runs, its live
    sandbox (`s-ID`); otherwise a copy restored from the session's latest snapshot, made
    at the first call and kept until `close()` (changes there do not become the session's:
    its next turn restores its own snapshot). Sandboxes that `restore` and `fork` make
    are reached by their ids, on the runtime's engine."""

    def __init__(self, runtime: Any, session: str) -> None:
        self.runtime, self.session = runtime, session
        self.copy: Sandbox | None = None
        self.lock = threading.Lock()

    def _sandbox(self) -> tuple[Sandbox, str]:
        eng = self.runtime.engine
        row = self.runtime.db.get(self.session)  # SessionNotFound: the tool says so
        if row.lease_owner and (row.lease_until or 0) > time.time():
            with contextlib.suppress(SandboxError):
                live = Sandbox.get(f"s-{row.id}", engine=eng)
                if live.state == "running":
                    return live, f"session {row.id} (its live sandbox: a turn runs)"
        with self.lock:
            if self.copy is None:
                if not row.snapshot:
                    raise LookupError(f"session {row.id} has no sandbox yet (no snapshot: "
                                      "send it a message first)")
                self.copy = Sandbox.restore(row.snapshot, engine=eng,
                                            name=f"mcp-{row.id}-{secrets.token_hex(3)}")
            return self.copy, (f"session {row.id} (a copy of its snapshot {row.snapshot}; "
                               "changes stay in the copy)")

    def target(self) -> Target:
        """The session's sandbox as a target (the live one, else the copy)."""
        sb, label = self._sandbox()
        return engine_target(sb, label)

    def resolver(self) -> Resolver:
        """The session's sandbox by default (or `session:ID`); other sandboxes of the
        runtime's engine (those `restore` and `fork` made) by id."""

        @contextlib.contextmanager
        def resolve(name: str | None, headers: Mapping[str, str] | None) -> Iterator[Target]:
            if name and name not in (self.session, f"session:{self.session}"):
                yield engine_target(Sandbox.get(name, engine=self.runtime.engine))
                return
            yield self.target()

        return resolve

    def close(self) -> None:
        """Remove the copy (the sandboxes `restore` and `fork` made stay)."""
        if self.copy is not None:
            with contextlib.suppress(SandboxError):
                self.copy.kill()
            self.copy = None
