"""The port proxy behind `-p HOST:CTR`: 127.0.0.1:HOST on the host -> sandbox:CTR.

Runs as its own small process per sandbox (started and stopped by torpor.sandbox.network).
It binds its listening sockets in the host's network namespace first, then moves itself
into the sandbox's peer namespace, so that every outgoing connection is made from there:
a socket stays in the namespace it was created in.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import socket

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    # os.setns exists only from Python 3.12; call libc directly on 3.11.
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError) as e:  # one side went away: the other is closed
        log.debug("proxied connection ended: %s", e)
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except OSError as e:  # already closed
            log.debug("cannot half-close a proxied connection: %s", e)


async def _serve(listeners: list[tuple[socket.socket, int]], target: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    conns: set[asyncio.StreamWriter] = set()

    def handler(port: int):  # type: ignore[no-untyped-def]
        async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
            conns.add(cw)
            try:
                sr, sw = await asyncio.wait_for(asyncio.open_connection(target, port), 10)
            except (OSError, TimeoutError):
                cw.close()
                conns.discard(cw)
                return
            conns.add(sw)
            await asyncio.gather(_pipe(cr, sw), _pipe(sr, cw))
            for w in (cw, sw):
                w.close()
                conns.discard(w)

        return handle

    servers = [
        await asyncio.start_server(handler(port), sock=sock) for sock, port in listeners
    ]
    await stop.wait()
    for s in servers:
        s.close()
    for w in list(conns):
        w.transport.abort()


def main() -> None:
    ap = argparse.ArgumentParser(prog="torpor-portproxy")
    ap.add_argument("--netns", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--map", action="append", default=[])
    ap.add_argument("--ready-fd", type=int, required=True)
    args = ap.parse_args()
    ready = os.fdopen(args.ready_fd, "w")
    listeners = []
    try:
        for m in args.map:
            host, ctr = (int(x) for x in m.split(":"))
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", host))
            except OSError as e:
                raise OSError(f"cannot publish port {host}: {e.strerror}") from None
            s.listen(128)
            s.setblocking(False)
            listeners.append((s, ctr))
        _setns(args.netns)
    except OSError as e:
        ready.write(str(e.args[0] if len(e.args) == 1 else e))
        ready.close()
        raise SystemExit(1) from None
    ready.write("ok")
    ready.close()
    asyncio.run(_serve(listeners, args.target))


if __name__ == "__main__":
    main()
