"""Outbox benchmark (issue 5 goals): sustained counts/s into a local Mosquitto, and replay time of a backlog.

    python benchmarks/outbox_bench.py                      # broker on 127.0.0.1:1883
    python benchmarks/outbox_bench.py --port 1884 --messages 20000 --backlog 10000 --json out.json

Goals: >= 2,000 messages/s sustained (committed to the outbox, published at QoS 1, acknowledged by the broker,
deleted); replay of 10,000 buffered messages in <= 10 s. Both `synchronous` settings of the outbox are measured:
FULL (fsync per commit: survives power loss; the default) and NORMAL (survives a killed process).

"Sustained" is end to end: from the first `publish_counts` until the broker acknowledged the last message and the
outbox is empty. The producer runs flat out in one thread, like an agent with many cameras would.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from edge_agent.mqtt.config import MqttConfig
from edge_agent.mqtt.publisher import AgentPublisher
from edge_agent.outbox import Outbox

logger = logging.getLogger("outbox_bench")

Sync = Literal["FULL", "NORMAL"]


def _frame(i: int) -> dict:
    # A realistic per-frame message: two detections with track ids.
    box = {"x1": 100.0, "y1": 200.0, "x2": 180.5, "y2": 260.0, "score": 0.91, "track_id": i % 7}
    return {
        "ts": datetime.now(timezone.utc),
        "frame": i,
        "count": 2,
        "unique_count": i // 50,
        "detections": [box, {**box, "track_id": i % 5}],
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cfg(host: str, port: int, protocol: str) -> MqttConfig:
    return MqttConfig(
        host=host,
        port=port,
        protocol=protocol,
        reconnect_min_delay_s=0.1,
        reconnect_max_delay_s=1.0,
        discovery={"enabled": False},
    )


def _write_bytes() -> int | None:
    """Bytes this process caused to be written to storage so far (Linux /proc/self/io), None where unreadable."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _bytes_per_message(before: int | None, after: int | None, n: int) -> float | None:
    if before is None or after is None:
        return None
    return round((after - before) / n, 1)


def _wait_empty(pub: AgentPublisher, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pub.outbox_depth and time.monotonic() < deadline:
        time.sleep(0.005)
    return pub.outbox_depth == 0


def commit_ceiling(workdir: Path, sync: Sync, n: int = 2000) -> int:
    """Bare SQLite: single-row commits/s on this disk with this `synchronous`, the ceiling for the outbox."""
    with Outbox(workdir / f"ceiling-{sync}.db", synchronous=sync) as box:
        t0 = time.perf_counter()
        for _ in range(n):
            box.append("t", lambda _seq: b"x" * 400)
        return round(n / (time.perf_counter() - t0))


def sustained(host: str, port: int, protocol: str, workdir: Path, n: int, sync: Sync) -> dict:
    with Outbox(workdir / f"sustained-{sync}.db", max_messages=max(n, 1), synchronous=sync) as box:
        pub = AgentPublisher(_cfg(host, port, protocol), f"bench-{sync.lower()}", box, "bench")
        pub.start()
        if not pub.wait_connected(10):
            raise SystemExit(f"no broker at {host}:{port}: {pub.last_error}")
        time.sleep(0.2)  # let the connect sequence finish so it is not timed
        cpu0 = time.process_time()
        io0 = _write_bytes()
        t0 = time.perf_counter()
        for i in range(n):
            pub.publish_counts("cam0", _frame(i), wait=False)  # as the agent's hot path does (group commit)
        pub.flush(60)
        t_committed = time.perf_counter()
        drained = _wait_empty(pub, 120)
        t_acked = time.perf_counter()
        cpu = time.process_time() - cpu0
        io1 = _write_bytes()
        pub.stop(timeout=5)
    return {
        "synchronous": sync,
        "messages": n,
        "all_acknowledged": drained,
        "commit_rate_per_s": round(n / (t_committed - t0)),
        "sustained_rate_per_s": round(n / (t_acked - t0)),
        # CPU time of this process (all threads) per message: what the rate would be bounded by on an idle core.
        "cpu_us_per_message": round(cpu / n * 1e6, 1),
        # Storage writes (WAL appends, fsyncs' data, checkpoints) per message, inserts and deletes together.
        "write_bytes_per_message": _bytes_per_message(io0, io1, n),
    }


def replay(host: str, port: int, protocol: str, workdir: Path, n: int, sync: Sync) -> dict:
    path = workdir / f"replay-{sync}.db"
    # Phase 1: the broker is unreachable (nothing listens on this port): the messages pile up in the outbox.
    with Outbox(path, max_messages=n + 1, synchronous=sync) as box:
        pub = AgentPublisher(_cfg("127.0.0.1", _free_port(), protocol), "bench-replay", box, "bench")
        pub.start()
        for i in range(n):
            pub.publish_counts("cam0", _frame(i), wait=False)
        pub.flush(60)
        pub.stop(timeout=0.5)
        assert box.depth == n, box.depth
    # Phase 2: restart against the real broker and time until the backlog is acknowledged.
    with Outbox(path, max_messages=n + 1, synchronous=sync) as box:
        pub = AgentPublisher(_cfg(host, port, protocol), "bench-replay", box, "bench")
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        pub.start()
        drained = _wait_empty(pub, 120)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        pub.stop(timeout=5)
    return {
        "synchronous": sync,
        "backlog": n,
        "all_acknowledged": drained,
        "replay_s": round(elapsed, 3),
        "replay_rate_per_s": round(n / elapsed),
        "cpu_us_per_message": round(cpu / n * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--messages", type=int, default=20_000, help="messages for the sustained-rate run")
    parser.add_argument("--backlog", type=int, default=10_000, help="buffered messages for the replay run")
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    parser.add_argument("--sync", choices=["FULL", "NORMAL", "both"], default="both")
    parser.add_argument("--workdir", type=Path, default=None, help="where the outbox files go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    syncs: list[Sync] = ["FULL", "NORMAL"] if args.sync == "both" else [args.sync]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        results = {
            "host": platform.node(),
            "protocol": args.protocol,
            "python": platform.python_version(),
            "cpus": _cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "outbox_only_commits_per_s": {s: commit_ceiling(workdir, s) for s in syncs},
            "sustained": [sustained(args.host, args.port, args.protocol, workdir, args.messages, s) for s in syncs],
            "replay": [replay(args.host, args.port, args.protocol, workdir, args.backlog, s) for s in syncs],
            "goals": {"sustained_rate_per_s": 5000, "write_bytes_per_message": 2048, "replay_10000_s": 10.0},
        }
    text = json.dumps(results, indent=2)
    sys.stdout.write(text + "\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    raise SystemExit(main())
