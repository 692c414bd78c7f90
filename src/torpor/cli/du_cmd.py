"""`torpor du`: what the snapshot store holds per session, per sandbox of the sandbox
resource or per tenant (logical bytes,
stored bytes, the part only they use, the part they share), counted now from the store
(every manifest and pack index read: runtime/storage.account)."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from torpor.cli.output import human_bytes
from torpor.cli.session_cmd import DbOpt, StoreOpt


def du(
    by: str = typer.Option("session", "--by", help="session, sandbox (the sandbox "
                           "resource's pause and named snapshots) or tenant."),
    db: str = DbOpt,
    store: str = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="The result as JSON."),
    top: int = typer.Option(50, "--top", min=1, help="Show the N largest (text only)."),
) -> None:
    """Stored bytes per session, sandbox or tenant: logical (what their snapshots restore to),
    stored (the compressed chunks they name), exclusive (what deleting them would free at
    the next gc), shared (with others); then the store's totals."""
    if by not in ("session", "sandbox", "tenant"):
        raise typer.BadParameter("--by must be session, sandbox or tenant")
    from torpor.context import default_url
    from torpor.runtime.db import RuntimeDB
    from torpor.runtime.storage import account, usage_json
    from torpor.snapshots import default_store_url, open_store

    rdb = RuntimeDB(db or default_url())
    s = open_store(store or default_store_url())
    try:
        got = account(rdb, s)
    finally:
        s.close()
        rdb.close()
    u = got[by]
    plural = {"session": "sessions", "sandbox": "sandboxes", "tenant": "tenants"}[by]
    rows = sorted(((name, g) for name, g in u.groups.items()),
                  key=lambda p: (-p[1].referenced, p[0]))  # fmt: skip
    if as_json:
        out: dict[str, Any] = {
            "by": by,
            plural: [usage_json((by, name, None, g.snapshots, g.logical, g.referenced,
                                   g.exclusive, 0.0)) for name, g in rows],  # fmt: skip
            "store": {"snapshots": u.snapshots, "pack_bytes": u.pack_bytes,
                      "live_bytes": u.live_bytes},
        }
        for r in out[plural]:
            r.pop("kind"), r.pop("tenant"), r.pop("at")
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    print(f"{by.upper():<24} {'SNAPSHOTS':>9} {'LOGICAL':>10} {'STORED':>10} "
          f"{'EXCLUSIVE':>10} {'SHARED':>10}")
    for name, g in rows[:top]:
        print(f"{name or '(no tenant)':<24} {g.snapshots:>9} {human_bytes(g.logical):>10} "
              f"{human_bytes(g.referenced):>10} {human_bytes(g.exclusive):>10} "
              f"{human_bytes(g.shared):>10}")
    if len(rows) > top:
        print(f"... {len(rows) - top} more")
    print(f"store: {u.snapshots} snapshot(s), packs {human_bytes(u.pack_bytes)}, of which "
          f"live {human_bytes(u.live_bytes)} (the rest goes at the next gc)")
