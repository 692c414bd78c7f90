"""Fixtures for the image store tests: a real base build, a local registry, OCI images."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from torpor.sandbox.images import BASE_IMAGE, Image, ImageNotFound, ImageStore

TOOLS = ("mmdebstrap", "skopeo", "umoci", "docker-registry")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        why = f"needs root and {', '.join(missing)}" if missing else "needs root"
        for item in items:
            if "tests/images/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=why))


def run(*argv: str | Path) -> str:
    return subprocess.run(
        [str(a) for a in argv], check=True, capture_output=True, text=True
    ).stdout


@dataclass
class Build:
    store: ImageStore
    image: Image
    messages: list[str]
    seconds: float
    replaced_digest: str


@pytest.fixture(scope="session")
def forced_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    """One real mmdebstrap build, forced over a stale torpor/base in a fresh store."""
    root = tmp_path_factory.mktemp("built-images")
    store = ImageStore(root)
    # A stale entry the forced build must replace.
    stale = root / "stale"
    (stale / "rootfs").mkdir(parents=True)
    (stale / "rootfs" / "STALE").write_text("old\n")
    stale_digest = "sha256:" + "0" * 64
    from torpor.sandbox import images as mod

    (stale / "image.json").write_text(json.dumps({"name": BASE_IMAGE, "digest": stale_digest}))
    stale.rename(root / mod._dir_name(BASE_IMAGE))
    assert store.get("base").digest == stale_digest
    messages: list[str] = []
    t0 = time.monotonic()
    img = store.build_base(force=True, progress=messages.append)
    yield Build(store, img, messages, time.monotonic() - t0, stale_digest)
    store.remove(BASE_IMAGE)  # 226 MB; pytest keeps its last temp dirs around


@pytest.fixture(scope="session")
def base_store(request: pytest.FixtureRequest) -> ImageStore:
    """The store to read torpor/base from: $TORPOR_IMAGES if it has it (the set-up script
    builds it there), else the store of our one forced build. Tests only read from it."""
    env = os.environ.get("TORPOR_IMAGES")
    if env:
        store = ImageStore(Path(env))
        try:
            store.get(BASE_IMAGE)
            return store
        except ImageNotFound:
            pass
    return request.getfixturevalue("forced_build").store


@pytest.fixture(scope="session")
def base_image(base_store: ImageStore) -> Image:
    return base_store.get(BASE_IMAGE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """A Debian docker-registry on 127.0.0.1 over plain HTTP; yields 'HOST:PORT'."""
    d = tmp_path_factory.mktemp("registry")
    port = _free_port()
    cfg = d / "config.yml"
    cfg.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        "storage:\n  filesystem:\n    rootdirectory: " + str(d / "data") + "\n"
        "http:\n  addr: 127.0.0.1:" + str(port) + "\n"
    )
    log = open(d / "log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=log)
    addr = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"http://{addr}/v2/", timeout=1) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"docker-registry did not start: {(d / 'log').read_text()[-500:]}")
        time.sleep(0.1)
    yield addr
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@dataclass
class Layout:
    path: Path
    tag: str
    digest: str


@pytest.fixture(scope="session")
def demo_layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """A small OCI image made with umoci: a few files and a full config."""
    d = tmp_path_factory.mktemp("demo-oci")
    layout, bundle = d / "layout", d / "bundle"
    ref = f"{layout}:v1"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", ref)
    run("umoci", "unpack", "--image", ref, bundle)
    rootfs = bundle / "rootfs"
    (rootfs / "app").mkdir()
    (rootfs / "app" / "hello.txt").write_text("hello from demo\n")
    (rootfs / "app" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (rootfs / "app" / "run.sh").chmod(0o755)
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "demo.conf").write_text("answer = 42\n")
    (rootfs / "app" / "link").symlink_to("hello.txt")
    run("umoci", "repack", "--image", ref, bundle)
    run(
        "umoci", "config", "--image", ref,
        "--config.env", "GREETING=hi there",
        "--config.env", "PATH=/app:/bin",
        "--config.entrypoint", "/app/run.sh",
        "--config.cmd", "--verbose",
        "--config.cmd", "x y",
        "--config.workingdir", "/app",
        "--config.user", "1000:1000",
    )
    run("umoci", "gc", "--layout", layout)
    index = json.loads((layout / "index.json").read_text())
    (desc,) = [
        m for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    ]
    return Layout(layout, "v1", desc["digest"])


@pytest.fixture(scope="session")
def pushed(registry: str, demo_layout: Layout) -> str:
    """The demo image pushed to the local registry as demo:v1 and demo:latest."""
    for tag in ("v1", "latest"):
        run(
            "skopeo", "copy", "--quiet", "--dest-tls-verify=false",
            f"oci:{demo_layout.path}:{demo_layout.tag}",
            f"docker://{registry}/demo:{tag}",
        )
    return f"{registry}/demo"


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")
