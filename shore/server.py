"""Run ingest and the web app in one process (`starfish shore run`)."""

from __future__ import annotations

import logging
import signal
import threading

import uvicorn

from shore.config import ShoreSettings, is_loopback
from shore.ingest import Ingest
from shore.storage import open_storage
from shore.web import create_app
from shore.workers import WorkerPool

logger = logging.getLogger(__name__)


def run(settings: ShoreSettings, *, ingest: bool = True, web: bool = True) -> None:
    """Block until SIGINT / SIGTERM. With `web=False`, until the process is signalled."""
    storage = open_storage(settings.db, schema=settings.db_schema)
    worker = Ingest(settings.mqtt, storage) if ingest else None
    pool = WorkerPool(settings.mqtt, settings.db, settings.db_schema) if ingest and settings.mqtt.workers > 1 else None
    try:
        if worker is not None:
            worker.start()
        if pool is not None:
            pool.start()
        if web:
            app = create_app(settings.web, storage, worker.stats if worker is not None else None)
            config = uvicorn.Config(
                app,
                host=settings.web.host,
                port=settings.web.port,
                log_level="warning",
                timeout_graceful_shutdown=3,
                access_log=False,
            )
            server = uvicorn.Server(config)
            # uvicorn re-raises the signal that stopped it once it has shut down; with the default handler in place
            # that would end the process before the `finally` below commits and acknowledges what ingest holds.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: None)
            logger.info(
                "shore: dashboard on http://%s:%d/ (storage: %s%s)",
                settings.web.host,
                settings.web.port,
                storage.engine,
                "" if is_loopback(settings.web.host) else ", token required",
            )
            server.run()
        else:
            done = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: done.set())
            signal.signal(signal.SIGINT, lambda *_: done.set())
            done.wait()
    finally:
        if pool is not None:
            pool.stop()
        if worker is not None:
            worker.stop()
        storage.close()
