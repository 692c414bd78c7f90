"""Cutting files into chunks: 4 KiB aligned pages for memory images, FastCDC for the rest.

Sizes (see docs/snapshots.md for the measurements behind them):

* Page files (``pages.img``, ``*.pages``): one chunk per 4 KiB page, aligned. Two
  gVisor checkpoints of one sandbox a few requests apart share ~95 % of their 4 KiB
  pages but only ~64 % of their 64 KiB blocks, because changed pages are scattered.
* Other files (the gVisor state file, arbitrary files): content-defined chunks from
  FastCDC with min 8 KiB / average 32 KiB / max 128 KiB, so an insertion shifts only
  the chunks around it, and a 0.6 MB state file gives ~20 chunks.
"""

from __future__ import annotations

import mmap
import os

from fastcdc import fastcdc

PAGE_SIZE = 4096
CDC_MIN = 8 * 1024
CDC_AVG = 32 * 1024
CDC_MAX = 128 * 1024


def is_page_file(name: str) -> bool:
    """True for files chunked at page granularity (memory images)."""
    base = os.path.basename(name)
    return base == "pages.img" or base.endswith(".pages") or base.endswith("pages.img")


def chunk_kind(name: str, page_chunks: bool = True) -> str:
    return "page" if page_chunks and is_page_file(name) else "cdc"


def boundaries(data: bytes | memoryview | mmap.mmap, kind: str) -> list[tuple[int, int]]:
    """(offset, length) of consecutive chunks of a buffer, for chunker `kind`."""
    size = len(data)
    if size == 0:
        return []
    if kind == "page":
        return [(off, min(PAGE_SIZE, size - off)) for off in range(0, size, PAGE_SIZE)]
    return [(c.offset, c.length) for c in fastcdc(data, CDC_MIN, CDC_AVG, CDC_MAX)]
