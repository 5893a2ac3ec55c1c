"""Publish synthetic counts through the real publisher + outbox: for trying a broker / Home Assistant set-up, and
for fault tests that need a publisher in its own process (to `kill -9` it).

    python -m edge_agent.mqtt.synthetic --host 127.0.0.1 --port 1883 --device-id synthetic-01 --outbox /tmp/s.db \\
        --rate 10 --count 100

Writes one line `seq <n> session <s> outbox <outbox_id>` to stdout per message once it is committed to the outbox
(every counts message carries the same `outbox_id`), then
`done <outbox depth>` after a clean stop. SIGTERM / SIGINT stop it cleanly (publishes `stopped`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from datetime import datetime, timezone

from edge_agent.mqtt.config import MqttConfig
from edge_agent.mqtt.publisher import AgentPublisher
from edge_agent.outbox import Outbox

logger = logging.getLogger(__name__)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    parser.add_argument("--device-id", default="synthetic")
    parser.add_argument("--camera", default="cam0")
    parser.add_argument("--outbox", required=True, help="SQLite outbox path")
    parser.add_argument("--max-messages", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second (0: as fast as possible)")
    parser.add_argument("--count", type=int, default=0, help="messages to publish (0: until stopped)")
    parser.add_argument("--keepalive", type=int, default=10)
    parser.add_argument("--stop-timeout", type=float, default=5.0)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cfg = MqttConfig(
        host=args.host,
        port=args.port,
        protocol=args.protocol,
        keepalive_s=args.keepalive,
        reconnect_min_delay_s=0.2,
        reconnect_max_delay_s=2.0,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Outbox(args.outbox, max_messages=args.max_messages) as outbox:
        publisher = AgentPublisher(cfg, args.device_id, outbox, software_version="synthetic")
        publisher.set_model_info({"name": "synthetic", "version": 1, "variant": "none", "backend": "none"})
        publisher.set_camera_status(args.camera, "online")
        publisher.start()
        period = 1.0 / args.rate if args.rate > 0 else 0.0
        next_at = time.monotonic()
        frame = 0
        while not stop.is_set() and (args.count == 0 or frame < args.count):
            count = frame % 4
            seq = publisher.publish_counts(
                args.camera,
                {
                    "ts": datetime.now(timezone.utc),
                    "frame": frame,
                    "count": count,
                    "unique_count": frame // 4,
                },
            )
            publisher.publish_count_value(args.camera, count, frame // 4)
            sys.stdout.write(f"seq {seq} session {publisher.session} outbox {publisher.outbox_id}\n")
            sys.stdout.flush()
            frame += 1
            if period:
                next_at += period
                stop.wait(max(0.0, next_at - time.monotonic()))
        # With --count, wait (up to the stop timeout) for the broker to take the backlog before stopping.
        publisher.stop(timeout=args.stop_timeout)
        sys.stdout.write(f"done {outbox.depth}\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
