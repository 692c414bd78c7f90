"""A fresh Debian machine's apt and dpkg, as seen by scripts/setup.sh in a private mount
namespace (`unshare -m`), so that the set-up's apt path runs for real on a machine that has
run it before, and nothing outside the namespace changes but what apt installs.

Inside, /etc/apt holds only the given sources (no sources.list unless given, no torpor
trixie source or pin), /var/lib/dpkg is a copy in which runsc is absent (or of another
version), and apt's lists and cache start empty. The repository is a copy of the work tree
without .venv, as a fresh clone has it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).parents[2]


def copy_tree_as_cloned(dest: Path) -> Path:
    """The work tree's files that git knows or would add (not .venv, not ignored files)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _without_package(status: str, package: str, version: str | None) -> str:
    """dpkg's status file with `package` removed, or claiming `version` instead."""
    stanzas = status.rstrip("\n").split("\n\n")
    out = []
    for s in stanzas:
        if re.match(rf"Package: {re.escape(package)}\n", s):
            if version is None:
                continue
            s = re.sub(r"^Version: .*$", f"Version: {version}", s, flags=re.M)
            s = re.sub(r"^Status: \w+ ", "Status: install ", s, flags=re.M)
        out.append(s)
    return "\n\n".join(out) + "\n"


@dataclass
class FreshMachine:
    root: Path  # holds etc-apt/, dpkg/, apt-state/, apt-cache/, usr-upper/
    repo: Path
    has_runsc: bool

    @property
    def etc_apt(self) -> Path:
        return self.root / "etc-apt"

    def dpkg_status(self) -> str:
        return (self.root / "dpkg" / "status").read_text()

    def setup(
        self, env: dict[str, str] | None = None, timeout: float = 900, then: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """Runs the repository's scripts/setup.sh in the namespace, then the shell command
        `then` if it succeeded; output merged."""
        mounts = {
            self.etc_apt: "/etc/apt",
            self.root / "dpkg": "/var/lib/dpkg",
            self.root / "apt-state": "/var/lib/apt",
            self.root / "apt-cache": "/var/cache/apt",
        }
        inner = "set -e\n" + "".join(f"mount --bind {s} {d}\n" for s, d in mounts.items())
        # /usr as an overlay: what apt installs lands in usr-upper/, and a machine without
        # runsc has no /usr/bin/runsc
        up, work = self.root / "usr-upper", self.root / "usr-work"
        up.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        inner += f"mount -t overlay overlay -o lowerdir=/usr,upperdir={up},workdir={work} /usr\n"
        if not self.has_runsc and not os.path.lexists(up / "bin" / "runsc"):
            inner += "rm -f /usr/bin/runsc\n"  # once: a later run keeps what apt installed
        inner += f"cd {self.repo}\nbash scripts/setup.sh\n{then}\n"
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("TORPOR_DEBIAN_MIRROR", "TORPOR_REPLACE"))}  # fmt: skip
        full_env.update(env or {})
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", inner],
            env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )  # fmt: skip


def fresh_machine(
    tmp: Path,
    *,
    sources: str | None = None,
    sources_list: str | None = None,
    runsc_version: str | None = None,
    repo: Path | None = None,
) -> FreshMachine:
    """sources: the text of /etc/apt/sources.list.d/debian.sources (deb822); sources_list:
    of /etc/apt/sources.list; runsc_version: None for a machine without runsc, else the
    version dpkg says is installed."""
    root = tmp / "machine"
    etc = root / "etc-apt"
    shutil.copytree("/etc/apt", etc, symlinks=True)
    (etc / "sources.list").unlink(missing_ok=True)
    shutil.rmtree(etc / "sources.list.d")
    (etc / "sources.list.d").mkdir()
    (etc / "preferences.d" / "torpor-trixie").unlink(missing_ok=True)
    if sources is not None:
        (etc / "sources.list.d" / "debian.sources").write_text(textwrap.dedent(sources))
    if sources_list is not None:
        (etc / "sources.list").write_text(textwrap.dedent(sources_list))
    # dpkg's database, with runsc taken out (its files stay: dpkg owns none of them now)
    dpkg = root / "dpkg"
    subprocess.run(["cp", "-a", "/var/lib/dpkg", str(dpkg)], check=True)
    status = dpkg / "status"
    status.write_text(_without_package(status.read_text(), "runsc", runsc_version))
    if runsc_version is None:
        for f in (dpkg / "info").glob("runsc.*"):
            f.unlink()
    state = root / "apt-state"
    shutil.copytree("/var/lib/apt", state, symlinks=True,
                    ignore=shutil.ignore_patterns("lists"))  # fmt: skip
    (state / "lists" / "partial").mkdir(parents=True)
    (root / "apt-cache" / "archives" / "partial").mkdir(parents=True)
    if repo is None:
        repo = copy_tree_as_cloned(tmp / "repo")
    return FreshMachine(root, repo, has_runsc=runsc_version is not None)
