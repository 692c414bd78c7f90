"""The runtime's checkpoint storage: a raw hot copy for fast restores, checked before use,
backed by the snapshot store (no sandbox needed: checkpoints are plain directories)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from torpor.runtime.checkpoints import META, SnapshotCheckpointStorage
from torpor.snapshots import open_store


def fake_checkpoint(d: Path) -> dict[str, bytes]:
    d.mkdir()
    files = {"checkpoint.img": os.urandom(5000), "pages.img": os.urandom(4096) * 64}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return files


def stored_checkpoint(tmp_path: Path) -> tuple[SnapshotCheckpointStorage, dict[str, bytes], Path]:
    """A fake checkpoint put as ck-1 and uploaded: the storage, its files, its hot copy."""
    home = tmp_path / "home"
    storage = SnapshotCheckpointStorage(open_store(f"file://{tmp_path / 'store'}"), home)
    staging = storage.staging_dir()
    files = fake_checkpoint(staging / "ck")
    storage.put("ck-1", staging / "ck", {"engine": "gvisor"})
    storage.flush()
    return storage, files, home / "checkpoint-cache" / "ck-1"


def test_hot_copy_checksums_are_taken_off_the_wait_point_and_catch_damage(tmp_path: Path):
    storage, files, hot = stored_checkpoint(tmp_path)
    # The uploader recorded the checksums that put() left out.
    recorded = json.loads((hot / META).read_text())["files"]
    assert all("xxh3" in f for f in recorded.values())

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


def test_a_checkpoint_recorded_with_an_older_crc32_is_still_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Checkpoints stored by versions that recorded CRC-32s (in the store's metadata and the
    # hot copy's) are verified with them, not trusted.
    import zlib

    from torpor.runtime import checkpoints

    def describe_as_before(d: Path, *, digest: bool = True) -> dict[str, dict[str, int]]:
        return {f.name: {"size": f.stat().st_size, "crc32": zlib.crc32(f.read_bytes())}
                for f in d.iterdir() if f.is_file() and not f.name.startswith(".")}  # fmt: skip

    with monkeypatch.context() as m:
        m.setattr(checkpoints, "_describe", describe_as_before)
        storage, files, hot = stored_checkpoint(tmp_path)
    assert all("crc32" in f and "xxh3" not in f for f in storage.meta("ck-1")["files"].values())
    assert storage.open_dir("ck-1") == (hot, False)  # intact: used in place
    pages = bytearray((hot / "pages.img").read_bytes())
    pages[123] ^= 0x01
    (hot / "pages.img").write_bytes(bytes(pages))
    path, temporary = storage.open_dir("ck-1")  # damaged: refetched from the store
    assert (path / "pages.img").read_bytes() == files["pages.img"]


def test_an_upload_left_at_exit_is_finished_with_its_page_deltas(tmp_path: Path):
    # The process ends right after a checkpoint (as `torpor demo` and one-shot CLI commands
    # do): the background upload, which reads the parent's pages for deltas, must still
    # complete at interpreter exit, when concurrent.futures no longer takes new work.
    import subprocess
    import sys

    script = f"""
import os
from pathlib import Path
from torpor.runtime.checkpoints import SnapshotCheckpointStorage
from torpor.snapshots import open_store
home = Path({str(tmp_path / 'home')!r})
storage = SnapshotCheckpointStorage(open_store("file://{tmp_path / 'store'}"), home)
pages = bytearray(os.urandom(4096 * 1024))
for n, parent in ((1, None), (2, "ck-1")):
    d = storage.staging_dir() / "ck"
    d.mkdir()
    (d / "checkpoint.img").write_bytes(os.urandom(3000))
    for page in range(0, 1024, 16):  # one byte of every 16th page changes each time
        pages[4096 * page + 7] ^= 0xFF
    (d / "pages.img").write_bytes(bytes(pages))
    storage.put(f"ck-{{n}}", d, {{"engine": "gvisor", "parent": parent}})
    if n == 1:
        storage.flush()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "failed" not in proc.stderr, proc.stderr
    store = open_store(f"file://{tmp_path / 'store'}")
    second = store.info("ck-2")
    assert second.new_bytes < 64 * 4096 // 4  # 64 changed pages, stored as small deltas
