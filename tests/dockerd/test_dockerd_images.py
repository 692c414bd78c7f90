"""Images through torpor dockerd: list, inspect, pull (torpor's OCI pull, from a local
docker-registry over plain HTTP), run what was pulled, remove."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dockerd.conftest import Run

TOOLS = ("skopeo", "umoci", "docker-registry")


def sh(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker-registry on 127.0.0.1 holding demo:latest, a small OCI image made with
    umoci (a file, no shell: a container of it idles under torpor-init)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    d = tmp_path_factory.mktemp("registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: "
        f"{d / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")  # fmt: skip
    proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                break
        except (urllib.error.URLError, OSError):
            assert proc.poll() is None and time.monotonic() < deadline, "no registry"
            time.sleep(0.1)
    layout, bundle = d / "layout", d / "bundle"
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:v1")
    sh("umoci", "unpack", "--image", f"{layout}:v1", bundle)
    (bundle / "rootfs" / "hello.txt").write_text("hello from demo\n")
    sh("umoci", "repack", "--image", f"{layout}:v1", bundle)
    sh("umoci", "config", "--image", f"{layout}:v1", "--config.env", "GREETING=hi")
    sh("skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:v1",
       f"docker://127.0.0.1:{port}/demo:latest")  # fmt: skip
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_images_list_and_inspect(docker: Run):
    out = docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert out.returncode == 0, out.stderr
    assert any(line.startswith("torpor/base:latest ") for line in out.stdout.splitlines())
    doc = json.loads(docker("image", "inspect", "torpor/base").stdout)[0]
    assert doc["RepoTags"] == ["torpor/base:latest"] and doc["Id"].startswith("sha256:")
    assert any(e.startswith("PATH=") for e in doc["Config"]["Env"])
    gone = docker("image", "inspect", "torpor/nope")
    assert gone.returncode == 1 and "No such image: torpor/nope" in gone.stderr


def test_pull_run_and_remove(docker: Run, registry: str, name: str, tmp_path: Path):
    ref = f"{registry}/demo"
    pulled = docker("pull", ref, timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    assert f"Downloaded newer image for {ref}:latest" in pulled.stdout
    listed = docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert f"{ref}:latest" in listed
    assert docker("run", "-d", "--name", name, ref).returncode == 0
    assert docker("cp", f"{name}:/hello.txt", str(tmp_path / "h.txt")).returncode == 0
    assert (tmp_path / "h.txt").read_text() == "hello from demo\n"
    assert docker("inspect", "-f", "{{.Config.Image}}", name).stdout.strip() == ref

    used = docker("rmi", ref)
    assert used.returncode == 1 and "is using its referenced image" in used.stderr
    assert docker("rm", "-f", name).returncode == 0
    removed = docker("rmi", ref)
    assert removed.returncode == 0 and f"Untagged: {ref}:latest" in removed.stdout
    assert f"{ref}:latest" not in docker("images", "--format",
                                         "{{.Repository}}:{{.Tag}}").stdout.split()  # fmt: skip

    missing = docker("pull", f"{registry}/no-such-image", timeout=120)
    assert missing.returncode == 1 and "no-such-image" in missing.stderr
    run_missing = docker("run", "--rm", f"{registry}/no-such-image", timeout=120)
    assert run_missing.returncode == 125
    assert f"Unable to find image '{registry}/no-such-image:latest' locally" in run_missing.stderr
