"""Fixtures shared by several test directories."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from torpor.db.pgtemp import TempCluster, server_bindir
from torpor.runtime.checkpoints import SnapshotCheckpointStorage
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore
from torpor.snapshots import open_store


def remove_home(home: Path) -> None:
    """Delete whatever runsc still runs for a test home's sandboxes, then the home."""
    for d in (home / "sandboxes").glob("*") if (home / "sandboxes").exists() else []:
        subprocess.run(["runsc", f"--root={home / 'runsc'}", "delete", "-force", d.name],
                       capture_output=True)  # fmt: skip
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def home() -> Iterator[Path]:
    """A TORPOR_HOME of the test's own (every sandbox and checkpoint in it is the test's),
    under a short path (runsc's sockets live there), removed at the end with whatever
    runsc still runs for it."""
    path = Path(tempfile.mkdtemp(prefix="torpor-home-"))
    yield path
    remove_home(path)


@pytest.fixture(scope="session")
def rt_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="torpor-rt-home-"))
    yield home
    remove_home(home)


@pytest.fixture(scope="session")
def rt_engine(rt_home: Path) -> GVisorEngine:
    images = ImageStore()
    images.build_base()
    store = open_store(f"file://{rt_home / 'snapshots'}")
    return GVisorEngine(rt_home, images=images,
                        checkpoints=SnapshotCheckpointStorage(store, rt_home))  # fmt: skip


@pytest.fixture(scope="session")
def pg() -> Iterator[TempCluster]:
    """One real PostgreSQL cluster (initdb + pg_ctl on a loopback port) for the whole test
    session, shared by every directory; tests take a database of their own from it."""
    if server_bindir() is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    with TempCluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a new database of the shared cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'torpor.db'}"
    cluster: TempCluster = request.getfixturevalue("pg")
    return cluster.url(cluster.create_db())


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API server (moto's standalone server) on a free loopback port, one per
    test session; tests use their own buckets or prefixes."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.stop()
