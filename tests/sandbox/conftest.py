"""Fixtures for the gVisor engine tests: a real runsc, a private TORPOR_HOME, the base image."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from torpor.sandbox.engine import SandboxSpec
from torpor.sandbox.factory import open_engine
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore

TORPOR = str(Path(sys.executable).with_name("torpor"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test here needs root and runsc but those of a module that says otherwise
    # (NEEDS_RUNSC = False: pure logic, such as the OCI bundle); those are marked `runsc`.
    missing = os.geteuid() != 0 or shutil.which("runsc") is None
    skip = pytest.mark.skip(reason="needs root and runsc (run scripts/setup.sh)")
    for item in items:
        module = getattr(item, "module", None)
        if "tests/sandbox/" in str(item.fspath) and getattr(module, "NEEDS_RUNSC", True):
            item.add_marker(pytest.mark.runsc)
            if missing:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def torpor_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="torpor-test-home-"))
    yield home
    # Stop anything a failed test left running before deleting its state.
    for d in (home / "sandboxes").glob("*") if (home / "sandboxes").exists() else []:
        subprocess.run(
            ["runsc", f"--root={home / 'runsc'}", "delete", "-force", d.name], capture_output=True
        )
        for ns in (f"tps-{d.name}", f"tpp-{d.name}"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pid = d / "proxy.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def images() -> ImageStore:
    store = ImageStore()
    store.build_base()  # cached: built once by scripts/setup.sh
    return store


@pytest.fixture(scope="session")
def engine(torpor_home: Path, images: ImageStore) -> GVisorEngine:
    # open_engine runs torpor's runsc self-test (the doctor's gate); GVisorEngine() alone
    # does not.
    return open_engine(torpor_home, images=images)


@pytest.fixture()
def sandbox(engine: GVisorEngine) -> Iterator[str]:
    name = f"t-{secrets.token_hex(4)}"
    engine.run(SandboxSpec(image="base"), name=name)
    yield name
    with contextlib.suppress(Exception):
        engine.remove(name, force=True)


@pytest.fixture()
def cli(torpor_home: Path):  # type: ignore[no-untyped-def]
    env = dict(os.environ, TORPOR_HOME=str(torpor_home), TORPOR_IMAGES=str(ImageStore().root))

    def run(
        *args: str, input: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [TORPOR, *args], input=input, capture_output=True, env=env, timeout=timeout
        )

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def port() -> int:
    return free_port()
