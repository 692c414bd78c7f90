"""A throwaway local PostgreSQL cluster (initdb + pg_ctl) for tests and benchmarks.

Runs the server binaries of the newest /usr/lib/postgresql/*/bin, as the `postgres` system
user when we are root (initdb refuses root), on a free loopback port with its unix socket and
data directory in a temp dir that `stop()` removes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def server_bindir() -> Path | None:
    """The newest installed PostgreSQL server bin dir, or None."""
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        ver = Path(d).parent.name
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            found.append((int(ver) if ver.isdigit() else 0, Path(d)))
    return max(found)[1] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempCluster:
    """`with TempCluster() as pg: pg.url()` — a running cluster, stopped and removed after."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or server_bindir()
        if found is None:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bindir = found
        self.root = Path(tempfile.mkdtemp(prefix="torpor-pg-"))
        self.port = free_port()
        self.data, self.sock, self.logfile = (self.root / "data", self.root / "sock",
                                              self.root / "pg.log")
        self.as_root = os.geteuid() == 0

    def _own(self, path: Path) -> None:
        if self.as_root:
            shutil.chown(path, "postgres", "postgres")

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", "postgres", "--", *argv] if self.as_root else list(argv)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip()}\n{log[-2000:]}")
        return res

    def pg_ctl(self, *args: str) -> None:
        self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile),
                 "-w", "-t", "60", *args)

    def init(self) -> None:
        os.chmod(self.root, 0o755)
        self._own(self.root)
        self.sock.mkdir()
        self._own(self.sock)
        self.run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                 "-U", "postgres", "-E", "UTF8", "--no-instructions")

    def start(self) -> None:
        self.pg_ctl("-o", f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 "
                    "-c max_connections=100 -c shared_buffers=32MB", "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_db(self) -> str:
        """A new empty database; returns its name."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def __enter__(self) -> TempCluster:
        try:
            self.init()
            self.start()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
