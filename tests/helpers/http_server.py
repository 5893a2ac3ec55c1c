"""A real HTTP server on 127.0.0.1 for update downloads, with Range support and scripted misbehaviour.

`BundleServer(root)` serves the files under ``root`` from a thread (`ThreadingHTTPServer`). Per path, ``faults``
picks a behaviour: ``"cut:N"`` (send N bytes of the body, then drop the connection), ``"stall:N"`` (send N bytes,
then hang), ``"endless"`` (no Content-Length, bytes forever), ``"lie"`` (Content-Length of the real file but endless
bytes), ``"no-range"`` (ignore Range, always 200), ``"slow:BPS"`` (throttle to BPS bytes/s), ``"status:CODE"``.
Missing files are 404. ``requests`` records ``(path, range header, status)`` of every request.

Run as a script (``python -m tests.helpers.http_server ROOT PORT [SLOW_BPS]``) it serves in the foreground, so a
test can kill -9 the server process mid-download and start it again on the same port.
"""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence stderr logging
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        fault = self.server.faults.get(path, self.server.default_fault)
        self._serve(path, fault, self.headers.get("Range"))

    def send_response(self, code: int, message: str | None = None) -> None:
        # Recorded when the status line goes out, not when the handler ends (a stalled body never ends).
        with self.server.lock:
            self.server.requests.append((self.path.split("?", 1)[0], self.headers.get("Range"), code))
        super().send_response(code, message)

    def _serve(self, path: str, fault: str, rng: str | None) -> int:
        if fault.startswith("status:"):
            code = int(fault.split(":", 1)[1])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return code
        file = (self.server.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.server.root) or not file.is_file():
            self.send_error(404)
            return 404
        data = file.read_bytes()
        if fault in ("endless", "lie"):
            self.send_response(200)
            if fault == "lie":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                return 200
        start = 0
        if rng and fault != "no-range" and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 416
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            status = 206
        else:
            self.send_response(200)
            status = 200
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        limit = len(body)
        if fault.startswith(("cut:", "stall:")):
            limit = min(limit, int(fault.split(":", 1)[1]))
        bps = int(fault.split(":", 1)[1]) if fault.startswith("slow:") else 0
        try:
            sent = 0
            step = max(1, bps // 20) if bps else 65536
            while sent < limit:
                piece = body[sent : min(limit, sent + step)]
                self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
                if bps:
                    time.sleep(len(piece) / bps)
            if fault.startswith("stall:"):
                self.server.release.wait(60)
        except OSError:
            pass
        if fault.startswith(("cut:", "stall:")):
            self.close_connection = True
        return status


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, port: int, default_fault: str = "") -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.root = root.resolve()
        self.faults: dict[str, str] = {}
        self.default_fault = default_fault
        self.requests: list[tuple[str, str | None, int]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends stalls when the server stops


class BundleServer:
    """`ThreadingHTTPServer` serving ``root`` on 127.0.0.1 (a free port unless given), in a daemon thread."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self._server = _Server(root, port)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="bundle-http", daemon=True)
        self._thread.start()

    @property
    def faults(self) -> dict[str, str]:
        return self._server.faults

    @property
    def requests(self) -> list[tuple[str, str | None, int]]:
        with self._server.lock:
            return list(self._server.requests)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._server.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> BundleServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    root, port = Path(sys.argv[1]), int(sys.argv[2])
    server = _Server(root, port, default_fault=f"slow:{sys.argv[3]}" if len(sys.argv) > 3 else "")
    print("serving", flush=True)
    server.serve_forever()
