"""The OCI bundle of a sandbox: the `config.json` runsc runs it from.

`oci_config` is a pure function of the sandbox's spec, its image, its id and name and
the host paths it is given (no I/O: its caller writes the result), so what a sandbox
gets (mounts, user, environment, namespaces, limits) can be checked without runsc.
`image_user` is the one step that reads anything: the image's /etc/passwd and
/etc/group, to turn a user name into ids (`lookup_user` does the parsing).

What every sandbox gets: torpor-init as its first process (always root: it sets up its
state directory and switches to the sandbox's user for the main process); the init
binary's directory read-only at /.torpor; the host channel's directory at /.torpor-ctl;
init's own state on a tmpfs at /run/torpor; Docker's default capabilities;
its own pid, ipc, uts, mount and network namespaces (the network namespace torpor made
for it with `--network sandbox`, else an empty one); the root filesystem is the image's
rootfs, which runsc's `--overlay2=root:memory` keeps unmodified.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from torpor.sandbox.engine import SandboxError, SandboxSpec
from torpor.sandbox.images import Image
from torpor.sandbox.initbin import INIT_MOUNT, INIT_PATH

CHANNEL_MOUNT = "/.torpor-ctl"  # where a sandbox sees its host-channel directory
INIT_DIR = "/run/torpor"  # torpor-init's own state in the sandbox (process records, ...)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default capability set: enough for package managers, chown, binding low ports.
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip


def check_mounts(spec: SandboxSpec) -> None:
    """Volumes and tmpfs mounts may not hide what the sandbox needs, nor each other."""
    reserved = ("/proc", "/dev", "/sys", INIT_MOUNT, CHANNEL_MOUNT, INIT_DIR)
    seen: set[str] = set()
    targets = [t.target for t in spec.tmpfs] + [v.target for v in spec.volumes]
    for target in map(posixpath.normpath, targets):
        if any(target == r or target.startswith(r + "/") for r in reserved):
            raise SandboxError(f"cannot mount over {target}: torpor uses it")
        if target in seen:
            raise SandboxError(f"{target} is mounted twice")
        seen.add(target)


def lookup_user(user: str, passwd: str, group: str) -> tuple[int, int]:
    """(uid, gid) of `user` (NAME, UID, NAME:GROUP or UID:GID) given the text of an
    image's /etc/passwd and /etc/group; "" is root. A name alone takes its primary group
    from passwd; a bare uid is also its gid."""
    if not user:
        return 0, 0
    name, _, grp = user.partition(":")

    def lookup(db: str, text: str, key: str) -> int:
        if key.isdigit():
            return int(key)
        try:
            for line in text.splitlines():
                fields = line.split(":")
                if fields and fields[0] == key:
                    return int(fields[2])
        except (IndexError, ValueError):
            pass
        raise SandboxError(f"unknown {'user' if db == 'passwd' else 'group'} {key!r} in image")

    uid = lookup("passwd", passwd, name)
    if grp:
        return uid, lookup("group", group, grp)
    if name.isdigit():
        return uid, uid
    for line in passwd.splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return uid, int(fields[3])
    return uid, uid


def image_user(image: Image, user: str) -> tuple[int, int]:
    """`lookup_user` against the image's own /etc/passwd and /etc/group."""
    if not user:
        return 0, 0

    def read(name: str) -> str:
        try:
            return (image.rootfs / "etc" / name).read_text()
        except OSError:
            return ""

    return lookup_user(user, read("passwd"), read("group") if ":" in user else "")


def oci_config(
    spec: SandboxSpec,
    image: Image,
    *,
    sandbox_id: str,
    hostname: str,
    uid: int,
    gid: int,
    init_dir: Path,
    channel_dir: Path,
    netns: Path | None = None,
) -> dict[str, Any]:
    """The bundle's config.json for one sandbox. `uid`/`gid` run the main process (see
    `image_user`); `init_dir` holds the torpor-init binary; `channel_dir` is the host
    channel's directory; `netns` is the network namespace of a sandbox on the sandbox
    network."""
    cmd = list(spec.cmd) or list(image.cmd)
    env = dict(e.split("=", 1) for e in image.env if "=" in e)
    env.setdefault("PATH", DEFAULT_PATH)
    env["HOSTNAME"] = hostname
    for e in spec.env:
        k, _, v = e.partition("=")
        env[k] = v
    # init always runs as root (it needs to set up /run/torpor and switch users); the
    # sandbox's user applies to the main process and is the default for exec.
    return {
        "ociVersion": "1.0.2",
        "process": {
            "args": [
                INIT_PATH, "init", *(["-u", f"{uid}:{gid}"] if uid or gid else []),
                "-H", CHANNEL_MOUNT,
                *(["--", *cmd] if cmd else []),
            ],
            "cwd": spec.workdir or image.workdir or "/",
            "env": [f"{k}={v}" for k, v in env.items()],
            "user": {"uid": 0, "gid": 0},
            "capabilities": {k: DEFAULT_CAPS for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}],
        },
        "root": {"path": str(image.rootfs), "readonly": False},
        "hostname": hostname,
        "mounts": _mounts(spec, init_dir, channel_dir),
        "linux": {
            "namespaces": [
                *({"type": t} for t in ("pid", "ipc", "uts", "mount")),
                {"type": "network", **({"path": str(netns)} if netns is not None else {})},
            ],
            "resources": _resources(spec),
            "cgroupsPath": f"/torpor/{sandbox_id}",
        },
    }  # fmt: skip


def _mounts(spec: SandboxSpec, init_dir: Path, channel_dir: Path) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
        {"destination": INIT_MOUNT, "type": "bind", "source": str(init_dir),
         "options": ["rbind", "ro"]},
        {"destination": CHANNEL_MOUNT, "type": "bind", "source": str(channel_dir),
         "options": ["rbind", "rw"]},
        # torpor-init's process records live on a plain tmpfs, not on the overlay: this
        # gVisor's overlay leaves a whiteout (a device file in the sandbox's memory,
        # saved and restored with every checkpoint) for every name deleted or renamed
        # away, so one per exec would pile up for the sandbox's whole life.
        {"destination": INIT_DIR, "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]},
    ]  # fmt: skip
    for t in spec.tmpfs:
        mounts.append({"destination": t.target, "type": "tmpfs", "source": "tmpfs",
                       "options": t.options()})  # fmt: skip
    for v in spec.volumes:
        mounts.append({"destination": v.target, "type": "bind", "source": v.host,
                       "options": ["rbind", "ro" if v.readonly else "rw"]})  # fmt: skip
    return mounts


def _resources(spec: SandboxSpec) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if spec.memory:
        resources["memory"] = {"limit": spec.memory}
    if spec.cpus:
        resources["cpu"] = {"quota": int(spec.cpus * 100_000), "period": 100_000}
    if spec.pids:
        resources["pids"] = {"limit": spec.pids}
    return resources
