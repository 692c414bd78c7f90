"""Docker's checkpoint commands through torpor dockerd: create (stopping, or
--leave-running), ls, rm, `start --checkpoint` with a process's in-memory state going on
where it was, and a second container started from another's checkpoint (torpor's fork)."""

from __future__ import annotations

import time

from tests.dockerd.conftest import Run
from tests.programs import COUNTER


def counter(docker: Run, name: str) -> tuple[str, int]:
    """The counter's (token, count): the token tells one process from another."""
    deadline = time.monotonic() + 10
    while True:
        parts = docker("exec", name, "cat", "/tmp/c").stdout.split()
        if len(parts) == 2:
            return parts[0], int(parts[1])
        assert time.monotonic() < deadline, "the counter never wrote"
        time.sleep(0.05)


def test_checkpoint_then_start_from_it_goes_on_counting(docker: Run, name: str):
    assert docker("run", "-d", "--name", name, "torpor/base", "python3", "-c",
                  COUNTER).returncode == 0  # fmt: skip
    counter(docker, name)
    time.sleep(0.3)
    token, before = counter(docker, name)  # it counts on until the checkpoint
    made = docker("checkpoint", "create", name, "cp1")
    assert (made.returncode, made.stdout.strip()) == (0, "cp1"), made.stderr
    assert docker("inspect", "-f", "{{.State.Status}}", name).stdout.strip() == "exited"
    time.sleep(0.5)  # a process that restarted would count from 1 again meanwhile

    started = docker("start", "--checkpoint", "cp1", name)
    assert started.returncode == 0, started.stderr
    again, n = counter(docker, name)
    assert again == token  # the same process, not a new one
    assert n >= before > 5  # it went on from its count, not from 1

    kept = docker("checkpoint", "create", "--leave-running", name, "cp2")
    assert kept.returncode == 0, kept.stderr
    assert docker("inspect", "-f", "{{.State.Status}}", name).stdout.strip() == "running"
    assert docker("checkpoint", "ls", name).stdout.split() == ["CHECKPOINT", "NAME", "cp1",
                                                               "cp2"]  # fmt: skip
    assert docker("checkpoint", "rm", name, "cp2").returncode == 0
    assert docker("checkpoint", "ls", name).stdout.split() == ["CHECKPOINT", "NAME", "cp1"]
    dup = docker("checkpoint", "create", "--leave-running", name, "cp1")
    assert dup.returncode == 1 and "already exists" in dup.stderr


def test_a_container_started_from_anothers_checkpoint_is_a_fork(docker: Run, name: str):
    fork = f"{name}-fork"
    try:
        assert docker("run", "-d", "--name", name, "torpor/base", "python3", "-c",
                      COUNTER).returncode == 0  # fmt: skip
        token, _ = counter(docker, name)
        assert docker("checkpoint", "create", "--leave-running", name, "snap").returncode == 0
        assert docker("create", "--name", fork, "torpor/base", "python3", "-c",
                      COUNTER).returncode == 0  # fmt: skip
        out = docker("start", "--checkpoint", "snap", "--checkpoint-dir", name, fork)
        assert out.returncode == 0, out.stderr
        fork_token, fork_n = counter(docker, fork)
        assert fork_token == token and fork_n > 1  # the original's process, going on
        docker("exec", name, "sh", "-c", "echo mine > /tmp/mark")
        assert docker("exec", fork, "cat", "/tmp/mark").returncode == 1  # independent
        assert docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"
    finally:
        docker("rm", "-f", fork)


def test_checkpoint_errors(docker: Run, name: str):
    assert docker("create", "--name", name, "torpor/base").returncode == 0
    stopped = docker("checkpoint", "create", name, "cp")
    assert stopped.returncode == 1
    assert f"Container {name} is not running" in stopped.stderr
    missing = docker("start", "--checkpoint", "nope", name)
    assert missing.returncode == 1 and "No such checkpoint: nope" in missing.stderr
    unknown = docker("checkpoint", "ls", "t-nope")
    assert unknown.returncode == 1 and "No such container: t-nope" in unknown.stderr
