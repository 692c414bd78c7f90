"""Fixtures for torpor dockerd: a real `torpor dockerd` on a socket in a temp dir, over a
private TORPOR_HOME (checkpoints in its own snapshot store) and a private image store
that holds the machine's torpor/base; the docker CLI binary and docker-py drive it
unchanged."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from torpor.sandbox import images as image_mod
from torpor.sandbox.images import BASE_IMAGE, ImageNotFound, ImageStore

TORPOR = str(Path(sys.executable).with_name("torpor"))
DOCKER = shutil.which("docker") or "/usr/local/bin/docker"


def _why_skip() -> str | None:
    if os.geteuid() != 0 or shutil.which("runsc") is None:
        return "needs root and runsc"
    if not Path(DOCKER).exists():
        return "needs the docker CLI binary"
    try:
        ImageStore().get(BASE_IMAGE)
    except ImageNotFound:
        return "needs torpor/base (torpor image build-base)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    why = _why_skip()
    if why:
        for item in items:
            if "tests/dockerd/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=why))


@dataclass
class Dockerd:
    home: Path
    socket: Path
    images: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"


def start_dockerd(home: Path, images: Path, *extra: str) -> Dockerd:
    sock = home / "docker.sock"
    env = dict(os.environ, TORPOR_HOME=str(home), TORPOR_IMAGES=str(images))
    log = open(home / "dockerd.log", "wb")  # noqa: SIM115 - the daemon's, closed with it
    proc = subprocess.Popen([TORPOR, "dockerd", "--socket", str(sock), *extra], env=env,
                            stdout=log, stderr=log)  # fmt: skip
    deadline = time.monotonic() + 60
    while b"listening on" not in (home / "dockerd.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"torpor dockerd did not start: {(home / 'dockerd.log').read_text()}")
        time.sleep(0.05)
    return Dockerd(home, sock, images, proc, env)


def stop_dockerd(d: Dockerd) -> None:
    d.proc.terminate()
    try:
        d.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        d.proc.kill()
        d.proc.wait()


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    home = Path(tempfile.mkdtemp(prefix="torpor-dockerd-home-"))
    images = home / "images"
    images.mkdir()
    base = ImageStore().get(BASE_IMAGE)
    # torpor/base is the machine's (read only: sandboxes use it as a read-only root);
    # what the tests pull lands in this private store.
    (images / image_mod._dir_name(BASE_IMAGE)).symlink_to(base.rootfs.parent)
    d = start_dockerd(home, images)
    yield d
    stop_dockerd(d)
    for sb in (home / "sandboxes").glob("*") if (home / "sandboxes").exists() else []:
        subprocess.run(["runsc", f"--root={home / 'runsc'}", "delete", "-force", sb.name],
                       capture_output=True)  # fmt: skip
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_env(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    config = tmp_path_factory.mktemp("docker-config")  # no ~/.docker of the machine's
    return dict(os.environ, DOCKER_HOST=dockerd.url, DOCKER_CONFIG=str(config))


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def docker(docker_env: dict[str, str]) -> Run:
    """The docker CLI against torpor dockerd: docker("ps", "-a") -> CompletedProcess."""

    def run(*args: str, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return subprocess.run([DOCKER, *args], input=input, capture_output=True, text=True,
                              env=docker_env, timeout=timeout)  # fmt: skip

    return run


@pytest.fixture()
def name(docker: Run) -> Iterator[str]:
    """A fresh container name, its container removed after the test."""
    n = f"t-{secrets.token_hex(4)}"
    yield n
    docker("rm", "-f", n)


@pytest.fixture(scope="session")
def client(dockerd: Dockerd):  # type: ignore[no-untyped-def]
    import docker as docker_py

    c = docker_py.DockerClient(base_url=dockerd.url, timeout=120)
    yield c
    c.close()
