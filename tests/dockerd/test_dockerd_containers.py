"""The docker CLI (28.x, unchanged) against torpor dockerd: negotiation, containers'
lifecycle, listing, inspect, logs and attach, and the error lines Docker users know."""

from __future__ import annotations

import grp
import http.client
import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

from tests.dockerd.conftest import DOCKER, TORPOR, Dockerd, Run, start_dockerd, stop_dockerd


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def request(
    d: Dockerd, method: str, path: str, body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    conn = UnixHTTP(str(d.socket))
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def test_negotiation_ping_version_info_and_the_socket(dockerd: Dockerd, docker: Run):
    for method in ("HEAD", "GET"):
        status, headers, body = request(dockerd, method, "/_ping")
        assert status == 200
        assert headers["api-version"] == "1.47" and headers["ostype"] == "linux"
        assert headers["docker-experimental"] == "true"
        assert body == (b"OK" if method == "GET" else b"")
    # versioned and unversioned paths are the same API
    for path in ("/version", "/v1.47/version", "/v1.24/version"):
        status, _, body = request(dockerd, "GET", path)
        assert status == 200 and json.loads(body)["Experimental"] is True
    status, _, body = request(dockerd, "GET", "/v1.47/no/such/route")
    assert status == 404 and json.loads(body) == {"message": "page not found"}

    out = docker("version", "--format", "{{.Client.APIVersion}} {{.Server.APIVersion}}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1.47", "1.47"]  # the CLI stepped down to the server's
    info = docker("info", "--format", "{{.OSType}} {{.ExperimentalBuild}} {{.DefaultRuntime}}")
    assert info.stdout.split() == ["linux", "true", "runsc"], info.stderr

    st = os.stat(dockerd.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == 0 and st.st_gid == 0


def test_run_detached_ps_inspect_stop_start_and_rm(docker: Run, name: str):
    run = docker("run", "-d", "--name", name, "--label", "team=a", "-e", "MODE=dev",
                 "--memory", "256m", "--cpus", "0.5", "torpor/base")  # fmt: skip
    assert run.returncode == 0, run.stderr
    cid = run.stdout.strip()
    ps = docker("ps", "--format", "{{.ID}} {{.Names}} {{.Image}} {{.State}}")
    assert f"{cid[:12]} {name} torpor/base running" in ps.stdout.splitlines()
    assert name in docker("ps", "--filter", "label=team=a", "--format", "{{.Names}}").stdout
    assert name not in docker("ps", "--filter", "label=team=b", "--format",
                              "{{.Names}}").stdout  # fmt: skip

    fmt = ("{{.Id}} {{.Name}} {{.State.Status}} {{.State.Running}} {{.HostConfig.Memory}} "
           "{{.HostConfig.NanoCpus}} {{index .Config.Labels \"team\"}} {{.Config.Env}}")
    assert docker("inspect", "-f", fmt, name).stdout.split() == [
        cid, f"/{name}", "running", "true", str(256 << 20), "500000000", "a", "[MODE=dev]"]
    assert docker("exec", name, "sh", "-c", "echo $MODE").stdout == "dev\n"

    assert docker("stop", "-t", "2", name).stdout.strip() == name
    assert name not in docker("ps", "--format", "{{.Names}}").stdout
    ps_all = docker("ps", "-a", "--filter", f"name={name}", "--format", "{{.Status}}")
    assert ps_all.stdout.startswith("Exited (")
    assert docker("inspect", "-f", "{{.State.Status}}", name).stdout.strip() == "exited"

    assert docker("start", name).returncode == 0
    assert docker("exec", name, "echo", "again").stdout == "again\n"
    rm = docker("rm", name)
    assert rm.returncode == 1
    assert "container is running: stop the container before removing or force remove" in rm.stderr
    assert docker("rm", "-f", name).stdout.strip() == name
    assert name not in docker("ps", "-a", "--format", "{{.Names}}").stdout


def test_run_in_the_foreground_prints_and_exits_with_its_code(docker: Run, name: str):
    out = docker("run", "--rm", "--name", name, "torpor/base",
                 "sh", "-c", "echo out; sleep 0.3; echo more; exit 3")  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert out.stdout == "out\nmore\n"
    deadline = time.monotonic() + 10  # --rm: removed once it exited
    while name in docker("ps", "-a", "--format", "{{.Names}}").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    kept = docker("run", "--name", name, "torpor/base", "sh", "-c", "echo kept")
    assert (kept.returncode, kept.stdout) == (0, "kept\n")
    assert docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                  name).stdout.split() == ["exited", "0"]  # fmt: skip


def test_logs_follow_tail_and_timestamps(docker: Run, name: str):
    run = docker("run", "-d", "--name", name, "torpor/base", "sh", "-c",
                 "for i in 1 2 3 4; do echo line $i; sleep 0.4; done")  # fmt: skip
    assert run.returncode == 0, run.stderr
    t0 = time.monotonic()
    follow = docker("logs", "-f", name, timeout=30)  # returns when the container stops
    assert follow.stdout == "line 1\nline 2\nline 3\nline 4\n"
    assert time.monotonic() - t0 > 0.8
    assert docker("logs", "--tail", "2", name).stdout == "line 3\nline 4\n"
    stamped = docker("logs", "-t", name).stdout.splitlines()
    times = [line.split()[0] for line in stamped]
    assert [line.split(" ", 1)[1] for line in stamped] == [f"line {i}" for i in range(1, 5)]
    assert all(t.endswith("Z") and t[:4].isdigit() for t in times)
    assert times == sorted(times) and times[0] != times[-1]
    since = docker("logs", "--since", times[2], name).stdout
    assert "line 1" not in since and "line 4" in since


def test_follow_a_running_container_live(docker_env: dict[str, str], docker: Run, name: str):
    assert docker("run", "-d", "--name", name, "torpor/base", "sh", "-c",
                  "echo first; sleep 30").returncode == 0  # fmt: skip
    proc = subprocess.Popen([DOCKER, "logs", "-f", name], stdout=subprocess.PIPE,
                            env=docker_env)  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"first\n"  # before the container ends
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_rename_and_filters(docker: Run, name: str):
    assert docker("create", "--name", name, "torpor/base").returncode == 0
    assert docker("ps", "-a", "--filter", "status=created", "--filter", f"name={name}",
                  "--format", "{{.Names}}").stdout.strip() == name  # fmt: skip
    assert docker("rename", name, f"{name}-x").returncode == 0
    assert docker("inspect", "-f", "{{.Name}}", f"{name}-x").stdout.strip() == f"/{name}-x"
    assert docker("rename", f"{name}-x", name).returncode == 0


def test_bad_input_gets_dockers_error_lines(dockerd: Dockerd, docker: Run, name: str):
    for args in (["rm", "t-nope"], ["stop", "t-nope"], ["logs", "t-nope"],
                 ["exec", "t-nope", "true"], ["start", "t-nope"]):  # fmt: skip
        out = docker(*args)
        assert out.returncode == 1, args
        assert "No such container: t-nope" in out.stderr, (args, out.stderr)
    gone = docker("inspect", "t-nope")
    assert gone.returncode == 1 and "No such object: t-nope" in gone.stderr

    assert docker("run", "-d", "--name", name, "torpor/base").returncode == 0
    dup = docker("run", "-d", "--name", name, "torpor/base")
    assert dup.returncode == 125
    assert f'Conflict. The container name "/{name}" is already in use' in dup.stderr

    missing = docker("run", "--pull", "never", "torpor/no-such-image")
    assert missing.returncode == 125
    assert "No such image: torpor/no-such-image:latest" in missing.stderr

    bad = docker("run", "-d", "--network", "host", "torpor/base")
    assert bad.returncode == 125 and "network mode 'host' is not supported" in bad.stderr

    status, _, body = request(dockerd, "POST", "/v1.47/containers/create", b"{bad",
                              {"Content-Type": "application/json"})  # fmt: skip
    assert status == 400 and json.loads(body)["message"].startswith("invalid JSON")
    status, _, body = request(dockerd, "POST", "/v1.47/containers/create", b"{}",
                              {"Content-Type": "application/json"})  # fmt: skip
    assert status == 400 and "Image" in json.loads(body)["message"]


def test_torpor_and_docker_see_the_same_sandboxes(dockerd: Dockerd, docker: Run, name: str):
    mine = f"{name}-torpor"
    made = subprocess.run([TORPOR, "run", "-d", "--name", mine, "base"], env=dockerd.env,
                          capture_output=True, text=True)  # fmt: skip
    try:
        assert made.returncode == 0, made.stderr
        assert docker("run", "-d", "--name", name, "torpor/base", "sleep", "600").returncode == 0
        ps = docker("ps", "--format", "{{.Names}}").stdout.split()
        assert name in ps and mine in ps
        torpor_ps = subprocess.run([TORPOR, "ps", "--format", "json"], env=dockerd.env,
                                   capture_output=True, text=True)  # fmt: skip
        assert {name, mine} <= {s["name"] for s in json.loads(torpor_ps.stdout)}
        assert docker("exec", mine, "echo", "through docker").stdout == "through docker\n"
        assert docker("kill", name).returncode == 0
        assert docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                      name).stdout.split() == ["exited", "137"]  # fmt: skip
        waited = docker("wait", name)
        assert waited.stdout.strip() == "137"
        assert docker("restart", name).returncode == 0
        assert docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"
    finally:
        docker("rm", "-f", mine)


def test_tcp_listener_and_socket_group(tmp_path: Path, docker_env: dict[str, str]):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "home"
    home.mkdir()
    images = tmp_path / "images"
    images.mkdir()
    d = start_dockerd(home, images, "--host", f"tcp://127.0.0.1:{port}", "--group", "daemon")
    try:
        st = os.stat(d.socket)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == grp.getgrnam("daemon").gr_gid
        env = dict(docker_env, DOCKER_HOST=f"tcp://127.0.0.1:{port}")
        out = subprocess.run([DOCKER, "version", "--format", "{{.Server.Version}}"], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0 and out.stdout.strip(), out.stderr
    finally:
        stop_dockerd(d)
    assert not d.socket.exists()  # removed on the way out
    refused = subprocess.run([TORPOR, "dockerd", "--socket", "", "--host", "tcp://0.0.0.0:2375"],
                             env=d.env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert refused.returncode == 2 and "not a loopback address" in refused.stderr
