"""Running one torpor-init client process to its end: its stdin fed (bytes, or a stream
read until its end), its stdout and stderr passed on as they come and kept, a `cancel`
event and a failing output callback watched (SIGTERM to the client, which forwards it to
the command's process group in the sandbox; SIGKILL to the client CANCEL_GRACE later).

One thread per output pipe (and one for a stdin stream) rather than a selector loop: the
callbacks may block (a slow consumer), and a thread per pipe keeps one stream's slow
reader from stalling the other's. The caller's thread waits on the readers, which end
when the client closes its pipes, that is when it exits.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, BinaryIO

log = logging.getLogger(__name__)

CANCEL_GRACE = 5.0  # seconds a cancelled command has between SIGTERM and its client's end
CHUNK = 1 << 16
INIT_PREFIX = b"torpor-init:"  # how the client's own messages start


@dataclass
class Outcome:
    """What a client printed: `stdout`/`stderr` as kept (empty without capture), and
    `held`: stderr not passed to its callback yet (see `run`)."""

    stdout: bytes
    stderr: bytes
    held: bytes = b""
    head: bytes = b""  # the first and last bytes of stderr, kept even without capture
    tail: bytes = b""


@dataclass
class _Reader:
    pipe: IO[bytes]
    callback: Callable[[bytes], None] | None
    capture: bool
    hold: bool  # hold init's own messages back (stderr): see `run`
    failed: threading.Event
    chunks: list[bytes] = field(default_factory=list)
    held: list[bytes] = field(default_factory=list)
    head: bytearray = field(default_factory=bytearray)
    tail: bytes = b""
    error: BaseException | None = None

    def __call__(self) -> None:
        holding = self.hold and self.callback is not None
        while chunk := self.pipe.read1(CHUNK):  # type: ignore[attr-defined]
            if len(self.head) < 64:
                self.head += chunk[: 64 - len(self.head)]
            self.tail = (self.tail + chunk)[-256:]
            if self.capture:
                self.chunks.append(chunk)
            if self.callback is None or self.error is not None:
                continue
            if holding:
                # Only init's own message so far? It may be "cannot connect", after which
                # the caller retries: hold it. The command's own output is never held.
                self.held.append(chunk)
                data = b"".join(self.held)
                if data.startswith(INIT_PREFIX) or INIT_PREFIX.startswith(data):
                    continue
                holding = False
                self.held.clear()
                chunk = data
            self._deliver(chunk)

    def _deliver(self, chunk: bytes) -> None:
        try:
            self.callback(chunk)  # type: ignore[misc]
        except BaseException as e:  # stop the command; the caller re-raises it
            self.error = e
            self.failed.set()


def _feed(pipe: IO[bytes], stdin: bytes | BinaryIO) -> None:
    """Write stdin to the client, then close its end (the command sees end of file)."""
    try:
        if isinstance(stdin, bytes | bytearray | memoryview):
            pipe.write(stdin)
        else:
            read = getattr(stdin, "read1", None) or stdin.read
            while chunk := read(CHUNK):
                pipe.write(chunk)
                pipe.flush()
        pipe.close()
    except (BrokenPipeError, ValueError):
        pass  # the command ended (or stopped reading) first
    except OSError as e:
        log.warning("feeding stdin to a command failed: %s", e)


def run(
    proc: subprocess.Popen[bytes],
    *,
    stdin: bytes | BinaryIO | None = None,
    timeout: float | None = None,
    cancel: threading.Event | Sequence[threading.Event] | None = None,
    on_stdout: Callable[[bytes], None] | None = None,
    on_stderr: Callable[[bytes], None] | None = None,
    capture: bool = True,
) -> Outcome:
    """Run the client `proc` (started with pipes for stdout and stderr, and for stdin if
    `stdin` is given) to its end. stderr that starts as one of init's own messages is
    held back from `on_stderr` until the client ends (`Outcome.held`: the caller passes
    it on, or drops it when it retries a client that could not reach init). Raises
    subprocess.TimeoutExpired after `timeout` (the client is left to the caller), and
    whatever an output callback raised (after stopping the command)."""
    assert proc.stdout is not None and proc.stderr is not None
    failed = threading.Event()
    readers = [_Reader(proc.stdout, on_stdout, capture, False, failed),
               _Reader(proc.stderr, on_stderr, capture, True, failed)]  # fmt: skip
    threads = [threading.Thread(target=r, daemon=True, name="torpor-exec-output")
               for r in readers]  # fmt: skip
    feeder = None
    if stdin is not None and proc.stdin is not None:
        feeder = threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True,
                                  name="torpor-exec-stdin")  # fmt: skip
        feeder.start()
    for t in threads:
        t.start()
    cancels = [cancel] if isinstance(cancel, threading.Event) else list(cancel or [])
    _wait(proc, threads, timeout, [*cancels, failed])
    proc.wait()
    if feeder is not None and isinstance(stdin, bytes | bytearray | memoryview):
        feeder.join()  # a stream may block on its source: that thread is left to end
    for r in readers:
        if r.error is not None:
            raise r.error
    out, err = readers
    return Outcome(b"".join(out.chunks), b"".join(err.chunks), b"".join(err.held),
                   bytes(err.head), err.tail)  # fmt: skip


def _wait(proc: subprocess.Popen[bytes], threads: list[threading.Thread],
          timeout: float | None, stops: list[threading.Event]) -> None:  # fmt: skip
    """Wait for the output threads (they end when the client exits), sending SIGTERM
    once a stop event is set and SIGKILL CANCEL_GRACE later."""
    deadline = None if timeout is None else time.monotonic() + timeout
    signalled: float | None = None
    for t in threads:
        while t.is_alive():
            step = 0.1
            if deadline is not None:
                step = max(0.0, min(step, deadline - time.monotonic()))
            t.join(step)
            if not t.is_alive():
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(proc.args, timeout or 0)
            if signalled is None and any(e.is_set() for e in stops):
                signalled = time.monotonic()
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            elif signalled is not None and time.monotonic() - signalled > CANCEL_GRACE:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
