"""`starfish shore bench`: sustained ingest rate per storage engine, and the time to serve a 24 h chart.

Ingest is measured three ways, each over fresh tables:

* `write`: prebuilt records into `Storage.write` in batches (the database alone);
* `parse+write`: the JSON payloads as they arrive from MQTT, parsed and validated, then written (ingest's work);
* `mqtt`: end to end through a real Mosquitto (when installed), QoS 1, committed and acknowledged by `Ingest`:
  `live` with a publisher process sending as fast as it can meanwhile, `backlog` draining counts that waited in
  our persistent session (the ingest path alone); the clock stops when the last one is committed.

The chart: 24 h of per-minute roll-ups for N cameras (written as agent `aggregate` messages of 600 frames, i.e.
10 fps), then `GET /api/series` through the real HTTP server (median of repeated requests).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shore.parse import MessageParser
from shore.records import CountRecord
from shore.storage import Storage, open_storage

logger = logging.getLogger(__name__)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _payload(device: str, camera: str, seq: int, ts: float) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "device_id": device,
            "camera_id": camera,
            "session": 1,
            "seq": seq,
            "outbox_id": "bench",
            "ts": datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z"),
            "frame": seq,
            "count": seq % 5,
            "unique_count": seq // 50,
            "historical": False,
            "model": {"name": "bench", "version": 1, "variant": "int8", "backend": "onnxruntime"},
        },
        separators=(",", ":"),
    ).encode()


@contextlib.contextmanager
def _fresh(url: str) -> Iterator[Storage]:
    """A storage over empty tables: a new SQLite file, or a new PostgreSQL schema dropped afterwards."""
    if url.startswith(("postgresql://", "postgres://")):
        schema = f"shore_bench_{uuid.uuid4().hex[:10]}"
        storage = open_storage(url, schema=schema)
        try:
            yield storage
        finally:
            storage.close()
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    else:
        with tempfile.TemporaryDirectory(prefix="shore-bench-") as tmp:
            storage = open_storage(str(Path(tmp) / "bench.db"))
            try:
                yield storage
            finally:
                storage.close()


def _rate(storage: Storage, batches: list[list[Any]], parser: MessageParser | None) -> float:
    start = time.perf_counter()
    for batch in batches:
        if parser is not None:
            records = []
            for topic, payload in batch:
                records.extend(parser.parse(topic, payload, False, time.time()))
            storage.write(records)
        else:
            storage.write(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def _records(n: int, t0: float) -> list[CountRecord]:
    return [
        CountRecord(
            "bench",
            f"cam{i % 10}",
            "bench",
            i + 1,
            1,
            t0 + i * 0.01,
            i,
            i % 5,
            i // 50,
            1,
            float(i % 5),
            i % 5,
            False,
            "bench v1 (int8, onnxruntime)",
            t0,
        )
        for i in range(n)
    ]


def _publisher(port: int, n: int, ready: Any) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.wait(30)
    t0 = time.time()
    infos = [
        client.publish(
            f"starfish/bench/cam{i % 10}/counts", _payload("bench", f"cam{i % 10}", i + 1, t0 + i * 0.01), qos=1
        )
        for i in range(n)
    ]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def _native_publishers(port: int, n: int, tmp: Path, cameras: int = 10) -> list[Any] | None:
    """``cameras`` C publishers (``mosquitto_pub -l``, QoS 1, one per camera topic) with their payload files
    written, not yet started: a publisher that costs the shared cores far less than a Python one. None without
    the ``mosquitto_pub`` binary (Debian's mosquitto-clients)."""
    import shutil

    binary = shutil.which("mosquitto_pub")
    if binary is None:
        return None
    t0 = time.time()
    commands = []
    for c in range(cameras):
        lines = tmp / f"cam{c}.jsonl"
        with open(lines, "wb") as handle:
            for i in range(c, n, cameras):
                handle.write(_payload("bench", f"cam{c}", i + 1, t0 + i * 0.01) + b"\n")
        topic = f"starfish/bench/cam{c}/counts"
        args = [binary, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1", "-t", topic, "-l"]
        commands.append((args, lines))
    return commands


def _stored(storage: Storage) -> int:
    return len(storage.seqs("bench"))


def _storage_target(storage: Storage) -> tuple[str, str | None]:
    """(db, schema) that opens the same database in a worker process."""
    path = getattr(storage, "path", None)
    if path is not None:
        return str(path), None
    return str(getattr(storage, "url")), getattr(storage, "schema", None)  # noqa: B009 - PostgresStorage


def _mqtt_rate(url: str, n: int, workers: int = 1) -> dict[str, Any] | None:
    """Three figures through a real Mosquitto: `live` (a Python publisher process and ingest running together:
    bounded by whichever is slower, often the publisher), `live_native` (the same with ten C publishers,
    `mosquitto_pub -l`, one per camera, which leave the shared cores to ingest; skipped without mosquitto_pub) and
    `backlog` (n counts queued in our persistent session while ingest was away, then drained: the ingest path
    alone). With `workers` > 1, that many ingest processes share the counts through an MQTT 5 shared subscription
    (what `starfish shore run --workers N` starts)."""
    import shutil
    import socket
    import subprocess

    from shore.config import IngestConfig
    from shore.ingest import Ingest
    from shore.workers import WorkerPool

    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="shore-bench-mqtt-") as tmp:
        conf = Path(tmp) / "m.conf"
        # No broker-side cap on in-flight or queued messages: our Receive Maximum (1000) is the flow control.
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0\n"
        )
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            for mode in ("live", "live_native", "backlog"):
                native = _native_publishers(port, n, Path(tmp)) if mode == "live_native" else None
                if mode == "live_native" and native is None:
                    continue
                with _fresh(url) as storage:
                    run_id = f"bench-{mode}-{uuid.uuid4().hex[:6]}"
                    # A group of its own: the previous mode's sessions stay members of theirs (offline, persistent),
                    # and a broker hands offline members their share too.
                    cfg = IngestConfig(
                        port=port, client_id=run_id, workers=workers, share_group=run_id if workers > 1 else None
                    )
                    db, schema = _storage_target(storage)
                    ingest = Ingest(cfg, storage)
                    pool = WorkerPool(cfg, db, schema) if workers > 1 else None
                    ingest.start()
                    if pool is not None:
                        pool.start()
                        time.sleep(3.0)  # spawned workers import, connect and subscribe (their sessions exist)
                    if not ingest.wait_subscribed(10):
                        return None
                    ready = ctx.Event()
                    proc = ctx.Process(target=_publisher, args=(port, n, ready), daemon=True)
                    natives: list[Any] = []
                    if native is not None:
                        start = time.perf_counter()
                        for args, lines in native:
                            with open(lines, "rb") as stdin:
                                natives.append(subprocess.Popen(args, stdin=stdin, stdout=subprocess.DEVNULL))
                    elif mode == "backlog":
                        proc.start()
                        ingest.stop()  # the sessions (and their subscriptions) stay on the broker
                        if pool is not None:
                            pool.stop()
                        ready.set()
                        proc.join(300)
                        ingest = Ingest(cfg, storage)
                        go = ctx.Event()
                        pool = WorkerPool(cfg, db, schema, go=go) if workers > 1 else None
                        if pool is not None:
                            pool.start()
                            time.sleep(3.0)  # spawned, imported, database open: waiting for `go`
                        start = time.perf_counter()
                        go.set()
                        ingest.start()
                    else:
                        proc.start()
                        time.sleep(1.0)  # let the publisher connect before the clock starts
                        start = time.perf_counter()
                        ready.set()
                    deadline = start + 300
                    if pool is None:
                        while ingest.stats.new_counts < n and time.perf_counter() < deadline:
                            time.sleep(0.005)
                    else:  # the other workers' figures are in their processes: count in the database
                        while _stored(storage) < n and time.perf_counter() < deadline:
                            time.sleep(0.05)
                    elapsed = time.perf_counter() - start
                    got = ingest.stats.new_counts if pool is None else _stored(storage)
                    share = ingest.stats.new_counts
                    ingest.stop()
                    if pool is not None:
                        pool.stop()
                    if native is None:
                        proc.join(30)
                    for publisher in natives:
                        publisher.wait(30)
                    out[mode] = {
                        "counts": got,
                        "seconds": round(elapsed, 3),
                        "counts_per_s": round(got / elapsed),
                        "batches": ingest.stats.batches,
                        "workers": workers,
                        "first_worker_share": round(share / max(got, 1), 2),
                    }
        finally:
            broker.kill()
            broker.wait(5)
    return out


def _chart(url: str, cameras: int) -> dict[str, Any]:
    import httpx
    import uvicorn

    from shore.config import WebConfig
    from shore.web import create_app

    now = time.time()
    t0 = now - 24 * 3600
    with _fresh(url) as storage:
        seq = 0
        for minute in range(24 * 60):
            batch = []
            for cam in range(cameras):
                seq += 1
                batch.append(
                    CountRecord(
                        "bench",
                        f"cam{cam}",
                        "bench",
                        seq,
                        1,
                        t0 + minute * 60,
                        seq,
                        2,
                        minute // 3,
                        600,
                        600 * 1.5,
                        6,
                        False,
                        None,
                        now,
                    )
                )
            storage.write(batch)
        query = []
        for _ in range(20):
            start = time.perf_counter()
            points = storage.series("bench", t0, now + 60)
            query.append(time.perf_counter() - start)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(create_app(WebConfig(port=port), storage), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        http = []
        size = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(20):
                start = time.perf_counter()
                res = client.get("/api/series", params={"device_id": "bench", "hours": 24})
                res.raise_for_status()
                size = len(res.content)
                http.append(time.perf_counter() - start)
        server.should_exit = True
        thread.join(10)
    n_points = sum(len(c["minute"]) for c in points["cameras"].values())
    return {
        "cameras": cameras,
        "points": n_points,
        "query_ms_median": round(statistics.median(query) * 1000, 1),
        "http_ms_median": round(statistics.median(http) * 1000, 1),
        "http_ms_max": round(max(http) * 1000, 1),
        "response_kib": round(size / 1024, 1),
    }


def _reachable(url: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001 - any failure means "skip this engine"
        return False


def run_bench(
    dbs: list[str] | None, *, counts: int, batch: int, cameras: int, workers: int = 1, mqtt_only: bool = False
) -> dict[str, Any]:
    if counts < 1 or batch < 1 or cameras < 1 or workers < 1:
        raise ValueError("--counts, --batch, --cameras and --workers must be positive")
    targets = dbs or ["sqlite", *([DEFAULT_PG] if _reachable(DEFAULT_PG) else [])]
    for target in targets:
        if target != "sqlite" and not target.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"--db {target!r}: use `sqlite` (a temporary file) or a postgresql:// URL")
    import os

    # Shared machines make every figure depend on what else runs: say how busy this one was.
    report: dict[str, Any] = {
        "counts": counts,
        "batch": batch,
        "workers": workers,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 1) for x in os.getloadavg()],
        "results": {},
    }
    parser = MessageParser("starfish")
    t0 = time.time()
    for target in targets:
        url = "" if target == "sqlite" else target
        name = "sqlite" if not url.startswith("postgres") else "postgresql"
        logger.info("bench: %s", name)
        records = _records(counts, t0)
        payloads = [
            (f"starfish/bench/{r.camera_id}/counts", _payload("bench", r.camera_id, r.seq, r.ts)) for r in records
        ]
        result: dict[str, Any] = {}
        if not mqtt_only:
            with _fresh(url or "sqlite") as storage:
                result["write_counts_per_s"] = round(
                    _rate(storage, [records[i : i + batch] for i in range(0, counts, batch)], None)
                )
            with _fresh(url or "sqlite") as storage:
                result["parse_write_counts_per_s"] = round(
                    _rate(storage, [payloads[i : i + batch] for i in range(0, counts, batch)], parser)
                )
        result["mqtt"] = _mqtt_rate(url or "sqlite", min(counts, 20_000), workers)
        if not mqtt_only:
            result["chart_24h"] = _chart(url or "sqlite", cameras)
        report["results"][name] = result
    report["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
    return report
