"""`TorporSaver`: a LangGraph checkpointer on torpor's database (SQLite or PostgreSQL).

    from torpor.integrations.langgraph import TorporSaver

    saver = TorporSaver("sqlite:////var/lib/app/graph.db")    # or postgresql://...
    graph = builder.compile(checkpointer=saver)
    graph.invoke({"messages": [("user", "hi")]}, {"configurable": {"thread_id": "t1"}})

It implements `langgraph-checkpoint`'s `BaseCheckpointSaver` (4.x), sync and async in one
object as `InMemorySaver` does: `get_tuple`, `list`, `put`, `put_writes`,
`delete_thread`, and the optional `delete_for_runs`, `copy_thread` and `prune`. It passes
LangGraph's conformance suite (`langgraph-checkpoint-conformance`) on both databases.

How it stores, and why. LangGraph's own savers store a channel's whole value at each new
version: a `messages` list that grows by a few items per step is written again whole
every step, so a thread's bytes grow with the square of its length (LangGraph's
PostgreSQL saver: 185 MB for a 1,000-tool-call thread whose messages are 0.7 MB). This
saver keeps three tables (`torpor.db.schema.LANGGRAPH`, statements in
`torpor.db.queries.langgraph`):
- checkpoints: the checkpoint without its channel values, and its metadata, serialized
  by the saver's `serde` (LangGraph's `JsonPlusSerializer` by default), as LangGraph's
  savers do;
- values: one row per (channel, version) a checkpoint brought in (`new_versions`). A list
  that extends the list of the channel's previous version (what `add_messages` does when
  it appends) is stored as only the appended items, with a reference to that version
  (`values.py`): append-only, as torpor's context log is. Any other value (a list
  edited in the middle, a dict, a string) is stored whole, once per version;
- writes: the pending writes of each checkpoint's tasks, as LangGraph's savers keep them.
Reading a checkpoint rebuilds each list from its rows, fetched in one statement (each row
names the whole row its chain starts at, an indexed column) and decoded in one call, and
a whole copy is stored every `full_every` versions of a channel at the latest, so a read
stays bounded on long threads. A thread's values take about the bytes of its final state
(plus a whole copy per `full_every` versions), not the sum of all its states.

A list is stored as appended items only when this process knows the previous version's
items: it remembers the last list it wrote or read per channel (a bounded LRU,
`remember`), checks before appending that the row it extends is the one it remembers
(a chained digest), and otherwise stores the list whole. A new process reading the
thread first (`get_tuple`, which every graph run does) remembers what it read. Items are
compared with `==` to the previous version's (for the objects LangGraph hands back, an
identity check), so an item changed in place after it was stored, which LangGraph's
reducers never do, would keep its stored form.

The async methods run the sync ones in a worker thread (`asyncio.to_thread`): torpor's
database layer is synchronous. Channel versions are strings (a fixed-width counter and a
random suffix, as `InMemorySaver`'s are), so two branches of one thread never share a
version.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    SerializerProtocol,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from torpor.db import Database, Tx, open_database
from torpor.db.queries import langgraph as q

from .values import MISSING, Known, Remembered, ValueRow, decode, encode

# A list channel is stored whole at least once every this many versions: a read walks at
# most this many rows, and a thread stores about (1 + versions / (2 * FULL_EVERY)) times
# its final list. Measured (benchmarks/results/integrations.md), a read's cost is the
# decoding of the items, whatever the rows they come in: 1,000 keeps the bytes near the
# final list's for threads of a thousand steps, and the walk bounded on longer ones.
FULL_EVERY = 1000
REMEMBER = 64  # channels whose latest list a saver remembers (see the module docstring)
BATCH = 32  # checkpoints `list` rebuilds per read

_Key = tuple[str, str]  # (thread_id, checkpoint_ns)


_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # ASCII order


def _to62(n: int, width: int = 6) -> str:
    out = ""
    while n:
        n, d = divmod(n, 62)
        out = _DIGITS[d] + out
    return out.rjust(width, "0")


def _from62(text: str) -> int:
    n = 0
    for c in text:
        n = n * 62 + _DIGITS.index(c)
    return n


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                             "checkpoint_id": checkpoint_id}}


class TorporSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer on a torpor database (see the module's docstring).

    url: `sqlite:///absolute/path.db` or `postgresql://user@host:port/db` (the database
    is migrated on open: torpor's tables live beside these). serde: LangGraph's
    serializer (default `JsonPlusSerializer`). full_every: the longest chain of appended
    rows before a list is stored whole again. remember: channels whose latest list is
    kept in memory to store the next version as appended items. database: an open
    torpor `Database` to use instead of opening `url` (it is not closed by `close`)."""

    def __init__(self, url: str | None = None, *, serde: SerializerProtocol | None = None,
                 full_every: int = FULL_EVERY, remember: int = REMEMBER,
                 database: Database | None = None) -> None:
        super().__init__(serde=serde)
        if (url is None) == (database is None):
            raise ValueError("TorporSaver needs a database URL (or database=, not both)")
        if full_every < 1:
            raise ValueError(f"full_every must be at least 1, got {full_every}")
        self.db = database if database is not None else open_database(url or "")
        self._owns_db = database is None
        self.full_every = full_every
        self._known = Remembered(remember)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the database connections (unless the database was given)."""
        if self._owns_db:
            self.db.close()

    def __enter__(self) -> TorporSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> TorporSaver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def get_next_version(self, current: str | int | float | None, channel: None) -> str:
        """A counter one above `current`'s, in fixed-width base 62 (so that versions sort
        as text, as LangGraph compares them), and a random suffix, so that two branches
        of a thread never make the same version: `00000b.Xq3_9w` (13 characters, where
        LangGraph's own savers use 50: they are in every checkpoint, many times)."""
        if current is None:
            n = 0
        elif isinstance(current, (int, float)):
            n = int(current)
        else:
            n = _from62(str(current).split(".")[0])
        return f"{_to62(n + 1)}.{secrets.token_urlsafe(4)}"

    # ------------------------------------------------------------------ reads

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint the config names (its `checkpoint_id`), else the thread's latest
        in the namespace; None when there is none."""
        conf = config["configurable"]
        thread_id, ns = str(conf["thread_id"]), conf.get("checkpoint_ns", "")
        with self.db.read() as tx:
            row = q.checkpoint(tx, thread_id, ns, get_checkpoint_id(config))
            if row is None:
                return None
            [found] = self._rebuild(tx, thread_id, ns, [(row, None)])
        for channel, known in found[1].items():  # what the next put may extend
            self._known.set((thread_id, ns, channel), known)
        return found[0]

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None,
             limit: int | None = None) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of the config's thread (and namespace, and
        checkpoint id, when it has them; every thread's without a config), whose metadata
        has every key-value pair of `filter`, older than `before`, at most `limit`."""
        for batch in self._select(config, filter, before, limit):
            yield from self._load(batch)

    def _select(self, config: RunnableConfig | None, filter: dict[str, Any] | None,
                before: RunnableConfig | None,
                limit: int | None) -> list[list[tuple[tuple[Any, ...], Any]]]:
        """The rows `list` returns, with their metadata, in batches of one thread's
        namespace (metadata filters are applied here, on the deserialized metadata, as
        `InMemorySaver` does: exact equality, on both databases)."""
        conf = config["configurable"] if config else {}
        with self.db.read() as tx:
            rows = q.checkpoints(
                tx, thread_id=str(conf["thread_id"]) if "thread_id" in conf else None,
                ns=conf.get("checkpoint_ns"), checkpoint_id=conf.get("checkpoint_id"),
                before=get_checkpoint_id(before) if before else None,
                limit=None if filter else limit)
        picked: list[tuple[tuple[Any, ...], Any]] = []
        for row in rows:
            if limit is not None and len(picked) >= limit:
                break
            metadata = self.serde.loads_typed((row[6], bytes(row[7])))
            if filter and any(metadata.get(k) != v for k, v in filter.items()):
                continue
            picked.append((row, metadata))
        batches: list[list[tuple[tuple[Any, ...], Any]]] = []
        for item in picked:
            if (not batches or len(batches[-1]) >= BATCH
                    or batches[-1][0][0][:2] != item[0][:2]):
                batches.append([])
            batches[-1].append(item)
        return batches

    def _load(self, batch: list[tuple[tuple[Any, ...], Any]]) -> list[CheckpointTuple]:
        thread_id, ns = batch[0][0][0], batch[0][0][1]
        with self.db.read() as tx:
            return [t for t, _ in self._rebuild(tx, thread_id, ns, batch)]

    def _rebuild(self, tx: Tx, thread_id: str, ns: str,
                 batch: Sequence[tuple[tuple[Any, ...], Any]],
                 ) -> list[tuple[CheckpointTuple, dict[str, Known]]]:
        """CheckpointTuples from checkpoint rows of one thread's namespace (with their
        metadata when already read): their values and writes read in one statement each.
        Also returns, per tuple, the lists it holds as `Known`s."""
        docs = [self.serde.loads_typed((row[4], bytes(row[5]))) for row, _ in batch]
        keys = sorted({(ch, str(v)) for doc in docs
                       for ch, v in doc.get("channel_versions", {}).items()})
        rows = {(r.channel, r.version): r
                for r in map(ValueRow.of, q.value_chains(tx, thread_id, ns, keys))}
        writes: dict[str, list[tuple[Any, ...]]] = {}
        for w in q.writes(tx, thread_id, ns, [row[2] for row, _ in batch]):
            writes.setdefault(w[0], []).append(w)
        out = []
        for (row, metadata), doc in zip(batch, docs, strict=True):
            values: dict[str, Any] = {}
            known: dict[str, Known] = {}
            for channel, version in doc.get("channel_versions", {}).items():
                value, head = decode(self.serde, rows, channel, str(version),
                                     join=isinstance(self.serde, JsonPlusSerializer))
                if value is MISSING:
                    continue
                values[channel] = value
                if type(value) is list and head is not None:
                    known[channel] = Known(head.version, list(value), head.depth, head.digest,
                                           head.chain)
            if metadata is None:
                metadata = self.serde.loads_typed((row[6], bytes(row[7])))
            pending = sorted(writes.get(row[2], ()),
                             key=lambda w: writes_sort_key(w[6], w[1], w[2]))
            out.append((CheckpointTuple(
                config=_config(thread_id, ns, row[2]),
                checkpoint={**doc, "id": row[2], "channel_values": values},
                metadata=metadata,
                parent_config=_config(thread_id, ns, row[3]) if row[3] else None,
                pending_writes=[(w[1], w[3], self.serde.loads_typed((w[4], bytes(w[5] or b""))))
                                for w in pending],
            ), known))
        return out

    # ------------------------------------------------------------------ writes

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        """Store a checkpoint: its document and metadata, and a value row per channel of
        `new_versions` (appended items where the module's docstring says); returns the
        config naming it."""
        conf = config["configurable"]
        thread_id, ns = str(conf["thread_id"]), conf.get("checkpoint_ns", "")
        # (its id is the row's key: not stored twice)
        doc = {k: v for k, v in checkpoint.items() if k not in ("channel_values", "id")}
        ctype, cdata = self.serde.dumps_typed(doc)
        meta = get_checkpoint_metadata(config, metadata)
        mtype, mdata = self.serde.dumps_typed(meta)
        values = checkpoint["channel_values"]
        planned = []
        for channel, version in new_versions.items():
            before = self._known.get((thread_id, ns, channel))
            value = values.get(channel, MISSING)
            row, after = encode(self.serde, channel, str(version), value, before,
                                self.full_every)
            planned.append((channel, row, before, after, value))
        stored: list[tuple[str, Known | None]] = []
        with self.db.write() as tx:
            rows = []
            for channel, row, before, after, value in planned:
                if row is not None and row.base is not None and before is not None and (
                        q.value_head(tx, thread_id, ns, channel, row.base)
                        != (before.depth, before.digest)):
                    # the row it would extend is not the one remembered: store it whole
                    row, after = encode(self.serde, channel, row.version, value, None,
                                        self.full_every)
                if row is not None:
                    rows.append((thread_id, ns, channel, row.version, row.base, row.anchor,
                                 row.depth, row.digest, row.type, row.data))
                stored.append((channel, after))
            q.insert_values(tx, rows)
            run_id = meta.get("run_id")
            q.upsert_checkpoint(tx, (thread_id, ns, checkpoint["id"], conf.get("checkpoint_id"),
                                     ctype, cdata, mtype, mdata),
                                None if run_id is None else str(run_id))
        for channel, after in stored:
            self._known.set((thread_id, ns, channel), after)
        return _config(thread_id, ns, checkpoint["id"])

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                   task_id: str, task_path: str = "") -> None:
        """Store a task's writes against a checkpoint. A write is keyed by (task_id,
        index); stored again it is kept, except the special channels (error, interrupt,
        scheduled, resume), which are replaced (as LangGraph's savers do)."""
        conf = config["configurable"]
        key = (str(conf["thread_id"]), conf.get("checkpoint_ns", ""), conf["checkpoint_id"])
        special, normal = [], []
        for idx, (channel, value) in enumerate(writes):
            type_, data = self.serde.dumps_typed(value)
            row = (*key, task_id, WRITES_IDX_MAP.get(channel, idx), channel, type_, data,
                   task_path)
            (special if channel in WRITES_IDX_MAP else normal).append(row)
        with self.db.write() as tx:
            if special:
                q.insert_writes(tx, special, replace=True)
            if normal:
                q.insert_writes(tx, normal, replace=False)

    # ------------------------------------------------------------------ deletes, copies

    def delete_thread(self, thread_id: str) -> None:
        """Every checkpoint, value and write of the thread (all namespaces)."""
        with self.db.write() as tx:
            q.delete_thread(tx, str(thread_id))
        self._known.forget(str(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """The checkpoints whose metadata names one of these runs (`run_id`), their
        writes, and the values no checkpoint left needs."""
        with self.db.write() as tx:
            keys = q.run_checkpoints(tx, [str(r) for r in run_ids])
            q.delete_checkpoints(tx, keys)
            for thread_id, ns in sorted({(t, n) for t, n, _ in keys}):
                self._collect(tx, thread_id, ns)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Every checkpoint, value and write of one thread again under another id (the
        target must have none)."""
        with self.db.write() as tx:
            q.copy_thread(tx, str(source_thread_id), str(target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`keep_latest`: keep only the latest checkpoint of each namespace of these
        threads (with its writes and the values it needs); `delete`: delete the threads.
        Threads that use LangGraph's DeltaChannel are refused for keep_latest (their
        state lives in older checkpoints' writes), as LangGraph's PostgreSQL saver does."""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r} (keep_latest or delete)")
        with self.db.write() as tx:
            for thread_id in map(str, thread_ids):
                if strategy == "delete":
                    q.delete_thread(tx, thread_id)
                    continue
                latest: dict[str, str] = {}
                drop = []
                for row in q.checkpoints(tx, thread_id=thread_id):
                    meta = self.serde.loads_typed((row[6], bytes(row[7])))
                    if "counters_since_delta_snapshot" in meta:
                        raise NotImplementedError(
                            f"keep_latest can't prune thread {thread_id}: it uses a "
                            "DeltaChannel")
                    if row[1] in latest:  # (rows come newest first)
                        drop.append((thread_id, row[1], row[2]))
                    else:
                        latest[row[1]] = row[2]
                q.delete_checkpoints(tx, drop)
                for ns in sorted(latest):
                    self._collect(tx, thread_id, ns)
        for thread_id in thread_ids:
            self._known.forget(str(thread_id))

    def _collect(self, tx: Tx, thread_id: str, ns: str) -> None:
        """Delete the value rows of a thread's namespace that no checkpoint needs: neither
        for its own versions nor as a row one of those extends."""
        needed = set()
        for row in q.checkpoints(tx, thread_id=thread_id, ns=ns):
            doc = self.serde.loads_typed((row[4], bytes(row[5])))
            needed.update((ch, str(v)) for ch, v in doc.get("channel_versions", {}).items())
        base_of = {(c, v): b for c, v, b in q.value_keys(tx, thread_id, ns)}
        live: set[tuple[str, str]] = set()
        todo = [k for k in needed if k in base_of]
        while todo:
            key = todo.pop()
            if key in live:
                continue
            live.add(key)
            if (base := base_of.get(key)) is not None and (key[0], base) in base_of:
                todo.append((key[0], base))
        q.delete_values(tx, thread_id, ns, [k for k in base_of if k not in live])

    # ------------------------------------------------------------------ async twins

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None,
                    limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        for batch in await asyncio.to_thread(self._select, config, filter, before, limit):
            for item in await asyncio.to_thread(self._load, batch):
                yield item

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)


__all__ = ["TorporSaver"]
