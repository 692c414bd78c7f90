"""`torpor mcp`: an MCP server over stdio (torpor.mcp) on one sandbox of this machine
(`--sandbox`, as the CLI's sandbox verbs see it), one sandbox of a torpor server
(`--sandbox ID --server URL`: the sandbox resource, /v1/sandboxes) or one torpor session's
sandbox (`--session`). An MCP client starts it as a subprocess:
`{"command": "torpor", "args": ["mcp", "--sandbox", "dev"]}`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import typer

from torpor.cli import session_cmd
from torpor.cli.errors import error_line
from torpor.cli.session_cmd import DbOpt, ServerOpt, StoreOpt, TokenOpt


def remote_resolver(client: Any, default: str) -> Any:
    """Sandboxes of a torpor server by id (`default` when a tool names none): snapshots,
    restore and fork are the server's."""
    from torpor.api.remote import ApiError
    from torpor.mcp import Target

    @contextlib.contextmanager
    def resolve(name: str | None, headers: Mapping[str, str] | None) -> Iterator[Target]:
        try:
            sb = client.sandboxes.get(name or default)
            yield Target(
                f"sandbox {sb.id}", sb, lambda n: sb.checkpoint(n).id,
                lambda snap: client.sandboxes.create(sb.info.image, snapshot=snap).id,
                lambda: sb.fork().id)
        except ApiError as e:
            raise LookupError(e.message) from None

    return resolve


def mcp(
    sandbox: str = typer.Option(None, "--sandbox", help="Sandbox (id or name) the tools act "
                                "on by default."),
    session: str = typer.Option(None, "--session", help="Session whose sandbox the tools "
                                "act on by default: the live one while a turn runs, else a "
                                "copy restored from its latest snapshot."),
    db: str = DbOpt,
    store: str = StoreOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Serve a sandbox's tools (run_command, read_file, write_file, list_files, snapshot,
    restore, fork) to an MCP client over stdin/stdout."""
    if (sandbox is None) == (session is None):
        raise typer.BadParameter("give one of --sandbox and --session")
    try:
        from torpor.mcp import SessionSandbox, build, engine_resolver
    except ImportError as e:  # the extra is not installed: one line, how to get it
        error_line(e)
        raise typer.Exit(1) from None
    if session is not None and server:
        raise typer.BadParameter("--session serves a session of this machine; a server's "
                                 "sessions are at its /mcp")
    if sandbox is not None and server:
        build(remote_resolver(session_cmd.client(server, token), sandbox)).run("stdio")
        return
    if sandbox is not None:
        from torpor.home import torpor_home
        from torpor.runtime.checkpoints import SnapshotCheckpointStorage
        from torpor.sandbox.factory import open_engine
        from torpor.snapshots import open_store

        home = torpor_home()  # the engine of torpor's CLI: checkpoints in the snapshot store
        eng = open_engine(home, checkpoints=SnapshotCheckpointStorage(open_store(), home))
        build(engine_resolver(eng, sandbox)).run("stdio")
        return
    rt = session_cmd.runtime(db, store)
    rt.db.get(session)  # an unknown session: one line, exit 1
    target = SessionSandbox(rt, session)
    try:
        build(target.resolver()).run("stdio")
    finally:
        target.close()
        rt.close()
