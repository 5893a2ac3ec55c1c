"""The device's update manager: drives one persisted update through its states, one re-entrant step each.

Use (the agent wires this; tests drive it directly)::

    manager = UpdateManager(cfg, state_dir=..., bundle_keys=[...], device_id="reef-01", agent_version="0.1.0")
    manager.resume()                      # at start-up: crash-loop check, link reconciliation
    record = manager.offer(payload)       # an inbound announcement: verified, then a row in `downloading`
    record = manager.run(stop=event)      # download -> verify -> stage -> check -> swap; ends in probation
    manager.commit()  |  manager.rollback("fps dropped")   # the end of probation

Every step first reads the row, does its work (idempotently: a re-entered step after kill -9 finds its own
half-done work and finishes or redoes it), then persists the next state *before* that state's work starts.
`report(record, event)` is called after every transition (the agent publishes it on `…/model/update` and
`…/model/result` through the outbox). The anti-rollback floor rises only at commit; a version whose signed bytes
proved unfit (`UpdateError.marks_bad`) is marked bad so a still-retained announcement never reinstalls it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_agent.bundle import BundleError, VerifiedBundle, load_bundle
from edge_agent.bundle.signing import PublicKeyLike, as_public_keys
from edge_agent.device_state import DeviceState, RollbackRefused
from edge_agent.update import staging
from edge_agent.update.announcement import Announcement, SignedAnnouncement, parse_announcement, verify_announcement
from edge_agent.update.check import CheckReport, check_candidate
from edge_agent.update.config import UpdateConfig
from edge_agent.update.download import DownloadPolicy, download
from edge_agent.update.errors import (
    BundleRefused,
    DownloadCancelled,
    ProbationFailed,
    SwapFailed,
    UpdateError,
)
from edge_agent.update.state import UpdateRecord, UpdateState, UpdateStore

logger = logging.getLogger(__name__)

ReportCallback = Callable[[UpdateRecord, dict[str, Any]], None]
SwapCallback = Callable[[VerifiedBundle], None]


class UpdateManager:
    """One device's model updates under ``cfg.models_dir``, persisted in ``state_dir``."""

    def __init__(
        self,
        cfg: UpdateConfig,
        *,
        state_dir: str | Path,
        bundle_keys: PublicKeyLike | Iterable[PublicKeyLike],
        device_id: str,
        agent_version: str,
        expected_name: str | None = None,
        reference_latency_ms: Callable[[], float | None] | None = None,
        on_swap: SwapCallback | None = None,
        report: ReportCallback | None = None,
    ) -> None:
        self.cfg = cfg
        self.models_dir = Path(cfg.models_dir)
        self.state_dir = Path(state_dir)
        self.release_keys = as_public_keys(cfg.release_keys)
        self.bundle_keys = as_public_keys(bundle_keys)
        self.device_id = device_id
        self.agent_version = agent_version
        self.expected_name = expected_name
        self.reference_latency_ms = reference_latency_ms or (lambda: None)
        self.on_swap = on_swap
        self.report = report
        self.device_state = DeviceState(self.state_dir)
        self.store = UpdateStore(self.state_dir)
        self.last_check: CheckReport | None = None
        self._lock = threading.RLock()
        self.policy = DownloadPolicy(
            connect_timeout_s=cfg.connect_timeout_s,
            stall_timeout_s=cfg.stall_timeout_s,
            max_attempt_s=cfg.max_download_s,
            retries=cfg.retries,
            backoff_initial_s=cfg.backoff_initial_s,
            backoff_max_s=cfg.backoff_max_s,
        )

    # -- entry points ---------------------------------------------------------------------------------------------

    def offer(self, raw: bytes, *, now: datetime | None = None) -> UpdateRecord | None:
        """Verify an inbound announcement and open an update for it.

        Returns the new record (in `downloading`), or None when there is nothing to do: this device is not in the
        wave, the announcement was already handled (a retained repeat: same signed bytes), or the version is the
        one running. Raises an `AnnouncementError` subclass (report it) when it is refused; refusals open no row.
        """
        with self._lock:
            signed = parse_announcement(raw, self.release_keys, max_bytes=self.cfg.max_announcement_bytes)
            ann = signed.announcement
            if not ann.targets(self.device_id):
                logger.info("update: %s targets other devices (wave %d); ignored", ann.describe(), ann.rollout.wave)
                return None
            seen = self.store.by_digest(signed.digest)
            if seen is not None:
                logger.info(
                    "update: announcement of %s already handled (#%d, %s); ignored",
                    ann.describe(),
                    seen.id,
                    seen.state.value,
                )
                return None
            if staging.target_version(staging.current_target(self.models_dir)) == ann.version:
                logger.info("update: %s is already the current version; ignored", ann.describe())
                return None
            verify_announcement(
                raw,
                self.release_keys,
                device_state=self.device_state,
                platform=self.cfg.platform,
                agent_version=self.agent_version,
                max_bundle_bytes=self.cfg.max_bundle_bytes,
                max_bytes=self.cfg.max_announcement_bytes,
                now=now,
                expected_name=self.expected_name,
                last_created_at=self.store.last_created_at(ann.name),
            )
            record = self.store.create(
                name=ann.name,
                version=ann.version,
                rollback=ann.rollback,
                digest=signed.digest,
                announcement=raw,
                created_at=ann.created_at,
                size=ann.size,
            )
            self._report(record, "accepted")
            return record

    def resume(self) -> UpdateRecord | None:
        """Start-up: make the link agree with the last record, and count restarts during probation.

        A crash loop (more than `probation_max_restarts` starts while in probation) rolls back. Returns the active
        update, if any (the caller then runs `run` in the background for states before probation).
        """
        with self._lock:
            latest = self.store.latest()
            if latest is not None and latest.state.terminal:
                self._reconcile(latest)
            record = self.store.active()
            if record is None:
                return None
            if record.state is UpdateState.PROBATION:
                restarts = self.store.count_restart(record.id)
                if restarts > self.cfg.probation_max_restarts:
                    return self.rollback(f"crash loop: {restarts} agent restarts during probation")
            logger.info("update #%d (%s v%d) resumes in %s", record.id, record.name, record.version, record.state.value)
            return self.store.get(record.id)

    def run(self, stop: threading.Event | None = None) -> UpdateRecord | None:
        """Drive the active update until it reaches probation or ends; re-entrant after any crash."""
        with self._lock:
            record = self.store.active()
            while record is not None and record.state not in (UpdateState.PROBATION,) and not record.state.terminal:
                try:
                    record = self._step(record, stop)
                except DownloadCancelled:
                    logger.info("update #%d: paused in %s (agent stopping)", record.id, record.state.value)
                    return self.store.get(record.id)
                except UpdateError as exc:
                    record = self._fail(record, exc)
                except OSError as exc:  # disk full, permissions: the update fails, the running model stays
                    err = UpdateError(f"{type(exc).__name__}: {exc}")
                    err.code = "io_error"
                    record = self._fail(record, err)
            return record

    def commit(self) -> UpdateRecord:
        """End probation successfully: committed first, then the floor rises (`resume` finishes it after a crash)."""
        with self._lock:
            record = self._active_in(UpdateState.PROBATION)
            record = self.store.transition(record.id, UpdateState.COMMITTED)
            self._finish_commit(record)
            self._report(record, "committed")
            return record

    def rollback(self, reason: str) -> UpdateRecord:
        """End probation with a failure: back to the previous version, the candidate marked bad."""
        with self._lock:
            record = self._active_in(UpdateState.PROBATION)
            err = ProbationFailed(reason)
            self.device_state.mark_bad(record.name, record.version, f"{err.code}: {reason}")
            record = self.store.transition(record.id, UpdateState.ROLLED_BACK, error_code=err.code, error=reason)
            self._restore_previous(record)
            self._report(record, "rolled_back")
            return record

    def in_probation(self) -> UpdateRecord | None:
        """The update in probation, if any: start-up must then *not* raise the floor (`app.commit_model`) — the
        floor rises only when this update commits."""
        record = self.store.active()
        return record if record is not None and record.state is UpdateState.PROBATION else None

    def close(self) -> None:
        self.store.close()
        self.device_state.close()

    # -- steps ----------------------------------------------------------------------------------------------------

    def _step(self, record: UpdateRecord, stop: threading.Event | None) -> UpdateRecord:
        signed = parse_announcement(record.announcement, self.release_keys, max_bytes=self.cfg.max_announcement_bytes)
        ann = signed.announcement
        state = record.state
        if state is UpdateState.DOWNLOADING:
            self._download(record, ann, stop)
            nxt = self.store.transition(record.id, UpdateState.VERIFYING)
        elif state is UpdateState.VERIFYING:
            self._verify(ann)
            nxt = self.store.transition(record.id, UpdateState.STAGING)
        elif state is UpdateState.STAGING:
            self._stage(ann)
            nxt = self.store.transition(record.id, UpdateState.CHECKING)
        elif state is UpdateState.CHECKING:
            self._check(ann)
            # The previous target is recorded in the same write that enters swapping: a crash after the link
            # moved still knows where to go back to.
            previous = staging.current_target(self.models_dir)
            nxt = self.store.transition(record.id, UpdateState.SWAPPING, previous_target=previous or "")
        elif state is UpdateState.SWAPPING:
            self._swap(record, ann)
            nxt = self.store.transition(record.id, UpdateState.PROBATION)
        else:  # pragma: no cover - run() never steps probation or terminal states
            raise AssertionError(state)
        self._report(nxt, nxt.state.value)
        return nxt

    def _download(self, record: UpdateRecord, ann: Announcement, stop: threading.Event | None) -> None:
        dest = staging.download_path(self.models_dir, ann.name, ann.version, ann.sha256)
        step = max(1, ann.size // 20)
        marks = {"next": step}

        def progress(done: int, total: int) -> None:
            # Persist (and report) progress every 5 %: enough for a dashboard, not a write per chunk.
            if done >= marks["next"] or done == total:
                marks["next"] = done + step
                self.store.set_progress(record.id, done)
                self._report(self.store.get(record.id), "progress")

        download(ann.url, dest, size=ann.size, sha256=ann.sha256, policy=self.policy, progress=progress, stop=stop)
        self.store.set_progress(record.id, ann.size)

    def _verify(self, ann: Announcement) -> None:
        archive = staging.download_path(self.models_dir, ann.name, ann.version, ann.sha256)
        # The tar's sha256 matched the signed announcement; now the bundle's own signature, hashes, name/version.
        self._load_checked(archive, ann)

    def _stage(self, ann: Announcement) -> None:
        archive = staging.download_path(self.models_dir, ann.name, ann.version, ann.sha256)
        dest = staging.version_dir(self.models_dir, ann.version)
        if dest.is_dir() and archive.exists():
            # Re-entered after a crash: unpack_tar renames a complete directory into place, but re-verify anyway.
            try:
                self._load_checked(dest, ann)
                staging.clean_partial_unpacks(self.models_dir, ann.version)
                return
            except BundleRefused:
                logger.warning("update staging: %s is not a complete v%d; unpacking again", dest, ann.version)
        if not archive.exists():
            if dest.is_dir():
                self._load_checked(dest, ann)
                return
            raise BundleRefused(f"{archive} disappeared before staging")
        try:
            staging.stage(self.models_dir, archive, ann.version)
        except BundleError as exc:
            raise BundleRefused(f"cannot stage {archive}: {exc}") from exc
        self._load_checked(dest, ann)

    def _check(self, ann: Announcement) -> None:
        bundle = self._load_checked(staging.version_dir(self.models_dir, ann.version), ann)
        self.last_check = check_candidate(
            bundle, self.cfg, state_dir=self.state_dir, reference_latency_ms=self.reference_latency_ms()
        )

    def _swap(self, record: UpdateRecord, ann: Announcement) -> None:
        bundle = self._load_checked(staging.version_dir(self.models_dir, ann.version), ann)
        try:
            staging.point_current(self.models_dir, staging.version_target(ann.version))
        except OSError as exc:
            raise SwapFailed(f"cannot point {self.models_dir / staging.CURRENT} at v{ann.version}: {exc}") from exc
        if self.on_swap is not None:
            try:
                self.on_swap(bundle)
            except Exception as exc:  # noqa: BLE001 - any failure of the live swap puts the old model back
                err = SwapFailed(f"the agent could not switch to v{ann.version}: {exc}")
                err.marks_bad = True
                raise err from exc

    # -- helpers --------------------------------------------------------------------------------------------------

    def _load_checked(self, path: Path, ann: Announcement) -> VerifiedBundle:
        try:
            bundle = load_bundle(path, self.bundle_keys, expected_name=ann.name)
            if bundle.manifest.version != ann.version:
                raise BundleRefused(
                    f"bundle {path} is v{bundle.manifest.version}; the announcement says "
                    f"v{ann.version} (mix-and-match refused)"
                )
            self.device_state.check_rollback(ann.name, ann.version, allow_rollback=ann.rollback)
        except RollbackRefused as exc:
            raise BundleRefused(str(exc)) from exc
        except BundleError as exc:
            raise BundleRefused(f"bundle {path} refused: {exc}") from exc
        return bundle

    def _fail(self, record: UpdateRecord, exc: UpdateError) -> UpdateRecord:
        logger.warning(
            "update #%d (%s v%d) failed in %s: %s", record.id, record.name, record.version, record.state.value, exc
        )
        if exc.marks_bad:
            self.device_state.mark_bad(record.name, record.version, f"{exc.code}: {exc}")
        if record.state is UpdateState.SWAPPING:
            record = self.store.transition(record.id, UpdateState.ROLLED_BACK, error_code=exc.code, error=str(exc))
            self._restore_previous(record)
        else:
            record = self.store.transition(record.id, UpdateState.FAILED, error_code=exc.code, error=str(exc))
        self._report(record, record.state.value)
        return record

    def _restore_previous(self, record: UpdateRecord) -> None:
        previous = record.previous_target
        if previous and staging.current_target(self.models_dir) != previous:
            staging.point_current(self.models_dir, previous)
            if self.on_swap is not None and (self.models_dir / previous).is_dir():
                try:
                    self.on_swap(load_bundle(self.models_dir / previous, self.bundle_keys, allow_rollback=True))
                except Exception:  # noqa: BLE001 - the link is back; a restart loads the previous model
                    logger.exception("update #%d: could not switch the running detector back", record.id)

    def _finish_commit(self, record: UpdateRecord) -> None:
        self.device_state.raise_floor(record.name, record.version)
        previous = staging.target_version(record.previous_target)
        staging.prune_versions(self.models_dir, {record.version} | ({previous} if previous else set()))
        downloads = self.models_dir / staging.DOWNLOADS
        for leftover in downloads.iterdir() if downloads.is_dir() else []:
            leftover.unlink(missing_ok=True)

    def _reconcile(self, record: UpdateRecord) -> None:
        """After a crash between a terminal write and its effect: finish the effect."""
        target = staging.current_target(self.models_dir)
        if record.state is UpdateState.ROLLED_BACK and target == staging.version_target(record.version):
            logger.warning(
                "update #%d was rolled back but current still names v%d: restoring %s",
                record.id,
                record.version,
                record.previous_target,
            )
            self._restore_previous(record)
        elif record.state is UpdateState.COMMITTED:
            floor = self.device_state.floor(record.name)
            if floor is None or floor < record.version:
                self._finish_commit(record)

    def _active_in(self, state: UpdateState) -> UpdateRecord:
        record = self.store.active()
        if record is None or record.state is not state:
            raise UpdateError(f"no update in {state.value} (active: {record.state.value if record else 'none'})")
        return record

    def _report(self, record: UpdateRecord, event: str) -> None:
        if self.report is None:
            return
        details: dict[str, Any] = {"event": event}
        if event == "checking" or (self.last_check is not None and event == "swapping"):
            details["check"] = self.last_check.as_dict() if self.last_check else None
        try:
            self.report(record, details)
        except Exception:  # noqa: BLE001 - a failing reporter must not stop an update half-way
            logger.exception("update report callback failed")


def state_payload(record: UpdateRecord | None, *, schema_version: int = 1) -> dict[str, Any]:
    """The retained `…/model/update` payload for ``record`` (None: idle)."""
    if record is None:
        return {"schema_version": schema_version, "state": "idle"}
    return {
        "schema_version": schema_version,
        "id": record.id,
        "name": record.name,
        "version": record.version,
        "rollback": record.rollback,
        "state": record.state.value,
        "progress": record.progress,
        "size": record.size,
        "error_code": record.error_code,
        "error": record.error,
    }


__all__ = ["SignedAnnouncement", "UpdateManager", "state_payload"]
