"""An S3-compatible HTTP server on 127.0.0.1 for the s3 bundle store's tests: moto's server mode.

moto is an S3 *emulator* (the real S3 protocol over real HTTP, state in memory): no real AWS is reachable from the
tests, and none is tried. ``s3`` (function scope) starts `moto.server.ThreadedMotoServer` on a free loopback port
(once per module), points boto3's whole configuration chain at it through the environment (dummy keys, a region,
``AWS_ENDPOINT_URL``, no config files, no instance-metadata lookups) and gives an `S3Server` with a fresh bucket.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_BUCKETS = itertools.count()
# Variables of boto3's chain that could lead it anywhere but the emulator (profiles, roles, other endpoints).
_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL_S3",
    "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
)


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str  # created empty for this test
    client: Any  # a boto3 S3 client on the emulator, for the test's own checks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str | None, credentials: bool = True) -> None:
    """boto3's default chain as a test needs it: everything from these variables, nothing from this machine."""
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254 for a role
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    if endpoint is not None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    else:
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    if credentials:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    else:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)


@pytest.fixture()
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    import boto3

    aws_env(monkeypatch, tmp_path, moto_endpoint)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"bundles-{next(_BUCKETS)}"
    client.create_bucket(Bucket=bucket)
    return S3Server(endpoint=moto_endpoint, bucket=bucket, client=client)
