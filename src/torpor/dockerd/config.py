"""A Docker container create body (`Config` + `HostConfig`) as a torpor `SandboxSpec`.

What maps: Image, Cmd, Entrypoint (the image's own when not given, as Docker does),
Env, WorkingDir, User, Labels, Tty; HostConfig Memory, NanoCpus (or CpuQuota/CpuPeriod),
PidsLimit, Binds, Mounts of type bind and tmpfs, Tmpfs, PortBindings (published on
127.0.0.1), NetworkMode (none; bridge is torpor's sandbox network; the default is none
unless ports are published), AutoRemove. What torpor cannot honour is refused when it
would change what runs (host network, privileged) and otherwise listed in the
create's `Warnings`.
"""

from __future__ import annotations

from typing import Any

from torpor.dockerd.server import DockerError
from torpor.sandbox.engine import (
    NetworkMode,
    PortMapping,
    SandboxError,
    SandboxSpec,
    Tmpfs,
    Volume,
)
from torpor.sandbox.images import Image

IGNORED_HOST = ("CapAdd", "CapDrop", "Devices", "Dns", "ExtraHosts", "Ulimits", "SecurityOpt",
                "Sysctls", "ShmSize", "CpuShares", "BlkioWeight", "OomKillDisable")  # fmt: skip


def argv(config: dict[str, Any], image: Image) -> list[str]:
    """The main process's argv: Entrypoint + Cmd, each the image's when not given (a
    given Entrypoint drops the image's Cmd, as in Docker)."""
    entry = config.get("Entrypoint")
    cmd = config.get("Cmd")
    if isinstance(entry, str):
        entry = [entry]
    if isinstance(cmd, str):
        cmd = [cmd]
    image_cmd = list(image.cmd[len(image.entrypoint):])
    if entry is not None:
        return [*entry, *(cmd or [])]
    return [*image.entrypoint, *(cmd if cmd is not None else image_cmd)]


def _network(host: dict[str, Any], ports: list[PortMapping]) -> NetworkMode:
    mode = host.get("NetworkMode") or "default"
    if mode == "none":
        if ports:
            raise DockerError(400, "conflicting options: port publishing and the container "
                                   "type network mode")  # fmt: skip
        return "none"
    if mode == "bridge":
        return "sandbox"
    if mode == "default":
        return "sandbox" if ports else "none"
    raise DockerError(400, f"network mode {mode!r} is not supported by torpor: use none "
                           "or bridge (torpor's sandbox network)")  # fmt: skip


def _ports(host: dict[str, Any]) -> list[PortMapping]:
    out = []
    for key, bindings in (host.get("PortBindings") or {}).items():
        port, _, proto = key.partition("/")
        if proto not in ("", "tcp"):
            raise DockerError(400, f"torpor publishes tcp ports only, not {key}")
        for b in bindings or []:
            ip = b.get("HostIp") or ""
            if ip not in ("", "127.0.0.1", "localhost", "0.0.0.0"):
                raise DockerError(400, f"ports are published on 127.0.0.1 only, not {ip}")
            host_port = b.get("HostPort") or port
            try:
                out.append(PortMapping.parse(f"{host_port}:{port}"))
            except SandboxError as e:
                raise DockerError(400, str(e)) from None
    return out


def _mounts(host: dict[str, Any]) -> tuple[list[Volume], list[Tmpfs]]:
    volumes = [Volume.parse(b) for b in host.get("Binds") or []]
    tmpfs = [Tmpfs.parse(f"{path}:{opts}" if opts else path)
             for path, opts in (host.get("Tmpfs") or {}).items()]  # fmt: skip
    for m in host.get("Mounts") or []:
        kind, target = m.get("Type"), m.get("Target") or ""
        if kind == "bind":
            ro = ":ro" if m.get("ReadOnly") else ""
            volumes.append(Volume.parse(f"{m.get('Source')}:{target}{ro}"))
        elif kind == "tmpfs":
            size = (m.get("TmpfsOptions") or {}).get("SizeBytes")
            tmpfs.append(Tmpfs(target=target, size=size or None))
        else:
            raise DockerError(400, f"mounts of type {kind} are not supported by torpor: "
                                   "use bind or tmpfs")  # fmt: skip
    return volumes, tmpfs


def cpus(host: dict[str, Any]) -> float | None:
    if host.get("NanoCpus"):
        return host["NanoCpus"] / 1e9
    quota, period = host.get("CpuQuota") or 0, host.get("CpuPeriod") or 100_000
    return quota / period if quota > 0 else None


def to_spec(body: dict[str, Any], image: Image) -> tuple[SandboxSpec, list[str]]:
    """The spec of a container created with `body`, and the warnings for what was
    ignored."""
    host = body.get("HostConfig") or {}
    if not isinstance(host, dict):
        raise DockerError(400, "invalid JSON: HostConfig must be an object")
    if host.get("Privileged"):
        raise DockerError(400, "privileged containers are not supported by torpor")
    warnings = [f"HostConfig.{k} is not supported by torpor and was ignored"
                for k in IGNORED_HOST if host.get(k)]  # fmt: skip
    policy = (host.get("RestartPolicy") or {}).get("Name") or "no"
    if policy != "no":
        warnings.append(f"restart policy {policy!r} is not supported by torpor and was ignored")
    ports = _ports(host)
    try:
        volumes, tmpfs = _mounts(host)
        spec = SandboxSpec(
            image=image.name,
            cmd=argv(body, image),
            env=[str(e) for e in body.get("Env") or []],
            workdir=body.get("WorkingDir") or "",
            user=body.get("User") or "",
            volumes=volumes,
            network=_network(host, ports),
            ports=ports,
            memory=host.get("Memory") or None,
            cpus=cpus(host),
            pids=host.get("PidsLimit") or 4096,
            tmpfs=tmpfs,
        )
    except SandboxError as e:
        raise DockerError(400, str(e)) from None
    return spec, warnings
