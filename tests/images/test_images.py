"""Image store: the mmdebstrap base image, OCI pulls (registry, layout, archive), the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from torpor.cli.image_cmd import image_app, images, pull, rmi
from torpor.files import writer_tag
from torpor.sandbox.images import (
    BASE_IMAGE,
    ImageError,
    ImageNotFound,
    ImageStore,
)


def run(*argv: str | Path) -> str:
    return subprocess.run(
        [str(a) for a in argv], check=True, capture_output=True, text=True
    ).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
DEMO_ENV = ("GREETING=hi there", "PATH=/app:/bin")
DEMO_CMD = ("/app/run.sh", "--verbose", "x y")


def leftovers(store: ImageStore) -> list[str]:
    if not store.root.exists():
        return []
    return sorted(p.name for p in store.root.iterdir() if p.name.startswith((".tmp", ".trash")))


# --- the base image ------------------------------------------------------------------------


def test_base_image_has_the_promised_tools(base_image) -> None:
    root = base_image.rootfs
    assert (root / "etc/debian_version").read_text().startswith("12.")
    for tool in ("usr/bin/python3", "usr/bin/git", "usr/bin/curl", "usr/bin/ps", "bin/bash"):
        assert (root / tool).exists(), tool
    assert (root / "etc/ssl/certs/ca-certificates.crt").stat().st_size > 10_000
    assert (root / "etc/torpor/restore.d").is_dir()
    assert (root / ".torpor").is_dir()
    # The tools actually run on that root (python -B: write nothing into the image).
    out = run("chroot", root, "/usr/bin/python3", "-B", "-c",
              "import json, ssl, sqlite3; print(json.dumps('ok'))")
    assert out.strip() == '"ok"'
    assert run("chroot", root, "/usr/bin/git", "--version").startswith("git version")


def test_base_image_metadata(base_image) -> None:
    assert base_image.name == BASE_IMAGE
    assert DIGEST.match(base_image.digest)
    assert any(e.startswith("PATH=") and "/usr/bin" in e for e in base_image.env)
    assert base_image.cmd == ()  # idles under torpor-init until exec'd into
    assert base_image.entrypoint == ()
    assert base_image.workdir == "/"
    assert base_image.user == ""
    assert 100e6 < base_image.size < 400e6
    datetime.fromisoformat(base_image.created.replace("Z", "+00:00"))
    assert json.loads((base_image.rootfs.parent / "image.json").read_text())["name"] == BASE_IMAGE


def test_base_image_is_found_by_alias_and_digest(base_store, base_image) -> None:
    for alias in ("base", "torpor/base", "torpor/base:latest", base_image.digest,
                  base_image.digest[7:19]):
        assert base_store.get(alias) == base_image
    assert base_image in base_store.list()


def test_cached_base_returns_at_once(base_store, base_image) -> None:
    t0 = time.monotonic()
    again = base_store.build_base(progress=lambda m: pytest.fail(f"rebuilt: {m}"))
    assert time.monotonic() - t0 < 1.0
    assert again == base_image


def test_forced_build_replaces_the_old_image(forced_build) -> None:
    img, store = forced_build.image, forced_build.store
    assert img.digest != forced_build.replaced_digest
    assert not (img.rootfs / "STALE").exists()
    assert (img.rootfs / "usr/bin/python3").exists()
    assert store.get("base") == img
    assert [i.name for i in store.list()] == [BASE_IMAGE]
    assert leftovers(store) == []
    # Progress went through the callback, from the first step to the summary.
    assert forced_build.messages[0].startswith("building torpor/base:latest")
    assert any("downloading" in m for m in forced_build.messages)
    assert forced_build.messages[-1].startswith("built torpor/base:latest")
    print(f"\nforced base build: {forced_build.seconds:.1f} s, {img.size / 1e6:.0f} MB")


def test_killed_build_leaves_nothing_behind(tmp_path: Path, demo_layout) -> None:
    root = tmp_path / "images"
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from torpor.sandbox.images import ImageStore
        ImageStore(Path({str(root)!r})).build_base(
            progress=lambda m: print(m, flush=True))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if "downloading" in line or "extracting" in line:
                break
        else:
            pytest.fail("build ended before it could be killed")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    store = ImageStore(root)
    assert store.list() == []
    with pytest.raises(ImageNotFound):
        store.get("base")
    [half] = leftovers(store)  # the half-made tree is still there ...
    assert (root / half / "rootfs").is_dir()
    live = store.root / f".tmp-{writer_tag()}pull"  # a pull this process is unpacking
    (live / "rootfs").mkdir(parents=True)
    store.sweep()  # ... until the store is swept (open_engine does, and every write)
    assert leftovers(store) == [live.name]
    shutil.rmtree(live)
    store.pull(f"oci:{demo_layout.path}:v1", name="demo")
    assert [i.name for i in store.list()] == ["demo:latest"]


def test_an_image_whose_metadata_is_torn_is_left_out_with_a_warning(
    store: ImageStore, demo_layout, caplog: pytest.LogCaptureFixture
) -> None:  # fmt: skip
    img = store.pull(f"oci:{demo_layout.path}:v1", name="demo")
    meta = img.rootfs.parent / "image.json"
    meta.write_text(meta.read_text()[:40])  # what a write without fsync could leave
    assert store.list() == []
    with pytest.raises(ImageNotFound):
        store.get("demo")
    assert any("its image.json is unreadable" in m and "pull it again" in m
               for m in caplog.messages)  # fmt: skip


# --- pulling -------------------------------------------------------------------------------


def check_demo(img, digest: str | None = None) -> None:
    root = img.rootfs
    assert (root / "app/hello.txt").read_text() == "hello from demo\n"
    assert (root / "etc/demo.conf").read_text() == "answer = 42\n"
    assert os.access(root / "app/run.sh", os.X_OK)
    assert os.readlink(root / "app/link") == "hello.txt"
    assert sorted(p.name for p in root.iterdir()) == [".torpor", "app", "etc"]
    assert img.env == DEMO_ENV
    assert img.entrypoint == ("/app/run.sh",)
    assert img.cmd == DEMO_CMD
    assert img.workdir == "/app"
    assert img.user == "1000:1000"
    assert DIGEST.match(img.digest)
    if digest:
        assert img.digest == digest
    assert 0 < img.size < 1_000_000
    datetime.fromisoformat(img.created[:19])


def test_pull_from_a_local_registry(store: ImageStore, pushed: str, demo_layout) -> None:
    messages: list[str] = []
    t0 = time.monotonic()
    img = store.pull(f"docker://{pushed}:v1", progress=messages.append)
    took = time.monotonic() - t0
    assert img.name == f"{pushed}:v1"
    check_demo(img, demo_layout.digest)
    # The digest is the registry's own.
    inspected = json.loads(run("skopeo", "inspect", "--tls-verify=false", f"docker://{pushed}:v1"))
    assert img.digest == inspected["Digest"]
    assert messages and messages[-1].startswith(f"pulled {pushed}:v1")
    assert store.get(f"{pushed}:v1") == img
    assert leftovers(store) == []
    print(f"\npull of the demo image from the local registry: {took:.2f} s")


def test_pull_without_tag_means_latest(store: ImageStore, pushed: str) -> None:
    img = store.pull(f"docker://{pushed}")
    assert img.name == f"{pushed}:latest"
    assert store.get(pushed) == img


def test_pull_again_replaces(store: ImageStore, pushed: str) -> None:
    first = store.pull(f"docker://{pushed}:v1", name="demo")
    second = store.pull(f"docker://{pushed}:v1", name="demo")
    assert second.digest == first.digest
    assert [i.name for i in store.list()] == ["demo:latest"]
    assert leftovers(store) == []


def test_pull_from_an_oci_layout(store: ImageStore, demo_layout) -> None:
    img = store.pull(f"oci:{demo_layout.path}:v1", name="demo-oci")
    assert img.name == "demo-oci:latest"
    check_demo(img, demo_layout.digest)
    assert store.get("demo-oci") == img
    default = store.pull(f"oci:{demo_layout.path}:v1")
    assert default.name == f"{demo_layout.path}:v1"


def test_pull_from_a_docker_archive(store: ImageStore, demo_layout,
                                    tmp_path: Path) -> None:
    tar = tmp_path / "demo.tar"
    run("skopeo", "copy", "--quiet", f"oci:{demo_layout.path}:v1",
        f"docker-archive:{tar}:demo:v1")
    img = store.pull(f"docker-archive:{tar}", name="from-tar:v2")
    assert img.name == "from-tar:v2"
    check_demo(img)  # a docker archive holds a Docker manifest, hence another digest


def test_image_without_config_gets_defaults(store: ImageStore, tmp_path: Path) -> None:
    layout = tmp_path / "empty"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:e")
    img = store.pull(f"oci:{layout}:e", name="empty")
    assert img.env == ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    assert img.cmd == () and img.entrypoint == ()
    assert img.workdir == "/" and img.user == ""
    assert img.rootfs.is_dir()


@pytest.mark.parametrize("ref", ["alpine", "http://x/y", "docker://", "docker://host",
                                 "oci:", "docker-archive:", "  "])
def test_bad_reference(store: ImageStore, ref: str) -> None:
    with pytest.raises(ImageError, match="bad image reference"):
        store.pull(ref)
    assert store.list() == []


def test_unreachable_registry(store: ImageStore) -> None:
    ref = f"docker://127.0.0.1:{free_port()}/demo:v1"
    with pytest.raises(ImageError) as e:
        store.pull(ref)
    msg = str(e.value)
    assert ref in msg and "connection refused" in msg and "\n" not in msg
    assert store.list() == [] and leftovers(store) == []


def test_unknown_image_in_registry(store: ImageStore, registry: str) -> None:
    with pytest.raises(ImageError, match="manifest unknown"):
        store.pull(f"docker://{registry}/nothing:here")
    assert store.list() == [] and leftovers(store) == []


def test_missing_files(store: ImageStore, tmp_path: Path, demo_layout) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        store.pull(f"docker-archive:{tmp_path}/nope.tar")
    with pytest.raises(ImageError, match="does not exist"):
        store.pull(f"oci:{tmp_path}/nope:v1")
    with pytest.raises(ImageError, match='no descriptor found for reference "nosuch"'):
        store.pull(f"oci:{demo_layout.path}:nosuch")
    assert store.list() == [] and leftovers(store) == []


# --- get, list, remove -----------------------------------------------------------------------


def test_get_unknown(store: ImageStore) -> None:
    with pytest.raises(ImageNotFound) as e:
        store.get("nope")
    assert str(e.value) == "no such image: nope (try `torpor images`)"


def test_remove(store: ImageStore, demo_layout) -> None:
    img = store.pull(f"oci:{demo_layout.path}:v1", name="a")
    store.pull(f"oci:{demo_layout.path}:v1", name="b")
    with pytest.raises(ImageError, match="ambiguous"):
        store.get(img.digest[7:15])
    store.remove("a")
    assert not img.rootfs.exists()
    with pytest.raises(ImageNotFound):
        store.get("a")
    assert [i.name for i in store.list()] == ["b:latest"]
    assert store.get(img.digest[7:15]).name == "b:latest"
    with pytest.raises(ImageNotFound, match="no such image: a"):
        store.remove("a")
    assert leftovers(store) == []


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TORPOR_IMAGES", raising=False)
    monkeypatch.delenv("TORPOR_HOME", raising=False)
    assert ImageStore().root == Path("/var/lib/torpor/images")
    monkeypatch.setenv("TORPOR_HOME", str(tmp_path / "home"))
    assert ImageStore().root == tmp_path / "home" / "images"
    monkeypatch.setenv("TORPOR_IMAGES", str(tmp_path / "imgs"))
    assert ImageStore().root == tmp_path / "imgs"


# --- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(image_app, name="image")
    app.command("pull")(pull)
    app.command("images")(images)
    app.command("rmi")(rmi)
    return app


def invoke(app: typer.Typer, root: Path, *args: str):
    return CliRunner().invoke(app, list(args), env={"TORPOR_IMAGES": str(root)})


def test_cli_pull_images_rmi(cli, tmp_path: Path, pushed: str) -> None:
    root = tmp_path / "images"
    r = invoke(cli, root, "pull", f"docker://{pushed}:v1", "--name", "demo")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("demo:latest  sha256:")

    r = invoke(cli, root, "pull", f"docker://{pushed}:v1", "--format", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["name"] == f"{pushed}:v1" and list(data["cmd"]) == list(DEMO_CMD)

    r = invoke(cli, root, "images")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "DIGEST", "SIZE", "CREATED"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert set(rows) == {"demo:latest", f"{pushed}:v1"}
    assert rows["demo:latest"][1] == data["digest"][7:19]
    assert rows["demo:latest"][2].endswith("kB")

    r = invoke(cli, root, "images", "--format", "json")
    assert {i["name"] for i in json.loads(r.stdout)} == {"demo:latest", f"{pushed}:v1"}

    r = invoke(cli, root, "rmi", "demo", "nope")
    assert r.exit_code == 1
    assert r.stdout.strip() == f"Deleted: demo:latest ({data['digest']})"
    assert r.stderr == "error: no such image: nope (try `torpor images`)\n"

    r = invoke(cli, root, "image", "ls", "--format", "json")
    assert [i["name"] for i in json.loads(r.stdout)] == [f"{pushed}:v1"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["pull", "alpine"], "error: bad image reference 'alpine'"),
        (["pull", "docker://127.0.0.1:9/x:y"], "connection refused"),
        (["images", "--format", "yaml"], "error: unknown format 'yaml'"),
        (["rmi", "nope"], "error: no such image: nope"),
    ],
)
def test_cli_errors(cli, tmp_path: Path, args: list[str], message: str) -> None:
    r = invoke(cli, tmp_path / "images", *args)
    assert r.exit_code == 1
    assert message in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert r.stdout == ""


def test_cli_build_base_cached(cli, base_store: ImageStore, base_image) -> None:
    t0 = time.monotonic()
    r = invoke(cli, base_store.root, "image", "build-base", "--format", "json")
    assert r.exit_code == 0, r.output
    assert time.monotonic() - t0 < 2
    assert json.loads(r.stdout)["digest"] == base_image.digest
    r = invoke(cli, base_store.root, "image", "build-base")
    assert r.stdout.startswith(f"{BASE_IMAGE}  {base_image.digest}")
