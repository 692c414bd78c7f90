"""`torpor session ...` and `torpor worker`: durable agent sessions from the command line.

`send` runs the turn in this process (a worker of its own) and prints its events as they
happen; with `--no-wait` it only queues the message for a `torpor worker` to pick up.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import typer

from torpor.cli import lifecycle
from torpor.cli.errors import clean_errors
from torpor.cli.lifecycle import GraceOpt

app = typer.Typer(help="Durable agent sessions: new, send, ls, show, fork, close.",
                  no_args_is_help=True)  # fmt: skip


def command(name: str):  # type: ignore[no-untyped-def]
    def deco(fn):  # type: ignore[no-untyped-def]
        app.command(name)(clean_errors(fn))
        return fn

    return deco


DbOpt = typer.Option(None, "--db", help="Log/state database URL (default: TORPOR_LOG or "
                     "sqlite:///$TORPOR_HOME/context.db).")  # fmt: skip
StoreOpt = typer.Option(None, "--store", help="Snapshot store URL (default: TORPOR_SNAPSHOTS "
                        "or file://$TORPOR_HOME/snapshots).")  # fmt: skip
FormatOpt = typer.Option("text", "--format", help="Output format: text or json.")
ServerOpt = typer.Option(None, "--server", envvar="TORPOR_SERVER", help="URL of a `torpor "
                         "serve` to use instead of the local database.")  # fmt: skip
TokenOpt = typer.Option(None, "--token", envvar="TORPOR_TOKEN", help="API token for --server.")
ToolsOpt = typer.Option(None, "--tools", help="Modules of custom tools to import, "
                        "comma-separated (pkg.module,pkg2.mod; each defines TOOLS); default: "
                        "TORPOR_TOOLS. torpor.tools entry points are loaded too.")  # fmt: skip


def client(server: str, token: str | None):  # type: ignore[no-untyped-def]
    from torpor.api.client import Client

    return Client(server, token)


def runtime(db: str | None, store: str | None, tools: str | None = None,
            retention: str | None = None) -> Any:
    """A Runtime; its tools are the built-in ones plus those of the `tools` modules
    (default: TORPOR_TOOLS) and the torpor.tools entry points (a bad one: one line, exit 1)."""
    from torpor.agent.tools import load_tools
    from torpor.runtime.core import Runtime

    return Runtime(db=db, store=store, tools=load_tools(tools), retention=retention or "")


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_event(ev: Any) -> None:
    """One line per event (a local worker's or the server's: the same Event), on stderr
    (stdout carries the answer)."""
    t = ev["type"]
    if t == "tool_call_started":
        args = ev.get("arguments")  # the call's JSON text
        with contextlib.suppress(TypeError, ValueError):
            args = json.dumps(json.loads(args), ensure_ascii=False)
        line = f"  → {ev['name']} {str(args)[:120]}"
    elif t == "tool_call_finished":
        mark = "✗" if ev.get("is_error") else "✓"
        out = (ev.get("output") or "").strip().replace("\n", " ⏎ ")
        line = f"    {mark} {ev.get('ms', 0) or 0:.0f} ms  {out[:110]}"
    elif t == "snapshot":
        where = "mid-turn snapshot" if ev.get("mid_turn") else "wait point: snapshot"
        line = f"  ◆ {where} {ev['snapshot']} ({ev['bytes'] / 1e6:.1f} MB, {ev['ms']:.0f} ms)"
    elif t == "restored":
        into = " (into a standby sandbox)" if ev.get("standby") else ""
        where = "" if ev.get("hot") is None else (" from the hot copy" if ev.get("hot")
                                                   else " from the snapshot store")
        line = f"  ◆ restored {ev['snapshot']}{where} in {ev['ms']:.0f} ms{into}"
    elif t == "awaiting_upload":
        line = (f"  … waiting for machine {ev.get('machine')} to finish uploading "
                f"{ev.get('snapshot')}")  # fmt: skip
    elif t == "sandbox_started":
        line = f"  ◆ fresh sandbox from {ev['image']} in {ev['ms']:.0f} ms"
    elif t == "retry_scheduled":
        line = f"  ⟳ model failed ({ev['error']}); retry {ev['attempt']} in {ev['delay']:.1f} s"
    elif t == "recovery" and ev.get("after_seq") is not None:
        line = (f"  ⚠ recovered after a dead worker: {len(ev.get('lost') or [])} calls lost, "
                f"{len(ev.get('interrupted') or [])} interrupted")  # fmt: skip
    elif t == "recovery":
        line = (f"  ⚠ the latest snapshot could not be restored: "
                f"{len(ev.get('lost') or [])} calls' effects lost")  # fmt: skip
    elif t == "state":
        line = f"  · {ev['state']}"
    elif t == "assistant":
        return
    else:
        return
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@command("new")
def new(
    model: str = typer.Option(..., "--model", help="provider:name, e.g. script:turns.jsonl, "
                              "openai:gpt-4o-mini, anthropic:claude-sonnet-4-5"),  # fmt: skip
    image: str = typer.Option("base", "--image"),
    system: str = typer.Option(None, "--system", help="System prompt."),
    tool: list[str] = typer.Option(None, "--tool", help="Allowed tools (default: all)."),
    snapshot_every_calls: int = typer.Option(0, help="Also snapshot mid-turn every K calls."),
    keep_snapshots: int = typer.Option(
        0, help="Keep only the session's newest N snapshots (0: --retention decides)."
    ),
    retention: str = typer.Option("", "--retention", help="Which of its wait-point "
                                  "snapshots stay: 'all', or last=N,hourly=N,daily=N "
                                  "(default: the worker's --retention)."),  # fmt: skip
    db: str = DbOpt,
    store: str = StoreOpt,
    fmt: str = FormatOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Create a session; prints its id."""
    if server:
        info = client(server, token).request("POST", "/v1/sessions", json={
            "model": model, "image": image, "system": system, "tools": tool or None,
            "policy": {"snapshot_every_calls": snapshot_every_calls,
                       "keep_snapshots": keep_snapshots, "retention": retention}})  # fmt: skip
        _json(info) if fmt == "json" else print(info["id"])
        return
    rt = runtime(db, store)
    s = rt.create_session(image=image, model=model, system=system, tools=tool or None,
                          policy={"snapshot_every_calls": snapshot_every_calls,
                                  "keep_snapshots": keep_snapshots,
                                  "retention": retention})  # fmt: skip
    if fmt == "json":
        _json(s.info().to_json())
    else:
        print(s.id)


@command("send")
def send(
    session: str = typer.Argument(...),
    text: str = typer.Argument(..., help="The user's message ('-' reads stdin)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Only queue it for a worker."),
    db: str = DbOpt,
    store: str = StoreOpt,
    fmt: str = FormatOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Send a user message and run the turn to its wait point."""
    if text == "-":
        text = sys.stdin.read()
    if server:
        rs = client(server, token).get_session(session)
        if no_wait:
            print(rs.post(text))
            return
        out = rs.send(text, on_event=None if fmt == "json" else print_event)
        if fmt == "json":
            _json(out.to_json())
        else:
            print(out.text)
        _say_failed(session, out.state, out.error)
        return
    rt = runtime(db, store)
    s = rt.get_session(session)
    if no_wait:
        print(s.post(text))
        return
    try:
        outcome = s.send(text, on_event=None if fmt == "json" else print_event)
    finally:
        rt.close()  # this process ends here: a sandbox kept warm is snapshotted now
    if fmt == "json":
        _json(outcome.to_json())
    else:
        print(outcome.text)
        if outcome.state == "retrying":
            sys.stderr.write(f"the model failed; the turn resumes by itself at "
                             f"{outcome.wake_at:.0f} (run `torpor worker`)\n")  # fmt: skip
    _say_failed(session, outcome.state, outcome.error)


def _say_failed(session: str, state: str, error: str | None) -> None:
    """A failed turn: one line with why, and exit status 1."""
    if state == "failed":
        sys.stderr.write(f"torpor: error: session {session} failed: {error}; fix that, then "
                         "send a new message to try again\n")  # fmt: skip
        raise typer.Exit(1)


@command("ls")
def ls(state: str = typer.Option(None, "--state"), db: str = DbOpt, fmt: str = FormatOpt,
       server: str = ServerOpt, token: str = TokenOpt) -> None:  # fmt: skip
    """List sessions."""
    from torpor.cli.image_cmd import format_table, human_age

    rows = client(server, token).sessions(state) if server else runtime(db, None).sessions(state)
    if fmt == "json":
        _json([r.to_json() for r in rows])
        return
    from datetime import UTC, datetime

    table = [["SESSION", "STATE", "MODEL", "IMAGE", "SNAPSHOT", "CREATED"]]
    for r in rows:
        created = datetime.fromtimestamp(r.created_at, UTC).isoformat()
        table.append([r.id, r.state, r.model[:40], r.image, r.snapshot or "-",
                      human_age(created)])  # fmt: skip
    print(format_table(table))


@command("show")
def show(session: str = typer.Argument(...), db: str = DbOpt, fmt: str = FormatOpt,
         server: str = ServerOpt, token: str = TokenOpt) -> None:  # fmt: skip
    """Show a session's record and its log as a timeline."""
    from torpor.context import markers

    s = client(server, token).get_session(session) if server \
        else runtime(db, None).get_session(session)  # fmt: skip
    info, entries = s.info(), s.log()
    if fmt == "json":
        _json({"session": info.to_json(), "log": [e.to_dict() for e in entries]})
        return
    print(f"session {info.id}  state {info.state}  model {info.model}  image {info.image}")
    for e in entries:
        if e.kind == "marker":
            c, name = markers.fields_of(e), markers.name_of(e)
            c.pop("text", None) if name != markers.RecoveryNote.NAME else None
            detail = " ".join(f"{k}={v}" for k, v in c.items())
            print(f"{e.seq:>5}  ◆ {name} {detail}"[:200])
        elif e.kind == "tool_call":
            print(f"{e.seq:>5}  → {e.tool_name} {e.arguments}"[:200])
        elif e.kind == "tool_result":
            text = str(e.content).strip().replace("\n", " ⏎ ")
            print(f"{e.seq:>5}    ← {text}"[:200])
        else:
            print(f"{e.seq:>5}  {e.role}: {e.content}"[:400])


@command("fork")
def fork(
    session: str = typer.Argument(...),
    at: str = typer.Option(None, "--at", help="Snapshot id (default: the latest)."),
    db: str = DbOpt,
    store: str = StoreOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Fork a session at one of its snapshots; prints the new session's id."""
    if server:
        print(client(server, token).get_session(session).fork(at).id)
        return
    print(runtime(db, store).get_session(session).fork(at).id)


@command("cancel")
def cancel(session: str = typer.Argument(...), db: str = DbOpt, server: str = ServerOpt,
           token: str = TokenOpt,
           wait: float = typer.Option(10.0, "--wait", help="Seconds to wait for the running "
                                      "turn to stop.")) -> None:  # fmt: skip
    """Stop a session's running turn at its next safe point (the running tool call is
    stopped, the sandbox snapshotted); prints the session's state."""
    if server:
        row = client(server, token).get_session(session).cancel()
    else:
        row = runtime(db, None).get_session(session).cancel(wait=wait)
    if row.cancel is not None:
        print(f"{session}: cancel asked for; its worker stops the turn at its next safe point")
    else:
        print(f"{session}: {row.state}")


@command("close")
def close(session: str = typer.Argument(...), db: str = DbOpt, server: str = ServerOpt,
          token: str = TokenOpt) -> None:  # fmt: skip
    """Close a session (its log stays; it takes no more messages); a running turn is
    cancelled first."""
    if server:
        if client(server, token).get_session(session).close().state != "closed":
            print(f"{session}: close asked for; it closes at its turn's next safe point")
            return
    else:
        runtime(db, None).get_session(session).close()
    print(session)


def worker(
    db: str = DbOpt,
    store: str = StoreOpt,
    once: bool = typer.Option(False, "--once", help="Run one session's work, then exit."),
    session: str = typer.Option(None, "--session", help="Only this session (implies --once)."),
    lease_ttl: float = typer.Option(15.0, "--lease-ttl", help="Seconds a lease lasts "
                                    "without a heartbeat."),  # fmt: skip
    pool: int = typer.Option(1, "--pool", help="Pre-started sandboxes kept per image, so a "
                             "new session does not wait for a cold start (0: none)."),  # fmt: skip
    standby: int = typer.Option(1, "--standby", help="Standby sandboxes kept per image, so "
                                "a resumed session's restore does not wait for a sandbox to "
                                "be set up (~50 MiB each; 0: none)."),  # fmt: skip
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
) -> None:
    """Run sessions' turns as they come (messages, due retries, dead workers' turns).
    At start it removes the sandboxes of dead torpor processes of this home; SIGTERM or
    SIGINT stops it cleanly (see --grace), leaving no sandbox behind."""
    signals = lifecycle.StopOnSignal()  # first: a SIGTERM from here on stops it cleanly
    lifecycle.setup_logging(log_level)
    from torpor.runtime.quotas import Quota
    from torpor.runtime.shutdown import shutdown

    rt = runtime(db, store, tools, retention)
    rt.pool_size = 0 if (session or once) else pool
    rt.standby_size = 0 if (session or once) else standby
    rt.affinity = affinity
    rt.prefetch = prefetch and rt.prefetch  # (it starts with the first worker)
    rt.gc_every = 0.0 if (session or once) else gc_every  # (it too)
    rt.quota = Quota(stored_bytes=quota_bytes, snapshots=quota_snapshots)
    rt.closed_days = closed_days
    w = rt.worker(lease_ttl=lease_ttl)
    lifecycle.reap(rt)
    stop = signals.stop

    def work() -> None:
        if session:
            w.run_session(session, on_event=print_event)
        elif once:
            w.run_once(on_event=print_event)
        else:
            w.serve(stop, on_event=print_event)

    if not (session or once):
        sys.stderr.write(f"worker {w.owner} waiting for work\n")
    try:
        signals.run(work)
    finally:
        lifecycle.say_abandoned(shutdown(rt, grace))
