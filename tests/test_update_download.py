"""Bundle downloads against a real HTTP server on 127.0.0.1: resume, caps, stalls, 4xx, a server killed and back."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_agent.update.download import DownloadPolicy, download, part_path
from edge_agent.update.errors import (
    DownloadCancelled,
    DownloadError,
    DownloadHashMismatch,
    DownloadRefused,
    DownloadTooLarge,
)
from tests.helpers.http_server import BundleServer
from tests.helpers.mqtt_broker import free_port, wait_until

FAST = DownloadPolicy(connect_timeout_s=2, stall_timeout_s=1.0, retries=3, backoff_initial_s=0.05, backoff_max_s=0.2)
PAYLOAD = os.urandom(300_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture()
def server(tmp_path: Path):
    root = tmp_path / "store"
    root.mkdir()
    (root / "b.tar").write_bytes(PAYLOAD)
    with BundleServer(root) as srv:
        yield srv


def fetch(server: BundleServer, dest: Path, **kw):
    args = dict(size=len(PAYLOAD), sha256=DIGEST, policy=FAST)
    args.update(kw)
    return download(server.url("b.tar"), dest, **args)


def test_plain_download_progress_and_idempotent(server, tmp_path):
    seen = []
    result = fetch(server, tmp_path / "d" / "b.tar", progress=lambda done, total: seen.append((done, total)))
    assert (tmp_path / "d" / "b.tar").read_bytes() == PAYLOAD and result.attempts == 1
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert all(a <= b for (a, _), (b, _) in zip(seen, seen[1:], strict=False))
    assert not part_path(tmp_path / "d" / "b.tar").exists()
    again = fetch(server, tmp_path / "d" / "b.tar")
    assert again.attempts == 0 and len(server.requests) == 1  # complete and verified: no second request


def test_cut_connection_resumes_with_range(server, tmp_path):
    server.faults["/b.tar"] = "cut:100000"
    threading.Timer(0.3, lambda: server.faults.pop("/b.tar")).start()
    policy = DownloadPolicy(stall_timeout_s=1.0, retries=20, backoff_initial_s=0.1, backoff_max_s=0.1)
    result = fetch(server, tmp_path / "b.tar", policy=policy)
    assert (tmp_path / "b.tar").read_bytes() == PAYLOAD and result.attempts >= 2
    ranges = [r for _, r, _ in server.requests]
    assert ranges[0] is None and "bytes=100000-" in ranges, server.requests


def test_stall_times_out_and_resumes(server, tmp_path):
    server.faults["/b.tar"] = "stall:50000"
    threading.Timer(0.5, lambda: server.faults.pop("/b.tar")).start()
    start = time.monotonic()
    fetch(server, tmp_path / "b.tar")
    assert (tmp_path / "b.tar").read_bytes() == PAYLOAD
    assert time.monotonic() - start < 10
    assert ("/b.tar", "bytes=50000-", 206) in server.requests


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    dest = tmp_path / "b.tar"
    part_path(dest).write_bytes(PAYLOAD[:1000])
    server.faults["/b.tar"] = "no-range"
    fetch(server, dest)
    assert dest.read_bytes() == PAYLOAD


def test_endless_and_lying_servers_stop_at_size_plus_one(server, tmp_path):
    server.faults["/b.tar"] = "endless"  # no Content-Length, zeros forever
    dest = tmp_path / "endless.tar"
    with pytest.raises(DownloadTooLarge, match="more than the signed"):
        fetch(server, dest)
    assert not part_path(dest).exists() and not dest.exists()
    # Content-Length of the right size, then endless garbage: urllib3 stops at the length, the hash refuses it.
    server.faults["/b.tar"] = "lie"
    with pytest.raises(DownloadHashMismatch):
        fetch(server, tmp_path / "lie.tar")
    assert not part_path(tmp_path / "lie.tar").exists()
    # An honest Content-Length above the signed size is refused before the body is read.
    server.faults.pop("/b.tar")
    with pytest.raises(DownloadTooLarge, match="announces"):
        fetch(server, tmp_path / "small.tar", size=1000)


def test_404_is_final_one_request(server, tmp_path):
    with pytest.raises(DownloadRefused, match="404"):
        download(server.url("missing.tar"), tmp_path / "m.tar", size=10, sha256="0" * 64, policy=FAST)
    assert [s for _, _, s in server.requests] == [404]
    server.faults["/b.tar"] = "status:403"
    with pytest.raises(DownloadRefused, match="403"):
        fetch(server, tmp_path / "b.tar")
    assert len(server.requests) == 2


def test_5xx_retried_a_bounded_number_of_times(server, tmp_path):
    server.faults["/b.tar"] = "status:503"
    with pytest.raises(DownloadError, match="giving up after 4 attempt"):
        fetch(server, tmp_path / "b.tar")
    assert len(server.requests) == 4


def test_wrong_sha256_refused_and_part_removed(server, tmp_path):
    with pytest.raises(DownloadHashMismatch):
        fetch(server, tmp_path / "b.tar", sha256="0" * 64)
    assert not part_path(tmp_path / "b.tar").exists() and not (tmp_path / "b.tar").exists()


def test_unsupported_scheme_and_refused_connection(tmp_path):
    with pytest.raises(DownloadRefused, match="only http"):
        download("s3://bucket/b.tar", tmp_path / "b.tar", size=1, sha256="0" * 64)
    port = free_port()
    with pytest.raises(DownloadError, match="giving up"):
        download(f"http://127.0.0.1:{port}/b.tar", tmp_path / "b.tar", size=1, sha256="0" * 64, policy=FAST)


def test_stop_event_cancels_and_keeps_part(server, tmp_path):
    server.faults["/b.tar"] = "slow:200000"
    stop = threading.Event()
    dest = tmp_path / "b.tar"

    def progress(done: int, total: int) -> None:
        if done > 50_000:
            stop.set()

    with pytest.raises(DownloadCancelled):
        fetch(server, dest, progress=progress, stop=stop)
    kept = part_path(dest).stat().st_size
    assert 0 < kept < len(PAYLOAD)
    server.faults.pop("/b.tar")
    fetch(server, dest)
    assert dest.read_bytes() == PAYLOAD and ("/b.tar", f"bytes={kept}-", 206) in server.requests


@pytest.mark.slow
def test_server_killed_mid_download_then_back(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    (root / "b.tar").write_bytes(PAYLOAD)
    port = free_port()
    cmd = [sys.executable, "-m", "tests.helpers.http_server", str(root), str(port), "150000"]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"serving"
        return proc

    proc = start()
    dest = tmp_path / "b.tar"
    killed = threading.Event()
    restarted: list[subprocess.Popen] = []

    def progress(done: int, total: int) -> None:
        if done > 100_000 and not killed.is_set():
            killed.set()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            restarted.append(start())

    policy = DownloadPolicy(stall_timeout_s=2, retries=10, backoff_initial_s=0.2, backoff_max_s=1)
    try:
        result = download(
            f"http://127.0.0.1:{port}/b.tar", dest, size=len(PAYLOAD), sha256=DIGEST, policy=policy, progress=progress
        )
    finally:
        for p in [proc, *restarted]:
            p.kill()
            p.wait()
    assert killed.is_set() and dest.read_bytes() == PAYLOAD
    assert result.attempts >= 2
    assert wait_until(lambda: True, 0)
