"""The Runtime, torpor's Python front door (`torpor.Runtime(db=..., store=...)`): it opens
the parts (the context log, the runtime's tables, the engine with its snapshot store,
models, tools, sandbox pools), validates and creates sessions, makes workers, and beats
this process's heartbeat for the other machines of a cluster.

A session's state is split in two: the context log (every message, tool call and result,
plus torpor's markers) and the sandbox, snapshotted whole at every wait point. A worker
that takes a session (a lease with a fencing epoch from the log) restores the latest
snapshot, reads the log, runs the agent loop until the model yields to its user, then
checkpoints the sandbox into the snapshot store and lets go: a waiting session holds no
process and no memory. Lifecycle:

    created -> running -> waiting -> running ... -> closed
                  |  \\-> retrying (model failure; durable timer) -> running
                  \\---> recovering (its worker died; another one restores and goes on)

Every transition is a `state` marker in the log and a row update in torpor_sessions.
Where the rest lives: session.py (the Session), worker.py (claiming and running a turn,
with turn.py, bringup.py, waitpoint.py, endings.py), recovery.py (pure), keepwarm.py,
transcript.py, types.py (Policy, TurnOutcome, errors).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torpor.agent.models import Model, open_model
from torpor.agent.tools import ToolRegistry, load_tools
from torpor.context import default_url as default_log_url
from torpor.context import markers, open_log
from torpor.home import machine_id, torpor_home
from torpor.runtime import quotas, retention
from torpor.runtime.besteffort import best_effort
from torpor.runtime.checkpoints import SnapshotCheckpointStorage
from torpor.runtime.db import RuntimeDB, SessionNotFound, SessionRow
from torpor.runtime.pool import SandboxPool, StandbyPool
from torpor.runtime.prefetch import Prefetcher
from torpor.runtime.quotas import Quota
from torpor.runtime.retention import CLOSED_DAYS
from torpor.runtime.sandboxes import Sandboxes
from torpor.runtime.session import Session
from torpor.runtime.storage import ScheduledGC
from torpor.runtime.types import (
    AFFINITY_DELAY,
    MACHINE_BEAT,
    MACHINE_TTL,
    UPLOAD_WAIT,
    WORKSPACE,
    InvalidSession,
    LeaseLost,
    Policy,
    SessionError,
    TurnOutcome,
)
from torpor.runtime.worker import Worker
from torpor.sandbox.engine import Engine, SandboxSpec, Tmpfs
from torpor.sandbox.images import BASE_IMAGE, ImageError, ImageNotFound
from torpor.snapshots import SnapshotStore, open_store
from torpor.snapshots.retention import Retention, RetentionError

RETENTION_ENV = "TORPOR_RETENTION"


class Runtime:
    """The Python front door: `torpor.Runtime(db=..., store=...)`."""

    def __init__(
        self,
        db: str | None = None,
        store: str | None = None,
        *,
        home: Path | None = None,
        engine: Engine | None = None,
        tools: ToolRegistry | None = None,
        pool_size: int = 0,
        standby: int = 0,
        workspace: str | None = WORKSPACE,
        affinity: float = AFFINITY_DELAY,
        upload_wait: float = UPLOAD_WAIT,
        prefetch: bool = True,
        retention: str = "",
        gc_every: float = 0.0,
        quota: Quota | None = None,
        closed_days: float = CLOSED_DAYS,
    ) -> None:
        self.home = Path(home) if home else torpor_home()
        self.db_url = db or default_log_url()
        self.log = open_log(self.db_url)
        self.db = RuntimeDB(self.db_url)
        self.store_url = store
        self._store = None
        self._engine = engine
        # the built-in tools plus TORPOR_TOOLS' modules and torpor.tools entry points, as
        # every `torpor worker` / `torpor serve` has them (torpor.agent.tools.load_tools)
        self.tools = tools if tools is not None else load_tools()
        self._models: dict[str, Model] = {}
        self.pool_size = pool_size
        self._pools: dict[str, SandboxPool] = {}
        self.standby_size = standby
        self._standbys: dict[str, StandbyPool] = {}
        self._default_worker: Worker | None = None
        self._workers: list[Worker] = []  # every worker made by `worker()` (see workers)
        # Set when the process shuts down (runtime/shutdown.py): workers claim no more turns.
        self.stopping = threading.Event()
        self.workspace = workspace
        self._specs: dict[str, SandboxSpec] = {}
        self.machine = machine_id(self.home)
        self.process = f"{self.machine}:{os.getpid()}:{secrets.token_hex(3)}"  # heartbeats
        self.affinity, self.upload_wait = affinity, upload_wait
        # the default retention of sessions' snapshots (Policy.retention "": this one)
        self.retention = Retention.parse(retention or os.environ.get(RETENTION_ENV)).spec
        self.quota = quota or Quota()  # per tenant (0: none)
        self.closed_days = closed_days  # a closed session's snapshots go after (scheduled gc)
        # scheduled gc of the snapshot store and the log's blobs (runtime/storage.py), in
        # the background of a process that runs workers (0: none; serve/worker: hourly)
        self.gc_every = gc_every
        self.scheduled_gc: ScheduledGC | None = None
        self._gc_thread: threading.Thread | None = None
        self._hot_sweep: threading.Thread | None = None
        self._beat: threading.Thread | None = None
        self._beat_stop = threading.Event()
        # Follow other machines' sessions (runtime/prefetch.py): on PostgreSQL only, the
        # database several machines share (a SQLite file belongs to one machine).
        self.prefetch = prefetch and self.db.kind == "postgres"
        self.prefetcher: Prefetcher | None = None
        self._prefetching: threading.Thread | None = None
        self._sandboxes: Sandboxes | None = None
        if engine is not None:
            self._listen(engine)

    def sandbox_spec(self, image: str) -> SandboxSpec:
        """The spec of a session's sandbox for an image: the image as it is, plus a tmpfs
        at `workspace` (default /work) unless the image has files there. Files the agent
        deletes or renames in a tmpfs leave nothing behind, while on the root overlay
        each one leaves a whiteout that every later snapshot saves and every restore
        decodes (docs/runtime.md)."""
        if image not in self._specs:
            ws = self.workspace
            tmpfs = [Tmpfs(ws)] if ws and not self.engine.image_has_files(image, ws) else []
            self._specs[image] = SandboxSpec(image=image, tmpfs=tmpfs)
        return self._specs[image]

    def pool(self, image: str) -> SandboxPool:
        """The pool of pre-started sandboxes for an image (size `pool_size`; 0: none)."""
        if image not in self._pools:
            self._pools[image] = SandboxPool(self.engine, self.sandbox_spec(image),
                                             self.pool_size)  # fmt: skip
            self._pools[image].refill()
        return self._pools[image]

    def standbys(self, image: str) -> StandbyPool:
        """Standby sandboxes kept for resuming sessions of an image (`standby`; 0: none)."""
        if image not in self._standbys:
            self._standbys[image] = StandbyPool(self.engine, self.sandbox_spec(image),
                                                self.standby_size)  # fmt: skip
            self._standbys[image].refill()
        return self._standbys[image]

    # -- parts, opened when first needed ---------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from torpor.sandbox.factory import open_engine

            if self._store is None:
                self._store = open_store(self.store_url)
            self._engine = open_engine(
                self.home, checkpoints=SnapshotCheckpointStorage(self._store, self.home)
            )
            # Sandboxes it starts without an owner of their own (a debugging restore, say)
            # are this process's, and reaped if it dies (torpor.sandbox.owners).
            self._engine.owner_kind = "runtime"
            self._listen(self._engine)
        return self._engine

    def _listen(self, engine: Engine) -> None:
        """Count what each upload of the engine's checkpoint storage adds to the store for
        its tenant's quota, as it is stored (runtime/quotas.py)."""
        listeners = getattr(getattr(engine, "checkpoints", None), "listeners", None)
        if isinstance(listeners, list):
            listeners.append(self._stored)

    def _stored(self, snapshot: str, meta: dict[str, Any], new_bytes: int) -> None:
        quotas.note_stored(self.db, snapshot, meta, new_bytes)

    @property
    def sandboxes(self) -> Sandboxes:
        """The sandbox resource (torpor.runtime.sandboxes): durable sandboxes with pause,
        resume, snapshots and an idle timeout. Its first use starts this process's
        heartbeat (other machines tell from it whether the sandboxes it holds live)."""
        if self._sandboxes is None:
            self._sandboxes = Sandboxes(self)
            self._start_beat()
        return self._sandboxes

    def model(self, spec: str) -> Model:
        if spec not in self._models:
            self._models[spec] = open_model(spec)
        return self._models[spec]

    def close(self, *, drain_pools: bool = True) -> None:
        """Pause the live sandboxes of the sandbox resource, snapshot warm ones, remove
        pooled sandboxes, wait for checkpoint uploads still running, then close the
        databases."""
        if self._sandboxes is not None:  # its live sandboxes are paused, not lost
            self._sandboxes.shutdown()
        for w in self.workers:
            w.cool_all()  # warm sandboxes are snapshotted, not lost
        if drain_pools:
            self.pool_size = self.standby_size = 0  # and no pool is started after this
            for p in [*self._pools.values(), *self._standbys.values()]:
                p.drain()
        flush = getattr(getattr(self._engine, "checkpoints", None), "flush", None)
        if flush is not None:
            flush()
        listeners = getattr(getattr(self._engine, "checkpoints", None), "listeners", None)
        if isinstance(listeners, list) and self._stored in listeners:
            listeners.remove(self._stored)  # (an engine shared with another runtime)
        if self._beat is not None:  # every snapshot it took is stored now: it is gone
            self._beat_stop.set()
            self._beat.join(5)
            if self._prefetching is not None:
                self._prefetching.join(30)  # a fetch in flight finishes first
            if self._gc_thread is not None:
                self._gc_thread.join(30)  # (a gc cut short by the exit is safe too)
            if self._hot_sweep is not None:
                self._hot_sweep.join(30)
            with best_effort("removing the heartbeat of process %s", self.process):
                self.db.forget_process(self.process)
        self.db.close()
        with best_effort("closing the context log"):
            self.log.close()

    # -- sessions ----------------------------------------------------------------------

    def create_session(
        self,
        *,
        image: str = "base",
        model: str,
        system: str | None = None,
        tools: list[str] | None = None,
        policy: Policy | dict[str, Any] | None = None,
        id: str | None = None,
        tenant: str | None = None,
    ) -> Session:
        sid = id or f"ses-{secrets.token_hex(6)}"
        self.validate(image=image, model=model, tools=tools)
        pol = policy if isinstance(policy, Policy) else Policy.from_json(policy)
        try:
            retention.retention_for(pol, self.retention)
        except RetentionError as e:
            raise InvalidSession(str(e)) from None
        self.db.create(
            SessionRow(
                id=sid, state="created", image=image, model=model, system=system,
                tools=tools, policy=pol.to_json(), snapshot=None, snapshot_seq=None,
                tenant=tenant,
            )
        )  # fmt: skip
        epoch = self.log.acquire(sid)
        self.log.append(sid, [markers.State(state="created", image=image, model=model).entry()],
                        epoch=epoch)  # fmt: skip
        return Session(self, sid)

    def validate(self, *, image: str, model: str, tools: list[str] | None = None) -> None:
        """Raise InvalidSession unless a session with this image, model and tools can run:
        the model spec parses and its provider is configured (a key or a base URL; a
        script file reads and parses), every tool is registered, the image is here."""
        for name in tools or []:
            try:
                self.tools.get(name)
            except KeyError as e:
                raise InvalidSession(str(e.args[0] if e.args else e)) from None
        images = getattr(self.engine, "images", None)
        if images is not None:
            try:
                images.get(image)
            except ImageNotFound as e:
                if image.strip() in ("base", "torpor/base", BASE_IMAGE):
                    raise InvalidSession(
                        f"the base image is not built in this image store ({images.root}): "
                        "build it with `torpor image build-base` (or `torpor doctor`), or "
                        "set TORPOR_IMAGES to the store that has it") from None  # fmt: skip
                raise InvalidSession(
                    f"{e}; pull it first (`torpor image pull REF --name {image}`) or use 'base'"
                ) from None
            except ImageError as e:  # an ambiguous digest prefix, say
                raise InvalidSession(f"image {image!r}: {e}") from None
        try:
            self.model(model)
        except ValueError as e:  # (the model's own errors name it already)
            raise InvalidSession(str(e) if model in str(e) else f"model {model!r}: {e}") \
                from None

    def get_session(self, sid: str) -> Session:
        self.db.get(sid)
        return Session(self, sid)

    def sessions(self, state: str | None = None, tenant: str | None = None) -> list[SessionRow]:
        return self.db.list(state, tenant)

    def worker(self, **kw: Any) -> Worker:
        """A worker of this runtime; without arguments, the runtime's own (one lease
        owner for every `send` made through it, which keep-warm sandboxes need)."""
        self._start_beat()
        if kw:
            w = Worker(self, **kw)
            self._workers.append(w)
            return w
        if self._default_worker is None:
            self._default_worker = Worker(self)
            self._workers.append(self._default_worker)
        return self._default_worker

    @property
    def workers(self) -> list[Worker]:
        """Every worker made by `worker()` (close cools their warm sandboxes; shutdown and
        the heartbeat count their turns)."""
        return list(self._workers)

    def _ready_for_handover(self, sid: str) -> None:
        """This machine now holds a copy of another machine's session (it follows it):
        a standby for its image, so that a turn handed over here restores into a ready
        sandbox, as a turn on the session's own machine does."""
        if self.standby_size > 0 and not self.stopping.is_set():
            with contextlib.suppress(SessionNotFound):  # (deleted since its snapshot)
                self.standbys(self.db.get(sid).image)

    def checkpoint_storage(self, method: str) -> Callable[..., Any] | None:
        """A method of the engine's checkpoint storage (SnapshotCheckpointStorage: hot
        copies, uploads), or None for an engine without one."""
        return getattr(getattr(self.engine, "checkpoints", None), method, None)

    @property
    def snapshot_store(self) -> SnapshotStore | None:
        """The snapshot store the engine's checkpoints go to (None: an engine without)."""
        store = getattr(getattr(self.engine, "checkpoints", None), "store", None)
        return store if isinstance(store, SnapshotStore) else None

    def beat_now(self) -> None:
        """Write the machine's heartbeat now (also when a turn starts or ends, so that
        other machines see at once whether this one has a free slot)."""
        if self._beat is None:
            return
        workers = self.workers
        with best_effort("heartbeat of process %s", self.process):
            self.db.beat(self.process, self.machine, socket.gethostname(), slots=len(workers),
                         running=sum(len(w.busy()) for w in workers))  # fmt: skip

    def _start_beat(self) -> None:
        """This process's heartbeat (torpor_heartbeats): that it is alive (so that other
        machines wait for the uploads of the snapshots it took, and leave its machine's
        sessions' next turns to it for a moment) and how many turns it runs and can run."""
        if self._beat is not None:
            return

        def beat() -> None:
            while True:
                self.beat_now()
                if self._beat_stop.wait(MACHINE_BEAT):
                    return

        self._beat = threading.Thread(target=beat, name="torpor-machine-beat", daemon=True)
        self._beat.start()
        fetch = self.checkpoint_storage("prefetch")
        has = self.checkpoint_storage("has_hot_copy")
        if self.prefetch and fetch is not None and has is not None:
            self.prefetcher = Prefetcher(self.db, self.machine, self._pinned(fetch), has,
                                         machine_ttl=MACHINE_TTL,
                                         on_copy=self._ready_for_handover)  # fmt: skip
            self._prefetching = threading.Thread(target=self.prefetcher.run,
                                                 args=(self._beat_stop,),
                                                 name="torpor-prefetch", daemon=True)
            self._prefetching.start()
        store = self.snapshot_store
        if self.gc_every > 0 and store is not None:
            self.scheduled_gc = ScheduledGC(self.db, store, self.log, self.process,
                                            every=self.gc_every, retention=self.retention,
                                            closed_days=self.closed_days)  # fmt: skip
            self._gc_thread = threading.Thread(target=self.scheduled_gc.run,
                                               args=(self._beat_stop,),
                                               name="torpor-gc", daemon=True)  # fmt: skip
            self._gc_thread.start()
        drop = self.checkpoint_storage("drop_deleted")
        if self.gc_every > 0 and drop is not None:
            self._hot_sweep = threading.Thread(target=self._drop_deleted_copies, args=(drop,),
                                               name="torpor-hot-sweep", daemon=True)  # fmt: skip
            self._hot_sweep.start()

    def _drop_deleted_copies(self, drop: Callable[..., list[str]]) -> None:
        """On this machine, on the gc's schedule: drop the hot copies of snapshots that
        left the store (retention or the gc deleted them, on any machine) and that no
        session or sandbox names (runtime/checkpoints.py: drop_deleted)."""
        while not self._beat_stop.wait(self.gc_every):
            with best_effort("dropping hot copies of deleted snapshots"):
                drop(keep=lambda snap: retention.named(self.db, snap))

    def _pinned(self, fetch: Callable[[str], bool]) -> Callable[[str], bool]:
        """fetch, with the snapshot pinned meanwhile (retention leaves it alone)."""

        def pinned_fetch(snapshot: str) -> bool:
            retention.pin(self.db, snapshot, self.process)
            try:
                return fetch(snapshot)
            finally:
                retention.unpin(self.db, snapshot, self.process)

        return pinned_fetch


def wait_for(rt: Runtime, sid: str, states: tuple[str, ...] = ("waiting", "closed"),
             timeout: float = 60.0) -> SessionRow:  # fmt: skip
    """Poll until a session reaches one of `states` (for callers of background workers)."""
    deadline = time.time() + timeout
    while True:
        row = rt.db.get(sid)
        if row.state in states and not (row.lease_owner and (row.lease_until or 0) > time.time()):
            return row
        if time.time() > deadline:
            raise TimeoutError(f"session {sid} still {row.state} after {timeout} s")
        time.sleep(0.05)


__all__ = [
    "InvalidSession", "LeaseLost", "Policy", "Runtime", "Session", "SessionError",
    "SessionNotFound", "TurnOutcome", "Worker", "wait_for",
]
