"""What a worker and a session use of their Runtime: the parts it wires (databases,
engine, models, tools, pools) and this process's identity in the cluster. A Protocol,
so that the worker's modules need not import the Runtime that makes the workers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torpor.agent.models import Model
    from torpor.agent.registry import ToolRegistry
    from torpor.context import ContextLog
    from torpor.runtime.db import RuntimeDB
    from torpor.runtime.pool import SandboxPool, StandbyPool
    from torpor.runtime.quotas import Quota
    from torpor.sandbox.engine import Engine, SandboxSpec


class RuntimeParts(Protocol):
    db: RuntimeDB  # sessions, inbox, leases, heartbeats, snapshot holders
    log: ContextLog
    tools: ToolRegistry  # every tool a session may name
    machine: str  # this machine's id (snapshot holders, affinity)
    process: str  # this process's id (heartbeats)
    affinity: float  # seconds a new message waits for the machine holding the snapshot
    upload_wait: float  # seconds a restore waits for another machine's upload
    retention: str  # the server's default retention spec ("": torpor's default)
    quota: Quota  # per-tenant limits on the snapshot store (runtime/quotas.py)
    pool_size: int
    standby_size: int
    stopping: threading.Event  # set when the process shuts down: claim no more turns

    @property
    def engine(self) -> Engine: ...

    def model(self, spec: str) -> Model: ...

    def sandbox_spec(self, image: str) -> SandboxSpec: ...

    def pool(self, image: str) -> SandboxPool: ...

    def standbys(self, image: str) -> StandbyPool: ...

    def checkpoint_storage(self, method: str) -> Callable[..., Any] | None: ...

    def beat_now(self) -> None: ...
