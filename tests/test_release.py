"""`starfish release`: the bundle goes into the store verified, the announcement is signed, devices can fetch it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_agent.bundle import generate_keypair, load_bundle, load_public_key
from edge_agent.bundle.files import sha256_file
from edge_agent.update.announcement import parse_announcement
from edge_agent.update.download import download
from starfish_cli import app
from tests.helpers.http_server import BundleServer
from tests.helpers.mqtt_broker import wait_until

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo" / "bundle"
DEMO_KEY = ROOT / "models" / "demo" / "demo_key.pub"


@pytest.fixture()
def release_key(tmp_path: Path) -> tuple[Path, Path]:
    generate_keypair(tmp_path / "release.pem", tmp_path / "release.pub")
    return tmp_path / "release.pem", tmp_path / "release.pub"


def run_release(*args: str):
    return CliRunner().invoke(app, ["release", *map(str, args)])


def test_release_stores_tar_and_prints_signed_announcement(tmp_path, release_key):
    store = tmp_path / "store"
    store.mkdir()
    with BundleServer(store) as server:
        result = run_release(
            DEMO,
            "--store",
            store,
            "--url-base",
            f"http://127.0.0.1:{server.port}/",
            "--key",
            release_key[0],
            "--bundle-key",
            DEMO_KEY,
            "--platform",
            "linux-aarch64",
            "--platform",
            "linux-x86_64",
            "--wave",
            "1",
            "--device",
            "reef-01",
            "--out",
            tmp_path / "ann.json",
        )
        assert result.exit_code == 0, result.output
        raw = result.stdout.strip().encode()
        assert (tmp_path / "ann.json").read_bytes() == raw
        signed = parse_announcement(raw, [load_public_key(release_key[1])])
        ann = signed.announcement
        tar = store / f"starfish-cots-{ann.version}.tar"
        assert ann.url == server.url(tar.name) and ann.sha256 == sha256_file(tar) and ann.size == tar.stat().st_size
        assert ann.platforms == ("linux-aarch64", "linux-x86_64") and ann.rollout.devices == ("reef-01",)
        assert not [p for p in store.iterdir() if p.name.startswith(".")]  # no temporary left behind
        # A device fetches exactly those bytes and its loader accepts them.
        got = download(ann.url, tmp_path / "device" / "b.tar", size=ann.size, sha256=ann.sha256)
        assert load_bundle(got.path, [DEMO_KEY]).manifest.version == ann.version


def test_release_refuses_bad_input_with_one_line(tmp_path, release_key):
    other = tmp_path / "other"
    generate_keypair(other / "o.pem", other / "o.pub")
    result = run_release(
        DEMO,
        "--store",
        tmp_path / "s",
        "--url-base",
        "http://x/",
        "--key",
        release_key[0],
        "--bundle-key",
        other / "o.pub",
    )
    assert result.exit_code == 2 and "release refused" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())
    tampered = tmp_path / "tampered"
    shutil.copytree(DEMO, tampered)
    data = json.loads((tampered / "manifest.json").read_text())
    data["score_threshold"] = 0.1
    (tampered / "manifest.json").write_text(json.dumps(data))
    result = run_release(
        tampered,
        "--store",
        tmp_path / "s",
        "--url-base",
        "http://x/",
        "--key",
        release_key[0],
        "--bundle-key",
        DEMO_KEY,
    )
    assert result.exit_code == 2 and "signature" in result.output
    result = run_release(
        DEMO, "--store", tmp_path / "s", "--url-base", "ftp://x/", "--key", release_key[0], "--bundle-key", DEMO_KEY
    )
    assert result.exit_code == 2 and "url" in result.output


@pytest.mark.mqtt
def test_release_publishes_retained_on_fleet_topic(tmp_path, release_key, mosquitto, mqtt_subscriber):
    result = run_release(
        DEMO,
        "--store",
        tmp_path / "s",
        "--url-base",
        "http://127.0.0.1:1/",
        "--key",
        release_key[0],
        "--bundle-key",
        DEMO_KEY,
        "--broker",
        f"127.0.0.1:{mosquitto.port}",
        "--fleet",
        "survey-a",
    )
    assert result.exit_code == 0, result.output
    # A device that subscribes later still gets it: retained.
    sub = mqtt_subscriber(mosquitto, ["starfish/fleet/+/model"])
    assert wait_until(lambda: sub.on("/fleet/survey-a/model"), 10)
    message = sub.on("/fleet/survey-a/model")[0]
    assert message.retain
    assert parse_announcement(message.payload, [load_public_key(release_key[1])]).announcement.name == "starfish-cots"


def test_store_bundle_tar_carries_the_signed_golden_frames(tmp_path, tiny_bundle, bundle_keys):
    import tarfile

    from edge_agent.bundle import load_public_key
    from export.release import store_bundle
    from tests.helpers.bundles import rebundle, record_golden_for

    source = rebundle(
        tiny_bundle.path, tmp_path / "golden", bundle_keys.private, golden=record_golden_for(tiny_bundle.path)
    )
    (source / "stray.txt").write_text("not signed")  # an unsigned extra never travels
    tar, name, version, _ = store_bundle(source, tmp_path / "store", [load_public_key(bundle_keys.public)])
    with tarfile.open(tar) as archive:
        names = archive.getnames()
    assert names == [
        "manifest.json",
        "manifest.sig",
        "fp32.onnx",
        "golden.json",
        "golden_0.png",
        "golden_1.png",
        "golden_2.png",
    ]
    golden = load_bundle(tar, [bundle_keys.public]).read_golden()
    assert golden is not None and set(golden[0].variants) == {"fp32"} and len(golden[1]) == 3
