"""Prometheus metrics of one API server: sessions by state, turn latency, snapshot and
restore latency (from the snapshot_taken / session_restored markers its workers write),
stored bytes, HTTP requests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from torpor.db.queries import metrics as q
from torpor.runtime.db import STATES
from torpor.runtime.storage import recorded_usage, statuses

_MS_BUCKETS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
_S_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _StateCollector(Collector):
    """Read at scrape time (cached a few seconds): sessions by state and stored bytes."""

    def __init__(self, runtime: Any, ttl: float = 5.0) -> None:
        self.rt = runtime
        self.ttl = ttl
        self._at = 0.0
        self._cache: tuple[dict[str, int], int] = ({}, 0)

    def _read(self) -> tuple[dict[str, int], int]:
        if time.monotonic() - self._at < self.ttl:
            return self._cache
        by_state = dict.fromkeys(STATES, 0)
        log_bytes = 0
        with self.rt.db.database.read() as tx:
            by_state.update(q.sessions_by_state(tx))
        for info in self.rt.log.sessions():
            log_bytes += int(info.bytes or 0)
        self._cache = (by_state, log_bytes)
        self._at = time.monotonic()
        return self._cache

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        by_state, log_bytes = self._read()
        g = GaugeMetricFamily("torpor_sessions", "Sessions by state", labels=["state"])
        for state, n in sorted(by_state.items()):
            g.add_metric([state], n)
        yield g
        yield GaugeMetricFamily("torpor_log_stored_bytes", "Bytes stored by context logs",
                                value=log_bytes)
        yield from _gc_metrics(self.rt)
        yield from _usage_metrics(self.rt)


def _usage_metrics(rt: Any) -> Iterator[GaugeMetricFamily]:
    """Stored bytes per tenant and of the store, as the last scheduled gc counted them."""
    by = GaugeMetricFamily("torpor_storage_bytes", "Snapshot bytes per tenant: logical (what "
                           "they restore to), stored (compressed chunks they name), exclusive "
                           "(only theirs), shared", labels=["tenant", "kind"])
    snaps = GaugeMetricFamily("torpor_storage_snapshots", "Snapshots in the store per tenant",
                              labels=["tenant"])
    store = GaugeMetricFamily("torpor_store_bytes", "The snapshot store's packs: all, and "
                              "live (named by a snapshot)", labels=["kind"])
    for u in recorded_usage(rt.db, "tenant"):
        for kind in ("logical", "stored", "exclusive", "shared"):
            by.add_metric([u["name"], kind], float(u[kind]))
        snaps.add_metric([u["name"]], float(u["snapshots"]))
    for u in recorded_usage(rt.db, "store"):
        store.add_metric(["packs"], float(u["stored"]))
        store.add_metric(["live"], float(u["exclusive"]))
    yield from (by, snaps, store)


def _gc_metrics(rt: Any) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The scheduled gc of each snapshot store (whichever process ran it: what it left in
    the database, runtime/storage.py)."""
    runs = CounterMetricFamily("torpor_gc_runs", "Scheduled gc runs", labels=["store"])
    freed = CounterMetricFamily("torpor_gc_freed_bytes", "Bytes the scheduled gc freed "
                                "(snapshot packs and log blobs)", labels=["store"])
    last = GaugeMetricFamily("torpor_gc_last_run_timestamp_seconds", "When the last "
                             "scheduled gc ended", labels=["store"])
    took = GaugeMetricFamily("torpor_gc_last_duration_seconds", "How long the last "
                             "scheduled gc took", labels=["store"])
    last_freed = GaugeMetricFamily("torpor_gc_last_freed_bytes", "Bytes the last "
                                   "scheduled gc freed", labels=["store"])
    failed = GaugeMetricFamily("torpor_gc_last_failed", "1 if the last scheduled gc "
                               "failed or was aborted", labels=["store"])
    running = GaugeMetricFamily("torpor_gc_running", "1 while a scheduled gc runs",
                                labels=["store"])
    for st in statuses(rt.db):
        runs.add_metric([st.store], st.runs)
        freed.add_metric([st.store], st.freed_bytes)
        running.add_metric([st.store], 1 if st.holder else 0)
        if st.last:
            last.add_metric([st.store], float(st.last["at"]))
            took.add_metric([st.store], float(st.last["seconds"]))
            last_freed.add_metric([st.store], float(st.last["freed_bytes"]))
            failed.add_metric([st.store], 1 if st.last.get("error") else 0)
    yield from (runs, freed, last, took, last_freed, failed, running)


class Metrics:
    def __init__(self, runtime: Any) -> None:
        self.registry = CollectorRegistry()
        self.turn_seconds = Histogram(
            "torpor_turn_seconds", "Turn latency: first model call to the model's answer",
            buckets=_S_BUCKETS, registry=self.registry)  # fmt: skip
        self.snapshot_ms = Histogram(
            "torpor_snapshot_ms", "Snapshot (checkpoint) time in ms, from snapshot_taken",
            buckets=_MS_BUCKETS, registry=self.registry)  # fmt: skip
        self.restore_ms = Histogram(
            "torpor_restore_ms", "Restore time in ms, from session_restored",
            buckets=_MS_BUCKETS, registry=self.registry)  # fmt: skip
        self.snapshot_bytes = Counter(
            "torpor_snapshot_stored_bytes", "New bytes stored by snapshots taken here",
            registry=self.registry)  # fmt: skip
        self.requests = Counter(
            "torpor_http_requests", "HTTP requests by status class",
            ["status"], registry=self.registry)  # fmt: skip
        self.sse_events = Counter(
            "torpor_sse_events", "Server-sent events delivered", registry=self.registry)
        self.registry.register(_StateCollector(runtime))

    def on_event(self, ev: dict[str, Any]) -> None:
        """A worker's event (each mirrors a marker it just appended)."""
        t = ev.get("type")
        if t == "turn_finished" and ev.get("seconds") is not None:
            self.turn_seconds.observe(float(ev["seconds"]))
        elif t == "snapshot":
            self.snapshot_ms.observe(float(ev.get("ms") or 0))
            self.snapshot_bytes.inc(max(0, int(ev.get("bytes") or 0)))
        elif t == "restored":
            self.restore_ms.observe(float(ev.get("ms") or 0))
