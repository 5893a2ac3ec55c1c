"""Loopback network cameras for capture tests: a real HTTP MJPEG server and a server that never answers.

* ``MjpegServer(frames_per_connection)``: serves ``multipart/x-mixed-replace`` JPEG frames on 127.0.0.1 and closes
  each connection after ``frames_per_connection`` frames (a camera whose stream keeps dropping); records when each
  connection arrived (``connect_times``, monotonic seconds).
* ``SilentServer()``: accepts TCP connections on 127.0.0.1 and never sends a byte (an open that blocks until its
  timeout).
"""

from __future__ import annotations

import socket
import threading
import time

import cv2
import numpy as np


class MjpegServer:
    def __init__(self, frames_per_connection: int = 3, width: int = 160, height: int = 96, fps: float = 20.0):
        ok, jpeg = cv2.imencode(".jpg", np.full((height, width, 3), 120, np.uint8))
        assert ok
        self._jpeg = jpeg.tobytes()
        self._frames = frames_per_connection
        self._period = 1.0 / fps
        self.connect_times: list[float] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/video.mjpg"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connect_times.append(time.monotonic())
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            conn.recv(4096)  # the request; its content does not matter
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
            for _ in range(self._frames):
                conn.sendall(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(self._jpeg)
                    + self._jpeg
                    + b"\r\n"
                )
                time.sleep(self._period)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._closed = True
        self._sock.close()


class SilentServer:
    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)  # held open, never answered

    def close(self) -> None:
        self._closed = True
        for conn in self._conns:
            conn.close()
        self._sock.close()
