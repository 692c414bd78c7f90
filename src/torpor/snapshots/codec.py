"""Chunk encoding: naming by hash, zstd compression and optional AES-256-GCM encryption.

A chunk is named by the SHA-256 of its plain bytes, or, when the store has a key,
by HMAC-SHA256 under a key derived from it (so chunk names reveal nothing across
tenants and dedup works within one key only). Its stored form is a zstd frame (or the
plain bytes when zstd does not shrink them), then, with a key, ``nonce || AES-GCM
ciphertext+tag`` with the chunk id as associated data.

A *delta* chunk (flag ``FLAG_DELTA``) is a zstd frame compressed with the plain bytes
of another chunk, its *base*, as a raw prefix (``ZstdDict(base, is_raw=True).as_prefix``).
It is used for a memory page that differs from the parent snapshot's page in a few
bytes. Its id is still the hash of its own plain bytes and it is verified against it
after decoding; the base is always a full (non-delta) chunk, so decoding a chunk
needs at most one other chunk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

import pyzstd
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import SnapshotCorrupt, SnapshotError

FLAG_ZSTD = 1
FLAG_AES = 2
FLAG_DELTA = 4
ZSTD_LEVEL = 3
NONCE = 12

KEY_ENV = "TORPOR_SNAPSHOT_KEY"
KEY_FILE_ENV = "TORPOR_SNAPSHOT_KEY_FILE"


def parse_key(text: bytes | str) -> bytes:
    """Accept 32 raw bytes, 64 hex digits or base64 of 32 bytes."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) == 32:
        return raw
    stripped = raw.strip()
    for decode in (binascii.unhexlify, base64.b64decode):
        try:
            key = decode(stripped)
        except (binascii.Error, ValueError):
            continue
        if len(key) == 32:
            return key
    raise SnapshotError("snapshot key must be 32 bytes (raw, 64 hex digits or base64)")


def load_key(key: bytes | str | None = None, key_file: str | os.PathLike[str] | None = None,
             use_env: bool = True) -> bytes | None:
    """The AES-256 key from an explicit value, a key file, or TORPOR_SNAPSHOT_KEY[_FILE]."""
    if key is not None:
        return parse_key(key)
    if key_file is None and use_env:
        if os.environ.get(KEY_ENV):
            return parse_key(os.environ[KEY_ENV])
        key_file = os.environ.get(KEY_FILE_ENV) or None
    if key_file is not None:
        try:
            return parse_key(Path(key_file).read_bytes())
        except OSError as exc:
            raise SnapshotError(f"cannot read snapshot key file {key_file}: {exc}") from exc
    return None


def key_id_of(key: bytes) -> str:
    """A short public identifier of a key (safe to store in manifests)."""
    return hashlib.sha256(b"torpor-snapshot-key-id\0" + key).hexdigest()[:16]


@dataclass(frozen=True)
class Codec:
    """Hashing + compression + (optional) encryption for one key (or none)."""

    key: bytes | None = None
    level: int = ZSTD_LEVEL

    @property
    def key_id(self) -> str | None:
        return key_id_of(self.key) if self.key else None

    @property
    def hash_name(self) -> str:
        return "hmac-sha256" if self.key else "sha256"

    def _id_key(self) -> bytes:
        assert self.key is not None
        return hashlib.sha256(b"torpor-snapshot-chunk-id\0" + self.key).digest()

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        if self.key:
            return hmac.new(self._id_key(), data, hashlib.sha256).digest()
        return hashlib.sha256(data).digest()

    def encode(self, cid: bytes, data: bytes | memoryview) -> tuple[bytes, int]:
        """Stored bytes and flags for a chunk's plain bytes."""
        flags = 0
        packed = pyzstd.compress(data, self.level)
        if len(packed) < len(data):
            body, flags = packed, FLAG_ZSTD
        else:
            body = bytes(data)
        if self.key:
            nonce = os.urandom(NONCE)
            body = nonce + AESGCM(self.key).encrypt(nonce, body, cid)
            flags |= FLAG_AES
        return body, flags

    def encode_delta(self, cid: bytes, data: bytes | memoryview, base: bytes
                     ) -> tuple[bytes, int]:
        """Stored bytes and flags of a chunk compressed against `base` (a full chunk's
        plain bytes) as a zstd prefix; the caller keeps it only if it is smaller."""
        body = pyzstd.compress(data, self.level,
                               zstd_dict=pyzstd.ZstdDict(base, is_raw=True).as_prefix)
        flags = FLAG_ZSTD | FLAG_DELTA
        if self.key:
            nonce = os.urandom(NONCE)
            body = nonce + AESGCM(self.key).encrypt(nonce, body, cid)
            flags |= FLAG_AES
        return body, flags

    def decode(self, cid: bytes, stored: bytes, flags: int, plain_len: int,
               snapshot_id: str | None = None, base: bytes | None = None) -> bytes:
        """Plain bytes of a stored chunk, verified against its id.

        A delta chunk needs `base`, the plain bytes of its (verified) base chunk."""
        hexid = cid.hex()
        if flags & FLAG_DELTA and (base is None or not flags & FLAG_ZSTD):
            raise SnapshotCorrupt("delta chunk without its base", snapshot_id, hexid)
        body = stored
        if flags & FLAG_AES:
            if not self.key:
                raise SnapshotCorrupt("chunk is encrypted but no key is set", snapshot_id, hexid)
            try:
                body = AESGCM(self.key).decrypt(body[:NONCE], body[NONCE:], cid)
            except InvalidTag:
                raise SnapshotCorrupt("decryption failed (corrupt chunk or wrong key)",
                                      snapshot_id, hexid) from None
        if flags & FLAG_ZSTD:
            try:
                if flags & FLAG_DELTA:
                    assert base is not None
                    body = pyzstd.decompress(
                        body, zstd_dict=pyzstd.ZstdDict(base, is_raw=True).as_prefix)
                else:
                    body = pyzstd.decompress(body)
            except pyzstd.ZstdError as exc:
                raise SnapshotCorrupt(f"zstd frame does not decode: {exc}",
                                      snapshot_id, hexid) from None
        if len(body) != plain_len or not hmac.compare_digest(self.chunk_id(body), cid):
            raise SnapshotCorrupt("content does not match its hash", snapshot_id, hexid)
        return body

    def frame_of(self, plain: bytes) -> bytes:
        """A standalone zstd frame (with content size) of plain bytes."""
        return pyzstd.compress(plain, self.level)
