"""The gVisor engine: sandboxes run by `runsc`, checkpointed and restored whole.

Each sandbox is an OCI bundle whose root is an image's rootfs under an in-memory overlay
(`--overlay2=root:memory`), so everything the sandbox writes lives in its memory and is
part of its checkpoint, and the image is never modified. Its first process is torpor-init
(see docs/sandbox-init.md); every process torpor starts is a child of it, because on the
pinned runsc build processes started by `runsc exec` do not survive checkpoint/restore.
The host talks to init through the host channel: init also listens on a Unix socket in
a per-sandbox host directory bind-mounted at /.torpor-ctl (`--host-uds=create`), and the
host runs the same static binary as a client (`init --connect SOCKET VERB ...`), a ~1 ms
process instead of a `runsc exec` (~50 ms of Go start-up). gVisor cannot checkpoint a
socket bound on a host file, so a checkpoint first asks init to `prepare` (close it), and
the host writes a token file that tells init when it was restored (or kept running) so it
listens again; docs/sandbox-init.md has the protocol. Sandboxes restored from checkpoints
made before the channel existed keep using `runsc exec /.torpor/init ...` as the client.

State lives under TORPOR_HOME (default /var/lib/torpor):
  runsc/                 runsc's own state (--root)
  names/NAME             the id of the sandbox called NAME (an index; sandbox.json rules)
  sandboxes/ID/          sandbox.json (what `ps`/`inspect` show), bundle/config.json,
                         console.log (the main process's output), lock,
                         ctl/ (the host channel: init.sock, token)
  standby/KEY/ID         unused standby sandboxes (created, not started) by what they fit
  checkpoints/           the checkpoint storage (until the snapshot store replaces it)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from torpor.home import torpor_home
from torpor.sandbox import archive, network, owners
from torpor.sandbox.checkpoints import (
    CheckpointNotFound,
    CheckpointStorage,
    LocalCheckpointStorage,
)
from torpor.sandbox.doctor import PINNED_RUNSC, RUNSC_INSTALL_HINT  # noqa: F401 (re-exported)
from torpor.sandbox.engine import (
    CheckpointError,
    CheckpointInfo,
    Engine,
    ExecResult,
    SandboxConflict,
    SandboxError,
    SandboxInfo,
    SandboxNotFound,
    SandboxSpec,
    check_name,
)
from torpor.sandbox.images import Image, ImageError, ImageStore
from torpor.sandbox.initbin import INIT_MOUNT, INIT_PATH, ensure_init_binary

PLATFORMS = ("systrap", "ptrace", "kvm")
_ID_RE = re.compile(r"[0-9a-f]{12}")
CHANNEL_MOUNT = "/.torpor-ctl"  # where a sandbox sees its host-channel directory
INIT_DIR = "/run/torpor"  # torpor-init's own state in the sandbox (process records, ...)

# Docker's default capability set: enough for package managers, chown, binding low ports.
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _read_pid(path: Path) -> int | None:
    """The pid written in path, or None while the file is missing or not written yet."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _last_line(text: str | bytes) -> str:
    """The line of a tool's stderr that says what went wrong: for a Go panic (runsc
    prints a stack trace) the first line, else the last one."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    if any(ln.startswith(("goroutine ", "panic(")) for ln in lines):
        return lines[0].rstrip(":")[:400]
    return lines[-1][:400]


def _check_mounts(spec: SandboxSpec) -> None:
    """Volumes and tmpfs mounts may not hide what the sandbox needs, nor each other."""
    reserved = ("/proc", "/dev", "/sys", INIT_MOUNT, CHANNEL_MOUNT, INIT_DIR)
    seen: set[str] = set()
    for target in [posixpath.normpath(m.target) for m in [*spec.tmpfs, *spec.volumes]]:
        if any(target == r or target.startswith(r + "/") for r in reserved):
            raise SandboxError(f"cannot mount over {target}: torpor uses it")
        if target in seen:
            raise SandboxError(f"{target} is mounted twice")
        seen.add(target)


CANCEL_GRACE = 5.0  # seconds a cancelled command has between SIGTERM and its client's end


def _communicate(proc: subprocess.Popen[bytes], stdin: bytes | None, timeout: float | None,
                 cancel: threading.Event | None) -> tuple[bytes, bytes]:  # fmt: skip
    """proc.communicate, watching `cancel`: once it is set the client is sent SIGTERM,
    which torpor-init's client forwards to the command's process group in the sandbox; if
    the command outlives CANCEL_GRACE, the client itself is killed (the command may then
    still run in the sandbox, which its caller snapshots and removes)."""
    if cancel is None:
        return proc.communicate(stdin, timeout=timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    signalled: float | None = None
    first = True
    while True:
        step = 0.1
        if deadline is not None:
            step = max(0.0, min(step, deadline - time.monotonic()))
        try:
            # communicate may be called again after a timeout; its input only the first time
            return proc.communicate(stdin if first else None, timeout=step)
        except subprocess.TimeoutExpired:
            first = False
            if deadline is not None and time.monotonic() >= deadline:
                raise
        if cancel.is_set() and signalled is None:
            signalled = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        elif signalled is not None and time.monotonic() - signalled > CANCEL_GRACE:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


class GVisorEngine(Engine):
    name = "gvisor"
    # New sandboxes keep torpor-init's state on a tmpfs (see _write_bundle); sandboxes
    # restored from older checkpoints keep theirs on the overlay. False makes sandboxes
    # as older torpor versions did (for compatibility tests).
    init_tmpfs = True
    # Cleanups running after stopping checkpoints (_after_stop_later), by sandbox id: one
    # registry per process, so that any engine object booting the sandbox waits for them.
    _cleanups: dict[str, threading.Thread] = {}
    _cleanups_lock = threading.Lock()

    def __init__(
        self,
        home: Path | None = None,
        *,
        platform: str | None = None,
        images: ImageStore | None = None,
        checkpoints: CheckpointStorage | None = None,
        runsc: str | None = None,
        host_channel: bool | None = None,
    ) -> None:
        """An engine over TORPOR_HOME (creates its state directories, runs nothing). It
        does not check runsc: `torpor.sandbox.open_engine` does (torpor's self-test, the
        doctor's gate), and is what the CLI and the runtime use."""
        self.home = home or torpor_home()
        # New sandboxes get the host channel unless told otherwise (TORPOR_HOST_CHANNEL=0):
        # the way back to one `runsc exec` per call, should a gVisor lack --host-uds.
        if host_channel is None:
            host_channel = os.environ.get("TORPOR_HOST_CHANNEL", "1") != "0"
        self.host_channel = host_channel
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
        self._version: str | None = None
        self.standby_misses: list[str] = []  # the last 20 standbys taken but not used
        self.self_test_cached = True  # False when the self-test ran for this engine

    # ------------------------------------------------------------------ plumbing

    @property
    def init_dir(self) -> Path:
        if self._init_dir is None:
            self._init_dir = ensure_init_binary(self.home)
        return self._init_dir

    @property
    def version(self) -> str:
        if self._version is None:
            out = subprocess.run([self.runsc, "--version"], capture_output=True, text=True)
            first = (out.stdout.splitlines() or ["unknown"])[0]
            self._version = first.removeprefix("runsc version ").strip()
        return self._version

    def _global_flags(self, info: SandboxInfo) -> list[str]:
        flags = [
            f"--root={self.runsc_root}",
            f"--platform={self.platform}",
            f"--network={'sandbox' if info.spec.network == 'sandbox' else 'none'}",
            "--overlay2=root:memory",
        ]
        if info.channel:
            # init binds its host-channel socket in a host directory (CHANNEL_MOUNT)
            flags.append("--host-uds=create")
        if info.spec.network == "sandbox":
            # TCP connections over the sandbox's interface (anything but loopback) cannot
            # be saved by this gVisor: without this flag one open or TIME_WAIT connection
            # makes the checkpoint fail *and kills the sandbox*. With it, they are reset.
            flags.append("--net-disconnect-ok")
        return flags

    def _runsc(
        self,
        info: SandboxInfo | None,
        *args: str,
        check: bool = True,
        timeout: float | None = 60,
        **kw: Any,
    ) -> subprocess.CompletedProcess[bytes]:
        flags = self._global_flags(info) if info else [f"--root={self.runsc_root}"]
        kw.setdefault("capture_output", True)
        kw.setdefault("stdin", subprocess.DEVNULL) if "input" not in kw else None
        try:
            proc = subprocess.run([self.runsc, *flags, *args], timeout=timeout, **kw)
        except subprocess.TimeoutExpired:
            raise SandboxError(f"runsc {args[0]} timed out after {timeout} s") from None
        if check and proc.returncode != 0:
            msg = _last_line(proc.stderr or b"") or f"exit status {proc.returncode}"
            raise SandboxError(f"runsc {args[0]} failed: {msg}")
        return proc

    def _runsc_state(self, sid: str) -> str:
        """'running', 'created', 'stopped', or 'missing'."""
        proc = self._runsc(None, "state", sid, check=False, timeout=20)
        if proc.returncode != 0:
            return "missing"
        try:
            return str(json.loads(proc.stdout)["status"])
        except (ValueError, KeyError):
            return "missing"

    def _dir(self, sid: str) -> Path:
        return self.sandboxes_dir / sid

    def _channel_dir(self, info: SandboxInfo) -> Path:
        return self._dir(info.id) / "ctl"

    def _channel_token(self, info: SandboxInfo, kind: str) -> None:
        """Tell a prepared init (see `prepare`) that it was restored or kept running.
        Written by rename, so a link planted in the directory by the sandbox is replaced,
        never followed."""
        d = self._channel_dir(info)
        d.mkdir(mode=0o700, exist_ok=True)
        tmp = d / f".token-{os.getpid()}-{threading.get_ident()}"
        tmp.write_text(f"{kind} {secrets.token_hex(8)}\n")
        os.replace(tmp, d / "token")

    def _save(self, info: SandboxInfo) -> None:
        d = self._dir(info.id)
        tmp = d / "sandbox.json.tmp"
        tmp.write_text(json.dumps(info.to_json(), indent=1))
        os.replace(tmp, d / "sandbox.json")

    def _load(self, sid: str) -> SandboxInfo | None:
        try:
            data = json.loads((self._dir(sid) / "sandbox.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        data["spec"] = SandboxSpec.from_json(data["spec"])
        return SandboxInfo(**data)

    def _all(self) -> list[SandboxInfo]:
        out = []
        for d in sorted(self.sandboxes_dir.iterdir()):
            info = self._load(d.name) if d.is_dir() else None
            if info is not None:
                out.append(info)
        return out

    def _index_name(self, info: SandboxInfo, old_name: str | None = None) -> None:
        """names/NAME holds the sandbox's id, so finding it by name is one file read.
        Written (and removed) under the global lock, by rename; only a hint: _find checks
        it against sandbox.json and falls back to reading every record."""
        d = self.home / "names"
        d.mkdir(exist_ok=True)
        if old_name is not None:
            self._unindex_name(old_name, info.id)
        tmp = d / f".{info.name}.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(info.id)
        os.replace(tmp, d / info.name)

    def _unindex_name(self, name: str, sid: str) -> None:
        path = self.home / "names" / name
        with contextlib.suppress(OSError):
            if path.read_text().strip() == sid:
                path.unlink()

    def _find(self, ref: str) -> SandboxInfo:
        # The common cases in one or two file reads: an exact id, or an indexed name.
        if _ID_RE.fullmatch(ref):
            info = self._load(ref)
            if info is not None:
                return info
        if "/" not in ref and not ref.startswith("."):
            try:
                sid = (self.home / "names" / ref).read_text().strip()
            except OSError:
                sid = ""
            info = self._load(sid) if _ID_RE.fullmatch(sid) else None
            if info is not None and info.name == ref:
                return info
        everything = self._all()
        for info in everything:
            if ref in (info.name, info.id):
                return info
        matches = [i for i in everything if len(ref) >= 4 and i.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        raise SandboxNotFound(f"no such sandbox: {ref}")

    @contextlib.contextmanager
    def _global_lock(self) -> Iterator[None]:
        with open(self.home / ".names.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def _locked(
        self, ref: str, *, exclusive: bool = True, reconcile: bool = True
    ) -> Iterator[SandboxInfo]:
        """Find a sandbox and hold its lock; yields its info, reconciled with runsc unless
        told not to (process and file operations find out from runsc exec itself)."""
        info = self._find(ref)
        lock_path = self._dir(info.id) / "lock"
        try:
            f = open(lock_path, "a")  # noqa: SIM115 - held for the with-block
        except FileNotFoundError:
            raise SandboxNotFound(f"no such sandbox: {ref}") from None
        with f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            fresh = self._load(info.id)
            if fresh is None:
                raise SandboxNotFound(f"no such sandbox: {ref}")
            yield self._reconcile(fresh) if reconcile else fresh

    def _reconcile(self, info: SandboxInfo) -> SandboxInfo:
        """Make the recorded state truthful: a sandbox killed from outside is 'exited'."""
        if info.state != "running":
            return info
        st = self._state(info)
        if st == "running":
            return info
        info.state = "exited"
        info.pid = None
        if info.exit_code is None:
            code = self._exit_status(info)
            info.exit_code = 137 if code is None else code
        self._after_stop(info)
        self._save(info)
        return info

    def _exit_status(self, info: SandboxInfo) -> int | None:
        """The main process's exit code, as written by the shell around runsc (see _boot);
        init makes it 128+N for a process killed by signal N."""
        path = self._dir(info.id) / "exit.code"
        for _ in range(100):
            try:
                return int(path.read_text().strip())
            except (OSError, ValueError):
                time.sleep(0.05)
        return None

    def _after_stop(self, info: SandboxInfo, *, later: bool = False) -> None:
        """Free what a stopped sandbox no longer needs (runsc state, network, proxies).
        `later`: run after the caller let go of the sandbox, which another process may
        have started again meanwhile; then it leaves the new run alone."""
        # Let the foreground runsc of this boot finish first, so that its exit.code can
        # never land after the next boot has started.
        if info.from_standby and info.state == "checkpointed":
            self._end_waiter(info)
        self._wait_exit_code(info)
        if later:
            now = self._load(info.id)
            if now is None or now.state != info.state or now.started != info.started:
                return  # removed or booted again: its boot deleted what was left
        self._runsc(None, "delete", "-force", info.id, check=False, timeout=30)
        if info.spec.network == "sandbox":
            network.teardown(self.home, info.id)

    def _wait_exit_code(self, info: SandboxInfo, timeout: float = 5.0) -> None:
        """Wait (at most timeout) for the foreground runsc of info's boot to end, which
        its supervisor marks by writing exit.code."""
        codefile = self._dir(info.id) / "exit.code"
        deadline = time.monotonic() + timeout
        delay = 0.002
        while not codefile.exists() and self._dir(info.id).exists():
            if time.monotonic() > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.02)

    def _end_waiter(self, info: SandboxInfo) -> None:
        """After a checkpoint stopped a sandbox restored into a standby, end the foreground
        `runsc restore` that waits for it. It did not create the sandbox, so runsc polls
        every 100 ms for its end and has no exit code to learn: killing its process group
        (its supervisor and it, nothing else) saves that wait, and exit.code is written
        here instead (137), since neither of them is left to write it."""
        d = self._dir(info.id)
        try:
            pid = int((d / "supervise.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if b"supervise" not in cmdline or str(d / "exit.code").encode() not in cmdline:
            return  # not ours any more (it ended and the pid was reused)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            (d / "exit.code").write_text("137\n")

    def _after_stop_later(self, info: SandboxInfo) -> None:
        """_after_stop off the caller's path: after a checkpoint that stopped the sandbox,
        the snapshot is safe and what is left (waiting for runsc to exit, `runsc delete`,
        30-100 ms here) only frees resources. Whatever boots or discards the sandbox in
        this process waits for it first (_settle); the thread is not a daemon, so a CLI
        process finishes it before it exits."""
        t = threading.Thread(
            target=self._after_stop, args=(info,), kwargs={"later": True},
            name=f"torpor-cleanup-{info.id}",
        )  # fmt: skip
        with self._cleanups_lock:
            self._cleanups[info.id] = t
        t.start()

    def _settle(self, sid: str) -> None:
        with self._cleanups_lock:
            t = self._cleanups.pop(sid, None)
        if t is not None:
            t.join()

    # ------------------------------------------------------------------ bundles

    def _image(self, spec: SandboxSpec) -> Image:
        try:
            return self.images.get(spec.image)
        except ImageError as e:
            raise SandboxError(str(e)) from None

    def _user(self, image: Image, user: str) -> tuple[int, int]:
        if not user:
            return 0, 0
        name, _, group = user.partition(":")

        def lookup(db: str, key: str) -> int:
            if key.isdigit():
                return int(key)
            try:
                for line in (image.rootfs / "etc" / db).read_text().splitlines():
                    fields = line.split(":")
                    if fields and fields[0] == key:
                        return int(fields[2])
            except (OSError, IndexError, ValueError):
                pass
            raise SandboxError(f"unknown {'user' if db == 'passwd' else 'group'} {key!r} in image")

        uid = lookup("passwd", name)
        if group:
            return uid, lookup("group", group)
        if name.isdigit():
            return uid, uid
        for line in (image.rootfs / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return uid, int(fields[3])
        return uid, uid

    def _write_bundle(self, info: SandboxInfo, image: Image) -> Path:
        spec = info.spec
        bundle = self._dir(info.id) / "bundle"
        bundle.mkdir(exist_ok=True)
        cmd = list(spec.cmd) or list(image.cmd)
        env = dict(e.split("=", 1) for e in image.env if "=" in e)
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env["HOSTNAME"] = info.name
        for e in spec.env:
            k, _, v = e.partition("=")
            env[k] = v
        # init always runs as root (it needs to set up /run/torpor and switch users); the
        # sandbox's user applies to the main process and is the default for exec.
        uid, gid = self._user(image, spec.user or image.user)
        mounts: list[dict[str, Any]] = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
            {
                "destination": INIT_MOUNT,
                "type": "bind",
                "source": str(self.init_dir),
                "options": ["rbind", "ro"],
            },
        ]
        if info.channel:
            ctl = self._channel_dir(info)
            ctl.mkdir(mode=0o700, exist_ok=True)
            mounts.append(
                {
                    "destination": CHANNEL_MOUNT,
                    "type": "bind",
                    "source": str(ctl),
                    "options": ["rbind", "rw"],
                }
            )
        if info.init_tmpfs:
            # torpor-init's process records live on a plain tmpfs, not on the overlay: this
            # gVisor's overlay leaves a whiteout (a device file in the sandbox's memory,
            # saved and restored with every checkpoint) for every name deleted or renamed
            # away, so one per exec would pile up for the sandbox's whole life.
            mounts.append({"destination": INIT_DIR, "type": "tmpfs", "source": "tmpfs",
                           "options": ["mode=755"]})  # fmt: skip
        for t in spec.tmpfs:
            mounts.append({"destination": t.target, "type": "tmpfs", "source": "tmpfs",
                           "options": t.options()})  # fmt: skip
        for v in spec.volumes:
            mounts.append(
                {
                    "destination": v.target,
                    "type": "bind",
                    "source": v.host,
                    "options": ["rbind", "ro" if v.readonly else "rw"],
                }
            )
        namespaces: list[dict[str, str]] = [
            {"type": t} for t in ("pid", "ipc", "uts", "mount")
        ]
        if spec.network == "sandbox":
            namespaces.append({"type": "network", "path": str(network.netns_path(info.id))})
        else:
            namespaces.append({"type": "network"})
        resources: dict[str, Any] = {}
        if spec.memory:
            resources["memory"] = {"limit": spec.memory}
        if spec.cpus:
            resources["cpu"] = {"quota": int(spec.cpus * 100_000), "period": 100_000}
        if spec.pids:
            resources["pids"] = {"limit": spec.pids}
        config = {
            "ociVersion": "1.0.2",
            "process": {
                "args": [
                    INIT_PATH, "init", *(["-u", f"{uid}:{gid}"] if uid or gid else []),
                    *(["-H", CHANNEL_MOUNT] if info.channel else []),
                    *(["--", *cmd] if cmd else []),
                ],
                "cwd": spec.workdir or image.workdir or "/",
                "env": [f"{k}={v}" for k, v in env.items()],
                "user": {"uid": 0, "gid": 0},
                "capabilities": {
                    k: DEFAULT_CAPS for k in ("bounding", "effective", "permitted")
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}],
            },
            "root": {"path": str(image.rootfs), "readonly": False},
            "hostname": info.name,
            "mounts": mounts,
            "linux": {
                "namespaces": namespaces,
                "resources": resources,
                "cgroupsPath": f"/torpor/{info.id}",
            },
        }
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        return bundle

    # ------------------------------------------------------------------ lifecycle

    def _has_runsc_state(self, sid: str) -> bool:
        # A hint only (runsc's file layout), used to skip a needless `runsc delete`.
        return any(self.runsc_root.glob(f"{sid}_sandbox:*"))

    def _status_hint(self, sid: str) -> str | None:
        """The container status runsc last recorded in its state file, read directly:
        a file read instead of a `runsc state` process. runsc does not update it when a
        sandbox dies from outside, so alone it is only a hint (see `_state`). Each torpor
        sandbox is a one-container runsc sandbox of the same id, hence the file's name
        (read directly: `ps` asks this of every sandbox)."""
        try:
            return str(json.loads((self.runsc_root / f"{sid}_sandbox:{sid}.state")
                                  .read_bytes()).get("status"))  # fmt: skip
        except (OSError, ValueError, AttributeError):
            return None

    def _sandbox_alive(self, info: SandboxInfo) -> bool:
        """info's sandbox process lives: not a zombie, and still runsc's sandbox of this
        bundle (its command line names it), so a reused pid is not taken for it."""
        return self._why_dead(info) is None

    def _why_dead(self, info: SandboxInfo) -> str | None:
        """None if info's sandbox process lives (see `_sandbox_alive`), else why not."""
        if not info.pid:
            return "no sandbox pid recorded"
        try:
            proc_stat = Path(f"/proc/{info.pid}/stat").read_text()
            cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes()
        except OSError:
            return f"its sandbox process is gone (pid {info.pid})"
        bundle = f"--bundle={self._dir(info.id) / 'bundle'}".encode()
        if bundle not in cmdline.split(b"\0"):
            return f"pid {info.pid} is not its sandbox ({cmdline[:80]!r})"
        state = proc_stat.rsplit(")", 1)[-1].split()[0]
        if state in ("Z", "X"):
            return f"its sandbox process is gone (pid {info.pid}, a zombie)"
        return None

    def _state(self, info: SandboxInfo) -> str:
        """runsc's status of info's container, as `_runsc_state`, but without starting a
        runsc process (a Go program: ~10 ms of CPU each) when its state file says running
        or created and its sandbox process is alive; any doubt asks runsc."""
        hint = self._status_hint(info.id)
        if hint in ("running", "created") and self._sandbox_alive(info):
            return hint
        return self._runsc_state(info.id)

    def _boot(
        self,
        info: SandboxInfo,
        image: Image,
        *,
        image_path: Path | None = None,
        standby: bool = False,
    ) -> None:
        """Start (or restore) the runsc container for info and wait until init answers.
        With standby, only create it (`runsc create`): a later restore loads into it."""
        self._settle(info.id)
        adopt = info.state == "standby"  # created ahead by standby(): runsc create is done
        if adopt:
            self._unlist_standby(info)
            dead = self._standby_dead(info) if image_path is not None else None
            adopt = image_path is not None and dead is None
            if dead:
                self._note_standby_miss(info, dead)
        info.from_standby = False
        if adopt:
            if info.channel:
                (self._channel_dir(info) / "init.sock").unlink(missing_ok=True)
                self._channel_token(info, "restored")
            try:
                state = self._launch(info, ["restore", f"--image-path={image_path}", info.id],
                                     what="restore")  # fmt: skip
                info.from_standby = True
            except SandboxError as e:
                adopt = False  # the standby was unfit or broken: restore the usual way
                self._note_standby_miss(info, str(e))
        if not adopt:
            if info.started is not None:  # a cleanup left by another process: not this run
                info.started = None
                self._save(info)
            if self._has_runsc_state(info.id):
                self._runsc(None, "delete", "-force", info.id, check=False, timeout=30)
            if info.spec.network == "sandbox":
                info.address = network.setup(self.home, info.id)
            if image_path is None:  # a restore keeps its checkpoint's choices
                info.channel = self.host_channel
                info.init_tmpfs = self.init_tmpfs
            if info.channel:
                (self._channel_dir(info) / "init.sock").unlink(missing_ok=True)
                if image_path is not None:  # the restored init sees a new token: restored
                    self._channel_token(info, "restored")
            bundle = self._write_bundle(info, image)
            pidfile = self._dir(info.id) / "runsc.pid"
            pidfile.unlink(missing_ok=True)
            if standby:
                args = ["create", f"--bundle={bundle}", f"--pid-file={pidfile}", info.id]
            elif image_path is not None:
                args = ["restore", f"--bundle={bundle}", f"--image-path={image_path}",
                        f"--pid-file={pidfile}", info.id]  # fmt: skip
            else:
                args = ["run", f"--bundle={bundle}", f"--pid-file={pidfile}", info.id]
            what = "create" if standby else "restore" if image_path else "start"
            state = self._launch(info, args, what=what)
        info.state = "standby" if standby else "running"
        info.started = None if standby else _now()
        info.exit_code = None
        info.last_checkpoint = None
        info.pid = _read_pid(self._dir(info.id) / "runsc.pid")
        self._save(info)
        if standby:
            return
        if state != "running":
            self._reconcile(info)
            return
        if image_path is not None:
            if not info.channel:  # without the channel the first call announces the restore
                info.restore_token = secrets.token_hex(8)
                self._save(info)
        else:
            self._wait_ready(info, deadline=time.monotonic() + 30)
        if info.spec.network == "sandbox" and info.spec.ports:
            network.start_proxy(self.home, info.id, info.spec.ports)

    def _launch(self, info: SandboxInfo, args: list[str], *, what: str) -> str:
        """Run `runsc ARGS` for info's container under torpor-init's `supervise` role and
        wait until runsc records it as running (created, for `runsc create`). Returns
        runsc's state then; on failure deletes the container and raises SandboxError."""
        d = self._dir(info.id)
        create = args[0] == "create"
        # runsc forgets a container's exit code once it stops; only a foreground
        # `runsc run|restore` learns it. So runsc runs in the foreground for the sandbox's
        # whole life, detached from us, supervised by torpor-init's host-side role, which
        # writes its exit code to exit.code and reaps what runsc leaves behind (see
        # `supervise` in torpor-init.c). The container's console goes to console.log.
        # `runsc create` returns at once; its supervisor stays to reap the sandbox's
        # processes (their parent), and the later `runsc restore` gets its own.
        codefile = d / ("standby.code" if create else "exit.code")
        errfile, pidfile = d / "runsc.err", d / "runsc.pid"
        codefile.unlink(missing_ok=True)
        netns: list[str] = []
        if info.spec.network == "sandbox":
            netns = network.runsc_prefix(info.id)
        t0 = time.monotonic()
        with open(d / "console.log", "ab") as log, open(errfile, "wb") as errlog:
            proc = subprocess.Popen(
                [str(self.init_dir / "init"), "supervise", str(codefile), "--",
                 *netns, self.runsc, *self._global_flags(info), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=errlog,
                start_new_session=True,
            )  # fmt: skip
        if not create:
            (d / "supervise.pid").write_text(str(proc.pid))
        # Wait until runsc records the container as running (a restore writes the pid file
        # before it has loaded the checkpoint, and may still fail). Polling runsc's state
        # file costs a file read; asking `runsc state` would start a Go process each time.
        want = "created" if create else "running"
        delay = 0.001
        # runsc creates the pid file before it writes the number (Go's os.WriteFile), so
        # only a number read back counts: an empty file once left a standby without a pid.
        while not (_read_pid(pidfile) is not None and self._status_hint(info.id) == want):
            if codefile.exists() and not (create and self._status_hint(info.id) == want):
                state = self._runsc_state(info.id)
                err = [
                    ln for ln in errfile.read_text(errors="replace").splitlines()
                    if ln.strip() and not ln.startswith("torpor-init:")
                ]  # fmt: skip
                if not err and not create:
                    return state  # it ran, and its main process has already exited
                self._runsc(None, "delete", "-force", info.id, check=False, timeout=30)
                if info.spec.network == "sandbox":
                    network.teardown(self.home, info.id)
                reason = err[-1] if err else "runsc failed"
                raise SandboxError(f"cannot {what} sandbox {info.name}: {reason}")
            if time.monotonic() - t0 > 120:
                self._runsc(None, "delete", "-force", info.id, check=False, timeout=30)
                raise SandboxError(f"sandbox {info.name} did not {what} within 120 s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.004)
        return want

    def _wait_ready(self, info: SandboxInfo, deadline: float) -> None:
        delay = 0.005
        while True:
            if info.channel:
                proc = subprocess.run(
                    self._init_cmd(info, ["ping"]), capture_output=True, timeout=20
                )
            else:
                proc = self._runsc(
                    info, "exec", info.id, INIT_PATH, "ping", check=False, timeout=20
                )
            if proc.returncode == 0:
                return
            if self._runsc_state(info.id) != "running":
                return  # the main process already finished; `ps -a` shows it exited
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"sandbox {info.name} did not become ready: {_last_line(proc.stderr)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def run(
        self, spec: SandboxSpec, *, name: str | None = None, owner: dict[str, Any] | None = None
    ) -> SandboxInfo:
        image = self._image(spec)
        if spec.network not in ("none", "sandbox"):
            raise SandboxError(f"unknown network {spec.network!r}: use none or sandbox")
        if spec.ports and spec.network != "sandbox":
            raise SandboxError("publishing ports (-p) needs --network sandbox")
        _check_mounts(spec)
        with self._global_lock():
            info = self._create_record(spec, image, name, owner)
        try:
            with self._locked(info.id):
                self._boot(info, image)
        except BaseException:
            self._discard(info)
            raise
        return self._load(info.id) or info

    def _check_free_name(self, name: str) -> None:
        check_name(name)
        if any(i.name == name for i in self._all()):
            raise SandboxConflict(f"the name {name} is already in use by another sandbox")

    def _owner(self, owner: dict[str, Any] | None) -> dict[str, Any]:
        """The owner to record: the one given, else this process of kind `owner_kind`."""
        return owner if owner is not None else owners.this_process(self.owner_kind)

    def _create_record(self, spec: SandboxSpec, image: Image, name: str | None,
                       owner: dict[str, Any] | None = None) -> SandboxInfo:  # fmt: skip
        """Reserve a name and an id, recording the owner at once, so that no reaper ever
        sees the record without one (caller holds the global lock)."""
        if name is not None:
            self._check_free_name(name)
        sid = secrets.token_hex(6)
        name = name or f"sb-{sid[:6]}"
        info = SandboxInfo(
            id=sid,
            name=name,
            state="created",
            spec=spec,
            image_digest=image.digest,
            created=_now(),
            owner=self._owner(owner),
        )
        self._dir(sid).mkdir(parents=True)
        self._save(info)
        self._index_name(info)
        return info

    def _discard(self, info: SandboxInfo) -> None:
        self._settle(info.id)
        if info.state == "standby":
            self._unlist_standby(info)
        if self._has_runsc_state(info.id):
            self._runsc(None, "delete", "-force", info.id, check=False, timeout=30)
        if info.spec.network == "sandbox":
            network.teardown(self.home, info.id)
        shutil.rmtree(self._dir(info.id), ignore_errors=True)
        self._unindex_name(info.name, info.id)

    def stop(self, sandbox: str, *, timeout: float = 10.0) -> SandboxInfo:
        with self._locked(sandbox) as info:
            if info.state != "running":
                return info
            self._kill(info, timeout)
            return info

    def _kill(self, info: SandboxInfo, timeout: float) -> None:
        network.stop_proxy(self.home, info.id)
        self._runsc(None, "kill", info.id, "TERM", check=False, timeout=20)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._state(info) == "running":
            time.sleep(0.05)
        if self._state(info) == "running":
            self._runsc(None, "kill", "--all", info.id, "KILL", check=False, timeout=20)
            for _ in range(100):
                if self._state(info) != "running":
                    break
                time.sleep(0.05)
        info.exit_code = self._exit_status(info)
        info.state = "exited"
        info.pid = None
        self._after_stop(info)
        self._save(info)

    def start(self, sandbox: str, *, checkpoint: str | None = None) -> SandboxInfo:
        with self._locked(sandbox) as info:
            if info.state == "running":
                raise SandboxConflict(f"sandbox {info.name} is already running")
            image = self._image(info.spec)
            if checkpoint is None:
                info.restored_from = None
                self._boot(info, image)
            else:
                ck = self._checkpoint_info(checkpoint, sandbox=info)
                self._restore_into(info, ck, image)
            return self._load(info.id) or info

    def remove(self, sandbox: str, *, force: bool = False) -> None:
        if force:
            self._kill_at_once(sandbox)
        with self._locked(sandbox) as info:
            self._remove_locked(info, force=force)

    def _kill_at_once(self, sandbox: str) -> None:
        """`rm -f` kills before it takes the sandbox's lock: a long command running in it
        holds the lock shared (exec) and would make the removal wait until it ends. The
        kill ends that command's client, which lets go; `_remove_locked` does the rest."""
        with contextlib.suppress(SandboxNotFound):
            info = self._find(sandbox)
            if info.state == "running" and info.pid and self._sandbox_alive(info):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info.pid, signal.SIGKILL)

    def reap(self, sandbox: str) -> SandboxInfo | None:
        # Under the global lock too: claiming a standby and renaming a pooled sandbox (the
        # ways a live process takes over a sandbox) change its owner under that lock.
        with self._global_lock(), self._locked(sandbox) as info:
            if not owners.is_orphan(info.owner):
                return None
            self._remove_locked(info, force=True)
            return info

    def _remove_locked(self, info: SandboxInfo, *, force: bool) -> None:
        """`remove`, for a sandbox whose lock the caller holds."""
        if info.state == "running":
            if not force:
                raise SandboxConflict(f"sandbox {info.name} is running: stop it first or use -f")
            # Docker's rm -f: SIGKILL at once. Killing the sandbox process ends it, its
            # gofer and the foreground runsc; `_discard` then deletes what runsc kept.
            # (A `runsc delete -force` of a running sandbox waits 5 s for it to stop;
            # runsc kill, polling runsc state and delete took four runsc processes.)
            if self._sandbox_alive(info) and info.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info.pid, signal.SIGKILL)
            else:
                self._runsc(None, "kill", "--all", info.id, "KILL", check=False, timeout=20)
            if info.from_standby:
                self._end_waiter(info)
            self._wait_exit_code(info)
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
        with self._global_lock(), self._locked(sandbox, reconcile=False) as info:
            if any(i.name == new_name for i in self._all()):
                raise SandboxConflict(f"the name {new_name} is already in use by another sandbox")
            old = info.name
            info.name = new_name
            if owner is not None:
                info.owner = owner
            self._save(info)
            self._index_name(info, old_name=old)
            return info

    def list(self, *, all: bool = False) -> list[SandboxInfo]:
        out = []
        for info in self._all():
            with contextlib.suppress(SandboxNotFound), self._locked(
                info.id, exclusive=False
            ) as fresh:
                info = fresh
            if all or info.state == "running":
                out.append(info)
        return out

    # ------------------------------------------------------------------ processes

    def _require_running(self, info: SandboxInfo) -> None:
        if info.state != "running":
            raise SandboxConflict(f"sandbox {info.name} is not running (state: {info.state})")

    def _client_args(
        self,
        argv: Sequence[str],
        *,
        interactive: bool,
        detach: bool,
        env: Sequence[str],
        workdir: str | None,
        user: str | None,
        image: Image | None,
        timeout: float | None = None,
    ) -> list[str]:
        if not argv:
            raise SandboxError("no command given")
        args = ["exec"]
        if timeout is not None:
            args += ["-t", f"{timeout:g}"]
        if detach:
            args.append("-d")
        if interactive:
            args.append("-i")
        if workdir:
            args += ["-w", workdir]
        for e in env:
            if "=" not in e:
                raise SandboxError(f"invalid environment entry {e!r}: expected KEY=VALUE")
            args += ["-e", e]
        if user:
            uid, gid = self._user(image, user) if image else (0, 0)
            args += ["-u", f"{uid}:{gid}"]
        return [*args, "--", *argv]

    def _init_cmd(self, info: SandboxInfo, args: Sequence[str]) -> list[str]:
        """The command line that runs torpor-init's client side in the sandbox.

        After a restore, init must be told (restore generation, hooks) before anything
        else runs. Rather than pay a `runsc exec` for that alone, the first call after
        a restore carries the announcement (`--restored TOKEN`); init acts on each token
        once, so concurrent first calls are harmless.

        With the host channel, the client runs on the host (init itself notices a restore
        through the channel's token file)."""
        if info.channel:
            sock = self._channel_dir(info) / "init.sock"
            alive = ["--alive", str(info.pid)] if info.pid else []
            return [str(self.init_dir / "init"), "--connect", str(sock), *alive, *args]
        announce: list[str] = []
        if info.restore_token:
            announce = ["--restored", info.restore_token]
            info.restore_token = None
            fresh = self._load(info.id)
            if fresh is not None and fresh.restore_token:
                fresh.restore_token = None
                self._save(fresh)
        return [
            self.runsc, *self._global_flags(info), "exec", info.id, INIT_PATH, *announce, *args,
        ]  # fmt: skip

    def _client(
        self,
        info: SandboxInfo,
        args: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
        retry: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run torpor-init's client side (on the host through the channel, or inside the
        sandbox with `runsc exec`)."""
        kw: dict[str, Any] = {"input": input} if input is not None else {}
        try:
            proc = subprocess.run(
                self._init_cmd(info, args),
                capture_output=True,
                timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
                **kw,
            )
        except subprocess.TimeoutExpired:
            raise SandboxError(f"{args[0]} in sandbox {info.name} timed out") from None
        if retry and self._unstuck(info, proc.returncode, proc.stderr):
            return self._client(info, args, input=input, timeout=timeout, check=check,
                                retry=False)  # fmt: skip
        if check and proc.returncode != 0:
            self._raise_if_gone(info)
            msg = _last_line(proc.stderr) or f"exit status {proc.returncode}"
            raise SandboxError(f"{args[0]} in sandbox {info.name} failed: {msg}")
        return proc

    def _unstuck(self, info: SandboxInfo, code: int, err: bytes) -> bool:
        """After a client could not reach init through the host channel: if the sandbox
        runs, init was left prepared by a checkpoint that never happened (its caller died
        in between). Tell it to listen again; True means: try once more."""
        if not (info.channel and code == 125 and b"cannot connect to init" in err):
            return False
        if self._runsc_state(info.id) != "running":
            return False
        self._channel_token(info, "resumed")
        return True

    @staticmethod
    def _maybe_gone(code: int, err: bytes) -> bool:
        """After a failed command: could the sandbox itself have died? Not when init's
        client reported the command's own failure; yes when it exited 125 (it could not
        reach init, or lost it) or when runsc (not init) complained."""
        return code != 0 and (code == 125 or not err.startswith(b"torpor-init"))

    def _raise_if_gone(self, info: SandboxInfo) -> None:
        if self._runsc_state(info.id) != "running":
            self._reconcile(info)
            raise SandboxConflict(f"sandbox {info.name} is not running (it exited)")

    def exec(
        self,
        sandbox: str,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> ExecResult:
        with self._locked(sandbox, exclusive=False, reconcile=False) as info:
            self._require_running(info)
            user = user or info.spec.user or None
            image = self._image(info.spec) if user else None
            args = self._client_args(
                argv, interactive=stdin is not None, detach=False, env=env,
                workdir=workdir, user=user, image=image, timeout=timeout,
            )  # fmt: skip
            for _attempt in range(2):
                proc = subprocess.Popen(
                    self._init_cmd(info, args),
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                # The timeout is enforced by init's client (`exec -t`: SIGTERM, then
                # SIGKILL 5 s later, exit 124). The host only gives up if the client
                # itself stops answering, well after that.
                try:
                    out, err = _communicate(
                        proc, stdin, None if timeout is None else timeout + 30, cancel
                    )
                except subprocess.TimeoutExpired:
                    proc.kill()
                    for pipe in (proc.stdout, proc.stderr):
                        if pipe is not None:
                            pipe.close()
                    proc.wait()
                    raise SandboxError(
                        f"command in sandbox {info.name} did not stop after its {timeout} s "
                        "timeout; the client was abandoned"
                    ) from None
                if not self._unstuck(info, proc.returncode, err):
                    break
            if timeout is not None and proc.returncode == 124 and b"timed out after" in err:
                raise SandboxError(f"command timed out after {timeout} s in sandbox {info.name}")
            if self._maybe_gone(proc.returncode, err):
                self._raise_if_gone(info)
            return ExecResult(proc.returncode, out, err)

    def exec_stream(
        self,
        sandbox: str,
        argv: Sequence[str],
        *,
        interactive: bool = False,
        detach: bool = False,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
    ) -> int:
        with self._locked(sandbox, exclusive=False, reconcile=False) as info:
            self._require_running(info)
            user = user or info.spec.user or None
            image = self._image(info.spec) if user else None
            args = self._client_args(
                argv, interactive=interactive, detach=detach, env=env,
                workdir=workdir, user=user, image=image,
            )  # fmt: skip
            # Output goes through pipes that we copy, never our own fds handed to runsc:
            # gVisor writes a donated regular file at its own offset, so with stdout
            # redirected to a file it would overwrite what is already there.
            proc = subprocess.Popen(
                self._init_cmd(info, args),
                stdin=None if interactive else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert proc.stdout is not None and proc.stderr is not None
            err_head = bytearray()

            def pump(src: BinaryIO, dst: BinaryIO, head: bytearray | None) -> None:
                while chunk := src.read1(1 << 16):  # type: ignore[attr-defined]
                    if head is not None and len(head) < 64:
                        head += chunk[:64]
                    dst.write(chunk)
                    dst.flush()

            t = threading.Thread(
                target=pump, args=(proc.stderr, sys.stderr.buffer, err_head), daemon=True
            )
            t.start()
            pump(proc.stdout, sys.stdout.buffer, None)
            t.join()
            code = proc.wait()
            if self._maybe_gone(code, bytes(err_head)):
                self._raise_if_gone(info)
            return code

    def spawn(
        self,
        sandbox: str,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
    ) -> int:
        """Start a background process (a child of init, so it survives checkpoints);
        returns its init process id (see `processes`)."""
        with self._locked(sandbox, exclusive=False, reconcile=False) as info:
            self._require_running(info)
            user = user or info.spec.user or None
            image = self._image(info.spec) if user else None
            args = self._client_args(
                argv, interactive=False, detach=True, env=env,
                workdir=workdir, user=user, image=image,
            )  # fmt: skip
            proc = self._client(info, args, timeout=60)
            try:
                return int(proc.stdout.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise SandboxError(
                    f"starting {argv[0]} in {info.name} failed: {_last_line(proc.stderr)}"
                ) from None

    def processes(self, sandbox: str) -> list[dict[str, Any]]:
        """Processes started through init: id, pid, state, exit code, argv."""
        with self._locked(sandbox, exclusive=False, reconcile=False) as info:
            self._require_running(info)
            out = self._client(info, ["ps"], timeout=30).stdout.decode(errors="replace")
        rows = []
        for line in out.splitlines():
            parts = line.split(None, 4)
            if len(parts) < 4 or not parts[0].isdigit():
                continue
            rows.append(
                {
                    "id": int(parts[0]),
                    "pid": int(parts[1]) if parts[1].isdigit() else None,
                    "state": parts[2],
                    "exit": None if parts[3] == "-" else int(parts[3]),
                    "argv": parts[4] if len(parts) > 4 else "",
                }
            )
        return rows

    def logs(self, sandbox: str, *, follow: bool = False) -> int:
        """Copy the main process's output to stdout; with follow, until the sandbox stops."""
        info = self.inspect(sandbox)
        path = self._dir(info.id) / "console.log"
        out = sys.stdout.buffer
        with open(path, "rb") if path.exists() else open(os.devnull, "rb") as f:
            while True:
                chunk = f.read(1 << 16)
                if chunk:
                    out.write(chunk)
                    out.flush()
                    continue
                if not follow:
                    return 0
                fresh = self._load(info.id)
                if fresh is None or self._reconcile(fresh).state != "running":
                    rest = f.read()
                    out.write(rest)
                    out.flush()
                    return 0
                time.sleep(0.1)

    def console_path(self, sandbox: str) -> Path:
        return self._dir(self._find(sandbox).id) / "console.log"

    def wait(self, sandbox: str) -> int:
        """Block until the sandbox's main process exits; returns its exit code."""
        sid = self._find(sandbox).id
        while True:
            with self._locked(sid, exclusive=False) as info:
                if info.state != "running":
                    return info.exit_code if info.exit_code is not None else 0
            time.sleep(0.1)

    # ------------------------------------------------------------------ files

    def copy_in(self, sandbox: str, src: Path, dest: str) -> None:
        """Copy a host file or directory into the sandbox, with `docker cp` semantics."""
        if not src.exists() and not src.is_symlink():
            raise SandboxError(f"{src}: no such file or directory")
        with self._locked(sandbox, exclusive=False, reconcile=False) as info:
            self._require_running(info)
            kind = self._stat(info, dest)
            if kind == "d":
                parent, arcname = dest, src.name or "root"
            else:
                p = PurePosixPath(dest)
                parent, arcname = str(p.parent), p.name
                if kind is None and self._stat(info, parent) != "d":
                    raise SandboxError(f"{parent}: no such directory in sandbox {info.name}")
            self._put(info, parent, lambda f: archive.write_archive(src, f, arcname))

    def write_file(
        self, sandbox: str, path: str, data: bytes | BinaryIO, mode: int = 0o644
    ) -> None:
        payload = data if isinstance(data, bytes) else data.read()
        p = PurePosixPath(path)
        if not p.is_absolute():
            raise SandboxError(f"path must be absolute: {path}")
        with self._locked(sandbox, exclusive=False, reconcile=False) as info:
            self._require_running(info)
            self._put(
                info, str(p.parent), lambda f: archive.write_bytes_archive(payload, f, p.name, mode)
            )

    def _put(self, info: SandboxInfo, parent: str, writer: Any) -> None:
        cmd = self._init_cmd(info, ["put", parent])
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stderr is not None
        try:
            writer(proc.stdin)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read()
        if proc.wait() != 0:
            self._raise_if_gone(info)
            raise SandboxError(f"copy into {info.name}:{parent} failed: {_last_line(err)}")

    def _stat(self, info: SandboxInfo, path: str) -> str | None:
        proc = self._client(info, ["stat", path], check=False, timeout=30)
        if proc.returncode != 0:
            return None
        return proc.stdout.decode().strip()[:1] or None

    def _get(self, info: SandboxInfo, path: str) -> subprocess.Popen[bytes]:
        cmd = self._init_cmd(info, ["get", path])
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def _finish_get(self, info: SandboxInfo, proc: subprocess.Popen[bytes], path: str) -> None:
        assert proc.stderr is not None and proc.stdout is not None
        # Stop reading first: if we gave up half way (not a regular file, a bad entry), the
        # client must not stay blocked on a full pipe while we wait for it.
        proc.stdout.close()
        err = proc.stderr.read()
        if proc.wait() != 0:
            self._raise_if_gone(info)
            raise SandboxError(f"{info.name}:{path}: {_last_line(err) or 'cannot read'}")

    def _abandon_get(
        self, info: SandboxInfo, proc: subprocess.Popen[bytes], path: str, why: SandboxError
    ) -> None:
        """We stopped reading a `get` stream half way: end the client, then report why
        (or that the sandbox is gone, if that is what cut the stream short)."""
        try:
            self._finish_get(info, proc, path)
        except SandboxConflict:
            raise
        except SandboxError:
            pass
        raise SandboxError(f"{info.name}:{path}: {why}") from None

    def copy_out(self, sandbox: str, src: str, dest: Path) -> None:
        """Copy a sandbox file or directory to the host, with `docker cp` semantics."""
        with self._locked(sandbox, exclusive=False, reconcile=False) as info:
            self._require_running(info)
            if dest.is_dir():
                parent, rename = dest, None
            else:
                if not dest.parent.is_dir():
                    raise SandboxError(f"{dest.parent}: no such directory")
                parent, rename = dest.parent, dest.name
            proc = self._get(info, src)
            assert proc.stdout is not None
            try:
                archive.extract_archive(proc.stdout, parent, rename_top=rename)
            except SandboxError as e:
                self._abandon_get(info, proc, src, e)
            self._finish_get(info, proc, src)

    def read_file(self, sandbox: str, path: str) -> bytes:
        with self._locked(sandbox, exclusive=False, reconcile=False) as info:
            self._require_running(info)
            proc = self._get(info, path)
            assert proc.stdout is not None
            try:
                data = archive.read_single_file(proc.stdout)
            except SandboxError as e:
                self._abandon_get(info, proc, path, e)
            self._finish_get(info, proc, path)
            return data

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(
        self, sandbox: str, checkpoint: str | None = None, *, leave_running: bool = False
    ) -> CheckpointInfo:
        if checkpoint is not None:
            check_name(checkpoint)
        with self._locked(sandbox, reconcile=False) as info:
            if info.state != "running":
                raise SandboxConflict(
                    f"cannot checkpoint sandbox {info.name}: it is not running "
                    f"(state: {info.state})"
                )
            ck_name = checkpoint or datetime.now(UTC).strftime("ck-%Y%m%d-%H%M%S")
            # The id follows from the sandbox and the name, so checking that the name is
            # free is one lookup, whatever the number of checkpoints.
            ck_id = f"{info.name}-{ck_name}-{info.id[:6]}"
            try:
                self.checkpoints.meta(ck_id)
            except CheckpointNotFound:
                pass
            else:
                raise SandboxConflict(
                    f"sandbox {info.name} already has a checkpoint named {ck_name}"
                )
            if info.restore_token:  # init has not heard of the last restore yet: tell it now
                self._client(info, ["ping"], timeout=60)
            if info.channel:  # init closes its host socket, which gVisor cannot save
                self._client(info, ["prepare"], timeout=60)
            staging = self.checkpoints.staging_dir()
            # Connections through torpor's port proxy are external to the sandbox and would
            # block the checkpoint: close them first (clients reconnect after).
            network.stop_proxy(self.home, info.id)
            t0 = time.monotonic()
            try:
                self._runsc(
                    info,
                    "checkpoint",
                    f"--image-path={staging}",
                    "--compression=none",
                    "--exclude-committed-zero-pages",
                    *(["--leave-running"] if leave_running else []),
                    info.id,
                    timeout=600,
                )
            except SandboxError as e:
                shutil.rmtree(staging, ignore_errors=True)
                if self._runsc_state(info.id) == "running":
                    if info.channel:
                        self._channel_token(info, "resumed")
                    if info.spec.ports:
                        network.start_proxy(self.home, info.id, info.spec.ports)
                self._reconcile(info)
                raise CheckpointError(f"checkpoint of {info.name} failed: {e}") from None
            seconds = time.monotonic() - t0
            meta = CheckpointInfo(
                id=ck_id,
                sandbox=info.name,
                created=_now(),
                size=0,
                seconds=round(seconds, 4),
                engine=self.name,
                engine_version=self.version,
                image_digest=info.image_digest,
                spec=info.spec,
                leave_running=leave_running,
                name=ck_name,
            ).to_json()
            # The checkpoint this memory came from: the store encodes changed pages as
            # deltas against it (see docs/snapshots.md).
            parent = info.last_checkpoint or info.restored_from
            meta.update(sandbox_id=info.id, platform=self.platform, channel=info.channel,
                        init_tmpfs=info.init_tmpfs, parent=parent)  # fmt: skip
            size = self.checkpoints.put(ck_id, staging, meta)
            if leave_running:
                info.last_checkpoint = ck_id
                self._save(info)
                if info.channel:
                    self._channel_token(info, "resumed")
                if self._state(info) != "running":
                    raise CheckpointError(
                        f"checkpoint {ck_id} was saved but sandbox {info.name} did not keep "
                        "running"
                    )
                if info.spec.ports:
                    network.start_proxy(self.home, info.id, info.spec.ports)
            else:
                info.state = "checkpointed"
                info.exit_code = None
                info.pid = None
                self._save(info)
                self._after_stop_later(info)
            return CheckpointInfo.from_json({**meta, "size": size})

    def list_checkpoints(self, sandbox: str | None = None) -> list[dict[str, Any]]:
        metas = self.checkpoints.list()
        if sandbox is None:
            return metas
        info = self._find(sandbox)
        return [m for m in metas if m.get("sandbox_id") == info.id]

    def _checkpoint_info(self, ref: str, *, sandbox: SandboxInfo | None = None) -> dict[str, Any]:
        """Find a checkpoint by id (one lookup), or by name (within `sandbox` when given)."""
        try:
            return self.checkpoints.meta(ref)
        except CheckpointNotFound:
            pass
        metas = self.checkpoints.list()
        named = [
            m for m in metas
            if m.get("name") == ref and (sandbox is None or m.get("sandbox_id") == sandbox.id)
        ]  # fmt: skip
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise CheckpointError(f"checkpoint name {ref} is ambiguous: use its id")
        raise CheckpointNotFound(f"no such checkpoint: {ref}")

    def remove_checkpoint(self, sandbox: str | None, checkpoint: str) -> None:
        target = self._find(sandbox) if sandbox else None
        meta = self._checkpoint_info(checkpoint, sandbox=target)
        self.checkpoints.delete(meta["id"])

    def _restore_into(self, info: SandboxInfo, ck: dict[str, Any], image: Image) -> None:
        if info.state == "standby" and (info.channel, info.init_tmpfs) != (
            bool(ck.get("channel")), bool(ck.get("init_tmpfs"))
        ):
            info.state = "created"  # made for another kind of checkpoint: not used
        if ck.get("engine") != self.name:
            raise CheckpointError(f"checkpoint {ck['id']} was made by engine {ck.get('engine')}")
        if ck.get("image_digest") != image.digest:
            raise CheckpointError(
                f"checkpoint {ck['id']} was taken on image {info.spec.image} at digest "
                f"{ck.get('image_digest')}, which is now {image.digest}"
            )
        path, temporary = self.checkpoints.open_dir(ck["id"])
        try:
            info.restored_from = ck["id"]
            info.channel = bool(ck.get("channel"))
            info.init_tmpfs = bool(ck.get("init_tmpfs"))
            self._boot(info, image, image_path=path)
        finally:
            if temporary:
                shutil.rmtree(path, ignore_errors=True)

    def restore(
        self, checkpoint: str, *, name: str | None = None, owner: dict[str, Any] | None = None
    ) -> SandboxInfo:
        ck = self._checkpoint_info(checkpoint)
        spec = SandboxSpec.from_json(ck["spec"])
        image = self._image(spec)
        owner = self._owner(owner)
        with self._global_lock():
            info = self._claim_standby(spec, image, ck, name, owner)
            if info is None:
                info = self._create_record(spec, image, name, owner)
        try:
            with self._locked(info.id) as locked:
                self._restore_into(locked, ck, image)
        except BaseException:
            self._discard(info)
            raise
        return self._load(info.id) or info

    # ------------------------------------------------------------------ standbys

    # A standby is a sandbox record whose runsc container was created (`runsc create`:
    # sandbox and gofer processes started, root filesystem set up) but never started.
    # `runsc restore` of a checkpoint into such a container only loads the checkpoint:
    # measured here, ~65 ms instead of ~150 ms for a restore that creates the container
    # too. A checkpoint fits a standby made for the same spec, image digest, host-channel
    # setting and platform (the container's configuration is fixed at create time);
    # standby/KEY/ID lists the unused ones, and claiming one is unlinking its entry.

    def _standby_dir(self, spec: SandboxSpec, digest: str, channel: bool,
                     init_tmpfs: bool = True) -> Path:  # fmt: skip
        key = [spec.to_json(), digest, channel, self.platform]
        if not init_tmpfs:
            key.append("no-init-tmpfs")
        raw = json.dumps(key, sort_keys=True)
        return self.home / "standby" / hashlib.sha256(raw.encode()).hexdigest()[:16]

    def _standby_dead(self, info: SandboxInfo) -> str | None:
        """None if runsc still records the container as created and its sandbox process
        lives (runsc's state file does not notice a sandbox killed from outside), else
        why not."""
        hint = self._status_hint(info.id)
        if hint != "created":
            return f"runsc records it as {hint or 'nothing'}"
        return self._why_dead(info)

    def _unlist_standby(self, info: SandboxInfo) -> None:
        d = self._standby_dir(info.spec, info.image_digest, info.channel, info.init_tmpfs)
        (d / info.id).unlink(missing_ok=True)

    def _note_standby_miss(self, info: SandboxInfo, why: str) -> None:
        """A standby was taken but could not be used (the restore then went the usual
        way): kept for whoever wonders why a restore was slow (`standby_misses`)."""
        with self._cleanups_lock:
            self.standby_misses.append(f"{_now()} standby {info.id}: {why}")
            del self.standby_misses[:-20]

    def _claim_standby(
        self, spec: SandboxSpec, image: Image, ck: dict[str, Any], name: str | None,
        owner: dict[str, Any] | None = None,
    ) -> SandboxInfo | None:
        """Take an unused standby that fits checkpoint `ck`, renamed to `name` and owned by
        `owner` from now on (caller holds the global lock). None if there is none; one
        whose container is gone is discarded."""
        d = self._standby_dir(spec, image.digest, bool(ck.get("channel")),
                              bool(ck.get("init_tmpfs")))  # fmt: skip
        if not d.is_dir():
            return None
        if name is not None:
            self._check_free_name(name)
        for entry in sorted(d.iterdir()):
            try:
                entry.unlink()
            except FileNotFoundError:
                continue  # another process took it
            info = self._load(entry.name) if _ID_RE.fullmatch(entry.name) else None
            if info is None or info.state != "standby":
                continue
            dead = self._standby_dead(info)  # killed, or the host restarted
            if dead:
                self._note_standby_miss(info, dead)
                self._discard(info)
                continue
            old = info.name
            info.name = name or f"sb-{info.id[:6]}"
            info.owner = owner if owner is not None else info.owner
            self._save(info)
            self._index_name(info, old_name=old)
            return info
        return None

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

    def standby(
        self, spec: SandboxSpec, count: int = 1, *, owner: dict[str, Any] | None = None
    ) -> list[SandboxInfo]:
        image = self._image(spec)
        if spec.network != "none":
            raise SandboxError("standby sandboxes support --network none only")
        _check_mounts(spec)
        d = self._standby_dir(spec, image.digest, self.host_channel)
        ready: list[SandboxInfo] = []
        for entry in sorted(d.iterdir()) if d.is_dir() else []:
            info = self._load(entry.name) if _ID_RE.fullmatch(entry.name) else None
            if info is None or info.state != "standby":
                entry.unlink(missing_ok=True)
                continue
            dead = self._standby_dead(info)
            mine = owner is None or owners.same_process(info.owner, owner)
            if dead or (mine and len(ready) >= count):
                if dead:
                    self._note_standby_miss(info, f"found dead when counting: {dead}")
                with contextlib.suppress(SandboxNotFound):
                    self.remove(info.id, force=True)
            elif mine:  # another live process's standbys are its own to count
                ready.append(info)
        while len(ready) < count:
            with self._global_lock():
                info = self._create_record(spec, image, f"standby-{secrets.token_hex(4)}",
                                           owner)  # fmt: skip
            try:
                with self._locked(info.id) as locked:
                    self._boot(locked, image, standby=True)
                    d.mkdir(parents=True, exist_ok=True)
                    (d / locked.id).touch()
                    ready.append(locked)
            except BaseException:
                self._discard(info)
                raise
        return ready
