"""The drain: one `DrainSignal` written by its sources, one `DrainController` acting on it.

Sources (the IMDS watcher, SIGTERM, POST /drain, the simulate endpoint) only write the signal; the
controller is the only thing that stops work. The HTTP layer reads the signal to answer /ready and to
refuse new jobs, so both flip the moment a source writes it, before any job has finished.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Protocol

log = logging.getLogger("spot_drain_worker.drain")

SERVING = "serving"
ADMISSION_STOPPED = "admission_stopped"
DRAINING = "draining"
DRAINED = "drained"
DRAIN_STATES = (SERVING, ADMISSION_STOPPED, DRAINING, DRAINED)


@dataclasses.dataclass(frozen=True)
class DrainSnapshot:
    state: str
    reason: str | None
    deadline: float | None
    requested_at: float | None
    outcome: str | None

    @property
    def admitting(self) -> bool:
        return self.state == SERVING


class DrainSignal:
    """Shared state of the drain, safe to write from any thread (and from a signal handler, whose
    code runs in the main thread that never holds this lock otherwise)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._lock = threading.Lock()
        self.requested = threading.Event()
        self._state = SERVING
        self._reason: str | None = None
        self._deadline: float | None = None
        self._requested_at: float | None = None
        self._outcome: str | None = None

    def stop_admission(self, reason: str) -> bool:
        """Refuse new jobs but keep working (a rebalance recommendation). True if this changed it."""
        with self._lock:
            if self._state != SERVING:
                return False
            self._state, self._reason = ADMISSION_STOPPED, reason
            return True

    def request_drain(self, reason: str, deadline: float) -> bool:
        """Stop admission and drain by `deadline` (epoch seconds). A second request can only bring
        the deadline forward: an earlier notice must not be overruled by a later, laxer one.
        True if this request started the drain or moved its deadline."""
        with self._lock:
            if self._state == DRAINED:
                return False
            if self._state == DRAINING:
                if deadline >= self._deadline:
                    return False
                self._deadline = deadline
                log.warning("drain deadline moved forward by %s", reason)
                return True
            self._state, self._reason, self._deadline = DRAINING, reason, deadline
            self._requested_at = self.clock()
        self.requested.set()
        return True

    def mark_drained(self, outcome: str) -> None:
        with self._lock:
            self._state, self._outcome = DRAINED, outcome

    def snapshot(self) -> DrainSnapshot:
        with self._lock:
            return DrainSnapshot(self._state, self._reason, self._deadline, self._requested_at,
                                 self._outcome)

    @property
    def deadline(self) -> float | None:
        with self._lock:
            return self._deadline


class Drainable(Protocol):
    """What the controller needs from the job runner."""

    def stop_claiming(self) -> None: ...

    def wait_idle(self, timeout: float) -> bool: ...

    def release_in_flight(self, reason: str) -> str | None: ...


class DrainController:
    """Waits for the signal, then: no new claims, let the job in flight finish, and at the deadline
    give its lease back so it runs again after the restart. Calls `on_drained` as soon as the
    runner is idle: an idle worker does not sit out the grace period."""

    # How often the wait re-reads the deadline, which a later, earlier notice may move forward.
    DEADLINE_RECHECK_SECONDS = 0.1

    def __init__(self, signal: DrainSignal, runner: Drainable, on_drained: Callable[[DrainSnapshot], None],
                 clock: Callable[[], float] = time.time):
        self.signal = signal
        self.runner = runner
        self.on_drained = on_drained
        self.clock = clock
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drain-controller", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop waiting without draining (used when the process stops for another reason)."""
        self._closed = True
        self.signal.requested.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        self.signal.requested.wait()
        if self._closed:
            return
        snapshot = self.drain()
        self.on_drained(snapshot)

    def drain(self) -> DrainSnapshot:
        snapshot = self.signal.snapshot()
        log.warning("draining (%s); deadline in %.1fs", snapshot.reason, snapshot.deadline - self.clock())
        self.runner.stop_claiming()
        while True:
            remaining = self.signal.deadline - self.clock()
            if self.runner.wait_idle(max(0.0, min(remaining, self.DEADLINE_RECHECK_SECONDS))):
                outcome = "idle"
                break
            if self.signal.deadline - self.clock() <= 0:
                released = self.runner.release_in_flight(
                    f"released at the drain deadline ({snapshot.reason}); runs again after restart")
                outcome = f"deadline: released job {released}" if released else "deadline"
                break
        self.signal.mark_drained(outcome)
        log.warning("drained: %s", outcome)
        return self.signal.snapshot()
