"""Agent configuration: the example validates, bad input names the field, env overrides the file, fuzzing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import EXAMPLE_YAML, AgentConfig, ConfigError, load_config, load_config_data
from tests.helpers.agent import REPO_ROOT


def _valid() -> dict[str, Any]:
    return {
        "device_id": "reef-01",
        "cameras": [{"id": "cam0", "source": 0}],
        "detector": {"bundle": "models/demo", "trusted_keys": ["k.pub"]},
    }


def test_example_is_valid_and_documented() -> None:
    cfg = load_config_data(yaml.safe_load(EXAMPLE_YAML))
    assert isinstance(cfg, AgentConfig) and cfg.device_id == "reef-01"
    assert "nvarguscamerasrc" in EXAMPLE_YAML and "STARFISH_" in EXAMPLE_YAML
    # Every field of every section carries a description (they become the documentation).
    for model in (AgentConfig, *(type(getattr(cfg, n)) for n in ("detector", "tracker", "snapshots"))):
        missing = [name for name, f in model.model_fields.items() if not f.description]
        assert not missing, f"{model.__name__}: {missing}"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c["cameras"][0].update(lop=True), "cameras.0.lop"),
        (lambda c: c.update(detectr={}), "detectr"),
        (lambda c: c["cameras"][0].update(target_fps=-3), "cameras.0.target_fps"),
        (lambda c: c["cameras"][0].update(source=-1), "cameras.0.source"),
        (lambda c: c["cameras"][0].update(id="cam/0"), "cameras.0.id"),
        (lambda c: c["cameras"].append({"id": "cam0", "source": 1}), "camera ids must be unique"),
        (lambda c: c.update(cameras=[]), "cameras"),
        (lambda c: c["detector"].update(backends=["openvino"]), "detector.backends.0"),
        (lambda c: c["detector"].update(backends=["onnxruntime", "onnxruntime"]), "detector.backends"),
        (lambda c: c["detector"].update(score_threshold=1.5), "detector.score_threshold"),
        (lambda c: c["detector"].pop("trusted_keys"), "detector.trusted_keys"),
        (lambda c: c.update(mqtt={"port": 70000}), "mqtt.port"),
        (lambda c: c.update(mqtt={"username": "u"}), "password"),
        (lambda c: c.update(tracker={"min_hits": "three"}), "tracker.min_hits"),
        (lambda c: c.update(device_id="has space"), "device_id"),
    ],
)
def test_bad_config_names_the_field(change, field: str) -> None:
    data = _valid()
    change(data)
    with pytest.raises(ConfigError) as info:
        load_config_data(data)
    assert field in str(info.value)


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({**_valid(), "mqtt": {"host": "from-file", "port": 1999}}))
    monkeypatch.setenv("STARFISH_MQTT__HOST", "from-env")
    monkeypatch.setenv("STARFISH_DEVICE_ID", "reef-env")
    monkeypatch.setenv("STARFISH_DETECTOR__BACKENDS", '["onnxruntime"]')
    cfg = load_config(path)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.device_id) == ("from-env", 1999, "reef-env")  # merged, not replaced
    assert cfg.detector.backends == ["onnxruntime"]
    monkeypatch.setenv("STARFISH_MQTT__PORT", "not-a-port")
    with pytest.raises(ConfigError, match="mqtt.port"):
        load_config(path)


def test_unreadable_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("device_id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listy)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    section=st.sampled_from(
        [
            "device_id",
            "cameras",
            "detector",
            "tracker",
            "mqtt",
            "snapshots",
            "outbox_path",
            "unknown_key",
            "console_interval_s",
        ]
    ),
    value=_values,
)
def test_fuzzed_config_fails_only_with_config_error(section: str, value: Any) -> None:
    """Whatever garbage lands in a section, the loader either accepts it or raises ConfigError naming the field."""
    data = _valid()
    data[section] = value
    try:
        load_config_data(data)
    except ConfigError as exc:
        assert section in str(exc) or "camera ids" in str(exc)


def test_cli_example_and_check(tmp_path: Path) -> None:
    example = subprocess.run(
        [sys.executable, "-m", "starfish_cli", "agent", "config", "--example"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert example.returncode == 0 and yaml.safe_load(example.stdout)["device_id"] == "reef-01"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**_valid(), "cameras": [{"id": "cam0", "source": 0, "fps": 3}]}))
    check = subprocess.run(
        [sys.executable, "-m", "starfish_cli", "agent", "config", "--check", str(bad)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 2 and "cameras.0.fps" in check.stderr
    run = subprocess.run(
        [sys.executable, "-m", "starfish_cli", "agent", "run", "--config", str(bad)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "cameras.0.fps" in run.stderr


def test_summary_peak_rss_is_this_process_high_water_mark() -> None:
    from edge_agent.process_memory import peak_rss_mb

    psutil = pytest.importorskip("psutil")
    peak = peak_rss_mb()
    # The high-water mark is at least the current resident size and far below the machine's memory.
    assert psutil.Process().memory_info().rss / 2**20 - 1 <= peak < psutil.virtual_memory().total / 2**20


def _runtime_cases(tmp_path: Path) -> dict[str, tuple[dict[str, Any], dict[str, str], str]]:
    """name -> (config change, environment, what the one-line error must name)."""
    not_pem = tmp_path / "ca.pem"  # written by the test: "this is not a certificate"
    a_file = tmp_path / "a-file"  # written by the test: a plain file where a directory would have to be
    return {
        "reserved camera id": ({"cameras": [{"id": "status", "source": 0}]}, {}, "reserved"),
        "prefix with +": ({"mqtt": {"topic_prefix": "site/+/starfish"}}, {}, "mqtt.topic_prefix"),
        "prefix with #": ({"mqtt": {"topic_prefix": "#"}}, {}, "mqtt.topic_prefix"),
        "prefix with leading /": ({"mqtt": {"topic_prefix": "/starfish"}}, {}, "mqtt.topic_prefix"),
        "fleet with /": ({"mqtt": {"fleet": "reef/north"}}, {}, "mqtt.fleet"),
        "discovery prefix #": ({"mqtt": {"discovery": {"prefix": "#"}}}, {}, "mqtt.discovery.prefix"),
        "unset password_env": (
            {"mqtt": {"username": "agent", "password_env": "STARFISH_TEST_UNSET_PW"}},
            {},
            "STARFISH_TEST_UNSET_PW",
        ),
        "non-PEM CA file": ({"mqtt": {"tls": {"ca_file": str(not_pem)}}}, {}, "PEM"),
        "outbox under a file": ({"outbox_path": str(a_file / "outbox.db")}, {}, "outbox_path"),
        "missing release key": (
            {"updates": {"models_dir": str(tmp_path / "models"), "release_keys": [str(tmp_path / "no.pub")]}},
            {},
            "updates.release_keys.0",
        ),
        "malformed env list": ({}, {"STARFISH_DETECTOR__BACKENDS": "[onnxruntime"}, "environment"),
        "malformed env port": ({}, {"STARFISH_MQTT__PORT": "18 83"}, "mqtt.port"),
    }


_CASE_NAMES = list(_runtime_cases(Path("/nonexistent")))


@pytest.mark.parametrize("case", _CASE_NAMES)
def test_check_catches_what_would_crash_at_run_time(case: str, tmp_path: Path) -> None:
    """Each of these once passed `--check` and ended in a traceback (exit 1) at run time: a systemd crash loop."""
    change, env, needle = _runtime_cases(tmp_path)[case]
    (tmp_path / "ca.pem").write_text("this is not a certificate\n")
    (tmp_path / "a-file").write_text("x")
    data = {**_valid(), "outbox_path": str(tmp_path / "outbox" / "o.db")}
    for key, value in change.items():
        data[key] = value
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STARFISH_")}
    environ.update(env)
    for command in (["config", "--check", str(path)], ["run", "--config", str(path), "--no-console"]):
        proc = subprocess.run(
            [sys.executable, "-m", "starfish_cli", "agent", *command],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=environ,
        )
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, (command, proc.returncode, proc.stderr[-2000:])
        assert len(lines) == 1 and needle in lines[0], (command, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr


def test_camera_id_rule_is_the_topics_rule() -> None:
    # README: ids are 1-64 characters from A-Z a-z 0-9 _ . -; status, stats and model are reserved.
    for good in ("cam.1", "reef_north-2", "a" * 64):
        data = _valid()
        data["cameras"] = [{"id": good, "source": 0}]
        assert load_config_data(data).cameras[0].id == good
    for bad in ("status", "stats", "model", "cam/1", "cam+", "", "a" * 65):
        data = _valid()
        data["cameras"] = [{"id": bad, "source": 0}]
        with pytest.raises(ConfigError, match="cameras.0.id"):
            load_config_data(data)
    data = _valid()
    data["cameras"] = [{"id": "cam.1", "source": 0}, {"id": "cam_1", "source": 1}]
    with pytest.raises(ConfigError, match="Home Assistant"):
        load_config_data(data)


def _starfish(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "starfish_cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
    )


def _repo_like(tmp_path: Path) -> Path:
    """A working directory that looks like the repository root (models/ there) but keeps the outbox out of it."""
    if not (REPO_ROOT / "models" / "demo" / "bundle" / "manifest.json").is_file():
        pytest.skip("models/demo/bundle is not in this checkout")
    root = tmp_path / "root"
    root.mkdir()
    (root / "models").symlink_to(REPO_ROOT / "models")
    return root


def test_example_as_written_checks_bundle_and_keys(tmp_path: Path) -> None:
    root = _repo_like(tmp_path)
    example = _starfish("agent", "config", "--example", cwd=root)
    (root / "agent.yaml").write_text(example.stdout)
    check = _starfish("agent", "config", "--check", "agent.yaml", cwd=root)
    assert check.returncode == 0, check.stderr
    assert "bundle models/demo/bundle verifies with 1 trusted key(s)" in check.stdout
    assert not (root / "state").exists(), "--check must not create anything"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["detector"].update(trusted_keys=["models/demo/demo_public_key.pem"]),
            "detector.trusted_keys.0: public key models/demo/demo_public_key.pem does not exist",
        ),
        (lambda d: d["detector"].update(bundle="models/demo/nothing"), "detector.bundle: models/demo/nothing does not"),
        (lambda d: d["detector"].update(bundle="models/demo"), "detector.bundle: models/demo refused"),
        (lambda d: d["detector"].update(trusted_keys=["other.pub"]), "detector.bundle: models/demo/bundle refused"),
        (lambda d: d["detector"].update(variant="fp8"), "detector.variant: 'fp8' is not in the bundle"),
        (lambda d: d.update(outbox_path="agent.yaml/outbox.sqlite3"), "agent.yaml is not a directory"),
    ],
)
def test_check_refuses_what_would_not_start(tmp_path: Path, edit, expected: str) -> None:
    from edge_agent.bundle import generate_keypair

    root = _repo_like(tmp_path)
    generate_keypair(tmp_path / "other.pem", root / "other.pub")
    data = yaml.safe_load(EXAMPLE_YAML)
    edit(data)
    (root / "agent.yaml").write_text(yaml.safe_dump(data))
    check = _starfish("agent", "config", "--check", "agent.yaml", cwd=root)
    assert check.returncode == 2, check.stdout + check.stderr
    assert expected in check.stderr
    assert "Traceback" not in check.stderr


@pytest.mark.mqtt
@pytest.mark.slow
def test_example_config_runs_end_to_end_against_a_real_broker(tmp_path: Path, mosquitto, mqtt_subscriber) -> None:
    """The example file as printed, run from a repository-like root; only the camera and broker port are changed,
    through the documented environment overrides."""
    import json

    from tests.helpers.agent import make_clip

    root = _repo_like(tmp_path)
    clip = make_clip(tmp_path / "clip.mp4", frames=8, width=640, height=360)
    (root / "agent.yaml").write_text(_starfish("agent", "config", "--example", cwd=root).stdout)
    sub = mqtt_subscriber(mosquitto, ["starfish/reef-01/#"])
    camera = [{"id": "cam0", "source": str(clip.path), "read_mode": "every_frame"}]
    run = _starfish(
        "agent",
        "run",
        "--config",
        "agent.yaml",
        "--no-console",
        cwd=root,
        timeout=300,
        env={
            "STARFISH_MQTT__PORT": str(mosquitto.port),
            "STARFISH_CAMERAS": json.dumps(camera),
            "STARFISH_DETECTOR__THREADS": "1",
        },
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (root / "state" / "outbox.sqlite3").is_file()
    from tests.helpers.mqtt_broker import wait_until

    assert wait_until(lambda: len(sub.on("/cam0/counts")) == clip.frames, 10), sub.topics()
    assert [m.payload for m in sub.on("reef-01/status")][-1] == b"stopped"
    counts = [m.json() for m in sub.on("/cam0/counts")]
    assert [c["frame"] for c in counts] == list(range(clip.frames))
    assert {c["model"]["name"] for c in counts} == {"starfish-cots"}
