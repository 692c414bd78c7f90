"""The sandbox verbs with `--server URL` (and `--token`): they act on the sandboxes of a
`torpor serve` (its sandbox resource, /v1/sandboxes) instead of this machine's engine:

    torpor run --server URL [-e K=V] [--timeout S] [--on-timeout pause|kill] IMAGE
    torpor exec --server URL [-d] [-i] [-e K=V] [-w DIR] [-u USER] SBX CMD...
    torpor ps --server URL [-a] | torpor inspect --server URL SBX | torpor rm --server URL SBX...
    torpor pause --server URL SBX | torpor resume --server URL SBX
    torpor cp --server URL SRC DEST   (one of them SBX:PATH; files only)
    torpor checkpoint create --server URL SBX [NAME] | torpor checkpoint ls --server URL SBX
    torpor restore --server URL SNAPSHOT

Each function here is the body of the verb of the same name in main.py."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from torpor.api.client import Client
from torpor.api.sandbox_client import RemoteSandbox


def _client(server: str, token: str | None) -> Client:
    return Client(server, token, timeout=300)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _env(env: list[str]) -> dict[str, str]:
    bad = [e for e in env if "=" not in e]
    if bad:
        raise typer.BadParameter(f"invalid environment entry {bad[0]!r}: expected K=V")
    return dict(e.split("=", 1) for e in env)


def refuse(what: str) -> None:
    raise typer.BadParameter(f"{what} is for this machine's sandboxes, not with --server")


def run(server: str, token: str | None, image: str, env: list[str], timeout: float | None,
        on_timeout: str) -> None:  # fmt: skip
    sb = _client(server, token).sandboxes.create(image, env=_env(env), timeout=timeout,
                                                 on_timeout=on_timeout)  # fmt: skip
    print(sb.id)


def exec_(server: str, token: str | None, sandbox: str, cmd: list[str], interactive: bool,
          detach: bool, env: list[str], workdir: str | None, user: str | None) -> None:  # fmt: skip
    sb = RemoteSandbox(_client(server, token), sandbox)
    if detach:
        print(sb.spawn(cmd, env=_env(env), cwd=workdir, user=user).id)
        return

    def write(stream: Any) -> Any:
        def out(chunk: bytes) -> None:
            stream.write(chunk)
            stream.flush()
        return out

    stdin = sys.stdin.buffer.read().decode(errors="replace") if interactive else None
    res = sb.exec(cmd, env=_env(env), cwd=workdir, user=user, stdin=stdin, timeout=86_400,
                  on_stdout=write(sys.stdout.buffer), on_stderr=write(sys.stderr.buffer),
                  capture=False)  # fmt: skip
    raise typer.Exit(res.exit_code)


def _age(at: float) -> str:
    from torpor.cli.image_cmd import human_age

    return human_age(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)))


def ps(server: str, token: str | None, all_: bool, fmt: str, quiet: bool) -> None:
    from torpor.cli.image_cmd import format_table

    boxes = _client(server, token).sandboxes.list()
    rows = [sb.last_info for sb in boxes if sb.last_info is not None
            and (all_ or sb.last_info.state != "killed")]  # fmt: skip
    if fmt == "json":
        _print_json([{k: v for k, v in r.to_json().items() if k not in ("env", "box")}
                     for r in rows])  # fmt: skip
        return
    if quiet:
        for r in rows:
            print(r.id)
        return
    table = [["SANDBOX ID", "IMAGE", "STATE", "CREATED", "TIMEOUT", "NOTE"]]
    for r in rows:
        timeout = "never" if r.timeout is None else f"{r.timeout:g}s {r.on_timeout}"
        table.append([r.id, r.image, r.state, _age(r.created_at), timeout, r.note or ""])
    print(format_table(table))


def inspect(server: str, token: str | None, sandbox: str) -> None:
    row = _client(server, token).request("GET", f"/v1/sandboxes/{sandbox}")
    _print_json(row)


def rm(server: str, token: str | None, sandboxes: list[str]) -> None:
    c = _client(server, token)
    for s in sandboxes:
        RemoteSandbox(c, s).kill()
        print(s)


def pause(server: str, token: str | None, sandboxes: list[str]) -> None:
    c = _client(server, token)
    for s in sandboxes:
        t0 = time.monotonic()
        row = RemoteSandbox(c, s).pause()
        print(s)
        sys.stderr.write(f"paused in {(time.monotonic() - t0) * 1000:.0f} ms (snapshot "
                         f"{row.snapshot})\n")  # fmt: skip


def resume(server: str, token: str | None, sandboxes: list[str]) -> None:
    c = _client(server, token)
    for s in sandboxes:
        t0 = time.monotonic()
        resumed = RemoteSandbox(c, s).resume()
        print(s)
        how = f"resumed in {(time.monotonic() - t0) * 1000:.0f} ms" if resumed else "running"
        sys.stderr.write(how + "\n")


def cp(server: str, token: str | None, src: tuple[str | None, str],
       dest: tuple[str | None, str]) -> None:  # fmt: skip
    c = _client(server, token)
    (s_box, s_path), (d_box, d_path) = src, dest
    if d_box is not None:
        RemoteSandbox(c, d_box).files.write(d_path, Path(s_path).read_bytes())
    else:
        assert s_box is not None
        Path(d_path).write_bytes(RemoteSandbox(c, s_box).files.read(s_path))


def checkpoint_create(server: str, token: str | None, sandbox: str, name: str | None,
                      fmt: str) -> None:  # fmt: skip
    snap = RemoteSandbox(_client(server, token), sandbox).checkpoint(name)
    if fmt == "json":
        _print_json(snap.to_json())
    else:
        print(snap.id)


def checkpoint_ls(server: str, token: str | None, sandbox: str | None, fmt: str) -> None:
    from torpor.cli.image_cmd import format_table
    from torpor.cli.output import human_bytes

    if sandbox is None:
        raise typer.BadParameter("with --server, name the sandbox whose snapshots to list")
    snaps = RemoteSandbox(_client(server, token), sandbox).checkpoints()
    if fmt == "json":
        _print_json([s.to_json() for s in snaps])
        return
    table = [["SNAPSHOT NAME", "ID", "KIND", "SIZE", "CREATED"]]
    for s in snaps:
        table.append([s.name, s.id, s.kind, human_bytes(s.bytes), _age(s.created_at)])
    print(format_table(table))


def restore(server: str, token: str | None, snapshot: str, fmt: str) -> None:
    t0 = time.monotonic()
    sb = _client(server, token).sandboxes.create(snapshot=snapshot)
    ms = (time.monotonic() - t0) * 1000
    if fmt == "json":
        assert sb.last_info is not None
        _print_json({**sb.last_info.to_json(), "ms": round(ms, 1)})
    else:
        print(sb.id)
        sys.stderr.write(f"restored {snapshot} as {sb.id} in {ms:.0f} ms\n")
