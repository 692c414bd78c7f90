"""What crashed writers leave (temporary files and directories) is swept when an engine or
a checkpoint storage is opened, and what a live writer is still writing never is.
Real processes write and die here; no runsc is needed but for the engine's own sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from torpor import files
from torpor.files import TMP_PREFIX, sweep, writer_tag
from torpor.sandbox.checkpoints import LocalCheckpointStorage

NEEDS_RUNSC = False  # tests/sandbox/conftest.py: these run anywhere (but the last)


def dead_writer_tag() -> str:
    """The writer tag of a process that has exited (its pid is no longer in use)."""
    out = subprocess.run([sys.executable, "-c", "from torpor.files import writer_tag; "
                          "print(writer_tag())"], capture_output=True, text=True, check=True)
    tag = out.stdout.strip()
    assert tag != writer_tag() and not Path(f"/proc/{tag.split('-')[0]}").exists()
    return tag


def make(path: Path, *, age: float = 0.0, tree: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tree:
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "pages.img").write_bytes(b"x" * 4096)
    else:
        path.write_bytes(b"half")
    if age:
        t = time.time() - age
        os.utime(path, (t, t))
    return path


def test_sweep_removes_what_dead_or_old_writers_left_and_spares_live_ones(tmp_path: Path):
    boot, host = files._machine()
    dead = dead_writer_tag()
    pid = dead.split("-")[0]
    kept = {
        make(tmp_path / f"{TMP_PREFIX}{writer_tag()}a", tree=True, age=3600),  # this process
        make(tmp_path / f"{TMP_PREFIX}{pid}-{boot}-{'0' * 8}-b", age=3600),  # another host's
        make(tmp_path / f"{TMP_PREFIX}fresh", age=5),  # a write_atomic in flight
        make(tmp_path / "sandbox.json", age=3600),  # not a temporary name
    }
    gone = {
        make(tmp_path / f"{TMP_PREFIX}{dead}c", tree=True),  # its writer died just now
        make(tmp_path / f"{TMP_PREFIX}{pid}-{'0' * 8}-{host}-d"),  # before the last boot
        make(tmp_path / f"{TMP_PREFIX}old", age=120),  # untagged, older than a minute
    }
    os.symlink("/etc", tmp_path / f"{TMP_PREFIX}{dead}link")  # removed, never followed
    removed = sweep(tmp_path)
    assert sorted(removed) == sorted([p.name for p in gone] + [f"{TMP_PREFIX}{dead}link"])
    assert {p for p in tmp_path.iterdir()} == kept
    assert Path("/etc/passwd").exists()
    assert sweep(tmp_path / "no-such-dir") == []


def crash_while_writing(code: str) -> None:
    """Run `code` in a process that is killed (SIGKILL) once it prints 'writing'."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_local_checkpoint_half_written_by_a_killed_process_is_swept_at_open(tmp_path: Path):
    root = tmp_path / "checkpoints"
    crash_while_writing(f"""
        import time
        from pathlib import Path
        from torpor.sandbox.checkpoints import LocalCheckpointStorage
        d = LocalCheckpointStorage(Path({str(root)!r})).staging_dir()
        (d / "pages.img").write_bytes(b"p" * 65536)  # what runsc wrote before the kill
        print("writing", flush=True)
        time.sleep(60)
    """)
    [left] = (root / ".staging").iterdir()
    assert (left / "pages.img").exists()
    mine = LocalCheckpointStorage(root).staging_dir()  # this process's: being written
    assert list((root / ".staging").iterdir()) == [mine]
    LocalCheckpointStorage(root)  # another opener leaves a live writer's alone
    assert mine.exists()


def test_the_engine_sweeps_its_state_and_image_store_when_opened(tmp_path: Path):
    import shutil

    from torpor.sandbox.factory import open_engine
    from torpor.sandbox.images import ImageStore

    if shutil.which("runsc") is None:
        pytest.skip("an engine needs runsc to be opened")
    home, images = tmp_path / "home", tmp_path / "images"
    dead = dead_writer_tag()
    left = [
        make(home / "names" / f"{TMP_PREFIX}{dead}1-sb-x"),  # a names index update
        make(home / "bin" / f"{TMP_PREFIX}{dead}0123abcd", tree=True),  # an init build
        make(home / f"{TMP_PREFIX}k2j3", age=300),  # a write_atomic of doctor.json, say
        make(images / f"{TMP_PREFIX}{dead}pull", tree=True),  # a pull's unpack
    ]
    for p in left:
        assert p.exists()
    live = make(images / f"{TMP_PREFIX}{writer_tag()}build", tree=True)
    open_engine(home, images=ImageStore(images), check=False)
    assert [p for p in left if p.exists()] == []
    assert live.exists()
