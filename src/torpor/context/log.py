"""The context log: append, read, tail, verify, fork, epoch fencing, idempotency keys.

`ContextLog` holds the logic; its tables, their migrations, connections and
transactions belong to the database layer (`torpor.db`: the statements are the named
functions of `torpor.db.queries.log`), the same on SQLite and PostgreSQL. A write takes
the database's write lock (SQLite) or the session row's lock (PostgreSQL); a read takes
none and sees one consistent snapshot.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torpor.db import Database, Tx, schema_version
from torpor.db.queries import log as q

from .blobs import BlobStore
from .entry import (
    BlobMissing,
    BlobRef,
    ContextError,
    Entry,
    InvalidEntry,
    StaleEpoch,
    UnknownSession,
    chain_hash,
    encode_field,
    now_iso,
    sha256_hex,
    validate_batch,
)
from .markers import SizeWarning

DEFAULT_BLOB_THRESHOLD = 64 * 1024
PAGE = 2000



class SessionClosed(ContextError):
    """The session was closed; it takes no more entries."""


@dataclass(slots=True)
class _Prepared:
    """An entry ready to insert: each field encoded once, payload digests computed."""

    e: Entry
    content: str | None = None
    content_blob: str | None = None
    content_digest: str | None = None
    arguments: str | None = None
    arguments_blob: str | None = None
    arguments_digest: str | None = None
    usage: str | None = None
    meta: str = "{}"
    size: int = 0
    blobs: dict[str, bytes | None] = field(default_factory=dict)  # key -> bytes put (None:
    #                                                                referred to as is)


@dataclass(frozen=True)
class SessionInfo:
    """A session's row: fencing epoch, head, size, fork origin, lifecycle timestamps."""

    id: str
    epoch: int
    parent: str | None
    fork_seq: int
    head_seq: int
    head_hash: str
    bytes: int
    warned: bool
    created_at: str
    updated_at: str
    closed_at: str | None

    @property
    def entries(self) -> int:
        return self.head_seq


def _info(r: tuple[Any, ...]) -> SessionInfo:
    return SessionInfo(id=r[0], epoch=int(r[1]), parent=r[2], fork_seq=int(r[3]),
                       head_seq=int(r[4]), head_hash=r[5], bytes=int(r[6]), warned=bool(r[7]),
                       created_at=r[8], updated_at=r[9], closed_at=r[10])


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of `verify`: ok, or the first bad seq and why."""

    ok: bool
    checked: int
    head_seq: int
    first_bad_seq: int | None = None
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


class ContextLog:
    """Append-only, hash-chained, fenced per-session log on a migrated `Database` (SQLite
    or PostgreSQL). Use `torpor.context.open_log`."""

    def __init__(self, db: Database, *, blobs: BlobStore | None,
                 blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
                 warn_bytes: int | None = None) -> None:
        self.db = db
        self.url = db.url
        self.blobs = blobs
        self.blob_threshold = blob_threshold
        self.warn_bytes = warn_bytes
        self._write = db.write  # a write transaction (the database's or the row's lock)
        self._read = db.read  # a read transaction over one snapshot, no lock

    def close(self) -> None:
        self.db.close()

    def schema_version(self) -> int:
        """The database's schema version (`torpor.db.SCHEMA_VERSION` once opened)."""
        return schema_version(self.db)

    def __enter__(self) -> ContextLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions -----------------------------------------------------------------------
    def _session(self, tx: Tx, session: str, lock: bool = False) -> SessionInfo | None:
        row = q.session(tx, session, lock=lock)
        return None if row is None else _info(row)

    def _create(self, tx: Tx, session: str) -> None:
        if not isinstance(session, str) or not session:
            raise InvalidEntry("a session id must be a non-empty string")
        q.create_session(tx, session, now_iso())

    def session(self, session: str) -> SessionInfo:
        """The session's row (epoch, head, size, ...); UnknownSession if absent."""
        with self._read() as tx:
            info = self._session(tx, session)
        if info is None:
            raise UnknownSession(session)
        return info

    def size(self, session: str) -> tuple[int, int]:
        """(entries, bytes) of the session, the shared prefix of a fork included."""
        info = self.session(session)
        return info.head_seq, info.bytes

    def sessions(self, *, prefix: str | None = None, closed: bool | None = None,
                 closed_before: str | None = None, limit: int | None = None) -> list[SessionInfo]:
        """List sessions by id. `closed`: True only closed, False only open, None all.
        `closed_before`: ISO date/time; only sessions closed before it."""
        with self._read() as tx:
            rows = q.sessions(tx, prefix=prefix, closed=closed, closed_before=closed_before,
                              limit=limit)
        return [_info(r) for r in rows]

    def acquire(self, session: str) -> int:
        """Become the session's writer: bump and return its epoch (creates the session).
        Appends carrying any older epoch are refused from now on."""
        with self._write() as tx:
            self._create(tx, session)
            info = self._session(tx, session, lock=True)
            assert info is not None
            epoch = info.epoch + 1
            q.set_epoch(tx, session, epoch, now_iso())
        return epoch

    def close_session(self, session: str) -> None:
        """Mark the session closed (no more appends; `prune` may export and delete it)."""
        with self._write() as tx:
            if self._session(tx, session, lock=True) is None:
                raise UnknownSession(session)
            q.set_closed(tx, session, now_iso())

    def delete_session(self, session: str) -> None:
        """Delete a session and its entries. Refused while a fork still shares its prefix."""
        with self._write() as tx:
            if self._session(tx, session, lock=True) is None:
                raise UnknownSession(session)
            kids = q.forks_of(tx, session)
            if kids:
                raise ContextError(f"session {session!r} is the parent of forks "
                                   f"{', '.join(kids)}; delete those first")
            q.delete_session(tx, session)

    # -- segments: where a (possibly forked) session's seqs live --------------------------
    def _segments(self, tx: Tx, info: SessionInfo) -> list[tuple[str, int, int]]:
        """[(owner session, lo, hi)] in seq order: the owner holds rows lo < seq <= hi."""
        segs: list[tuple[str, int, int]] = []
        hi = info.head_seq
        cur: SessionInfo | None = info
        while cur is not None:
            lo = cur.fork_seq if cur.parent else 0
            if hi > lo:
                segs.append((cur.id, lo, hi))
            hi = min(hi, lo)
            if not cur.parent:
                break
            cur = self._session(tx, cur.parent)
            if cur is None:
                raise ContextError(f"fork parent of {info.id!r} is missing")
        segs.reverse()
        return segs

    def _rows(self, tx: Tx, segs: list[tuple[str, int, int]], after: int,
              limit: int | None) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for owner, lo, hi in segs:
            if hi <= after:
                continue
            want = None if limit is None else limit - len(out)
            if want is not None and want <= 0:
                break
            out.extend(q.entries(tx, owner, max(lo, after), hi, want))
        return out

    def _entry(self, session: str, r: tuple[Any, ...]) -> Entry:
        (seq, kind, role, content, content_blob, call_id, name, arguments, arguments_blob,
         usage, meta, epoch, created_at, prev_hash, hash_, _size) = r
        return Entry._stored({
            "kind": kind, "role": role, "tool_call_id": call_id, "tool_name": name,
            "_content": self._ref(content_blob) if content_blob else (
                None if content is None else json.loads(content)),
            "_arguments": self._ref(arguments_blob) if arguments_blob else arguments,
            "usage": None if usage is None else json.loads(usage),
            "meta": {} if meta == "{}" else json.loads(meta), "session": session, "seq": seq,
            "epoch": epoch, "created_at": created_at, "prev_hash": prev_hash, "hash": hash_})

    def _ref(self, stored: str) -> BlobRef:
        key, _, size = stored.partition(":")
        return BlobRef(key, int(size or 0), self.blobs)

    # -- reading ------------------------------------------------------------------------
    def blob_keys(self) -> set[str]:
        """The keys of every blob an entry (of any session) refers to."""
        with self.db.read() as tx:
            return {ref.partition(":")[0] for ref in q.blob_refs(tx)}

    def read(self, session: str, after: int = 0, limit: int | None = None) -> list[Entry]:
        """Entries with seq > after, in order, at most `limit`. Large payloads load lazily."""
        with self._read() as tx:
            info = self._session(tx, session)
            if info is None:
                raise UnknownSession(session)
            rows = self._rows(tx, self._segments(tx, info), after, limit)
        return [self._entry(session, r) for r in rows]

    def iter(self, session: str, after: int = 0, page: int = PAGE) -> Iterator[Entry]:
        """All entries after `after`, read a page at a time."""
        while True:
            batch = self.read(session, after=after, limit=page)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1].seq

    def tail(self, session: str, n: int) -> list[Entry]:
        """The last n entries, oldest first (what a model call needs on resume)."""
        with self._read() as tx:
            info = self._session(tx, session)
            if info is None:
                raise UnknownSession(session)
            rows = self._rows(tx, self._segments(tx, info), max(0, info.head_seq - n), None)
        return [self._entry(session, r) for r in rows]

    def head_seq(self, session: str) -> int:
        """Seq of the session's last entry (0 when empty)."""
        return self.session(session).head_seq

    # -- appending ----------------------------------------------------------------------
    def _prepare(self, e: Entry, index: int) -> _Prepared:
        """Copy the entry, encode each field once, move large payloads to the blob store."""
        e = copy.copy(e)
        e.meta = dict(e.meta)
        out = _Prepared(e)
        for name in ("content", "arguments"):
            value = e.raw(name)
            if value is None:
                continue
            if isinstance(value, BlobRef):
                out.size += value.size
                digest: str | None = value.key
                stored: str | None = f"{value.key}:{value.size}"
                out.blobs[value.key] = None
            else:
                text = encode_field(value, name, index)
                data = text.encode("utf-8")
                digest = sha256_hex(data)
                if len(data) > self.blob_threshold:
                    if self.blobs is None:
                        raise InvalidEntry(f"{name} is {len(data)} bytes, over the blob "
                                           "threshold, and this log has no blob store", index=index)
                    key = self.blobs.put(data)
                    out.blobs[key] = data
                    setattr(e, name, BlobRef(key, len(data), self.blobs))
                    stored = f"{key}:{len(data)}"
                else:
                    stored = None
                    if name == "content":
                        out.content = text
                    else:
                        out.arguments = value
                out.size += len(data)
            if name == "content":
                out.content_digest, out.content_blob = digest, stored
            else:
                out.arguments_digest, out.arguments_blob = digest, stored
        out.usage = None if e.usage is None else encode_field(e.usage, "usage", index)
        out.meta = encode_field(e.meta, "meta", index)
        out.size += len(out.usage or "") + len(out.meta)
        return out

    def _row(self, session: str, p: _Prepared, seq: int, epoch: int, ts: str,
             prev: str) -> tuple[Any, ...]:
        e = p.e
        e.seq, e.epoch, e.created_at, e.prev_hash, e.session = seq, epoch, ts, prev, session
        e.hash = chain_hash(e, prev, p.content_digest, p.arguments_digest)
        return (session, seq, e.kind, e.role, p.content, p.content_blob, e.tool_call_id,
                e.tool_name, p.arguments, p.arguments_blob, p.usage, p.meta, epoch, ts, prev,
                e.hash, p.size)

    def _has_call(self, tx: Tx, segs: list[tuple[str, int, int]], call_id: str) -> bool:
        return any(q.has_tool_call(tx, owner, hi, call_id) for owner, _lo, hi in segs)

    def append(self, session: str, entries: Entry | Sequence[Entry], *, epoch: int,
               idempotency_key: str | None = None) -> list[int]:
        """Append a batch atomically; return the seqs it got.

        epoch: the writer's epoch from `acquire` (0 for a session nobody acquired). An older
        epoch raises StaleEpoch and writes nothing. idempotency_key: appending again with a
        key already used in this session returns the original seqs and writes nothing.
        """
        batch = [entries] if isinstance(entries, Entry) else list(entries)
        needed = validate_batch(batch)
        prepared = [self._prepare(e, i) for i, e in enumerate(batch)]
        with self._write() as tx:
            info = self._session(tx, session, lock=True)
            if info is None:
                if epoch != 0:
                    raise StaleEpoch(session, epoch, 0)
                self._create(tx, session)
                info = self._session(tx, session, lock=True)
                assert info is not None
            if idempotency_key is not None:
                hit = q.keyed_seqs(tx, session, idempotency_key)
                if hit:
                    return list(range(hit[0], hit[1] + 1))
            if epoch != info.epoch:
                raise StaleEpoch(session, epoch, info.epoch)
            if info.closed_at:
                raise SessionClosed(f"session {session!r} was closed at {info.closed_at}")
            if needed:
                segs = self._segments(tx, info)
                for call_id in needed:
                    if not self._has_call(tx, segs, call_id):
                        idx = next(j for j, e in enumerate(batch)
                                   if e.kind == "tool_result" and e.tool_call_id == call_id)
                        raise InvalidEntry(f"tool_result for {call_id!r} has no earlier "
                                           f"tool_call with that id in session {session!r}",
                                           index=idx)
            ts = now_iso()
            seq, prev = info.head_seq, info.head_hash
            rows, total = [], info.bytes
            seqs: list[int] = []
            warned = info.warned
            for p in prepared:
                seq += 1
                rows.append(self._row(session, p, seq, epoch, ts, prev))
                prev = p.e.hash
                total += p.size
                seqs.append(seq)
            if self.warn_bytes is not None and total >= self.warn_bytes and not warned:
                m = self._prepare(SizeWarning(bytes=total, limit=self.warn_bytes,
                                              entries=seq + 1).entry(), 0)
                seq += 1
                rows.append(self._row(session, m, seq, epoch, ts, prev))
                prev = m.e.hash
                total += m.size
                warned = True
            if self.blobs is not None and any(p.blobs for p in prepared):
                self._blobs_there(tx, prepared)
            q.insert_entries(tx, rows)
            q.set_head(tx, session, seq=seq, hash_=prev, size=total, warned=warned, ts=ts)
            if idempotency_key is not None:
                q.insert_key(tx, session, idempotency_key, seqs[0], seqs[-1])
        return seqs

    def _blobs_there(self, tx: Tx, prepared: list[_Prepared]) -> None:
        """Every blob the batch refers to is in the blob store, checked under the lock
        the blob gc deletes under (`delete_unreferenced_blobs`), in the transaction that
        commits the rows naming them: a blob the gc deleted after this writer put it
        (again) is put back now. Either the gc's look at the references comes after this
        commit, or this look comes after the gc's delete: no committed row names a
        deleted blob."""
        assert self.blobs is not None
        q.lock_blobs(tx, exclusive=False)
        for p in prepared:
            for key, data in p.blobs.items():
                if self.blobs.has(key):
                    continue
                if data is None:
                    raise InvalidEntry(f"blob {key} is not in the blob store "
                                       f"({self.blobs.url}): it cannot be referred to")
                self.blobs.put(data)

    def delete_unreferenced_blobs(self, keys: Sequence[str], put_before: float) -> list[str]:
        """Delete those of these blobs that no entry refers to and that were not put
        (again) after `put_before`, under the blob lock held exclusively (see
        `_blobs_there`); returns the keys deleted. The blob gc's last step
        (context/blobgc.py)."""
        if self.blobs is None or not keys:
            return []
        done = []
        with self._write() as tx:
            q.lock_blobs(tx, exclusive=True)
            wanted = {ref.partition(":")[0] for ref in q.blob_refs(tx)}
            for key in keys:
                if key in wanted:
                    continue
                put_at = self.blobs.mtime(key)
                if put_at is None or put_at > put_before:
                    continue  # gone already (another collector), or put again lately
                self.blobs.delete(key)
                done.append(key)
        return done

    # -- forks --------------------------------------------------------------------------
    def fork(self, session: str, at_seq: int, new_session: str | None = None) -> str:
        """A new session whose entries 1..at_seq are the source's (shared, not copied)."""
        new_id = new_session or f"{session}.fork-{uuid.uuid4().hex[:12]}"
        with self._write() as tx:
            info = self._session(tx, session)
            if info is None:
                raise UnknownSession(session)
            if not 1 <= at_seq <= info.head_seq:
                raise ValueError(f"fork point {at_seq} outside 1..{info.head_seq} of {session!r}")
            if self._session(tx, new_id) is not None:
                raise ContextError(f"session {new_id!r} already exists")
            segs = [s for s in self._segments(tx, info) if s[1] < at_seq]
            segs = [(o, lo, min(hi, at_seq)) for o, lo, hi in segs]
            owner = segs[-1][0]
            head = q.entry_hash(tx, owner, at_seq)
            assert head is not None
            size = sum(q.entries_size(tx, o, lo, hi) for o, lo, hi in segs)
            # the fork points at the session that owns entry at_seq, so chains stay short
            q.insert_fork(tx, new_id, parent=owner, at_seq=at_seq, head_hash=head, size=size,
                          ts=now_iso())
        return new_id

    # -- verification -------------------------------------------------------------------
    def verify(self, session: str, *, blobs: bool = True) -> VerifyResult:
        """Recompute the hash chain (and check blobs); name the first bad seq."""
        info = self.session(session)
        expect, prev, checked = 1, "", 0
        for e in self.iter(session):
            bad = None
            if e.seq != expect:
                bad = (expect, f"entry {expect} is missing (next stored is {e.seq})")
            elif e.prev_hash != prev:
                bad = (e.seq, "previous-hash link does not match the entry before it")
            elif chain_hash(e, prev) != e.hash:
                bad = (e.seq, "content does not match its hash (entry was altered)")
            elif blobs:
                for name in ("content", "arguments"):
                    ref = e.raw(name)
                    if isinstance(ref, BlobRef):
                        try:
                            ref.load()
                        except BlobMissing as exc:
                            bad = (e.seq, f"{name}: {exc}")
                            break
            if bad:
                return VerifyResult(False, checked, info.head_seq, bad[0], bad[1])
            checked += 1
            expect, prev = e.seq + 1, e.hash
        if checked != info.head_seq:
            return VerifyResult(False, checked, info.head_seq, expect,
                                f"entry {expect} is missing (head is {info.head_seq})")
        if info.head_hash != prev:
            return VerifyResult(False, checked, info.head_seq, info.head_seq,
                                "session head hash does not match the last entry")
        return VerifyResult(True, checked, info.head_seq)
