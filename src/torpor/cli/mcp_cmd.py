"""`torpor mcp`: an MCP server over stdio (torpor.mcp) on one sandbox of this machine
(`--sandbox`, as the CLI's sandbox verbs see it) or one torpor session's sandbox
(`--session`). An MCP client starts it as a subprocess:
`{"command": "torpor", "args": ["mcp", "--sandbox", "dev"]}`."""

from __future__ import annotations

import typer

from torpor.cli import session_cmd
from torpor.cli.session_cmd import DbOpt, StoreOpt


def mcp(
    sandbox: str = typer.Option(None, "--sandbox", help="Sandbox (id or name) the tools act "
                                "on by default."),
    session: str = typer.Option(None, "--session", help="Session whose sandbox the tools "
                                "act on by default: the live one while a turn runs, else a "
                                "copy restored from its latest snapshot."),
    db: str = DbOpt,
    store: str = StoreOpt,
) -> None:
    """Serve a sandbox's tools (run_command, read_file, write_file, list_files, snapshot,
    restore, fork) to an MCP client over stdin/stdout."""
    if (sandbox is None) == (session is None):
        raise typer.BadParameter("give one of --sandbox and --session")
    try:
        from torpor.mcp import SessionSandbox, build, engine_resolver
    except ImportError as e:
        raise typer.BadParameter(str(e)) from None
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
