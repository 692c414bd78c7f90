"""Negotiation and the daemon's description: `/_ping` (GET and HEAD), `/version`,
`/info`.

The docker CLI pings first and reads the headers: `Api-Version` (it steps down to it),
`Ostype`, and `Docker-Experimental: true`, without which it hides `docker checkpoint`
and `start --checkpoint`. docker-py asks `/version` (unversioned) for `ApiVersion`.
"""

from __future__ import annotations

import os
import platform
import socket
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any

from torpor.dockerd.server import (
    API_VERSION,
    MIN_API_VERSION,
    Request,
    Response,
    json_response,
)

if TYPE_CHECKING:
    from torpor.dockerd.core import Daemon

def _torpor_version() -> str:
    try:
        return package_version("torpor")
    except PackageNotFoundError:
        return "unknown"


_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def routes(d: Daemon) -> None:
    d.router.add("GET", "/_ping", ping)
    d.router.add("HEAD", "/_ping", ping)
    d.router.add("GET", "/version", lambda req: version(d, req))
    d.router.add("GET", "/info", lambda req: info(d, req))


def ping(req: Request) -> Response:
    return Response(200, b"OK", [("Content-Type", "text/plain; charset=utf-8"),
                                 ("Cache-Control", "no-cache, no-store, must-revalidate"),
                                 ("Pragma", "no-cache"), ("Swarm", "inactive"),
                                 ("Builder-Version", "1")])  # fmt: skip


def _runsc_version(d: Daemon) -> str:
    return str(getattr(d.engine, "version", "") or "")


def version(d: Daemon, req: Request) -> Response:
    details = {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
               "Os": "linux", "Arch": _ARCH.get(platform.machine(), platform.machine()),
               "KernelVersion": platform.release(), "Experimental": "true",
               "GitCommit": "", "GoVersion": "", "BuildTime": ""}  # fmt: skip
    return json_response({
        "Platform": {"Name": "torpor"},
        "Components": [
            {"Name": "Engine", "Version": _torpor_version(), "Details": details},
            {"Name": "runsc", "Version": _runsc_version(d), "Details": {}},
        ],
        "Version": _torpor_version(),
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": details["Arch"],
        "KernelVersion": platform.release(),
        "Experimental": True,
        "BuildTime": "",
    })  # fmt: skip


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def info(d: Daemon, req: Request) -> Response:
    sandboxes = [i for i in d.engine.list(all=True) if i.state != "standby"]
    running = sum(1 for i in sandboxes if i.state == "running")
    body: dict[str, Any] = {
        "ID": socket.gethostname(),
        "Containers": len(sandboxes),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": len(sandboxes) - running,
        "Images": len(d.images.list()),
        "Driver": "torpor",
        "DriverStatus": [["Engine", d.engine.name], ["runsc", _runsc_version(d)]],
        "DockerRootDir": str(getattr(d.engine, "home", "")),
        "Name": socket.gethostname(),
        "OperatingSystem": "torpor (gVisor sandboxes)",
        "OSType": "linux",
        "OSVersion": "",
        "Architecture": platform.machine(),
        "KernelVersion": platform.release(),
        "NCPU": os.cpu_count() or 1,
        "MemTotal": _mem_total(),
        "ServerVersion": _torpor_version(),
        "ExperimentalBuild": True,
        "LoggingDriver": "json-file",
        "CgroupDriver": "none",
        "CgroupVersion": "2",
        "DefaultRuntime": "runsc",
        "Runtimes": {"runsc": {"path": "runsc"}},
        "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "",
                  "ControlAvailable": False, "Error": "", "RemoteManagers": None},
        "SecurityOptions": [],
        "Plugins": {"Volume": [], "Network": ["none", "bridge"], "Log": ["json-file"]},
        "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": ["127.0.0.0/8"]},
        "Labels": [],
        "Warnings": [],
    }
    return json_response(body)
