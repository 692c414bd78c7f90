"""`Sandboxes`: the sandbox resource of a runtime (`Runtime.sandboxes`): durable sandboxes
that a developer's own agent loop creates, runs commands in, pauses to zero memory and
resumes, over HTTP (`/v1/sandboxes`, the E2B protocol) or in-process.

    sbx = rt.sandboxes.create(image="base", timeout=300, on_timeout="pause")
    with rt.sandboxes.use(sbx.id) as sb:          # a torpor.sandbox.Sandbox handle
        sb.exec("echo hi > /work/x")
    rt.sandboxes.pause(sbx.id)                    # checkpointed, stored, stopped
    with rt.sandboxes.use(sbx.id) as sb:          # paused + auto_resume: resumed first
        sb.files.read("/work/x")

A sandbox is a row (records.py) plus, while it runs, an engine sandbox (`box`) held live
by one serving process. **Pause** checkpoints the box into the snapshot store, waits for
the upload (so that any machine can resume it), and removes the box: a paused sandbox
holds no process and no memory. **Resume** restores its pause snapshot into a new box
(into a standby when one is ready). **Snapshot** checkpoints it and keeps it running;
**fork** makes a new sandbox from one of its snapshots. **Kill** removes the box and the
pause snapshot; named snapshots stay (new sandboxes can be made from them).

Idle timeout: a sandbox with no call for `timeout` seconds is paused or killed
(`on_timeout`) by the janitor of the process holding it; a call to a paused sandbox with
`auto_resume` resumes it first.

When the process holding a live sandbox dies, its box is an orphan (its owner is gone:
torpor.sandbox.owners) and is removed by the next `torpor serve` of the machine (or
`torpor doctor`). The sandbox's row then says so (`note`) and is **paused at its last
snapshot** (its last pause or named snapshot: whatever ran after it is lost), or killed
if it had none; with auto_resume the next call resumes it from there. A `torpor serve`
that is stopped (SIGTERM) pauses its live sandboxes first.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from torpor.runtime import quotas
from torpor.runtime.sandboxes.activity import Activity, Janitor
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
    TenantOverQuota,
)
from torpor.runtime.sandboxes.housekeeping import Housekeeping
from torpor.runtime.sandboxes.live import Followers, LiveSandbox
from torpor.runtime.sandboxes.records import (
    ON_TIMEOUT,
    SandboxRecords,
    SandboxRow,
    SnapshotRow,
)
from torpor.runtime.types import MACHINE_TTL
from torpor.sandbox import owners
from torpor.sandbox.engine import (
    CheckpointError,
    SandboxConflict,
    SandboxError,
    SandboxNotFound,
    SandboxNotRunning,
)
from torpor.sandbox.handle import Sandbox
from torpor.sandbox.images import ImageError, ImageNotFound

if TYPE_CHECKING:
    from torpor.runtime.parts import RuntimeParts

logger = logging.getLogger("torpor.sandboxes")

DEFAULT_TIMEOUT = 300.0
UPLOAD_TIMEOUT = 600.0  # seconds a pause waits for its snapshot's upload
PAUSE_NAME = "paused"  # the checkpoint name of a pause (one per engine sandbox)
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


class _Every:
    def __repr__(self) -> str:
        return "EVERY_TENANT"


EVERY_TENANT: Final = _Every()  # no tenant check (in-process use, an admin token)
Tenant = str | None | _Every
_UNSET: Any = object()


def _check_settings(timeout: float | None, on_timeout: str) -> None:
    if timeout is not None and not 0 < timeout <= 30 * 86_400:
        raise InvalidSandbox(f"timeout {timeout!r}: use seconds between 1 and 2592000 (30 "
                             "days), or none")  # fmt: skip
    if on_timeout not in ON_TIMEOUT:
        raise InvalidSandbox(f"on_timeout {on_timeout!r}: use pause or kill")


class Sandboxes(Housekeeping):
    """The sandbox resource over a runtime's database and engine (see the module); what
    its serving process does besides the calls (the janitor's round, recover, shutdown)
    is in housekeeping.py."""

    def __init__(self, rt: RuntimeParts) -> None:
        self.rt = rt
        self.records = SandboxRecords(rt.db)
        self.activity = Activity()
        self.janitor = Janitor(self.sweep)
        self._mine: set[str] = set()  # live sandboxes this process holds (checked)
        self._mine_lock = threading.Lock()
        # the output streams a checkpoint detaches (see `follow`)
        self.followers = Followers(lambda: self.rt.engine, self._settled)

    # ------------------------------------------------------------------ reading

    def _row(self, sid: str, tenant: Tenant) -> SandboxRow:
        row = self.records.get(sid)
        if row is None or not (tenant is EVERY_TENANT or row.tenant == tenant):
            raise NoSuchSandbox(f"no such sandbox: {sid}")
        return row

    def row(self, sid: str, *, tenant: Tenant = EVERY_TENANT) -> SandboxRow:
        """The sandbox's row as stored (its holder not checked: see `get`)."""
        return self._row(sid, tenant)

    def get(self, sid: str, *, tenant: Tenant = EVERY_TENANT) -> SandboxRow:
        """The sandbox's row, made truthful first if its holder may be gone (see
        `_check_running`)."""
        row = self._row(sid, tenant)
        if row.state == "running" and not self._is_mine(row):
            with self.activity.lock(sid), contextlib.suppress(HeldElsewhere):
                row = self._check_running(self._row(sid, tenant))
        return row

    def list(self, *, tenant: Tenant = EVERY_TENANT, state: str | None = None
             ) -> list[SandboxRow]:  # fmt: skip
        """The sandboxes of a tenant (every tenant's: EVERY_TENANT), oldest first."""
        if tenant is EVERY_TENANT:
            return self.records.list(None, every_tenant=True, state=state)
        return self.records.list(tenant, state=state)  # type: ignore[arg-type]

    def snapshots(self, sid: str, *, tenant: Tenant = EVERY_TENANT) -> list[SnapshotRow]:
        self._row(sid, tenant)
        return self.records.snapshots(sid)

    def snapshot_info(self, snap: str, *, tenant: Tenant = EVERY_TENANT) -> SnapshotRow:
        found = self.records.snapshot(snap)
        if found is None or not (tenant is EVERY_TENANT or found.tenant == tenant):
            raise NoSuchSnapshot(f"no such snapshot: {snap}")
        return found

    def last_activity(self, row: SandboxRow) -> float:
        return max(row.last_activity, self.activity.last(row.id))

    # ------------------------------------------------------------------ live

    def _is_mine(self, row: SandboxRow) -> bool:
        with self._mine_lock:
            return row.process == self.rt.process and row.id in self._mine

    def _hold(self, sid: str, mine: bool) -> None:
        with self._mine_lock:
            if mine:
                self._mine.add(sid)
            else:
                self._mine.discard(sid)
        if not mine:
            self.activity.forget(sid)

    @contextlib.contextmanager
    def use(self, sid: str, *, tenant: Tenant = EVERY_TENANT) -> Iterator[LiveSandbox]:
        """The sandbox's live handle for the length of the block (a call: it counts as
        activity, and the janitor leaves a sandbox with a call in flight alone); its
        commands get the sandbox's env. A paused sandbox is resumed first if its
        auto_resume is on (else SandboxPaused)."""
        with self.activity.lock(sid):
            row = self._live(self._row(sid, tenant))
            self.activity.begin(sid)
        try:
            yield LiveSandbox(str(row.box), engine=self.rt.engine, env=row.env, sandbox_id=sid)
        except (SandboxNotFound, SandboxNotRunning):
            # its box went away under the call: the record says so from now on
            with self.activity.lock(sid), contextlib.suppress(Exception):
                fresh = self._row(sid, tenant)
                if fresh.state == "running" and fresh.box == row.box:
                    self._hold(sid, False)
                    self._check_running(fresh)
            raise
        finally:
            self.activity.end(sid)

    def _live(self, row: SandboxRow) -> SandboxRow:
        """`row`'s sandbox running here, under its lock: checked, or resumed."""
        if row.state == "running":
            row = self._check_running(row)
        if row.state == "paused":
            if not row.auto_resume:
                raise SandboxPaused(f"sandbox {row.id} is paused: resume it first (its "
                                    "auto_resume is off)")  # fmt: skip
            row, _ = self._resume_locked(row)
        if row.state == "killed":
            raise SandboxKilled(f"sandbox {row.id} was killed{_why(row)}")
        return row

    def _check_running(self, row: SandboxRow) -> SandboxRow:
        """A running row as it truly is: its box alive here (held by this process or
        another live one of this machine), or held by a live process of another machine
        (HeldElsewhere), or lost (its holder died: `_lost`)."""
        if self._is_mine(row):
            return row
        me = self.rt.machine
        if row.machine != me:
            if row.process and self.rt.db.process_alive(row.process, MACHINE_TTL):
                raise HeldElsewhere(f"sandbox {row.id} runs on machine {row.machine}: call "
                                    "the server there")  # fmt: skip
            return self._lost(row, f"the machine holding it live ({row.machine}) stopped "
                                   "answering")  # fmt: skip
        eng = self.rt.engine
        try:
            info = eng.inspect(str(row.box))
        except SandboxNotFound:
            return self._lost(row, "the process holding it live died, and its sandbox "
                                   "was reaped")  # fmt: skip
        if owners.owner_state(info.owner) == "gone":
            with contextlib.suppress(SandboxError):
                eng.reap(info.id)
            return self._lost(row, f"the process holding it live (pid "
                                   f"{(info.owner or {}).get('pid')}) died; its sandbox was "
                                   "reaped")  # fmt: skip
        if info.state != "running":
            with contextlib.suppress(SandboxError):
                eng.remove(info.id, force=True)
            return self._lost(row, f"its sandbox stopped ({info.state})")
        mine = owners.same_process(info.owner, owners.this_process("sandbox"))
        if mine and row.process == self.rt.process:
            self._hold(row.id, True)
        return row

    def _lost(self, row: SandboxRow, why: str) -> SandboxRow:
        """The sandbox's box is gone without a pause: paused at its last snapshot (its
        last pause or named one), or killed when it has none."""
        self._hold(row.id, False)
        snaps = self.records.snapshots(row.id)
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        if snaps:
            last = max(snaps, key=lambda s: s.created_at)
            taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last.created_at))
            note = (f"{why} (seen {at}); paused at its last snapshot {last.id} (taken "
                    f"{taken}): what ran after it is lost")  # fmt: skip
            new = self.records.update(row, state="paused", box=None, process=None,
                                      snapshot=last.id, paused_at=time.time(), note=note)
        else:
            note = f"{why} (seen {at}); it had no snapshot to resume from"
            new = self.records.update(row, state="killed", box=None, process=None,
                                      snapshot=None, killed_at=time.time(), note=note)
        if new is None:  # another process got there first
            return self._row(row.id, EVERY_TENANT)
        logger.warning("sandbox %s: %s", row.id, note)
        return new

    def follow(self, sb: LiveSandbox, process: int, **kw: Any) -> int | None:
        """`Process.stream` that a snapshot does not wait for (see live.Followers)."""
        return self.followers.follow(sb, process, **kw)

    def _settled(self, sid: str) -> SandboxRow:
        with self.activity.lock(sid):  # (held by a checkpoint under way)
            return self._row(sid, EVERY_TENANT)

    def _detach(self, sid: str) -> None:
        self.followers.detach(sid)

    # ------------------------------------------------------------------ lifecycle

    def create(
        self,
        image: str = "base",
        *,
        snapshot: str | None = None,
        tenant: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        on_timeout: str = "pause",
        auto_resume: bool = True,
        metadata: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> SandboxRow:
        """A new running sandbox: fresh from `image` (a torpor image), or from one of the
        tenant's snapshots (`snapshot`: its image is the snapshot's). `timeout`: idle
        seconds before `on_timeout` (pause or kill; None: never); `env` is given to
        every command; `metadata` is the caller's. TenantOverQuota when the tenant is
        over a storage quota."""
        _check_settings(timeout, on_timeout)
        self._check_quota(tenant, "sandboxes")
        sid = f"sbx-{secrets.token_hex(6)}"
        owner = owners.this_process("sandbox", sandbox=sid)
        source = None
        if snapshot is not None:
            snap = self.snapshot_info(snapshot, tenant=tenant)
            origin = self.records.get(snap.sandbox)
            image = origin.image if origin is not None else image
            source = snap.id
            box = self._restore(snap.id, sid, owner)
        else:
            self._check_image(image)
            box = self._start(image, sid, owner)
        row = SandboxRow(id=sid, tenant=tenant, image=image, state="running", box=box,
                         machine=self.rt.machine, process=self.rt.process, source=source,
                         timeout=timeout, on_timeout=on_timeout, auto_resume=auto_resume,  # type: ignore[arg-type]
                         metadata=dict(metadata or {}), env=dict(env or {}))  # fmt: skip
        try:
            self.records.insert(row)
        except BaseException:
            with contextlib.suppress(SandboxError):
                self.rt.engine.remove(box, force=True)
            raise
        self._hold(sid, True)
        self.activity.touch(sid)
        return row

    def _check_quota(self, tenant: str | None, what: str) -> None:
        over = quotas.over_quota(self.rt.db, tenant, self.rt.quota)
        if over is not None:
            raise TenantOverQuota(quotas.refusal(over, what, self.rt.db, tenant), over.status)

    def _check_image(self, image: str) -> None:
        images = getattr(self.rt.engine, "images", None)
        if images is None:
            return
        try:
            images.get(image)
        except ImageNotFound:
            raise NoSuchImage(f"no such image: {image} (`torpor images` lists this "
                                 "server's)") from None  # fmt: skip
        except ImageError as e:
            raise InvalidSandbox(f"image {image!r}: {e}") from None

    def _start(self, image: str, sid: str, owner: dict[str, Any]) -> str:
        """A fresh engine sandbox named `sid`: a pooled one when ready, else started."""
        if self.rt.pool_size > 0 and self.rt.pool(image).take(sid, owner=owner):
            return self.rt.engine.inspect(sid).id
        try:
            info = self.rt.engine.run(self.rt.sandbox_spec(image), name=sid, owner=owner)
        except SandboxError as e:
            raise LifecycleFailed(f"cannot start a sandbox of image {image}: {e}") from None
        if self.rt.standby_size > 0:
            self.rt.standbys(image)  # the first time: one set up for its resumes
        return info.id

    def _restore(self, snap: str, name: str, owner: dict[str, Any]) -> str:
        """A new engine sandbox named `name` from a snapshot (into a standby when one is
        ready); a stopped or orphaned sandbox left with that name is removed first."""
        eng = self.rt.engine
        for attempt in range(2):
            try:
                box = Sandbox.restore(snap, engine=eng, name=name, owner=owner)
            except SandboxConflict as e:
                if attempt or "already in use" not in str(e):
                    raise LifecycleFailed(f"cannot restore snapshot {snap}: {e}") from None
                self._clear_name(name)
                continue
            except SandboxError as e:
                raise LifecycleFailed(f"cannot restore snapshot {snap}: {e}") from None
            info = box.last_info
            if info is not None and info.from_standby and self.rt.standby_size > 0 \
                    and not self.rt.stopping.is_set():  # fmt: skip
                self.rt.standbys(info.spec.image).refill()  # one ready for the next
            return box.id
        raise AssertionError("unreachable")

    def _clear_name(self, name: str) -> None:
        eng = self.rt.engine
        with contextlib.suppress(SandboxNotFound):
            info = eng.inspect(name)
            if info.state == "running" and owners.owner_state(info.owner) == "alive":
                raise LifecycleFailed(f"a live sandbox is named {name} already")
            eng.remove(info.id, force=True)

    def resume(self, sid: str, *, tenant: Tenant = EVERY_TENANT) -> tuple[SandboxRow, bool]:
        """Make it run: (its row, whether it was resumed; False: it was running)."""
        with self.activity.lock(sid):
            row = self._row(sid, tenant)
            if row.state == "running":
                row = self._check_running(row)
                if row.state == "running":
                    return row, False
            if row.state == "killed":
                raise SandboxKilled(f"sandbox {sid} was killed{_why(row)}")
            return self._resume_locked(row)

    def _resume_locked(self, row: SandboxRow) -> tuple[SandboxRow, bool]:
        if not row.snapshot:
            raise LifecycleFailed(f"sandbox {row.id} has no snapshot to resume from")
        owner = owners.this_process("sandbox", sandbox=row.id)
        box = self._restore(row.snapshot, row.id, owner)
        new = self.records.update(row, state="running", box=box, machine=self.rt.machine,
                                  process=self.rt.process, last_activity=time.time())
        if new is None:  # another process resumed (or killed) it meanwhile: keep theirs
            with contextlib.suppress(SandboxError):
                self.rt.engine.remove(box, force=True)
            fresh = self._row(row.id, EVERY_TENANT)
            if fresh.state == "running":
                return self._check_running(fresh), False
            raise LifecycleFailed(f"sandbox {row.id} changed while it was resumed: try again")
        self._hold(row.id, True)
        self.activity.touch(row.id)
        return new, True

    def pause(self, sid: str, *, tenant: Tenant = EVERY_TENANT) -> SandboxRow:
        """Checkpoint it into the snapshot store and stop it (see the module)."""
        with self.activity.lock(sid):
            row = self._row(sid, tenant)
            if row.state == "running":
                row = self._check_running(row)
                if row.state == "running":
                    return self._pause_locked(row)
            if row.state == "killed":
                raise SandboxKilled(f"sandbox {sid} was killed{_why(row)}")
            raise AlreadyPaused(f"sandbox {sid} is paused already")

    def _pause_locked(self, row: SandboxRow, note: str | None = None) -> SandboxRow:
        eng = self.rt.engine
        self._detach(row.id)
        try:
            ck = Sandbox(str(row.box), engine=eng).checkpoint(PAUSE_NAME, leave_running=False)
        except SandboxError as e:  # (it keeps running if it can: see Checkpointer.take)
            raise LifecycleFailed(f"cannot pause sandbox {row.id}: {e}") from None
        wait = self.rt.checkpoint_storage("wait_stored")
        stored = True
        if wait is not None:
            try:
                wait(ck.id, timeout=UPLOAD_TIMEOUT)
            except CheckpointError as e:
                stored = False
                note = (f"its pause snapshot is on machine {self.rt.machine} only, until a "
                        f"later process uploads it: {e}")  # fmt: skip
        try:
            eng.remove(str(row.box), force=True)
        except SandboxError as e:  # stopped already: reaped as an orphan if this fails
            logger.warning("sandbox %s: removing its stopped engine sandbox failed: %s",
                           row.id, e)  # fmt: skip
        now = time.time()
        self.records.add_snapshot(SnapshotRow(id=ck.id, sandbox=row.id, tenant=row.tenant,
                                              name=ck.name, kind="pause", bytes=ck.size,
                                              created_at=now))  # fmt: skip
        note = self._quota_note(row.tenant, note, replaces=row.snapshot if stored else None)
        self._hold(row.id, False)
        new = self.records.update(row, state="paused", box=None, process=None,
                                  snapshot=ck.id, paused_at=now, note=note,
                                  last_activity=self.last_activity(row))  # fmt: skip
        if new is None:
            raise LifecycleFailed(f"sandbox {row.id} changed while it was paused")
        if stored and row.snapshot:
            self._drop_pause_snapshot(row.snapshot)  # the one it resumed from
        if self.rt.standby_size > 0 and not self.rt.stopping.is_set():
            self.rt.standbys(row.image).refill()  # ready for its resume
        return new

    def _quota_note(self, tenant: str | None, note: str | None,
                    replaces: str | None) -> str | None:  # fmt: skip
        """A pause is never refused over quota (it would lose the sandbox's state): its
        note says so instead. `replaces`: the pause snapshot it resumed from, deleted
        next (it counts no more)."""
        try:
            over = quotas.over_quota(self.rt.db, tenant, self.rt.quota)
            if over is not None and over.what == "snapshots" and over.have - 1 <= over.limit \
                    and replaces and getattr(self.records.snapshot(replaces), "kind",
                                             "") == "pause":  # fmt: skip
                over = None
            if over is None:
                return note
            said = (f"{over.why}: paused all the same (a pause keeps the sandbox's state), "
                    "but no new sandboxes or snapshots until it is under; "
                    f"{quotas.what_to_delete(self.rt.db, tenant)}")  # fmt: skip
        except Exception as e:  # noqa: BLE001 - the pause is done: it must not fail now
            logger.warning("sandbox pause: checking its tenant's quota failed: %s", e)
            return note
        return f"{note}; {said}" if note else said

    def _drop_pause_snapshot(self, snap: str) -> None:
        found = self.records.snapshot(snap)
        if found is None or found.kind != "pause":
            return
        try:
            self.rt.engine.remove_checkpoint(None, snap)
        except SandboxError as e:  # gone already; or left for `torpor snapshot gc`
            logger.info("removing pause snapshot %s: %s", snap, e)
        self.records.remove_snapshot(snap)

    def snapshot(self, sid: str, *, name: str | None = None,
                 tenant: Tenant = EVERY_TENANT) -> SnapshotRow:  # fmt: skip
        """Checkpoint it (named `name`, default a timestamp) and keep it running; a paused
        sandbox is resumed first if its auto_resume is on. TenantOverQuota when its
        tenant is over a storage quota."""
        if name is not None and not _NAME.match(name):
            raise InvalidSandbox(f"invalid snapshot name {name!r}: use 1-63 letters, digits, "
                                 "'_', '.', '-' (starting with a letter or digit)")  # fmt: skip
        self._check_quota(self._row(sid, tenant).tenant, "snapshots")
        with self.activity.lock(sid):
            row = self._live(self._row(sid, tenant))
            self._detach(sid)
            try:
                ck = Sandbox(str(row.box), engine=self.rt.engine).checkpoint(name)
            except SandboxError as e:
                raise LifecycleFailed(f"cannot snapshot sandbox {sid}: {e}") from None
            snap = SnapshotRow(id=ck.id, sandbox=sid, tenant=row.tenant, name=ck.name,
                               kind="snapshot", bytes=ck.size, created_at=time.time())
            self.records.add_snapshot(snap)
            self.activity.touch(sid)
            return snap

    def remove_snapshot(self, sid: str, snap: str, *, tenant: Tenant = EVERY_TENANT) -> None:
        """Delete one of its snapshots (not the one a paused sandbox resumes from)."""
        self._row(sid, tenant)
        with self.activity.lock(sid):
            found = self.records.snapshot(snap)
            if found is None or found.sandbox != sid:
                raise NoSuchSnapshot(f"no such snapshot of sandbox {sid}: {snap}")
            row = self._row(sid, tenant)
            if row.state == "paused" and row.snapshot == snap:
                raise AlreadyPaused(f"snapshot {snap} is the one sandbox {sid} resumes from")
            with contextlib.suppress(SandboxNotFound, CheckpointError):
                self.rt.engine.remove_checkpoint(None, snap)
            self.records.remove_snapshot(snap)

    def fork(self, sid: str, *, snapshot: str | None = None,
             tenant: Tenant = EVERY_TENANT) -> SandboxRow:  # fmt: skip
        """A new sandbox, with this one's settings, from one of its snapshots (default: a
        snapshot taken now, this one running on)."""
        row = self._row(sid, tenant)
        if snapshot is None:
            snap = self.snapshot(sid, tenant=tenant)
        else:
            snap = self.snapshot_info(snapshot, tenant=row.tenant)
            if snap.sandbox != sid:
                raise NoSuchSnapshot(f"no such snapshot of sandbox {sid}: {snapshot}")
        return self.create(snapshot=snap.id, tenant=row.tenant, timeout=row.timeout,
                           on_timeout=row.on_timeout, auto_resume=row.auto_resume,
                           metadata=row.metadata, env=row.env)  # fmt: skip

    def kill(self, sid: str, *, tenant: Tenant = EVERY_TENANT) -> SandboxRow:
        """Remove it: its engine sandbox and its pause snapshot (named snapshots stay).
        Its row stays, state `killed`. Killing a killed sandbox changes nothing."""
        with self.activity.lock(sid):
            row = self._row(sid, tenant)
            if row.state == "killed":
                return row
            if row.state == "running" and row.machine != self.rt.machine and row.process \
                    and self.rt.db.process_alive(row.process, MACHINE_TTL):  # fmt: skip
                raise HeldElsewhere(f"sandbox {sid} runs on machine {row.machine}: call the "
                                    "server there")  # fmt: skip
            if row.state == "running" and row.box and row.machine == self.rt.machine:
                self._detach(sid)
                with contextlib.suppress(SandboxNotFound):
                    self.rt.engine.remove(row.box, force=True)
            self._hold(sid, False)
            for s in self.records.snapshots(sid):
                if s.kind == "pause":
                    self._drop_pause_snapshot(s.id)
            new = self.records.update(row, state="killed", box=None, process=None,
                                      snapshot=None, killed_at=time.time())  # fmt: skip
            return new if new is not None else self._row(sid, EVERY_TENANT)

    def configure(self, sid: str, *, tenant: Tenant = EVERY_TENANT, timeout: Any = _UNSET,
                  on_timeout: Any = _UNSET, auto_resume: Any = _UNSET,
                  metadata: Any = _UNSET) -> SandboxRow:  # fmt: skip
        """Change its idle timeout settings (or metadata); counts as activity (the idle
        time starts again)."""
        with self.activity.lock(sid):
            row = self._row(sid, tenant)
            values = {k: v for k, v in (("timeout", timeout), ("on_timeout", on_timeout),
                                        ("auto_resume", auto_resume), ("metadata", metadata))
                      if v is not _UNSET}  # fmt: skip
            _check_settings(values.get("timeout", row.timeout),
                            values.get("on_timeout", row.on_timeout))
            if row.state == "killed":
                raise SandboxKilled(f"sandbox {sid} was killed{_why(row)}")
            self.activity.touch(sid)
            new = self.records.update(row, last_activity=time.time(), **values)
            return new if new is not None else self._row(sid, EVERY_TENANT)

def _why(row: SandboxRow) -> str:
    return f" ({row.note})" if row.note else ""
