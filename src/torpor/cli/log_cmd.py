"""`torpor log ...`: read, check, export and prune the context log, and collect its
unreferenced blobs, from the command line."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from torpor.cli.output import human_bytes
from torpor.context import (
    ContextError,
    ContextLog,
    Entry,
    default_url,
    markers,
    open_log,
    to_anthropic,
)
from torpor.context import to_openai as _to_openai
from torpor.context.blobgc import GRACE, collect_blobs
from torpor.files import fsync_dir

app = typer.Typer(help="Inspect the context log: show, verify, export and prune sessions.",
                  no_args_is_help=True)

LogOpt = Annotated[str | None, typer.Option(
    "--log", help="Log URL (sqlite:///path or postgresql://...). "
    "Default: $TORPOR_LOG, else sqlite:///$TORPOR_HOME/context.db.", show_default=False)]
TRUNCATE = 400


class ShowFormat(StrEnum):
    text = "text"
    json = "json"


class ExportFormat(StrEnum):
    openai = "openai"
    anthropic = "anthropic"


def _open(url: str | None) -> ContextLog:
    try:
        return open_log(url or default_url())
    except (ContextError, ValueError, OSError) as exc:
        typer.echo(f"error: cannot open the context log: {exc}", err=True)
        raise typer.Exit(2) from None


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif isinstance(p, dict):
                parts.append(f"[{p.get('type', 'part')}]")
            else:
                parts.append(json.dumps(p, ensure_ascii=False))
        return "\n".join(parts)
    return json.dumps(content, ensure_ascii=False)


def _clip(text: str, limit: int = TRUNCATE) -> str:
    size = len(text.encode())
    if size <= limit:
        return text
    return text[:limit] + f"… [truncated, {human_bytes(size)} in all]"


def _line(e: Entry) -> str:
    head = f"#{e.seq:<5}"
    if e.kind == "message":
        return f"{head} {e.role}: {_text_of(e.content)}"
    if e.kind == "tool_call":
        return f"{head} {e.role or 'assistant'} calls {e.tool_name}({_clip(e.arguments or '')})" \
               f" [id {e.tool_call_id}]"
    if e.kind == "tool_result":
        err = " (error)" if isinstance(e.meta.get("anthropic"), dict) and e.meta[
            "anthropic"].get("extra", {}).get("is_error") else ""
        return f"{head} result of {e.tool_call_id}{err}: {_clip(_text_of(e.content))}"
    name, rest = markers.name_of(e), markers.fields_of(e)
    return f"{head} -- {name} {json.dumps(rest, ensure_ascii=False) if rest else ''}".rstrip()


@app.command()
def show(session: str,
         after: Annotated[int, typer.Option(help="Only entries after this seq.")] = 0,
         format: Annotated[ShowFormat, typer.Option("--format", "-f")] = ShowFormat.text,
         log: LogOpt = None) -> None:
    """Print a session: a readable transcript (text) or one JSON object per entry."""
    lg = _open(log)
    try:
        for e in lg.iter(session, after=after):
            if format is ShowFormat.json:
                typer.echo(json.dumps(e.to_dict(), ensure_ascii=False))
            else:
                typer.echo(_line(e).replace("\n", "\n       "))
    except ContextError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        lg.close()


@app.command()
def verify(session: str, log: LogOpt = None) -> None:
    """Recompute the session's hash chain and check its blobs; exit 1 at the first bad entry."""
    lg = _open(log)
    try:
        res = lg.verify(session)
    except ContextError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        lg.close()
    if res.ok:
        typer.echo(f"ok: {session}: {res.checked} entries, chain intact")
        return
    typer.echo(f"FAILED: {session}: entry {res.first_bad_seq}: {res.reason}", err=True)
    raise typer.Exit(1)


@app.command()
def export(session: str,
           format: Annotated[ExportFormat, typer.Option("--format", "-f")] = ExportFormat.openai,
           out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
           log: LogOpt = None) -> None:
    """Export a session as an OpenAI message list or an Anthropic Messages request body."""
    lg = _open(log)
    try:
        entries = list(lg.iter(session))
    except ContextError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        lg.close()
    doc: Any = _to_openai(entries) if format is ExportFormat.openai else to_anthropic(entries)
    text = json.dumps(doc, ensure_ascii=False, indent=2)
    if out:
        out.write_text(text + "\n")
    else:
        typer.echo(text)


@app.command("ls")
def list_sessions(prefix: Annotated[str | None, typer.Option(help="Only ids starting so.")] = None,
                  log: LogOpt = None) -> None:
    """List sessions with their size (entries, bytes), writer epoch and state."""
    lg = _open(log)
    try:
        infos = lg.sessions(prefix=prefix)
    finally:
        lg.close()
    typer.echo(f"{'SESSION':<32} {'ENTRIES':>8} {'SIZE':>10} {'EPOCH':>6}  STATE")
    for s in infos:
        state = "closed" if s.closed_at else "open"
        if s.parent:
            state += f", fork of {s.parent}@{s.fork_seq}"
        typer.echo(f"{s.id:<32} {s.head_seq:>8} {human_bytes(s.bytes):>10} {s.epoch:>6}  {state}")


def _parse_date(value: str) -> str:
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"not a date: {value!r} (use YYYY-MM-DD or ISO 8601)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@app.command()
def prune(closed_before: Annotated[str, typer.Option(
              "--closed-before", help="Prune sessions closed before this date (UTC).")],
          to: Annotated[Path | None, typer.Option(
              "--to", help="Export file (JSON lines). Default: ./torpor-pruned-<time>.jsonl")]
          = None,
          log: LogOpt = None) -> None:
    """Export sessions closed before DATE to a JSON-lines file, then delete them.

    A session that a kept session was forked from is kept (its entries are shared)."""
    cutoff = _parse_date(closed_before)
    lg = _open(log)
    try:
        candidates = {s.id: s for s in lg.sessions(closed_before=cutoff)}
        everything = lg.sessions()
        kids: dict[str, set[str]] = {}
        for s in everything:
            if s.parent:
                kids.setdefault(s.parent, set()).add(s.id)
        # keep any candidate that a non-pruned session still depends on (transitively)
        prunable = set(candidates)
        changed = True
        while changed:
            changed = False
            for sid in list(prunable):
                if any(k not in prunable for k in kids.get(sid, ())):
                    prunable.discard(sid)
                    changed = True
        kept = sorted(set(candidates) - prunable)
        if not prunable:
            typer.echo("nothing to prune")
            for sid in kept:
                typer.echo(f"kept {sid}: forks still share its entries", err=True)
            return
        path = to or Path(f"torpor-pruned-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.jsonl")
        with path.open("w", encoding="utf-8") as f:
            for sid in sorted(prunable):
                info = candidates[sid]
                f.write(json.dumps({"type": "session", **asdict(info)}) + "\n")
                for e in lg.iter(sid):
                    f.write(json.dumps({"type": "entry", **e.to_dict()}, ensure_ascii=False)
                            + "\n")
            f.flush()
            os.fsync(f.fileno())
        # The export's directory entry is durable before anything is deleted: a power
        # cut after the deletes must not leave the file unnamed.
        fsync_dir(path.resolve().parent)
        # children before parents, so no fork loses its prefix while it still exists
        order: list[str] = []
        remaining = set(prunable)
        while remaining:
            leaves = sorted(s for s in remaining if not (kids.get(s, set()) & remaining))
            order += leaves
            remaining -= set(leaves)
        for sid in order:
            lg.delete_session(sid)
        total = sum(candidates[s].bytes for s in prunable)
        typer.echo(f"pruned {len(prunable)} sessions ({human_bytes(total)}) into {path}")
        for sid in kept:
            typer.echo(f"kept {sid}: forks still share its entries", err=True)
    finally:
        lg.close()


@app.command("gc")
def gc(grace: Annotated[float, typer.Option(help="Seconds a blob must be unreferenced and "
                                            "not put again before it goes.")] = GRACE,
       dry_run: Annotated[bool, typer.Option("--dry-run", help="Delete nothing: say what "
                                             "would go.")] = False,
       as_json: Annotated[bool, typer.Option("--json", help="The result as JSON.")] = False,
       log: LogOpt = None) -> None:
    """Delete the blobs (large payloads) no entry refers to any more, e.g. after `prune`.
    `torpor serve` and `torpor worker` also do it on a schedule (--gc-every)."""
    lg = _open(log)
    try:
        res = collect_blobs(lg, grace=grace, dry_run=dry_run)
    finally:
        lg.close()
    if as_json:
        typer.echo(json.dumps(res.as_dict()))
        return
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {res.deleted} of {res.blobs} blob(s), {human_bytes(res.deleted_bytes)}; "
               f"{res.referenced} referenced, {res.young} unreferenced but newer than "
               f"{grace:g} s kept")
