"""Whether a sandbox's owner is alive (torpor.sandbox.owners): pure logic on real processes
and hand-made /proc files; needs neither root nor runsc."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from torpor.sandbox.owners import (
    boot_id,
    describe,
    owner_state,
    same_process,
    start_time,
    this_process,
)


def owner_of(pid: int, kind: str = "pool") -> dict:
    return {**this_process(kind), "pid": pid, "start_time": start_time(pid)}


def test_this_process_is_alive_and_names_itself() -> None:
    me = this_process("standby")
    assert me["pid"] == os.getpid() and me["start_time"] == start_time(os.getpid())
    assert me["boot"] == boot_id() and me["host"]
    assert owner_state(me) == "alive"
    assert same_process(me, this_process("session", session="ses-1"))  # kind aside


def test_an_exited_process_is_gone() -> None:
    p = subprocess.Popen(["sleep", "30"])
    owner = owner_of(p.pid)
    assert owner_state(owner) == "alive"
    p.kill()
    p.wait()
    assert owner_state(owner) == "gone"


def test_a_zombie_is_gone() -> None:
    p = subprocess.Popen(["sleep", "30"])
    owner = owner_of(p.pid)
    p.kill()  # not waited for: a zombie until then
    deadline = time.monotonic() + 5
    while "Z" not in Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1][:3]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert start_time(p.pid) is None and owner_state(owner) == "gone"
    p.wait()


def test_a_reused_pid_or_a_reboot_is_gone() -> None:
    me = this_process("session")
    assert owner_state({**me, "start_time": me["start_time"] + 1}) == "gone"
    assert owner_state({**me, "boot": "another-boot"}) == "gone"
    assert not same_process(me, {**me, "start_time": me["start_time"] + 1})


def test_users_other_hosts_and_old_records_are_never_orphans() -> None:
    gone = owner_of(2**22 + 7)  # no such pid (pid_max is at most 2^22)
    assert owner_state(gone) == "gone"
    assert owner_state({**gone, "kind": "user"}) == "user"
    assert owner_state({**gone, "host": "elsewhere.example"}) == "elsewhere"
    assert owner_state(None) == "unknown" and owner_state({}) == "unknown"
    assert owner_state({**gone, "pid": None}) == "unknown"


def test_stat_parsing_survives_odd_process_names(tmp_path: Path) -> None:
    rest = " ".join(["S", *["0"] * 18, "4242", "0"])  # state, fields 4-21, starttime (22)
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "stat").write_text(f"77 (a b) c) {rest}\n")
    assert start_time(77, tmp_path) == 4242
    (tmp_path / "77" / "stat").write_text(f"77 (x) {rest.replace('S', 'Z', 1)}\n")
    assert start_time(77, tmp_path) is None
    assert start_time(78, tmp_path) is None


def test_describe() -> None:
    me = this_process("session", session="ses-1")
    assert describe(me) == f"session ses-1 (pid {os.getpid()})"
    assert describe(this_process("pool")) == f"pool (pid {os.getpid()})"
    assert describe(this_process("user")) == "user" and describe(None) == "-"
