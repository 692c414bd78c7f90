"""Fixtures for API tests: a real gVisor engine (or, for the API's own logic, the test
double of tests/fakeengine.py), a Runtime on a temp SQLite DB, and the real app served by
uvicorn on a free loopback port (or driven in-process where a socket is not the point)."""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from torpor.api.app import Limits, create_app
from torpor.api.tokens import TokenStore
from torpor.runtime.core import Runtime
from torpor.sandbox.engine import Engine
from torpor.sandbox.gvisor import GVisorEngine


@pytest.fixture(autouse=True, scope="module")
def openai_configured() -> Iterator[None]:
    """Sessions with an `openai:` model are refused unless the provider is configured; the
    API tests that create them never send their turns, so any key will do."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", "test-key-never-sent")
        yield


@pytest.fixture(scope="session")
def api_home(rt_home: Path) -> Path:
    """The API tests share the runtime tests' engine home (tests/conftest.py)."""
    return rt_home


@pytest.fixture(scope="session")
def api_engine(rt_engine: GVisorEngine) -> GVisorEngine:
    return rt_engine


def make_runtime(home: Path, engine: Engine, db: Path) -> Runtime:
    return Runtime(db=f"sqlite:///{db}", store=f"file://{home / 'snapshots'}", home=home,
                   engine=engine)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    runtime: Runtime
    tokens: TokenStore
    db: Path

    def token(self, tenant: str, *scopes: str) -> str:
        return self.tokens.create(tenant, list(scopes) or ["drive"])[0]

    def http(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and t.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(60)


@pytest.fixture(scope="session")
def server(api_home: Path, api_engine: GVisorEngine) -> Iterator[Server]:
    """One real server for the module's tests (tenants keep them apart), 2 worker threads."""
    db = api_home / "api.db"
    rt = make_runtime(api_home, api_engine, db)
    app = create_app(rt, auth=True, workers=2, limits=Limits(turns_per_tenant=4),
                     scripts=Path(tempfile.gettempdir()))  # the tests' scripts live there
    with serve(app) as url:
        yield Server(url, rt, app.state.tokens, db)
    for row in rt.sessions():
        with contextlib.suppress(Exception):
            api_engine.remove(f"s-{row.id}", force=True)
    rt.close()


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server whose runtime drives the test double of the engine (tests/
    fakeengine.py), for tests of the API's own logic (tokens, tenants, scopes, bad input):
    no root, runsc or base image. Its worker threads take no turn those tests post."""
    from tests.fakeengine import FakeEngine

    home = tmp_path_factory.mktemp("fake-api")
    rt = make_runtime(home, FakeEngine(home / "engine"), home / "api.db")
    app = create_app(rt, auth=True, workers=2, limits=Limits(turns_per_tenant=4),
                     scripts=Path(tempfile.gettempdir()))  # fmt: skip
    with serve(app) as url:
        yield Server(url, rt, app.state.tokens, home / "api.db")
    rt.close()


@pytest.fixture()
def script(tmp_path: Path) -> Callable[[list[dict[str, Any]]], str]:
    """Write a scripted model file (a new one per call: a Runtime caches models by spec)."""
    n = [0]

    def make(turns: list[dict[str, Any]]) -> str:
        n[0] += 1
        path = tmp_path / f"turns-{n[0]}.jsonl"
        path.write_text("".join(json.dumps(t) + "\n" for t in turns))
        return f"script:{path}"

    return make


def shell(command: str) -> dict[str, Any]:
    return {"name": "shell", "arguments": {"command": command}}


def read_sse(resp: httpx.Response, stop: Callable[[dict[str, Any]], bool],
             out: list[dict[str, Any]]) -> None:  # fmt: skip
    """Collect events ({id, event, data}) from a streaming response until stop(event)."""
    cur: dict[str, Any] = {}
    for line in resp.iter_lines():
        if line == "":
            if "data" in cur:
                cur["data"] = json.loads(cur["data"])
                out.append(cur)
                if stop(cur):
                    return
            cur = {}
        elif not line.startswith(":"):
            k, _, v = line.partition(": ")
            cur[k] = int(v) if k == "id" else v
