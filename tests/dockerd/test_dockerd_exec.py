"""Exec through torpor dockerd: the connection hijacked (101), framed output, stdin with
half-close, the exit code from exec inspect; with the docker CLI and docker-py."""

from __future__ import annotations

import time

from tests.dockerd.conftest import Run


def test_exec_exit_codes_stdin_env_and_workdir(docker: Run, name: str):
    assert docker("run", "-d", "--name", name, "torpor/base").returncode == 0
    out = docker("exec", name, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (out.returncode, out.stdout, out.stderr) == (7, "out\n", "err\n")
    assert docker("exec", name, "true").returncode == 0
    missing = docker("exec", name, "no-such-command")
    assert missing.returncode == 127
    piped = docker("exec", "-i", name, "sh", "-c", "tr a-z A-Z; echo done", input="from stdin\n")
    assert piped.stdout == "FROM STDIN\ndone\n"  # stdin ended with the client's half-close
    big = "x" * 300_000 + "\n"
    assert docker("exec", "-i", name, "wc", "-c", input=big).stdout.strip() == str(len(big))
    env = docker("exec", "-e", "FOO=bar", "-w", "/tmp", name, "sh", "-c", 'echo "$FOO $(pwd)"')
    assert env.stdout == "bar /tmp\n"
    user = docker("exec", "-u", "nobody", name, "id", "-un")
    assert user.stdout == "nobody\n"


def test_exec_detached_runs_in_the_background(docker: Run, name: str):
    assert docker("run", "-d", "--name", name, "torpor/base").returncode == 0
    late = docker("exec", "-d", name, "sh", "-c", "sleep 0.5; echo late > /tmp/late")
    assert late.returncode == 0 and late.stdout == ""
    deadline = time.monotonic() + 10
    while docker("exec", name, "cat", "/tmp/late").stdout != "late\n":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_exec_of_a_stopped_or_unknown_container(docker: Run, name: str):
    assert docker("create", "--name", name, "torpor/base").returncode == 0
    out = docker("exec", name, "true")
    assert out.returncode == 1 and f"Container {name} is not running" in out.stderr


def test_docker_py_exec_run_demux_stream_and_tty(client, name: str):  # type: ignore[no-untyped-def]
    ct = client.containers.run("torpor/base", detach=True, name=name)
    res = ct.exec_run(["sh", "-c", "echo a; echo b >&2; exit 4"], demux=True)
    assert res.exit_code == 4 and res.output == (b"a\n", b"b\n")
    res = ct.exec_run("echo plain", environment={"X": "1"}, workdir="/tmp")
    assert (res.exit_code, res.output) == (0, b"plain\n")
    tty = ct.exec_run(["sh", "-c", "echo one; echo two >&2"], tty=True)
    assert tty.output.replace(b"\r", b"") in (b"one\ntwo\n", b"two\none\n")  # a raw stream
    chunks = list(ct.exec_run(["sh", "-c", "echo 1; sleep 0.2; echo 2"], stream=True).output)
    assert b"".join(chunks) == b"1\n2\n"
