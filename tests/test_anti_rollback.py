"""Anti-rollback in the agent: device state persists the highest accepted version per model, start-up refuses an
older (or known-bad) signed bundle unless an explicit, logged rollback is asked."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_agent.app import StartupError, build_agent, commit_model, load_detector
from edge_agent.config import load_config_data
from edge_agent.device_state import STATE_DB_NAME, DeviceState, DeviceStateError, RollbackRefused
from tests.helpers.agent import REPO_ROOT, agent_config, write_config
from tests.helpers.bundles import BundleKeys, rebundle


# -- the store itself ----------------------------------------------------------------------------------------------
def test_floor_only_rises_and_survives_a_reopen(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with DeviceState(state_dir) as state:
        assert state.floor("starfish-cots") is None
        assert state.raise_floor("starfish-cots", 5) == 5
        assert state.raise_floor("starfish-cots", 3) == 5  # never lowered
        assert state.raise_floor("other-model", 1) == 1  # per model name
    assert (state_dir.stat().st_mode & 0o777) == 0o700
    with DeviceState(state_dir) as again:  # a new process would see the same
        assert again.floor("starfish-cots") == 5 and again.floor("other-model") == 1
        again.mark_bad("starfish-cots", 6, "golden frames gave no detections")
        assert again.is_bad("starfish-cots", 6) and not again.is_bad("starfish-cots", 5)
    with DeviceState(state_dir) as third:
        assert third.bad_reason("starfish-cots", 6) == "golden frames gave no detections"


def test_check_rollback_refuses_older_and_bad_unless_asked(tmp_path: Path, caplog) -> None:
    with DeviceState(tmp_path / "state") as state:
        state.raise_floor("m", 5)
        state.check_rollback("m", 5)  # a restart of the running version
        state.check_rollback("m", 6)  # an upgrade
        with pytest.raises(RollbackRefused, match="v4 is older than v5"):
            state.check_rollback("m", 4)
        state.mark_bad("m", 7, "crashed in probation")
        with pytest.raises(RollbackRefused, match=r"marked bad on this device \(crashed in probation\)"):
            state.check_rollback("m", 7)
        with caplog.at_level(logging.WARNING, logger="edge_agent.device_state"):
            state.check_rollback("m", 4, allow_rollback=True)
        assert "explicit rollback" in caplog.text


def test_concurrent_raises_keep_the_highest(tmp_path: Path) -> None:
    with DeviceState(tmp_path / "state") as state:
        threads = [threading.Thread(target=state.raise_floor, args=("m", v)) for v in range(1, 41)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert state.floor("m") == 40


def test_state_dir_others_can_write_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    state_dir.chmod(0o777)
    with pytest.raises(DeviceStateError, match="writable by group or others"):
        DeviceState(state_dir)


# -- the agent with real signed bundles ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def versions(tiny_bundle, bundle_keys: BundleKeys, tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("versions")
    return {v: rebundle(tiny_bundle.path, root / f"v{v}", bundle_keys.private, version=v) for v in (1, 2)}


def _cfg(tmp_path: Path, bundle: Path, key: Path, source: str = "clip.mp4", **detector) -> dict:
    class _Bundle:
        path = bundle
        public_key = key

    return agent_config(tmp_path, _Bundle, source, 1, detector={"backends": ["onnxruntime"], **detector})


def test_start_up_refuses_an_older_signed_bundle(tmp_path: Path, versions, bundle_keys: BundleKeys, caplog) -> None:
    state_dir = tmp_path / "state"
    agent = build_agent(load_config_data(_cfg(tmp_path, versions[2], bundle_keys.public)))  # start v2: commit
    agent.slot.detector.close()
    for close in agent.closers:
        close()
    with DeviceState(state_dir) as state:
        assert state.floor("starfish-cots") == 2
    # v1 is validly signed, but older than what this device has run: refused.
    with pytest.raises(StartupError, match="v1 is older than v2.*--allow-rollback"):
        load_detector(load_config_data(_cfg(tmp_path, versions[1], bundle_keys.public)))
    # Asked for explicitly, the rollback runs, is logged, and does not lower the floor.
    rollback = load_config_data(_cfg(tmp_path, versions[1], bundle_keys.public, allow_rollback=True))
    with caplog.at_level(logging.WARNING):
        detector, _ = load_detector(rollback)
        assert commit_model(rollback, detector) == 2
    assert detector.describe()["version"] == 1
    assert "explicit rollback" in caplog.text
    detector.close()
    with DeviceState(state_dir) as state:
        assert state.floor("starfish-cots") == 2


def test_agent_run_exit_2_for_a_rollback_and_allow_rollback_flag(tmp_path: Path, versions, bundle_keys, clip) -> None:
    with DeviceState(tmp_path / "state") as state:
        state.raise_floor("starfish-cots", 2)
    config = write_config(tmp_path / "agent.yaml", _cfg(tmp_path, versions[1], bundle_keys.public, str(clip.path)))
    command = [sys.executable, "-m", "starfish_cli", "agent", "run", "--config", str(config), "--no-console"]
    refused = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "60"}
    )
    assert refused.returncode == 2, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "older than v2" in lines[0] and "Traceback" not in refused.stderr
    # With the flag it runs the clip to its end (no broker: counts stay in the outbox) and says it rolled back.
    allowed = subprocess.run(
        [*command, "--allow-rollback"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "explicit rollback" in allowed.stderr + allowed.stdout
    with DeviceState(tmp_path / "state") as state:
        assert state.floor("starfish-cots") == 2


def test_state_dir_inside_the_bundle_is_refused(tmp_path: Path, versions, bundle_keys) -> None:
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(versions[1], bundle)
    cfg = _cfg(tmp_path, bundle, bundle_keys.public)
    cfg["state_dir"] = str(bundle / "state")
    with pytest.raises(StartupError, match="inside the bundle"):
        load_detector(load_config_data(cfg))
    assert not (bundle / "state" / STATE_DB_NAME).exists()
