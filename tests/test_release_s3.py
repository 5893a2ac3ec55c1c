"""`starfish release --store s3://bucket/prefix`: boto3 uploads the verified .tar, devices fetch it over plain HTTP.

The S3 side is moto's server mode (`tests/helpers/s3.py`): an S3 *emulator* speaking the real S3 protocol over real
HTTP on 127.0.0.1 — no real AWS is reachable here, and boto3's whole configuration chain is pointed at the
emulator. The device side is the agent's own downloader (`edge_agent.update.download`, urllib3, no boto3) fetching
the announced URL from that server. The demo bundle (25 MB) is above boto3's 8 MB multipart threshold, so these
releases go through CreateMultipartUpload / UploadPart / CompleteMultipartUpload. ``release_key`` is the OTA
helpers' announcement key pair (tests/helpers/ota.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from edge_agent.bundle import load_bundle, load_private_key, load_public_key
from edge_agent.bundle.files import sha256_file
from edge_agent.update.announcement import parse_announcement
from edge_agent.update.download import download, part_path
from export.release import make_release, store_bundle
from export.s3_store import CONTENT_TYPE, S3Store, StoreError
from starfish_cli import app
from tests.helpers.bundles import rebundle
from tests.helpers.mqtt_broker import wait_until
from tests.helpers.ota import DEVICE, FLEET, counts, current, events, start_agent
from tests.helpers.s3 import S3Server, aws_env

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo" / "bundle"
DEMO_KEY = ROOT / "models" / "demo" / "demo_key.pub"


def run_release(*args: object):
    return CliRunner().invoke(app, ["release", *map(str, args)])


def released(result, release_pub: Path):
    assert result.exit_code == 0, result.output
    return parse_announcement(result.stdout.strip().encode(), [load_public_key(release_pub)]).announcement


def objects(s3: S3Server) -> list[str]:
    return [o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])]


def assert_one_line_refusal(result, *needles: str) -> None:
    """Exit 2, no traceback, and the reason on the last line of stderr (the lines above it are log records)."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.stdout == ""  # no announcement
    last = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last


def test_presigned_release_is_fetched_by_the_device_with_range_resume(s3, tmp_path, release_key):
    result = run_release(
        DEMO,
        "--store",
        f"s3://{s3.bucket}/fleet-a/",
        "--s3-endpoint-url",
        s3.endpoint,
        "--presign",
        7 * 24 * 3600,
        "--key",
        release_key[0],
        "--bundle-key",
        DEMO_KEY,
    )
    ann = released(result, release_key[1])
    key = f"fleet-a/starfish-cots-{ann.version}.tar"
    assert objects(s3) == [key]
    head = s3.client.head_object(Bucket=s3.bucket, Key=key)
    assert head["ContentLength"] == ann.size and head["Metadata"] == {"sha256": ann.sha256}
    assert head["ContentType"] == CONTENT_TYPE
    url = urlsplit(ann.url)
    query = parse_qs(url.query)
    assert f"{url.scheme}://{url.netloc}" == s3.endpoint and url.path == f"/{s3.bucket}/{key}"
    assert query["X-Amz-Expires"] == ["604800"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    # The device resumes a partial download (a Range request on the presigned URL) and gets exactly the bytes.
    dest = tmp_path / "device" / "b.tar"
    dest.parent.mkdir()
    reference = store_bundle(DEMO, tmp_path / "local", [load_public_key(DEMO_KEY)])[0]
    part_path(dest).write_bytes(reference.read_bytes()[:100_000])
    got = download(ann.url, dest, size=ann.size, sha256=ann.sha256)
    assert got.resumed_from == 100_000 and sha256_file(got.path) == ann.sha256 == sha256_file(reference)
    assert load_bundle(got.path, [DEMO_KEY]).manifest.version == ann.version


def test_url_base_release_uses_the_standard_aws_configuration(s3, tmp_path, release_key):
    # No --s3-endpoint-url: boto3 finds the endpoint (AWS_ENDPOINT_URL), region and keys in its default chain.
    url_base = f"{s3.endpoint}/{s3.bucket}/"  # a public bucket, path-style; a CDN would stand here
    result = run_release(
        DEMO, "--store", f"s3://{s3.bucket}", "--url-base", url_base, "--key", release_key[0], "--bundle-key", DEMO_KEY
    )
    ann = released(result, release_key[1])
    name = f"starfish-cots-{ann.version}.tar"
    assert ann.url == f"{url_base}{name}" and objects(s3) == [name]
    got = download(ann.url, tmp_path / "device" / "b.tar", size=ann.size, sha256=ann.sha256)
    assert load_bundle(got.path, [DEMO_KEY]).manifest.version == ann.version


def test_missing_bucket_and_missing_credentials_are_one_line_errors(s3, tmp_path, release_key, monkeypatch):
    common = ("--url-base", "https://cdn.example.org/", "--key", release_key[0], "--bundle-key", DEMO_KEY)
    result = run_release(DEMO, "--store", "s3://no-such-bucket/x", "--s3-endpoint-url", s3.endpoint, *common)
    assert_one_line_refusal(result, "release refused", "no-such-bucket", "does not exist")
    aws_env(monkeypatch, tmp_path, s3.endpoint, credentials=False)
    result = run_release(DEMO, "--store", f"s3://{s3.bucket}/x", *common)
    assert_one_line_refusal(result, "release refused", "no AWS credentials")
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    result = run_release(DEMO, "--store", f"s3://{s3.bucket}/x", *common)
    assert_one_line_refusal(result, "release refused", "cannot set up the S3 client", "no-such-profile")
    assert objects(s3) == []


def test_url_choices_that_devices_could_not_use_are_refused_before_uploading(s3, release_key):
    pub = release_key[1]
    common = ("--s3-endpoint-url", s3.endpoint, "--key", release_key[0], "--bundle-key", DEMO_KEY)
    store = f"s3://{s3.bucket}/p"
    # Neither a public URL nor a presigned one: devices cannot fetch s3:// (no boto3 on the device).
    assert_one_line_refusal(run_release(DEMO, "--store", store, *common), "--url-base", "--presign")
    both = ("--url-base", "https://cdn.example.org/", "--presign", "3600")
    assert_one_line_refusal(run_release(DEMO, "--store", store, *both, *common), "one of")
    # SigV4 caps a presigned URL at 7 days; a shorter one must still outlive the announcement.
    assert_one_line_refusal(run_release(DEMO, "--store", store, "--presign", 604801, *common), "7-day")
    assert_one_line_refusal(
        run_release(DEMO, "--store", store, "--presign", 3600, *common), "would expire before the announcement"
    )
    assert objects(s3) == []
    # An hour's announcement with an hour's URL is fine.
    ann = released(run_release(DEMO, "--store", store, "--presign", 3600, "--expires-days", 1 / 24, *common), pub)
    assert objects(s3) == [f"p/starfish-cots-{ann.version}.tar"]


def test_s3_options_on_a_directory_store_are_refused(tmp_path, release_key):
    common = ("--url-base", "http://127.0.0.1:1/", "--key", release_key[0], "--bundle-key", DEMO_KEY)
    result = run_release(DEMO, "--store", tmp_path / "s", "--s3-endpoint-url", "http://127.0.0.1:1", *common)
    assert_one_line_refusal(result, "for an s3:// store only")
    assert_one_line_refusal(run_release(DEMO, "--store", tmp_path / "s", "--presign", 60, *common), "s3:// store only")
    assert not (tmp_path / "s").exists()


def test_an_object_that_is_not_what_was_uploaded_is_never_announced(s3, release_key):
    """A second writer replaces the key between the upload and the check: HeadObject sees it, nothing is signed."""
    store = S3Store.from_url(f"s3://{s3.bucket}/race", s3.endpoint)
    key = f"race/starfish-cots-{load_bundle(DEMO, [DEMO_KEY]).manifest.version}.tar"

    def overwrite(**_kwargs: object) -> None:
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"someone else's tar")

    store.client.meta.events.register("after-call.s3.CompleteMultipartUpload", overwrite)
    store.client.meta.events.register("after-call.s3.PutObject", overwrite)
    with pytest.raises(StoreError, match="is not this bundle"):
        make_release(
            DEMO,
            store=store,
            url_base="https://cdn.example.org/",
            release_key=load_private_key(release_key[0]),
            bundle_keys=[load_public_key(DEMO_KEY)],
        )
    # The other writer's object is left alone (it is not ours to delete).
    assert s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read() == b"someone else's tar"


def test_a_url_presigned_with_temporary_credentials_is_released_with_a_warning(s3, release_key, monkeypatch, caplog):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token")  # an STS session: the URL dies with it
    release = make_release(
        DEMO,
        store=S3Store.from_url(f"s3://{s3.bucket}/sts", s3.endpoint),
        url_base=None,
        presign_s=604800,
        release_key=load_private_key(release_key[0]),
        bundle_keys=[load_public_key(DEMO_KEY)],
    )
    assert "X-Amz-Security-Token=session-token" in release.announcement.url
    assert release.location == f"s3://{s3.bucket}/sts/starfish-cots-{release.announcement.version}.tar"
    assert any("temporary credentials" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_without_boto3_an_s3_store_is_a_one_line_error(s3, release_key, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` raises ImportError, as where it is absent
    result = run_release(
        DEMO, "--store", f"s3://{s3.bucket}", "--presign", 604800, "--key", release_key[0], "--bundle-key", DEMO_KEY
    )
    assert_one_line_refusal(result, "needs boto3", "starfish-edge[s3]")


@pytest.mark.mqtt
def test_a_running_agent_installs_a_release_from_the_s3_store(
    s3, tmp_path, tiny_bundle, bundle_keys, looping_clip, release_key, mosquitto, mqtt_subscriber
):
    """The whole loop with the s3 store: `starfish release --store s3://… --presign` publishes retained on the fleet
    topic; an agent process (no AWS configuration, no boto3 use) downloads the presigned URL, checks, commits."""
    v2 = rebundle(tiny_bundle.path, tmp_path / "v2", bundle_keys.private, version=2, parent_version=1)
    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/#"], client_id="ota-sub")
    agent = start_agent(tmp_path, tiny_bundle, looping_clip, mosquitto, release_key, bundle_keys, "agent.log")
    try:
        assert wait_until(lambda: len(counts(sub)) >= 5, 60), agent.log()
        result = run_release(
            *(v2, "--store", f"s3://{s3.bucket}/ota", "--s3-endpoint-url", s3.endpoint, "--presign", 604800),
            *("--key", release_key[0], "--bundle-key", bundle_keys.public),
            *("--broker", f"127.0.0.1:{mosquitto.port}", "--fleet", FLEET),
        )
        ann = released(result, release_key[1])
        assert ann.version == 2 and objects(s3) == ["ota/starfish-cots-2.tar"]
        assert wait_until(lambda: any(e["event"] == "committed" for e in events(sub)), 60), (events(sub), agent.log())
        assert events(sub)[-1]["ok"] is True and events(sub)[-1]["version"] == 2
        assert agent.terminate() == 0, agent.log()
    finally:
        if agent.alive():
            agent.kill9()
    assert current(tmp_path) == "versions/2"


def test_retrain_finds_and_fetches_the_released_bundle_in_an_s3_store(s3, tmp_path, release_key):
    from train.retrain import resolve_released, store_versions

    store = S3Store.from_url(f"s3://{s3.bucket}/fleet", s3.endpoint)
    release = make_release(
        DEMO,
        store=store,
        url_base="https://cdn.example.org/",
        release_key=load_private_key(release_key[0]),
        bundle_keys=[load_public_key(DEMO_KEY)],
    )
    version = release.announcement.version
    # Neither a file that is not a bundle tar nor a tar one level further down is a released version.
    s3.client.put_object(Bucket=s3.bucket, Key="fleet/notes.txt", Body=b"x")
    s3.client.put_object(Bucket=s3.bucket, Key="fleet/old/starfish-cots-99.tar", Body=b"x")
    assert store_versions(store) == {"starfish-cots": {version: f"fleet/starfish-cots-{version}.tar"}}
    got = resolve_released(store, None, [load_public_key(DEMO_KEY)], tmp_path / "work")
    assert got.manifest.version == version and got.root == tmp_path / "work" / f"starfish-cots-{version}.tar"
    assert sha256_file(got.root) == release.announcement.sha256


def test_retrain_refuses_an_s3_release_devices_could_not_fetch_before_training(s3, tmp_path, release_key, capsys):
    import starfish_cli

    argv = ["retrain", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "job"), "--key", str(release_key[0])]
    argv += ["--store", f"s3://{s3.bucket}/fleet", "--checkpoints", str(tmp_path / "registry")]
    for extra, needle in (([], "needs one of --url-base"), (["--presign", "3600"], "would expire before")):
        with pytest.raises(SystemExit) as exit_info:
            starfish_cli.main([*argv, *extra])
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert exit_info.value.code == 2 and last.startswith("starfish: ") and "Traceback" not in err
        assert needle in last and "--no-release" in last
    assert not (tmp_path / "job" / "runs").exists()  # refused before any training


def test_the_documented_permissions_are_enough_and_a_refusal_is_one_line(s3, tmp_path, release_key, monkeypatch):
    """moto's IAM simulation on: a releaser allowed only s3:PutObject and s3:GetObject on BUCKET/fleet/* (what the
    docs ask for) releases there — multipart upload and HeadObject checked against that policy — and is refused
    anywhere else. (moto's IAM mode cannot authenticate a presigned GET, so the device fetches with it off.)"""
    import json

    import boto3
    from moto.core import enable_iam_authentication

    iam = boto3.client("iam")  # the emulator (AWS_ENDPOINT_URL), with the fixture's keys before IAM is enforced
    iam.create_user(UserName="releaser")
    statement = {
        "Effect": "Allow",
        "Action": ["s3:PutObject", "s3:GetObject"],
        "Resource": f"arn:aws:s3:::{s3.bucket}/fleet/*",
    }
    iam.put_user_policy(
        UserName="releaser",
        PolicyName="release",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
    )
    key = iam.create_access_key(UserName="releaser")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    common = ("--presign", 604800, "--key", release_key[0], "--bundle-key", DEMO_KEY)
    with enable_iam_authentication():
        ann = released(run_release(DEMO, "--store", f"s3://{s3.bucket}/fleet", *common), release_key[1])
        refused = run_release(DEMO, "--store", f"s3://{s3.bucket}/elsewhere", *common)
    got = download(ann.url, tmp_path / "device" / "b.tar", size=ann.size, sha256=ann.sha256)
    assert sha256_file(got.path) == ann.sha256
    assert_one_line_refusal(refused, "release refused", "refused the credentials or the permission (AccessDenied)")
