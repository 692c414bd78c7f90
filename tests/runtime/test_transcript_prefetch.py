"""The worker's transcript reads the log, and loads the large payloads the model will be
sent, while the sandbox is being restored (no sandbox needed: the log alone)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from torpor.context import BlobMissing, Entry, open_log
from torpor.runtime.transcript import Transcript


def test_prefetch_loads_what_the_model_will_be_sent(tmp_path: Path):
    log = open_log(f"sqlite:///{tmp_path / 'ctx.db'}", blobs=f"file://{tmp_path / 'blobs'}",
                   blob_threshold=1024)  # fmt: skip
    sid = "s1"
    big = "x" * 50_000
    log.append(sid, epoch=log.acquire(sid), entries=[Entry.message("user", "run it"),
                     Entry.tool_call("c1", "shell", '{"command": "make"}'),
                     Entry.tool_result("c1", big),
                     Entry.message("assistant", "done")])  # fmt: skip
    tr = Transcript(log, sid, epoch=log.acquire(sid))
    tr.prefetch().join()
    # The payloads are in memory now: the blob store is no longer needed to build the
    # request, and what the transcript hands out is the whole log, once.
    shutil.rmtree(tmp_path / "blobs")
    entries = tr.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert entries[2].content == big
    # A transcript that did not prefetch goes to the blob store, which is gone.
    cold = Transcript(log, sid, epoch=log.acquire(sid))
    with pytest.raises(BlobMissing):
        _ = [e.content for e in cold.entries()]
