"""Which Debian mirror set-up and the base image build take, on every common apt layout.

debian-mirror.sh asks apt itself (`apt-get indextargets`); these tests point apt at
fixture layouts through APT_CONFIG, as apt documents it, so they need no root and change
nothing on the machine.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from torpor.sandbox.images import ImageError, apt_mirror

SCRIPT = Path(__file__).parents[2] / "src/torpor/sandbox/debian-mirror.sh"

DEB822_BOOKWORM = """\
    Types: deb
    URIs: http://deb.example.org/debian
    Suites: bookworm bookworm-updates
    Components: main
    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

    Types: deb
    URIs: http://deb.example.org/debian-security
    Suites: bookworm-security
    Components: main
    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
SECURITY_FIRST_DEB822 = """\
    Types: deb
    URIs: http://security.example.org/debian-security
    Suites: bookworm-security
    Components: main

    # Types: deb
    # URIs: http://commented.example.org/debian
    # Suites: bookworm

    Types: deb
    URIs: http://disabled.example.org/debian
    Suites: bookworm
    Components: main
    Enabled: no

    Types: deb-src
    URIs: http://sources.example.org/debian
    Suites: bookworm
    Components: main

    Types: deb
    URIs: http://first.example.org/debian http://second.example.org/debian
    Suites: bookworm
    Components: main contrib
"""
CLASSIC = """\
    # deb http://commented.example.org/debian bookworm main
    deb http://security.debian.org/debian-security bookworm-security main contrib
    deb-src http://sources.example.org/debian bookworm main
    deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
http://classic.example.org/debian/ bookworm main
    deb http://classic.example.org/debian/ bookworm-updates main
"""
TORPOR_TRIXIE = """\
    Types: deb
    URIs: http://torpor-added.example.org/debian
    Suites: trixie
    Components: main
"""
THIRD_PARTY = """\
    Types: deb
    URIs: https://deb.nodesource.example.com/node_20.x
    Suites: nodistro
    Components: main
"""
DEB822_TRIXIE = """\
    Types: deb
    URIs: http://trixie.example.org/debian
    Suites: trixie trixie-updates
    Components: main

    Types: deb
    URIs: http://trixie.example.org/debian-security
    Suites: trixie-security
    Components: main
"""


def layout(tmp_path: Path, *, sources_list: str | None = None, **parts: str) -> dict[str, str]:
    """An apt configuration that reads only the given files; returns the environment that
    points apt (and so the script) at it."""
    d = tmp_path / "sources.list.d"
    d.mkdir(parents=True)
    (tmp_path / "lists" / "partial").mkdir(parents=True)
    for name, text in parts.items():
        (d / name.replace("_", ".")).write_text(textwrap.dedent(text))
    lst = tmp_path / "sources.list"
    if sources_list is not None:
        lst.write_text(textwrap.dedent(sources_list))
    conf = tmp_path / "apt.conf"
    conf.write_text(
        f'Dir::Etc::sourcelist "{lst}";\n'
        f'Dir::Etc::sourceparts "{d}";\n'
        f'Dir::State::lists "{tmp_path / "lists"}";\n'
        f'Dir::Cache "{tmp_path / "cache"}";\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "TORPOR_DEBIAN_MIRROR"}
    env["APT_CONFIG"] = str(conf)
    return env


def mirror(env: dict[str, str], codename: str = "bookworm") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), codename], env=env, capture_output=True,
                          text=True, timeout=30)  # fmt: skip


def found(env: dict[str, str], codename: str = "bookworm") -> str:
    res = mirror(env, codename)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_deb822_only_as_debian_12_cloud_images_have_it(tmp_path: Path) -> None:
    env = layout(tmp_path, debian_sources=DEB822_BOOKWORM)
    assert found(env) == "http://deb.example.org/debian"


def test_deb822_on_debian_13(tmp_path: Path) -> None:
    env = layout(tmp_path, debian_sources=DEB822_TRIXIE)
    assert found(env, "trixie") == "http://trixie.example.org/debian"


def test_security_commented_disabled_and_source_entries_first_are_skipped(
    tmp_path: Path,
) -> None:
    env = layout(tmp_path, debian_sources=SECURITY_FIRST_DEB822)
    assert found(env) == "http://first.example.org/debian"


def test_classic_sources_list_only(tmp_path: Path) -> None:
    env = layout(tmp_path, sources_list=CLASSIC)
    assert found(env) == "http://classic.example.org/debian"


def test_both_layouts_take_apts_own_order(tmp_path: Path) -> None:
    # apt reads sources.list before sources.list.d/
    env = layout(tmp_path, sources_list=CLASSIC, debian_sources=DEB822_BOOKWORM)
    assert found(env) == "http://classic.example.org/debian"


def test_torpors_own_trixie_source_and_third_parties_are_not_the_mirror(
    tmp_path: Path,
) -> None:
    env = layout(tmp_path, a_nodesource_sources=THIRD_PARTY,
                 torpor_trixie_sources=TORPOR_TRIXIE, z_debian_sources=DEB822_BOOKWORM)  # fmt: skip
    assert found(env) == "http://deb.example.org/debian"


def test_updates_suite_or_stable_alias_when_the_release_itself_is_absent(tmp_path: Path) -> None:
    env = layout(tmp_path, sources_list="deb http://upd.example.org/debian bookworm-updates main\n")
    assert found(env) == "http://upd.example.org/debian"
    env = layout(tmp_path / "b", sources_list="deb http://st.example.org/debian stable main\n")
    assert found(env) == "http://st.example.org/debian"


@pytest.mark.parametrize(
    "sources_list, parts",
    [
        ("deb http://security.debian.org/debian-security bookworm-security main\n", {}),
        (None, {"n_sources": THIRD_PARTY}),
        ("# deb http://deb.debian.org/debian bookworm main\n", {}),
        (None, {}),
    ],
    ids=["security-only", "third-party-only", "commented-out", "no-sources"],
)
def test_no_usable_mirror_says_what_to_do(
    tmp_path: Path, sources_list: str | None, parts: dict[str, str]
) -> None:
    res = mirror(layout(tmp_path, sources_list=sources_list, **parts))
    assert res.returncode == 1
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "no Debian mirror for bookworm found in apt's sources" in lines[0]
    assert "TORPOR_DEBIAN_MIRROR" in lines[0]


def test_sources_apt_cannot_read_are_a_clear_error(tmp_path: Path) -> None:
    conflicting = ("deb [signed-by=/a.gpg] http://m.example.org/debian bookworm main\n"
                   "deb [signed-by=/b.gpg] http://m.example.org/debian bookworm main\n")
    env = layout(tmp_path, sources_list=conflicting)
    res = mirror(env)
    assert res.returncode == 1
    assert res.stderr.startswith("apt cannot read its sources (E: Conflicting values")
    assert "TORPOR_DEBIAN_MIRROR" in res.stderr


def test_the_setting_wins_without_looking(tmp_path: Path) -> None:
    env = layout(tmp_path)  # no sources at all
    env["TORPOR_DEBIAN_MIRROR"] = "http://set.example.org/debian/"
    assert found(env) == "http://set.example.org/debian"


def test_the_base_image_build_asks_the_same_script(tmp_path: Path, monkeypatch) -> None:
    env = layout(tmp_path, sources_list=CLASSIC)
    monkeypatch.setenv("APT_CONFIG", env["APT_CONFIG"])
    monkeypatch.delenv("TORPOR_DEBIAN_MIRROR", raising=False)
    assert apt_mirror("bookworm") == "http://classic.example.org/debian"
    monkeypatch.setenv("APT_CONFIG", layout(tmp_path / "none")["APT_CONFIG"])
    with pytest.raises(ImageError, match="no Debian mirror for bookworm"):
        apt_mirror("bookworm")


def test_this_machine_has_a_mirror() -> None:
    assert apt_mirror().startswith(("http://", "https://"))
