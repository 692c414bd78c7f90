"""scripts/setup.sh on fresh machines, for real: the README's first command must work on a
Debian 12 machine as it comes, whatever its apt layout, and fail loudly where it cannot.

Each test runs the script in a private mount namespace in which apt and dpkg look like a
fresh machine's (tests/setup/fresh.py). The end-to-end ones talk to the machine's Debian
mirror through the package registry, as CI can; the bad-input ones stop before apt does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from torpor.sandbox.images import apt_mirror

from .fresh import REPO, copy_tree_as_cloned, fresh_machine

PINNED = "0.0~20240729.0-4+b7"
OLD_RUNSC = "0.0~20221219.0-2+b3"  # Debian 12's own runsc

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("runsc") is None,
    reason="needs root, unshare and runsc (run scripts/setup.sh)",
)


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.fixture(scope="module")
def mirror() -> str:
    return apt_mirror()


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone's files, for the tests that stop before making a .venv."""
    return copy_tree_as_cloned(tmp_path_factory.mktemp("clone"))


def deb822(mirror: str) -> str:
    """/etc/apt/sources.list.d/debian.sources as Debian 12's cloud images ship it."""
    return f"""\
        Types: deb
        URIs: {mirror}
        Suites: bookworm bookworm-updates
        Components: main
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

        Types: deb
        URIs: {mirror}-security
        Suites: bookworm-security
        Components: main
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
    """


def classic(mirror: str) -> str:
    """A classic /etc/apt/sources.list, security entry and a commented one first."""
    return f"""\
        # deb cdrom:[Debian GNU/Linux 12.0.0 _Bookworm_]/ bookworm main
        deb {mirror}-security bookworm-security main
        deb {mirror} bookworm main
        deb {mirror} bookworm-updates main
    """


def steps(out: str) -> dict[str, int]:
    """The seconds each step of the set-up reported."""
    return {m[1]: int(m[2]) for m in re.finditer(r"\[setup\] (\w+): done in (\d+) s", out)}


def assert_set_up(m, res, mirror: str, *, new_venv: bool = True) -> None:
    out = plain(res.stdout)
    assert res.returncode == 0, out
    assert f"apt: added trixie's suite from {mirror}" in out
    assert f"installing 1 packages: runsc={PINNED}" in out
    assert {"apt", "doctor"} | ({"venv"} if new_venv else set()) <= steps(out).keys(), out
    assert re.search(r"set-up finished in \d+ s", out)
    # what a fresh machine now holds: the trixie source and its pin, runsc held at the pin
    source = (m.etc_apt / "sources.list.d" / "torpor-trixie.sources").read_text()
    assert f"URIs: {mirror}\nSuites: trixie\n" in source
    assert "Pin-Priority: 100" in (m.etc_apt / "preferences.d" / "torpor-trixie").read_text()
    runsc = re.search(r"Package: runsc\n(.*?)(\n\n|\Z)", m.dpkg_status(), re.S)[1]
    assert "Status: hold ok installed" in runsc and f"Version: {PINNED}" in runsc
    assert (m.root / "usr-upper" / "bin" / "runsc").is_file()  # installed by this run
    # ... and `torpor doctor` (run after the set-up, in the same namespace) passes
    doctor = out.rsplit("set-up finished", 1)[1]
    assert "ok   self-test" in doctor and "ok   base image" in doctor and "FAIL" not in doctor


def test_fresh_debian_12_with_deb822_sources_only(tmp_path: Path, mirror: str) -> None:
    """As Debian 12 cloud and container images come: debian.sources, no sources.list. With
    a TORPOR_HOME and image store of its own, so the init build, runsc's self-test and the
    base image build all run as on a fresh machine."""
    m = fresh_machine(tmp_path, sources=deb822(mirror))
    assert not (m.etc_apt / "sources.list").exists()
    home = tmp_path / "home"
    res = m.setup({"TORPOR_HOME": str(home), "TORPOR_IMAGES": str(home / "images")},
                  then=".venv/bin/torpor doctor")  # fmt: skip
    assert_set_up(m, res, mirror)
    out = plain(res.stdout)
    assert re.search(r"self-test +sandbox .* \(\d\.\d\d s of sandbox work\)", out), out
    assert "built torpor/base:latest" in out  # the build's progress, as it went
    print("steps (s):", steps(out))
    # Run again: idempotent, nothing to do, fast
    again = m.setup({"TORPOR_HOME": str(home), "TORPOR_IMAGES": str(home / "images")})
    out = plain(again.stdout)
    assert again.returncode == 0, out
    assert f"apt: all packages present (runsc {PINNED})" in out
    assert "venv: .venv is up to date" in out
    assert "cached: this runsc passed before" in out


def test_fresh_debian_12_with_a_classic_sources_list(tmp_path: Path, mirror: str) -> None:
    """The apt layout is what differs from the test above: the work tree's own .venv (up
    to date) spares a second creation of one (a minute and a half of the suite)."""
    m = fresh_machine(tmp_path, sources_list=classic(mirror), repo=REPO)
    res = m.setup(then=".venv/bin/torpor doctor")
    assert_set_up(m, res, mirror, new_venv=False)
    assert "venv: .venv is up to date" in plain(res.stdout)
    print("steps (s):", steps(plain(res.stdout)))


def test_a_half_finished_earlier_run_is_completed(tmp_path: Path, mirror: str) -> None:
    """torpor's trixie source there from an earlier run, its pin missing: the pin is
    written, the source kept; and a runsc of another version is replaced when asked."""
    m = fresh_machine(tmp_path, sources=deb822(mirror), runsc_version=OLD_RUNSC,
                      repo=REPO)  # fmt: skip  (the work tree's own, up-to-date .venv)
    kept = f"Types: deb\nURIs: {mirror}\nSuites: trixie\nComponents: main\n" \
           "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"  # fmt: skip
    (m.etc_apt / "sources.list.d" / "torpor-trixie.sources").write_text(kept)
    res = m.setup({"TORPOR_REPLACE_RUNSC": "1"})
    out = plain(res.stdout)
    assert res.returncode == 0, out
    assert f"runsc: replacing {OLD_RUNSC} with {PINNED}" in out
    assert "apt: pinned trixie low" in out and "added trixie's suite" not in out
    assert f"Version: {PINNED}" in re.search(r"Package: runsc\n(.*?)(\n\n|\Z)",
                                             m.dpkg_status(), re.S)[1]  # fmt: skip


# --- bad input: one clear line, a non-zero exit, nothing changed ----------------------------


def error_lines(out: str) -> list[str]:
    return [line for line in plain(out).splitlines() if line.startswith("[setup] error:")]


def test_no_usable_mirror(tmp_path: Path, clone: Path) -> None:
    m = fresh_machine(tmp_path, sources_list="deb http://deb.debian.org/debian-security "
                      "bookworm-security main\n", repo=clone)  # fmt: skip
    res = m.setup(timeout=60)
    assert res.returncode == 1
    (line,) = error_lines(res.stdout)
    assert "no Debian mirror for bookworm found in apt's sources" in line
    assert "TORPOR_DEBIAN_MIRROR" in line
    assert not (m.etc_apt / "sources.list.d" / "torpor-trixie.sources").exists()


def test_a_mirror_that_does_not_answer_names_the_step_and_shows_apts_output(
    tmp_path: Path, clone: Path
) -> None:
    dead = "http://127.0.0.1:9/debian"  # nothing listens on loopback's discard port
    m = fresh_machine(tmp_path, sources=deb822(dead), repo=clone)
    res = m.setup(timeout=120)
    out = plain(res.stdout)
    assert res.returncode != 0
    assert "127.0.0.1" in out  # apt's own words about the mirror, shown
    assert ('FAILED in step "apt"' in out) or any("apt knows no runsc" in e
                                                  for e in error_lines(out)), out  # fmt: skip


def test_a_runsc_of_another_version_is_not_replaced_silently(
    tmp_path: Path, clone: Path
) -> None:
    m = fresh_machine(tmp_path, sources=deb822("http://deb.debian.org/debian"),
                      runsc_version=OLD_RUNSC, repo=clone)  # fmt: skip
    res = m.setup(timeout=60)
    assert res.returncode == 1
    (line,) = error_lines(res.stdout)
    assert f"runsc {OLD_RUNSC} is installed; torpor is tested with {PINNED}" in line
    assert "TORPOR_REPLACE_RUNSC=1" in line
    assert not (m.etc_apt / "sources.list.d" / "torpor-trixie.sources").exists()


def test_another_runsc_first_on_path(tmp_path: Path, clone: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "runsc"
    fake.write_text("#!/bin/sh\necho 'runsc version release-20250101.0'\n")
    fake.chmod(0o755)
    res = subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
                         timeout=60)  # fmt: skip
    assert res.returncode == 1
    (line,) = error_lines(res.stderr)
    assert f"another runsc comes first on PATH: {fake} (runsc version release-20250101.0)" in line
    assert f"mv {fake} {fake}.orig" in line
    assert not (clone / ".venv").exists()


def test_not_root() -> None:
    with tempfile.TemporaryDirectory() as tmp:  # pytest's tmp_path is root's alone
        repo = Path(tmp)
        (repo / "scripts").mkdir()
        shutil.copy(REPO / "scripts" / "setup.sh", repo / "scripts")
        for d in (repo, repo / "scripts"):
            d.chmod(0o755)
        res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              "bash", "scripts/setup.sh"], cwd=repo, capture_output=True,
                             text=True, timeout=30)  # fmt: skip
    assert res.returncode == 1
    (line,) = error_lines(res.stderr)
    assert "must run as root" in line and "sudo scripts/setup.sh" in line
    assert res.stdout == ""
