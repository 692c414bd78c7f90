"""Export of a stored file in the Zstandard seekable format.

The output is a sequence of ordinary zstd frames, one per chunk, followed by the
seek table in a skippable frame (magic 0x184D2A5E) whose footer ends with the
seekable magic 0x8F92EAB1, so tools that know the format (zstd's contrib/seekable,
pyzstd.SeekableZstdFile, t2sz readers) can seek in it, and plain ``zstd -d`` still
decompresses it whole. Frames already stored compressed (unencrypted) are copied
as they are; others are compressed on the way.

A pure format writer: the chunks' plain bytes come from a `fetch` callable (the
store's `fetch_chunks`), so this module knows nothing of the store.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

from .codec import Codec
from .manifest import FileTable

SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
BATCH = 1024


def seek_table(frames: list[tuple[int, int]]) -> bytes:
    """The skippable frame holding the seek table for (compressed, decompressed) sizes."""
    entries = b"".join(struct.pack("<II", c, d) for c, d in frames)
    footer = struct.pack("<IBI", len(frames), 0, SEEKABLE_MAGIC)
    body = entries + footer
    return struct.pack("<II", SKIPPABLE_MAGIC, len(body)) + body


def write_seekable(fetch: Callable[[list[bytes]], dict[bytes, bytes]], codec: Codec,
                   table: FileTable, out: Path) -> Path:
    """Write table's file to out in the seekable format; fetch(ids) gives the plain bytes
    of the chunks with those ids (verified)."""
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    frames: list[tuple[int, int]] = []
    try:
        with open(tmp, "wb") as fh:
            for start in range(0, len(table.ids), BATCH):
                ids = table.ids[start:start + BATCH]
                got = fetch(list(dict.fromkeys(ids)))
                framed: dict[bytes, bytes] = {}
                for cid in ids:
                    frame = framed.get(cid)
                    if frame is None:
                        frame = framed[cid] = codec.frame_of(got[cid])
                    fh.write(frame)
                    frames.append((len(frame), len(got[cid])))
            fh.write(seek_table(frames))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
