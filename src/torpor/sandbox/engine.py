"""The sandbox engine interface: what every engine (gVisor today, a VM engine later) offers.

An engine runs isolated sandboxes from images, runs processes in them, and checkpoints a
running sandbox whole (processes, memory, in-memory filesystem) so that it can be restored
later, in place or as an independent copy (a fork). Engines know nothing of agents,
sessions or the context log.
"""

from __future__ import annotations

import abc
import posixpath
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Literal

NetworkMode = Literal["none", "sandbox"]
SandboxState = Literal["created", "running", "exited", "checkpointed", "standby"]
FileType = Literal["file", "dir", "symlink", "other"]
FileErrorReason = Literal[
    "not_found", "exists", "not_a_directory", "is_a_directory", "not_empty",
    "permission_denied", "other",
]  # fmt: skip
OutputCallback = Callable[[bytes], None]  # gets each chunk of a stream as it comes

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


class SandboxError(Exception):
    """Any failure a user should see as one clear line."""


class SandboxNotFound(SandboxError):
    pass


class SandboxConflict(SandboxError):
    """The request does not fit the sandbox's state (duplicate name, not running, ...)."""


class SandboxNotRunning(SandboxConflict):
    """A command or file operation on a sandbox that is not running (stopped, exited, or
    checkpointed): start it again, or restore one of its checkpoints."""


class CheckpointError(SandboxError):
    pass


class CommandTimeout(SandboxError):
    """A command ran past its timeout and was stopped; `result` holds what it printed
    until then (exit code 124)."""

    def __init__(self, message: str, result: ExecResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class ProcessNotFound(SandboxError):
    """No process of the sandbox has this id (ids come from spawn, or the processes
    listing)."""


class ProcessStdinClosed(SandboxConflict):
    """The process's stdin is not open: it was started without `stdin=True`, or it was
    closed, or the process has exited."""


class SandboxFileError(SandboxError):
    """A file operation in the sandbox failed; `reason` says how, `path` where."""

    def __init__(self, message: str, *, path: str = "",
                 reason: FileErrorReason = "other") -> None:  # fmt: skip
        super().__init__(message)
        self.path = path
        self.reason = reason


class SandboxFileNotFound(SandboxFileError):
    """The path does not exist in the sandbox."""


class SandboxFileExists(SandboxFileError):
    """Something is in the way at the path (mkdir of an existing file, ...)."""


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise SandboxError(
            f"invalid name {name!r}: use 1-63 letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class Volume:
    host: str
    target: str
    readonly: bool = False

    @classmethod
    def parse(cls, text: str) -> Volume:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise SandboxError(f"invalid volume {text!r}: expected HOST:CTR[:ro]")
        ro = False
        if len(parts) == 3:
            if parts[2] not in ("ro", "rw"):
                raise SandboxError(f"invalid volume mode {parts[2]!r}: expected ro or rw")
            ro = parts[2] == "ro"
        host = str(Path(parts[0]).resolve())
        if not Path(host).exists():
            raise SandboxError(f"volume source {parts[0]} does not exist")
        if not parts[1].startswith("/"):
            raise SandboxError(f"volume target {parts[1]!r} must be an absolute path")
        return cls(host=host, target=parts[1], readonly=ro)


@dataclass(frozen=True)
class Tmpfs:
    """A tmpfs mounted in the sandbox (Docker's `--tmpfs PATH[:size=N,mode=M]`). Unlike a
    volume it is part of every checkpoint; unlike the root overlay, deleting a file in
    it leaves nothing behind (see docs/sandboxes.md)."""

    target: str
    size: int | None = None  # bytes
    mode: str | None = None  # octal, e.g. 1777

    @classmethod
    def parse(cls, text: str) -> Tmpfs:
        target, _, opts = text.partition(":")
        if not target.startswith("/") or posixpath.normpath(target) in ("/", "//"):
            raise SandboxError(f"invalid tmpfs {text!r}: expected an absolute path other "
                               "than / (PATH[:size=N,mode=M])")  # fmt: skip
        size, mode = None, None
        for opt in filter(None, opts.split(",")):
            key, _, value = opt.partition("=")
            if key == "size" and value:
                size = parse_bytes(value)
            elif key == "mode" and re.fullmatch(r"[0-7]{3,4}", value):
                mode = value
            else:
                raise SandboxError(f"invalid tmpfs option {opt!r} in {text!r}: use size=N "
                                   "(e.g. 512m) or mode=M (octal, e.g. 1777)")  # fmt: skip
        return cls(target=posixpath.normpath(target), size=size, mode=mode)

    def options(self) -> list[str]:
        return [*([f"size={self.size}"] if self.size else []),
                *([f"mode={self.mode}"] if self.mode else [])]  # fmt: skip


def parse_bytes(text: str) -> int:
    """'512m', '2g', '100k', '4096' -> bytes (powers of 1024, as Docker reads them)."""
    m = re.fullmatch(r"(?i)\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text)
    if not m:
        raise SandboxError(f"invalid size {text!r}: use e.g. 512m or 2g")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    sandbox_port: int

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        try:
            host, ctr = text.rsplit(":", 1)
            if host.count(":"):  # 127.0.0.1:8080:80 -> only loopback is supported
                ip, host = host.rsplit(":", 1)
                if ip not in ("127.0.0.1", "localhost"):
                    raise SandboxError(f"ports are published on 127.0.0.1 only, not {ip}")
            hp, cp = int(host), int(ctr)
        except ValueError:
            raise SandboxError(f"invalid port mapping {text!r}: expected HOST:CTR") from None
        for p in (hp, cp):
            if not 0 < p < 65536:
                raise SandboxError(f"invalid port {p} in {text!r}")
        return cls(hp, cp)


@dataclass
class SandboxSpec:
    """Everything needed to (re)create a sandbox; stored with it and with its checkpoints."""

    image: str
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    volumes: list[Volume] = field(default_factory=list)
    network: NetworkMode = "none"
    ports: list[PortMapping] = field(default_factory=list)
    memory: int | None = None  # bytes
    cpus: float | None = None
    pids: int | None = 4096
    tmpfs: list[Tmpfs] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxSpec:
        data = dict(data)
        data["volumes"] = [Volume(**v) for v in data.get("volumes", [])]
        data["ports"] = [PortMapping(**p) for p in data.get("ports", [])]
        data["tmpfs"] = [Tmpfs(**t) for t in data.get("tmpfs", [])]
        return cls(**data)


@dataclass
class SandboxInfo:
    id: str
    name: str
    state: SandboxState
    spec: SandboxSpec
    image_digest: str
    created: str
    started: str | None = None
    exit_code: int | None = None
    restored_from: str | None = None
    address: str | None = None  # sandbox network address when network == "sandbox"
    pid: int | None = None  # host pid of the sandbox (runsc) process
    last_checkpoint: str | None = None  # latest checkpoint of this run that kept it running
    from_standby: bool = False  # this run was restored into a standby (Engine.standby)
    owner: dict[str, Any] | None = None  # who started it, and for what (see owners.py)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec"] = self.spec.to_json()
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxInfo:
        """The record `to_json` wrote; keys it does not know are left out (an engine
        checks its own before, see gvisor/records.py)."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["spec"] = SandboxSpec.from_json(data["spec"])
        return cls(**data)


@dataclass
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


@dataclass(frozen=True)
class FileEntry:
    """A file in a sandbox, as a listing or a stat describes it (the link itself for a
    symlink, unless the stat followed it)."""

    name: str  # the last component (a listing with depth > 1: relative to the directory)
    path: str  # absolute, in the sandbox
    type: FileType
    size: int  # bytes (a symlink: its target's length)
    mode: int  # permission bits, e.g. 0o644
    mtime: float  # seconds since the epoch
    uid: int
    gid: int
    link_target: str | None = None  # for a symlink

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckpointInfo:
    id: str
    sandbox: str  # name of the sandbox it was taken from
    created: str
    size: int  # bytes on disk
    seconds: float  # time the engine took to checkpoint
    engine: str
    engine_version: str
    image_digest: str
    spec: SandboxSpec
    leave_running: bool = False
    name: str = ""  # the user's name for it, unique per sandbox

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec"] = self.spec.to_json()
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointInfo:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["spec"] = SandboxSpec.from_json(data["spec"])
        return cls(**data)


class Engine(abc.ABC):
    """A sandbox engine. Names or ids are accepted wherever a sandbox is named."""

    name: str
    # The owner kind recorded for sandboxes started without `owner=` (see owners.py):
    # "user" (never reaped) unless whoever made the engine says otherwise.
    owner_kind: str = "user"

    @abc.abstractmethod
    def run(
        self, spec: SandboxSpec, *, name: str | None = None, owner: dict[str, Any] | None = None
    ) -> SandboxInfo:
        """Create and start a sandbox; returns once its init answers. `owner` is recorded
        in its record (default: this process, of kind `owner_kind`)."""

    @abc.abstractmethod
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
        """Run a command to completion inside the sandbox and collect its output. When
        `cancel` is set while it runs, the command is sent SIGTERM (its process group),
        and the call returns with whatever it printed and its exit status.

        `stdin` is bytes, or a binary stream read (in another thread) until its end.
        `on_stdout`/`on_stderr` get the output as it comes; with `capture=False` it is
        not kept for the result too. A command past its `timeout` is stopped (TERM,
        then KILL) and raises CommandTimeout."""

    @abc.abstractmethod
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
        """Start a background process that survives checkpoints; returns its id. With
        `stdin`, its stdin stays open for `write_stdin` (else it reads /dev/null)."""

    @abc.abstractmethod
    def processes(self, sandbox: str) -> list[dict[str, Any]]:
        """Processes started in the sandbox: id, pid, state, exit, argv."""

    @abc.abstractmethod
    def copy_in(self, sandbox: str, src: Path, dest: str) -> None: ...

    @abc.abstractmethod
    def copy_out(self, sandbox: str, src: str, dest: Path) -> None: ...

    @abc.abstractmethod
    def read_file(self, sandbox: str, path: str) -> bytes: ...

    @abc.abstractmethod
    def write_file(
        self, sandbox: str, path: str, data: bytes | BinaryIO, mode: int = 0o644
    ) -> None: ...

    @abc.abstractmethod
    def stop(self, sandbox: str, *, timeout: float = 10.0) -> SandboxInfo: ...

    @abc.abstractmethod
    def start(self, sandbox: str, *, checkpoint: str | None = None) -> SandboxInfo: ...

    @abc.abstractmethod
    def remove(self, sandbox: str, *, force: bool = False) -> None: ...

    @abc.abstractmethod
    def inspect(self, sandbox: str) -> SandboxInfo: ...

    @abc.abstractmethod
    def rename(
        self, sandbox: str, new_name: str, *, owner: dict[str, Any] | None = None
    ) -> SandboxInfo:
        """Give a sandbox another name (and, with `owner`, another owner)."""

    @abc.abstractmethod
    def checkpoint(
        self, sandbox: str, checkpoint: str | None = None, *, leave_running: bool = False
    ) -> CheckpointInfo: ...

    @abc.abstractmethod
    def restore(
        self, checkpoint: str, *, name: str | None = None, owner: dict[str, Any] | None = None
    ) -> SandboxInfo:
        """Start a new, independent sandbox from a checkpoint (a fork), owned by `owner`."""

    @abc.abstractmethod
    def remove_checkpoint(self, sandbox: str | None, checkpoint: str) -> None:
        """Delete a checkpoint (by id, or by name within `sandbox`)."""

    # What the `Sandbox` handle (handle.py) needs beyond the above. Engines that lack one
    # say so when it is called.

    def _unsupported(self, what: str) -> SandboxError:
        return SandboxError(f"the {self.name} engine cannot {what}")

    def kill_process(self, sandbox: str, process: int, signal: str | int = "TERM") -> None:
        """Signal a process started in the sandbox (its process group); nothing happens
        if it has exited. ProcessNotFound for an unknown id."""
        raise self._unsupported("signal processes")

    def write_stdin(self, sandbox: str, process: int, data: bytes, *,
                    close: bool = False) -> None:  # fmt: skip
        """Write to the stdin of a process started with `stdin=True` (`close`: then close
        it: the process reads EOF). ProcessStdinClosed if it is not open."""
        raise self._unsupported("write to a process's stdin")

    def forget_process(self, sandbox: str, process: int) -> None:
        """Drop an exited process's kept output and its entry in `processes`
        (SandboxConflict while it runs)."""
        raise self._unsupported("forget processes")

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
        """A process's output so far, (stdout, stderr); with `follow`, until it exits (or
        `cancel` is set, or one of several: the process goes on), passed to the callbacks
        as it comes.
        ProcessNotFound for an unknown id."""
        raise self._unsupported("show a process's output")

    def list_files(self, sandbox: str, path: str, *, depth: int = 1) -> list[FileEntry]:
        """The entries of a directory (down to `depth` levels), sorted by name."""
        raise self._unsupported("list directories")

    def stat_file(self, sandbox: str, path: str, *, follow: bool = False) -> FileEntry:
        """What is at `path` (with `follow`, what a symlink there leads to)."""
        raise self._unsupported("stat files")

    def remove_file(self, sandbox: str, path: str, *, recursive: bool = False) -> None:
        """Remove a file, a symlink or an empty directory (`recursive`: any directory)."""
        raise self._unsupported("remove files")

    def make_dir(self, sandbox: str, path: str, *, parents: bool = True,
                 mode: int = 0o755) -> bool:  # fmt: skip
        """Create a directory (and its missing parents); False if it was there already
        (with `parents`; without, SandboxFileExists)."""
        raise self._unsupported("make directories")

    def move_file(self, sandbox: str, src: str, dst: str) -> None:
        """Rename `src` to `dst` (within one filesystem of the sandbox)."""
        raise self._unsupported("move files")

    def console_path(self, sandbox: str) -> Path:
        """The host file that holds the output of the sandbox's main process."""
        raise self._unsupported("show the main process's output")

    def create(
        self, spec: SandboxSpec, *, name: str | None = None, owner: dict[str, Any] | None = None
    ) -> SandboxInfo:
        """Record a sandbox without starting it (state "created", as Docker's `create`);
        `start` boots it. `run` is `create` then `start` in one."""
        raise self._unsupported("create a sandbox without starting it")

    def sandbox_file(self, sandbox: str, name: str) -> Path:
        """A host file of the sandbox's own for what a front door keeps about it (e.g.
        torpor dockerd's Docker settings), removed with the sandbox. `name` is `x-NAME`
        (the `x-` keeps it apart from the engine's own files); the file may not exist."""
        raise self._unsupported("keep files about a sandbox")

    def wait(self, sandbox: str) -> int:
        """Block until the sandbox's main process exits; returns its exit code."""
        raise self._unsupported("wait for a sandbox")

    def list_checkpoints(self, sandbox: str | None = None) -> list[dict[str, Any]]:
        """The checkpoints' metadata (of one sandbox, or all)."""
        raise self._unsupported("list checkpoints")

    def standby(
        self, spec: SandboxSpec, count: int = 1, *, owner: dict[str, Any] | None = None
    ) -> list[SandboxInfo]:
        """Keep `count` standby sandboxes for `spec`: set up ahead of time but not started
        (state "standby"), so that `restore` of a checkpoint taken with the same spec
        loads it into one instead of starting a sandbox first. Creates the missing ones,
        removes the extra ones (count 0 removes all) and returns those kept. With `owner`,
        only the standbys of that owner's process count (and are removed); without, all
        of the spec's. Engines without standbys restore the usual way and keep none."""
        return []

    def reap(self, sandbox: str) -> SandboxInfo | None:
        """Remove the sandbox if its owner is gone (an orphan, see owners.py), checked
        under its lock; returns its record if it was removed. Engines that record no
        owners reap nothing."""
        return None

    def image_has_files(self, image: str, path: str) -> bool:
        """Whether the image holds anything at `path` (a file, a link, or a directory
        that is not empty), which a mount there would hide. Engines that cannot tell say
        True."""
        return True

    # Last: below it, `list` in the class's annotations would name this method.
    @abc.abstractmethod
    def list(self, *, all: bool = False) -> list[SandboxInfo]: ...
