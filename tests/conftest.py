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
