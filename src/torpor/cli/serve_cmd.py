"""`torpor serve`: the HTTP API (and its worker threads) in one process, on uvicorn.

Loopback by default. Another address is refused unless at least one API token exists:
with tokens, every request needs one; without any (loopback only) the API is open.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import typer

from torpor.cli.session_cmd import DbOpt, StoreOpt


class ServeError(Exception):
    """The server cannot start as asked."""


ServeError.__module__ = "torpor.cli.serve_cmd"


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
) -> None:
    """Serve the HTTP API (/v1, OpenAPI at /openapi.json, docs at /docs)."""
    import uvicorn

    from torpor.api.app import Limits, create_app
    from torpor.api.tokens import TokenStore
    from torpor.runtime.core import Runtime

    rt = Runtime(db=db, store=store, standby=standby if workers > 0 else 0)
    has_tokens = TokenStore(rt.db).any()
    if not is_loopback(host) and not has_tokens:
        raise ServeError(
            f"refusing to listen on {host}, a non-loopback address, with no API token: "
            "create one first (torpor token create --tenant NAME), or use --host 127.0.0.1"
        )
    if not has_tokens:
        sys.stderr.write("torpor: no API tokens exist, so the API is open to anyone on "
                         "this machine (loopback only)\n")  # fmt: skip
    limits = Limits(max_body_bytes=max_body, sessions_per_tenant=sessions_per_tenant,
                    turns_per_tenant=turns_per_tenant)  # fmt: skip
    if scripts is not None and not scripts.is_dir():
        raise ServeError(f"--scripts {scripts}: no such directory")
    app = create_app(rt, auth=has_tokens, limits=limits, workers=workers, scripts=scripts)
    sys.stderr.write(f"torpor: serving http://{host}:{port} (docs at /docs)\n")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        rt.close()
