"""Sandbox networking for the `sandbox` network mode, and port publishing.

Each sandbox with `--network sandbox` gets two network namespaces joined by a veth pair:
the sandbox's own (`tps-ID`, address 10.88.0.2/24, which gVisor's netstack takes over) and
a peer (`tpp-ID`, 10.88.0.1/24) that belongs to torpor. Nothing is routed to or from the
host's namespaces and there is no NAT, so the sandbox reaches no network but its peer. All
sandboxes use the same addresses, which is what lets a checkpoint be restored as a fork
into fresh namespaces without its netstack noticing.

`-p HOST:CTR` is served by a small proxy process (torpor.sandbox.portproxy) that listens on
127.0.0.1:HOST in the host's namespace and connects from the peer namespace to
10.88.0.2:CTR. Before a checkpoint the proxy is stopped, closing every proxied
connection (an open external connection would make gVisor refuse to checkpoint); it is
started again once the sandbox runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from torpor.sandbox.engine import PortMapping, SandboxError

SANDBOX_ADDR = "10.88.0.2"
PEER_ADDR = "10.88.0.1"
PREFIX = 24


def _ns(sid: str) -> str:
    return f"tps-{sid}"


def _peer_ns(sid: str) -> str:
    return f"tpp-{sid}"


def netns_path(sid: str) -> Path:
    return Path("/run/netns") / _ns(sid)


def runsc_prefix(sid: str) -> list[str]:
    """The command prefix under which `runsc run|restore` must start for this sandbox.

    This runsc decides that it was given the host's root network namespace when
    /proc/sys/net/core/rmem_default exists, which on current kernels is true in every
    namespace, and then refuses to start. So runsc runs in a private mount namespace in
    which an empty tmpfs hides /proc/sys/net/core (nothing else it does reads there).
    /proc/sys/net entries are per network namespace, so the mask only holds for the
    namespace it was mounted from: runsc is started inside the sandbox's namespace
    (nsenter; `ip netns exec` would also remount /sys and hide the cgroups), which the
    OCI spec names too.
    """
    return [
        "nsenter", f"--net={netns_path(sid)}",
        "unshare", "--mount", "--propagation", "private",
        "/bin/sh", "-c", 'mount -t tmpfs -o size=4k,mode=555 none /proc/sys/net/core && exec "$@"',
        "torpor-netns",
    ]  # fmt: skip


def peer_netns_path(sid: str) -> Path:
    return Path("/run/netns") / _peer_ns(sid)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise SandboxError("`ip` (iproute2) is needed for --network sandbox") from None
    if check and proc.returncode != 0:
        raise SandboxError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def setup(home: Path, sid: str) -> str:
    """Create the sandbox's namespaces and veth pair; returns the sandbox's address."""
    teardown(home, sid)
    ns, peer = _ns(sid), _peer_ns(sid)
    host_a, host_b = f"tpa{sid[:12]}", f"tpb{sid[:12]}"
    try:
        _ip("netns", "add", ns)
        _ip("netns", "add", peer)
        _ip("link", "add", host_a, "type", "veth", "peer", "name", host_b)
        _ip("link", "set", host_a, "netns", ns)
        _ip("link", "set", host_b, "netns", peer)
        _ip("-n", ns, "link", "set", host_a, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{SANDBOX_ADDR}/{PREFIX}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", PEER_ADDR)
        _ip("-n", peer, "addr", "add", f"{PEER_ADDR}/{PREFIX}", "dev", host_b)
        _ip("-n", peer, "link", "set", host_b, "up")
        _ip("-n", peer, "link", "set", "lo", "up")
    except SandboxError:
        teardown(home, sid)
        raise
    return SANDBOX_ADDR


def teardown(home: Path, sid: str) -> None:
    stop_proxy(home, sid)
    for ns in (_ns(sid), _peer_ns(sid)):
        if (Path("/run/netns") / ns).exists():
            _ip("netns", "del", ns, check=False)


def _pidfile(home: Path, sid: str) -> Path:
    return home / "sandboxes" / sid / "proxy.pid"


def start_proxy(home: Path, sid: str, ports: list[PortMapping]) -> None:
    """Start the port proxy; returns once it listens, or raises with its reason."""
    stop_proxy(home, sid)
    args = [
        sys.executable, "-m", "torpor.sandbox.portproxy",
        "--netns", str(peer_netns_path(sid)), "--target", SANDBOX_ADDR,
    ]  # fmt: skip
    for p in ports:
        args += ["--map", f"{p.host_port}:{p.sandbox_port}"]
    log = home / "sandboxes" / sid / "proxy.log"
    r, w = os.pipe()
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            [*args, "--ready-fd", str(w)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            pass_fds=(w,),
            start_new_session=True,
        )
    os.close(w)
    with os.fdopen(r, "rb") as ready:
        msg = ready.read().decode(errors="replace").strip()
    if msg != "ok":
        proc.wait(timeout=5)
        raise SandboxError(msg or f"port proxy failed to start (see {log})")
    _pidfile(home, sid).write_text(str(proc.pid))


def stop_proxy(home: Path, sid: str) -> None:
    pf = _pidfile(home, sid)
    try:
        pid = int(pf.read_text())
    except (FileNotFoundError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if b"torpor.sandbox.portproxy" not in cmdline:  # gone, or the pid was reused
        pf.unlink(missing_ok=True)
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            # The proxy is our child only when started by this process; reap if so.
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
            except ChildProcessError:
                pass
            os.kill(pid, 0)
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pf.unlink(missing_ok=True)
