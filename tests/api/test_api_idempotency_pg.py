"""Idempotency across processes: two `torpor serve` processes on one PostgreSQL database,
each posting the same message with the same Idempotency-Key at the same moment, queue it
once (the message and its key are one row under a unique index, written in one
transaction)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import free_port
from torpor.context.pgtemp import TempCluster, server_bindir
from torpor.runtime.db import RuntimeDB
from torpor.sandbox.images import ImageStore

pytestmark = pytest.mark.skipif(server_bindir() is None, reason="no PostgreSQL server binaries")
TRIES = 50


@pytest.fixture(scope="module")
def two_servers(rt_home: Path, pg: TempCluster, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[str, list[str]]]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("idem")
    db = pg.url(pg.create_db())
    env = dict(os.environ, TORPOR_HOME=str(rt_home), TORPOR_IMAGES=str(ImageStore().root),
               OPENAI_API_KEY="never-sent")  # fmt: skip
    procs, urls = [], []
    for i in range(2):
        port = free_port()
        log = (tmp / f"serve-{i}.log").open("wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "torpor.cli.main", "serve", "--db", db, "--store",
             f"file://{tmp / 'snapshots'}", "--port", str(port), "--workers", "0",
             "--standby", "0"], env=env, stdout=log, stderr=log))  # fmt: skip
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url, p in zip(urls, procs, strict=True):
            deadline = time.time() + 60
            while True:
                assert p.poll() is None, (tmp / "serve-0.log").read_text()
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.time() < deadline, "server did not come up"
                time.sleep(0.2)
        yield db, urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def test_same_key_from_two_processes_queues_one_message(two_servers) -> None:
    db, (a, b) = two_servers
    sid = httpx.post(f"{a}/v1/sessions", json={"model": "openai:gpt-4o-mini"}, timeout=30
                     ).json()["id"]  # fmt: skip
    answers: list[list[dict]] = []
    with httpx.Client(timeout=30) as ca, httpx.Client(timeout=30) as cb:
        for i in range(TRIES):
            key = f"key-{i}"
            gate = threading.Barrier(2)
            got: list[dict] = []

            def post(c: httpx.Client, url: str, key: str = key, gate: threading.Barrier = gate,
                     got: list[dict] = got) -> None:  # fmt: skip
                gate.wait()
                r = c.post(f"{url}/v1/sessions/{sid}/messages", json={"text": f"msg {key}"},
                           headers={"Idempotency-Key": key})  # fmt: skip
                assert r.status_code == 202, r.text
                got.append(r.json())

            ts = [threading.Thread(target=post, args=(c, u)) for c, u in ((ca, a), (cb, b))]
            for t in ts:
                t.start()
            for t in ts:
                t.join(60)
            answers.append(got)
    rdb = RuntimeDB(db)
    try:
        texts = [t for _, t in rdb.unread(sid)]
    finally:
        rdb.close()
    assert sorted(texts) == sorted(f"msg key-{i}" for i in range(TRIES))  # each once
    for got in answers:
        assert len(got) == 2 and got[0]["turn"] == got[1]["turn"]
        assert sorted(g["duplicate"] for g in got) == [False, True]
