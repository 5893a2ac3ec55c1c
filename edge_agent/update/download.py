"""Fetch a bundle over http(s) into a `.part` file, bounded by the signed announcement, resumable after a crash.

The rules, each a lesson from updaters that hang or fill disks:

* The announcement's ``size`` is the cap: a `Content-Length` above what is left is refused before reading, and the
  body is read at most one byte past ``size`` (endless-data defence), then the `.part` file is removed.
* Every socket read has a stall timeout; a whole attempt has a deadline (a server dribbling one byte per
  stall-timeout would otherwise hold the device forever).
* Transient failures (connection refused or cut, stall, 5xx, 408/429) are retried a bounded number of times with
  exponential backoff, resuming with `Range: bytes=<have>-` when the server answers 206 (from scratch on a 200).
  Any other 4xx is final: reported once, never looped on.
* The sha256 of the complete file is checked against the announcement before it is renamed to its final name;
  a mismatch removes the `.part` (a corrupt prefix must not be resumed forever).

urllib3 (a well-kept HTTP client, already what `requests` is built on) does the HTTP; no hand-rolled sockets.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from edge_agent.durable import fsync_path
from edge_agent.update.errors import (
    DownloadCancelled,
    DownloadError,
    DownloadHashMismatch,
    DownloadRefused,
    DownloadTooLarge,
)

logger = logging.getLogger(__name__)

_CHUNK = 64 << 10
_RETRYABLE_4XX = frozenset({408, 425, 429})
# (bytes on disk, total expected)
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class DownloadPolicy:
    """Timeouts and retry policy of one download (from `UpdateConfig`)."""

    connect_timeout_s: float = 10.0
    stall_timeout_s: float = 30.0
    max_attempt_s: float = 3600.0
    retries: int = 5
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0

    def backoff(self, attempt: int) -> float:
        """Wait before retry number ``attempt`` (1-based): initial * 2^(attempt-1), capped."""
        return min(self.backoff_max_s, self.backoff_initial_s * (2 ** (attempt - 1)))


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    attempts: int
    resumed_from: int  # bytes already on disk when the first attempt started (a resume after a restart)


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    size: int,
    sha256: str,
    policy: DownloadPolicy | None = None,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    pool: urllib3.PoolManager | None = None,
) -> DownloadResult:
    """Download ``url`` to ``dest`` (via ``dest.part``), exactly ``size`` bytes with the given ``sha256``.

    Re-entrant: a `.part` left by a killed process is resumed; a complete ``dest`` with the right hash is returned
    at once. Raises `DownloadRefused` (4xx, unsupported scheme), `DownloadTooLarge`, `DownloadHashMismatch`
    (all final), `DownloadCancelled` when ``stop`` is set, or `DownloadError` once the retries are spent.
    """
    policy = policy or DownloadPolicy()
    dest = Path(dest)
    part = part_path(dest)
    if not url.startswith(("http://", "https://")):
        raise DownloadRefused(f"cannot fetch {url}: only http:// and https:// are supported on the device")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if _file_digest(dest) == (size, sha256):
            logger.info("update download: %s already complete", dest)
            return DownloadResult(dest, size, 0, size)
        dest.unlink()
    resumed_from = part.stat().st_size if part.exists() else 0
    if resumed_from > size:
        part.unlink()
        resumed_from = 0
    pool = pool or urllib3.PoolManager(retries=False)
    attempt = 0
    while True:
        attempt += 1
        if stop is not None and stop.is_set():
            raise DownloadCancelled(f"download of {url} cancelled ({_have(part)} of {size} bytes kept)")
        try:
            _attempt(pool, url, part, size, policy, progress, stop)
            break
        except DownloadError as exc:
            if exc.final:
                if isinstance(exc, DownloadTooLarge):
                    part.unlink(missing_ok=True)
                raise
            if attempt > policy.retries:
                raise DownloadError(f"{exc}; giving up after {attempt} attempt(s)") from exc
            wait = policy.backoff(attempt)
            logger.warning("update download attempt %d failed (%s); retrying in %.1f s", attempt, exc, wait)
            if stop is not None:
                if stop.wait(wait):
                    raise DownloadCancelled(
                        f"download of {url} cancelled ({_have(part)} of {size} bytes kept)"
                    ) from exc
            else:
                time.sleep(wait)
    got = _file_digest(part)
    if got != (size, sha256):
        part.unlink(missing_ok=True)
        raise DownloadHashMismatch(
            f"downloaded {url}: {got[0]} bytes with sha256 {got[1]}; the announcement says {size} bytes, {sha256}"
        )
    fsync_path(part)
    os.replace(part, dest)
    fsync_path(dest.parent)
    logger.info("update download: %s complete (%d bytes, %d attempt(s))", dest, size, attempt)
    return DownloadResult(dest, size, attempt, resumed_from)


def _attempt(
    pool: urllib3.PoolManager,
    url: str,
    part: Path,
    size: int,
    policy: DownloadPolicy,
    progress: ProgressCallback | None,
    stop: threading.Event | None,
) -> None:
    have = _have(part)
    if have == size:
        return  # a previous attempt (or process) got every byte; the hash decides
    headers = {"Range": f"bytes={have}-"} if have else {}
    timeout = urllib3.Timeout(connect=policy.connect_timeout_s, read=policy.stall_timeout_s)
    deadline = time.monotonic() + policy.max_attempt_s
    try:
        response = pool.request(
            "GET", url, headers=headers, preload_content=False, redirect=False, timeout=timeout, decode_content=False
        )
    except Urllib3Error as exc:
        raise DownloadError(f"cannot fetch {url}: {exc}") from exc
    try:
        status = response.status
        if status == 416 and have:
            # Our Range starts at or past the end of what the server holds: start again from scratch.
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: server refused the resume range (416); restarting from the first byte")
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise DownloadRefused(f"{url}: HTTP {status} {response.reason or ''}".rstrip())
        if status not in (200, 206):
            raise DownloadError(f"{url}: HTTP {status} {response.reason or ''}".rstrip())
        if status == 200 and have:
            logger.info("update download: %s ignored the Range header; starting again from the first byte", url)
            have = 0
        if status == 206 and not _range_starts_at(response.headers.get("Content-Range"), have):
            raise DownloadError(
                f"{url}: 206 with Content-Range {response.headers.get('Content-Range')!r}, expected bytes {have}-"
            )
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and have + int(length) > size:
            raise DownloadTooLarge(f"{url}: server announces {have + int(length)} bytes; the signed size is {size}")
        mode = "ab" if have else "wb"
        with open(part, mode) as handle:
            if have == 0:
                handle.truncate(0)
            while True:
                if stop is not None and stop.is_set():
                    raise DownloadCancelled(f"download of {url} cancelled ({have} of {size} bytes kept)")
                if time.monotonic() > deadline:
                    raise DownloadError(f"{url}: attempt took longer than {policy.max_attempt_s:.0f} s")
                # At most one byte past the signed size is ever read: that byte proves the server lies.
                # read1: what has arrived (up to the cap), so a stall keeps every byte received before it.
                chunk = response.read1(min(_CHUNK, size + 1 - have))
                if not chunk:
                    break
                handle.write(chunk)
                have += len(chunk)
                if have > size:
                    raise DownloadTooLarge(f"{url}: server sent more than the signed {size} bytes; stopped")
                if progress is not None:
                    progress(have, size)
            handle.flush()
            os.fsync(handle.fileno())
        if have < size:
            raise DownloadError(f"{url}: connection ended after {have} of {size} bytes")
    except (Urllib3Error, OSError) as exc:
        raise DownloadError(f"{url}: transfer interrupted after {_have(part)} of {size} bytes: {exc}") from exc
    finally:
        response.release_conn()


def _range_starts_at(content_range: str | None, start: int) -> bool:
    # "bytes 100-999/1000"
    if not content_range or not content_range.startswith("bytes "):
        return False
    first = content_range[6:].split("-", 1)[0].strip()
    return first.isdigit() and int(first) == start


def _have(part: Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        return 0


def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    total = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            total += len(chunk)
    return total, digest.hexdigest()
