"""The JSON API, CSV export, auth and the event stream, through the real uvicorn server (storage: both engines)."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import time
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from shore.config import ShoreSettings, WebConfig
from shore.records import CountRecord, InfoRecord, StatusRecord
from shore.web import create_app

NOW = time.time()


def rec(
    seq: int,
    *,
    camera: str = "cam0",
    count: int = 1,
    unique: int = 0,
    ts: float | None = None,
    model: str | None = "m v1 (fp32, onnxruntime)",
) -> CountRecord:
    return CountRecord(
        "dev1",
        camera,
        "ob",
        seq,
        1,
        NOW - 600 + seq if ts is None else ts,
        seq,
        count,
        unique,
        1,
        float(count),
        count,
        False,
        model,
        NOW,
    )


def seed(storage: Any) -> None:
    storage.write(
        [
            StatusRecord("dev1", None, "online", NOW, retained=False),
            StatusRecord("dev1", "cam0", "online", NOW, retained=False),
            InfoRecord(
                "dev1", "model", {"name": "reef", "version": 2, "variant": "int8", "backend": "onnxruntime"}, NOW
            ),
            *[rec(i, count=i % 4, unique=i // 3) for i in range(1, 31)],
            rec(31, camera="cam1", model='=HYPERLINK("http://x")'),
        ]
    )


class SseReader:
    """Reads events (and `:` comments) from one text/event-stream response."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.iter_lines()

    def next(self) -> dict[str, Any]:
        current: dict[str, Any] = {}
        for line in self._lines:
            if line.startswith(":"):
                return {"comment": line[1:].strip()}
            if line.startswith("id: "):
                current["id"] = line[4:]
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and current:
                return current
        raise EOFError("stream ended")

    def events(self, n: int) -> list[dict[str, Any]]:
        """The next `n` named events (skipping `retry:` blocks)."""
        out: list[dict[str, Any]] = []
        while len(out) < n:
            event = self.next()
            if "event" in event:
                out.append(event)
        return out

    def until(self, kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The next `kind` event, and what came before it."""
        before = []
        while True:
            event = self.next()
            if event.get("event") == kind or (kind == "comment" and "comment" in event):
                return event, before
            before.append(event)


def test_api_devices_series_counts_surveys(storage: Any, live_server: Any) -> None:
    seed(storage)
    base = live_server(create_app(WebConfig(), storage))
    with httpx.Client(base_url=base, timeout=10) as http:
        (dev,) = http.get("/api/devices").json()
        assert dev["status"] == "online" and dev["model"]["version"] == 2
        assert {c["camera_id"]: c["last_seq"] for c in dev["cameras"]} == {"cam0": 30, "cam1": 31}

        series = http.get("/api/series", params={"device_id": "dev1", "hours": 1}).json()
        assert sum(sum(c["frames"]) for c in series["cameras"].values()) == 31
        only = http.get("/api/series", params={"device_id": "dev1", "camera_id": "cam1", "hours": 1}).json()
        assert list(only["cameras"]) == ["cam1"]
        assert http.get("/api/series", params={"device_id": "dev1", "hours": -1}).status_code == 422

        rows = http.get("/api/counts", params={"device_id": "dev1", "hours": 1, "limit": 5}).json()
        assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
        text = http.get("/api/counts.csv", params={"hours": 1}).text
        table = list(csv.DictReader(io.StringIO(text)))
        assert len(table) == 31
        assert table[-1]["model"].startswith("'=")  # a spreadsheet formula from a device stays text

        created = http.post(
            "/api/surveys", json={"name": "transect A", "start": NOW - 3600, "end": NOW + 60, "device_id": "dev1"}
        )
        assert created.status_code == 201, created.text
        survey = created.json()
        assert survey["totals"]["unique"] == 10 and survey["totals"]["frames"] == 31
        assert http.get(f"/api/surveys/{survey['id']}").json()["name"] == "transect A"
        assert http.get("/api/surveys/99999").status_code == 404
        bad = http.post("/api/surveys", json={"name": "x", "start": NOW, "end": NOW - 1})
        assert bad.status_code == 422
        assert http.post("/api/surveys", json={"name": "x", "start": 1, "end": 2, "typo": 1}).status_code == 422
        listed = http.get("/api/surveys").json()
        assert [s["kind"] for s in listed] == ["window", "session"]
        assert listed[1]["totals"]["frames"] == 31
        surveys_csv = list(csv.DictReader(io.StringIO(http.get("/api/surveys.csv").text)))
        assert [r["kind"] for r in surveys_csv] == ["window", "session"]
        assert surveys_csv[0]["unique"] == "10"

        health = http.get("/api/health").json()
        assert health["engine"] == storage.engine


def test_openapi_page_and_assets_are_local(tmp_path: Any, live_server: Any) -> None:
    from shore.storage import open_storage

    with open_storage(str(tmp_path / "s.db")) as storage:
        base = live_server(create_app(WebConfig(), storage))
        with httpx.Client(base_url=base, timeout=10) as http:
            spec = http.get("/openapi.json").json()
            for path in ("/api/devices", "/api/series", "/api/counts.csv", "/api/surveys", "/api/events"):
                assert path in spec["paths"], path
            docs = http.get("/docs").text
            assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
            page = http.get("/")
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert "http://" not in page.text and "https://" not in page.text  # nothing off this server
            for asset in (
                "/static/app.js",
                "/static/vendor/uplot/uPlot.iife.min.js",
                "/static/vendor/swagger-ui/swagger-ui-bundle.js",
            ):
                res = http.get(asset)
                assert res.status_code == 200, asset
                assert "max-age=31536000" in res.headers["cache-control"]
            js = http.get("/static/app.js").text
            assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write", js)


def test_token_required_off_loopback_and_enforced(tmp_path: Any, live_server: Any) -> None:
    from shore.storage import open_storage

    with pytest.raises(ValidationError, match="needs a token"):
        WebConfig(host="0.0.0.0")
    with pytest.raises(ValidationError, match="at least 16"):
        WebConfig(host="0.0.0.0", token=SecretStr("short"))
    with pytest.raises(ValidationError, match="extra"):
        ShoreSettings(dbb="x")  # type: ignore[call-arg]
    token = "correct-horse-battery-staple"
    with open_storage(str(tmp_path / "s.db")) as storage:
        base = live_server(create_app(WebConfig(token=SecretStr(token)), storage))
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/api/devices").status_code == 401
            assert http.get("/").status_code == 401
            assert http.get("/api/devices", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert http.get("/api/devices", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            assert http.get("/static/app.css").status_code == 200  # assets hold no data
        with httpx.Client(base_url=base, timeout=10) as browser_like:
            assert browser_like.get("/", params={"token": token}).status_code == 200
            # The cookie set by the page now authorises the page's own requests.
            assert browser_like.get("/api/devices").status_code == 200


def test_event_stream_live_resume_heartbeat(storage: Any, live_server: Any) -> None:
    seed(storage)
    app = create_app(WebConfig(sse_heartbeat_s=0.3, sse_poll_s=0.1), storage)
    base = live_server(app)
    with httpx.Client(base_url=base, timeout=10) as http:
        with http.stream("GET", "/api/events") as res:
            assert res.headers["content-type"].startswith("text/event-stream")
            reader = SseReader(res)
            devices, snapshot = reader.events(2)
            assert devices["event"] == "devices" and devices["data"][0]["device_id"] == "dev1"
            assert snapshot["event"] == "counts"
            assert {c["camera_id"] for c in snapshot["data"]["cameras"]} == {"cam0", "cam1"}
            first_id = int(snapshot["id"])
            threading.Timer(0.3, lambda: storage.write([rec(40, count=7, ts=NOW)])).start()
            live, _ = reader.until("counts")
            assert int(live["id"]) > first_id
            assert [(c["camera_id"], c["last_count"]) for c in live["data"]["cameras"]] == [("cam0", 7)]
            started = time.monotonic()
            ping, before = reader.until("comment")
            assert ping == {"comment": "ping"} and before == []
            assert 0.1 < time.monotonic() - started < 3
        storage.write([rec(41, camera="cam1", count=5, ts=NOW + 1)])
        # Resume: only what changed after the id we had is sent.
        with http.stream("GET", "/api/events", headers={"Last-Event-ID": live["id"]}) as res:
            _devices, resumed = SseReader(res).events(2)
            assert [(c["camera_id"], c["last_count"]) for c in resumed["data"]["cameras"]] == [("cam1", 5)]
            assert int(resumed["id"]) > int(live["id"])
        with http.stream("GET", "/api/events", headers={"Last-Event-ID": "garbage"}) as res:
            _devices, full = SseReader(res).events(2)
            assert len(full["data"]["cameras"]) == 2  # an id that is not ours: a full snapshot
