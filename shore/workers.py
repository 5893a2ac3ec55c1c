"""Extra ingest processes for `starfish shore run --workers N`: one MQTT client each, sharing the counts.

The counts, tracks and model results go to an MQTT 5 shared subscription (`$share/{group}/…`): the broker hands
each message to one member of the group. Each worker is a whole `Ingest` (own paho network thread, own database
connection, own persistent session under client id `{client_id}-w{k}`), so parsing, acknowledging and the MQTT
receive path, which is what bounds one Python process, run on several cores. The exactly-once argument is the
single process's, per worker: every worker acknowledges only after its own commit, and the dedupe key is in the
shared database. It does not hold across a broker restart: Mosquitto 2.0.11 (checked here) does not restore a
session's shared subscription from persistence (`scripts/mosquitto_shared_restart.py`), so what is published
before the workers subscribe again reaches no one.

Workers die with the parent (`PR_SET_PDEATHSIG`, checked once more after it is set): a `kill -9` of the station
leaves no orphan that would fight the next run's worker for its client id. A worker that dies alone is restarted
with the same client id, so the messages its session holds are delivered again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any

from shore.config import IngestConfig

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_RESTART_DELAY_S = 1.0


def worker_config(cfg: IngestConfig, k: int) -> IngestConfig:
    """Worker k's settings: its own client id (the persistent session), the shared group, one process."""
    base = cfg.client_id[: 64 - len(f"-w{k}")]
    return cfg.model_copy(update={"client_id": f"{base}-w{k}", "workers": 1})


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent was gone before the death signal was armed
        os._exit(1)


def _worker_main(cfg: IngestConfig, db: str, db_schema: str | None, parent: int, level: int, go: Any) -> None:
    _die_with_parent(parent)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from shore.ingest import Ingest
    from shore.storage import open_storage

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    storage = open_storage(db, schema=db_schema)
    ingest = Ingest(cfg, storage)
    if go is not None:  # the benchmark starts its clock with every worker imported and its database open
        go.wait()
    try:
        ingest.start()
        stop.wait()
    finally:
        ingest.stop()  # commits and acknowledges what it holds; the rest stays in its session
        storage.close()


class WorkerPool:
    """Workers 1..N-1 (the calling process runs worker 0), supervised and restarted when one dies."""

    def __init__(self, cfg: IngestConfig, db: str, db_schema: str | None, go: Any = None) -> None:
        self.cfg = cfg
        self._go = go
        self.db = db
        self.db_schema = db_schema
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads and connections
        self._procs: dict[int, Any] = {}
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self.restarts = 0

    def _spawn(self, k: int) -> None:
        proc = self._ctx.Process(
            target=_worker_main,
            args=(
                worker_config(self.cfg, k),
                self.db,
                self.db_schema,
                os.getpid(),
                logging.getLogger().level,
                self._go,
            ),
            name=f"shore-ingest-w{k}",
            daemon=False,
        )
        proc.start()
        self._procs[k] = proc

    def start(self) -> None:
        for k in range(1, self.cfg.workers):
            self._spawn(k)
        logger.info(
            "shore ingest: %d worker processes sharing the counts ($share/%s/…)", self.cfg.workers, self.cfg.share_group
        )
        logger.warning(
            "shore ingest: with shared subscriptions, counts published while the broker restarts can be lost "
            "(Mosquitto 2.0.11 does not restore them from persistence); run one worker where the broker may restart"
        )
        self._monitor = threading.Thread(target=self._watch, name="shore-workers", daemon=True)
        self._monitor.start()

    def _watch(self) -> None:
        while not self._stopping.wait(_RESTART_DELAY_S):
            for k, proc in list(self._procs.items()):
                if proc.is_alive() or self._stopping.is_set():
                    continue
                logger.warning("shore ingest: worker %d exited (code %s); restarting it", k, proc.exitcode)
                self.restarts += 1
                self._spawn(k)

    def alive(self) -> int:
        return sum(1 for p in self._procs.values() if p.is_alive())

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join(timeout)
        for proc in self._procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self._procs.values():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
