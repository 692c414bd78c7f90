"""`torpor token create|ls|revoke`: API tokens (shown once, stored only as a hash)."""

from __future__ import annotations

import json
import sys

import typer

from torpor.cli.errors import clean_errors
from torpor.cli.session_cmd import DbOpt, FormatOpt

app = typer.Typer(help="API tokens for `torpor serve`: create, ls, revoke.",
                  no_args_is_help=True)  # fmt: skip


def _store(db: str | None):  # type: ignore[no-untyped-def]
    from torpor.api.tokens import TokenStore
    from torpor.context import default_url
    from torpor.runtime.db import RuntimeDB

    return TokenStore(RuntimeDB(db or default_url()))


@app.command("create")
@clean_errors
def create(
    tenant: str = typer.Option(..., "--tenant", help="The tenant whose sessions it reaches."),
    scope: list[str] = typer.Option(None, "--scope", help="drive (default), exec, sandboxes, "
                                    "admin; repeat for several."),  # fmt: skip
    note: str = typer.Option(None, "--note", help="A note to recognise it by."),
    db: str = DbOpt,
    fmt: str = FormatOpt,
) -> None:
    """Create a token; prints it once (only its hash is kept)."""
    token, info = _store(db).create(tenant, scope or ["drive"], note)
    if fmt == "json":
        sys.stdout.write(json.dumps({"token": token, **info.to_json()}) + "\n")
    else:
        print(token)
        sys.stderr.write(f"token {info.id} for tenant {info.tenant}, scopes "
                         f"{','.join(info.scopes)}: shown only now, store it\n")  # fmt: skip


@app.command("ls")
@clean_errors
def ls(
    all_: bool = typer.Option(False, "--all", help="Include revoked tokens."),
    db: str = DbOpt,
    fmt: str = FormatOpt,
) -> None:
    """List tokens (ids, tenants, scopes; never the tokens themselves)."""
    rows = _store(db).list(include_revoked=all_)
    if fmt == "json":
        sys.stdout.write(json.dumps([r.to_json() for r in rows], indent=2) + "\n")
        return
    from datetime import UTC, datetime

    from torpor.cli.image_cmd import format_table

    table = [["ID", "TENANT", "SCOPES", "CREATED", "REVOKED", "NOTE"]]
    for r in rows:
        when = datetime.fromtimestamp(r.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        table.append([r.id, r.tenant, ",".join(r.scopes), when,
                      "yes" if r.revoked_at else "-", r.note or ""])  # fmt: skip
    print(format_table(table))


@app.command("revoke")
@clean_errors
def revoke(token_id: str = typer.Argument(..., help="The token's id (see `token ls`)."),
           db: str = DbOpt) -> None:  # fmt: skip
    """Revoke a token: requests with it get 401 from now on."""
    _store(db).revoke(token_id)
    print(token_id)
