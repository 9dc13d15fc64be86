"""Prometheus metrics, one registry per worker (not the global one, so several apps can live in one
test process). Queue and drain gauges are read at scrape time from their owners, never copied."""

from __future__ import annotations

import math
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, math.inf)


class _StateCollector:
    def __init__(self, counts: Callable[[], dict], drain_snapshot: Callable[[], object],
                 drain_states: tuple, clock: Callable[[], float],
                 depth: Callable[[], dict | None] | None = None):
        self.counts = counts
        self.depth = depth
        self.drain_snapshot = drain_snapshot
        self.drain_states = drain_states
        self.clock = clock

    def collect(self):
        jobs = GaugeMetricFamily("spot_drain_jobs", "Jobs in the queue by state", labels=["state"])
        for state, count in self.counts().items():
            jobs.add_metric([state], count)
        yield jobs
        depth = self.depth() if self.depth is not None else None
        if depth is not None:
            # The backend's cached view of the shared line (SQS: approximate, refreshed every few seconds).
            messages = GaugeMetricFamily("spot_drain_queue_messages",
                                         "Approximate messages in the shared queue (visible, in_flight, delayed)",
                                         labels=["kind"])
            for kind, count in depth.items():
                messages.add_metric([kind], count)
            yield messages
        snapshot = self.drain_snapshot()
        drain = GaugeMetricFamily("spot_drain_state", "1 for the worker's current drain state",
                                  labels=["state"])
        for state in self.drain_states:
            drain.add_metric([state], 1 if snapshot.state == state else 0)
        yield drain
        yield GaugeMetricFamily("spot_drain_admitting", "1 while new jobs are accepted",
                                value=1 if snapshot.admitting else 0)
        remaining = -1.0 if snapshot.deadline is None else max(0.0, snapshot.deadline - self.clock())
        yield GaugeMetricFamily("spot_drain_seconds_until_termination",
                                "Seconds until the drain deadline (-1 when no drain is scheduled)",
                                value=remaining)


class WorkerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs_accepted = Counter("spot_drain_jobs_accepted", "Jobs accepted by POST /jobs",
                                     registry=self.registry)
        self.jobs_rejected = Counter("spot_drain_jobs_rejected", "POST /jobs refused",
                                     ["reason"], registry=self.registry)
        self.job_attempts = Counter("spot_drain_job_attempts", "Job attempts started",
                                    registry=self.registry)
        self.job_duration = Histogram("spot_drain_job_duration_seconds",
                                      "Duration of job attempts by outcome", ["outcome"],
                                      buckets=DURATION_BUCKETS, registry=self.registry)
        self.lease_expiries = Counter("spot_drain_lease_expiries",
                                      "Leases that ran out and were reclaimed", registry=self.registry)
        self.imds_errors = Counter("spot_drain_imds_errors", "Failed IMDS requests",
                                   registry=self.registry)
        self.interruption_signals = Counter("spot_drain_interruption_signals",
                                            "Interruption notices, rebalance recommendations, SIGTERMs seen",
                                            ["kind"], registry=self.registry)
        # Per worker, SQS backend only (they stay 0 with SQLite).
        self.messages_received = Counter("spot_drain_queue_received", "Messages received from the shared queue",
                                         registry=self.registry)
        self.handed_back = Counter("spot_drain_queue_handed_back",
                                   "Jobs handed back to the shared queue without counting the attempt",
                                   registry=self.registry)
        self.heartbeats = Counter("spot_drain_queue_heartbeats", "Lease extensions sent to the shared queue",
                                  registry=self.registry)

    def watch_state(self, counts: Callable[[], dict], drain_snapshot: Callable[[], object],
                    drain_states: tuple, clock: Callable[[], float] = time.time,
                    depth: Callable[[], dict | None] | None = None) -> None:
        self.registry.register(_StateCollector(counts, drain_snapshot, drain_states, clock, depth))

    def render_text(self) -> bytes:
        return generate_latest(self.registry)

    def as_json(self) -> dict:
        """Every sample of the text format, as {name: value} or {name: {"k=v,...": value}}."""
        result: dict = {}
        for family in self.registry.collect():
            for sample in family.samples:
                value = sample.value
                if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
                    value = str(value)
                if sample.labels:
                    key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    result.setdefault(sample.name, {})[key] = value
                else:
                    result[sample.name] = value
        return result
