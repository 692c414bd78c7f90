"""Builds and locates torpor-init, the static C program that is PID 1 of every sandbox.

The source ships inside the package (sandbox/init/torpor-init.c); the binary is compiled
once, statically, into TORPOR_HOME/bin/init-<source hash>-<compiler>/init, and that
directory is bind-mounted read-only at /.torpor in each sandbox. Keying the directory on
the source hash means an upgraded torpor never runs a stale init.

It is linked against musl (`musl-gcc`, Debian's musl-tools) rather than glibc: on the
pinned gVisor, every run of a static glibc binary leaves about 80 KB behind in the
sandbox's memory (measured: 100 runs of an empty `int main(){}` grew the checkpoint from
0.8 to 4.8 MB; musl-static and dynamic binaries leave nothing), and torpor runs this
binary for every exec, file copy and tool call. Without musl-gcc it falls back to
`gcc -static` and says so.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from torpor.files import TMP_PREFIX, sweep, writer_tag
from torpor.sandbox.engine import SandboxError

INIT_MOUNT = "/.torpor"
INIT_PATH = f"{INIT_MOUNT}/init"


def init_source() -> bytes:
    return resources.files("torpor.sandbox").joinpath("init/torpor-init.c").read_bytes()


def ensure_init_binary(home: Path) -> Path:
    """Return the directory holding a built `init` for the current source, building it if
    needed (serialised by a lock so concurrent callers build once)."""
    src = init_source()
    digest = hashlib.sha256(src).hexdigest()[:12]
    bindir = home / "bin"
    flavour = "musl" if shutil.which("musl-gcc") else "glibc"
    target = bindir / f"init-{digest}-{flavour}"
    if (target / "init").is_file():
        return target
    bindir.mkdir(parents=True, exist_ok=True)
    with open(bindir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "init").is_file():
            return target
        gcc = shutil.which("musl-gcc")
        if gcc is None:
            gcc = shutil.which("gcc")
            if gcc is None:
                raise SandboxError(
                    "musl-gcc (or gcc) is needed to build torpor-init: run scripts/setup.sh "
                    "(or apt-get install musl-tools)"
                )
            print(
                "torpor: musl-gcc not found (apt-get install musl-tools): building torpor-init "
                "with glibc, whose static binaries leak sandbox memory on this gVisor",
                file=sys.stderr,
            )
        sweep(bindir)  # builds a killed process left
        tmp = bindir / f"{TMP_PREFIX}{writer_tag()}{digest}"
        tmp.mkdir()
        (tmp / "torpor-init.c").write_bytes(src)
        proc = subprocess.run(
            [gcc, "-static", "-O2", "-Wall", "-o", str(tmp / "init"), str(tmp / "torpor-init.c")],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise SandboxError(f"building torpor-init failed (is libc6-dev installed?): {last}")
        (tmp / "torpor-init.c").unlink()
        os.chmod(tmp, 0o755)
        os.rename(tmp, target)
        return target
