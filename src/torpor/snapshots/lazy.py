"""Lazy memory loading: map a stored file as memory whose pages arrive on first touch.

`LazyMapping` maps an anonymous private region, registers it with userfaultfd
(missing-page mode) and serves each page fault from a `SnapshotReader` in a handler
thread: the fault's whole chunk (rounded out to whole pages) is fetched, verified,
decompressed and copied in with UFFDIO_COPY, so only the chunks a program touches
are ever read. This is how a VM engine can resume from a memory image before it
is downloaded. `FaultServer` serves any userfaultfd (one handed over by another
process, such as a VMM, works the same way) given the region's base address.

Needs Linux with userfaultfd (root, or vm.unprivileged_userfaultfd=1). Reads of the
region from Python in this process must go through `LazyMapping.read` (it copies
with the GIL released); a plain memoryview read would hold the GIL while the fault
waits for the handler thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import select
import struct
import threading
from typing import Protocol

PAGE = mmap.PAGESIZE
SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}.get(os.uname().machine, 323)
UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_UNREGISTER = 0x8010AA01
UFFDIO_COPY = 0xC028AA03
UFFDIO_REGISTER_MODE_MISSING = 1
UFFD_EVENT_PAGEFAULT = 0x12
MSG = struct.Struct("<BBHIQQQ")  # event, pad, pad, pad, flags, address, ptid/pad

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


class Source(Protocol):
    """What a fault server reads from (a SnapshotReader fits)."""

    size: int

    def read(self, offset: int, length: int) -> bytes: ...

    def chunk_bounds(self, offset: int) -> tuple[int, int]: ...


class LazyError(OSError):
    pass


def _ioctl(fd: int, request: int, arg: ctypes.Array[ctypes.c_char] | ctypes.Structure) -> None:
    if _libc.ioctl(fd, request, ctypes.byref(arg)) != 0:
        err = ctypes.get_errno()
        raise LazyError(err, f"userfaultfd ioctl {request:#x}: {os.strerror(err)}")


class _Api(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class _Range(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Register(ctypes.Structure):
    _fields_ = [("range", _Range), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class _Copy(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("copy", ctypes.c_int64)]


def open_userfaultfd() -> int:
    fd = _libc.syscall(SYS_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        raise LazyError(err, "userfaultfd is not available here "
                        f"({os.strerror(err)}; needs root or vm.unprivileged_userfaultfd=1)")
    api = _Api(UFFD_API, 0, 0)
    try:
        _ioctl(fd, UFFDIO_API, api)
    except BaseException:
        os.close(fd)
        raise
    return int(fd)


class FaultServer:
    """Serves missing-page faults of [base, base+length) on `uffd` from `source`.

    Byte `base + i` of the region is byte `offset + i` of the source; bytes past the
    source's end read as zero.
    """

    def __init__(self, uffd: int, base: int, length: int, source: Source,
                 offset: int = 0) -> None:
        self.uffd = uffd
        self.base = base
        self.length = length
        self.source = source
        self.offset = offset
        self.faults = 0
        self.pages_filled = 0
        self.bytes_filled = 0
        self.error: BaseException | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="torpor-uffd", daemon=True)

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
            self._thread.join()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.uffd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            events = dict(poller.poll())
            if self._stop_r in events:
                return
            try:
                raw = os.read(self.uffd, MSG.size * 64)
            except BlockingIOError:
                continue
            for i in range(0, len(raw) - MSG.size + 1, MSG.size):
                event, _a, _b, _c, _flags, address, _t = MSG.unpack_from(raw, i)
                if event != UFFD_EVENT_PAGEFAULT:
                    continue
                self.faults += 1
                try:
                    self._serve(address)
                except BaseException as exc:  # noqa: BLE001 - keep the faulting thread alive
                    self.error = exc
                    self._fill(address & ~(PAGE - 1), bytes(PAGE))

    def _serve(self, address: int) -> None:
        rel = (address & ~(PAGE - 1)) - self.base
        src_off = self.offset + rel
        if src_off >= self.source.size:
            start, end = rel, rel + PAGE
        else:
            cstart, clen = self.source.chunk_bounds(src_off)
            start = ((cstart - self.offset) // PAGE) * PAGE
            end = -(-(cstart + clen - self.offset) // PAGE) * PAGE
        start = max(start, 0)
        end = min(end, self.length)
        data = self.source.read(self.offset + start, end - start)
        data += bytes(end - start - len(data))
        self._fill(self.base + start, data)

    def _fill(self, dst: int, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        copy = _Copy(dst, ctypes.addressof(buf), len(data), 0, 0)
        if _libc.ioctl(self.uffd, UFFDIO_COPY, ctypes.byref(copy)) == 0:
            self.pages_filled += len(data) // PAGE
            self.bytes_filled += len(data)
            return
        err = ctypes.get_errno()
        if err != errno.EEXIST and err != errno.EAGAIN:
            raise LazyError(err, f"UFFDIO_COPY: {os.strerror(err)}")
        # some pages of the span are present already: fill the others one by one
        for off in range(0, len(data), PAGE):
            one = _Copy(dst + off, ctypes.addressof(buf) + off, PAGE, 0, 0)
            if _libc.ioctl(self.uffd, UFFDIO_COPY, ctypes.byref(one)) == 0:
                self.pages_filled += 1
                self.bytes_filled += PAGE
            elif ctypes.get_errno() != errno.EEXIST:
                err = ctypes.get_errno()
                raise LazyError(err, f"UFFDIO_COPY: {os.strerror(err)}")


class LazyMapping:
    """An anonymous mapping of `source[offset:offset+length]` filled on first touch."""

    def __init__(self, source: Source, offset: int = 0, length: int | None = None) -> None:
        if length is None:
            length = source.size - offset
        if offset % PAGE:
            raise ValueError("offset must be page-aligned")
        self.source = source
        self.size = length
        self.length = max(PAGE, -(-length // PAGE) * PAGE)
        addr = _libc.mmap(None, self.length, mmap.PROT_READ | mmap.PROT_WRITE,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise LazyError(ctypes.get_errno(), "mmap failed")
        self.address = int(addr)
        self.uffd = -1
        try:
            self.uffd = open_userfaultfd()
            reg = _Register(_Range(self.address, self.length), UFFDIO_REGISTER_MODE_MISSING, 0)
            _ioctl(self.uffd, UFFDIO_REGISTER, reg)
        except BaseException:
            self._release()
            raise
        self.server = FaultServer(self.uffd, self.address, self.length, source, offset).start()

    def read(self, offset: int, length: int) -> bytes:
        """Copy bytes out of the region (faulting pages in), with the GIL released."""
        if offset < 0 or offset > self.size:
            raise ValueError("offset outside the mapping")
        length = max(0, min(length, self.size - offset))
        buf = ctypes.create_string_buffer(length)
        ctypes.memmove(buf, self.address + offset, length)
        if self.server.error is not None:
            raise self.server.error
        return buf.raw

    def touch(self, offset: int) -> int:
        """Read one byte (faulting its page in) and return it."""
        return self.read(offset, 1)[0]

    def _release(self) -> None:
        if self.uffd >= 0:
            rng = _Range(self.address, self.length)
            _libc.ioctl(self.uffd, UFFDIO_UNREGISTER, ctypes.byref(rng))
            os.close(self.uffd)
            self.uffd = -1
        if self.address:
            _libc.munmap(self.address, self.length)
            self.address = 0

    def close(self) -> None:
        if getattr(self, "server", None) is not None:
            self.server.stop()
        self._release()

    def __enter__(self) -> LazyMapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
