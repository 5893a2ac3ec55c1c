"""Turn a configured `source` into an opened `cv2.VideoCapture`, choosing the right OpenCV back end.

Kinds: a V4L2 device (index ``0`` or ``/dev/video0``), a GStreamer pipeline (Jetson CSI cameras through
``nvarguscamerasrc``; needs an OpenCV built with GStreamer, as JetPack's is - the PyPI wheel is not), a network
stream (``rtsp://``, ``http(s)://``, ``udp://``, ``tcp://``, ``rtmp://``; FFmpeg back end with open/read timeouts so
a dead stream is noticed instead of blocking forever) or a video file.
"""

from __future__ import annotations

import enum
import logging
import re
from pathlib import Path

import cv2

logger = logging.getLogger(__name__)

_STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://", "rtmp://", "srt://")
_DEVICE_PATH = re.compile(r"^/dev/video(\d+)$")


class SourceKind(str, enum.Enum):
    DEVICE = "device"
    GSTREAMER = "gstreamer"
    STREAM = "stream"
    FILE = "file"


class SourceError(RuntimeError):
    """A source could not be opened (yet); the camera thread retries with backoff."""


def classify_source(source: int | str) -> SourceKind:
    """Which kind of source ``source`` names (no I/O)."""
    if isinstance(source, int):
        return SourceKind.DEVICE
    text = source.strip()
    if text.isdigit() or _DEVICE_PATH.match(text):
        return SourceKind.DEVICE
    if text.lower().startswith(_STREAM_SCHEMES):
        return SourceKind.STREAM
    # A GStreamer pipeline is a chain of elements joined by "!" that hands frames to OpenCV through appsink.
    if "!" in text and "appsink" in text:
        return SourceKind.GSTREAMER
    return SourceKind.FILE


def open_source(source: int | str, open_timeout_s: float = 5.0, read_timeout_s: float = 3.0) -> cv2.VideoCapture:
    """Open ``source``; raise `SourceError` with a reason a person can act on when it cannot be opened."""
    kind = classify_source(source)
    if kind is SourceKind.DEVICE:
        index = device_index(source)
        capture = cv2.VideoCapture(index, cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            device = f"/dev/video{index}"
            reason = "does not exist" if not Path(device).exists() else "cannot be opened (busy? permissions?)"
            raise SourceError(f"V4L2 device {device} {reason}")
        return capture
    if kind is SourceKind.GSTREAMER:
        capture = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
        if not capture.isOpened():
            capture.release()
            hint = "" if "YES" in _gstreamer_line() else " (this OpenCV build has no GStreamer; use JetPack's OpenCV)"
            raise SourceError(f"GStreamer pipeline could not be started{hint}: {redact(str(source))}")
        return capture
    text = str(source)  # only a device may be an int index
    if kind is SourceKind.STREAM:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(read_timeout_s * 1000),
        ]
        capture = cv2.VideoCapture(text, cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"stream {redact(text)} could not be opened within {open_timeout_s:g} s")
        return capture
    path = Path(text)
    if not path.is_file():
        raise SourceError(f"video file {path} does not exist")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"video file {path} cannot be decoded (corrupt, truncated header or unknown format)")
    return capture


def device_index(source: int | str) -> int:
    """The V4L2 index of ``0``, ``"0"`` or ``"/dev/video0"``."""
    if isinstance(source, int):
        return source
    match = _DEVICE_PATH.match(source.strip())
    return int(match.group(1)) if match else int(source.strip())


def _gstreamer_line() -> str:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return line
    return "NO"


# A URL anywhere in the text (a bare source or inside a GStreamer pipeline): scheme, "://", then up to whitespace.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>\S*)")
# Query parameters and GStreamer element properties that carry secrets (`?password=…`, `user-pw=…`).
_SECRET_KEY = r"(?:pass(?:word)?|pwd|passwd|user-pw|user-id|user|username|token|key|secret|auth|credentials?)"
_SECRET_PARAM = re.compile(
    rf"(?P<key>(?<![A-Za-z0-9_-]){_SECRET_KEY})(?P<sep>\s*=\s*)(?P<value>[^&\s!]+)", re.IGNORECASE
)


def _redact_url(match: re.Match[str]) -> str:
    rest = match.group("rest")
    # Everything up to the *last* "@" is userinfo: passwords may hold "@", "/" or ":" unescaped, which
    # urllib.parse.urlsplit would split at "/" and leave the tail of the password in the "path".
    at = rest.rfind("@")
    if at >= 0:
        rest = "***@" + rest[at + 1 :]
    return match.group("scheme") + rest


def redact(text: str) -> str:
    """``text`` with every credential a camera source can carry replaced by ``***``.

    Covers ``scheme://user:pass@host`` userinfo (whatever characters the password holds), secret query
    parameters (``?password=…``, ``&token=…``) and GStreamer properties (``rtspsrc user-id=… user-pw=…``).
    """
    text = _URL.sub(_redact_url, text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group('key')}{m.group('sep')}***", text)


_redact = redact  # the old private name


def describe_source(source: int | str) -> str:
    kind = classify_source(source)
    return f"{kind.value} {redact(source) if isinstance(source, str) else source}"
