"""The `torpor` command: Docker-style sandbox verbs, checkpoints, images and tools.

Every command that outputs data takes `--format json`. Errors are one line on stderr and
a non-zero exit code; `exec` exits with the code of the command it ran. The sandbox verbs
hold their sandbox through `torpor.sandbox.Sandbox`; listings (`ps`, `checkpoint ls`)
and standbys ask the engine. With `--server URL` the sandbox verbs act on the sandboxes
of a `torpor serve` instead (remote_cmd.py), and `pause` and `resume` are theirs.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from torpor.cli import (
    dockerd_cmd,
    du_cmd,
    log_cmd,
    mcp_cmd,
    quota_cmd,
    remote_cmd,
    serve_cmd,
    session_cmd,
    snapshot_cmd,
    token_cmd,
)
from torpor.cli.errors import clean_errors, error_line, is_user_error
from torpor.cli.image_cmd import format_table, human_age, image_app, images, pull, rmi
from torpor.cli.output import human_bytes
from torpor.cli.session_cmd import ServerOpt, TokenOpt
from torpor.sandbox.engine import (
    PortMapping,
    SandboxError,
    SandboxInfo,
    SandboxSpec,
    Tmpfs,
    Volume,
    parse_bytes,
)
from torpor.sandbox.handle import Sandbox

app = typer.Typer(
    help="torpor: durable sandboxes for AI agents, snapshotted whole at every wait point.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
checkpoint_app = typer.Typer(help="Checkpoint a running sandbox, list and remove checkpoints.")
app.add_typer(checkpoint_app, name="checkpoint")
app.add_typer(image_app, name="image")
app.add_typer(log_cmd.app, name="log")
app.add_typer(snapshot_cmd.app, name="snapshot")
app.add_typer(session_cmd.app, name="session")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def command(typer_app: typer.Typer, name: str | None = None, **kw: Any) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        typer_app.command(name, **kw)(clean_errors(fn))
        return fn

    return deco


def engine(check: bool = True):  # type: ignore[no-untyped-def]
    """The gVisor engine, with its checkpoints kept in the snapshot store
    (TORPOR_SNAPSHOTS, default file://$TORPOR_HOME/snapshots), its runsc checked by
    torpor's self-test unless check is False (`torpor doctor` runs that check itself)."""
    from torpor.home import torpor_home
    from torpor.runtime.checkpoints import SnapshotCheckpointStorage
    from torpor.sandbox.factory import open_engine
    from torpor.snapshots import open_store

    home = torpor_home()
    return open_engine(
        home, checkpoints=SnapshotCheckpointStorage(open_store(), home), check=check
    )


def _check_format(fmt: str) -> str:
    if fmt not in ("text", "json"):
        raise typer.BadParameter(f"unknown format {fmt!r}: use text or json")
    return fmt


FormatOpt = typer.Option("text", "--format", help="Output format: text or json.")


def parse_size(text: str) -> int:
    try:
        return parse_bytes(text)
    except SandboxError as e:
        raise typer.BadParameter(str(e)) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------------------- sandboxes

_RUN_SETTINGS = {"allow_interspersed_args": False}


@command(app, "run", context_settings=_RUN_SETTINGS)
def run(
    image: str = typer.Argument(..., help="Image to run (e.g. base)."),
    cmd: list[str] = typer.Argument(None, help="Command and arguments (default: idle init)."),
    detach: bool = typer.Option(False, "-d", "--detach", help="Run in the background."),
    name: str = typer.Option(None, "--name", help="Name of the sandbox."),
    env: list[str] = typer.Option([], "-e", "--env", help="Set an environment variable K=V."),
    volume: list[str] = typer.Option(
        [], "-v", "--volume", help="Bind mount HOST:CTR[:ro] (not part of checkpoints)."
    ),
    tmpfs: list[str] = typer.Option(
        [], "--tmpfs", help="Mount a tmpfs PATH[:size=N,mode=M] (part of checkpoints)."
    ),
    workdir: str = typer.Option("", "-w", "--workdir", help="Working directory."),
    user: str = typer.Option("", "-u", "--user", help="User (name or uid[:gid])."),
    publish: list[str] = typer.Option(
        [], "-p", "--publish", help="Publish HOST:CTR on 127.0.0.1 (needs --network sandbox)."
    ),
    network: str = typer.Option("none", "--network", help="none (loopback only) or sandbox."),
    memory: str = typer.Option(None, "-m", "--memory", help="Memory limit, e.g. 512m."),
    cpus: float = typer.Option(None, "--cpus", help="CPU limit, e.g. 1.5."),
    pids: int = typer.Option(4096, "--pids-limit", help="Maximum number of processes."),
    rm: bool = typer.Option(False, "--rm", help="Remove the sandbox when it exits."),
    timeout: float = typer.Option(300, "--timeout", help="--server: idle seconds before "
                                  "--on-timeout (0: never)."),  # fmt: skip
    on_timeout: str = typer.Option("pause", "--on-timeout", help="--server: pause or kill."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Create and start a sandbox (Docker's `run`). With --server, a sandbox of that
    server (its id is printed; it pauses or is killed after --timeout idle seconds)."""
    if server:
        if cmd or volume or tmpfs or publish or name or workdir or user or rm or memory \
                or cpus or network != "none":  # fmt: skip
            remote_cmd.refuse("a command, a name, mounts, ports, limits or --rm")
        remote_cmd.run(server, token, image, list(env), timeout or None, on_timeout)
        return
    if network not in ("none", "sandbox"):
        raise typer.BadParameter(f"unknown network {network!r}: use none or sandbox")
    # parsed before the engine is opened: bad input is refused first
    volumes, mounts = [Volume.parse(v) for v in volume], [Tmpfs.parse(t) for t in tmpfs]
    ports, limit = [PortMapping.parse(p) for p in publish], parse_size(memory) if memory else None
    sb = Sandbox.create(
        image,
        engine=engine(),
        name=name,
        cmd=list(cmd or []),
        env=list(env),
        workdir=workdir,
        user=user,
        volumes=volumes,
        tmpfs=mounts,
        network=network,  # type: ignore[arg-type]
        ports=ports,
        memory=limit,
        cpus=cpus,
        pids=pids,
    )
    if detach:
        print(sb.id)
        return
    sb.logs(follow=True, on_output=_write_to(sys.stdout.buffer))  # until it exits
    code = sb.wait()
    if rm:
        sb.remove(force=True)
    raise typer.Exit(code)


def _write_to(stream: Any) -> Callable[[bytes], None]:
    def write(chunk: bytes) -> None:
        stream.write(chunk)
        stream.flush()

    return write


@command(app, "exec", context_settings=_RUN_SETTINGS)
def exec_(
    sandbox: str = typer.Argument(..., help="Sandbox name or id."),
    cmd: list[str] = typer.Argument(..., help="Command and arguments."),
    interactive: bool = typer.Option(False, "-i", "--interactive", help="Pass stdin through."),
    detach: bool = typer.Option(False, "-d", "--detach", help="Run in the background."),
    env: list[str] = typer.Option([], "-e", "--env", help="Set an environment variable K=V."),
    workdir: str = typer.Option(None, "-w", "--workdir", help="Working directory."),
    user: str = typer.Option(None, "-u", "--user", help="User (name or uid[:gid])."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Run a command in a running sandbox; exits with the command's exit code."""
    if server:
        remote_cmd.exec_(server, token, sandbox, list(cmd), interactive, detach, list(env),
                         workdir, user)  # fmt: skip
        return
    sb = Sandbox(sandbox, engine=engine())
    if detach:
        print(sb.spawn(cmd, env=env, cwd=workdir, user=user).id)
        return
    # Output goes through pipes that are copied, never our own fds handed to runsc:
    # gVisor writes a donated regular file at its own offset, so with stdout redirected
    # to a file it would overwrite what is already there.
    res = sb.exec(cmd, env=env, cwd=workdir, user=user,
                  stdin=sys.stdin.buffer if interactive else None,
                  on_stdout=_write_to(sys.stdout.buffer), on_stderr=_write_to(sys.stderr.buffer),
                  capture=False)  # fmt: skip
    raise typer.Exit(res.exit_code)


def _status(info: SandboxInfo) -> str:
    if info.state == "exited":
        return f"exited ({info.exit_code if info.exit_code is not None else '?'})"
    if info.state == "running" and info.restored_from:
        return f"running (restored from {info.restored_from})"
    return info.state


def _ports(info: SandboxInfo) -> str:
    return ", ".join(f"127.0.0.1:{p.host_port}->{p.sandbox_port}" for p in info.spec.ports)


@command(app, "ps")
def ps(
    all_: bool = typer.Option(False, "-a", "--all", help="Show all sandboxes, not only running."),
    fmt: str = FormatOpt,
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only print ids."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """List sandboxes. OWNER says who started each (a session's worker, a standby or pool
    of a worker process, or a user); "orphan:" marks one whose owner is gone, which the
    next `torpor serve` or `torpor worker` of this home removes. With --server, that
    server's sandboxes (-a: killed ones too)."""
    from torpor.sandbox.owners import describe, is_orphan

    _check_format(fmt)
    if server:
        remote_cmd.ps(server, token, all_, fmt, quiet)
        return
    infos = engine().list(all=all_)
    if fmt == "json":
        _print_json([{**i.to_json(), "orphan": is_orphan(i.owner)} for i in infos])
        return
    if quiet:
        for i in infos:
            print(i.id)
        return
    rows = [["SANDBOX ID", "NAME", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "OWNER"]]
    for i in infos:
        cmd = " ".join(i.spec.cmd)
        owner = ("orphan: " if is_orphan(i.owner) else "") + describe(i.owner)
        rows.append([
            i.id, i.name, i.spec.image, f'"{cmd[:27]}..."' if len(cmd) > 30 else f'"{cmd}"',
            human_age(i.created), _status(i), _ports(i), owner,
        ])  # fmt: skip
    print(format_table(rows))


@command(app, "logs")
def logs(
    sandbox: str = typer.Argument(...),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep following the output."),
) -> None:
    """Show the output of a sandbox's main process."""
    Sandbox(sandbox, engine=engine()).logs(follow=follow, on_output=_write_to(sys.stdout.buffer))


@command(app, "stop")
def stop(
    sandboxes: list[str] = typer.Argument(...),
    timeout: float = typer.Option(10, "-t", "--time", help="Seconds to wait before killing."),
) -> None:
    """Stop running sandboxes (SIGTERM, then SIGKILL after the timeout)."""
    eng = engine()
    for s in sandboxes:
        Sandbox(s, engine=eng).stop(timeout=timeout)
        print(s)


@command(app, "start")
def start(
    sandbox: str = typer.Argument(...),
    checkpoint: str = typer.Option(
        None, "--checkpoint", help="Restore this checkpoint instead of starting fresh."
    ),
    fmt: str = FormatOpt,
) -> None:
    """Start a stopped sandbox: fresh from its image, or from a checkpoint."""
    _check_format(fmt)
    t0 = time.monotonic()
    info = Sandbox(sandbox, engine=engine()).start(checkpoint=checkpoint).last_info
    assert info is not None
    ms = (time.monotonic() - t0) * 1000
    if fmt == "json":
        _print_json({**info.to_json(), "ms": round(ms, 1)})
    else:
        print(info.name)
        how = f"restored from {checkpoint}" if checkpoint else "started"
        err.print(f"{how} in {ms:.0f} ms")


@command(app, "rm")
def rm(
    sandboxes: list[str] = typer.Argument(...),
    force: bool = typer.Option(False, "-f", "--force", help="Kill a running sandbox first."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Remove sandboxes (with --server: kill them; their named snapshots stay)."""
    if server:
        remote_cmd.rm(server, token, list(sandboxes))
        return
    eng = engine()
    failed = False
    for s in sandboxes:
        try:
            Sandbox(s, engine=eng).remove(force=force)
            print(s)
        except Exception as e:
            if not is_user_error(e):
                raise
            error_line(e)
            failed = True
    if failed:
        raise typer.Exit(1)


@command(app, "rename")
def rename(sandbox: str = typer.Argument(...), new_name: str = typer.Argument(...)) -> None:
    """Rename a sandbox."""
    Sandbox(sandbox, engine=engine()).rename(new_name)


@command(app, "inspect")
def inspect(sandbox: str = typer.Argument(...), fmt: str = FormatOpt,
            server: str = ServerOpt, token: str = TokenOpt) -> None:  # fmt: skip
    """Show a sandbox's full record as JSON."""
    _check_format(fmt)
    if server:
        remote_cmd.inspect(server, token, sandbox)
        return
    _print_json(Sandbox(sandbox, engine=engine()).info.to_json())


@command(app, "cp")
def cp(
    src: str = typer.Argument(..., help="HOST_PATH or SANDBOX:PATH"),
    dest: str = typer.Argument(..., help="HOST_PATH or SANDBOX:PATH"),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Copy files or directories between the host and a sandbox (either direction; with
    --server, one file)."""

    def split(p: str) -> tuple[str | None, str]:
        head, sep, tail = p.partition(":")
        if sep and "/" not in head and head:
            return head, tail
        return None, p

    (s_box, s_path), (d_box, d_path) = split(src), split(dest)
    if (s_box is None) == (d_box is None):
        raise typer.BadParameter("exactly one of SRC and DEST must be SANDBOX:PATH")
    if server:
        remote_cmd.cp(server, token, (s_box, s_path), (d_box, d_path))
        return
    eng = engine()
    if d_box is not None:
        Sandbox(d_box, engine=eng).files.upload(s_path, d_path)
    else:
        assert s_box is not None
        Sandbox(s_box, engine=eng).files.download(s_path, d_path)


@command(app, "restore")
def restore(
    checkpoint: str = typer.Argument(..., help="Checkpoint id (or a unique name)."),
    name: str = typer.Option(None, "--name", help="Name of the new sandbox."),
    fmt: str = FormatOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Start a new, independent sandbox from a checkpoint (a fork; with --server, from a
    snapshot of one of that server's sandboxes)."""
    _check_format(fmt)
    if server:
        if name:
            remote_cmd.refuse("--name")
        remote_cmd.restore(server, token, checkpoint, fmt)
        return
    t0 = time.monotonic()
    info = Sandbox.restore(checkpoint, engine=engine(), name=name).last_info
    assert info is not None
    ms = (time.monotonic() - t0) * 1000
    if fmt == "json":
        _print_json({**info.to_json(), "ms": round(ms, 1)})
    else:
        print(info.name)
        into = " (into a standby)" if info.from_standby else ""
        err.print(f"restored {checkpoint} as {info.name} in {ms:.0f} ms{into}")


@command(app, "pause")
def pause(sandboxes: list[str] = typer.Argument(...), server: str = ServerOpt,
          token: str = TokenOpt) -> None:  # fmt: skip
    """Pause sandboxes of a `torpor serve` (--server): checkpointed into its snapshot store
    and stopped, holding no memory until resumed."""
    if not server:
        raise typer.BadParameter("pause acts on the sandboxes of a torpor server: give "
                                 "--server URL (here: torpor checkpoint create SANDBOX)")
    remote_cmd.pause(server, token, list(sandboxes))


@command(app, "resume")
def resume(sandboxes: list[str] = typer.Argument(...), server: str = ServerOpt,
           token: str = TokenOpt) -> None:  # fmt: skip
    """Resume paused sandboxes of a `torpor serve` (--server), every process where it was."""
    if not server:
        raise typer.BadParameter("resume acts on the sandboxes of a torpor server: give "
                                 "--server URL (here: torpor start --checkpoint ID SANDBOX)")
    remote_cmd.resume(server, token, list(sandboxes))


@command(app, "standby")
def standby(
    image: str = typer.Argument(..., help="Image the standbys are for (e.g. base)."),
    count: int = typer.Option(1, "-n", "--count", help="How many to keep (0 removes them)."),
    memory: str = typer.Option(None, "-m", "--memory", help="Memory limit, e.g. 512m."),
    cpus: float = typer.Option(None, "--cpus", help="CPU limit, e.g. 1.5."),
    pids: int = typer.Option(4096, "--pids-limit", help="Maximum number of processes."),
    tmpfs: list[str] = typer.Option([], "--tmpfs", help="A tmpfs PATH[:size=N,mode=M]."),
) -> None:
    """Keep sandboxes set up but not started (`ps -a` shows them as standby), so that
    `restore` of a checkpoint taken with the same settings skips runsc's set-up."""
    if count < 0:
        raise typer.BadParameter("--count must be 0 or more")
    spec = SandboxSpec(image=image, memory=parse_size(memory) if memory else None,
                       cpus=cpus, pids=pids, tmpfs=[Tmpfs.parse(t) for t in tmpfs])  # fmt: skip
    for info in engine().standby(spec, count):
        print(info.name)


# ---------------------------------------------------------------------------- checkpoints


@command(checkpoint_app, "create")
def checkpoint_create(
    sandbox: str = typer.Argument(...),
    checkpoint: str = typer.Argument(None, help="Checkpoint name (default: a timestamp)."),
    leave_running: bool = typer.Option(
        False, "--leave-running", help="Keep the sandbox running after the checkpoint."
    ),
    fmt: str = FormatOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Checkpoint a running sandbox: every process, its memory, and its files. With
    --server: a snapshot of one of its sandboxes, which keeps running (`pause` stops it)."""
    _check_format(fmt)
    if server:
        remote_cmd.checkpoint_create(server, token, sandbox, checkpoint, fmt)
        return
    eng = engine()
    ck = Sandbox(sandbox, engine=eng).checkpoint(checkpoint, leave_running=leave_running).info
    if fmt == "json":
        _print_json(ck.to_json())
    else:
        print(f"{ck.id}\t{human_bytes(ck.size)}\t{ck.seconds * 1000:.0f} ms", flush=True)
    flush = getattr(eng.checkpoints, "flush", None)
    if flush is not None:  # the compressed copy is stored before the command returns
        flush()


@command(checkpoint_app, "ls")
def checkpoint_ls(
    sandbox: str = typer.Argument(None, help="Only this sandbox's checkpoints."),
    fmt: str = FormatOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """List checkpoints (with --server: a sandbox's snapshots)."""
    _check_format(fmt)
    if server:
        remote_cmd.checkpoint_ls(server, token, sandbox, fmt)
        return
    metas = engine().list_checkpoints(sandbox)
    if fmt == "json":
        _print_json(metas)
        return
    rows = [["CHECKPOINT NAME", "ID", "SANDBOX", "SIZE", "TIME", "CREATED"]]
    for m in metas:
        rows.append([
            m.get("name", ""), m["id"], m.get("sandbox", ""), human_bytes(m.get("size", 0)),
            f"{m.get('seconds', 0) * 1000:.0f} ms", human_age(m.get("created", "")),
        ])  # fmt: skip
    print(format_table(rows))


@command(checkpoint_app, "rm")
def checkpoint_rm(
    sandbox: str = typer.Argument(...),
    checkpoint: str = typer.Argument(...),
) -> None:
    """Remove a checkpoint of a sandbox."""
    Sandbox(sandbox, engine=engine()).remove_checkpoint(checkpoint)
    print(checkpoint)


# ---------------------------------------------------------------------------- images, tools

app.command("pull")(clean_errors(pull))
app.command("images")(clean_errors(images))
app.command("rmi")(clean_errors(rmi))
app.command("worker")(clean_errors(session_cmd.worker))
app.command("serve")(clean_errors(serve_cmd.serve))
app.command("dockerd")(clean_errors(dockerd_cmd.dockerd))
app.command("mcp")(clean_errors(mcp_cmd.mcp))
app.command("du")(clean_errors(du_cmd.du))
app.add_typer(token_cmd.app, name="token")
app.add_typer(quota_cmd.app, name="quota")


@command(app, "doctor")
def doctor(
    build_base: bool = typer.Option(
        False, "--build-base", help="Also build the base image if it is missing."
    ),
    fmt: str = FormatOpt,
) -> None:
    """Check this host: runsc (with a self-test sandbox), tools, torpor-init, base image,
    orphaned sandboxes (a warning: the next serve or worker removes them)."""
    from torpor.sandbox.doctor import run_checks

    _check_format(fmt)

    def progress(line: str) -> None:  # the base image build's steps, as they come
        err.print(f"     {'':<12} [dim]{line}[/dim]", markup=True, highlight=False)

    checks = []
    for c in run_checks(lambda: engine(check=False), build_base=build_base,
                        progress=progress):  # fmt: skip
        checks.append(c)
        if fmt == "text":  # each check as it finishes: the base image build takes minutes
            mark = ("[green]ok[/green]  " if c.ok else "[red]FAIL[/red]" if c.blocking
                    else "[yellow]WARN[/yellow]")  # fmt: skip
            took = f" [dim]({c.seconds:.1f} s)[/dim]" if c.seconds is not None else ""
            out.print(f"{mark} {c.name:<12} {c.detail}{took}", markup=True)
    if fmt == "json":
        _print_json([c.__dict__ for c in checks])
    if not all(c.ok or not c.blocking for c in checks):  # a warning alone exits 0
        raise typer.Exit(1)


@command(app, "demo")
def demo(
    model: str = typer.Option(None, "--model", help="A real model (provider:name) instead "
                              "of the scripted one."),  # fmt: skip
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report instead."),
    sandbox_only: bool = typer.Option(False, "--sandbox-only", help="Only the sandbox round "
                                      "trip (checkpoint, restore, fork), no agent."),  # fmt: skip
) -> None:
    """A durable agent session end to end: wait points, restore, a killed worker recovered."""
    if sandbox_only:
        from torpor.cli.demo import sandbox_round_trip

        sandbox_round_trip(engine(), "base", out)
        return
    from torpor.cli.agent_demo import run_demo

    report = run_demo(out, model=model, as_json=as_json)
    if as_json:
        _print_json(report)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
