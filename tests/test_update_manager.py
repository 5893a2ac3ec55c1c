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
from tests.helpers.bundles import GOLDEN_THRESHOLD, golden_bundle, rebundle, shift_boxes
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


# -- golden frames ------------------------------------------------------------------------------------------------
def confident(bundle_dir: Path) -> int:
    spec = json.loads((bundle_dir / "golden.json").read_text())
    return sum(d["score"] >= GOLDEN_THRESHOLD + 0.1 for f in spec["variants"]["fp32"]["detections"] for d in f)


def test_signed_golden_frames_checked_with_a_tolerance_band(tmp_path, tiny_bundle, bundle_keys, device):
    import shutil

    from edge_agent.bundle import load_bundle
    from edge_agent.update.check import check_candidate
    from edge_agent.update.errors import CheckFailed

    cfg, state_dir = device
    key = bundle_keys.private

    def check(dest: Path, edit=None):
        bundle_dir = golden_bundle(tiny_bundle.path, tmp_path / dest, key, edit=edit)
        return check_candidate(load_bundle(bundle_dir, [bundle_keys.public]), cfg, state_dir=state_dir)

    good = golden_bundle(tiny_bundle.path, tmp_path / "good", key)
    assert confident(good) > 0  # otherwise nothing below would be compared
    report = check_candidate(load_bundle(good, [bundle_keys.public]), cfg, state_dir=state_dir)
    assert report.golden == "matched" and report.golden_frames == 3 and report.golden_variant == "fp32"
    assert report.golden_confident == confident(good)

    def noisy(spec: dict) -> None:  # another back end's scores, within the tolerance, plus a borderline box
        for frame in spec["variants"]["fp32"]["detections"]:
            for d in frame:
                d["score"] = min(1.0, d["score"] + 0.05)
        spec["variants"]["fp32"]["detections"][0].append({"box": [1.0, 1.0, 30.0, 30.0], "score": 0.45, "label": 1})

    assert check("noisy", noisy).golden == "matched"
    with pytest.raises(CheckFailed, match=r"golden frame 0 \(golden_0.png\): expected detection .* not found"):
        check("shifted", shift_boxes)

    def forgotten(spec: dict) -> None:
        spec["variants"]["fp32"]["detections"][1] = []

    with pytest.raises(CheckFailed, match=r"golden frame 1 .*unexpected detection"):
        check("forgotten", forgotten)

    def other_variant(spec: dict) -> None:
        spec["variants"] = {"int8": spec["variants"].pop("fp32")}

    with pytest.raises(CheckFailed, match="variants the bundle lacks"):
        check("other-variant", other_variant)
    # A schema-2 bundle (no golden frames) still passes with golden "absent"; a golden.json planted beside its
    # signed files is not trusted, so not used.
    old = rebundle(tiny_bundle.path, tmp_path / "schema-2", key, schema_version=2)
    shutil.copy(good / "golden.json", old / "golden.json")
    shutil.copy(good / "golden_0.png", old / "golden_0.png")
    report = check_candidate(load_bundle(old, [bundle_keys.public]), cfg, state_dir=state_dir)
    assert report.golden == "absent" and report.golden_frames == 0 and report.golden_variant is None
    # The variant the agent is configured to run is the one loaded (and whose expectations count): here none.
    wanted = cfg.model_copy(update={"variant": "int8"})
    with pytest.raises(CheckFailed, match="does not load: .*no variant 'int8'"):
        check_candidate(load_bundle(good, [bundle_keys.public]), wanted, state_dir=state_dir)


def test_a_golden_image_altered_after_signing_is_refused_by_the_loader(tmp_path, tiny_bundle, bundle_keys):
    import shutil

    from edge_agent.bundle import HashMismatchError, load_bundle

    good = golden_bundle(tiny_bundle.path, tmp_path / "good", bundle_keys.private)
    for name in ("golden_1.png", "golden.json"):
        bad = tmp_path / f"bad-{name}"
        shutil.copytree(good, bad)
        data = bytearray((bad / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (bad / name).write_bytes(bytes(data))
        with pytest.raises(HashMismatchError, match=f"golden: sha256 of {name}"):
            load_bundle(bad, [bundle_keys.public])


@pytest.fixture(scope="module")
def golden_store(tmp_path_factory, tiny_bundle, bundle_keys):
    """v1 (no golden frames), v2 (validly signed, golden frames of another model), v3 (matching golden frames)."""
    root = tmp_path_factory.mktemp("golden-store")
    work = tmp_path_factory.mktemp("golden-bundles")
    key = bundle_keys.private
    tar_dir(rebundle(tiny_bundle.path, work / "v1", key, version=1), root / "v1.tar")
    tar_dir(
        golden_bundle(tiny_bundle.path, work / "v2", key, shift_boxes, version=2, parent_version=1), root / "v2.tar"
    )
    tar_dir(golden_bundle(tiny_bundle.path, work / "v3", key, version=3, parent_version=1), root / "v3.tar")
    return root


def test_validly_signed_model_with_mismatched_golden_frames_is_refused(golden_store, release_key, device, bundle_keys):
    reports: list = []
    manager = manager_for(device, bundle_keys)
    manager.report = lambda record, details: reports.append((record.state, details["event"], record.error))
    with BundleServer(golden_store) as server:
        install(manager, announce(server, golden_store, release_key, 1))
        manager.commit()
        assert manager.last_check is not None and manager.last_check.golden == "absent"
        record = install(manager, announce(server, golden_store, release_key, 2))
        assert record.state is S.FAILED and record.error_code == "check_failed"
        assert "golden frame 0" in record.error and "not found" in record.error
        assert reports[-1] == (S.FAILED, "failed", record.error)  # what `…/model/result` carries
        payload = state_payload(manager.store.get(record.id))
        assert payload["state"] == "failed" and payload["error_code"] == "check_failed"
        assert os.readlink(models(device) / "current") == "versions/1"  # the old model keeps running
        assert manager.device_state.floor("starfish-cots") == 1 and manager.device_state.is_bad("starfish-cots", 2)
        record = install(manager, announce(server, golden_store, release_key, 3))
        assert record.state is S.PROBATION, record
        check = manager.last_check
        assert check is not None and check.golden == "matched" and check.golden_frames == 3
        assert check.as_dict()["golden_variant"] == "fp32"
        swapping = [r for r in reports if r[1] == "swapping"]
        assert swapping and os.readlink(models(device) / "current") == "versions/3"
    manager.close()


def test_the_staging_check_loads_the_candidate_with_the_agents_detector_settings(tmp_path, tiny_bundle, release_key):
    """Variant, back ends, threads and engine cache come from the agent's `detector` block (the engine a TensorRT
    check builds must be where the swap looks); its score-threshold override does not (the check judges the model
    at the bundle's own thresholds)."""
    from edge_agent.config import load_config_data
    from edge_agent.update.runtime import AgentUpdates
    from tests.helpers.agent import agent_config

    data = agent_config(tmp_path, tiny_bundle, 0, 1883)
    data["detector"].update(
        backends=["onnxruntime"], variant="fp32", threads=1, engine_cache_dir=str(tmp_path / "engines")
    )
    data["detector"]["score_threshold"] = 0.9
    data["updates"] = {"models_dir": str(tmp_path / "models"), "release_keys": [str(release_key[1])]}
    cfg = load_config_data(data)
    updates = AgentUpdates(cfg, make_detector=lambda bundle: None, agent_version="0")  # type: ignore[arg-type]
    try:
        check = updates.ucfg
        assert (check.backends, check.variant, check.threads) == (["onnxruntime"], "fp32", 1)
        assert check.engine_cache_dir == tmp_path / "engines"
        assert not hasattr(check, "score_threshold")
    finally:
        updates.close()


def test_the_staging_check_refuses_a_candidate_the_memory_cannot_hold(tmp_path, tiny_bundle, device):
    """Both models stay loaded through probation: the check measures what loading and running the candidate took
    and what the system still has available, and refuses past either budget, naming it."""
    from edge_agent.bundle import load_bundle
    from edge_agent.update.check import CheckReport, _check_memory, check_candidate
    from edge_agent.update.errors import CheckFailed

    cfg, state_dir = device
    bundle = load_bundle(tiny_bundle.path, [tiny_bundle.public_key])
    report = check_candidate(bundle, cfg, state_dir=state_dir)
    assert report.available_mb > cfg.min_available_mb and "memory_mb" in report.as_dict()
    # No machine has a petabyte free: the same candidate is refused when that much must stay available.
    with pytest.raises(CheckFailed, match=r"only \d+ MB of memory is available; at least 1000000000 MB must be"):
        check_candidate(bundle, cfg.model_copy(update={"min_available_mb": 1e9}), state_dir=state_dir)
    # The growth cap, on the figures a check measured (a real candidate's growth depends on what ran before it).
    capped = cfg.model_copy(update={"memory_budget_mb": 100.0})
    _check_memory(CheckReport(memory_mb=99.0, available_mb=4096.0), capped)
    with pytest.raises(CheckFailed, match="grew the agent's memory by 180 MB; the budget is 100 MB"):
        _check_memory(CheckReport(memory_mb=180.0, available_mb=4096.0), capped)
