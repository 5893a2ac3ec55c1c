"""The update state machine with real signed bundles, a real HTTP server, onnxruntime, and real kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge_agent.bundle import generate_keypair, load_private_key
from edge_agent.bundle.files import sha256_file
from edge_agent.device_state import DeviceState
from edge_agent.update import errors
from edge_agent.update.announcement import Announcement, sign_announcement
from edge_agent.update.config import UpdateConfig
from edge_agent.update.manager import UpdateManager, state_payload
from edge_agent.update.state import UpdateState
from tests.helpers.bundles import rebundle
from tests.helpers.http_server import BundleServer
from tests.helpers.mqtt_broker import wait_until

ROOT = Path(__file__).resolve().parent.parent
S = UpdateState


def tar_dir(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for file in sorted(src.iterdir()):
            tar.add(file, arcname=file.name)
    return dest


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_bundle, bundle_keys):
    """Bundle .tar files v1..v3 of the tiny model in an HTTP store directory, plus a tampered v2."""
    root = tmp_path_factory.mktemp("store")
    work = tmp_path_factory.mktemp("bundles")
    for version in (1, 2, 3):
        src = rebundle(
            tiny_bundle.path,
            work / f"v{version}",
            bundle_keys.private,
            version=version,
            parent_version=version - 1 if version > 1 else None,
        )
        tar_dir(src, root / f"v{version}.tar")
    bad = work / "tampered"
    bad.mkdir()
    for file in (work / "v2").iterdir():
        data = bytearray(file.read_bytes())
        if file.suffix == ".onnx":
            data[len(data) // 2] ^= 0xFF  # one flipped byte inside the signed model file
        (bad / file.name).write_bytes(bytes(data))
    tar_dir(bad, root / "v2-tampered.tar")
    return root


@pytest.fixture(scope="module")
def release_key(tmp_path_factory):
    root = tmp_path_factory.mktemp("release-key")
    generate_keypair(root / "release.pem", root / "release.pub")
    return root / "release.pem", root / "release.pub"


@pytest.fixture()
def server(store):
    with BundleServer(store) as srv:
        yield srv


@pytest.fixture()
def device(tmp_path, release_key, bundle_keys):
    """(UpdateConfig, state_dir) for a fresh device."""
    cfg = UpdateConfig(
        models_dir=tmp_path / "models",
        release_keys=[release_key[1]],
        retries=2,
        backoff_initial_s=0.05,
        backoff_max_s=0.1,
        stall_timeout_s=2,
        check_runs=2,
    )
    return cfg, tmp_path / "state"


def announce(
    server: BundleServer,
    store: Path,
    release_key,
    version: int,
    *,
    file: str | None = None,
    sha256: str | None = None,
    age_s: float = 0,
    **changes,
) -> bytes:
    file = file or f"v{version}.tar"
    path = store / file
    now = datetime.now(timezone.utc) - timedelta(seconds=age_s)
    fields = dict(
        name="starfish-cots",
        version=version,
        url=server.url(file),
        sha256=sha256 or (sha256_file(path) if path.exists() else "0" * 64),
        size=path.stat().st_size if path.exists() else 1000,
        created_at=now,
        expires_at=now + timedelta(days=1),
        platforms=["any"],
    )
    fields.update(changes)
    return sign_announcement(Announcement(**fields), load_private_key(release_key[0]))


def manager_for(device, bundle_keys, events=None, **kw) -> UpdateManager:
    cfg, state_dir = device
    report = (lambda record, details: events.append((record.state, details["event"]))) if events is not None else None
    return UpdateManager(
        cfg,
        state_dir=state_dir,
        bundle_keys=[bundle_keys.public],
        device_id="reef-01",
        agent_version="0.1.0",
        report=report,
        **kw,
    )


def models(device) -> Path:
    return Path(device[0].models_dir)


def install(manager: UpdateManager, raw: bytes):
    record = manager.offer(raw)
    assert record is not None and record.state is S.DOWNLOADING
    return manager.run()


def test_install_commit_then_upgrade_keeps_previous(server, store, release_key, device, bundle_keys):
    events: list = []
    manager = manager_for(device, bundle_keys, events)
    record = install(manager, announce(server, store, release_key, 1))
    assert record.state is S.PROBATION, record
    assert os.readlink(models(device) / "current") == "versions/1"
    assert manager.device_state.floor("starfish-cots") is None  # the floor rises only at commit
    assert manager.in_probation().version == 1
    manager.commit()
    assert manager.in_probation() is None
    assert manager.device_state.floor("starfish-cots") == 1
    assert manager.store.transitions(record.id) == [
        S.DOWNLOADING,
        S.VERIFYING,
        S.STAGING,
        S.CHECKING,
        S.SWAPPING,
        S.PROBATION,
        S.COMMITTED,
    ]
    assert manager.last_check is not None and manager.last_check.golden == "absent"
    record = install(manager, announce(server, store, release_key, 2))
    manager.commit()
    assert os.readlink(models(device) / "current") == "versions/2"
    assert sorted(p.name for p in (models(device) / "versions").iterdir()) == ["1", "2"]  # previous kept
    assert not any((models(device) / "downloads").iterdir())
    assert (S.COMMITTED, "committed") in events and any(e == "progress" for _, e in events)
    assert state_payload(manager.store.get(record.id))["state"] == "committed"
    # A replayed older announcement (signed, not expired) is a downgrade.
    with pytest.raises(errors.DowngradeRefused):
        manager.offer(announce(server, store, release_key, 1))
    with pytest.raises(errors.ReplayedAnnouncement):
        manager.offer(announce(server, store, release_key, 3, age_s=3600))
    manager.close()


def test_probation_failure_rolls_back_and_bad_version_is_not_retried(server, store, release_key, device, bundle_keys):
    manager = manager_for(device, bundle_keys)
    install(manager, announce(server, store, release_key, 1))
    manager.commit()
    raw2 = announce(server, store, release_key, 2)
    install(manager, raw2)
    record = manager.rollback("fps dropped below 50 % of the previous model")
    assert record.state is S.ROLLED_BACK and record.error_code == "probation_failed"
    assert os.readlink(models(device) / "current") == "versions/1"
    assert manager.device_state.floor("starfish-cots") == 1 and manager.device_state.is_bad("starfish-cots", 2)
    requests = len(server.requests)
    assert manager.offer(raw2) is None  # the still-retained announcement: already handled
    with pytest.raises(errors.KnownBadVersion):  # even a fresh announcement of v2
        manager.offer(announce(server, store, release_key, 2))
    assert len(server.requests) == requests
    manager.close()


def test_crash_loop_in_probation_rolls_back(server, store, release_key, device, bundle_keys):
    manager = manager_for(device, bundle_keys)
    install(manager, announce(server, store, release_key, 1))
    manager.commit()
    install(manager, announce(server, store, release_key, 2))
    manager.close()
    for _ in range(device[0].probation_max_restarts):
        restarted = manager_for(device, bundle_keys)
        assert restarted.resume().state is S.PROBATION
        restarted.close()
    restarted = manager_for(device, bundle_keys)
    record = restarted.resume()
    assert record.state is S.ROLLED_BACK and "crash loop" in record.error
    assert os.readlink(models(device) / "current") == "versions/1"
    restarted.close()


def test_wrong_sha256_fails_without_marking_bad(server, store, release_key, device, bundle_keys):
    manager = manager_for(device, bundle_keys)
    record = install(manager, announce(server, store, release_key, 1, sha256="f" * 64))
    assert record.state is S.FAILED and record.error_code == "download_hash_mismatch"
    assert not manager.device_state.is_bad("starfish-cots", 1)  # a transfer problem, not the release's fault
    assert not (models(device) / "current").exists()
    manager.close()


def test_tampered_tar_refused_and_marked_bad(server, store, release_key, device, bundle_keys):
    manager = manager_for(device, bundle_keys)
    # The release key vouches for these exact bytes (sha256 matches), but the bundle's own hashes do not.
    record = install(manager, announce(server, store, release_key, 2, file="v2-tampered.tar"))
    assert record.state is S.FAILED and record.error_code == "bundle_refused"
    assert "sha256" in record.error
    assert manager.device_state.is_bad("starfish-cots", 2)
    assert not (models(device) / "versions" / "2").exists()
    manager.close()


def test_mix_and_match_version_refused(server, store, release_key, device, bundle_keys):
    manager = manager_for(device, bundle_keys)
    record = install(manager, announce(server, store, release_key, 3, file="v2.tar"))
    assert record.state is S.FAILED and "mix-and-match" in record.error
    manager.close()


def test_404_reported_once_no_loop(server, store, release_key, device, bundle_keys):
    events: list = []
    manager = manager_for(device, bundle_keys, events)
    raw = announce(server, store, release_key, 1, file="gone.tar")
    record = install(manager, raw)
    assert record.state is S.FAILED and record.error_code == "download_refused"
    assert [s for _, _, s in server.requests] == [404]
    assert [e for _, e in events].count("failed") == 1
    assert manager.offer(raw) is None and manager.run() is None  # retained repeat: nothing, no request
    again = manager_for(device, bundle_keys)  # nor after a restart
    assert again.resume() is None and again.offer(raw) is None
    assert len(server.requests) == 1
    manager.close()
    again.close()


def test_expired_and_unsigned_open_no_update(server, store, release_key, device, bundle_keys):
    manager = manager_for(device, bundle_keys)
    with pytest.raises(errors.ExpiredAnnouncement):
        manager.offer(
            announce(
                server, store, release_key, 1, age_s=7200, expires_at=datetime.now(timezone.utc) - timedelta(seconds=5)
            )
        )
    data = json.loads(announce(server, store, release_key, 1))
    data["signatures"] = []
    with pytest.raises(errors.UnsignedAnnouncement):
        manager.offer(json.dumps(data).encode())
    assert manager.store.latest() is None and server.requests == []
    manager.close()


def test_slower_than_budget_fails_check_and_marks_bad(server, store, release_key, device, bundle_keys):
    manager = manager_for(device, bundle_keys, reference_latency_ms=lambda: 0.001)
    record = install(manager, announce(server, store, release_key, 1))
    assert record.state is S.FAILED and record.error_code == "check_failed" and "budget" in record.error
    assert manager.device_state.is_bad("starfish-cots", 1)
    assert not (models(device) / "current").exists()
    manager.close()


def test_swap_hook_failure_restores_previous(server, store, release_key, device, bundle_keys):
    manager = manager_for(device, bundle_keys)
    install(manager, announce(server, store, release_key, 1))
    manager.commit()

    def refuse(bundle):
        if bundle.manifest.version == 2:
            raise RuntimeError("out of GPU memory")

    manager.on_swap = refuse
    record = install(manager, announce(server, store, release_key, 2))
    assert record.state is S.ROLLED_BACK and record.error_code == "swap_failed"
    assert os.readlink(models(device) / "current") == "versions/1"
    manager.close()


# -- kill -9 ----------------------------------------------------------------------------------------------------


def child(spec: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.update_child", str(spec), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        text=True,
    )


def write_spec(tmp_path: Path, device, bundle_keys, announcement: bytes) -> Path:
    cfg, state_dir = device
    (tmp_path / "ann.json").write_bytes(announcement)
    spec = json.loads(cfg.model_dump_json())
    spec.update(
        state_dir=str(state_dir),
        bundle_keys=[str(bundle_keys.public)],
        device_id="reef-01",
        announcement=str(tmp_path / "ann.json"),
    )
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    return out.strip().splitlines()[-1]


@pytest.mark.slow
def test_kill_9_during_download_resumes(tmp_path, server, store, release_key, device, bundle_keys):
    server.faults["/v1.tar"] = "slow:400000"
    spec = write_spec(tmp_path, device, bundle_keys, announce(server, store, release_key, 1))
    proc = child(spec)
    part = models(device) / "downloads"
    assert wait_until(lambda: any(p.suffix == ".part" and p.stat().st_size > 100_000 for p in part.glob("*")), 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with DeviceState(device[1]):
        pass
    manager = manager_for(device, bundle_keys)
    assert manager.store.active().state is S.DOWNLOADING
    manager.close()
    server.faults.pop("/v1.tar")
    assert finish(child(spec)) == "FINAL probation"
    ranges = [r for path, r, _ in server.requests if path == "/v1.tar"]
    assert ranges[0] is None and ranges[-1] is not None and ranges[-1].startswith("bytes="), ranges
    assert os.readlink(models(device) / "current") == "versions/1"


@pytest.mark.slow
def test_kill_9_during_staging_leaves_one_consistent_state(tmp_path, server, store, release_key, device, bundle_keys):
    spec = write_spec(tmp_path, device, bundle_keys, announce(server, store, release_key, 1))
    proc = child(spec, "--stall-staging")
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line or line.startswith("UNPACKED"):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    versions = models(device) / "versions"
    leftovers = [p.name for p in versions.iterdir()]
    assert leftovers and all(name.startswith(".1.") for name in leftovers), leftovers  # half-staged, not in place
    assert not (models(device) / "current").exists()
    manager = manager_for(device, bundle_keys)
    assert manager.store.active().state is S.STAGING
    manager.close()
    assert finish(child(spec)) == "FINAL probation"
    assert [p.name for p in versions.iterdir()] == ["1"]
    assert os.readlink(models(device) / "current") == "versions/1"


@pytest.mark.slow
def test_kill_9_during_swap_resumes_to_probation(tmp_path, server, store, release_key, device, bundle_keys):
    manager = manager_for(device, bundle_keys)
    install(manager, announce(server, store, release_key, 1))
    manager.commit()
    manager.close()
    spec = write_spec(tmp_path, device, bundle_keys, announce(server, store, release_key, 2))
    proc = child(spec, "--stall-swap")
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line or line.startswith("SWAPPED"):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.readlink(models(device) / "current") == "versions/2"
    restarted = manager_for(device, bundle_keys)
    record = restarted.store.active()
    assert record.state is S.SWAPPING and record.previous_target == "versions/1"
    restarted.close()
    assert finish(child(spec)) == "FINAL probation"
    restarted = manager_for(device, bundle_keys)
    record = restarted.resume()
    assert record.state is S.PROBATION
    # Had probation failed now, the recorded previous target is where the device goes back to.
    restarted.rollback("probe: errors during probation")
    assert os.readlink(models(device) / "current") == "versions/1"
    restarted.close()


def test_worker_runs_off_thread_and_stop_pauses_download(server, store, release_key, device, bundle_keys):
    from edge_agent.update.worker import UpdateWorker

    refused: list = []
    server.faults["/v1.tar"] = "slow:100000"
    manager = manager_for(device, bundle_keys)
    worker = UpdateWorker(manager, on_refused=refused.append)
    worker.start()
    raw = announce(server, store, release_key, 1)
    started = time.monotonic()
    assert worker.submit(raw) and worker.submit(b"{not json")
    assert time.monotonic() - started < 0.1  # submit never blocks the caller
    assert wait_until(lambda: (manager.store.latest() or None) is not None and manager.store.latest().progress > 0, 30)
    worker.stop()
    assert not worker.alive
    assert manager.store.active().state is S.DOWNLOADING  # paused, not failed: resumes next start
    manager.close()
    server.faults.pop("/v1.tar")
    manager = manager_for(device, bundle_keys)
    worker = UpdateWorker(manager, on_refused=refused.append)
    worker.start()
    assert wait_until(lambda: manager.in_probation() is not None, 120)
    worker.submit(b"{not json")
    assert wait_until(lambda: len(refused) == 1, 10)  # the first worker stopped before it got to its queue
    assert refused[0]["error_code"] == "announcement_malformed"
    worker.stop()
    assert any(r and r.startswith("bytes=") for p, r, _ in server.requests if p == "/v1.tar")
    manager.close()


def test_golden_frames_checked_when_the_bundle_has_them(tmp_path, tiny_bundle, bundle_keys, device):
    import shutil

    import cv2
    import numpy as np

    from edge_agent.bundle import load_bundle
    from edge_agent.update.check import check_candidate
    from edge_agent.update.errors import CheckFailed

    cfg, state_dir = device
    bundle_dir = tmp_path / "golden-bundle"
    shutil.copytree(tiny_bundle.path, bundle_dir)
    frame = np.random.default_rng(0).integers(0, 255, (128, 224, 3), dtype=np.uint8)
    cv2.imwrite(str(bundle_dir / "golden_0.png"), frame)
    bundle = load_bundle(bundle_dir, [bundle_keys.public])
    # What this model really answers on the frame, recorded as the golden answer (as export would).
    from edge_agent.detectors.base import DetectorOptions, create_detector

    detector = create_detector(["onnxruntime"], bundle, None, DetectorOptions(state_dir=state_dir))
    got = detector.detect(frame)
    detector.close()
    truth = [{"box": [float(v) for v in box], "score": float(s)} for box, s in zip(got.boxes, got.scores, strict=True)]
    (bundle_dir / "golden.json").write_text(json.dumps({"frames": [{"file": "golden_0.png", "detections": truth}]}))
    report = check_candidate(bundle, cfg, state_dir=state_dir)
    assert report.golden == "matched" and report.golden_frames == 1
    wrong = truth + [{"box": [10.0, 10.0, 60.0, 60.0], "score": 0.99}]
    (bundle_dir / "golden.json").write_text(json.dumps({"frames": [{"file": "golden_0.png", "detections": wrong}]}))
    with pytest.raises(CheckFailed, match="golden frame 0"):
        check_candidate(bundle, cfg, state_dir=state_dir)
    (bundle_dir / "golden.json").write_text("{not json")
    with pytest.raises(CheckFailed, match="unusable"):
        check_candidate(bundle, cfg, state_dir=state_dir)
