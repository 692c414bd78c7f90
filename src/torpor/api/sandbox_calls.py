"""What the native sandbox routes (/v1/sandboxes) share: the tenant a token acts for, the
HTTP answer of each error of the sandbox resource and of the sandbox itself, the views
of rows, and output streamed from a worker thread as NDJSON lines.

Why NDJSON and not server-sent events for a command's output: an exec is a POST (a
browser's EventSource only GETs), it is not resumable (SSE's Last-Event-ID would promise
what cannot be kept: a command's output is not replayed), and a line of JSON per event is
read by any HTTP client with a line iterator (`httpx`'s `iter_lines`, `curl -N`), with
no framing of its own to parse. The last line says how it ended (exit, timeout, error).
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from torpor.api.schemas import ApiError
from torpor.api.tokens import Principal
from torpor.runtime.sandboxes import (
    EVERY_TENANT,
    InvalidSandbox,
    LifecycleFailed,
    NoSuchSandbox,
    NoSuchSnapshot,
    SandboxRow,
    SandboxStateError,
    SnapshotRow,
    Tenant,
    TenantOverQuota,
)
from torpor.sandbox.engine import (
    CommandTimeout,
    FileEntry,
    ProcessNotFound,
    SandboxError,
    SandboxFileError,
    SandboxFileNotFound,
)
from torpor.sandbox.handle import ProcessInfo


def tenant_of(p: Principal) -> Tenant:
    """The tenant whose sandboxes a token reaches (every tenant's: admin, or auth off)."""
    return EVERY_TENANT if p.all_tenants else p.tenant


@contextlib.contextmanager
def answering() -> Iterator[None]:
    """The errors of the sandbox resource and of the sandbox as HTTP errors: 404 for what
    is not there (a sandbox, a snapshot, a process, a file), 422 for a request that can
    never work, 409 for what the sandbox's state does not allow, 413 or 429 for a tenant
    over a storage quota."""
    try:
        yield
    except (NoSuchSandbox, NoSuchSnapshot, ProcessNotFound, SandboxFileNotFound) as e:
        raise ApiError(404, str(e)) from None
    except InvalidSandbox as e:
        raise ApiError(422, str(e)) from None
    except TenantOverQuota as e:  # 413 (stored bytes) or 429 (snapshots)
        raise ApiError(e.status, str(e)) from None
    except (SandboxStateError, LifecycleFailed, SandboxFileError) as e:
        raise ApiError(409, str(e)) from None
    except SandboxError as e:
        raise ApiError(409, str(e)) from None


def sandbox_view(row: SandboxRow, *, last_activity: float | None = None,
                 resumed: bool | None = None) -> dict[str, Any]:  # fmt: skip
    d = row.to_json()
    for k in ("box", "process", "env", "version"):  # the server's own, or secrets
        d.pop(k)
    if last_activity is not None:
        d["last_activity"] = last_activity
    if resumed is not None:
        d["resumed"] = resumed
    return d


def snapshot_view(s: SnapshotRow) -> dict[str, Any]:
    d = s.to_json()
    d.pop("tenant")
    return d


def process_view(p: ProcessInfo) -> dict[str, Any]:
    return {"id": p.id, "pid": p.pid, "state": p.state, "exit_code": p.exit_code,
            "command": p.command}  # fmt: skip


def file_view(e: FileEntry) -> dict[str, Any]:
    return e.to_json()


def encode(data: bytes, encoding: str) -> str:
    return base64.b64encode(data).decode() if encoding == "base64" else \
        data.decode(errors="replace")  # fmt: skip


# -- output streamed from a thread -----------------------------------------------------------

Emit = Callable[[str, bytes], None]


async def from_thread(work: Callable[[Emit, threading.Event], Any], *,
                      idle: float | None = None) -> AsyncIterator[tuple[str, Any]]:  # fmt: skip
    """Run `work(emit, cancel)` in a thread of its own and yield what it emits, as it
    comes: ("stdout" | "stderr", bytes) items, then ("result", what it returned) or
    ("raised", the exception); with `idle`, also ("idle", None) after each `idle`
    seconds without any. When the consumer stops early (the client went away), `cancel`
    is set for the work to stop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
    cancel = threading.Event()

    def put(item: tuple[str, Any] | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        try:
            put(("result", work(lambda kind, data: put((kind, data)), cancel)))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(("raised", e))
        finally:
            put(None)

    threading.Thread(target=run, name="torpor-api-stream", daemon=True).start()
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), idle)
            except TimeoutError:
                yield ("idle", None)
                continue
            if item is None:
                return
            yield item
    finally:
        cancel.set()


async def ndjson(items: AsyncIterator[tuple[str, Any]], encoding: str,
                 end: Callable[[Any], dict[str, Any]]) -> AsyncIterator[bytes]:  # fmt: skip
    """NDJSON lines of output items (see `from_thread`); the last line is `end(result)`,
    or what the exception says (a timeout, an error with the status it would have had)."""
    decoders = {k: codecs.getincrementaldecoder("utf-8")(errors="replace")
                for k in ("stdout", "stderr")}  # fmt: skip

    def line(d: dict[str, Any]) -> bytes:
        return (json.dumps(d) + "\n").encode()

    def data(kind: str, chunk: bytes, final: bool = False) -> bytes | None:
        text = encode(chunk, "base64") if encoding == "base64" else \
            decoders[kind].decode(chunk, final)  # fmt: skip
        return line({"type": kind, "data": text}) if text else None

    async for kind, value in items:
        if kind in ("stdout", "stderr"):
            if (out := data(kind, value)) is not None:
                yield out
            continue
        if encoding != "base64":  # bytes of a character cut at the end
            for k in decoders:
                if (out := data(k, b"", final=True)) is not None:
                    yield out
        if kind == "result":
            yield line(end(value))
        elif isinstance(value, CommandTimeout):
            yield line({"type": "timeout", "exit_code": 124, "message": str(value)})
        else:
            try:
                with answering():
                    raise value
            except ApiError as e:
                yield line({"type": "error", "message": str(e.detail), "status": e.status_code})
            except Exception as e:  # noqa: BLE001 - said on the stream's last line
                yield line({"type": "error", "message": f"internal error "
                                                        f"({type(e).__name__})", "status": 500})
