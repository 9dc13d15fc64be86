"""Wires one worker together: queue, metrics, drain signal, runner, controller, watcher. Building it
starts nothing; `start()` starts the threads, from the server's worker process only."""

from __future__ import annotations

import logging
import time
from typing import Callable

from .config import Config, load_job_handler
from .drain import DRAIN_STATES, DrainController, DrainSignal, DrainSnapshot
from .metrics import WorkerMetrics
from .factory import make_queue
from .runner import JobRunner
from .watcher import ImdsClient, InterruptionWatcher

log = logging.getLogger("spot_drain_worker")


class WorkerRuntime:
    def __init__(self, config: Config, *, on_drained: Callable[[DrainSnapshot], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.metrics = WorkerMetrics()
        self.queue = make_queue(config, clock=clock, metrics=self.metrics)
        self.signal = DrainSignal(clock=clock)
        self.runner = JobRunner(self.queue, load_job_handler(config.job_handler),
                                lease_seconds=config.lease_seconds, metrics=self.metrics,
                                settings=config)
        self.watcher = InterruptionWatcher(
            ImdsClient(config.imds_url, config.imds_token_ttl_seconds), self.signal,
            poll_interval_seconds=config.poll_interval_seconds,
            grace_period_seconds=config.grace_period_seconds,
            notice_margin_seconds=config.notice_margin_seconds, metrics=self.metrics, clock=clock)
        self.on_drained = on_drained
        self.controller = DrainController(self.signal, self.runner, self._drained, clock=clock)
        self.metrics.watch_state(self.queue.counts, self.signal.snapshot, DRAIN_STATES, clock,
                                 depth=self.queue.depth)
        self.started = False

    def start(self) -> None:
        self.runner.start()
        self.controller.start()
        if self.config.spot_watcher_enabled:
            self.watcher.start()
        self.started = True
        log.info("worker started: watcher %s, production mode %s",
                 "on" if self.config.spot_watcher_enabled else "off", self.config.production)

    def drain(self, reason: str, within_seconds: float | None = None) -> bool:
        """Drain like an interruption notice: by now + grace (or sooner)."""
        grace = self.config.grace_period_seconds if within_seconds is None else within_seconds
        return self.signal.request_drain(reason, self.clock() + grace)

    def on_sigterm(self) -> None:
        self.metrics.interruption_signals.labels("sigterm").inc()
        self.drain("SIGTERM")

    def _drained(self, snapshot: DrainSnapshot) -> None:
        # No join: a poll in flight must not delay the exit by up to the IMDS timeout.
        self.watcher.stop(wait=False)
        if self.on_drained is not None:
            self.on_drained(snapshot)

    def stop(self) -> None:
        """Stop without draining (tests, and the process going away for another reason)."""
        self.watcher.stop()
        self.controller.close()
        self.runner.stop_claiming()
