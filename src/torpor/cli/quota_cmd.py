"""`torpor quota set|ls|rm`: a tenant's own limits on the snapshot store, in place of the
server's `--tenant-stored-bytes/--tenant-snapshots` (runtime/quotas.py). They are read at
each check, so a running `torpor serve` or `torpor worker` applies a change at once."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from torpor.cli.errors import clean_errors
from torpor.cli.session_cmd import DbOpt, FormatOpt

app = typer.Typer(help="Per-tenant quotas on stored snapshot bytes and snapshots, in place "
                  "of the server's --tenant-stored-bytes/--tenant-snapshots: set, ls, rm.",
                  no_args_is_help=True)  # fmt: skip

TenantArg = typer.Argument(..., help="The tenant (as its API tokens name it; '' for the "
                           "sessions and sandboxes made without a tenant).")  # fmt: skip


class QuotaError(Exception):
    """A quota command that cannot be done (the message says why)."""


def _db(db: str | None):  # type: ignore[no-untyped-def]
    from torpor.context import default_url
    from torpor.runtime.db import RuntimeDB

    return RuntimeDB(db or default_url())


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    from torpor.sandbox.engine import SandboxError, parse_bytes

    try:
        return parse_bytes(text)
    except SandboxError:
        raise typer.BadParameter(f"invalid size {text!r}: bytes, or e.g. 500M, 10G "
                                 "(powers of 1024); 0 for none") from None  # fmt: skip


def _limit(v: int | None, size: bool = False) -> str:
    if not v:
        return "server" if v is None else "none"
    from torpor.cli.output import human_bytes

    return f"{human_bytes(v)} ({v})" if size else str(v)


@app.command("set")
@clean_errors
def set_(
    tenant: str = TenantArg,
    stored_bytes: str = typer.Option(None, "--stored-bytes", help="Limit on the bytes its "
                                     "snapshots store: bytes, or 500M, 10G, 1.5T (powers of "
                                     "1024); 0: none."),  # fmt: skip
    snapshots: int = typer.Option(None, "--snapshots", min=0, help="Limit on its snapshots "
                                  "(sessions' and sandboxes'); 0: none."),  # fmt: skip
    db: str = DbOpt,
) -> None:
    """Give a tenant its own limits.

    A limit not given stays as it was (the server's if never set). Over one, the
    tenant's new sessions, forks, sandboxes and sandbox snapshots are refused (413 for
    bytes, 429 for snapshots) and its sessions keep only their newest snapshot."""
    if stored_bytes is None and snapshots is None:
        raise typer.BadParameter("give --stored-bytes, --snapshots or both")
    from torpor.runtime.quotas import set_quota

    rdb = _db(db)
    try:
        got = set_quota(rdb, tenant, stored_bytes=_size(stored_bytes), snapshots=snapshots)
    finally:
        rdb.close()
    print(f"{tenant or '(no tenant)'}: stored bytes {_limit(got[0], size=True)}, snapshots "
          f"{_limit(got[1])}")


def _rows(rdb: Any, every: bool) -> list[dict[str, Any]]:
    from torpor.runtime.quotas import known_tenants, own_quotas, tenant_use

    own = {t: (b, n) for t, b, n, _ in own_quotas(rdb)}
    out = []
    for t in sorted(set(own) | (set(known_tenants(rdb)) if every else set())):
        b, n = own.get(t, (None, None))
        use = tenant_use(rdb, t)
        out.append({"tenant": t, "stored_bytes": b, "snapshots": n,
                    "used_bytes": use.stored_bytes, "used_snapshots": use.snapshots})
    return out


@app.command("ls")
@clean_errors
def ls(
    all_: bool = typer.Option(False, "--all", help="Every tenant, not only those with limits "
                              "of their own."),  # fmt: skip
    db: str = DbOpt,
    fmt: str = FormatOpt,
) -> None:
    """List tenants' own limits and what each uses now.

    'server': the server's --tenant-stored-bytes/--tenant-snapshots applies; 'none': no
    limit. Stored bytes used: the last scheduled gc's count plus what the tenant's
    snapshots stored since (an upper bound until the next count)."""
    rdb = _db(db)
    try:
        rows = _rows(rdb, all_)
    finally:
        rdb.close()
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from torpor.cli.image_cmd import format_table
    from torpor.cli.output import human_bytes

    table = [["TENANT", "STORED BYTES", "SNAPSHOTS", "USES (BYTES)", "USES (SNAPSHOTS)"]]
    for r in rows:
        table.append([r["tenant"] or "(no tenant)", _limit(r["stored_bytes"], size=True),
                      _limit(r["snapshots"]), human_bytes(r["used_bytes"]),
                      str(r["used_snapshots"])])  # fmt: skip
    print(format_table(table))


@app.command("rm")
@clean_errors
def rm(tenant: str = TenantArg, db: str = DbOpt) -> None:
    """Remove a tenant's own limits: the server's apply to it again."""
    from torpor.runtime.quotas import remove_quota

    rdb = _db(db)
    try:
        if not remove_quota(rdb, tenant):
            raise QuotaError(f"tenant {tenant!r} has no quota of its own (`torpor quota ls`)")
    finally:
        rdb.close()
    print(tenant)
