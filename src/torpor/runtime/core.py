"""Sessions, workers, leases, wait points, retries and recovery.

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
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torpor.agent.loop import LoopHooks, model_view, run_turn
from torpor.agent.models import Model, open_model
from torpor.agent.tools import ToolRegistry, load_tools
from torpor.agent.types import ModelError, ModelTurn, ToolCall, ToolResult
from torpor.context import Entry, StaleEpoch, open_log
from torpor.context import default_url as default_log_url
from torpor.home import machine_id, torpor_home
from torpor.runtime.checkpoints import SnapshotCheckpointStorage
from torpor.runtime.db import RuntimeDB, SessionNotFound, SessionRow
from torpor.runtime.pool import SandboxPool, StandbyPool
from torpor.runtime.prefetch import Prefetcher
from torpor.runtime.workspace import SandboxWorkspace
from torpor.sandbox import owners
from torpor.sandbox.engine import CheckpointError, Engine, SandboxError, SandboxSpec, Tmpfs
from torpor.sandbox.images import ImageError, ImageNotFound
from torpor.snapshots import open_store

logger = logging.getLogger("torpor.runtime")

DEFAULT_LEASE_TTL = 15.0
# A session whose turns died this many times in a row (the worker gone each time, no wait
# point reached in between) fails with the last error instead of being recovered again.
MAX_RECOVERIES = 3
CANCEL_POLL = 0.5  # how often a running turn looks for a cancel asked for in the database
# Several machines (docs/cluster.md): each one's heartbeat, and how long without one makes
# it gone; how long a new message waits for the machine that holds the session's latest
# snapshot before any machine may take it; how long a machine restoring a snapshot that
# another (live) machine is still uploading waits for that upload.
MACHINE_BEAT = 1.0
MACHINE_TTL = 10.0
AFFINITY_DELAY = 0.5
UPLOAD_WAIT = 300.0
WORKSPACE = "/work"  # a tmpfs in every session's sandbox (Runtime.sandbox_spec)


class SessionError(Exception):
    """A request that does not fit the session (busy, closed, no snapshot yet, ...)."""


class InvalidSession(SessionError, ValueError):
    """A session that could not run as asked (its model, image or a tool): refused when it
    is created, rather than failing at its first turn."""


class LeaseLost(Exception):
    """Another worker took the session (this one was too slow or presumed dead)."""


class Cancelled(Exception):
    """The user asked for the running turn to stop (Session.cancel, or close)."""


@dataclass
class Policy:
    """When to snapshot. Defaults: snapshot at every wait point, none mid-turn."""

    snapshot_every_calls: int = 0  # mid-turn snapshot every K tool calls (0: never)
    snapshot_every_seconds: float = 0.0  # ... or every T seconds of turn time (0: never)
    max_attempts: int = 8  # model failures in a row before the turn is given up
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    # Keep the sandbox running this long after a wait point, so that a quick reply does
    # not pay for a restore; it is snapshotted when the time is up (0: snapshot at once).
    # Only a worker that stays up (torpor worker / serve / a Runtime kept open) keeps it.
    warm_seconds: float = 0.0
    # Keep only the newest N snapshots of the session (0: all of them). Older ones are
    # deleted from the store as new ones are taken, unless a fork still needs them; their
    # chunks are reclaimed by `torpor snapshot gc`.
    keep_snapshots: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Policy:
        known = {k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TurnOutcome:
    session: str
    state: str  # waiting | retrying | failed | closed
    error: str | None = None  # why the session failed
    text: str = ""
    snapshot: str | None = None
    snapshot_bytes: int = 0
    snapshot_ms: float = 0.0
    restore_ms: float | None = None
    recovered: bool = False
    cancelled: bool = False
    wake_at: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


Event = dict[str, Any]
EventSink = Callable[[Event], None]


class _Transcript:
    """The context log seen through one writer's epoch."""

    def __init__(self, log: Any, session: str, epoch: int) -> None:
        self.log, self.session, self.epoch = log, session, epoch
        self._cache: list[Entry] = []
        self._mu = threading.Lock()
        self.restored: str | None = None  # the snapshot this turn's sandbox came from
        self.noted: set[str] = set()  # tool calls a recovery note already named as lost

    def entries(self) -> list[Entry]:
        # This worker is the session's only writer (fenced by its epoch), so reading just
        # what was appended since the last call keeps the cost of a step independent of
        # the session's length. The lock lets a prefetch thread fill the cache while the
        # worker appends (appending does not touch the cache).
        with self._mu:
            after = self._cache[-1].seq if self._cache else 0
            self._cache.extend(self.log.read(self.session, after=after))
            return list(self._cache)

    def prefetch(self) -> threading.Thread:
        """Read the log in a thread of its own, and load the payloads the model will be
        sent that sit in the blob store (large tool outputs: at 1,000 calls of 1 MB each
        that is ~100 MB and most of the time); join it before the next `entries`. A read
        that fails here is retried, and raises, in the next `entries`."""

        def read() -> None:
            with contextlib.suppress(Exception):
                for e in model_view(self.entries()):
                    _ = e.content, e.arguments  # loaded once, kept in the cached entries

        t = threading.Thread(target=read, name=f"prefetch-{self.session}", daemon=True)
        t.start()
        return t

    def append(self, entries: list[Entry], key: str | None = None) -> list[int]:
        return self.log.append(self.session, entries, epoch=self.epoch, idempotency_key=key)


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
        self._beat: threading.Thread | None = None
        self._beat_stop = threading.Event()
        # Follow other machines' sessions (runtime/prefetch.py): on PostgreSQL only, the
        # database several machines share (a SQLite file belongs to one machine).
        self.prefetch = prefetch and self.db.kind == "postgres"
        self.prefetcher: Prefetcher | None = None
        self._prefetching: threading.Thread | None = None

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
        return self._engine

    def model(self, spec: str) -> Model:
        if spec not in self._models:
            self._models[spec] = open_model(spec)
        return self._models[spec]

    def close(self, *, drain_pools: bool = True) -> None:
        """Remove pooled sandboxes, wait for checkpoint uploads still running, then close
        the databases."""
        for w in self.workers:
            w.cool_all()  # warm sandboxes are snapshotted, not lost
        if drain_pools:
            self.pool_size = self.standby_size = 0  # and no pool is started after this
            for p in [*self._pools.values(), *self._standbys.values()]:
                p.drain()
        flush = getattr(getattr(self._engine, "checkpoints", None), "flush", None)
        if flush is not None:
            flush()
        if self._beat is not None:  # every snapshot it took is stored now: it is gone
            self._beat_stop.set()
            self._beat.join(5)
            if self._prefetching is not None:
                self._prefetching.join(30)  # a fetch in flight finishes first
            with contextlib.suppress(Exception):
                self.db.forget_process(self.process)
        self.db.close()
        with contextlib.suppress(Exception):
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
        self.db.create(
            SessionRow(
                id=sid, state="created", image=image, model=model, system=system,
                tools=tools, policy=pol.to_json(), snapshot=None, snapshot_seq=None,
                tenant=tenant,
            )
        )  # fmt: skip
        epoch = self.log.acquire(sid)
        self.log.append(sid, [Entry.marker("state", state="created", image=image, model=model)],
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
                raise InvalidSession(
                    f"{e}; pull it first (`torpor image pull REF --name {image}`) or use 'base'"
                ) from None
            except ImageError as e:  # an ambiguous digest prefix, say
                raise InvalidSession(f"image {image!r}: {e}") from None
        try:
            self.model(model)
        except ValueError as e:
            raise InvalidSession(f"model {model!r}: {e}") from None

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

    def checkpoint_storage(self, method: str) -> Callable[..., Any] | None:
        """A method of the engine's checkpoint storage (SnapshotCheckpointStorage: hot
        copies, uploads), or None for an engine without one."""
        return getattr(getattr(self.engine, "checkpoints", None), method, None)

    def beat_now(self) -> None:
        """Write the machine's heartbeat now (also when a turn starts or ends, so that
        other machines see at once whether this one has a free slot)."""
        if self._beat is None:
            return
        workers = self.workers
        with contextlib.suppress(Exception):
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
            self.prefetcher = Prefetcher(self.db, self.machine, fetch, has,
                                         machine_ttl=MACHINE_TTL)  # fmt: skip
            self._prefetching = threading.Thread(target=self.prefetcher.run,
                                                 args=(self._beat_stop,),
                                                 name="torpor-prefetch", daemon=True)
            self._prefetching.start()


class Session:
    def __init__(self, runtime: Runtime, sid: str) -> None:
        self.runtime = runtime
        self.id = sid

    def __repr__(self) -> str:
        return f"Session({self.id!r})"

    def info(self) -> SessionRow:
        return self.runtime.db.get(self.id)

    def log(self) -> list[Entry]:
        return self.runtime.log.read(self.id)

    def post(self, text: str) -> int:
        """Queue a user message durably (a worker will pick it up); returns its inbox id."""
        return self.runtime.db.post(self.id, text)

    def send(self, text: str, *, on_event: EventSink | None = None) -> TurnOutcome:
        """Queue a user message and run the turn in this process until its wait point."""
        self.post(text)
        return self.runtime.worker().run_session(self.id, on_event=on_event)

    async def asend(self, text: str, *, on_event: EventSink | None = None) -> TurnOutcome:
        """`send` for asyncio code: the turn runs in a thread, the event loop stays free."""
        import asyncio

        return await asyncio.to_thread(self.send, text, on_event=on_event)

    def stream(self, text: str) -> Iterator[Event]:
        """`send` as a generator of events (tool calls, snapshot, state, ...) as they
        happen; the last one is {"type": "outcome", "outcome": TurnOutcome}."""
        q: queue.Queue[Event | BaseException] = queue.Queue()

        def run() -> None:
            try:
                outcome = self.send(text, on_event=q.put)
                q.put({"type": "outcome", "session": self.id, "outcome": outcome})
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                q.put(e)

        threading.Thread(target=run, name=f"torpor-turn-{self.id}", daemon=True).start()
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.get("type") == "outcome":
                return

    def resume(self, *, on_event: EventSink | None = None) -> TurnOutcome:
        """Run whatever work the session has (a due retry, a turn cut short)."""
        return self.runtime.worker().run_session(self.id, on_event=on_event)

    def fork(self, at: str | None = None, *, id: str | None = None) -> Session:
        """A new session whose log is this one's up to snapshot `at` (default: the latest)
        and whose sandbox starts from that snapshot."""
        rt = self.runtime
        row = self.info()
        snap = at or row.snapshot
        if snap is None:
            raise SessionError(f"session {self.id} has no snapshot to fork from yet")
        seq = None
        for e in self.log():
            c = e.content if e.kind == "marker" and isinstance(e.content, dict) else {}
            if c.get("marker") == "snapshot_taken" and c.get("snapshot") == snap:
                seq = e.seq
        if seq is None:
            raise SessionError(f"snapshot {snap} is not one of session {self.id}'s")
        new = id or f"ses-{secrets.token_hex(6)}"
        rt.log.fork(self.id, seq, new)
        rt.db.create(
            SessionRow(
                id=new, state="waiting", image=row.image, model=row.model, system=row.system,
                tools=row.tools, policy=row.policy, snapshot=snap, snapshot_seq=seq,
                snapshots=[snap], parent=self.id, tenant=row.tenant,
            )
        )  # fmt: skip
        epoch = rt.log.acquire(new)
        rt.log.append(
            new,
            [Entry.marker("fork", parent=self.id, snapshot=snap, at_seq=seq,
                          text=f"it continues from snapshot {snap} (log seq {seq}); "
                               "the two sessions diverge from here")],
            epoch=epoch,
        )  # fmt: skip
        return Session(rt, new)

    def close(self, *, wait: float = 60.0) -> SessionRow:
        """Close the session: its log stays, it takes no more messages. A running turn is
        cancelled first (see cancel); raises SessionError if that takes over `wait`
        seconds (the close stays asked for: the worker closes it at its safe point)."""
        row = self.cancel(close=True, wait=wait)
        if row.state != "closed":
            raise SessionError(
                f"session {self.id} is still running a turn after {wait:g} s; it will be "
                "closed when the turn reaches its next safe point"
            )
        return row

    def cancel(self, *, wait: float = 0.0, close: bool = False) -> SessionRow:
        """Stop the session's turn at its next safe point: the running tool call is
        stopped, what happened is logged, the sandbox is snapshotted, the session waits
        (close: and is then closed). A queued message is logged but not answered; a retry
        timer is dropped. Waits up to `wait` seconds for the worker running the turn to
        act; returns the session's row (`cancel` still set: not acted on yet)."""
        rt = self.runtime
        if rt.db.get(self.id).state == "closed":
            return rt.db.get(self.id)
        rt.worker().cool(self.id)  # a sandbox this runtime keeps warm is snapshotted first
        canceller = Worker(rt, owner=f"cancel-{secrets.token_hex(4)}")
        done = canceller.settle_cancel(self.id, close=close)
        if done is not None:
            return done  # no worker held it: done here and now
        rt.db.request_cancel(self.id, "close" if close else "cancel")
        deadline = time.monotonic() + wait
        while True:
            row = rt.db.get(self.id)
            if row.cancel is None or row.state == "closed":
                return row  # its worker acted on it
            if not (row.lease_owner and (row.lease_until or 0) > time.time()):
                # the turn ended (or its worker died) before it saw the request
                done = canceller.settle_cancel(self.id, close=close)
                if done is not None:
                    return done
            if time.monotonic() >= deadline:
                return row
            time.sleep(0.05)


class Worker:
    """Runs sessions' turns: takes a lease, restores, loops, snapshots, lets go."""

    def __init__(
        self, runtime: Runtime, *, owner: str | None = None, lease_ttl: float = DEFAULT_LEASE_TTL
    ) -> None:
        self.rt = runtime
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.lease_ttl = lease_ttl
        self._mu = threading.Lock()
        self._session_locks: dict[str, threading.Lock] = {}
        self._warm: dict[str, float] = {}  # session -> when its warm sandbox is snapshotted
        self._janitor: threading.Thread | None = None

    def _lock_for(self, sid: str) -> threading.Lock:
        with self._mu:
            return self._session_locks.setdefault(sid, threading.Lock())

    # -- keep-warm sandboxes -------------------------------------------------------------

    def _keep_warm(self, sid: str, until: float) -> None:
        with self._mu:
            self._warm[sid] = until
            if self._janitor is None:
                self._janitor = threading.Thread(
                    target=self._janitor_loop, name="torpor-warm", daemon=True
                )
                self._janitor.start()

    def _janitor_loop(self) -> None:
        looked = 0.0
        while True:
            time.sleep(0.2)
            with self._mu:
                warm = dict(self._warm)
            due = [sid for sid, until in warm.items() if until <= time.time()]
            if time.monotonic() - looked >= CANCEL_POLL:  # a cancel or close asked for
                looked = time.monotonic()
                with contextlib.suppress(Exception):
                    due += [sid for sid in warm
                            if sid not in due and self.rt.db.cancel_requested(sid)]  # fmt: skip
            for sid in due:
                with contextlib.suppress(Exception):
                    self.cool(sid)

    def cool(self, sid: str) -> None:
        """Snapshot a session's warm sandbox now (its wait point, deferred)."""
        with self._mu:
            if sid not in self._warm:
                return  # (and a turn running now, which holds the session's lock, is not
                # waited for)
        with self._lock_for(sid):
            with self._mu:
                if self._warm.pop(sid, None) is None:
                    return
            row = self.rt.db.claim(sid, self.owner, self.lease_ttl)
            if row is None or row.state != "waiting" or row.wake_at is None:
                return
            tr = _Transcript(self.rt.log, sid, self.rt.log.acquire(sid))
            try:
                self._wait_point(tr, row, f"s-{sid}", lambda *a, **k: None,
                                 TurnOutcome(session=sid, state="waiting"))  # fmt: skip
            except SandboxError:
                # The sandbox is gone (removed or crashed): let go, and leave the session
                # marked warm so that its next turn recovers from the last snapshot.
                self.rt.db.update(sid, owner=self.owner, lease_owner=None, lease_until=None)

    def cool_all(self) -> None:
        for sid in list(self._warm):
            self.cool(sid)

    def busy(self) -> list[str]:
        """The sessions this worker is running a turn of (or snapshotting) right now."""
        with self._mu:
            return [sid for sid, lock in self._session_locks.items() if lock.locked()]

    # -- entry points ------------------------------------------------------------------

    def run_session(self, sid: str, *, on_event: EventSink | None = None) -> TurnOutcome:
        row = self.rt.db.claim(sid, self.owner, self.lease_ttl)
        if row is None:
            current = self.rt.db.get(sid)
            raise SessionError(
                f"session {sid} is busy: worker {current.lease_owner} holds it for "
                f"{max(0.0, (current.lease_until or 0) - time.time()):.1f} s more"
            )
        return self._process(row, on_event)

    def run_once(self, *, on_event: EventSink | None = None) -> TurnOutcome | None:
        """Claim any session with work and run it; None if there was nothing to do (or
        the process is shutting down: `Runtime.stopping`)."""
        if self.rt.stopping.is_set():
            return None
        row = self.rt.db.claim_any(self.owner, self.lease_ttl, machine=self.rt.machine,
                                   affinity=self.rt.affinity, machine_ttl=MACHINE_TTL)
        return None if row is None else self._process(row, on_event)

    def serve(self, stop: threading.Event, *, poll: float = 0.2,
              on_event: EventSink | None = None) -> None:  # fmt: skip
        while not stop.is_set():
            try:
                done = self.run_once(on_event=on_event)
            except (LeaseLost, StaleEpoch):
                done = None
            except Exception:  # the database went away, say: say so, wait, go on
                logger.exception("worker %s: claiming or running a turn failed", self.owner)
                done = None
                stop.wait(min(5.0, poll * 10))  # and do not spin on a persistent fault
            if done is None:
                stop.wait(poll)

    # -- one claimed session -----------------------------------------------------------

    def _process(self, row: SessionRow, on_event: EventSink | None) -> TurnOutcome:
        try:
            with self._lock_for(row.id):
                with self._mu:
                    warm_here = self._warm.pop(row.id, None) is not None
                # Re-read under the lock: a janitor may have snapshotted it meanwhile.
                fresh = self.rt.db.get(row.id)
                self.rt.beat_now()  # busy now: other machines need not wait for this one
                return self._process_locked(fresh, on_event, warm_here)
        finally:
            self.rt.beat_now()  # free again: its sessions' next turns are left to it

    def _process_locked(
        self, row: SessionRow, on_event: EventSink | None, warm_here: bool
    ) -> TurnOutcome:
        rt, sid = self.rt, row.id
        events: list[Event] = []

        def emit(kind: str, **data: Any) -> None:
            ev = {"type": kind, "session": sid, "t": time.time(), **data}
            events.append(ev)
            if on_event:
                on_event(ev)

        epoch = rt.log.acquire(sid)  # fences off any earlier writer of this session
        tr = _Transcript(rt.log, sid, epoch)
        stop_beat = threading.Event()
        lost = threading.Event()
        cancel = threading.Event()  # set: stop the turn (the running command is killed)

        def beat() -> None:
            # Renews the lease every third of its time to live and looks for a cancel
            # every CANCEL_POLL seconds (asked for by any process, through the database).
            due = time.monotonic() + self.lease_ttl / 3
            while not stop_beat.wait(min(CANCEL_POLL, self.lease_ttl / 3)):
                if not cancel.is_set():
                    with contextlib.suppress(Exception):
                        if rt.db.cancel_requested(sid):
                            cancel.set()
                if time.monotonic() < due:
                    continue
                due = time.monotonic() + self.lease_ttl / 3
                if not rt.db.heartbeat(sid, self.owner, self.lease_ttl):
                    lost.set()
                    return

        hb = threading.Thread(target=beat, daemon=True)
        hb.start()
        # A waiting session with a timer is a warm one: kept running by this worker, or
        # left behind by a worker that stopped before snapshotting it (its last turn's
        # effects on the sandbox are then lost, and the session recovers).
        warm = row.state == "waiting" and row.wake_at is not None
        warm_here = warm and warm_here and row.lease_owner == self.owner
        warm_lost = warm and not warm_here
        recovering = row.state in ("running", "recovering") or warm_lost
        sandbox = f"s-{sid}"
        own_id: str | None = None  # the engine's id of the sandbox this turn brought up
        outcome = TurnOutcome(session=sid, state=row.state)
        due = row.state == "retrying" and (row.wake_at or 0) <= time.time()
        if not (recovering or due or rt.db.unread(sid)):
            stop_beat.set()
            if warm_here:  # nothing new: it stays warm, with its lease
                self._keep_warm(sid, row.wake_at or time.time())
            else:
                rt.db.update(sid, owner=self.owner, lease_owner=None, lease_until=None)
            return outcome  # nothing to do: no message, no due retry, no broken turn
        try:
            self._set_state(tr, row, "recovering" if recovering else "running", emit)
            model = rt.model(row.model)  # before any sandbox: a model that fails costs none
            registry = self._registry(row)  # ... and so does a tool this worker lacks
            # The log is read while runsc restores the sandbox (a subprocess, so the two
            # overlap on separate cores): the turn then reads only what was appended since.
            prefetch = tr.prefetch()
            try:
                outcome.restore_ms = self._bring_up_sandbox(tr, row, sandbox, emit,
                                                            reuse=warm_here)  # fmt: skip
            finally:
                prefetch.join()
            own_id = rt.engine.inspect(sandbox).id
            ws = SandboxWorkspace(rt.engine, sandbox, cancel)
            policy = Policy.from_json(row.policy)
            if recovering:
                self._recover(tr, row, ws, registry, emit, warm_lost=warm_lost)
                outcome.recovered = True
                self._set_state(tr, row, "running", emit)
            self._take_inbox(tr, sid, emit)
            turn_started = time.monotonic()
            calls_since_snapshot = 0
            last_snapshot = time.monotonic()

            def check_lease() -> None:  # the loop's safe points: between steps
                if lost.is_set():
                    raise LeaseLost(f"worker {self.owner} lost the lease on {sid}")
                if cancel.is_set():
                    raise Cancelled(sid)

            if rt.db.cancel_requested(sid):  # asked for before the turn began: no model call
                raise Cancelled(sid)

            def on_tool_start(call: ToolCall) -> None:
                check_lease()
                emit("tool_call_started", id=call.id, name=call.name, arguments=call.arguments)

            def on_tool_end(call: ToolCall, result: ToolResult) -> None:
                nonlocal calls_since_snapshot, last_snapshot
                emit("tool_call_finished", id=call.id, name=call.name, is_error=result.is_error,
                     ms=result.meta.get("ms"), output=result.content[:500])  # fmt: skip
                check_lease()
                calls_since_snapshot += 1
                by_calls = policy.snapshot_every_calls and (
                    calls_since_snapshot >= policy.snapshot_every_calls)
                by_time = policy.snapshot_every_seconds and (
                    time.monotonic() - last_snapshot >= policy.snapshot_every_seconds)
                if by_calls or by_time:
                    self._snapshot(tr, sandbox, emit, leave_running=True)
                    calls_since_snapshot, last_snapshot = 0, time.monotonic()

            def on_model_turn(turn: ModelTurn, seconds: float) -> None:
                check_lease()
                emit("assistant", text=turn.text, tool_calls=len(turn.tool_calls),
                     ms=round(seconds * 1000, 1))  # fmt: skip

            hooks = LoopHooks(on_model_turn, on_tool_start, on_tool_end)
            try:
                final = run_turn(tr, model, registry, ws, system=row.system, hooks=hooks)
            except ModelError as e:
                return self._schedule_retry(tr, row, sandbox, e, emit, outcome, events)
            outcome.text = final.text
            emit("turn_finished", seconds=round(time.monotonic() - turn_started, 3))
            if policy.warm_seconds > 0 and not rt.db.cancel_requested(sid):
                self._go_warm(tr, row, emit, policy.warm_seconds)
                outcome.state = "waiting"
            else:
                self._wait_point(tr, row, sandbox, emit, outcome)
            outcome.events = events
            return outcome
        except Cancelled:
            return self._cancelled(tr, row, sandbox, emit, outcome, events)
        except (LeaseLost, StaleEpoch):
            # Another worker has the session now: nothing here is ours to write. The
            # sandbox this worker brought up is removed (unless the new owner, on this
            # machine, has already replaced it with its own).
            self._remove_own_sandbox(sandbox, own_id)
            raise
        except Exception as e:  # noqa: BLE001 - a live worker's error fails the turn once
            return self._fail(tr, row, sandbox, e, emit, outcome, events)
        finally:
            stop_beat.set()

    # -- pieces ------------------------------------------------------------------------

    def _registry(self, row: SessionRow) -> ToolRegistry:
        if row.tools is None:
            return self.rt.tools
        return ToolRegistry([self.rt.tools.get(n) for n in row.tools])

    def _set_state(self, tr: _Transcript, row: SessionRow, state: str, emit: Callable) -> None:
        tr.append([Entry.marker("state", state=state, worker=self.owner, epoch=tr.epoch)])
        if not self.rt.db.update(row.id, owner=self.owner, state=state):
            raise LeaseLost(f"worker {self.owner} lost the lease on {row.id}")
        row.state = state
        emit("state", state=state)

    def _bring_up_sandbox(
        self, tr: _Transcript, row: SessionRow, name: str, emit: Callable, *, reuse: bool = False
    ) -> float | None:
        """Restore the latest snapshot (falling back to earlier ones), else start fresh.
        Returns the restore time in ms, or None for a fresh sandbox."""
        eng = self.rt.engine
        owner = owners.this_process("session", session=row.id)  # reaped if this process dies
        if reuse:  # kept warm by this worker since the last turn
            with contextlib.suppress(SandboxError):
                if eng.inspect(name).state == "running":
                    tr.append([Entry.marker("sandbox_warm", sandbox=name)])
                    emit("warm", sandbox=name)
                    return 0.0
        # A sandbox left by an earlier worker (one that died mid-turn) is in an unknown
        # state: the session always continues from its last snapshot.
        with contextlib.suppress(SandboxError):
            eng.remove(name, force=True)
        failures = []
        if self.rt.standby_size > 0:
            self.rt.standbys(row.image)  # the first time: set one up for the next resume
        for snap in [*reversed(row.snapshots)] if row.snapshots else []:
            why = self._await_upload(tr, snap, emit)
            if why is not None:
                failures.append(f"{snap}: {why}")
                continue
            has_hot = self.rt.checkpoint_storage("has_hot_copy")
            hot = bool(has_hot and has_hot(snap))
            t0 = time.monotonic()
            try:
                info = eng.restore(snap, name=name, owner=owner)
            except SandboxError as e:  # corrupt, missing, or no longer fits this engine
                failures.append(f"{snap}: {e}")
                with contextlib.suppress(SandboxError):
                    eng.remove(name, force=True)
                continue
            ms = (time.monotonic() - t0) * 1000
            tr.restored = snap
            tr.append([Entry.marker("session_restored", snapshot=snap, ms=round(ms, 1),
                                    standby=info.from_standby, hot=hot)])  # fmt: skip
            emit("restored", snapshot=snap, ms=round(ms, 1), standby=info.from_standby, hot=hot)
            if failures:
                self._note_fallback(tr, failures, f"restored the older snapshot {snap}", snap)
            return ms
        t0 = time.monotonic()
        pooled = self.rt.pool_size > 0 and self.rt.pool(row.image).take(name, owner=owner)
        if not pooled:
            eng.run(self.rt.sandbox_spec(row.image), name=name, owner=owner)
        ms = (time.monotonic() - t0) * 1000
        tr.append([Entry.marker("sandbox_started", image=row.image, ms=round(ms, 1),
                                pooled=pooled)])  # fmt: skip
        emit("sandbox_started", image=row.image, ms=round(ms, 1), pooled=pooled)
        if failures:
            self._note_fallback(tr, failures, f"started a fresh sandbox from image {row.image}",
                                None)  # fmt: skip
        return None

    def _await_upload(self, tr: _Transcript, snap: str, emit: Callable) -> str | None:
        """Before restoring a snapshot another machine took: wait until that machine has
        uploaded it, while its heartbeat says it is alive (bounded by upload_wait). Returns
        why the snapshot cannot be had (its machine is gone, or too slow), or None."""
        found = self.rt.db.snapshot_holder(snap)
        available = self.rt.checkpoint_storage("available")
        if found is None or found[0] == self.rt.machine or available is None:
            return None  # taken here (or before holders were recorded)
        holder, process = found
        t0, waited = time.monotonic(), False
        while not available(snap):
            if not self.rt.db.process_alive(process, MACHINE_TTL):
                return (f"the machine {holder} that took it stopped before uploading it "
                        f"(its process {process} is gone, and its hot copy with it)")  # fmt: skip
            if time.monotonic() - t0 > self.rt.upload_wait:
                return f"machine {holder} had not uploaded it after {self.rt.upload_wait:g} s"
            if not waited:
                emit("awaiting_upload", snapshot=snap, machine=holder)
                waited = True
            time.sleep(0.05)
        if waited:
            ms = round((time.monotonic() - t0) * 1000, 1)
            tr.append([Entry.marker("upload_awaited", snapshot=snap, machine=holder, ms=ms)])
        return None

    def _note_fallback(self, tr: _Transcript, failures: list[str], what: str,
                       restored: str | None) -> None:  # fmt: skip
        """The latest snapshot(s) could not be had: say which, what was restored instead,
        and the tool calls whose effects on the sandbox went with them (those between the
        restored snapshot and the newest one)."""
        entries = tr.entries()
        taken = snapshot_seqs(entries)
        after = taken.get(restored, 0) if restored else 0
        until = max((taken.get(f.split(":", 1)[0], 0) for f in failures), default=0)
        lost = lost_calls(entries, after, until)
        tr.noted.update(c.tool_call_id or "" for c in lost)
        text = (
            "The session's latest snapshot could not be restored ("
            + "; ".join(failures)
            + f"), so torpor {what}. Files and processes created after that point are gone;"
            " the conversation log is complete."
        )
        if lost:
            text += (" Effects of these tool calls on the sandbox were lost and may need "
                     "redoing: " + "; ".join(f"{c.tool_name}({c.arguments})" for c in lost)
                     + ".")  # fmt: skip
        tr.append([Entry.marker("recovery_note", text=text, failures=failures,
                                snapshot=restored, since_seq=after,
                                lost=[c.tool_call_id for c in lost])])  # fmt: skip

    def _take_inbox(self, tr: _Transcript, sid: str, emit: Callable) -> None:
        for inbox_id, text in self.rt.db.unread(sid):
            tr.append([Entry.message("user", text)], key=f"inbox-{inbox_id}")
            self.rt.db.consume([inbox_id])
            emit("user", text=text)

    def _recover(self, tr: _Transcript, row: SessionRow, ws: SandboxWorkspace,
                 registry: ToolRegistry, emit: Callable, *,
                 warm_lost: bool = False) -> None:  # fmt: skip
        """A worker died mid-turn. The sandbox is back at the last snapshot: say what
        happened after it, and re-run interrupted calls only where that is safe."""
        entries = tr.entries()
        died = recoveries_in_a_row(entries)
        if died >= MAX_RECOVERIES:
            raise SessionError(
                f"the session's turn was cut short {died} times in a row (its worker stopped "
                "each time before a wait point); not trying again: send a new message to"
                " retry, or fork it from an earlier snapshot"
            )
        # where the sandbox really is: the snapshot this turn restored (an older one than
        # the session's latest if that one was lost with its machine), or a fresh one
        restored = tr.restored
        after = 0
        if restored:  # (the row's seq for a snapshot whose marker is not in this log)
            after = snapshot_seqs(entries).get(
                restored, (row.snapshot_seq or 0) if restored == row.snapshot else 0)
        calls = {e.tool_call_id: e for e in entries if e.kind == "tool_call" and e.seq > after}
        answered = {e.tool_call_id for e in entries if e.kind == "tool_result"}
        lost = [c for cid, c in calls.items() if cid in answered and cid not in tr.noted]
        interrupted = [c for cid, c in calls.items() if cid not in answered]
        where = (f"the snapshot {restored} taken at log seq {after}" if restored
                 else "a fresh sandbox (there was no snapshot to restore)")  # fmt: skip
        who = ("keeping this session's sandbox warm after its last turn" if warm_lost
               else "running this session")  # fmt: skip
        parts = [f"The worker {who} stopped before snapshotting it; the sandbox was "
                 f"restored to {where}."]  # fmt: skip
        if lost:
            parts.append("Effects of these tool calls on the sandbox were lost and may need "
                         "redoing: " + "; ".join(f"{c.tool_name}({c.arguments})" for c in lost)
                         + ".")  # fmt: skip
        if interrupted:
            parts.append("These calls were interrupted: " + "; ".join(
                f"{c.tool_name}({c.arguments})" for c in interrupted) + ".")  # fmt: skip
        tr.append([Entry.marker(
            "recovery_note", text=" ".join(parts), snapshot=restored, after_seq=after,
            lost=[c.tool_call_id for c in lost],
            interrupted=[c.tool_call_id for c in interrupted],
        )])  # fmt: skip
        emit("recovered", lost=len(lost), interrupted=len(interrupted), snapshot=restored)
        for c in interrupted:
            tool_ok = c.tool_name in {s.name for s in registry.specs()}
            if tool_ok and registry.get(c.tool_name or "").safe_to_rerun:
                result = registry.run(c.tool_name or "", c.args() or {}, ws)
                content, meta = result.content, {"is_error": result.is_error, "rerun": True}
            else:
                content = (f"[torpor] interrupted by a worker crash: this call may or may not "
                           f"have run, and the sandbox has since been restored to {where}.")
                meta = {"is_error": True, "interrupted": True}
            tr.append([Entry.tool_result(c.tool_call_id or "", content, meta=meta)],
                      key=f"recover-{c.tool_call_id}")  # fmt: skip

    def _snapshot(self, tr: _Transcript, sandbox: str, emit: Callable, *,
                  leave_running: bool) -> tuple[str, int, float]:  # fmt: skip
        eng = self.rt.engine
        t0 = time.monotonic()
        ck = eng.checkpoint(sandbox, f"e{tr.epoch}-{secrets.token_hex(2)}",
                            leave_running=leave_running)  # fmt: skip
        ms = (time.monotonic() - t0) * 1000
        # which machine holds it (until its upload is done, the only copy)
        self.rt.db.record_snapshot(ck.id, tr.session, self.rt.machine, self.rt.process)
        seq = self.rt.log.head_seq(tr.session)
        tr.append([Entry.marker("snapshot_taken", snapshot=ck.id, seq=seq, bytes=ck.size,
                                ms=round(ms, 1), mid_turn=leave_running,
                                machine=self.rt.machine)])  # fmt: skip
        row = self.rt.db.get(tr.session)
        keep = Policy.from_json(row.policy).keep_snapshots
        snaps = [*row.snapshots, ck.id]
        kept = snaps[-keep:] if keep > 0 else snaps[-16:]
        drop = snaps[:-keep] if keep > 0 else []
        stored = self.rt.checkpoint_storage("stored")
        if drop and stored is not None and not any(stored(k) for k in kept):
            # None of the kept ones is in the store yet (the new one is uploading): the
            # newest that is stays, so that losing this machine (or a power cut) before
            # the upload leaves a snapshot to fall back to. It goes at a later wait point.
            kept, drop = [drop[-1], *kept], drop[:-1]
        if not self.rt.db.update(tr.session, owner=self.owner, snapshot=ck.id,
                                 snapshot_seq=seq, snapshots=kept):
            raise LeaseLost(f"worker {self.owner} lost the lease on {tr.session}")  # fmt: skip
        for old in drop:
            self._drop_snapshot(tr.session, old)
        emit("snapshot", snapshot=ck.id, bytes=ck.size, ms=round(ms, 1), mid_turn=leave_running)
        return ck.id, ck.size, ms

    def _drop_snapshot(self, session: str, snapshot: str) -> None:
        """Policy.keep_snapshots: delete a snapshot that fell out of the kept ones."""
        if self.rt.db.snapshot_in_use(snapshot, besides=session):
            return  # a fork starts from it
        with contextlib.suppress(CheckpointError):
            self.rt.engine.remove_checkpoint(None, snapshot)

    def _go_warm(self, tr: _Transcript, row: SessionRow, emit: Callable, seconds: float) -> None:
        """A deferred wait point: the sandbox keeps running (and this worker keeps the
        lease) for `seconds`; then the janitor snapshots it. wake_at marks it warm."""
        until = time.time() + seconds
        tr.append([Entry.marker("state", state="waiting", warm_until=round(until, 3))])
        self.rt.db.update(row.id, owner=self.owner, state="waiting", attempt=0, wake_at=until,
                          error=None, lease_until=until + self.lease_ttl)  # fmt: skip
        self._keep_warm(row.id, until)
        emit("state", state="waiting", warm_until=until)

    def _wait_point(self, tr: _Transcript, row: SessionRow, sandbox: str, emit: Callable,
                    outcome: TurnOutcome) -> None:  # fmt: skip
        """Snapshot, remove the sandbox, let go: the session waits (or, if a close was
        asked for meanwhile, is closed). A cancel asked for is done: the turn ended."""
        snap, size, ms = self._snapshot(tr, sandbox, emit, leave_running=False)
        with contextlib.suppress(SandboxError):
            self.rt.engine.remove(sandbox, force=True)  # nothing left running: no memory
        outcome.snapshot, outcome.snapshot_bytes, outcome.snapshot_ms = snap, size, ms
        self._let_wait(tr, row, emit, outcome)
        if self.rt.standby_size > 0:  # ready for when this session (or another) resumes
            self.rt.standbys(row.image).refill()

    def _let_wait(self, tr: _Transcript, row: SessionRow, emit: Callable,
                  outcome: TurnOutcome) -> None:  # fmt: skip
        asked = self.rt.db.cancel_requested(row.id)
        tr.append([Entry.marker("state", state="waiting")])
        self.rt.db.update(row.id, owner=self.owner, state="waiting", attempt=0, wake_at=None,
                          error=None, lease_owner=None, lease_until=None,
                          cancel=None if asked != "close" else "close")  # fmt: skip
        emit("state", state="waiting")
        outcome.state = "waiting"
        if asked == "close":
            close_session(self.rt, tr, row.id)
            emit("state", state="closed")
            outcome.state = "closed"

    def _remove_own_sandbox(self, sandbox: str, own_id: str | None) -> None:
        """After a lost lease: remove the sandbox this worker brought up, unless the
        session's new worker (on this machine) has replaced it with its own already."""
        if own_id is None:
            return
        with contextlib.suppress(SandboxError):
            if self.rt.engine.inspect(sandbox).id == own_id:
                self.rt.engine.remove(own_id, force=True)

    def _cancelled(self, tr: _Transcript, row: SessionRow, sandbox: str, emit: Callable,
                   outcome: TurnOutcome, events: list[Event]) -> TurnOutcome:  # fmt: skip
        """The user cancelled the turn at a safe point: the command running then was
        stopped (SIGTERM through the workspace), calls that had not run get a result that
        says so, and the sandbox is snapshotted as at any wait point. A close asked for
        closes the session after that."""
        skipped = answer_open_calls(tr, "[torpor] not run: the user cancelled the turn")
        tr.append([Entry.marker("cancelled", skipped=len(skipped), text=(
            "The user cancelled the turn: the command running then (if any) was stopped and "
            f"{len(skipped)} tool call(s) not yet run were skipped; the sandbox was "
            "snapshotted as it was."))])  # fmt: skip
        emit("cancelled", skipped=len(skipped))
        outcome.cancelled, outcome.events = True, events
        try:
            running = self.rt.engine.inspect(sandbox).state == "running"
        except SandboxError:
            running = False
        if running:
            self._wait_point(tr, row, sandbox, emit, outcome)
        else:
            self._let_wait(tr, row, emit, outcome)
        return outcome

    def settle_cancel(self, sid: str, *, close: bool = False) -> SessionRow | None:
        """Cancel (and close) a session that no live worker holds: a queued message is
        logged but not answered, a retry timer or a dead worker's turn is dropped (the
        sandbox continues from the last snapshot). None if a worker holds it (it sees
        the request in the database at its next safe point)."""
        rt = self.rt
        row = rt.db.claim(sid, self.owner, self.lease_ttl)
        if row is None:
            return None
        tr = _Transcript(rt.log, sid, rt.log.acquire(sid))
        pending = row.state in ("running", "recovering", "retrying") or bool(rt.db.unread(sid))
        if pending:
            self._take_inbox(tr, sid, lambda *a, **k: None)
            skipped = answer_open_calls(tr, "[torpor] not run: the user cancelled the turn")
            where = f"snapshot {row.snapshot}" if row.snapshot else "a fresh sandbox"
            tr.append([Entry.marker("cancelled", skipped=len(skipped), text=(
                f"The user cancelled the turn before it ran on; the sandbox continues "
                f"from {where}."))])  # fmt: skip
            tr.append([Entry.marker("state", state="waiting")])
        state = "waiting" if pending else row.state
        rt.db.update(sid, owner=self.owner, state=state, attempt=0, error=None,
                     wake_at=None if pending else row.wake_at, cancel=None,
                     lease_owner=None, lease_until=None)  # fmt: skip
        if close:
            close_session(rt, tr, sid)
        return rt.db.get(sid)

    def _fail(self, tr: _Transcript, row: SessionRow, sandbox: str, err: Exception,
              emit: Callable, outcome: TurnOutcome,
              events: list[Event]) -> TurnOutcome:  # fmt: skip
        """An error raised in this (live) worker that no retry would mend: a configuration
        that broke after creation, a missing image, a tool that raised out of the loop.
        The session goes to `failed` with the error, once; recovery is for dead workers.
        Whatever the turn did to the sandbox is snapshotted, then the sandbox removed. A
        new message takes it back to work (one attempt per message, never a loop)."""
        message = f"{type(err).__name__}: {err}"
        logger.warning("session %s failed: %s", row.id, message)
        eng = self.rt.engine
        with contextlib.suppress(Exception):
            if eng.inspect(sandbox).state == "running":
                snap, size, ms = self._snapshot(tr, sandbox, emit, leave_running=False)
                outcome.snapshot, outcome.snapshot_bytes, outcome.snapshot_ms = snap, size, ms
        with contextlib.suppress(SandboxError):
            eng.remove(sandbox, force=True)
        tr.append([Entry.marker("error", error=message, kind=type(err).__name__)])
        tr.append([Entry.marker("state", state="failed", error=message)])
        self.rt.db.update(row.id, owner=self.owner, state="failed", attempt=0, wake_at=None,
                          error=message, lease_owner=None, lease_until=None)  # fmt: skip
        emit("error", error=message)
        emit("state", state="failed", error=message)
        outcome.state, outcome.error, outcome.events = "failed", message, events
        return outcome

    def _schedule_retry(self, tr: _Transcript, row: SessionRow, sandbox: str, err: ModelError,
                        emit: Callable, outcome: TurnOutcome,
                        events: list[Event]) -> TurnOutcome:  # fmt: skip
        policy = Policy.from_json(row.policy)
        attempt = self.rt.db.get(row.id).attempt + 1
        snap, size, ms = self._snapshot(tr, sandbox, emit, leave_running=False)
        with contextlib.suppress(SandboxError):
            self.rt.engine.remove(sandbox, force=True)
        outcome.snapshot, outcome.snapshot_bytes, outcome.snapshot_ms = snap, size, ms
        outcome.events = events
        if not err.retryable or attempt >= policy.max_attempts:
            why = "not retryable" if not err.retryable else f"failed {attempt} times"
            tr.append([Entry.marker("model_error", error=str(err), status=err.status,
                                    attempts=attempt, gave_up=True)])  # fmt: skip
            tr.append([Entry.marker("state", state="waiting")])
            self.rt.db.update(row.id, owner=self.owner, state="waiting", attempt=0,
                              wake_at=None, error=f"model {why}: {err}",
                              lease_owner=None, lease_until=None)  # fmt: skip
            emit("model_error", error=str(err), gave_up=True)
            outcome.state = "waiting"
            return outcome
        if err.retry_after is not None:
            delay = float(err.retry_after)
        else:
            delay = min(policy.backoff_max, policy.backoff_base * 2 ** (attempt - 1))
            delay *= 0.5 + secrets.randbelow(1000) / 1000  # jitter: 50-150 %
        wake = time.time() + delay
        tr.append([Entry.marker("retry_scheduled", attempt=attempt, delay=round(delay, 3),
                                wake_at=wake, error=str(err), status=err.status)])  # fmt: skip
        self.rt.db.update(row.id, owner=self.owner, state="retrying", attempt=attempt,
                          wake_at=wake, error=str(err), lease_owner=None,
                          lease_until=None)  # fmt: skip
        emit("retry_scheduled", attempt=attempt, delay=round(delay, 3), error=str(err))
        outcome.state, outcome.wake_at = "retrying", wake
        return outcome


def close_session(rt: Runtime, tr: _Transcript, sid: str) -> None:
    """The session takes no more messages; its log stays (and is marked closed)."""
    tr.append([Entry.marker("state", state="closed")])
    rt.db.update(sid, state="closed", lease_owner=None, lease_until=None, wake_at=None,
                 cancel=None)  # fmt: skip
    with contextlib.suppress(Exception):
        rt.log.close_session(sid)


def answer_open_calls(tr: _Transcript, text: str) -> list[str]:
    """Give every tool call of the log that has no result one that says it did not run
    (every call needs a result before the model is asked again). Returns their ids."""
    entries = tr.entries()
    answered = {e.tool_call_id for e in entries if e.kind == "tool_result"}
    open_ = [e.tool_call_id or "" for e in entries
             if e.kind == "tool_call" and e.tool_call_id not in answered]  # fmt: skip
    for cid in open_:
        tr.append([Entry.tool_result(cid, text, meta={"is_error": True, "cancelled": True})],
                  key=f"cancel-{cid}")  # fmt: skip
    return open_


def snapshot_seqs(entries: list[Entry]) -> dict[str, int]:
    """Each snapshot of the log's `snapshot_taken` markers -> the log seq it was taken at."""
    out = {}
    for e in entries:
        c = e.content if e.kind == "marker" and isinstance(e.content, dict) else {}
        if c.get("marker") == "snapshot_taken" and c.get("snapshot"):
            out[str(c["snapshot"])] = int(c.get("seq") or e.seq)
    return out


def lost_calls(entries: list[Entry], after: int, until: int) -> list[Entry]:
    """The answered tool calls logged after seq `after` and up to seq `until`: what a
    sandbox restored to the snapshot at `after` lost when the one at `until` was lost."""
    answered = {e.tool_call_id for e in entries if e.kind == "tool_result"}
    return [e for e in entries if e.kind == "tool_call" and after < e.seq <= until
            and e.tool_call_id in answered]  # fmt: skip


def recoveries_in_a_row(entries: list[Entry]) -> int:
    """How many times the current turn has been recovered after a dead worker: the recovery
    notes since the session last reached a wait point (or was sent a new message after
    failing)."""
    n = 0
    for e in reversed(entries):
        c = e.content if e.kind == "marker" and isinstance(e.content, dict) else {}
        if c.get("marker") == "state" and c.get("state") in ("waiting", "failed", "closed"):
            break
        if c.get("marker") == "recovery_note" and "after_seq" in c:
            n += 1
    return n


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
    "LeaseLost", "Policy", "Runtime", "Session", "SessionError", "SessionNotFound",
    "TurnOutcome", "Worker", "wait_for",
]
