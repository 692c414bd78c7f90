"""Fixtures shared by several test directories."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from torpor.runtime.checkpoints import SnapshotCheckpointStorage
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore
from torpor.snapshots import open_store


@pytest.fixture(scope="session")
def rt_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="torpor-rt-home-"))
    yield home
    for d in (home / "sandboxes").glob("*") if (home / "sandboxes").exists() else []:
        subprocess.run(["runsc", f"--root={home / 'runsc'}", "delete", "-force", d.name],
                       capture_output=True)  # fmt: skip
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def rt_engine(rt_home: Path) -> GVisorEngine:
    images = ImageStore()
    images.build_base()
    store = open_store(f"file://{rt_home / 'snapshots'}")
    return GVisorEngine(rt_home, images=images,
                        checkpoints=SnapshotCheckpointStorage(store, rt_home))  # fmt: skip
