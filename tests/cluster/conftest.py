"""A cluster of "machines" for tests: each machine is a TORPOR_HOME of its own (its own hot
copies, sandboxes and standbys, as separate hosts have) running a `torpor worker`
process; all of them share one PostgreSQL database (a throwaway cluster on loopback) and
one S3 API server (moto on loopback). The test process drives sessions through a Runtime
of a further home that runs no turns."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import remove_home
from torpor.context.pgtemp import TempCluster, server_bindir
from torpor.runtime.checkpoints import SnapshotCheckpointStorage
from torpor.runtime.core import Runtime
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore
from torpor.snapshots import open_store

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_REGION": "us-east-1"}  # fmt: skip

needs_pg = pytest.mark.skipif(server_bindir() is None, reason="no PostgreSQL server binaries")


class Machine:
    """One machine: a home and its `torpor worker` process (started, killed, restarted)."""

    def __init__(self, name: str, home: Path, db: str, store: str, env: dict[str, str]) -> None:
        self.name, self.home, self.db, self.store, self.env = name, home, db, store, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "worker.log"

    def start(self, *args: str) -> Machine:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "torpor.cli.main", "worker", "--db", self.db,
                 "--store", self.store, "--pool", "0", *args],
                env=dict(self.env, TORPOR_HOME=str(self.home)), stdout=out, stderr=out,
            )  # fmt: skip
        return self

    def kill(self) -> None:
        """The machine is lost: kill -9 its worker and take its hot copies with it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


class Cluster:
    def __init__(self, root: Path, db: str, store: str) -> None:
        self.root, self.db, self.store = root, db, store
        self.env = dict(os.environ, TORPOR_IMAGES=str(ImageStore().root), **S3_ENV)
        self.machines: list[Machine] = []
        home = root / "client"
        engine = GVisorEngine(home, images=ImageStore(),
                              checkpoints=SnapshotCheckpointStorage(open_store(store), home))
        self.rt = Runtime(db=db, store=store, home=home, engine=engine)  # fmt: skip

    def machine(self, *args: str) -> Machine:
        n = len(self.machines)
        m = Machine(f"m{n}", self.root / f"m{n}", self.db, self.store, self.env)
        m.home.mkdir(parents=True)
        self.machines.append(m.start(*args))
        return m

    def output(self) -> str:
        return "\n".join(f"--- {m.name}:\n{m.output()}" for m in self.machines)

    def close(self) -> None:
        for m in self.machines:
            m.stop()
        self.rt.close()
        for m in self.machines:  # and what a killed machine left running
            remove_home(m.home)
        remove_home(self.root)


@pytest.fixture()
def cluster(pg: TempCluster, s3_endpoint: str) -> Iterator[Cluster]:
    import boto3

    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(k, raising=False)
        with contextlib.suppress(Exception):
            boto3.client("s3").create_bucket(Bucket="torpor-cluster")
        ImageStore().build_base()
        root = Path(tempfile.mkdtemp(prefix="torpor-cluster-"))
        c = Cluster(root, pg.url(pg.create_db()),
                    f"s3://torpor-cluster/{uuid.uuid4().hex[:8]}")  # fmt: skip
        try:
            yield c
        finally:
            c.close()


def wait_until(pred, timeout: float, what: str, cluster: Cluster) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        for m in cluster.machines:
            if m.proc is not None and m.proc.poll() not in (None, 0, -9):
                raise AssertionError(f"{m.name} died\n{cluster.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout} s\n{cluster.output()}")
        time.sleep(0.02)
