"""`GVisorEngine`: the `Engine` on runsc, composed of the parts of this package.

The engine names sandboxes (by name or id), takes their locks and checks their state;
the parts act on a locked record: `records` (the records, the names, the locks),
`driver` (runsc: launch, state, stop, reconcile), `client` (torpor-init: commands and
processes), `files` (file transfer), `checkpointer` (checkpoints) and `standbys`. What
the engine itself does is boot a sandbox (fresh, from a checkpoint, or into a standby:
`_boot`) and remove one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import secrets
import shutil
import signal
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from torpor.files import sweep
from torpor.home import torpor_home
from torpor.sandbox import network, owners
from torpor.sandbox.checkpoints import CheckpointStorage, LocalCheckpointStorage
from torpor.sandbox.doctor import RUNSC_INSTALL_HINT
from torpor.sandbox.engine import (
    CheckpointInfo,
    Engine,
    ExecResult,
    FileEntry,
    OutputCallback,
    SandboxConflict,
    SandboxError,
    SandboxInfo,
    SandboxNotFound,
    SandboxSpec,
    check_name,
)
from torpor.sandbox.gvisor import bundle
from torpor.sandbox.gvisor.boot import Booter
from torpor.sandbox.gvisor.checkpoint import Checkpointer
from torpor.sandbox.gvisor.client import InitClient, not_running
from torpor.sandbox.gvisor.files import Files
from torpor.sandbox.gvisor.records import Records, SandboxOutdated
from torpor.sandbox.gvisor.runsc import PLATFORMS, Driver
from torpor.sandbox.gvisor.standby import Standbys
from torpor.sandbox.images import Image, ImageError, ImageStore
from torpor.sandbox.initbin import ensure_init_binary

log = logging.getLogger(__name__)


class GVisorEngine(Engine):
    """Sandboxes run by `runsc`, checkpointed and restored whole (see the package's
    docstring for the state under TORPOR_HOME)."""

    name = "gvisor"

    def __init__(
        self,
        home: Path | None = None,
        *,
        platform: str | None = None,
        images: ImageStore | None = None,
        checkpoints: CheckpointStorage | None = None,
        runsc: str | None = None,
    ) -> None:
        """An engine over TORPOR_HOME (creates its state directories, runs nothing). It
        does not check runsc: `torpor.sandbox.open_engine` does (torpor's self-test, the
        doctor's gate), and is what the CLI and the runtime use."""
        self.home = home or torpor_home()
        self.platform = platform or os.environ.get("TORPOR_PLATFORM", "systrap")
        if self.platform not in PLATFORMS:
            raise SandboxError(f"unknown platform {self.platform!r}: use one of {PLATFORMS}")
        self.runsc = runsc or shutil.which("runsc") or ""
        if not self.runsc:
            raise SandboxError(RUNSC_INSTALL_HINT)
        self.images = images or ImageStore()
        self.checkpoints = checkpoints or LocalCheckpointStorage(self.home / "checkpoints")
        self.sandboxes_dir = self.home / "sandboxes"
        self.runsc_root = self.home / "runsc"
        for d in (self.sandboxes_dir, self.runsc_root):
            d.mkdir(parents=True, exist_ok=True)
        self._init_dir: Path | None = None
        self.records = Records(self.home)
        self.driver = Driver(self.runsc, self.runsc_root, self.platform, self.records,
                             lambda: self.init_dir)  # fmt: skip
        self.client = InitClient(self.records, self.driver, lambda: self.init_dir)
        self.files = Files(self.client)
        self.checkpointer = Checkpointer(self.name, self.records, self.driver, self.client,
                                         lambda: self.checkpoints)  # fmt: skip
        self.standbys = Standbys(self.records, self.driver)
        self.booter = Booter(self.records, self.driver, self.client, self.standbys,
                             lambda: self.init_dir)  # fmt: skip
        self.self_test_cached = True  # False when the self-test ran for this engine

    # ------------------------------------------------------------------ plumbing

    @property
    def init_dir(self) -> Path:
        if self._init_dir is None:
            self._init_dir = ensure_init_binary(self.home)
        return self._init_dir

    @property
    def version(self) -> str:
        return self.driver.version

    def sweep(self) -> None:
        """Remove the temporary files and directories crashed processes left in this
        engine's state and image store (never one a live process is still writing; see
        torpor.files.sweep); open_engine calls it. A sandbox's own directory is swept
        when it boots."""
        sweep(self.home)
        sweep(self.home / "bin")
        self.records.sweep()
        try:
            self.images.sweep()
        except OSError as e:  # a store this process may only read: its writers sweep it
            log.warning("cannot sweep the image store %s: %s", self.images.root, e)

    @property
    def standby_misses(self) -> list[str]:
        """The last 20 standbys taken but not used, and why."""
        return self.standbys.misses

    @contextlib.contextmanager
    def _locked(
        self, ref: str, *, exclusive: bool = True, reconcile: bool = True
    ) -> Iterator[SandboxInfo]:
        """Find a sandbox and hold its lock; yields its info, reconciled with runsc unless
        told not to (process and file operations find out from init's client itself)."""
        with self.records.lock(ref, exclusive=exclusive) as info:
            yield self.driver.reconcile(info) if reconcile else info

    @contextlib.contextmanager
    def _running(self, ref: str) -> Iterator[SandboxInfo]:
        """A running sandbox, its lock held shared (for commands and files)."""
        with self._locked(ref, exclusive=False, reconcile=False) as info:
            if info.state != "running":
                raise not_running(info)
            yield info

    def _image(self, spec: SandboxSpec) -> Image:
        try:
            return self.images.get(spec.image)
        except ImageError as e:
            raise SandboxError(str(e)) from None

    def _user_ids(self, info: SandboxInfo, user: str | None) -> tuple[int, int] | None:
        """(uid, gid) a command runs as: `user`, else the sandbox's user; None: init's
        default (the sandbox's main process's user)."""
        user = user or info.spec.user or None
        if not user:
            return None
        return bundle.image_user(self._image(info.spec), user)

    def _owner(self, owner: dict[str, Any] | None) -> dict[str, Any]:
        """The owner to record: the one given, else this process of kind `owner_kind`."""
        return owner if owner is not None else owners.this_process(self.owner_kind)

    # ------------------------------------------------------------------ boot

    def _boot(self, info: SandboxInfo, image: Image, *, image_path: Path | None = None,
              standby: bool = False) -> None:  # fmt: skip
        """Boot info's sandbox (see `Booter.boot`)."""
        self.booter.boot(info, image, image_path=image_path, standby=standby)

    def _create_record(self, spec: SandboxSpec, image: Image, name: str | None,
                       owner: dict[str, Any] | None = None) -> SandboxInfo:  # fmt: skip
        return self.records.create(spec, image.digest, name, self._owner(owner))

    def _discard(self, info: SandboxInfo) -> None:
        """Delete everything of a sandbox that is not running (or was just killed)."""
        self.driver.settle(info.id)
        if info.state == "standby":
            self.standbys.unlist(info)
        if self.driver.has_state(info.id):
            self.driver.delete(info.id)
        if info.spec.network == "sandbox":
            network.teardown(self.home, info.id)
        shutil.rmtree(self.records.dir(info.id), ignore_errors=True)
        self.records.unindex_name(info.name, info.id)

    # ------------------------------------------------------------------ lifecycle

    def create(
        self, spec: SandboxSpec, *, name: str | None = None, owner: dict[str, Any] | None = None
    ) -> SandboxInfo:
        """Record a sandbox without starting it (state "created", Docker's `create`): its
        spec is checked, its name and id reserved; `start` boots it."""
        image = self._image(spec)
        if spec.network not in ("none", "sandbox"):
            raise SandboxError(f"unknown network {spec.network!r}: use none or sandbox")
        if spec.ports and spec.network != "sandbox":
            raise SandboxError("publishing ports (-p) needs --network sandbox")
        bundle.check_mounts(spec)
        with self.records.global_lock():
            return self._create_record(spec, image, name, owner)

    def run(
        self, spec: SandboxSpec, *, name: str | None = None, owner: dict[str, Any] | None = None
    ) -> SandboxInfo:
        info = self.create(spec, name=name, owner=owner)
        image = self._image(spec)
        try:
            with self._locked(info.id):
                self._boot(info, image)
        except BaseException:
            self._discard(info)
            raise
        return self.records.load(info.id) or info

    def stop(self, sandbox: str, *, timeout: float = 10.0) -> SandboxInfo:
        with self._locked(sandbox) as info:
            if info.state == "running":
                self.driver.stop(info, timeout)
            return info

    def start(self, sandbox: str, *, checkpoint: str | None = None) -> SandboxInfo:
        with self._locked(sandbox) as info:
            if info.state == "running":
                raise SandboxConflict(f"sandbox {info.name} is already running")
            image = self._image(info.spec)
            if checkpoint is None:
                info.restored_from = None
                self._boot(info, image)
            else:
                ck = self.checkpointer.find(checkpoint, sandbox=info)
                self.checkpointer.check_restorable(ck, image)
                self._restore_into(info, ck, image)
            return self.records.load(info.id) or info

    def remove(self, sandbox: str, *, force: bool = False) -> None:
        try:
            if force:
                self._kill_at_once(sandbox)
            with self._locked(sandbox) as info:
                self._remove_locked(info, force=force)
        except SandboxOutdated as e:  # an older build's: it can only go, and only by force
            if not force:
                raise
            self._remove_outdated(e)

    def _remove_outdated(self, old: SandboxOutdated) -> None:
        """Remove a sandbox an older development build recorded (see
        records.SandboxOutdated): whatever runsc runs of it, its network, its record."""
        with self.records.global_lock():
            # SIGKILL first: `runsc delete -force` alone waits 5 s for a running one
            self.driver.run(None, "kill", "--all", old.sid, "KILL", check=False, timeout=20)
            self.driver.delete(old.sid)
            network.teardown(self.home, old.sid)
            # its supervisor writes exit.code into the directory once the foreground runsc
            # ends (moments after the kill): a removal before that can find it refilled
            self.driver.wait_exit_code(old.sid)
            shutil.rmtree(self.records.dir(old.sid), ignore_errors=True)
            if old.name:
                self.records.unindex_name(old.name, old.sid)

    def _kill_at_once(self, sandbox: str) -> None:
        """`rm -f` kills before it takes the sandbox's lock: a long command running in it
        holds the lock shared (exec) and would make the removal wait until it ends. The
        kill ends that command's client, which lets go; `_remove_locked` does the rest."""
        with contextlib.suppress(SandboxNotFound):
            info = self.records.find(sandbox)
            if info.state == "running" and info.pid and self.driver.alive(info):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info.pid, signal.SIGKILL)

    def reap(self, sandbox: str) -> SandboxInfo | None:
        # Under the global lock too: claiming a standby and renaming a pooled sandbox (the
        # ways a live process takes over a sandbox) change its owner under that lock.
        with self.records.global_lock(), self._locked(sandbox) as info:
            if not owners.is_orphan(info.owner):
                return None
            self._remove_locked(info, force=True)
            return info

    def _remove_locked(self, info: SandboxInfo, *, force: bool) -> None:
        """`remove`, for a sandbox whose lock the caller holds."""
        if info.state == "running":
            if not force:
                raise SandboxConflict(f"sandbox {info.name} is running: stop it first or use -f")
            # Docker's rm -f: SIGKILL at once; `_discard` then deletes what runsc kept.
            self.driver.kill_now(info)
        network.stop_proxy(self.home, info.id)
        self._discard(info)

    def inspect(self, sandbox: str) -> SandboxInfo:
        with self._locked(sandbox, exclusive=False) as info:
            return info

    def rename(
        self, sandbox: str, new_name: str, *, owner: dict[str, Any] | None = None
    ) -> SandboxInfo:
        """Give a sandbox another name (Docker's `rename`); it keeps running. With `owner`
        it changes hands too (a pooled sandbox taken for a session)."""
        check_name(new_name)
        with self.records.global_lock(), self._locked(sandbox, reconcile=False) as info:
            if any(i.name == new_name for i in self.records.all()):
                raise SandboxConflict(f"the name {new_name} is already in use by another sandbox")
            if owner is not None:
                info.owner = owner
            self.records.rename(info, new_name)
            return info

    def console_path(self, sandbox: str) -> Path:
        return self.records.dir(self.records.find(sandbox).id) / "console.log"

    def sandbox_file(self, sandbox: str, name: str) -> Path:
        if not re.fullmatch(r"x-[a-z0-9][a-z0-9._-]*", name):
            raise SandboxError(f"invalid sandbox file name {name!r}: use x-NAME")
        return self.records.dir(self.records.find(sandbox).id) / name

    def wait(self, sandbox: str) -> int:
        """Block until the sandbox's main process exits; returns its exit code."""
        sid = self.records.find(sandbox).id
        while True:
            with self._locked(sid, exclusive=False) as info:
                if info.state != "running":
                    return info.exit_code if info.exit_code is not None else 0
            time.sleep(0.1)

    def image_has_files(self, image: str, path: str) -> bool:
        rootfs = self._image(SandboxSpec(image=image)).rootfs
        # Walk the image's tree without following links: a link would lead out of it.
        cur = Path(rootfs)
        for part in Path(posixpath.normpath("/" + path.lstrip("/"))).relative_to("/").parts:
            cur = cur / part
            try:
                st = cur.lstat()
            except FileNotFoundError:
                return False
            if not stat.S_ISDIR(st.st_mode):
                return True
        return any(cur.iterdir())

    # ------------------------------------------------------------------ processes

    def exec(
        self,
        sandbox: str,
        argv: Sequence[str],
        *,
        stdin: bytes | BinaryIO | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        capture: bool = True,
    ) -> ExecResult:
        with self._running(sandbox) as info:
            return self.client.exec(
                info, argv, stdin=stdin, env=env, workdir=workdir,
                user_ids=self._user_ids(info, user), timeout=timeout, cancel=cancel,
                on_stdout=on_stdout, on_stderr=on_stderr, capture=capture,
            )  # fmt: skip

    def spawn(
        self,
        sandbox: str,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        stdin: bool = False,
    ) -> int:
        """Start a background process (a child of init, so it survives checkpoints);
        returns its init process id (see `processes`)."""
        with self._running(sandbox) as info:
            return self.client.spawn(info, argv, env=env, workdir=workdir,
                                     user_ids=self._user_ids(info, user), stdin=stdin)  # fmt: skip

    def processes(self, sandbox: str) -> list[dict[str, Any]]:
        """Processes started through init: id, pid, state, exit code, argv."""
        with self._running(sandbox) as info:
            return self.client.processes(info)

    def kill_process(self, sandbox: str, process: int, signal: str | int = "TERM") -> None:
        with self._running(sandbox) as info:
            self.client.kill_process(info, process, signal)

    def write_stdin(self, sandbox: str, process: int, data: bytes, *,
                    close: bool = False) -> None:  # fmt: skip
        with self._running(sandbox) as info:
            self.client.write_stdin(info, process, data, close=close)

    def forget_process(self, sandbox: str, process: int) -> None:
        with self._running(sandbox) as info:
            self.client.forget_process(info, process)

    def process_output(
        self,
        sandbox: str,
        process: int,
        *,
        follow: bool = False,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        cancel: threading.Event | Sequence[threading.Event] | None = None,
    ) -> tuple[bytes, bytes]:
        with self._running(sandbox) as info:
            return self.client.process_output(info, process, follow=follow,
                                              on_stdout=on_stdout, on_stderr=on_stderr,
                                              cancel=cancel)  # fmt: skip

    # ------------------------------------------------------------------ files

    def copy_in(self, sandbox: str, src: Path, dest: str) -> None:
        """Copy a host file or directory into the sandbox, with `docker cp` semantics."""
        if not src.exists() and not src.is_symlink():
            raise SandboxError(f"{src}: no such file or directory")
        with self._running(sandbox) as info:
            self.files.copy_in(info, src, dest)

    def copy_out(self, sandbox: str, src: str, dest: Path) -> None:
        """Copy a sandbox file or directory to the host, with `docker cp` semantics."""
        with self._running(sandbox) as info:
            self.files.copy_out(info, src, dest)

    def read_file(self, sandbox: str, path: str) -> bytes:
        with self._running(sandbox) as info:
            return self.files.read_file(info, path)

    def write_file(
        self, sandbox: str, path: str, data: bytes | BinaryIO, mode: int = 0o644
    ) -> None:
        payload = data if isinstance(data, bytes) else data.read()
        if not PurePosixPath(path).is_absolute():
            raise SandboxError(f"path must be absolute: {path}")
        with self._running(sandbox) as info:
            self.files.write_file(info, path, payload, mode)

    def list_files(self, sandbox: str, path: str, *, depth: int = 1) -> list[FileEntry]:
        with self._running(sandbox) as info:
            return self.files.list(info, path, depth=depth)

    def stat_file(self, sandbox: str, path: str, *, follow: bool = False) -> FileEntry:
        with self._running(sandbox) as info:
            return self.files.stat(info, path, follow=follow)

    def remove_file(self, sandbox: str, path: str, *, recursive: bool = False) -> None:
        with self._running(sandbox) as info:
            self.files.remove(info, path, recursive=recursive)

    def make_dir(self, sandbox: str, path: str, *, parents: bool = True,
                 mode: int = 0o755) -> bool:  # fmt: skip
        with self._running(sandbox) as info:
            return self.files.mkdir(info, path, parents=parents, mode=mode)

    def move_file(self, sandbox: str, src: str, dst: str) -> None:
        with self._running(sandbox) as info:
            self.files.move(info, src, dst)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(
        self, sandbox: str, checkpoint: str | None = None, *, leave_running: bool = False
    ) -> CheckpointInfo:
        if checkpoint is not None:
            check_name(checkpoint)
        with self._locked(sandbox, reconcile=False) as info:
            return self.checkpointer.take(info, checkpoint, leave_running=leave_running)

    def list_checkpoints(self, sandbox: str | None = None) -> list[dict[str, Any]]:
        return self.checkpointer.list(None if sandbox is None else self.records.find(sandbox))

    def remove_checkpoint(self, sandbox: str | None, checkpoint: str) -> None:
        target = self.records.find(sandbox) if sandbox else None
        meta = self.checkpointer.find(checkpoint, sandbox=target)
        self.checkpoints.delete(meta["id"])

    def _restore_into(self, info: SandboxInfo, ck: dict[str, Any], image: Image) -> None:
        """Boot info's sandbox from checkpoint `ck` (checked restorable by the caller)."""
        path, temporary = self.checkpoints.open_dir(ck["id"])
        try:
            info.restored_from = ck["id"]
            self._boot(info, image, image_path=path)
        finally:
            if temporary:
                shutil.rmtree(path, ignore_errors=True)

    def restore(
        self, checkpoint: str, *, name: str | None = None, owner: dict[str, Any] | None = None
    ) -> SandboxInfo:
        ck = self.checkpointer.find(checkpoint)
        spec = SandboxSpec.from_json(ck["spec"])
        image = self._image(spec)
        self.checkpointer.check_restorable(ck, image)
        owner = self._owner(owner)
        with self.records.global_lock():
            info = self.standbys.claim(spec, image.digest, name, owner, self._discard)
            if info is None:
                info = self._create_record(spec, image, name, owner)
        try:
            with self._locked(info.id) as locked:
                self._restore_into(locked, ck, image)
        except BaseException:
            self._discard(info)
            raise
        return self.records.load(info.id) or info

    # ------------------------------------------------------------------ standbys

    def standby(
        self, spec: SandboxSpec, count: int = 1, *, owner: dict[str, Any] | None = None
    ) -> list[SandboxInfo]:
        image = self._image(spec)
        if spec.network != "none":
            raise SandboxError("standby sandboxes support --network none only")
        bundle.check_mounts(spec)
        ready, extra = self.standbys.survey(spec, image.digest, count, owner)
        for info in extra:
            with contextlib.suppress(SandboxNotFound):
                self.remove(info.id, force=True)
        while len(ready) < count:
            with self.records.global_lock():
                info = self._create_record(spec, image, f"standby-{secrets.token_hex(4)}",
                                           owner)  # fmt: skip
            try:
                with self._locked(info.id) as locked:
                    self._boot(locked, image, standby=True)
                    self.standbys.add(locked)
                    ready.append(locked)
            except BaseException:
                self._discard(info)
                raise
        return ready

    # Last: below it, `list` in the class's annotations would name this method.
    def list(self, *, all: bool = False) -> list[SandboxInfo]:
        out = []
        for info in self.records.all():
            with contextlib.suppress(SandboxNotFound), self._locked(
                info.id, exclusive=False
            ) as fresh:
                info = fresh
            if all or info.state == "running":
                out.append(info)
        return out
