"""The production entry point: gunicorn with one gthread worker process.

One worker process because the queue runner, the watcher and the drain state live in that process;
the gthread worker serves HTTP from a thread pool beside them. Gunicorn's own SIGTERM handling would
stop accepting connections at once, so the worker process replaces it: SIGTERM starts the same drain
as an interruption notice (/ready turns 503, /health and the control endpoints keep answering) and
the worker process stops only once the drain is over. The master waits `graceful_timeout`
(GRACE_PERIOD_SECONDS + 10) before it would kill the worker, so the drain, not gunicorn, decides.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading

from gunicorn.app.base import BaseApplication
from prometheus_client import disable_created_metrics

from .app import create_app
from .config import Config, ConfigError, load_config
from .drain import DrainSnapshot
from .factory import check_queue
from .runtime import WorkerRuntime

log = logging.getLogger("spot_drain_worker")

# After a drain that did not start with SIGTERM (a notice, POST /drain) the worker asks the master
# to stop and waits for the master's SIGTERM; this is how long before it stops on its own.
MASTER_ACK_TIMEOUT_SECONDS = 5.0


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class WorkerServer(BaseApplication):
    def __init__(self, config: Config):
        self.worker_config = config
        self.runtime: WorkerRuntime | None = None
        self._sigterm_received = False
        super().__init__()

    def load_config(self) -> None:
        config = self.worker_config
        settings = {
            "bind": [_bind_address(config.host, config.port)],
            "workers": 1,
            "worker_class": "gthread",
            "threads": config.server_threads,
            "graceful_timeout": math.ceil(config.graceful_timeout_seconds),
            "timeout": 30,
            "keepalive": 5,
            "preload_app": False,
            "proc_name": "spot-drain-worker",
            "errorlog": "-",
            "loglevel": "info",
            "post_worker_init": self._post_worker_init,
            "worker_int": self._worker_int,
            # gunicorn's runtime control socket would add a second way to stop the worker.
            "control_socket_disable": True,
        }
        for name, value in settings.items():
            if name in self.cfg.settings:
                self.cfg.set(name, value)

    def load(self):
        # Runs in the worker process (no preload): the SQLite connections and threads belong there.
        self.runtime = WorkerRuntime(self.worker_config)
        return create_app(self.worker_config, self.runtime)

    # ---- gunicorn hooks, in the worker process ----

    def _post_worker_init(self, worker) -> None:
        runtime = self.runtime

        def stop_worker() -> None:
            def stop_on_main_thread() -> None:
                worker.alive = False
            method_queue = getattr(worker, "method_queue", None)
            if method_queue is not None:
                method_queue.defer(stop_on_main_thread)  # also wakes the worker's poll loop
            else:
                worker.alive = False

        def on_sigterm(signum, frame) -> None:
            self._sigterm_received = True
            if runtime.signal.snapshot().state == "drained":
                stop_worker()
            else:
                runtime.on_sigterm()

        def on_drained(snapshot: DrainSnapshot) -> None:
            # Stopping only this process would make the master start a new worker: ask the master
            # to stop first (a master that is already stopping ignores it). Its signal queue then
            # holds this SIGTERM ahead of the SIGCHLD of our exit.
            os.kill(worker.ppid, signal.SIGTERM)
            if self._sigterm_received:
                stop_worker()
                return
            # The master's own SIGTERM comes back here and ends this process.
            fallback = threading.Timer(MASTER_ACK_TIMEOUT_SECONDS, stop_worker)
            fallback.daemon = True
            fallback.start()

        runtime.on_drained = on_drained
        signal.signal(signal.SIGTERM, on_sigterm)
        runtime.start()

    def _worker_int(self, worker) -> None:
        # SIGINT/SIGQUIT: gunicorn exits at once; give the job in flight back instead of leaving
        # its lease to expire.
        if self.runtime is not None:
            self.runtime.runner.release_in_flight("worker stopped by SIGINT/SIGQUIT")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print("usage: spot-drain-worker\n\nConfigured by environment variables only; see the README "
              "of the spot-drain-worker package.")
        return 0
    if argv:
        print(f"spot-drain-worker: takes no arguments (got {' '.join(argv)}); configure it with "
              "environment variables", file=sys.stderr)
        return 2
    # The *_created series only add noise to a worker's scrape.
    disable_created_metrics()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    # botocore (SQS backend) says where it found credentials and endpoints at INFO: noise in the journal.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    config = None
    try:
        config = load_config()
        # Open the queue here (SQLite: create the schema; SQS: check the queue and the table) so a
        # queue that cannot be used stops the start with its name.
        check_queue(config)
    except ConfigError as exc:
        print(f"spot-drain-worker: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. sqlite3.OperationalError: unable to open file
        if config is None:
            raise  # a fault in reading the settings, not a database that cannot be opened: its traceback says more
        print(f"spot-drain-worker: configuration error: DATABASE_URL: cannot open "
              f"{config.database_path}: {exc}", file=sys.stderr)
        return 2
    WorkerServer(config).run()
    return 0
