"""`torpor serve`: the HTTP API (and its worker threads) in one process, on uvicorn; with
`--e2b PORT`, E2B's protocol too, on another port of the same server (torpor.api.e2b).

Loopback by default. Another address is refused unless at least one API token exists:
with tokens, every request needs one; without any (loopback only) the API is open.

At start it removes the sandboxes of dead torpor processes of its home (and the records
of the sandbox resource's that those held say so). SIGTERM or SIGINT stop it cleanly: no
more turns are claimed, running ones get --grace seconds and are then left for another
worker to recover, warm sandboxes are snapshotted, the sandbox resource's live sandboxes
paused, standbys removed, and it exits 0 (torpor.runtime.shutdown). uvicorn's own
handling re-raised the signal once it had shut down, which killed the process before the
runtime was closed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from torpor.cli import lifecycle
from torpor.cli.lifecycle import GraceOpt
from torpor.cli.session_cmd import DbOpt, StoreOpt, ToolsOpt


class ServeError(Exception):
    """The server cannot start as asked."""


ServeError.__module__ = "torpor.cli.serve_cmd"


class EarlySignals:
    """SIGTERM and SIGINT received before the server has its own handlers: remembered
    (not the default action, which would kill the process before the runtime is
    closed), then handed to the server as soon as it installs its handlers."""

    def __init__(self) -> None:
        self.received: list[int] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda sig, _frame: self.received.append(sig))


def graceful_server(config: Any, rt: Any, grace: float, *, ready: str = "",
                    early: EarlySignals | None = None) -> Any:  # fmt: skip
    """A uvicorn server that, on SIGTERM or SIGINT, stops the runtime's workers claiming
    turns at once and abandons the turns still running after `grace` seconds (while
    uvicorn drains its connections and the app's lifespan joins its worker threads), and
    that does not re-raise the signal when it is done (uvicorn does: the default action
    then kills the process before `finally` can close the runtime). `ready` is written
    to stderr once it listens with its handlers installed; a signal that came before
    them (`early`) stops it as soon as they are."""
    import uvicorn

    from torpor.runtime.shutdown import abandon_running_turns

    class Server(uvicorn.Server):
        timer: threading.Timer | None = None

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if ready and not self.should_exit:
                sys.stderr.write(ready)

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            rt.stopping.set()
            if self.timer is None:
                self.timer = threading.Timer(
                    grace, lambda: lifecycle.say_abandoned(abandon_running_turns(rt))
                )
                self.timer.daemon = True
                self.timer.start()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            sigs = (signal.SIGINT, signal.SIGTERM)
            old = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
            for sig in early.received if early is not None else []:
                self.handle_exit(sig, None)
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    return Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port for uvicorn to serve on (it listens on it)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8420, "--port"),
    db: str = DbOpt,
    store: str = StoreOpt,
    workers: int = typer.Option(1, "--workers", help="Threads running turns (0: none; "
                                "then run `torpor worker` processes)."),  # fmt: skip
    max_body: int = typer.Option(1 << 20, "--max-body", help="Request body limit, bytes."),
    sessions_per_tenant: int = typer.Option(1000, "--sessions-per-tenant"),
    turns_per_tenant: int = typer.Option(8, "--turns-per-tenant"),
    standby: int = typer.Option(1, "--standby", help="Standby sandboxes kept per image for "
                                "resuming sessions (~50 MiB each; 0: none)."),  # fmt: skip
    scripts: Path = typer.Option(None, "--scripts", help="Directory that `script:` models "
                                 "may come from (default: none; they are refused)."),  # fmt: skip
    tools: str = ToolsOpt,
    grace: float = GraceOpt,
    affinity: float = lifecycle.AffinityOpt,
    prefetch: bool = lifecycle.PrefetchOpt,
    retention: str = lifecycle.RetentionOpt,
    gc_every: float = lifecycle.GcEveryOpt,
    quota_bytes: int = lifecycle.QuotaBytesOpt,
    quota_snapshots: int = lifecycle.QuotaSnapshotsOpt,
    closed_days: float = lifecycle.ClosedDaysOpt,
    log_level: str = lifecycle.LogLevelOpt,
    e2b: int = typer.Option(None, "--e2b", help="Also serve E2B's protocol on this port: "
                            "E2B_API_URL and E2B_SANDBOX_URL set to it (E2B_API_KEY a "
                            "token) point the e2b SDK at torpor (docs/e2b.md)."),  # fmt: skip
    e2b_host: str = typer.Option("127.0.0.1", "--e2b-host", help="Address of --e2b."),
) -> None:
    """Serve the HTTP API (/v1, OpenAPI at /openapi.json, docs at /docs), and with --e2b
    E2B's protocol."""
    early = EarlySignals()  # first: a SIGTERM from here on stops it cleanly
    lifecycle.setup_logging(log_level)
    import uvicorn

    from torpor.agent.tools import load_tools
    from torpor.api.app import Limits, create_app
    from torpor.api.tokens import TokenStore
    from torpor.runtime.core import Runtime
    from torpor.runtime.quotas import Quota
    from torpor.runtime.shutdown import shutdown

    registry = load_tools(tools)  # before anything starts: a bad module is one line, exit 1
    rt = Runtime(db=db, store=store, tools=registry, standby=standby if workers > 0 else 0,
                 affinity=affinity, prefetch=prefetch, retention=retention or "",
                 gc_every=gc_every if workers > 0 else 0.0,
                 quota=Quota(stored_bytes=quota_bytes, snapshots=quota_snapshots),
                 closed_days=closed_days)
    has_tokens = TokenStore(rt.db).any()
    for where in [host, *([e2b_host] if e2b else [])]:
        if not is_loopback(where) and not has_tokens:
            raise ServeError(
                f"refusing to listen on {where}, a non-loopback address, with no API token: "
                "create one first (torpor token create --tenant NAME), or use 127.0.0.1"
            )
    if e2b is not None and e2b == port:
        raise ServeError(f"--e2b {e2b} is the API's --port: give E2B a port of its own")
    if not has_tokens:
        sys.stderr.write("torpor: no API tokens exist, so the API is open to anyone on "
                         "this machine (loopback only)\n")  # fmt: skip
    limits = Limits(max_body_bytes=max_body, sessions_per_tenant=sessions_per_tenant,
                    turns_per_tenant=turns_per_tenant)  # fmt: skip
    if scripts is not None and not scripts.is_dir():
        raise ServeError(f"--scripts {scripts}: no such directory")
    sockets = [bind(host, port), *([bind(e2b_host, e2b)] if e2b else [])]
    lifecycle.reap(rt)
    lifecycle.recover_sandboxes(rt)
    app: Any = create_app(rt, auth=has_tokens, limits=limits, workers=workers, scripts=scripts)
    ready = f"torpor: serving http://{host}:{port} (docs at /docs)"
    if e2b:
        try:
            from torpor.api.e2b import ByPort, E2BApp
        except ImportError as e:
            raise ServeError(f"--e2b needs torpor's e2b extra (pip install 'torpor[e2b]'): "
                             f"{e}") from None

        app = ByPort(app, {e2b: E2BApp(app.state.api)})
        ready += f"; E2B's protocol on http://{e2b_host}:{e2b}"
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=grace)  # fmt: skip
    server = graceful_server(config, rt, grace, early=early, ready=ready + "\n")
    try:
        server.run(sockets=sockets)
    finally:
        if server.timer is not None:
            server.timer.cancel()
        lifecycle.say_abandoned(shutdown(rt, grace=0))
