"""Export of a stored file in the standard Zstandard seekable format."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest
from pyzstd import SeekableZstdFile

from torpor.snapshots import open_store


def test_snapshots_export_seekable_readable_by_pyzstd(store, checkpoint, tmp_path):
    info = store.put(checkpoint)
    for name in ("pages.img", "checkpoint.img"):
        plain = (checkpoint / name).read_bytes()
        out = store.export(info.id, name, tmp_path / f"{name}.zst")
        assert out.stat().st_size < len(plain)
        with SeekableZstdFile(out, "r") as f:
            assert f.read() == plain
            rnd = random.Random(0)
            for _ in range(50):
                off = rnd.randrange(len(plain))
                f.seek(off)
                assert f.read(777) == plain[off:off + 777]


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd command not installed")
def test_snapshots_export_decodes_with_zstd_cli(store, checkpoint, tmp_path):
    info = store.put(checkpoint)
    out = store.export(info.id, "pages.img", tmp_path / "p.zst")
    got = subprocess.run(["zstd", "-dc", str(out)], check=True, capture_output=True).stdout
    assert got == (checkpoint / "pages.img").read_bytes()


def test_snapshots_export_encrypted(tmp_path, checkpoint):
    store = open_store(str(tmp_path / "s"), key=os.urandom(32))
    info = store.put(checkpoint)
    out = store.export(info.id, "checkpoint.img", tmp_path / "c.zst")
    with SeekableZstdFile(out, "r") as f:
        assert f.read() == (checkpoint / "checkpoint.img").read_bytes()
