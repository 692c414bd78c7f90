"""Lazy memory loading through userfaultfd: touch 1 % of a 256 MiB image."""

from __future__ import annotations

import random

import pytest

from torpor.snapshots import open_store

lazy = pytest.importorskip("torpor.snapshots.lazy")

PAGE = 4096


def _uffd_available() -> bool:
    try:
        import os
        os.close(lazy.open_userfaultfd())
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _uffd_available(), reason="userfaultfd not permitted")


@pytest.fixture(scope="module")
def memory_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("lazy")
    size = 256 << 20
    rnd = random.Random(42)
    text = (b"PyObject *frame = PyEval_GetFrame(); /* interpreter state */\n" * 40)[:2000]
    noise = rnd.randbytes(PAGE)
    blank = bytes(2000)
    tail = bytes(40)
    pages = []
    for p in range(size // PAGE):
        pages.append(p.to_bytes(8, "little")  # every page distinct
                     + (text if p % 4 else blank) + tail
                     + (noise[:2048] if p % 7 == 0 else bytes(2048)))
    image = b"".join(pages)
    assert len(image) == size
    path = root / "memory.pages"
    path.write_bytes(image)
    store = open_store(str(root / "store"), use_key_env=False)
    info = store.put(path)
    yield store, info, image
    store.close()


def test_snapshots_lazy_touch_one_percent(memory_image):
    store, info, image = memory_image
    reader = store.open(info.id)
    total_chunks = info.chunk_count
    rnd = random.Random(7)
    pages = rnd.sample(range(len(image) // PAGE), len(image) // PAGE // 100)
    store.stats.reset()
    with lazy.LazyMapping(reader) as mem:
        for p in pages:
            off = p * PAGE + rnd.randrange(PAGE - 100)
            assert mem.read(off, 100) == bytes(image[off:off + 100])
        fetched = store.stats.chunks_decoded
        assert mem.server.faults == len(pages)
        assert mem.server.error is None
    # about 1 % of the chunks were fetched and decompressed, not the image
    assert fetched == len(pages)
    assert 0.009 < fetched / total_chunks < 0.011
    assert store.stats.bytes_fetched < 0.02 * info.stored_bytes


def test_snapshots_lazy_contiguous_and_tail(memory_image, tmp_path):
    store, info, image = memory_image
    with lazy.LazyMapping(store.open(info.id)) as mem:
        a, b = 3 << 20, 5 << 20
        assert mem.read(a, b - a) == bytes(image[a:b])
        assert mem.read(len(image) - 10, 10) == bytes(image[-10:])
        # pages already present are not fetched again
        before = store.stats.chunks_decoded
        assert mem.read(a + 100, 1000) == bytes(image[a + 100:a + 1100])
        assert store.stats.chunks_decoded == before


def test_snapshots_lazy_cdc_file_unaligned_chunks(tmp_path):
    """A content-defined chunked file: faults fill whole page-rounded chunks."""
    rnd = random.Random(3)
    blob = b"".join(rnd.randbytes(rnd.randrange(100, 5000)) * 3 for _ in range(200))
    src = tmp_path / "state.bin"
    src.write_bytes(blob)
    store = open_store(str(tmp_path / "s"), use_key_env=False)
    reader = store.open(store.put(src).id)
    with lazy.LazyMapping(reader) as mem:
        for _ in range(50):
            off = rnd.randrange(len(blob))
            assert mem.read(off, 5000) == blob[off:off + 5000]
        assert mem.read(0, len(blob)) == blob
        assert mem.server.error is None
