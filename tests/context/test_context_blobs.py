"""Blob stores for large payloads: the local directory and an S3 API server (moto's
standalone server on a loopback port), both behind a real SQLite log."""

from __future__ import annotations

import os

import pytest

from torpor.context import BlobMissing, Entry, open_blobs, open_log
from torpor.context.blobs import FileBlobStore


@pytest.fixture(scope="module")
def s3_server(s3_endpoint: str) -> str:
    return s3_endpoint  # the shared S3 server (tests/conftest.py)


@pytest.fixture
def s3_url(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    bucket = f"ctx-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(
        Bucket=bucket)
    return f"s3://{bucket}/blobs?endpoint={s3_server}&region=us-east-1"


def test_file_store_dedups_and_detects_corruption(tmp_path):
    store = open_blobs(f"file://{tmp_path / 'b'}")
    assert isinstance(store, FileBlobStore)
    k1 = store.put(b"payload")
    assert store.put(b"payload") == k1 and store.get(k1) == b"payload"
    assert len([p for p in (tmp_path / "b").rglob("*") if p.is_file()]) == 1
    (tmp_path / "b" / k1[:2] / k1).write_bytes(b"tampered")
    with pytest.raises(BlobMissing, match="does not match"):
        store.get(k1)
    with pytest.raises(BlobMissing, match="not found"):
        store.get("0" * 64)


def test_s3_blob_store_behind_the_log(s3_url, tmp_path):
    with open_log(f"sqlite:///{tmp_path / 'c.db'}", blobs=s3_url, blob_threshold=100) as log:
        big = {"stdout": "0123456789" * 1000}
        log.append("s", [Entry.tool_call("c", "run", "{}"), Entry.tool_result("c", big)],
                   epoch=0)
        res = log.read("s")[1]
        key = res.raw("content").key
        assert res.content == big
        assert log.verify("s").ok
        assert not list((tmp_path).glob("c.db.blobs/*/*"))  # nothing went to local disk
        log.blobs.delete(key)
        with pytest.raises(BlobMissing, match=key):
            _ = log.read("s")[1].content
        assert log.verify("s").first_bad_seq == 2
