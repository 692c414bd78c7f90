"""A sandbox as the agent's tools see it: one sandbox, held through a `Sandbox` handle."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from torpor.sandbox.engine import Engine, ExecResult
from torpor.sandbox.handle import Process, Sandbox, SandboxFiles


class SandboxWorkspace:
    """Satisfies torpor.agent.tools.Workspace for the sandbox `sandbox` (a name: the
    handle follows whichever sandbox has it) of an engine. Setting `cancel` stops the
    command running in it (a cancelled turn)."""

    def __init__(self, engine: Engine, sandbox: str,
                 cancel: threading.Event | None = None) -> None:  # fmt: skip
        self.engine = engine
        self.sandbox = sandbox
        self.handle = Sandbox(sandbox, engine=engine)
        self.cancel = cancel

    def exec(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        return self.handle.exec(list(argv), stdin=stdin, env=env, cwd=workdir, timeout=timeout,
                                cancel=self.cancel)  # fmt: skip

    def read_file(self, path: str) -> bytes:
        return self.handle.files.read(path)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.handle.files.write(path, data, mode=mode)

    def spawn(
        self, argv: Sequence[str], *, env: Sequence[str] = (), workdir: str | None = None
    ) -> int:
        return self.handle.spawn(list(argv), env=env, cwd=workdir).id

    def processes(self) -> list[dict[str, Any]]:
        return [{"id": p.id, "pid": p.pid, "state": p.state, "exit": p.exit_code,
                 "argv": p.command} for p in self.handle.processes()]  # fmt: skip

    @property
    def files(self) -> SandboxFiles:
        return self.handle.files

    def process(self, id: int) -> Process:
        return self.handle.process(id)
