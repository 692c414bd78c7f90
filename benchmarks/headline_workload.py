"""The coding-agent workload of the headline benchmark (issue 7), as scripted model turns.

A session set up in one turn (a git repo, a virtualenv with a package installed from
wheels built on the host, an interpreter process holding a counter in memory, a dev
server), then feature turns: write a module and its test, run the tests in the venv,
edit, commit, bump the interpreter's counter, fetch the file from the dev server, list
the repo. Every turn ends with a text-only answer: a wait point.

Nothing inside the sandbox touches the network. The wheels (a throwaway package built
here with zipfile, and pip's own wheel from the host Python's ensurepip bundle, since the
base image has the `venv` module but no `ensurepip`) reach the sandbox through a host-side
tool, `upload_wheels`, which is an ordinary logged tool call: replay re-runs it too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torpor.agent.tools import Tool, ToolRegistry, builtin_tools

PKG = "benchcalc"
PKG_VERSION = "0.1.0"
WHEELS_IN_SANDBOX = "/work/wheels"
SOCK = "/tmp/interp.sock"
ONE_MB = 1_000_000
OUTPUT_CAP = 4 * ONE_MB  # the 1 MB outputs (and the probe's file listing) must not be cut

INTERP = f"""\
# An interpreter holding state in memory only: a counter and a random token.
import os, socket
token = os.urandom(4).hex()
count = 0
try:
    os.unlink({SOCK!r})
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX)
srv.bind({SOCK!r})
srv.listen()
while True:
    conn, _ = srv.accept()
    with conn:
        cmd = conn.recv(64).decode().strip()
        if cmd == "inc":
            count += 1
        conn.sendall(f"{{token}} {{count}}\\n".encode())
"""

BUMP = f"""\
import socket, sys, time
deadline = time.time() + 10
while True:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect({SOCK!r})
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.05)
s.sendall((sys.argv[1] if len(sys.argv) > 1 else "get").encode())
print("counter", s.recv(64).decode().strip())
"""

NOISE = """\
# Prints about 1 MB of varied text: a verbose test log.
import random, sys
rng = random.Random(int(sys.argv[1]))
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000000
out, size = [], 0
while size < n:
    line = f"log {len(out):06d} ok {rng.getrandbits(64):016x} {rng.random():.6f}\\n"
    out.append(line)
    size += len(line)
sys.stdout.write("".join(out))
"""

PROBE = ("python3 /work/bump.py get; echo ---; "
         "find /work -type f -exec sha256sum {} + | sort -k 2")


# ----------------------------------------------------------------------------- wheels

def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out_dir: Path) -> Path:
    """A tiny pure-Python wheel of a throwaway package, written by hand (PEP 427)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dist = f"{PKG}-{PKG_VERSION}.dist-info"
    files = {
        f"{PKG}/__init__.py": (b'"""Throwaway package for the torpor headline benchmark."""\n\n'
                               b"def add(a, b):\n    return a + b\n\n\n"
                               b"def scale(x, k=3):\n    return x * k\n"),
        f"{dist}/METADATA": (f"Metadata-Version: 2.1\nName: {PKG}\n"
                             f"Version: {PKG_VERSION}\n").encode(),
        f"{dist}/WHEEL": (b"Wheel-Version: 1.0\nGenerator: torpor-bench\n"
                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
        f"{dist}/top_level.txt": f"{PKG}\n".encode(),
    }
    record = "\n".join(_record_line(n, d) for n, d in files.items())
    record += f"\n{dist}/RECORD,,\n"
    path = out_dir / f"{PKG}-{PKG_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items():
            z.writestr(zipfile.ZipInfo(n, (2024, 1, 1, 0, 0, 0)), d)
        z.writestr(zipfile.ZipInfo(f"{dist}/RECORD", (2024, 1, 1, 0, 0, 0)), record)
    return path


def find_pip_wheel() -> Path | None:
    """pip's wheel as bundled with the host Python (ensurepip), if there is one."""
    for base in {sys.base_prefix, sys.prefix}:
        for p in sorted(Path(base).glob("lib/python3*/ensurepip/_bundled/pip-*.whl")):
            return p
    return None


def prepare_wheels(out_dir: Path) -> dict[str, Path]:
    wheels = {"pkg": build_wheel(out_dir)}
    pip = find_pip_wheel()
    if pip is not None:
        target = out_dir / pip.name
        target.write_bytes(pip.read_bytes())
        wheels["pip"] = target
    return wheels


def registry(wheel_dir: Path) -> ToolRegistry:
    """Built-in tools (output cap raised so 1 MB outputs stay whole) + upload_wheels."""
    reg = ToolRegistry(builtin_tools(output_cap=OUTPUT_CAP))

    def upload_wheels(ws: Any) -> str:
        names = []
        for p in sorted(wheel_dir.glob("*.whl")):
            ws.write_file(f"{WHEELS_IN_SANDBOX}/{p.name}", p.read_bytes())
            names.append(f"{p.name} ({p.stat().st_size} bytes)")
        return "uploaded to " + WHEELS_IN_SANDBOX + ": " + ", ".join(names)

    reg.add(Tool("upload_wheels", "Copy the locally prepared wheels into /work/wheels.",
                 {"type": "object", "properties": {}, "additionalProperties": False},
                 upload_wheels, safe_to_rerun=True))
    return reg


# --------------------------------------------------------------------------- the script

def _shell(cmd: str) -> dict[str, Any]:
    return {"name": "shell", "arguments": {"command": cmd, "timeout": 300}}


def _write(path: str, text: str) -> dict[str, Any]:
    return {"name": "write_file", "arguments": {"path": path, "content": text}}


def install_command(wheels: dict[str, Path]) -> tuple[str, str]:
    """(shell command, method) installing the package into /work/venv in the sandbox."""
    pkg = f"{WHEELS_IN_SANDBOX}/{wheels['pkg'].name}"
    check = f" && /work/venv/bin/python -c 'import {PKG}; print({PKG}.add(2, 3))'"
    if "pip" in wheels:
        pip = f"{WHEELS_IN_SANDBOX}/{wheels['pip'].name}"
        return (f"python3 -m venv --without-pip /work/venv && /work/venv/bin/python {pip}/pip "
                f"install -q --no-index --no-cache-dir {pip} && /work/venv/bin/pip install "
                f"--no-index --no-cache-dir {pkg}{check}",
                "venv --without-pip, then pip run from its own wheel installs pip and the "
                "package with --no-index")
    return (f"python3 -m venv --without-pip /work/venv && python3 -m zipfile -e {pkg} "
            f"/work/venv/lib/python3.11/site-packages/{check}",
            "venv --without-pip, package unpacked with python3 -m zipfile")


def _feature(i: int, big: bool) -> list[list[dict[str, Any]]]:
    """One feature turn: model steps, each a list of tool calls."""
    def noise(k: int) -> str:
        return f" ; python3 /work/noise.py {i * 10 + k}" if big else ""

    mod = (f'"""Feature {i}."""\nfrom {PKG} import add, scale\n\nVERSION = 0\n\n\n'
           f"def feature_{i}(x):\n    return scale(add(x, {i}))\n")
    test = (f"import unittest\n\nfrom src.feat_{i} import feature_{i}\n\n\n"
            f"class T(unittest.TestCase):\n    def test_it(self):\n"
            f"        self.assertEqual(feature_{i}(1), {3 * (1 + i)})\n")
    return [
        [_write(f"/work/repo/src/feat_{i}.py", mod),
         _write(f"/work/repo/tests/test_feat_{i}.py", test)],
        [_shell(f"cd /work/repo && /work/venv/bin/python -m unittest -v tests.test_feat_{i}"
                + noise(1))],
        [{"name": "edit_file", "arguments": {"path": f"/work/repo/src/feat_{i}.py",
                                             "old": "VERSION = 0", "new": "VERSION = 1"}}],
        [_shell(f"cd /work/repo && git add -A && git commit -qm 'feature {i}' && "
                "git log --oneline | head -3" + noise(2)),
         _shell("python3 /work/bump.py inc" + noise(3))],
        [_shell(f"curl -s http://127.0.0.1:8000/src/feat_{i}.py | head -4" + noise(4)),
         {"name": "list_dir", "arguments": {"path": "/work/repo/src"}}],
    ]


def _setup(wheels: dict[str, Path], big: bool,
           git_gc_auto: int | None = None) -> list[list[dict[str, Any]]]:  # fmt: skip
    install, _ = install_command(wheels)
    # git_gc_auto: the repo's own gc.auto, over the image's (torpor/base packs at 256)
    gc = f"git config gc.auto {git_gc_auto} && " if git_gc_auto is not None else ""
    def noise(k: int) -> str:
        return f" ; python3 /work/noise.py {k}" if big else ""

    return [
        [_write("/work/interp.py", INTERP), _write("/work/bump.py", BUMP),
         _write("/work/noise.py", NOISE)],
        [_shell("mkdir -p /work/repo/src /work/repo/tests && cd /work/repo && git init -q && "
                "git config user.email agent@example.com && git config user.name agent && "
                + gc + "touch src/__init__.py tests/__init__.py && "
                "printf '# demo\\n' > README.md && git add -A && git commit -qm init && "
                "git log --oneline" + noise(1))],
        [{"name": "upload_wheels", "arguments": {}}],
        [_shell(install + noise(2))],
        [{"name": "start_process", "arguments": {"command": "python3 /work/interp.py"}},
         {"name": "start_process", "arguments": {
             "command": "python3 -m http.server 8000 --bind 127.0.0.1 --directory /work/repo"}}],
        [_shell("python3 /work/bump.py inc" + noise(3))],
    ]


@dataclass
class Script:
    lines: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0  # user turns (wait points) before the probe
    calls: int = 0

    def write(self, path: Path) -> str:
        path.write_text("".join(json.dumps(t) + "\n" for t in self.lines))
        return f"script:{path}"


def make_script(calls: int, big: bool, wheels: dict[str, Path],
                turn_calls: int | None = None, git_gc_auto: int | None = None) -> Script:
    """Exactly `calls` tool calls: the setup turn, then feature turns. Each turn ends with
    a text answer (a wait point). turn_calls groups several features into one long turn
    (for the snapshot policy experiment). Then one probe turn (not counted)."""
    turns: list[list[list[dict[str, Any]]]] = [_setup(wheels, big, git_gc_auto)]
    i = 0
    while sum(len(s) for t in turns for s in t) < calls:
        i += 1
        turns.append(_feature(i, big))
    if turn_calls:  # regroup into turns of about turn_calls calls, setup kept apart
        steps = [s for t in turns[1:] for s in t]
        turns = [turns[0]]
        cur: list[list[dict[str, Any]]] = []
        for s in steps:
            cur.append(s)
            if sum(len(x) for x in cur) >= turn_calls:
                turns.append(cur)
                cur = []
        if cur:
            turns.append(cur)
    out = Script()
    left = calls
    for t in turns:
        if left <= 0:
            break
        for step in t:
            if left <= 0:
                break
            step = step[:left]
            left -= len(step)
            out.lines.append({"text": "", "tool_calls": step})
        out.lines.append({"text": f"Done with turn {out.turns + 1}. Anything else?"})
        out.turns += 1
    out.calls = calls - left
    out.lines.append({"text": "Checking the state.", "tool_calls": [_shell(PROBE)]})
    out.lines.append({"text": "State checked."})
    return out


def parse_probe(text: str) -> tuple[str | None, dict[str, str]]:
    """(counter line, {path: sha256}) from a probe result."""
    counter = None
    files: dict[str, str] = {}
    after = False
    for line in text.splitlines():
        if line.startswith("counter "):
            counter = line[len("counter "):].strip()
        elif line.strip() == "---":
            after = True
        elif after and len(line) > 66 and line[64:66] == "  ":
            files[line[66:]] = line[:64]
    return counter, files
