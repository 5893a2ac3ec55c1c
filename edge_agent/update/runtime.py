"""The update manager inside the running agent: start-up, announcements in, swap, probation, reports out.

`AgentUpdates` is built by `edge_agent.app.build_agent` when the configuration has an ``updates:`` block:

1. `prepare()` (before any detector loads): `UpdateManager.resume` reconciles the ``current`` link with the last
   persisted state and counts this start if an update is in probation (crash loop -> rollback); on the first start
   it seeds ``models_dir`` with the configured bundle. It returns the bundle directory to load.
2. `attach(agent)`: the agent exists; an update still in probation gets a fresh probation window.
3. `start()` (from `Agent.run`, once the publisher runs): the worker thread starts; reports queued so far go out.
4. `submit(payload)` (MQTT inbound thread): queued for the worker, never blocks.
5. `on_frame(ok, now)` (inference thread): feeds `Probation`; its verdict is handed to the worker, which commits
   or rolls back (loading the previous model happens there, while the current one keeps counting).

Every transition is reported twice: retained `…/model/update` (the state, re-sent on every connect) and an event
on `…/model/result` stored in the outbox first (it survives broker outages and restarts). Download progress only
updates the retained state.
"""

from __future__ import annotations

import functools
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.bundle import VerifiedBundle, load_bundle
from edge_agent.update import staging
from edge_agent.update.manager import UpdateManager, state_payload
from edge_agent.update.probation import Decision, FrameRate, Probation, Verdict
from edge_agent.update.state import UpdateRecord, UpdateState
from edge_agent.update.worker import UpdateWorker

if TYPE_CHECKING:
    from edge_agent.app import Agent
    from edge_agent.config import AgentConfig
    from edge_agent.detectors import Detector

logger = logging.getLogger(__name__)

DetectorFactory = Callable[[VerifiedBundle], "Detector"]

_OUTCOME = {UpdateState.COMMITTED: True, UpdateState.FAILED: False, UpdateState.ROLLED_BACK: False}


class AgentUpdates:
    """Over-the-air updates of one running agent (see the module docstring for the call order)."""

    def __init__(self, cfg: AgentConfig, *, make_detector: DetectorFactory, agent_version: str) -> None:
        if cfg.updates is None:
            raise ValueError("the configuration has no `updates` block")
        self.cfg = cfg
        # The staging check must load the candidate the way the agent will: its back ends, its variant (the golden
        # frames compared are that variant's), its threads and its engine cache (an engine built there is the one
        # the swap loads). Not its score-threshold override: the check judges the model at the bundle's own.
        det = cfg.detector
        self.ucfg = cfg.updates.model_copy(
            update={
                "backends": list(det.backends),
                "variant": det.variant,
                "threads": det.threads,
                "engine_cache_dir": det.engine_cache_dir,
            }
        )
        self.models_dir = Path(self.ucfg.models_dir)
        self.make_detector = make_detector
        self.manager = UpdateManager(
            self.ucfg,
            state_dir=cfg.state_dir,
            bundle_keys=cfg.detector.trusted_keys,
            device_id=cfg.device_id,
            agent_version=agent_version,
            reference_latency_ms=self._reference_latency,
            on_swap=self._on_swap,
            report=self._report,
        )
        self.worker = UpdateWorker(self.manager, on_refused=self._refused)
        self.rate = FrameRate()
        self._agent: Agent | None = None
        self._lock = threading.Lock()
        self._started = False
        self._pending: list[dict[str, Any]] = []  # events reported before the publisher runs
        self._probation: Probation | None = None
        self._standby: Detector | None = None  # the previous model, warm, while the new one is in probation
        self._standby_load_s: float | None = None
        self._ended: dict[str, Any] | None = None  # the last probation's figures, for its final event
        self.last_swap: dict[str, Any] | None = None  # timings of the last swap (measurements, logs)

    # -- start-up -------------------------------------------------------------------------------------------------
    def prepare(self) -> Path:
        """Reconcile after the last run and return the bundle directory the agent must load."""
        record = self.manager.resume()
        if record is not None and record.state is UpdateState.PROBATION:
            reason = self.manager.device_state.bad_reason(record.name, record.version)
            if reason is not None:  # killed between marking it bad and the rollback's state write
                self.manager.rollback(f"marked bad before its rollback completed ({reason})")
        if staging.current_target(self.models_dir) is None:
            configured = load_bundle(self.cfg.detector.bundle, self.cfg.detector.trusted_keys)
            staging.seed(self.models_dir, Path(self.cfg.detector.bundle), configured.manifest.version)
        return self.current_path()

    def current_path(self) -> Path:
        # The resolved version directory, not the link: the running detector's files keep their name when the link
        # moves on.
        return Path(os.path.realpath(self.models_dir / staging.CURRENT))

    def in_probation(self) -> UpdateRecord | None:
        return self.manager.in_probation()

    def rollback_probation(self, reason: str) -> Path:
        """The model in probation cannot even be loaded at start-up: roll back now, return what to load instead."""
        self.manager.rollback(reason)
        return self.current_path()

    def running_is_signed_rollback(self) -> bool:
        """Whether ``current`` is the target of a committed, signed rollback (loaded below the floor on purpose)."""
        latest = self.manager.store.latest()
        version = staging.target_version(staging.current_target(self.models_dir))
        return bool(latest and latest.rollback and latest.state is UpdateState.COMMITTED and latest.version == version)

    def attach(self, agent: Agent) -> None:
        self._agent = agent
        self.manager.expected_name = agent.slot.detector.bundle.manifest.name
        record = self.manager.in_probation()
        if record is not None:
            # A restart in probation: a fresh window, judged against the previous model's fps persisted at the swap.
            logger.info("update #%d: v%d continues its probation after a restart", record.id, record.version)
            self._probation = self._new_probation(record, measure_now=False)
        agent.publisher.set_update_state(state_payload(self.manager.store.latest()))

    def start(self) -> None:
        """The publisher runs: send what was reported so far, then start the worker thread."""
        with self._lock:
            self._started = True
            pending, self._pending = self._pending, []
        for event in pending:
            self._send_event(event)
        self.worker.start(resume=False)

    def stop(self) -> None:
        self.worker.stop()
        self._release_standby()

    def close(self) -> None:
        self.manager.close()

    # -- hot path -------------------------------------------------------------------------------------------------
    def submit(self, payload: bytes) -> bool:
        return self.worker.submit(payload)

    def on_frame(self, ok: bool, now: float) -> None:
        """One processed frame (inference thread): a few attribute updates, never I/O."""
        if ok:
            self.rate.tick(now)
        probation = self._probation
        if probation is None:
            return
        decision = probation.frame(ok, now)
        if decision is None:
            return
        failed = None
        standby, agent = self._standby, self._agent
        if decision.verdict is Verdict.ROLLBACK and standby is not None and agent is not None:
            # Back to the warm previous model before the next frame; the worker then persists the rollback and
            # moves the link (a crash in between restarts in probation, which the restart count ends).
            self._standby = None
            failed = agent.swap_detector(standby, self._standby_load_s, keep_old=True)
        self.worker.call(functools.partial(self._end_probation, probation, decision, failed))

    # -- worker thread --------------------------------------------------------------------------------------------
    def _end_probation(self, probation: Probation, decision: Decision, failed: Detector | None) -> None:
        try:
            if self._probation is not probation:
                return
            self._probation = None
            record = self.manager.in_probation()
            if record is None or record.id != probation.update_id:
                return
            self._ended = probation.summary()
            if decision.verdict is Verdict.COMMIT:
                self.manager.commit()
                self._release_standby()
            else:
                logger.warning("update #%d: probation failed (%s); rolling back", record.id, decision.reason)
                self.manager.rollback(decision.reason)
        finally:
            if failed is not None:
                failed.close()

    def _on_swap(self, bundle: VerifiedBundle) -> None:
        """The manager moved `current` (swap, or back at a rollback): make the running agent follow it."""
        agent = self._agent
        if agent is None:
            return  # start-up reconciliation: the agent will load what `current` names
        record = self.manager.store.active()
        entering = record is not None and record.state is UpdateState.SWAPPING
        running = agent.slot.detector.bundle.manifest
        standby, self._standby = self._standby, None
        started = time.perf_counter()
        wanted = (bundle.manifest.name, bundle.manifest.version)
        load_s = 0.0
        if (running.name, running.version) == wanted:
            # A swap re-entered after a restart that already loaded this version (the previous model's fps is the
            # one persisted at the first swap, if it got that far), or a rollback the inference thread already did.
            self._probation = self._new_probation(record, measure_now=False) if entering else None
        elif standby is not None and (standby.bundle.manifest.name, standby.bundle.manifest.version) == wanted:
            self._probation = None
            agent.swap_detector(standby, self._standby_load_s)  # back to the warm previous model
            standby = None
        else:
            # Load (and warm up) the new model here, on the worker thread, while the old one keeps counting.
            detector = self.make_detector(bundle)
            load_s = time.perf_counter() - started
            keep = entering and self.ucfg.probation_keep_previous
            if keep:
                # Set before the swap (only this thread swaps): the very first frames on the new model are
                # judged already, and a rollback they trigger finds the previous model.
                self._standby, self._standby_load_s = agent.slot.detector, agent.slot.load_time_s
            self._probation = self._new_probation(record) if entering else None
            agent.swap_detector(detector, load_s, keep_old=keep)
        if standby is not None:
            standby.close()
        self.last_swap = {"version": bundle.manifest.version, "load_s": round(load_s, 3), "at": time.time()}

    def _new_probation(self, record: UpdateRecord | None, measure_now: bool = True) -> Probation | None:
        if record is None:
            return None
        fps = self.rate.fps() if measure_now else record.baseline_fps
        if measure_now and fps is not None:
            self.manager.store.set_baseline_fps(record.id, fps)
        return Probation(self.ucfg, update_id=record.id, baseline_fps=fps)

    def _release_standby(self) -> None:
        standby, self._standby = self._standby, None
        if standby is not None:
            standby.close()

    def _reference_latency(self) -> float | None:
        agent = self._agent
        recent = agent.recent_inference_ms() if agent is not None else []
        return statistics.median(recent) if recent else None

    # -- reports --------------------------------------------------------------------------------------------------
    def _report(self, record: UpdateRecord, details: dict[str, Any]) -> None:
        agent = self._agent
        if agent is not None:
            agent.publisher.set_update_state(state_payload(record))
        event = str(details.get("event"))
        if event == "progress":
            return  # the retained state carries progress; events are for transitions
        doc: dict[str, Any] = {
            "event": event,
            "state": record.state.value,
            "ok": _OUTCOME.get(record.state) if record.state.terminal else None,
            "id": record.id,
            "name": record.name,
            "version": record.version,
            "rollback": record.rollback,
            "error_code": record.error_code,
            "error": record.error,
            "check": details.get("check"),
        }
        if record.state in (UpdateState.COMMITTED, UpdateState.ROLLED_BACK) and self._ended is not None:
            doc["probation"], self._ended = self._ended, None
        self._send_event(doc)

    def _refused(self, details: dict[str, Any]) -> None:
        self._send_event({**details, "ok": False})

    def _send_event(self, doc: dict[str, Any]) -> None:
        with self._lock:
            if not self._started or self._agent is None:
                self._pending.append(doc)
                return
            publisher = self._agent.publisher
        publisher.publish_update_event(doc)
