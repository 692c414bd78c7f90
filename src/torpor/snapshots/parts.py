"""What the parts of a snapshot store share: the backend, the codec of new chunks, the
chunk cache of a remote store, the store-wide chunk index, the read counters, the
settings, and one pool of worker threads.

`SnapshotStore` (store.py) builds one `StoreParts` and hands it to the catalog, the
chunk fetcher, the writer, the reader and the collector; each reads the fields at the
time of use, so a change made through the store (e.g. `store.cache = None`, as a
benchmark does to play a machine without a cache) is seen by all of them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from .backends import Backend, Counters
from .cache import ChunkCache
from .codec import Codec
from .packs import PACK_TARGET, ChunkIndex

T = TypeVar("T")
R = TypeVar("R")
THREAD_PREFIX = "torpor-snap"


@dataclass
class ReadStats(Counters):
    """What reads cost: chunks fetched from the backend or cache, and decoded."""

    chunks_fetched: int = 0
    chunks_from_cache: int = 0
    chunks_decoded: int = 0
    bytes_fetched: int = 0
    fetch_requests: int = 0
    bytes_from_seeds: int = 0


class TaskPool:
    """A lazily started thread pool for hashing, compressing and fetching chunks."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=THREAD_PREFIX)
            return self._pool

    def submit(self, fn: Callable[[T], R], item: T) -> Future[R]:
        """Executor.submit; once the interpreter is shutting down (concurrent.futures
        refuses new work before atexit handlers, such as the checkpoint storage's final
        flush, have run) the call runs here and now instead."""
        try:
            return self._executor().submit(fn, item)
        except RuntimeError:
            done: Future[R] = Future()
            try:
                done.set_result(fn(item))
            except BaseException as e:  # noqa: BLE001 - re-raised by result()
                done.set_exception(e)
            return done

    def map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """Executor.map into a list (see submit)."""
        return [f.result() for f in [self.submit(fn, item) for item in items]]

    def bounded_map(self, fn: Callable[[T], R], items: list[T]) -> Iterator[R]:
        """Like Executor.map, in order, with at most 2 tasks per worker in flight."""
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(self.submit(fn, item))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    @staticmethod
    def in_worker() -> bool:
        """True in one of the pool's threads (a task there must not wait on the pool)."""
        return threading.current_thread().name.startswith(THREAD_PREFIX)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


@dataclass(eq=False)
class StoreParts:
    """The state and settings of one store, shared by its parts."""

    backend: Backend
    codec: Codec
    cache: ChunkCache | None
    index: ChunkIndex
    tasks: TaskPool
    stats: ReadStats = field(default_factory=ReadStats)
    page_chunks: bool = True     # 4 KiB chunks for memory images (else FastCDC for all)
    pack_target: int = PACK_TARGET
    deltas: bool = True          # changed pages stored as deltas against the parent's
    stale_after: float = 3600.0  # seconds after which a put or gc marker is ignored
