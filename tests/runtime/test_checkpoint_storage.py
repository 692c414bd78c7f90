"""The runtime's checkpoint storage: a raw hot copy for fast restores, checked before use,
backed by the snapshot store (no sandbox needed: checkpoints are plain directories)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torpor.runtime.checkpoints import META, SnapshotCheckpointStorage
from torpor.snapshots import open_store


def fake_checkpoint(d: Path) -> dict[str, bytes]:
    d.mkdir()
    files = {"checkpoint.img": os.urandom(5000), "pages.img": os.urandom(4096) * 64}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return files


def test_hot_copy_checksums_are_taken_off_the_wait_point_and_catch_damage(tmp_path: Path):
    home = tmp_path / "home"
    storage = SnapshotCheckpointStorage(open_store(f"file://{tmp_path / 'store'}"), home)
    staging = storage.staging_dir()
    files = fake_checkpoint(staging / "ck")
    storage.put("ck-1", staging / "ck", {"engine": "gvisor"})
    storage.flush()
    hot = home / "checkpoint-cache" / "ck-1"
    # The uploader recorded the checksums that put() left out.
    recorded = json.loads((hot / META).read_text())["files"]
    assert all("crc32" in f for f in recorded.values())

    # A flipped byte, same size: the hot copy is refused and refetched from the store.
    pages = bytearray((hot / "pages.img").read_bytes())
    pages[10_000] ^= 0xFF
    (hot / "pages.img").write_bytes(bytes(pages))
    path, temporary = storage.open_dir("ck-1")
    try:
        assert {n: (path / n).read_bytes() for n in files} == files
    finally:
        if temporary:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
