"""`docker cp` both ways and docker-py's containers API (run detached and not, logs, get,
put_archive / get_archive, remove(force=True)) through torpor dockerd."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tests.dockerd.conftest import Run


def test_cp_in_and_out(docker: Run, name: str, tmp_path: Path):
    assert docker("run", "-d", "--name", name, "torpor/base").returncode == 0
    src = tmp_path / "in.txt"
    src.write_text("hello in\n")
    assert docker("cp", str(src), f"{name}:/tmp/").returncode == 0
    assert docker("exec", name, "cat", "/tmp/in.txt").stdout == "hello in\n"
    assert docker("cp", str(src), f"{name}:/tmp/renamed.txt").returncode == 0
    assert docker("exec", name, "cat", "/tmp/renamed.txt").stdout == "hello in\n"
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "deep.txt").write_text("deep\n")
    assert docker("cp", str(tree), f"{name}:/srv").returncode == 0  # into a directory
    assert docker("exec", name, "cat", "/srv/tree/sub/deep.txt").stdout == "deep\n"
    assert docker("cp", str(tree), f"{name}:/opt/new").returncode == 0  # as a new one
    assert docker("exec", name, "cat", "/opt/new/sub/deep.txt").stdout == "deep\n"

    assert docker("exec", name, "sh", "-c", "mkdir -p /data/d && echo out > /data/d/f && "
                  "ln -s f /data/d/l && chmod 600 /data/d/f").returncode == 0  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    assert docker("cp", f"{name}:/data/d", str(out)).returncode == 0, "cp out of a dir"
    assert (out / "d" / "f").read_text() == "out\n"
    assert (out / "d" / "l").is_symlink() and (out / "d" / "l").readlink() == Path("f")
    assert (out / "d" / "f").stat().st_mode & 0o777 == 0o600
    assert docker("cp", f"{name}:/data/d/f", str(out / "single.txt")).returncode == 0
    assert (out / "single.txt").read_text() == "out\n"

    missing = docker("cp", f"{name}:/no/such/file", str(out))
    assert missing.returncode == 1
    assert "Could not find the file /no/such/file in container" in missing.stderr


def test_docker_py_containers(client, name: str):  # type: ignore[no-untyped-def]
    import docker

    assert client.containers.run("torpor/base", ["sh", "-c", "echo hi; echo err >&2"],
                                 remove=True) == b"hi\nerr\n"  # fmt: skip
    with pytest.raises(docker.errors.ContainerError) as failed:
        client.containers.run("torpor/base", ["sh", "-c", "exit 3"], remove=True)
    assert failed.value.exit_status == 3

    ct = client.containers.run("torpor/base", ["sh", "-c", "echo started; sleep 600"],
                               detach=True, name=name, labels={"k": "v"})  # fmt: skip
    got = client.containers.get(name)
    assert got.id == ct.id and got.status == "running" and got.labels == {"k": "v"}
    assert [c.name for c in client.containers.list(filters={"label": "k=v"})] == [name]

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"content\n"
        info = tarfile.TarInfo("x.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert ct.put_archive("/tmp", buf.getvalue()) is True
    bits, st = ct.get_archive("/tmp/x.txt")
    assert st["name"] == "x.txt" and st["size"] == 8
    with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
        member = tar.extractfile("x.txt")
        assert member is not None and member.read() == b"content\n"
    with pytest.raises(docker.errors.NotFound):
        ct.get_archive("/no/such")

    assert ct.logs() == b"started\n"
    ct.remove(force=True)
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(name)
    with pytest.raises(docker.errors.ImageNotFound):
        client.containers.run("torpor/no-such-image", detach=True)
