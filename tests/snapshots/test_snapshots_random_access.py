"""Random access: read(offset, length) fetches and decodes only the chunks it covers."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torpor.snapshots import open_store

PAGE = 4096


@pytest.fixture
def image(tmp_path, data):
    rnd = random.Random(5)
    # distinct pages so that every page is its own chunk
    body = b"".join(i.to_bytes(8, "little") + rnd.randbytes(PAGE - 8) for i in range(2048))
    p = tmp_path / "pages.img"
    p.write_bytes(body)
    return p


def test_snapshots_read_touches_only_covering_chunks(store, image):
    info = store.put(image)
    plain = image.read_bytes()
    reader = store.open(info.id)
    assert reader.size == len(plain)
    for offset, length, expect_chunks in [(0, 1, 1), (PAGE - 1, 2, 2), (10 * PAGE, PAGE, 1),
                                          (10 * PAGE + 5, PAGE, 2), (100 * PAGE, 7 * PAGE, 7)]:
        reader.close()  # drop its small memory of recent chunks
        store.stats.reset()
        store.backend.stats.reset()
        assert reader.read(offset, length) == plain[offset:offset + length]
        assert store.stats.chunks_decoded == expect_chunks
        assert store.stats.chunks_fetched == expect_chunks
        # adjacent chunks of one pack are fetched with one ranged read
        assert store.backend.stats.range_gets == 1
        assert store.backend.stats.gets == 0
        assert store.stats.bytes_fetched < (expect_chunks + 1) * (PAGE + 64)


def test_snapshots_read_one_percent(store, image):
    info = store.put(image)
    plain = image.read_bytes()
    reader = store.open(info.id)
    rnd = random.Random(1)
    store.stats.reset()
    picks = rnd.sample(range(2048), 20)  # 1 % of the pages
    for p in picks:
        assert reader.read(p * PAGE + 100, 50) == plain[p * PAGE + 100:p * PAGE + 150]
    assert store.stats.chunks_decoded == 20
    assert store.stats.bytes_fetched < 0.02 * info.stored_bytes


def test_snapshots_read_past_end_and_names(store, checkpoint):
    info = store.put(checkpoint)
    with pytest.raises(ValueError, match="several files"):
        store.open(info.id)
    with pytest.raises(FileNotFoundError):
        store.open(info.id, "nope.img")
    r = store.open(info.id, "checkpoint.img")
    plain = (checkpoint / "checkpoint.img").read_bytes()
    assert r.read(len(plain) - 10, 100) == plain[-10:]
    assert r.read(len(plain) + 5, 10) == b""
    assert r.read(0, 0) == b""


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hyp=st.data())
def test_snapshots_read_matches_file(tmp_path_factory, hyp):
    root = tmp_path_factory.mktemp("ra")
    rnd = random.Random(hyp.draw(st.integers(0, 10**6)))
    blob = rnd.randbytes(hyp.draw(st.integers(1, 600_000)))
    name = hyp.draw(st.sampled_from(["pages.img", "checkpoint.img"]))
    (root / name).write_bytes(blob)
    s = open_store(str(root / "s"), use_key_env=False)
    r = s.open(s.put(root / name).id)
    for _ in range(5):
        off = hyp.draw(st.integers(0, len(blob)))
        ln = hyp.draw(st.integers(0, 200_000))
        assert r.read(off, ln) == blob[off:off + ln]
    s.close()
