"""`TorporSandboxClient`: a sandbox provider for the OpenAI Agents SDK's sandbox agents,
over torpor's native sandbox API (`/v1/sandboxes` of a `torpor serve`).

    from agents import Runner
    from agents.run import RunConfig
    from agents.sandbox import SandboxAgent, SandboxRunConfig
    from torpor.integrations.openai_agents import TorporSandboxClient, TorporSandboxClientOptions

    client = TorporSandboxClient("http://127.0.0.1:8420", token="tpk_...")
    config = RunConfig(sandbox=SandboxRunConfig(
        client=client, options=TorporSandboxClientOptions(image="base")))
    result = await Runner.run(agent, "build it", run_config=config)
    ...                                   # an interruption: result.to_state().to_json()
    state = await RunState.from_json(agent, saved)   # in any process, later
    result = await Runner.run(agent, state, run_config=config)

A server owns the sandboxes, not the process that runs the agent: a run's process that
exits or dies (kill -9) leaves its sandbox on the server, and a run resumed from its
serialized `RunState` (which holds the sandbox's id) gets that sandbox back whole, with
its processes and their memory, not only its files. When a run ends or stops at an
interruption the SDK shuts its sandbox down: with `on_exit="pause"` (the default) the
server checkpoints it and frees its memory until the run resumes it; `"keep"` leaves it
running (an idle `timeout` on the server still pauses it); `"kill"` removes it.

Snapshots: with a snapshot spec in the run's `SandboxRunConfig` (e.g. `LocalSnapshotSpec`),
`persist_workspace` takes a native torpor snapshot (processes, memory and files) and
hands the SDK only a reference to it, as the SDK's E2B backend does with E2B snapshots;
`hydrate_workspace` of such a reference replaces the sandbox with one made from that
snapshot. (A tar archive, from another backend, is unpacked into the workspace.)

The sandbox's id and settings are in the serialized state; the server's URL and token are
not (the client holds them): give the resuming process a `TorporSandboxClient` of its own.
Commands run with torpor's exec (no PTY: the shell tool runs each command to its end).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import shlex
import tarfile
import uuid
from pathlib import Path
from typing import Any, Literal

from agents.sandbox.errors import (
    ExecTimeoutError,
    ExecTransportError,
    WorkspaceArchiveReadError,
    WorkspaceArchiveWriteError,
    WorkspaceReadNotFoundError,
)
from agents.sandbox.manifest import Manifest
from agents.sandbox.session.base_sandbox_session import BaseSandboxSession
from agents.sandbox.session.manager import Instrumentation
from agents.sandbox.session.sandbox_client import BaseSandboxClient, BaseSandboxClientOptions
from agents.sandbox.session.sandbox_session import SandboxSession
from agents.sandbox.session.sandbox_session_state import SandboxSessionState
from agents.sandbox.snapshot import SnapshotBase, SnapshotSpec, resolve_snapshot
from agents.sandbox.types import ExecResult, User
from pydantic import Field

from torpor.api.client import Client
from torpor.api.remote import ApiError
from torpor.api.sandbox_client import RemoteSandbox
from torpor.sandbox.engine import CommandTimeout

log = logging.getLogger(__name__)

OnExit = Literal["pause", "keep", "kill"]
REF_KIND = "torpor-snapshot"  # what persist_workspace's reference says it is
DEFAULT_EXEC_TIMEOUT = 600.0  # seconds, for a command the SDK gives no timeout


class TorporSandboxClientOptions(BaseSandboxClientOptions):
    """How `TorporSandboxClient.create` makes a sandbox. image: a torpor image of the
    server. timeout, on_timeout: the server's idle timeout (seconds, None: none) and what
    it does then ("pause" or "kill"). on_exit: what the SDK's shutdown of the session does
    ("pause": checkpoint it and free its memory; "keep": leave it running; "kill")."""

    type: Literal["torpor"] = "torpor"
    image: str = "base"
    timeout: float | None = 3600.0
    on_timeout: Literal["pause", "kill"] = "pause"
    on_exit: OnExit = "pause"
    env: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)


class TorporSandboxSessionState(SandboxSessionState):
    """What a serialized run keeps of its torpor sandbox (no URL, no token)."""

    type: Literal["torpor"] = "torpor"
    sandbox_id: str
    image: str = "base"
    server_timeout: float | None = 3600.0
    on_timeout: Literal["pause", "kill"] = "pause"
    on_exit: OnExit = "pause"
    env: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)


def encode_ref(snapshot: str) -> bytes:
    return json.dumps({"kind": REF_KIND, "snapshot": snapshot}).encode()


def decode_ref(data: bytes) -> str | None:
    """The snapshot id of a reference `persist_workspace` made (None for anything else)."""
    if not data.startswith(b"{"):
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    ok = isinstance(doc, dict) and doc.get("kind") == REF_KIND
    return str(doc["snapshot"]) if ok and doc.get("snapshot") else None


class TorporSandboxSession(BaseSandboxSession):
    """A sandbox agent's session on one sandbox of a torpor server."""

    state: TorporSandboxSessionState

    def __init__(self, *, state: TorporSandboxSessionState, sandbox: RemoteSandbox,
                 client: Client) -> None:
        self.state = state
        self.remote = sandbox
        self.client = client

    async def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kw)

    # -- commands and files ---------------------------------------------------------------
    async def _exec_internal(self, *command: str | Path,
                             timeout: float | None = None) -> ExecResult:
        argv = [str(c) for c in command]
        user = None
        if len(argv) >= 4 and argv[0] == "sudo" and argv[1] == "-u" and argv[3] == "--":
            user, argv = argv[2], argv[4:]  # SandboxSession.exec's run-as prefix
        cwd = self.state.manifest.root if self.state.workspace_root_ready else None
        env = {**self.state.env, **await self.state.manifest.environment.resolve()}
        try:
            r = await self._call(self.remote.exec, argv, cwd=cwd, user=user, env=env,
                                 timeout=timeout or DEFAULT_EXEC_TIMEOUT)
        except CommandTimeout as e:
            raise ExecTimeoutError(command=command, timeout_s=timeout, cause=e) from e
        except ApiError as e:
            raise ExecTransportError(command=command, cause=e, message=str(e),
                                     retryable=e.status in (0, 502, 503)) from e
        return ExecResult(stdout=r.stdout, stderr=r.stderr, exit_code=r.exit_code)

    async def read(self, path: Path, *, user: str | User | None = None) -> io.IOBase:
        if user is not None:
            await self._check_read_with_exec(path, user=user)
        where = await self._validate_path_access(path)
        try:
            return io.BytesIO(await self._call(self.remote.files.read, str(where)))
        except ApiError as e:
            if e.status == 404:
                raise WorkspaceReadNotFoundError(path=path, cause=e) from e
            raise WorkspaceArchiveReadError(path=path, cause=e) from e

    async def write(self, path: Path, data: io.IOBase, *,
                    user: str | User | None = None) -> None:
        if user is not None:
            await self._check_write_with_exec(path, user=user)
        payload = data.read()
        if isinstance(payload, str):
            payload = payload.encode()
        where = await self._validate_path_access(path, for_write=True)
        try:
            await self._call(self.remote.files.write, str(where), bytes(payload))
        except ApiError as e:
            raise WorkspaceArchiveWriteError(path=where, cause=e) from e

    async def running(self) -> bool:
        try:
            return bool(await self._call(lambda: self.remote.state == "running"))
        except ApiError:
            return False

    # -- snapshots: a reference to a native torpor snapshot ---------------------------------
    async def persist_workspace(self) -> io.IOBase:
        """Snapshot the whole sandbox on the server; the SDK keeps only its reference."""
        try:
            snap = await self._call(self.remote.checkpoint)
        except ApiError as e:
            raise WorkspaceArchiveReadError(path=self._workspace_root_path(), cause=e) from e
        return io.BytesIO(encode_ref(snap.id))

    async def hydrate_workspace(self, data: io.IOBase) -> None:
        """A reference: the sandbox is replaced by one made from that snapshot. A tar
        archive: unpacked into the workspace."""
        raw = data.read()
        raw = raw.encode() if isinstance(raw, str) else bytes(raw)
        snap = decode_ref(raw)
        if snap is None:
            await self._untar(raw)
            return
        old = self.remote
        log.info("sandbox %s: replaced by a new one from snapshot %s", old.id, snap)
        try:
            new = await self._call(self.client.sandboxes.create, self.state.image,
                                   snapshot=snap, timeout=self.state.server_timeout,
                                   on_timeout=self.state.on_timeout,
                                   metadata=self.state.metadata, env=self.state.env)
        except ApiError as e:
            raise WorkspaceArchiveWriteError(path=self._workspace_root_path(), cause=e) from e
        self.remote, self.state.sandbox_id = new, new.id
        if old.id != new.id:
            with contextlib.suppress(ApiError):  # already gone
                await self._call(old.kill)

    async def _untar(self, raw: bytes) -> None:
        root = self._workspace_root_path()
        try:
            tarfile.open(fileobj=io.BytesIO(raw)).close()  # refuse what is not a tar at once
        except tarfile.TarError as e:
            raise WorkspaceArchiveWriteError(path=root, cause=e) from e
        tmp = f"/tmp/torpor-hydrate-{uuid.uuid4().hex}.tar"
        await self._call(self.remote.files.write, tmp, raw)
        r = await self.exec(f"mkdir -p {shlex.quote(str(root))} && tar -xf {tmp} -C "
                            f"{shlex.quote(str(root))}; s=$?; rm -f {tmp}; exit $s", shell=True)
        if r.exit_code != 0:
            raise WorkspaceArchiveWriteError(path=root, context={
                "stderr": r.stderr.decode(errors="replace")})

    # -- lifecycle ------------------------------------------------------------------------
    async def _shutdown_backend(self) -> None:
        log.info("sandbox %s: on exit, %s", self.state.sandbox_id, self.state.on_exit)
        if self.state.on_exit == "keep":
            return
        try:
            if self.state.on_exit == "pause":
                if await self._call(lambda: self.remote.state) == "running":
                    await self._call(self.remote.pause)
            else:
                await self._call(self.remote.kill)
        except ApiError:
            pass  # gone already: nothing to free


class TorporSandboxClient(BaseSandboxClient[TorporSandboxClientOptions]):
    """Sandbox sessions on a torpor server's sandboxes (see the module's docstring).
    server: the `torpor serve` URL, or a `torpor.Client`; token: its API token."""

    backend_id = "torpor"
    supports_default_options = True

    def __init__(self, server: str | Client, token: str | None = None, *,
                 instrumentation: Instrumentation | None = None) -> None:
        self.client = server if isinstance(server, Client) else Client(server, token)
        self._instrumentation = instrumentation or Instrumentation()
        self._dependencies = None

    def _session(self, state: TorporSandboxSessionState, sandbox: RemoteSandbox,
                 preserved: bool) -> SandboxSession:
        inner = TorporSandboxSession(state=state, sandbox=sandbox, client=self.client)
        inner._set_start_state_preserved(preserved, system=preserved)
        return self._wrap_session(inner, instrumentation=self._instrumentation)

    def _make(self, state: TorporSandboxSessionState) -> RemoteSandbox:
        return self.client.sandboxes.create(state.image, timeout=state.server_timeout,
                                            on_timeout=state.on_timeout,
                                            metadata=state.metadata, env=state.env)

    async def create(self, *, snapshot: SnapshotSpec | SnapshotBase | None = None,
                     manifest: Manifest | None = None,
                     options: TorporSandboxClientOptions | None = None) -> SandboxSession:
        options = options or TorporSandboxClientOptions()
        manifest = self._validate_manifest_for_create(manifest or Manifest())
        session_id = uuid.uuid4()
        state = TorporSandboxSessionState(
            session_id=session_id, manifest=manifest, sandbox_id="",
            snapshot=resolve_snapshot(snapshot, str(session_id)), image=options.image,
            server_timeout=options.timeout, on_timeout=options.on_timeout,
            on_exit=options.on_exit, env=dict(options.env), metadata=dict(options.metadata))
        sandbox = await asyncio.to_thread(self._make, state)
        state.sandbox_id = sandbox.id
        return self._session(state, sandbox, preserved=False)

    async def delete(self, session: SandboxSession) -> SandboxSession:
        """Nothing more to do: the session's shutdown paused, kept or killed it."""
        if not isinstance(session._inner, TorporSandboxSession):
            raise TypeError("TorporSandboxClient.delete expects a TorporSandboxSession")
        return session

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        """The state's sandbox if the server still has it (resumed if paused: processes
        and memory back); else a new one, whose workspace the SDK hydrates from the state's
        snapshot."""
        if not isinstance(state, TorporSandboxSessionState):
            raise TypeError("TorporSandboxClient.resume expects a TorporSandboxSessionState")
        state.assert_path_grants_rebound()

        def attach() -> RemoteSandbox | None:
            try:
                sb = self.client.sandboxes.get(state.sandbox_id)
                if sb.state == "paused":
                    sb.resume()
                return sb if sb.state == "running" else None
            except ApiError as e:
                if e.status in (404, 409, 410):
                    return None  # gone (killed, or never on this server)
                raise

        sandbox = await asyncio.to_thread(attach)
        if sandbox is not None:
            log.info("sandbox %s: resumed", state.sandbox_id)
            return self._session(state, sandbox, preserved=True)
        sandbox = await asyncio.to_thread(self._make, state)
        log.info("sandbox %s is gone: a new one, %s", state.sandbox_id, sandbox.id)
        state.sandbox_id, state.workspace_root_ready = sandbox.id, False
        return self._session(state, sandbox, preserved=False)

    def deserialize_session_state(self, payload: dict[str, object]) -> SandboxSessionState:
        return self._deserialize_session_state_payload(payload, TorporSandboxSessionState)
