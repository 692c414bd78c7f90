"""Fixtures for the snapshot store tests: sample checkpoint data, stores, an S3 server."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from torpor.snapshots import SnapshotStore, open_store

PAGE = 4096


def make_pages(rnd: random.Random, npages: int) -> bytearray:
    """Page-aligned memory-image-like bytes: zero pages, repeated pages, text, noise."""
    common = [rnd.randbytes(PAGE) for _ in range(8)]
    text = (b"def handler(request):\n    return render(request, 'index.html')\n" * 70)[:PAGE]
    out = bytearray()
    for i in range(npages):
        r = rnd.random()
        if r < 0.25:
            out += bytes(PAGE)
        elif r < 0.40:
            out += common[i % len(common)]
        elif r < 0.65:
            out += text[: PAGE - 8] + i.to_bytes(8, "little")
        elif r < 0.85:
            half = rnd.randbytes(PAGE // 2)
            out += half + bytes(PAGE // 2)
        else:
            out += rnd.randbytes(PAGE)
    return out


def make_checkpoint(dest: Path, seed: int = 0, npages: int = 1024,
                    state_size: int = 200_000) -> Path:
    """A gVisor-checkpoint-like directory: checkpoint.img, pages.img, pages_meta.img."""
    rnd = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "pages.img").write_bytes(make_pages(rnd, npages))
    state = bytearray()
    while len(state) < state_size:
        state += b'{"fd": %d, "path": "/proc/%d/status", "flags": 32768}\n' % (
            rnd.randrange(1024), rnd.randrange(4096))
        if rnd.random() < 0.1:
            state += rnd.randbytes(rnd.randrange(16, 512))
    (dest / "checkpoint.img").write_bytes(bytes(state[:state_size]))
    meta = b"".join(i.to_bytes(8, "little") + (1).to_bytes(8, "little") for i in range(npages))
    (dest / "pages_meta.img").write_bytes(meta)
    return dest


def mutate_checkpoint(src: Path, seed: int, pages_changed: int = 20,
                      state_edits: int = 3) -> None:
    """A later checkpoint of the same sandbox: a few pages dirtied, state edited in place."""
    rnd = random.Random(seed)
    pages = bytearray((src / "pages.img").read_bytes())
    npages = len(pages) // PAGE
    for _ in range(pages_changed):
        p = rnd.randrange(npages)
        pages[p * PAGE:(p + 1) * PAGE] = rnd.randbytes(PAGE)
    (src / "pages.img").write_bytes(pages)
    state = bytearray((src / "checkpoint.img").read_bytes())
    for _ in range(state_edits):
        pos = rnd.randrange(len(state))
        state[pos:pos] = b"new fd table entry %d\n" % rnd.randrange(10**6)
    (src / "checkpoint.img").write_bytes(state)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "ckpt", seed=1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SnapshotStore]:
    s = open_store(f"file://{tmp_path}/store", use_key_env=False)
    yield s
    s.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    return s3_endpoint


@pytest.fixture
def s3_bucket(s3_env: str) -> str:
    import boto3

    name = f"snap-{os.urandom(4).hex()}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


class Data:
    """Sample-data helpers handed to tests as the `data` fixture."""

    make_pages = staticmethod(make_pages)
    make_checkpoint = staticmethod(make_checkpoint)
    mutate_checkpoint = staticmethod(mutate_checkpoint)
    tree_bytes = staticmethod(tree_bytes)


@pytest.fixture
def data() -> type[Data]:
    return Data
