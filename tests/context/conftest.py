"""Fixtures for the context log tests: SQLite logs in temp dirs and databases of the
shared throwaway PostgreSQL cluster (`pg`, tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from torpor.context import ContextLog, open_log
from torpor.db.pgtemp import TempCluster


@pytest.fixture
def pg_url(pg: TempCluster) -> str:
    """A fresh, empty database of the shared cluster."""
    return pg.url(pg.create_db())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'context.db'}"
    pg: TempCluster = request.getfixturevalue("pg")
    return pg.url(pg.create_db()) + f"?blobs=file://{tmp_path / 'blobs'}"


@pytest.fixture
def log(store_url: str) -> Iterator[ContextLog]:
    with open_log(store_url) as lg:
        yield lg


# A writer that appends one entry at a time as fast as it can and prints every seq the log
# acknowledged. On a lost connection it retries the same entry with the same idempotency key.
WRITER = r"""
import sys, time
from torpor.context import Entry, open_log
url, session, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = open_log(url)
epoch = log.acquire(session)
print(f"epoch {epoch}", flush=True)
i = start
while True:
    try:
        seqs = log.append(session, [Entry.message("user", f"n{i}", meta={"i": i})],
                          epoch=epoch, idempotency_key=f"k{i}")
    except Exception as exc:
        print(f"retry {type(exc).__name__}", flush=True)
        time.sleep(0.05)
        continue
    print(f"ack {seqs[0]} {i}", flush=True)
    i += 1
"""


def start_writer(url: str, session: str, start: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, url, session, str(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
