"""A real `torpor serve --e2b` for the E2B SDK tests: a process of its own on a home of its
own, with tokens (so the API keys are checked): two tenants with the sandboxes scope and
one token without it. Each test gets the three E2B settings in its environment, with
tenant A's token as E2B_API_KEY."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import remove_home
from torpor.api.tokens import TokenStore
from torpor.runtime.db import RuntimeDB
from torpor.sandbox.images import ImageStore

pytest.importorskip("e2b", reason="the E2B SDK (the test extra: e2b==2.63.*)")

TORPOR = [sys.executable, "-m", "torpor.cli.main"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class E2BServer:
    url: str  # the E2B port (E2B_API_URL and E2B_SANDBOX_URL)
    api: str  # the native API's
    key: str  # tenant A (sandboxes scope)
    other_key: str  # tenant B (sandboxes scope)
    drive_key: str  # tenant A, drive scope only
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text()[-5000:]


@pytest.fixture(scope="session")
def e2b_server() -> Iterator[E2BServer]:
    home = Path(tempfile.mkdtemp(prefix="torpor-e2b-home-"))
    db = f"sqlite:///{home / 'torpor.db'}"
    rdb = RuntimeDB(db)
    tokens = TokenStore(rdb)
    key = tokens.create("tenant-a", ["sandboxes"])[0]
    other = tokens.create("tenant-b", ["sandboxes"])[0]
    drive = tokens.create("tenant-a", ["drive"])[0]
    rdb.close()
    port, e2b = free_port(), free_port()
    log = home / "serve.log"
    env = dict(os.environ, TORPOR_HOME=str(home), TORPOR_LOG=db,
               TORPOR_SNAPSHOTS=f"file://{home / 'snapshots'}",
               TORPOR_IMAGES=str(ImageStore().root))  # fmt: skip
    with log.open("wb") as err:
        proc = subprocess.Popen([*TORPOR, "serve", "--port", str(port), "--e2b", str(e2b),
                                 "--workers", "0", "--standby", "0"],
                                env=env, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    deadline = time.monotonic() + 60
    while "serving http" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    server = E2BServer(f"http://127.0.0.1:{e2b}", f"http://127.0.0.1:{port}", key, other,
                       drive, proc, log)  # fmt: skip
    yield server
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    remove_home(home)


@pytest.fixture(autouse=True)
def e2b_env(e2b_server: E2BServer, monkeypatch: pytest.MonkeyPatch) -> E2BServer:
    """The three settings that point the unchanged SDK at torpor."""
    monkeypatch.setenv("E2B_API_URL", e2b_server.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", e2b_server.url)
    monkeypatch.setenv("E2B_API_KEY", e2b_server.key)
    return e2b_server
