"""Runs the update manager off the inference thread: inbound announcements in, reports out.

The agent's MQTT callback must never block (inference never waits for an update), so `submit` only queues the
payload; one background thread verifies it (`UpdateManager.offer`) and drives the update to probation
(`UpdateManager.run`). `stop()` interrupts a download between chunks; the `.part` file and the row are kept and the
next start resumes (`start` calls `UpdateManager.resume` first). Transport-agnostic: the agent passes a ``report``
callback that publishes `state_payload` retained on `…/model/update` and events on `…/model/result`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from edge_agent.update.errors import UpdateError
from edge_agent.update.manager import UpdateManager
from edge_agent.update.state import TransitionError

logger = logging.getLogger(__name__)

# (kind, details): kind is "refused" for an announcement that opened no update, else the manager's event name.
RefusalCallback = Callable[[dict[str, Any]], None]


class UpdateWorker:
    """One daemon thread owning ``manager``; `submit` is safe from any thread (e.g. paho's network loop)."""

    def __init__(
        self, manager: UpdateManager, *, on_refused: RefusalCallback | None = None, max_queue: int = 16
    ) -> None:
        self.manager = manager
        self.on_refused = on_refused
        self._queue: queue.Queue[bytes | Callable[[], object] | None] = queue.Queue(maxsize=max_queue)
        self._actions: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-updates", daemon=True)
        self.dropped = 0

    def start(self, *, resume: bool = True) -> None:
        """Reconcile after the last run, then process announcements (and finish an interrupted update).

        ``resume=False`` when the caller already ran `UpdateManager.resume` (the agent does, before it picks the
        model to load): resuming twice would count one start as two during probation."""
        if resume:
            self.manager.resume()
        self._thread.start()

    def submit(self, payload: bytes) -> bool:
        """Queue an inbound announcement; False (and counted) when the queue is full (a flood is not our work)."""
        try:
            self._queue.put_nowait(payload)
            return True
        except queue.Full:
            self.dropped += 1
            logger.warning("model update queue full: announcement dropped (%d so far)", self.dropped)
            return False

    def call(self, action: Callable[[], object]) -> None:
        """Run ``action`` on the worker thread after what it is doing now (e.g. the end of probation: commit or
        rollback, which load models and delete files, never on the caller's inference thread)."""
        self._actions.put(action)
        try:
            self._queue.put_nowait(self._run_actions)
        except queue.Full:
            pass  # the actions queue is drained before the next announcement anyway

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        # An update interrupted by the last stop (or a crash) continues before anything new is looked at.
        self._drive()
        while not self._stop.is_set():
            payload = self._queue.get()
            if payload is None or self._stop.is_set():
                return
            self._run_actions()
            if callable(payload):
                continue
            try:
                record = self.manager.offer(payload)
            except UpdateError as exc:
                logger.warning("model announcement refused (%s): %s", exc.code, exc)
                self._refused(exc.code, str(exc))
                continue
            except TransitionError as exc:  # another update is still in progress (e.g. in probation)
                logger.warning("model announcement not taken now: %s", exc)
                self._refused("update_in_progress", str(exc))
                continue
            except Exception:  # noqa: BLE001 - a bug must not kill the thread that serves every later announcement
                logger.exception("model update worker: announcement handling failed")
                continue
            if record is not None:
                self._drive()

    def _refused(self, code: str, error: str) -> None:
        if self.on_refused is not None:
            try:
                self.on_refused({"event": "refused", "error_code": code, "error": error})
            except Exception:  # noqa: BLE001 - a failing reporter must not stop the worker
                logger.exception("model update refusal report failed")

    def _run_actions(self) -> None:
        while True:
            try:
                action = self._actions.get_nowait()
            except queue.Empty:
                return
            try:
                action()
            except Exception:  # noqa: BLE001 - a failed action is logged; the thread keeps serving announcements
                logger.exception("model update worker: action failed")

    def _drive(self) -> None:
        try:
            self.manager.run(stop=self._stop)
        except Exception:  # noqa: BLE001 - a bug in one update must not kill the thread; the row says where it was
            logger.exception("model update worker: unexpected failure")
