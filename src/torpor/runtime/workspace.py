"""A sandbox as the agent's tools see it: one engine sandbox, bound by name."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from torpor.sandbox.engine import Engine, ExecResult


class SandboxWorkspace:
    """Satisfies torpor.agent.tools.Workspace for one sandbox of an engine. Setting
    `cancel` stops the command running in it (a cancelled turn)."""

    def __init__(self, engine: Engine, sandbox: str,
                 cancel: threading.Event | None = None) -> None:  # fmt: skip
        self.engine = engine
        self.sandbox = sandbox
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
        return self.engine.exec(self.sandbox, argv, stdin=stdin, env=env, workdir=workdir,
                                timeout=timeout, cancel=self.cancel)  # fmt: skip

    def read_file(self, path: str) -> bytes:
        return self.engine.read_file(self.sandbox, path)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.engine.write_file(self.sandbox, path, data, mode)

    def spawn(
        self, argv: Sequence[str], *, env: Sequence[str] = (), workdir: str | None = None
    ) -> int:
        return self.engine.spawn(self.sandbox, argv, env=env, workdir=workdir)

    def processes(self) -> list[dict[str, Any]]:
        return self.engine.processes(self.sandbox)
