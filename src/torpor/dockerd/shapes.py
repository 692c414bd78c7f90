"""The JSON shapes Docker's clients read: a container's inspect document and its entry in
a listing, from its sandbox record and the settings dockerd kept (`state`).

A torpor sandbox's states map to Docker's: created, running, exited; a sandbox stopped
by a checkpoint (`checkpointed`) is exited, as a Docker container is after
`checkpoint create` without `--leave-running`. Ids are torpor's 12 hex digits (Docker's
clients take any id and show 12 characters).
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

from torpor.dockerd.state import ContainerMeta
from torpor.sandbox.engine import SandboxInfo

ZERO_TIME = "0001-01-01T00:00:00Z"


def docker_state(info: SandboxInfo) -> str:
    return {"created": "created", "running": "running"}.get(info.state, "exited")


def _parse(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso)
    except ValueError:
        return None


def _ago(iso: str | None) -> str:
    """Docker's human duration (`units.HumanDuration`), e.g. "5 seconds", "About a minute"."""
    t = _parse(iso)
    if t is None:
        return ""
    s = max(0, (datetime.now(UTC) - t).total_seconds())
    if s < 1:
        return "Less than a second"
    if s < 60:
        return f"{int(s)} second{'s' if int(s) != 1 else ''}"
    minutes = s / 60
    if minutes < 2:
        return "About a minute"
    if minutes < 60:
        return f"{int(minutes)} minutes"
    hours = minutes / 60
    if hours < 2:
        return "About an hour"
    if hours < 48:
        return f"{int(hours)} hours"
    return f"{int(hours / 24)} days"


def status_text(info: SandboxInfo, meta: ContainerMeta) -> str:
    """`docker ps`'s STATUS column."""
    state = docker_state(info)
    if state == "running":
        return f"Up {_ago(info.started)}"
    if state == "created":
        return "Created"
    ago = _ago(meta.finished_at)
    return f"Exited ({info.exit_code or 0}) {ago + ' ago' if ago else ''}".rstrip()


def _argv(info: SandboxInfo) -> list[str]:
    return list(info.spec.cmd)


def _ports(info: SandboxInfo) -> list[dict[str, Any]]:
    return [{"IP": "127.0.0.1", "PrivatePort": p.sandbox_port, "PublicPort": p.host_port,
             "Type": "tcp"} for p in info.spec.ports]  # fmt: skip


def _mounts(info: SandboxInfo) -> list[dict[str, Any]]:
    mounts = [{"Type": "bind", "Source": v.host, "Destination": v.target, "Mode": "",
               "RW": not v.readonly, "Propagation": "rprivate"} for v in info.spec.volumes]
    mounts += [{"Type": "tmpfs", "Source": "", "Destination": t.target, "Mode": "",
                "RW": True, "Propagation": ""} for t in info.spec.tmpfs]  # fmt: skip
    return mounts


def _networks(info: SandboxInfo) -> dict[str, Any]:
    if info.spec.network != "sandbox":
        return {"none": {"NetworkID": "none", "IPAddress": "", "Gateway": ""}}
    return {"bridge": {"NetworkID": "torpor-sandbox", "IPAddress": info.address or "",
                       "Gateway": "", "IPPrefixLen": 24}}  # fmt: skip


def list_entry(info: SandboxInfo, meta: ContainerMeta) -> dict[str, Any]:
    created = _parse(info.created)
    return {
        "Id": info.id,
        "Names": [f"/{info.name}"],
        "Image": meta.config.get("Image") or info.spec.image,
        "ImageID": info.image_digest,
        "Command": " ".join(_argv(info)),
        "Created": int(created.timestamp()) if created else 0,
        "State": docker_state(info),
        "Status": status_text(info, meta),
        "Ports": _ports(info),
        "Labels": meta.labels,
        "SizeRw": 0,
        "SizeRootFs": 0,
        "HostConfig": {"NetworkMode": meta.host_config.get("NetworkMode") or "default"},
        "NetworkSettings": {"Networks": _networks(info)},
        "Mounts": _mounts(info),
    }


def _port_map(info: SandboxInfo) -> dict[str, Any]:
    return {f"{p.sandbox_port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(p.host_port)}]
            for p in info.spec.ports}  # fmt: skip


def inspect(info: SandboxInfo, meta: ContainerMeta) -> dict[str, Any]:
    argv = _argv(info)
    state = docker_state(info)
    host = {
        "NetworkMode": "default", "AutoRemove": False, "Memory": info.spec.memory or 0,
        "NanoCpus": int((info.spec.cpus or 0) * 1e9), "PidsLimit": info.spec.pids or 0,
        "Binds": [f"{v.host}:{v.target}{':ro' if v.readonly else ''}" for v in info.spec.volumes],
        "Tmpfs": {t.target: ",".join(t.options()) for t in info.spec.tmpfs},
        "PortBindings": _port_map(info), "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "Privileged": False, "Runtime": "runsc",
        **meta.host_config,
        "LogConfig": {"Type": "json-file", "Config": {}},  # what docker-py checks to stream logs
    }  # fmt: skip
    config = {
        "Hostname": info.name, "Domainname": "", "User": info.spec.user,
        "AttachStdin": False, "AttachStdout": False, "AttachStderr": False,
        "Tty": False, "OpenStdin": False, "StdinOnce": False,
        "Env": list(info.spec.env), "Cmd": argv or None, "Entrypoint": None,
        "Image": info.spec.image, "WorkingDir": info.spec.workdir, "Labels": {},
        **meta.config,
    }  # fmt: skip
    config["Labels"] = meta.labels
    return {
        "Id": info.id,
        "Created": info.created,
        "Path": argv[0] if argv else "",
        "Args": argv[1:],
        "State": {
            "Status": state,
            "Running": state == "running",
            "Paused": False,
            "Restarting": False,
            "OOMKilled": False,
            "Dead": False,
            "Pid": (info.pid or 0) if state == "running" else 0,
            "ExitCode": info.exit_code or 0,
            "Error": "",
            "StartedAt": info.started or ZERO_TIME,
            "FinishedAt": (meta.finished_at or ZERO_TIME) if state == "exited" else ZERO_TIME,
        },
        "Image": info.image_digest,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": "",
        "Name": f"/{info.name}",
        "RestartCount": meta.restart_count,
        "Driver": "torpor",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": host,
        "GraphDriver": {"Name": "torpor", "Data": {}},
        "Mounts": _mounts(info),
        "Config": config,
        "NetworkSettings": {
            "Bridge": "", "SandboxID": info.id, "HairpinMode": False,
            "Ports": _port_map(info), "SandboxKey": "", "IPAddress": info.address or "",
            "Gateway": "", "MacAddress": "", "Networks": _networks(info),
        },  # fmt: skip
        "Torpor": {"State": info.state, "RestoredFrom": info.restored_from,
                   "LastCheckpoint": info.last_checkpoint, "Host": socket.gethostname()},
    }
