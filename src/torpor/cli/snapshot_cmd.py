"""`torpor snapshot ...`: list, inspect, remove, prune, garbage-collect and export snapshots."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from torpor.cli.output import human_bytes
from torpor.snapshots import SnapshotError, SnapshotStore, default_store_url, open_store

app = typer.Typer(help="Manage the snapshot store: ls, info, verify, rm, prune, gc, export.",
                  no_args_is_help=True)

StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="Store URL (file:///path or s3://bucket/prefix). "
    "Default: $TORPOR_SNAPSHOTS, else file://$TORPOR_HOME/snapshots.", show_default=False)]
KeyOpt = Annotated[Path | None, typer.Option(
    "--key-file", help="AES-256 key file (default: $TORPOR_SNAPSHOT_KEY[_FILE]).",
    show_default=False)]


class Format(StrEnum):
    text = "text"
    json = "json"


FormatOpt = Annotated[Format, typer.Option("--format", help="Output format.")]


def _open(url: str | None, key_file: Path | None = None) -> SnapshotStore:
    try:
        return open_store(url or default_store_url(), key_file=key_file)
    except (SnapshotError, ValueError, OSError) as exc:
        typer.echo(f"error: cannot open the snapshot store: {exc}", err=True)
        raise typer.Exit(2) from None


def _fail(exc: BaseException, code: int = 1) -> typer.Exit:
    msg = str(exc) or type(exc).__name__
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(code)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _parse_filters(items: list[str] | None) -> dict[str, Any]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


@app.command("ls")
def ls(store: StoreOpt = None,
       where: Annotated[list[str] | None, typer.Option(
           "--where", "-w", help="Filter on metadata, KEY=VALUE (repeatable).")] = None,
       session: Annotated[str | None, typer.Option(help="Only this session.")] = None,
       sandbox: Annotated[str | None, typer.Option(help="Only this sandbox.")] = None,
       fmt: FormatOpt = Format.text) -> None:
    """List snapshots, oldest first."""
    s = _open(store)
    filters = _parse_filters(where)
    if session:
        filters["session"] = session
    if sandbox:
        filters["sandbox"] = sandbox
    try:
        infos = s.list(filters)
    except SnapshotError as exc:
        raise _fail(exc) from None
    if fmt is Format.json:
        typer.echo(json.dumps([i.as_dict() for i in infos], indent=1))
        return
    if not infos:
        typer.echo("no snapshots")
        return
    typer.echo(f"{'ID':<26} {'CREATED (UTC)':<19} {'LOGICAL':>10} {'STORED':>10} "
               f"{'NEW':>10}  META")
    for i in infos:
        # Scalars only: nested values (file lists, sandbox specs) are for `info`/json.
        meta = " ".join(
            f"{k}={v}" for k, v in sorted(i.meta.items()) if not isinstance(v, dict | list)
        )
        typer.echo(f"{i.id:<26} {_when(i.created):<19} {human_bytes(i.logical_size):>10} "
                   f"{human_bytes(i.stored_bytes):>10} {human_bytes(i.new_bytes):>10}  {meta}")


@app.command("info")
def info(snapshot_id: Annotated[str, typer.Argument(metavar="ID")], store: StoreOpt = None,
         fmt: FormatOpt = Format.text) -> None:
    """Show one snapshot's manifest summary."""
    s = _open(store)
    try:
        i = s.info(snapshot_id)
    except SnapshotError as exc:
        raise _fail(exc) from None
    if fmt is Format.json:
        typer.echo(json.dumps(i.as_dict(), indent=1))
        return
    d = i.as_dict()
    typer.echo(f"id:            {i.id}")
    typer.echo(f"created:       {_when(i.created)} UTC")
    for k in ("engine", "engine_version", "image_digest", "parent", "key_id"):
        if d[k]:
            typer.echo(f"{k + ':':<15}{d[k]}")
    typer.echo(f"logical size:  {human_bytes(i.logical_size)} ({i.logical_size} bytes)")
    typer.echo(f"stored:        {human_bytes(i.stored_bytes)} ({i.stored_bytes} bytes), "
               f"new {human_bytes(i.new_bytes)}, shared {human_bytes(i.shared_bytes)} "
               f"({100 * i.shared_fraction:.1f} %)")
    typer.echo(f"chunks:        {i.chunk_count} ({i.unique_chunks} distinct)")
    typer.echo(f"put took:      {i.seconds:.3f} s")
    typer.echo("files:")
    for name, size in i.files.items():
        typer.echo(f"  {name}  {human_bytes(size)}")
    if i.meta:
        typer.echo("meta:")
        for k, v in sorted(i.meta.items()):
            typer.echo(f"  {k}: {json.dumps(v) if not isinstance(v, str) else v}")


@app.command("verify")
def verify(snapshot_id: Annotated[str, typer.Argument(metavar="ID")], store: StoreOpt = None,
           key_file: KeyOpt = None, fmt: FormatOpt = Format.text) -> None:
    """Read every chunk of a snapshot and check it against its hash."""
    s = _open(store, key_file)
    try:
        n = s.verify(snapshot_id)
    except SnapshotError as exc:
        if fmt is Format.json:
            typer.echo(json.dumps({"id": snapshot_id, "ok": False, "error": str(exc)}))
        raise _fail(exc) from None
    if fmt is Format.json:
        typer.echo(json.dumps({"id": snapshot_id, "ok": True, "chunks": n}))
    else:
        typer.echo(f"{snapshot_id}: ok, {n} chunks verified")


@app.command("rm")
def rm(snapshot_ids: Annotated[list[str], typer.Argument(metavar="ID...")],
       store: StoreOpt = None) -> None:
    """Remove snapshots (their chunks are freed by `gc`)."""
    s = _open(store)
    failed = False
    for sid in snapshot_ids:
        try:
            s.delete(sid)
            typer.echo(sid)
        except SnapshotError as exc:
            typer.echo(f"error: {exc}", err=True)
            failed = True
    if failed:
        raise typer.Exit(1)


@app.command("prune")
def prune(keep_last: Annotated[int, typer.Option("--keep-last", min=0,
                                                  help="Snapshots to keep per group.")],
          by: Annotated[str, typer.Option(help="Metadata key to group by.")] = "session",
          store: StoreOpt = None, fmt: FormatOpt = Format.text) -> None:
    """Keep the newest N snapshots per session (or other metadata key); remove the rest."""
    s = _open(store)
    deleted = s.retain(keep_last, by=by)
    if fmt is Format.json:
        typer.echo(json.dumps({"deleted": deleted}))
    else:
        for sid in deleted:
            typer.echo(sid)


@app.command("gc")
def gc(store: StoreOpt = None,
       wait: Annotated[float, typer.Option(help="Seconds to wait for running puts.")] = 600.0,
       dry_run: Annotated[bool, typer.Option("--dry-run", help="Delete nothing: say what "
                                             "a gc would delete and free now.")] = False,
       fmt: FormatOpt = Format.text) -> None:
    """Delete chunks that no snapshot references (safe while others add snapshots).
    `torpor serve` and `torpor worker` also run it on a schedule (--gc-every)."""
    s = _open(store)
    t0 = time.monotonic()

    def progress(what: str) -> None:  # on stderr: stdout stays the result (or its JSON)
        typer.echo(f"gc [{time.monotonic() - t0:5.1f} s] {what}", err=True)

    try:
        res = s.gc(wait_timeout=wait, dry_run=dry_run, on_phase=progress)
    except SnapshotError as exc:
        raise _fail(exc) from None
    if fmt is Format.json:
        typer.echo(json.dumps(res.as_dict()))
    elif dry_run:
        typer.echo(f"would delete {res.deleted_packs} pack(s) and rewrite "
                   f"{res.repacked_packs}, freeing {human_bytes(res.deleted_bytes)}; "
                   f"{res.snapshots} snapshot(s) keep {res.live_chunks} chunk(s) in "
                   f"{res.kept_packs + res.repacked_packs} pack(s), "
                   f"{human_bytes(res.kept_bytes)} (nothing deleted)")
    else:
        typer.echo(f"deleted {res.deleted_packs} pack(s), rewrote {res.repacked_packs}, "
                   f"freed {human_bytes(res.deleted_bytes)}; kept {res.kept_packs} pack(s) "
                   f"holding {res.live_chunks} live chunk(s) in {res.seconds:.2f} s")
    if res.aborted:
        typer.echo(f"error: gc aborted: {res.aborted}", err=True)
        raise typer.Exit(1)


@app.command("export")
def export(snapshot_id: Annotated[str, typer.Argument(metavar="ID")],
           args: Annotated[list[str], typer.Argument(metavar="[NAME] OUT",
                                                     help="File name in the snapshot "
                                                     "(needed if it holds several), "
                                                     "then the output path.")],
           store: StoreOpt = None, key_file: KeyOpt = None,
           fmt: FormatOpt = Format.text) -> None:
    """Write a stored file in the Zstandard seekable format (readable by other tools)."""
    if len(args) not in (1, 2):
        raise typer.BadParameter("expected [NAME] OUT")
    name, out = (None, args[0]) if len(args) == 1 else (args[0], args[1])
    s = _open(store, key_file)
    try:
        path = s.export(snapshot_id, name, Path(out))
    except (SnapshotError, ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    size = path.stat().st_size
    if fmt is Format.json:
        typer.echo(json.dumps({"id": snapshot_id, "name": name, "out": str(path),
                               "bytes": size}))
    else:
        typer.echo(f"{path} ({human_bytes(size)}, zstd seekable)")
