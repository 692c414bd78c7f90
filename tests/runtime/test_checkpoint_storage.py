"""The runtime's checkpoint storage: a raw hot copy for fast restores, checked before use,
backed by the snapshot store (no sandbox needed: checkpoints are plain directories)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from torpor.runtime.checkpoints import META, SnapshotCheckpointStorage
from torpor.sandbox.checkpoints import (
    CheckpointCorrupt,
    CheckpointNotFound,
    CheckpointOutdated,
    LocalCheckpointStorage,
)
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


def test_hot_copy_digests_are_taken_at_the_wait_point_and_catch_damage(tmp_path: Path):
    home = tmp_path / "home"
    storage = SnapshotCheckpointStorage(open_store(f"file://{tmp_path / 'store'}"), home)
    staging = storage.staging_dir()
    files = fake_checkpoint(staging / "ck")
    storage.put("ck-1", staging / "ck", {"engine": "gvisor"})
    hot = home / "checkpoint-cache" / "ck-1"
    # recorded by put() itself, before the wait point is acknowledged
    recorded = json.loads((hot / META).read_text())["files"]
    assert set(recorded) == set(files) and all("xxh3" in f for f in recorded.values())
    storage.flush()

    # A flipped byte, same size: the hot copy is refused and refetched from the store.
    pages = bytearray((hot / "pages.img").read_bytes())
    pages[10_000] ^= 0xFF
    (hot / "pages.img").write_bytes(bytes(pages))
    path, temporary = storage.open_dir("ck-1")
    try:
        assert {n: (path / n).read_bytes() for n in files} == files
    finally:
        if temporary:
            shutil.rmtree(path, ignore_errors=True)


def unuploaded_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkpoint put as ck-1 by a process that died right after its wait point (its
    upload never started): the hot copy, left for the next process to upload."""
    home = tmp_path / "home"
    storage = SnapshotCheckpointStorage(open_store(f"file://{tmp_path / 'store'}"), home)
    with monkeypatch.context() as m:
        m.setattr(storage, "_enqueue", lambda ckpt_id: None)  # the process is gone
        staging = storage.staging_dir()
        fake_checkpoint(staging / "ck")
        storage.put("ck-1", staging / "ck", {"engine": "gvisor"})
    return home / "checkpoint-cache" / "ck-1"


@pytest.mark.parametrize("damage", ["torn data", "torn metadata"])
def test_a_hot_copy_torn_before_its_upload_is_dropped_not_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:  # fmt: skip
    # A power cut after the wait point: the files were never fsynced. The next process
    # resumes the upload; it must not store what is on disk as the truth.
    hot = unuploaded_checkpoint(tmp_path, monkeypatch)
    if damage == "torn data":
        with open(hot / "pages.img", "r+b") as f:
            f.truncate(4096 * 10)  # what was flushed to disk before the cut
    else:
        (hot / META).write_text('{"id": "ck-1", "fil')
    store = open_store(f"file://{tmp_path / 'store'}")
    nxt = SnapshotCheckpointStorage(store, tmp_path / "home")  # resumes the upload
    nxt.flush()
    assert not store.exists("ck-1")
    assert not hot.exists()  # dropped: nothing restores it later
    assert "ck-1" in nxt._errors and "torn" in nxt._errors["ck-1"]
    with pytest.raises(CheckpointNotFound):
        nxt.open_dir("ck-1")


def test_an_intact_hot_copy_left_by_a_dead_process_is_uploaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    hot = unuploaded_checkpoint(tmp_path, monkeypatch)
    store = open_store(f"file://{tmp_path / 'store'}")
    SnapshotCheckpointStorage(store, tmp_path / "home").flush()
    assert store.exists("ck-1") and (hot / ".stored").exists()


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


def test_an_upload_that_fails_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture):
    # The store is unreachable for a moment (here its directory is gone and a file stands
    # in its way): the upload fails, and succeeds when tried again.
    from torpor.runtime import checkpoints

    monkeypatch.setattr(checkpoints, "UPLOAD_RETRIES", (1.0,))
    root = tmp_path / "store"
    store = open_store(f"file://{root}")
    storage = SnapshotCheckpointStorage(store, tmp_path / "home")
    root.rename(tmp_path / "away")
    root.write_text("in the way")
    staging = storage.staging_dir()
    files = fake_checkpoint(staging / "ck")
    storage.put("ck-1", staging / "ck", {"engine": "gvisor"})
    deadline = time.monotonic() + 10
    while "ck-1" not in storage._errors:  # the first attempt failed
        assert time.monotonic() < deadline, "the upload did not fail"
        time.sleep(0.02)
    root.unlink()
    (tmp_path / "away").rename(root)
    storage.flush()
    assert storage._errors == {} and store.exists("ck-1")
    [failed] = [r for r in caplog.records if r.name == "torpor.runtime.checkpoints"]
    assert failed.levelname == "WARNING" and failed.getMessage().startswith(
        "uploading checkpoint ck-1 failed (attempt 1): ")
    assert failed.getMessage().endswith("; trying again in 1 s")
    out = tmp_path / "out"
    store.get("ck-1", out)
    assert {n: (out / n).read_bytes() for n in files} == files


def test_checkpoints_of_an_older_build_without_xxh3_digests_are_refused_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:  # fmt: skip
    # Older development builds recorded CRC-32s (or no digest) for a hot copy's files;
    # this one cannot check such a copy, so it restores nothing from it and uploads
    # nothing of it, and says so; the copy is left for its owner to remove.
    hot = unuploaded_checkpoint(tmp_path, monkeypatch)
    meta = json.loads((hot / META).read_text())
    meta["files"] = {n: {"size": f["size"], "crc32": 1234} for n, f in meta["files"].items()}
    (hot / META).write_text(json.dumps(meta))
    store = open_store(f"file://{tmp_path / 'store'}")
    nxt = SnapshotCheckpointStorage(store, tmp_path / "home")  # resumes the upload
    nxt.flush()
    assert not store.exists("ck-1") and hot.exists()
    assert "older development build" in nxt._errors["ck-1"]
    assert f"checkpoint ck-1 not uploaded: {nxt._errors['ck-1']}" in caplog.messages
    with pytest.raises(CheckpointOutdated, match="ck-1 was made by an older development "
                       "build of torpor .*XXH3.*remove it"):  # fmt: skip
        nxt.open_dir("ck-1")
    assert hot.exists()


def test_a_local_checkpoint_whose_metadata_lists_no_files_is_refused(tmp_path: Path):
    storage = LocalCheckpointStorage(tmp_path / "cks")
    staging = storage.staging_dir()
    fake_checkpoint(staging / "ck")
    storage.put("ck-1", staging / "ck", {"engine": "gvisor"})
    meta_path = tmp_path / "cks" / "ck-1" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert storage.open_dir("ck-1") == (tmp_path / "cks" / "ck-1", False)
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "files"}))
    with pytest.raises(CheckpointCorrupt, match="ck-1: its metadata lists no files"):
        storage.open_dir("ck-1")


def test_a_hot_copy_half_written_by_a_killed_process_is_swept_at_open(tmp_path: Path):
    # A checkpoint (or a fetch) being written into the hot cache's staging area when its
    # process was killed: the next storage opened over the same home removes it, and
    # never what a live process is still writing there.
    import signal
    import subprocess
    import sys
    import textwrap

    home, store_url = tmp_path / "home", f"file://{tmp_path / 'store'}"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from torpor.runtime.checkpoints import SnapshotCheckpointStorage
        from torpor.snapshots import open_store
        storage = SnapshotCheckpointStorage(open_store({store_url!r}), Path({str(home)!r}))
        d = storage.staging_dir()
        (d / "pages.img").write_bytes(b"p" * 65536)
        (d / ".checkpoint.img.part-1").write_bytes(b"c" * 4096)
        print("writing", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    staging = home / "checkpoint-cache" / ".staging"
    [left] = staging.iterdir()
    assert (left / "pages.img").exists()
    storage = SnapshotCheckpointStorage(open_store(store_url), home)
    assert list(staging.iterdir()) == []
    mine = storage.staging_dir()
    SnapshotCheckpointStorage(open_store(store_url), home)
    assert list(staging.iterdir()) == [mine]


def test_a_hot_copy_of_a_snapshot_deleted_from_the_store_is_dropped(tmp_path: Path):
    storage, _files, hot = stored_checkpoint(tmp_path)
    assert storage.drop_deleted(grace=0) == [] and hot.exists()  # still in the store
    storage.store.delete("ck-1")  # as retention or the gc on another machine does
    assert storage.drop_deleted() == [] and hot.exists()  # used a moment ago: stays
    # a session or sandbox still names it: this copy may be the last one, it stays
    assert storage.drop_deleted(grace=0, keep=lambda snap: snap == "ck-1") == []
    assert hot.exists()
    assert storage.drop_deleted(grace=0) == ["ck-1"] and not hot.exists()
    with pytest.raises(CheckpointNotFound):
        storage.meta("ck-1")


def test_a_hot_copy_not_stored_yet_is_never_dropped(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    hot = unuploaded_checkpoint(tmp_path, monkeypatch)
    storage = SnapshotCheckpointStorage(open_store(f"file://{tmp_path / 'other'}"),
                                        tmp_path / "home", background=False)  # fmt: skip
    assert storage.drop_deleted(grace=0) == [] and hot.exists()  # the only copy there is
