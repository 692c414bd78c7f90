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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Literal

NetworkMode = Literal["none", "sandbox"]
SandboxState = Literal["created", "running", "exited", "checkpointed", "standby"]

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


class SandboxError(Exception):
    """Any failure a user should see as one clear line."""


class SandboxNotFound(SandboxError):
    pass


class SandboxConflict(SandboxError):
    """The request does not fit the sandbox's state (duplicate name, not running, ...)."""


class CheckpointError(SandboxError):
    pass


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
    restore_token: str | None = None  # set until init has been told of the last restore
    channel: bool = False  # init listens on the host channel (see GVisorEngine)
    last_checkpoint: str | None = None  # latest checkpoint of this run that kept it running
    from_standby: bool = False  # this run was restored into a standby (Engine.standby)
    init_tmpfs: bool = False  # torpor-init's state dir is a tmpfs (see GVisorEngine)
    owner: dict[str, Any] | None = None  # who started it, and for what (see owners.py)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec"] = self.spec.to_json()
        return d


@dataclass
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


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
        stdin: bytes | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> ExecResult:
        """Run a command to completion inside the sandbox and collect its output. When
        `cancel` is set while it runs, the command is sent SIGTERM (its process group),
        and the call returns with whatever it printed and its exit status."""

    @abc.abstractmethod
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
        """Run a command with this process's stdin/stdout/stderr; returns its exit code."""

    @abc.abstractmethod
    def spawn(
        self,
        sandbox: str,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
    ) -> int:
        """Start a background process that survives checkpoints; returns its id."""

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
    def logs(self, sandbox: str, *, follow: bool = False) -> int: ...

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
    def list(self, *, all: bool = False) -> list[SandboxInfo]: ...

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
