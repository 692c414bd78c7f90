"""What torpor dockerd keeps about a container beyond its sandbox record: the Docker
settings it was created with (its `Config` and `HostConfig` as sent), its labels, its
restart count, whether it removes itself when it exits, when it last finished.

One JSON file per container, `x-docker.json` in the sandbox's own directory next to its
record (`Engine.sandbox_file`), written whole (`torpor.files.write_atomic`) and removed
with the sandbox. A sandbox torpor's own CLI made has none: its settings are read from
its spec (`synthesize`). Exec instances (`ExecTable`) are kept in memory only, as
Docker keeps them.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from torpor.dockerd.server import DockerError
from torpor.files import write_atomic
from torpor.sandbox.engine import Engine, SandboxInfo, SandboxNotFound

log = logging.getLogger(__name__)

FILE = "x-docker.json"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class ContainerMeta:
    config: dict[str, Any] = field(default_factory=dict)  # Docker's Config, as created
    host_config: dict[str, Any] = field(default_factory=dict)  # HostConfig, as created
    restart_count: int = 0
    finished_at: str | None = None  # when dockerd saw it exit last
    checkpoint_started: str | None = None  # the checkpoint its last start restored

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.get("Labels") or {})

    @property
    def tty(self) -> bool:
        return bool(self.config.get("Tty"))

    @property
    def auto_remove(self) -> bool:
        return bool(self.host_config.get("AutoRemove"))


def synthesize(info: SandboxInfo) -> ContainerMeta:
    """Docker settings for a sandbox torpor made without dockerd, from its spec."""
    spec = info.spec
    return ContainerMeta(
        config={"Image": spec.image, "Cmd": list(spec.cmd) or None, "Entrypoint": None,
                "Env": list(spec.env), "WorkingDir": spec.workdir, "User": spec.user,
                "Labels": {}, "Tty": False},
        host_config={"NetworkMode": "bridge" if spec.network == "sandbox" else "none",
                     "Memory": spec.memory or 0,
                     "NanoCpus": int((spec.cpus or 0) * 1e9)},
    )  # fmt: skip


def load(engine: Engine, info: SandboxInfo) -> ContainerMeta:
    try:
        path = engine.sandbox_file(info.id, FILE)
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return synthesize(info)
    except (SandboxNotFound, ValueError, OSError) as e:
        log.debug("no docker settings for sandbox %s: %s", info.id, e)
        return synthesize(info)
    known = ContainerMeta.__dataclass_fields__
    return ContainerMeta(**{k: v for k, v in data.items() if k in known})


def save(engine: Engine, sid: str, meta: ContainerMeta) -> None:
    path = engine.sandbox_file(sid, FILE)
    if not path.parent.is_dir():  # removed meanwhile: do not make its directory again
        raise SandboxNotFound(f"no such sandbox: {sid}")
    write_atomic(path, json.dumps(asdict(meta)).encode())


@dataclass
class ExecInstance:
    id: str
    container: str  # the sandbox's id
    argv: list[str]
    env: list[str]
    workdir: str | None
    user: str | None
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool
    running: bool = False
    exit_code: int | None = None
    process: int | None = None  # init's id of a detached one
    started: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id, "ContainerID": self.container, "Running": self.running,
            "ExitCode": self.exit_code, "Pid": 0, "OpenStdin": self.stdin,
            "OpenStdout": self.stdout, "OpenStderr": self.stderr, "CanRemove": False,
            "DetachKeys": "",
            "ProcessConfig": {"entrypoint": self.argv[0] if self.argv else "",
                              "arguments": self.argv[1:], "tty": self.tty,
                              "privileged": False, "user": self.user or ""},
        }  # fmt: skip


class ExecTable:
    def __init__(self) -> None:
        self._items: dict[str, ExecInstance] = {}
        self._lock = threading.Lock()

    def add(self, item: ExecInstance) -> None:
        with self._lock:
            if len(self._items) > 10_000:  # forget the oldest finished ones
                for key in [k for k, v in self._items.items() if v.exit_code is not None][:5000]:
                    del self._items[key]
            self._items[item.id] = item

    def get(self, exec_id: str) -> ExecInstance:
        with self._lock:
            item = self._items.get(exec_id)
            if item is None:
                matches = [v for k, v in self._items.items() if k.startswith(exec_id)]
                item = matches[0] if len(matches) == 1 and len(exec_id) >= 4 else None
        if item is None:
            raise DockerError(404, f"No such exec instance: {exec_id}")
        return item
